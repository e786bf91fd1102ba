#!/usr/bin/env bash
# The main job, end to end: real `git clone` / `git push` over TLS through gatehouse to a real
# git smart-HTTP server (`git http-backend`). Everything runs on 127.0.0.1 in a temporary
# directory; every process started here is stopped by pid, and the directory removed, on
# success and on failure. Exits non-zero, saying which step failed, if any step does not do
# what it says.
#
#   ./demo/run.sh
#
# Needs: cargo, git, curl (with HTTP/2), coreutils `timeout`.
set -euo pipefail

HOST=git.demo.test
REPO=platform/app.git

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
GATEHOUSE=$TARGET_DIR/release/gatehouse
GIT_SERVER=$TARGET_DIR/release/examples/git_http_server
SAVED_LOGS=$TARGET_DIR/demo-logs

PIDS=()    # long-running processes started here
CURRENT=   # the bounded step running right now (a `timeout` process)
WORK=
STEP="starting"

say() { printf '%s\n' "$*"; }
step() {
    STEP=$1
    printf '\n==> %s\n' "$1"
}
fail() {
    printf '\nFAILED: %s\n  while: %s\n' "$1" "$STEP" >&2
    exit 1
}

# A process we started is alive (a zombie awaiting `wait` is not).
alive() {
    local stat
    if [ ! -d /proc/self ]; then
        kill -0 "$1" 2>/dev/null
        return $?
    fi
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    if [ "${stat%% *}" = Z ]; then
        return 1
    fi
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local pid all=("${PIDS[@]}")
    [ -n "$CURRENT" ] && all=("$CURRENT" "${all[@]}")
    for pid in "${all[@]}"; do
        alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    local waited=0
    for pid in "${all[@]}"; do
        while alive "$pid" && [ $waited -lt 50 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if alive "$pid"; then
            say "process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) did not stop on SIGTERM within 5s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ] && [ -n "$WORK" ] && [ -d "$WORK" ]; then
        mkdir -p "$SAVED_LOGS"
        local f
        for f in gateway.log git-server.log gatehouse.toml; do
            [ -f "$WORK/$f" ] && cp "$WORK/$f" "$SAVED_LOGS/$f"
        done
        if [ -f "$SAVED_LOGS/gateway.log" ] && [ -f "$WORK/gateway.log" ]; then
            printf '\nThe gateway log is saved at %s (git server log and config beside it).\n' "$SAVED_LOGS/gateway.log" >&2
            printf 'Its last 30 lines:\n' >&2
            tail -n 30 "$SAVED_LOGS/gateway.log" | sed 's/^/    /' >&2
        fi
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'printf "\nInterrupted (SIGINT); stopping everything started here.\n" >&2; exit 130' INT
trap 'printf "\nInterrupted (SIGTERM); stopping everything started here.\n" >&2; exit 143' TERM

# bounded SECS OUT CMD...: runs CMD with a deadline (status 124 when it overruns), its output
# going to file OUT ("-": to the terminal). It runs in the background and is waited for, so
# Ctrl-C or SIGTERM interrupt the wait at once and the trap stops it; stdin is /dev/null.
bounded() {
    local secs=$1 out=$2 rc=0
    shift 2
    if [ "$out" = - ]; then
        timeout -k 5 "$secs" "$@" </dev/null &
    else
        timeout -k 5 "$secs" "$@" </dev/null >"$out" 2>&1 &
    fi
    CURRENT=$!
    wait "$CURRENT" || rc=$?
    CURRENT=
    return "$rc"
}

# must SECS WHAT CMD...: runs CMD bounded, output captured in $WORK/out; shows the output and
# fails if CMD fails or overruns.
must() {
    local secs=$1 what=$2 rc=0
    shift 2
    bounded "$secs" "$WORK/out" "$@" || rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        sed 's/^/    /' "$WORK/out" >&2
        fail "$what did not finish within ${secs}s"
    elif [ $rc -ne 0 ]; then
        sed 's/^/    /' "$WORK/out" >&2
        fail "$what failed (exit status $rc)"
    fi
}

# wait_for_addr FILE KEY PID WHAT: prints the address once the process has written it.
wait_for_addr() {
    local file=$1 key=$2 pid=$3 what=$4 i line
    for ((i = 0; i < 150; i++)); do
        if [ -s "$file" ]; then
            line=$(grep "^$key=" "$file" || true)
            if [ -n "$line" ]; then
                printf '%s\n' "${line#*=}"
                return 0
            fi
        fi
        alive "$pid" || fail "$what exited before it was listening"
        sleep 0.1
    done
    fail "$what did not report its address within 15s"
}

for tool in cargo git curl timeout; do
    command -v "$tool" >/dev/null || { STEP="checking prerequisites"; fail "'$tool' is not installed"; }
done
curl --version | grep -qw HTTP2 || { STEP="checking prerequisites"; fail "this curl has no HTTP/2 support"; }

step "Building gatehouse and the demo git server (cargo build --release; the first build takes a few minutes)."
bounded 1800 - cargo build --release --quiet --bin gatehouse --example git_http_server ||
    fail "cargo build failed or took longer than 30 minutes"
rm -rf "$SAVED_LOGS"   # logs of an earlier failed run
[ -x "$GATEHOUSE" ] && [ -x "$GIT_SERVER" ] || fail "built binaries not found under $TARGET_DIR/release"

START=$(date +%s%N)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-demo.XXXXXX")
mkdir -p "$WORK/home" "$WORK/repos" "$WORK/empty-cert-dir" "$WORK/work"
CA=$WORK/certs/ca.crt

# Every process below gets a clean, explicit environment: no user or system git config, no
# proxy settings, and only the demo CA trusted, whatever this machine's environment says.
CLEAN_ENV=(
    env -i
    PATH="$PATH" HOME="$WORK/home" LANG=C LC_ALL=C
    GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0
    GIT_AUTHOR_NAME="Alice Example" GIT_AUTHOR_EMAIL=alice@example.test
    GIT_COMMITTER_NAME="Alice Example" GIT_COMMITTER_EMAIL=alice@example.test
    SSL_CERT_FILE="$CA" SSL_CERT_DIR="$WORK/empty-cert-dir" CURL_CA_BUNDLE="$CA"
    REQUESTS_CA_BUNDLE="$CA" NODE_EXTRA_CA_CERTS="$CA" GIT_SSL_CAINFO="$CA"
)

step "Generating a development CA and a TLS certificate for $HOST."
must 30 "gatehouse certs dev" "${CLEAN_ENV[@]}" "$GATEHOUSE" certs dev --out "$WORK/certs" --host "$HOST"
for f in ca.crt server.crt server.key; do
    [ -s "$WORK/certs/$f" ] || fail "gatehouse certs dev did not write $f"
done
say "The server certificate is signed by a fresh CA; git and curl below trust that CA alone."

step "Creating an empty bare repository $REPO and serving it with git http-backend."
must 30 "git init --bare" "${CLEAN_ENV[@]}" git init --quiet --bare --initial-branch=main "$WORK/repos/$REPO"
"${CLEAN_ENV[@]}" RUST_LOG=info "$GIT_SERVER" --root "$WORK/repos" --addr-file "$WORK/git-server.addr" \
    </dev/null >"$WORK/git-server.log" 2>&1 &
PIDS+=($!)
GIT_ADDR=$(wait_for_addr "$WORK/git-server.addr" http "${PIDS[-1]}" "the git server")
case $GIT_ADDR in 127.0.0.1:*) ;; *) fail "the git server listens on $GIT_ADDR, not 127.0.0.1" ;; esac
say "The git server listens on http://$GIT_ADDR (plain HTTP, loopback only)."

step "Making the audit log's Ed25519 checkpoint signing key."
must 30 "gatehouse audit keygen" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit keygen --out "$WORK/audit-signing.pem"
say "$(cat "$WORK/out")"

step "Writing the gateway config: TLS on 127.0.0.1, one gogs route for $HOST, the audit log, then 'gatehouse check'."
cat >"$WORK/gatehouse.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
access_log = true
shutdown_grace = "2s"

[tls]
cert_file = "$WORK/certs/server.crt"
key_file = "$WORK/certs/server.key"

[metrics]
listen = "127.0.0.1:0"

[audit]
dir = "$WORK/audit"
replica = "demo"
signing_key_file = "$WORK/audit-signing.pem"

[[routes]]
name = "gogs"
kind = "gogs"
hosts = ["$HOST"]
upstream = "http://$GIT_ADDR"
# No sign-in in this demo: the route is served without authentication.
public = true
max_body_bytes = "1GiB"
EOF
must 30 "gatehouse check" "${CLEAN_ENV[@]}" "$GATEHOUSE" check --config "$WORK/gatehouse.toml"
say "$(cat "$WORK/out")"

step "Starting the gateway."
"${CLEAN_ENV[@]}" RUST_LOG=info "$GATEHOUSE" serve --config "$WORK/gatehouse.toml" --addr-file "$WORK/gateway.addr" \
    </dev/null >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GW_PID=$!
GW_ADDR=$(wait_for_addr "$WORK/gateway.addr" https "${PIDS[-1]}" "the gateway")
METRICS_ADDR=$(wait_for_addr "$WORK/gateway.addr" metrics "${PIDS[-1]}" "the gateway")
case $GW_ADDR in 127.0.0.1:*) ;; *) fail "the gateway listens on $GW_ADDR, not 127.0.0.1" ;; esac
case $METRICS_ADDR in 127.0.0.1:*) ;; *) fail "the metrics listener is on $METRICS_ADDR, not 127.0.0.1" ;; esac
PORT=${GW_ADDR##*:}
BASE=https://$HOST:$PORT
URL=$BASE/$REPO
say "The gateway serves TLS on $GW_ADDR and metrics on http://$METRICS_ADDR."
say "Clients reach it as $BASE ($HOST resolved to 127.0.0.1 for git and curl only)."

GIT=("${CLEAN_ENV[@]}" git -c "http.curloptResolve=$HOST:$PORT:127.0.0.1" -c "http.sslCAInfo=$CA")
CURL=("${CLEAN_ENV[@]}" curl -q --silent --show-error --max-time 20 --cacert "$CA" --resolve "$HOST:$PORT:127.0.0.1")
A=$WORK/work/alice
B=$WORK/work/bob

step "Cloning $URL through the gateway over TLS."
must 60 "git clone" "${GIT[@]}" clone --quiet "$URL" "$A"
[ -d "$A/.git" ] || fail "git clone made no repository at $A"
[ "$(timeout 10 "${GIT[@]}" -C "$A" remote get-url origin)" = "$URL" ] || fail "the clone's origin is not $URL"
say "Cloned the (still empty) repository into a fresh working copy."

step "Committing README.md and pushing it through the gateway."
CONTENT="hello through gatehouse, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf '%s\n' "$CONTENT" >"$A/README.md"
must 30 "git add" "${GIT[@]}" -C "$A" add README.md
must 30 "git commit" "${GIT[@]}" -C "$A" commit --quiet -m "Add README through the gateway"
must 120 "git push" "${GIT[@]}" -C "$A" push --quiet origin HEAD:refs/heads/main
PUSHED=$(timeout 10 "${GIT[@]}" -C "$A" rev-parse HEAD) || fail "cannot read the commit just made"
ON_SERVER=$(timeout 10 "${GIT[@]}" --git-dir="$WORK/repos/$REPO" rev-parse --verify --quiet refs/heads/main || true)
[ "$ON_SERVER" = "$PUSHED" ] ||
    fail "the server's main is '${ON_SERVER:-missing}', not the pushed commit $PUSHED"
must 60 "git ls-remote" "${GIT[@]}" ls-remote "$URL" refs/heads/main
grep -q "^$PUSHED" "$WORK/out" || fail "git ls-remote through the gateway does not show $PUSHED"
say "Pushed commit ${PUSHED:0:12}; the server's bare repository now has it as main."

step "Cloning again into a second directory and checking the content."
must 60 "second git clone" "${GIT[@]}" clone --quiet "$URL" "$B"
[ -f "$B/README.md" ] || fail "the second clone has no README.md"
[ "$(cat "$B/README.md")" = "$CONTENT" ] || fail "README.md in the second clone differs from what was pushed"
[ "$(timeout 10 "${GIT[@]}" -C "$B" rev-parse HEAD)" = "$PUSHED" ] || fail "the second clone is not at the pushed commit"
say "The second clone holds the same commit and README.md reads: $CONTENT"

step "Asking the gateway's readiness endpoint over HTTP/2 with curl."
must 30 "curl --http2 /.gatehouse/ready" "${CURL[@]}" --http2 -o "$WORK/ready.body" \
    -w '%{http_version} %{http_code}' "$BASE/.gatehouse/ready"
GOT=$(cat "$WORK/out")
[ "$GOT" = "2 200" ] || fail "expected HTTP/2 with status 200 from /.gatehouse/ready, got '$GOT'"
say "HTTP/$GOT: $(cat "$WORK/ready.body")"

step "Sending a path with a dot segment (/$REPO/../other.git/info/refs); the gateway must refuse it."
must 30 "curl with a dot-segment path" "${CURL[@]}" --path-as-is -o "$WORK/dot.body" -w '%{http_code}' \
    "$BASE/$REPO/../other.git/info/refs?service=git-upload-pack"
GOT=$(cat "$WORK/out")
[ "$GOT" = "400" ] || fail "expected 400 for a dot-segment path, got '$GOT'"
say "Refused with $GOT: $(head -n 1 "$WORK/dot.body")"

step "Reading the gateway's Prometheus metrics (requests by route)."
must 30 "curl /metrics" "${CLEAN_ENV[@]}" curl -q --silent --show-error --max-time 10 "http://$METRICS_ADDR/metrics"
cp "$WORK/out" "$WORK/metrics.txt"
say "Non-zero request counters (route \"-\" is the gateway's own answers: readiness and refusals):"
awk '/^gatehouse_(http_requests_total|requests_rejected_total)\{/ && $2 != 0 { print "    " $0 }' "$WORK/metrics.txt"
metric() { awk -v s="$1" 'index($0, s " ") == 1 { print $2 }' "$WORK/metrics.txt"; }
POSTS=$(metric 'gatehouse_http_requests_total{method="POST",route="gogs",status_class="2xx"}')
REJECTED=$(metric 'gatehouse_requests_rejected_total{reason="path"}')
[ "${POSTS:-0}" -ge 3 ] 2>/dev/null || fail "expected at least 3 successful git POSTs on route gogs, metrics show '${POSTS:-none}'"
[ "${REJECTED:-0}" -ge 1 ] 2>/dev/null || fail "the dot-segment refusal is not counted in the metrics"

step "Stopping the gateway (SIGTERM) and verifying its audit log with the public key."
kill -TERM "$GW_PID"
for _ in $(seq 1 100); do alive "$GW_PID" || break; sleep 0.1; done
alive "$GW_PID" && fail "the gateway did not stop within 10s of SIGTERM"
must 60 "gatehouse audit verify" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit verify "$WORK/audit" \
    --pubkey "$WORK/audit-signing.pem.pub"
say "$(cat "$WORK/out")"
grep -q '^OK: .*(signatures checked)$' "$WORK/out" || fail "audit verify did not report OK with signatures checked"
PUSH_RECORDS=$(cat "$WORK"/audit/*.jsonl | grep -c '"kind":"git_push"' || true)
[ "$PUSH_RECORDS" -ge 1 ] || fail "the audit log has no record of the push"
REFUSED=$(cat "$WORK"/audit/*.jsonl | grep -c '"status":400' || true)
[ "$REFUSED" -ge 1 ] || fail "the audit log has no record of the refused dot-segment request"
say "Every request is on record ($PUSH_RECORDS git push record(s), $REFUSED refused request(s)); the chain and its signed checkpoints verify."

step "Exporting the last day's records for the auditors as CSV (the export verifies the chain it reads)."
SINCE=$(date -u -d yesterday +%Y-%m-%d)
TOMORROW=$(date -u -d tomorrow +%Y-%m-%d)
must 60 "gatehouse audit export" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit export "$WORK/audit" \
    --since "$SINCE" --until "$TOMORROW" --format csv --out "$WORK/audit.csv" \
    --pubkey "$WORK/audit-signing.pem.pub"
say "$(tail -1 "$WORK/out")"
grep -q 'chain verified' "$WORK/out" || fail "audit export did not report a verified chain"
head -1 "$WORK/audit.csv" | grep -q '^time,kind,replica,seq,' || fail "the CSV export has no header row"
grep -q ',git_push,' "$WORK/audit.csv" || fail "the CSV export has no git push row"
say "$(($(wc -l <"$WORK/audit.csv") - 1)) rows in $WORK/audit.csv, e.g. the push:"
grep -m1 ',POST,.*,git_push,' "$WORK/audit.csv" | cut -c1-160 | sed 's/^/    /'

ELAPSED_MS=$((($(date +%s%N) - START) / 1000000))
printf '\nAll steps passed in %d.%03ds (after the build). Stopping the git server and the gateway.\n' \
    $((ELAPSED_MS / 1000)) $((ELAPSED_MS % 1000))
