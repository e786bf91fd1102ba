#!/usr/bin/env bash
# bench/proxy.sh: loopback load test of gatehouse against nginx as a reverse proxy.
#
# Same wrk run (1 thread, fixed connections, warm-up then a measured window, --latency)
# against: the upstream directly, nginx proxying to it, gatehouse proxying to it; plain HTTP
# and TLS for both proxies. The proxy under test runs on core 0 (gatehouse with one tokio
# worker), wrk and the upstream on core 1. Reports requests/s, p50/p99 latency and the proxy's
# CPU time per request (from /proc/PID/stat), the median over several rounds, gatehouse/nginx
# ratios and PASS/FAIL against the targets. See bench/README.md.
#
# Everything listens on 127.0.0.1 with free ports, lives in a temp dir, is bounded in time and
# is stopped by pid on exit.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/proxy.sh [options]
  --rounds N        full comparison rounds; medians are reported (default 3)
  --duration S      measured seconds per wrk run (default 15)
  --warmup S        warm-up seconds before each measured run (default 3)
  --connections C   wrk connections (default 64)
  --upstream KIND   nginx | hyper  (default nginx; hyper = bench/upstream.rs)
  --targets LIST    comma list out of: direct,nginx-plain,gatehouse-plain,nginx-tls,gatehouse-tls
                    (default: all), and floor-pool,floor-inline: the least a hyper proxy
                    does, with hyper-util's pooled client or one upstream connection per
                    client connection (bench/floor_proxy.rs), on the proxy's core
  --gatehouse BIN   use this gatehouse binary instead of building one
  --rev REV         build gatehouse from git revision REV (git archive into the temp dir)
                    instead of the working tree
  --no-build        do not run cargo (binaries must exist in the target dir)
  --hold            after the rounds, keep everything running until Ctrl-C (for perf)
  --audit-extra T   lines added to gatehouse's [audit] section, e.g.
                    'checkpoint_every = 100000000' (recorded in the results)
  --out FILE        results file (default bench/results/proxy-<date>.txt)
  --max-seconds S   hard limit for the whole script (default: computed from the plan)
  --max-other P     a run where other processes used more than P% of core 0 or core 1 is
                    repeated (default 5)
  --retries N       at most N repeats per run (default 2)
  --quiet-wait S    before each run wait up to S seconds for both cores to be idle (default 120)
Environment: BENCH_TARGET_DIR (cargo target dir, default target/bench),
  CARGO_PROFILE_RELEASE_* (e.g. _LTO=fat) are passed to cargo and recorded.
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
DURATION=15
WARMUP=3
CONNS=64
UPSTREAM_KIND=nginx
TARGETS="direct,nginx-plain,gatehouse-plain,nginx-tls,gatehouse-tls"
GATEHOUSE_BIN=""
REV=""
BUILD=1
HOLD=0
AUDIT_EXTRA=""
OUT=""
MAX_SECONDS=""
PROXY_CORE=0
LOAD_CORE=1
MAX_OTHER=5
RETRIES=2
QUIET_WAIT=120

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --upstream) UPSTREAM_KIND=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --gatehouse) GATEHOUSE_BIN=$2; GATEHOUSE_GIVEN=1; shift 2 ;;
        --rev) REV=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --hold) HOLD=1; shift ;;
        --audit-extra) AUDIT_EXTRA=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --max-seconds) MAX_SECONDS=$2; shift 2 ;;
        --max-other) MAX_OTHER=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$UPSTREAM_KIND" in nginx|hyper) ;; *) echo "--upstream must be nginx or hyper" >&2; exit 2 ;; esac

for tool in wrk taskset nginx openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx-light wrk)" >&2; exit 2; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "need at least 2 cores (proxy on core $PROXY_CORE, wrk+upstream on core $LOAD_CORE)" >&2
    exit 2
fi

IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
n_targets=${#TARGET_LIST[@]}
if [ -z "$MAX_SECONDS" ]; then
    # every run: warm-up + window + slack; plus building and starting.
    MAX_SECONDS=$(( ROUNDS * n_targets * (RETRIES + 1) * (WARMUP + DURATION + QUIET_WAIT + 15) + 900 ))
    [ "$HOLD" = 1 ] && MAX_SECONDS=$(( MAX_SECONDS + 3600 ))
fi

STAMP=$(date +%Y%m%d-%H%M%S)
if [ -z "$OUT" ]; then
    # runs with profile overrides are named after them, e.g. proxy-<date>-lto-fat-codegen-units-1.txt
    suffix=$( (env | grep -E '^CARGO_PROFILE_RELEASE_' || true) | sort | sed -E 's/^CARGO_PROFILE_RELEASE_//; s/=/-/' |
        tr 'A-Z_' 'a-z-' | tr '\n' '-' | sed 's/-$//')
    OUT="$REPO/bench/results/proxy-$STAMP${suffix:+-$suffix}.txt"
fi
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
PIDS=()
WATCHDOG=""
WRK_PGID=""

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_bound bench/proxy.sh

log() { echo "$*" | tee -a "$OUT"; }
: >"$OUT"


# ---------------------------------------------------------------------------------------
# build

TARGET_DIR=${BENCH_TARGET_DIR:-$REPO/target/bench}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac   # relative to the repo
PROFILE_ENV=$(env | grep -E '^CARGO_PROFILE_RELEASE_' | sort | tr '\n' ' ' || true)
SRC_DIR=$REPO
if [ -n "$REV" ] && [ -z "$GATEHOUSE_BIN" ]; then
    # A clean tree of that revision; bench/upstream.rs comes from the working tree since
    # Cargo.toml may name it as an example.
    SRC_DIR="$TMP/src"
    mkdir -p "$SRC_DIR"
    git -C "$REPO" archive "$REV" | tar -x -C "$SRC_DIR"
    # git archive stamps every file with the commit's time, and cargo judges freshness by
    # mtime against paths relative to the package: without this, a build of another revision
    # in the same target dir is taken for this one.
    find "$SRC_DIR" -type f -exec touch {} +
    mkdir -p "$SRC_DIR/bench" && cp "$REPO/bench/upstream.rs" "$SRC_DIR/bench/"
    [ -n "${BENCH_TARGET_DIR:-}" ] || TARGET_DIR="$REPO/target/bench-rev"
    BUILD=1
fi
if [ "$BUILD" = 1 ]; then
    what=()
    if [ -z "$GATEHOUSE_BIN" ]; then what+=(--bin gatehouse); fi
    if [ "$UPSTREAM_KIND" = hyper ]; then what+=(--example bench_upstream); fi
    if [[ ",$TARGETS," == *,floor-* ]]; then what+=(--example bench_floor_proxy); fi
    if [ ${#what[@]} -gt 0 ]; then
        echo "building (cargo build --release ${what[*]}) in $SRC_DIR, target dir $TARGET_DIR ..." >&2
        (cd "$SRC_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet "${what[@]}") >&2
    fi
fi
[ -n "$GATEHOUSE_BIN" ] || GATEHOUSE_BIN="$TARGET_DIR/release/gatehouse"
UPSTREAM_BIN="$TARGET_DIR/release/examples/bench_upstream"
FLOOR_BIN="$TARGET_DIR/release/examples/bench_floor_proxy"
[ -x "$GATEHOUSE_BIN" ] || { echo "no gatehouse binary at $GATEHOUSE_BIN" >&2; exit 2; }

# ---------------------------------------------------------------------------------------
# machine info

if [ -n "$REV" ]; then
    commit="$(git -C "$REPO" rev-parse --short=12 "$REV") (--rev $REV, clean tree)"; dirty=""
elif [ "${GATEHOUSE_GIVEN:-0}" = 1 ] || [ "$BUILD" = 0 ]; then
    commit="unknown (prebuilt binary from $(date -r "$GATEHOUSE_BIN" '+%F %T'); HEAD is $(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null))"; dirty=""
else
    commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
fi
log "# gatehouse proxy benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "machine:   nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
log "versions:  $(nginx -v 2>&1 | sed 's/^nginx version: //') ($(nginx -V 2>&1 | grep -o 'built with OpenSSL [^ ]*')), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(openssl version | cut -d' ' -f1-2) (wrk's libssl), $(rustc --version 2>/dev/null || echo 'rustc ?')"
log "gatehouse: commit $commit${dirty:+ + uncommitted changes in: $dirty}, binary $GATEHOUSE_BIN"
log "profile:   release ${PROFILE_ENV:-(Cargo.toml [profile.release] as is)}"
log "plan:      rounds=$ROUNDS, wrk -t1 -c$CONNS, warm-up ${WARMUP}s + measured ${DURATION}s, --latency; upstream=$UPSTREAM_KIND"
log "pinning:   proxy on core $PROXY_CORE (gatehouse TOKIO_WORKER_THREADS=1, nginx worker_processes 1); wrk and upstream on core $LOAD_CORE"
log ""

# ---------------------------------------------------------------------------------------
# processes

NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"

nginx_common() { # dir
    cat <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

start_nginx() { # name core conf-body -> sets NGINX_PID
    local dir="$TMP/$1" core=$2
    mkdir -p "$dir"
    { nginx_common "$dir"; printf '%s\n}\n' "$3"; } >"$dir/nginx.conf"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/error.log" || {
        cat "$dir/error.log" >&2; return 1; }
    taskset -c "$core" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >>"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

UP_PORT=$(free_port)
if [ "$UPSTREAM_KIND" = nginx ]; then
    start_nginx upstream "$LOAD_CORE" "    server {
        listen 127.0.0.1:$UP_PORT reuseport;
        location / { default_type text/plain; return 200 \"hello, world\\n\"; }
    }"
    UP_PID=$NGINX_PID
else
    [ -x "$UPSTREAM_BIN" ] || { echo "no upstream binary at $UPSTREAM_BIN" >&2; exit 2; }
    taskset -c "$LOAD_CORE" "$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" >"$TMP/upstream.out" 2>&1 &
    UP_PID=$!
    PIDS+=("$UP_PID")
fi
wait_port "$UP_PORT" 10

# Certificates for both TLS listeners.
"$GATEHOUSE_BIN" certs dev --out "$TMP/certs" --host 127.0.0.1 >"$TMP/certs.log" 2>&1

NGX_PLAIN=$(free_port)
NGX_TLS=$(free_port)
while [ "$NGX_TLS" = "$NGX_PLAIN" ]; do NGX_TLS=$(free_port); done
start_nginx proxy "$PROXY_CORE" "    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGX_PLAIN;
        listen 127.0.0.1:$NGX_TLS ssl;
        ssl_certificate $TMP/certs/server.crt;
        ssl_certificate_key $TMP/certs/server.key;
        # nginx < 1.23.4 leaves TLSv1.3 out of its default; gatehouse (rustls) prefers it.
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
NGX_PID=$NGINX_PID
wait_port "$NGX_PLAIN" 10
wait_port "$NGX_TLS" 10

mkdir -p "$TMP/gatehouse"
# The TLS listener takes port 0 (the address file says which); a second 127.0.0.1:0 would be
# refused as a duplicate listener, so the plain one gets a free port chosen here.
GH_PLAIN_WANT=$(free_port)
# Builds with the audit log require an [audit] section (every request is recorded, as in
# production: batch fsync, signed checkpoints); older builds reject it.
GH_AUDIT=""
if "$GATEHOUSE_BIN" audit keygen --out "$TMP/gatehouse/audit.pem" >/dev/null 2>&1; then
    GH_AUDIT="[audit]
dir = \"$TMP/gatehouse/audit\"
replica = \"bench\"
signing_key_file = \"$TMP/gatehouse/audit.pem\"
$AUDIT_EXTRA"
fi
gatehouse_config() { # $1: extra route lines, $2: audit section
    cat <<EOF
[server]
listen = ["127.0.0.1:0"]
plaintext_listen = ["127.0.0.1:$GH_PLAIN_WANT"]
access_log = false

[tls]
cert_file = "$TMP/certs/server.crt"
key_file = "$TMP/certs/server.key"
watch = false

$2

[[routes]]
name = "bench"
kind = "plain"
hosts = ["*"]
path_prefix = "/"
upstream = "http://127.0.0.1:$UP_PORT"
$1
EOF
}
# Routes require authentication unless `public = true` (newer builds); older builds reject
# the key. Use whichever form this binary accepts.
GH_CONF="$TMP/gatehouse/gatehouse.toml"
GH_ACCEPTED=""
for variant in "public = true|$GH_AUDIT" "public = true|" "|"; do
    gatehouse_config "${variant%%|*}" "${variant#*|}" >"$GH_CONF"
    if "$GATEHOUSE_BIN" check --config "$GH_CONF" >>"$TMP/gatehouse/check.log" 2>&1; then
        GH_ACCEPTED=yes
        break
    fi
done
[ -n "$GH_ACCEPTED" ] || { cat "$TMP/gatehouse/check.log" >&2; echo "no gatehouse config this binary accepts" >&2; exit 1; }
if grep -q '^\[audit\]' "$GH_CONF"; then
    echo "gatehouse audit log: on (fsync batch, $TMP/gatehouse/audit)"
    [ -z "$AUDIT_EXTRA" ] || log "audit:     [audit] plus: $(echo "$AUDIT_EXTRA" | tr '\n' ';')"
elif [ -n "$AUDIT_EXTRA" ]; then
    cat "$TMP/gatehouse/check.log" >&2
    echo "--audit-extra: this binary does not accept the [audit] section with those lines" >&2
    exit 1
else
    echo "gatehouse audit log: not in this build"
fi
TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c "$PROXY_CORE" "$GATEHOUSE_BIN" serve \
    --config "$GH_CONF" --addr-file "$TMP/gatehouse/addrs" \
    >"$TMP/gatehouse/stdout.log" 2>"$TMP/gatehouse/stderr.log" &
GH_PID=$!
PIDS+=("$GH_PID")
for _ in $(seq 100); do [ -s "$TMP/gatehouse/addrs" ] && break; sleep 0.1; done
[ -s "$TMP/gatehouse/addrs" ] || { cat "$TMP/gatehouse/stderr.log" >&2; echo "gatehouse did not start" >&2; exit 1; }
GH_TLS=$(sed -n 's/^https=.*:\([0-9]*\)$/\1/p' "$TMP/gatehouse/addrs")
GH_PLAIN=$(sed -n 's/^http=.*:\([0-9]*\)$/\1/p' "$TMP/gatehouse/addrs")

# Sanity: every target answers 200 with the upstream's body.
check_body() {
    local body
    body=$(curl -sk --max-time 5 "$1") || { echo "no answer from $1" >&2; return 1; }
    [ "$body" = "hello, world" ] || { echo "unexpected body from $1: $body" >&2; return 1; }
}
# The floor: a bare hyper proxy in each client mode, on the proxy's core.
declare -A FLOOR_PID FLOOR_PORT
for mode in pool inline; do
    [[ ",$TARGETS," == *,floor-$mode,* ]] || continue
    [ -x "$FLOOR_BIN" ] || { echo "no floor proxy binary at $FLOOR_BIN" >&2; exit 2; }
    taskset -c "$PROXY_CORE" "$FLOOR_BIN" "$mode" 127.0.0.1:0 "127.0.0.1:$UP_PORT" >"$TMP/floor-$mode.out" 2>&1 &
    FLOOR_PID[$mode]=$!
    PIDS+=("${FLOOR_PID[$mode]}")
    for _ in $(seq 50); do [ -s "$TMP/floor-$mode.out" ] && break; sleep 0.1; done
    FLOOR_PORT[$mode]=$(head -1 "$TMP/floor-$mode.out")
done
declare -A URL=(
    [floor-pool]="${FLOOR_PORT[pool]:+http://127.0.0.1:${FLOOR_PORT[pool]}/}"
    [floor-inline]="${FLOOR_PORT[inline]:+http://127.0.0.1:${FLOOR_PORT[inline]}/}"
    [direct]="http://127.0.0.1:$UP_PORT/"
    [nginx-plain]="http://127.0.0.1:$NGX_PLAIN/"
    [gatehouse-plain]="http://127.0.0.1:$GH_PLAIN/"
    [nginx-tls]="https://127.0.0.1:$NGX_TLS/"
    [gatehouse-tls]="https://127.0.0.1:$GH_TLS/"
)
for t in "${TARGET_LIST[@]}"; do
    [ -n "${URL[$t]:-}" ] || { echo "unknown target $t" >&2; exit 2; }
    check_body "${URL[$t]}"
done
tls_params() {
    openssl s_client -connect "127.0.0.1:$1" </dev/null 2>/dev/null |
        awk '/^New, /{ sub(/,$/, "", $2); print $2, $NF; exit }'
}
log "TLS negotiated with the OpenSSL client (as wrk): nginx $(tls_params "$NGX_TLS"); gatehouse $(tls_params "$GH_TLS")"
log "pids: upstream $UP_PID, nginx master $NGX_PID, gatehouse $GH_PID"
log ""

# ---------------------------------------------------------------------------------------
# one measurement

proxy_pids() { # target
    case "$1" in
        nginx-*) proxy_family "$NGX_PID" ;;
        floor-*) echo "${FLOOR_PID[${1#floor-}]}" ;;
        gatehouse-*) echo "$GH_PID" ;;
        *) echo "" ;;
    esac
}
proxy_family() { proc_family "$1"; }

thread_ticks() { # pid -> "tid name ticks" lines
    local t
    for t in /proc/"$1"/task/*; do
        [ -r "$t/stat" ] || continue
        awk -v tid="${t##*/}" '{ s = $0; sub(/^[^(]*\(/, "", s); name = s; sub(/\).*$/, "", name); sub(/^.*\) /, "", s); split(s, f, " "); gsub(/ /, "_", name); print tid, name, f[12] + f[13] }' "$t/stat"
    done
}

declare -A R_RPS R_P50 R_P99 R_CPU R_PCT R_UCPU R_OTHER R_ERR R_USER R_SYS
THREAD_REPORT=""

pct_of() { awk -v d="$1" -v w="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d / hz / w * 100 }'; }
core_pct() { # before after [field: 1 = busy, 3 = busy in process context]
    awk -v a="$1" -v b="$2" -v f="${3:-1}" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? (y[f] - x[f]) / t * 100 : 0) }'
}

# One warm-up plus one measured wrk run. Sets M_* for the caller.
measure() { # round target attempt
    local round=$1 target=$2 url=${URL[$2]} pids up_pids out
    pids=$(proxy_pids "$target")
    up_pids=$(proc_family "$UP_PID")
    # wrk runs in its own session so that cleanup can stop the whole group (bash, timeout, wrk).
    setsid taskset -c "$LOAD_CORE" timeout --foreground $(( WARMUP + 20 )) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 &
    WRK_PGID=$!
    wait "$WRK_PGID" || true
    WRK_PGID=""

    local p0 u0 us0 c0 c1 t0 th0=""
    p0=$(proc_ticks $pids); u0=$(proc_ticks $up_pids); us0=$(proc_user_ticks $pids)
    c0=$(core_jiffies "$PROXY_CORE"); c1=$(core_jiffies "$LOAD_CORE")
    [ "$target" = gatehouse-plain ] && th0=$(thread_ticks "$GH_PID")
    t0=$(date +%s.%N)
    out="$TMP/wrk-$round-$target-$3.txt"
    # bash's `times` reports wrk's CPU (user and system of the finished child) on the last line.
    setsid taskset -c "$LOAD_CORE" bash -c 'timeout --foreground "$1" wrk -t1 -c"$2" -d"$3s" --latency "$4"; times' \
        _ $(( DURATION + 30 )) "$CONNS" "$DURATION" "$url" >"$out" 2>&1 &
    local wrk_pid=$!
    WRK_PGID=$wrk_pid
    local threads_mid="" threads_names=""
    sleep $(( DURATION / 2 ))
    # connections to the upstream (the proxy's pool, or wrk's own for `direct`)
    if [ -n "$pids" ]; then
        M_UPCONN=$(ss -tnpH state established "( dport = :$UP_PORT )" | grep -cE "pid=($(echo $pids | tr ' ' '|'))," || true)
    else
        M_UPCONN=$(ss -tnpH state established "( dport = :$UP_PORT )" | grep -c '"wrk"' || true)
    fi
    if [ "$target" = gatehouse-plain ]; then
        threads_mid=$(ls /proc/"$GH_PID"/task | wc -l)
        threads_names=$(for t in /proc/"$GH_PID"/task/*; do cat "$t/comm"; done | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
    fi
    wait "$wrk_pid" || true
    WRK_PGID=""
    local t1 p1 u1 us1 c0b c1b
    t1=$(date +%s.%N)
    p1=$(proc_ticks $pids); u1=$(proc_ticks $up_pids); us1=$(proc_user_ticks $pids)
    c0b=$(core_jiffies "$PROXY_CORE"); c1b=$(core_jiffies "$LOAD_CORE")

    local requests errors non2xx wall wrk_s
    requests=$(awk '/requests in/ { print $1; exit }' "$out")
    M_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    M_P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    M_P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errors=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$out")
    M_ERR=$(( ${errors:-0} + ${non2xx:-0} ))
    if [ -z "$requests" ] || [ -z "$M_RPS" ]; then
        echo "wrk failed for $target:" >&2; cat "$out" >&2; requests=0; M_RPS=0; M_ERR=$(( M_ERR + 1 ))
    fi
    # last line of `times`: "0m1.234s 0m2.345s" (children user, system)
    wrk_s=$(tail -1 "$out" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] } print t }')
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    M_CPU="n/a"; M_PCT=0; M_USER="-"; M_SYS="-"
    if [ -n "$pids" ] && [ "$requests" -gt 0 ]; then
        M_CPU=$(awk -v d=$(( p1 - p0 )) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
        M_PCT=$(pct_of $(( p1 - p0 )) "$wall")
        M_USER=$(awk -v d=$(( us1 - us0 )) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
        M_SYS=$(awk -v d=$(( p1 - p0 - us1 + us0 )) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    fi
    M_UCPU=$(awk -v d=$(( u1 - u0 )) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }')
    local upct wpct core0 core1 other0 other1
    upct=$(pct_of $(( u1 - u0 )) "$wall")
    wpct=$(awk -v s="${wrk_s:-0}" -v w="$wall" 'BEGIN { printf "%.0f", s / w * 100 }')
    core0=$(core_pct "$c0" "$c0b"); core1=$(core_pct "$c1" "$c1b")
    # CPU on the two cores that is neither the proxy, nor the upstream, nor wrk: other load.
    other0=$(( $(core_pct "$c0" "$c0b" 3) - M_PCT )); other1=$(( $(core_pct "$c1" "$c1b" 3) - upct - wpct ))
    [ "$other0" -lt 0 ] && other0=0; [ "$other1" -lt 0 ] && other1=0
    M_OTHER=$(( other0 > other1 ? other0 : other1 ))
    M_LINE=$(printf '  %-16s %10s req/s  p50 %6s ms  p99 %7s ms  proxy %6s us/req (user %4s + sys %4s; %3s%%)  upstream %5s us/req (%2s%%, %s conns)  wrk %2s%%  core0 %3s%% core1 %3s%%  other %2s%%  errors %s' \
        "$target" "$M_RPS" "$M_P50" "$M_P99" "$M_CPU" "$M_USER" "$M_SYS" "$M_PCT" "$M_UCPU" "$upct" "$M_UPCONN" "$wpct" "$core0" "$core1" "$M_OTHER" "$M_ERR")
    # Proxy below 90% of its core while core 1 also had headroom: neither side was the limit,
    # something outside the test (e.g. the hypervisor) was; treat req/s with suspicion.
    if [ -n "$pids" ] && [ "$M_PCT" -lt 90 ] && [ "$core1" -lt 95 ]; then
        M_LINE+="  (neither side saturated: suspect)"
    fi
    M_THREADS=""
    if [ "$target" = gatehouse-plain ]; then
        local th1 busy
        th1=$(thread_ticks "$GH_PID")
        busy=$(join <(echo "$th0" | sort -k1,1) <(echo "$th1" | sort -k1,1) |
            awk -v w="$wall" -v hz="$CLK_TCK" '{ d = $5 - $3; if (d / hz / w > 0.01) printf "%s%s(tid %s) %.0f%%", sep, $2, $1, d / hz / w * 100; sep = ", " }' | sed 's/^, //')
        M_THREADS="gatehouse threads mid-run (round $round): $threads_mid [$threads_names]; threads using >1% CPU in the window: ${busy:-none}"
    fi
}

# Waits (at most QUIET_WAIT seconds) until both cores are below MAX_OTHER % busy over one second
# while nothing of ours is loaded, so a run does not start in the middle of someone's build.
wait_quiet() {
    local deadline=$(( SECONDS + QUIET_WAIT )) a0 a1 b0 b1 p0 p1
    while :; do
        a0=$(core_jiffies "$PROXY_CORE"); a1=$(core_jiffies "$LOAD_CORE")
        sleep 1
        b0=$(core_jiffies "$PROXY_CORE"); b1=$(core_jiffies "$LOAD_CORE")
        p0=$(core_pct "$a0" "$b0"); p1=$(core_pct "$a1" "$b1")
        if [ "$p0" -le "$MAX_OTHER" ] && [ "$p1" -le "$MAX_OTHER" ]; then return 0; fi
        if [ $SECONDS -ge "$deadline" ]; then
            log "  (machine still busy after ${QUIET_WAIT}s: core0 ${p0}% core1 ${p1}%; measuring anyway)"
            return 0
        fi
        sleep 2
    done
}

# A measurement disturbed by other load (other% above MAX_OTHER) is repeated up to RETRIES times.
run_one() { # round target
    local attempt=1
    while :; do
        wait_quiet
        measure "$1" "$2" "$attempt"
        if [ "$M_OTHER" -le "$MAX_OTHER" ] || [ "$attempt" -gt "$RETRIES" ]; then break; fi
        log "$M_LINE  <- disturbed by other load, repeating"
        attempt=$(( attempt + 1 ))
        sleep 5
    done
    [ "$M_OTHER" -gt "$MAX_OTHER" ] && M_LINE+="  (still disturbed)"
    log "$M_LINE"
    R_RPS[$2]+="$M_RPS "; R_P50[$2]+="$M_P50 "; R_P99[$2]+="$M_P99 "
    R_CPU[$2]+="$M_CPU "; R_PCT[$2]+="$M_PCT "; R_UCPU[$2]+="$M_UCPU "
    R_OTHER[$2]+="$M_OTHER "; R_ERR[$2]+="$M_ERR "; R_USER[$2]+="$M_USER "; R_SYS[$2]+="$M_SYS "
    if [ -n "$M_THREADS" ]; then THREAD_REPORT=$M_THREADS; log "    $THREAD_REPORT"; fi
}

# ---------------------------------------------------------------------------------------
# rounds

for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    for target in "${TARGET_LIST[@]}"; do
        run_one "$round" "$target"
    done
done

# ---------------------------------------------------------------------------------------
# summary

med() { local -n arr=$1; median ${arr[$2]:-}; }
log ""
log "median of $ROUNDS round(s):"
log "$(printf '%-16s %11s %8s %8s %13s %11s %7s %15s %7s %7s' target 'req/s' 'p50 ms' 'p99 ms' 'proxy us/req' '(user/sys)' 'proxy%' 'upstream us/req' 'other%' errors)"
declare -A S_RPS S_CPU
for target in "${TARGET_LIST[@]}"; do
    S_RPS[$target]=$(med R_RPS "$target")
    case "${R_CPU[$target]}" in *n/a*) S_CPU[$target]=n/a ;; *) S_CPU[$target]=$(med R_CPU "$target") ;; esac
    us="-"
    [ "${S_CPU[$target]}" = n/a ] || us="$(med R_USER "$target")/$(med R_SYS "$target")"
    log "$(printf '%-16s %11s %8s %8s %13s %11s %7s %15s %7s %7s' "$target" "${S_RPS[$target]}" \
        "$(med R_P50 "$target")" "$(med R_P99 "$target")" "${S_CPU[$target]}" "$us" \
        "$( [ "${S_CPU[$target]}" = n/a ] && echo n/a || med R_PCT "$target")" \
        "$(med R_UCPU "$target")" "$(med R_OTHER "$target")" \
        "$(printf '%s\n' ${R_ERR[$target]} | awk '{s += $1} END {print s}')")"
done
log ""

disturbed() { # target: "yes" if any kept run of it had other% above MAX_OTHER
    printf '%s\n' ${R_OTHER[$1]:-} | awk -v m="$MAX_OTHER" '$1 > m { d = 1 } END { print d ? "yes" : "no" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.3f", a / b }'; }
verdict=0
for kind in plain tls; do
    g="gatehouse-$kind"; n="nginx-$kind"
    [ -n "${S_RPS[$g]:-}" ] && [ -n "${S_RPS[$n]:-}" ] || continue
    rr=$(ratio "${S_RPS[$g]}" "${S_RPS[$n]}")
    cr=$(ratio "${S_CPU[$g]}" "${S_CPU[$n]}")
    if [ "$kind" = plain ]; then
        rv=$(awk -v r="$rr" 'BEGIN { print ((r >= 0.9) ? "PASS" : "FAIL") }')
        cv=$(awk -v r="$cr" 'BEGIN { print ((r <= 1.2) ? "PASS" : "FAIL") }')
        [ "$rv" = PASS ] && [ "$cv" = PASS ] || verdict=1
        note=""
        if [ "$(disturbed "$g")" = yes ] || [ "$(disturbed "$n")" = yes ]; then
            note="  INCONCLUSIVE: some runs were disturbed by other load (other% > $MAX_OTHER), rerun on a quiet machine"
            verdict=3
        fi
        log "$kind: gatehouse/nginx req/s = $rr  (target >= 0.90: $rv);  CPU us/req = $cr  (target <= 1.20: $cv)$note"
    else
        log "$kind:   gatehouse/nginx req/s = $rr  (no target; reported);  CPU us/req = $cr"
    fi
done
[ -n "$THREAD_REPORT" ] && log "last $THREAD_REPORT"
log ""
log "notes: proxy us/req = utime+stime of the proxy's processes (nginx master+worker, gatehouse all"
log "threads) over the measured window / requests completed; proxy% = the same as a share of one core."
log "upstream us/req likewise for the upstream. other% = CPU on core $PROXY_CORE or $LOAD_CORE used by anything but"
log "the proxy, the upstream and wrk (other tenants); runs above ${MAX_OTHER}% are repeated. Per-run lines"
log "also show core $LOAD_CORE's use: near 100% with the proxy below 100% means the load side limited req/s."
echo "results written to $OUT" >&2

if [ "$HOLD" = 1 ]; then
    echo "holding: gatehouse pid $GH_PID plain ${URL[gatehouse-plain]} tls ${URL[gatehouse-tls]}; nginx pid $NGX_PID; upstream pid $UP_PID. Ctrl-C to stop." >&2
    while kill -0 "$GH_PID" 2>/dev/null; do sleep 1; done
fi
exit "$verdict"
