#!/usr/bin/env bash
# bench/audit_share.sh: what share of gatehouse's CPU the audit log takes in the proxy bench.
#
# The gateway cannot run without its audit log (every decision must be recorded), so the
# audit's cost is not measured as "with minus without" but by sampling: bench/proxy.sh's setup
# (nginx upstream, gatehouse on core 0 with one worker, audit on with batch fsync and signed
# checkpoints) under the same wrk load (core 1), while `perf record` samples gatehouse's CPU
# (user and kernel, software clock, DWARF call stacks). A sample counts as audit work when a
# frame of its stack is audit code: building and handing over records on the request path,
# and the writer (serialising, hashing, writing the file, checkpoints). Prints the share of
# samples and what it means per request: the audit adds share / (1 - share) to the CPU the
# gateway would need without it (target in issue 5: at most 5 %).
#
# Needs perf (Debian linux-perf) with software events allowed (perf_event_paranoid <= 2), wrk,
# nginx. Builds with line tables (target/bench-perf) so that stacks have names.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_SAMPLED=10
GATEHOUSE_BIN=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_SAMPLED=$2; shift 2 ;;
        --gatehouse) GATEHOUSE_BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help)
            echo "usage: bench/audit_share.sh [--seconds S (default 10)] [--gatehouse BIN] [--out FILE]"
            exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
for tool in perf wrk taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y linux-perf wrk)" >&2; exit 2; }
done
perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 ||
    { echo "perf cannot sample here (kernel.perf_event_paranoid is $(cat /proc/sys/kernel/perf_event_paranoid))" >&2; exit 2; }

if [ -z "$GATEHOUSE_BIN" ]; then
    echo "building gatehouse with line tables (target/bench-perf) ..." >&2
    (cd "$REPO" && CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR="$REPO/target/bench-perf" \
        cargo build --release --quiet --bin gatehouse) >&2
    GATEHOUSE_BIN="$REPO/target/bench-perf/release/gatehouse"
fi
[ -n "$OUT" ] || OUT="$REPO/bench/results/audit-share-$(date +%Y%m%d-%H%M%S).txt"
TMP=$(mktemp -d /tmp/gatehouse-audit-share.XXXXXX)
HOLD_PID=""
WRK_PID=""
cleanup() {
    [ -n "$WRK_PID" ] && kill "$WRK_PID" 2>/dev/null || true
    # proxy.sh stops everything it started (by pid) when interrupted.
    if [ -n "$HOLD_PID" ]; then
        kill -INT "$HOLD_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$HOLD_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# proxy.sh sets everything up, measures one short round, then holds (its own time limit
# bounds the hold).
"$REPO/bench/proxy.sh" --targets gatehouse-plain --rounds 1 --duration 3 --warmup 1 --hold \
    --max-seconds 900 --no-build --gatehouse "$GATEHOUSE_BIN" --out "$TMP/proxy.txt" \
    >"$TMP/proxy.out" 2>"$TMP/proxy.err" &
HOLD_PID=$!
for _ in $(seq 600); do
    grep -q '^holding:' "$TMP/proxy.err" 2>/dev/null && break
    kill -0 "$HOLD_PID" 2>/dev/null || { cat "$TMP/proxy.err" >&2; exit 1; }
    sleep 0.5
done
line=$(grep '^holding:' "$TMP/proxy.err") || { echo "proxy.sh did not come up" >&2; exit 1; }
GH_PID=$(echo "$line" | sed -E 's/.*gatehouse pid ([0-9]+).*/\1/')
URL=$(echo "$line" | sed -E 's/.* plain ([^ ]+) .*/\1/')

taskset -c 1 wrk -t1 -c64 -d"$(( SECONDS_SAMPLED + 6 ))s" "$URL" >"$TMP/wrk.txt" 2>&1 &
WRK_PID=$!
sleep 3
perf record -q -e cpu-clock -F 1999 -g --call-graph dwarf,16384 -p "$GH_PID" -o "$TMP/perf.data" \
    -- sleep "$SECONDS_SAMPLED" 2>"$TMP/perf.err" || { cat "$TMP/perf.err" >&2; exit 1; }
wait "$WRK_PID" || true
WRK_PID=""
perf script -i "$TMP/perf.data" -F ip,sym 2>/dev/null >"$TMP/perf.txt"

{
    echo "# audit share of gatehouse CPU, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "gatehouse: $(git -C "$REPO" rev-parse --short=12 HEAD) (binary $GATEHOUSE_BIN)"
    echo "machine:   nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
    echo "setup:     bench/proxy.sh (gatehouse-plain, audit on: batch fsync, signed checkpoints), wrk -t1 -c64 on core 1; perf cpu-clock 1999 Hz for ${SECONDS_SAMPLED}s"
    echo "wrk:       $(grep -E '^Requests/sec' "$TMP/wrk.txt")"
    python3 - "$TMP/perf.txt" <<'EOF'
import sys

def outer(sym):
    """The function's own path: generic arguments removed, `<T as Trait>::f` read as T::f."""
    if sym.startswith('<'):
        depth, i = 0, 0
        for i, ch in enumerate(sym):
            depth += ch == '<'
            depth -= ch == '>'
            if depth == 0:
                break
        inner = sym[1:i].split(' as ')[0]
        sym = inner + sym[i + 1:]
    out, depth = [], 0
    for ch in sym:
        if ch == '<':
            depth += 1
        elif ch == '>':
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return ''.join(out)

GROUPS = [
    ('writer: serialise and hash (chain::seal)', lambda f: 'gatehouse::audit::chain::seal' in f),
    ('writer: file writes and fsync (kernel)', None),
    ('writer: checkpoints', lambda f: 'Writer::checkpoint' in f),
    ('writer: the rest (batching, acks, metrics)', lambda f: 'gatehouse::audit::writer::Writer' in f),
    ('syncer thread: batch fsyncs', lambda f: 'start_syncer' in f),
    ('request path: records built and handed over', lambda f: f.startswith('gatehouse::proxy::audit')
        or f.startswith('gatehouse::audit::')),
]
total = audit = 0
by = {name: 0 for name, _ in GROUPS}
samples, cur = [], []
for line in open(sys.argv[1], errors='replace'):
    if line.startswith('\t') or line.startswith(' '):
        parts = line.strip().split(' ', 1)
        if len(parts) == 2:
            cur.append((parts[0], outer(parts[1]), parts[1]))
    elif cur:
        samples.append(cur)
        cur = []
if cur:
    samples.append(cur)
for frames in samples:
    total += 1
    names = [f for _, f, _ in frames]
    # The syncer thread's frames name it only in generic arguments, which `outer` drops.
    syncer = any('gatehouse::audit::writer::start_syncer' in raw for _, _, raw in frames)
    if not syncer and not any(n.startswith('gatehouse::audit::')
                              or n.startswith('gatehouse::proxy::audit') for n in names):
        continue
    audit += 1
    in_kernel = frames[0][0].startswith('ffffffff')
    if any('gatehouse::audit::chain::seal' in n for n in names):
        by[GROUPS[0][0]] += 1
    elif in_kernel and any('gatehouse::audit::writer::Writer' in n for n in names):
        by[GROUPS[1][0]] += 1
    elif any('Writer::checkpoint' in n for n in names):
        by[GROUPS[2][0]] += 1
    elif any('gatehouse::audit::writer::Writer' in n for n in names):
        by[GROUPS[3][0]] += 1
    elif syncer:
        by[GROUPS[4][0]] += 1
    else:
        by[GROUPS[5][0]] += 1
if total == 0:
    print('no samples')
    sys.exit(1)
share = audit / total
print(f'samples:   {total} of gatehouse (all threads, user and kernel), {audit} with audit code on the stack')
for name, _ in GROUPS:
    print(f'  {100 * by[name] / total:5.1f} %  {name}')
print(f'audit share of gatehouse CPU: {100 * share:.1f} %; the audit adds {100 * share / (1 - share):.1f} % '
      f'to the CPU per request the gateway would need without it (target <= 5 %: '
      f'{"PASS" if share / (1 - share) <= 0.05 else "FAIL"})')
EOF
} | tee "$OUT"
echo "results written to $OUT" >&2
