#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions and system calls per proxied request, for
# gatehouse and for nginx doing the same job. Wall-clock figures on a shared VM move by 20 %
# from one minute to the next; instruction counts (valgrind's callgrind) do not, so this is
# how a change to the request path is judged before bench/proxy.sh confirms it.
#
# For each proxy: the same upstream (nginx returning 13 bytes), a warm-up, then N requests
# from wrk (64 connections, stopped after N responses). Counted between the warm-up and the
# end: instructions (callgrind, all threads, user space only) and system calls (strace -c, a
# separate run without valgrind), both divided by the requests the proxy actually answered
# (counted in the upstream's access log). Also prints the
# functions with the most inclusive instructions, to show where a request's cost goes.
#
# Everything binds 127.0.0.1 on free ports, lives in a temp dir, is bounded in time and is
# stopped by pid on exit.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/instructions.sh [options]
  --requests N      measured requests (default 20000)
  --warmup N        requests before counting starts (default 2000)
  --connections C   wrk connections (default 64)
  --gatehouse BIN   gatehouse binary (default: build the working tree into target/bench)
  --no-build        do not run cargo
  --no-nginx        skip the nginx comparison
  --top N           functions to list (default 25)
  --out FILE        results file (default bench/results/instructions-<date>.txt)
  --keep FILE       keep gatehouse's callgrind output (for callgrind_annotate --tree=caller)
  --bearer          gatehouse's route requires a bearer JWT (RS256, one token reused, as in
                    bench/jwt.sh) and a policy decision; nginx still proxies without one
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=20000
WARMUP=2000
CONNS=64
GATEHOUSE_BIN=""
BUILD=1
NGINX=1
TOP=25
OUT=""
KEEP=""
BEARER=0
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) REQUESTS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --gatehouse) GATEHOUSE_BIN=$2; BUILD=0; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-nginx) NGINX=0; shift ;;
        --top) TOP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        --bearer) BEARER=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for tool in wrk nginx valgrind callgrind_annotate strace curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx-light wrk valgrind strace curl)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/gatehouse-instr.XXXXXX)
PIDS=()
WATCHDOG=""
WRK_PGID=""
MAX_SECONDS=1800
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_bound bench/instructions.sh

[ -n "$OUT" ] || OUT="$REPO/bench/results/instructions-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
log() { echo "$*" | tee -a "$OUT"; }

TARGET_DIR=${BENCH_TARGET_DIR:-$REPO/target/bench}
if [ "$BUILD" = 1 ]; then
    echo "building (cargo build --release --bin gatehouse) into $TARGET_DIR ..." >&2
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet --bin gatehouse) >&2
fi
if [ "$BEARER" = 1 ] && [ ! -x "$TARGET_DIR/release/examples/bench_jwt_tokens" ]; then
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet --example bench_jwt_tokens) >&2
fi
[ -n "$GATEHOUSE_BIN" ] || GATEHOUSE_BIN="$TARGET_DIR/release/gatehouse"
[ -x "$GATEHOUSE_BIN" ] || { echo "no gatehouse binary at $GATEHOUSE_BIN" >&2; exit 2; }

NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
start_nginx() { # dir body [prefix command...] -> NGINX_PID
    local dir=$1 body=$2
    shift 2
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$body
}
EOF
    "$@" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >>"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

mkdir -p "$TMP/gatehouse"
"$GATEHOUSE_BIN" certs dev --out "$TMP/certs" --host localhost --host 127.0.0.1 >/dev/null 2>&1
# --bearer: an RS256 key, its JWKS (served over TLS by the upstream's nginx) and one token.
JWKS_SERVER=""
WRK_AUTH=()
if [ "$BEARER" = 1 ]; then
    mkdir -p "$TMP/keys"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/keys/key.pem" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$TMP/keys/key.pem" -outform DER -out "$TMP/keys/key.der"
    "$TARGET_DIR/release/examples/bench_jwt_tokens" RS256 "$TMP/keys/key.der" https://idp.bench.test \
        gatehouse 1 "$TMP/keys/jwks.json" "$TMP/keys/tokens.txt"
    chmod a+x "$TMP" "$TMP/keys"
    chmod a+r "$TMP/keys/jwks.json"
    WRK_AUTH=(-H "Authorization: Bearer $(head -1 "$TMP/keys/tokens.txt")")
    JWKS_PORT=$(free_port)
    JWKS_SERVER="
    server {
        listen 127.0.0.1:$JWKS_PORT ssl;
        access_log off;
        ssl_certificate $TMP/certs/server.crt;
        ssl_certificate_key $TMP/certs/server.key;
        location = /jwks.json { default_type application/json; alias $TMP/keys/jwks.json; }
    }"
fi

# The upstream counts what reaches it (one access-log line per request).
UP_PORT=$(free_port)
start_nginx "$TMP/upstream" "    access_log $TMP/upstream/access.log;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 \"hello, world\\n\"; }
    }$JWKS_SERVER"
wait_port "$UP_PORT" 10
upstream_count() { wc -l <"$TMP/upstream/access.log"; }

# wrk runs until the upstream has seen N more requests (its access log), then is stopped:
# wrk itself only knows durations.
load() { # url requests [wrk options]
    local url=$1 n=$2
    shift 2
    local target=$(( $(upstream_count) + n ))
    setsid wrk -t1 -c"$CONNS" -d600s "$@" "$url" >"$TMP/wrk.out" 2>&1 &
    local wrk=$!
    WRK_PGID=$wrk
    while [ "$(upstream_count)" -lt "$target" ]; do
        kill -0 "$wrk" 2>/dev/null || { cat "$TMP/wrk.out" >&2; echo "wrk ended early" >&2; return 1; }
        sleep 0.2
    done
    kill -INT "$wrk" 2>/dev/null || true
    wait "$wrk" 2>/dev/null || true
    WRK_PGID=""
    # Timeouts are left out: wrk counts a slow answer (valgrind, a first JWKS fetch) as one.
    if grep -q "Non-2xx" "$TMP/wrk.out" ||
        grep -Eq "Socket errors: connect [1-9]|read [1-9]|write [1-9]" "$TMP/wrk.out"; then
        cat "$TMP/wrk.out" >&2
        echo "wrk saw errors" >&2
        return 1
    fi
}

"$GATEHOUSE_BIN" audit keygen --out "$TMP/gatehouse/audit.pem" >/dev/null
ROUTE_AUTH="public = true"
BEARER_CONF=""
if [ "$BEARER" = 1 ]; then
    mkdir -p "$TMP/gatehouse/policies"
    printf '%s\n' "roles:" "  developer:" "    groups: [engineering]" "rules:" \
        "  - id: developers" "    route: bench" "    roles: [developer]" >"$TMP/gatehouse/policies/bench.yaml"
    ROUTE_AUTH='auth = ["bearer"]'
    BEARER_CONF="
[[identity.jwt]]
issuer = \"https://idp.bench.test\"
audiences = [\"gatehouse\"]
algorithms = [\"RS256\"]
jwks_uri = \"https://localhost:$JWKS_PORT/jwks.json\"
ca_file = \"$TMP/certs/ca.crt\"

[policy]
dir = \"$TMP/gatehouse/policies\"
watch = false
"
fi
GH_PORT=$(free_port)
GH_METRICS=$(free_port)
cat >"$TMP/gatehouse/gatehouse.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
plaintext_listen = ["127.0.0.1:$GH_PORT"]
access_log = false

[metrics]
listen = "127.0.0.1:$GH_METRICS"

[tls]
cert_file = "$TMP/certs/server.crt"
key_file = "$TMP/certs/server.key"
watch = false

$BEARER_CONF
[audit]
dir = "$TMP/gatehouse/audit"
replica = "bench"
signing_key_file = "$TMP/gatehouse/audit.pem"

[[routes]]
name = "bench"
kind = "plain"
hosts = ["*"]
path_prefix = "/"
upstream = "http://127.0.0.1:$UP_PORT"
$ROUTE_AUTH
EOF
"$GATEHOUSE_BIN" check --config "$TMP/gatehouse/gatehouse.toml" >/dev/null
start_gatehouse() { # prefix command...
    TOKIO_WORKER_THREADS=1 "$@" "$GATEHOUSE_BIN" serve --config "$TMP/gatehouse/gatehouse.toml" \
        >"$TMP/gatehouse/stdout.log" 2>"$TMP/gatehouse/stderr.log" &
    GH_PID=$!
    PIDS+=("$GH_PID")
    wait_port "$GH_PORT" 120 && wait_port "$GH_METRICS" 30
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# instructions (callgrind): counting starts after the warm-up (callgrind_control --zero)

callgrind_run() { # name url count-fn pid-to-control [wrk options] -> "instructions requests file"
    local name=$1 url=$2 count=$3 pid=$4
    shift 4
    load "$url" "$WARMUP" "$@"
    local before
    before=$($count)
    callgrind_control --zero "$pid" >/dev/null
    load "$url" "$REQUESTS" "$@"
    callgrind_control --dump "$pid" >/dev/null
    local after
    after=$($count)
    # The first dump (<out>.<pid>.1) holds the counts since the zeroing, all threads summed.
    local file="$TMP/$name.callgrind.out.$pid.1"
    for _ in $(seq 100); do [ -s "$file" ] && break; sleep 0.1; done
    local total
    total=$(callgrind_annotate --inclusive=no "$file" 2>/dev/null |
        awk '!done && /PROGRAM TOTALS/ { gsub(",", "", $1); print $1; done = 1 }')
    echo "$total $((after - before)) $file"
}

log "# instructions and system calls per request, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ "$BUILD" = 1 ]; then
    log "gatehouse: $(git -C "$REPO" rev-parse --short=12 HEAD)$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock | grep -q . && echo ' + uncommitted changes'), binary $GATEHOUSE_BIN"
else
    log "gatehouse: prebuilt binary $GATEHOUSE_BIN ($(date -r "$GATEHOUSE_BIN" '+%F %T'); HEAD is $(git -C "$REPO" rev-parse --short=12 HEAD))"
fi
[ "$BEARER" = 0 ] || log "bearer:    gatehouse's route requires a bearer JWT (RS256, one token on every request) and a policy decision"
log "plan:      warm-up $WARMUP requests, then $REQUESTS measured, wrk -t1 -c$CONNS, upstream nginx (13-byte body), gatehouse with TOKIO_WORKER_THREADS=1 and the audit log on (batch fsync, signed checkpoints)"
log "$(valgrind --version), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
log ""

VG=(valgrind --tool=callgrind --separate-threads=no --dump-instr=no --trace-children=no)

start_gatehouse "${VG[@]}" --callgrind-out-file="$TMP/gatehouse.callgrind.out.%p"
read -r gh_instr gh_req gh_file < <(callgrind_run gatehouse "http://127.0.0.1:$GH_PORT/" upstream_count "$GH_PID" "${WRK_AUTH[@]}")
stop_pid "$GH_PID"
[ -z "$KEEP" ] || cp "$gh_file" "$KEEP"

if [ "$NGINX" = 1 ]; then
    NX_PORT=$(free_port)
    NX_BODY="    access_log off;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$NX_PORT;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
    start_nginx "$TMP/nginx" "$NX_BODY" "${VG[@]}" --callgrind-out-file="$TMP/nginx.callgrind.out.%p"
    wait_port "$NX_PORT" 60
    read -r nx_instr nx_req nx_file < <(callgrind_run nginx "http://127.0.0.1:$NX_PORT/" upstream_count "$NGINX_PID")
    stop_pid "$NGINX_PID"
fi

# ---------------------------------------------------------------------------------------
# strace -c's table as "name calls (per request)", busiest first. `calls` is the fourth
# column; a call that failed sometimes has an `errors` column before the name.
syscall_table() { # requests strace-file
    awk 'NR > 2 && $1 !~ /^-/ && $NF != "total" && $4 ~ /^[0-9]+$/ { printf "  %-16s %10s  (%.2f per request)\n", $NF, $4, $4 / n }' n="$1" "$2" |
        sort -k2,2nr | head -16
}

# system calls (strace -c, no valgrind): the same measured load

strace_run() { # url count-fn pid [wrk options] -> "syscalls requests", table in $TMP/strace.<pid>
    local url=$1 count=$2 pid=$3
    shift 3
    load "$url" "$WARMUP" "$@"
    local before
    before=$($count)
    strace -c -f -p "$pid" -o "$TMP/strace.$pid" 2>/dev/null &
    local st=$!
    sleep 1
    load "$url" "$REQUESTS" "$@"
    kill -INT "$st"
    wait "$st" 2>/dev/null || true
    local after
    after=$($count)
    local calls
    # The total line: % time, seconds, usecs/call, calls, [errors,] "total".
    calls=$(awk '$NF == "total" { print $4 }' "$TMP/strace.$pid")
    echo "$calls $((after - before))"
}

start_gatehouse
read -r gh_calls gh_sreq < <(strace_run "http://127.0.0.1:$GH_PORT/" upstream_count "$GH_PID" "${WRK_AUTH[@]}")
gh_strace="$TMP/strace.$GH_PID"
stop_pid "$GH_PID"
if [ "$NGINX" = 1 ]; then
    start_nginx "$TMP/nginx2" "${NX_BODY//$TMP\/nginx/$TMP/nginx2}"
    wait_port "$NX_PORT" 10
    read -r nx_calls nx_sreq < <(strace_run "http://127.0.0.1:$NX_PORT/" upstream_count "$NGINX_PID")
    nx_strace="$TMP/strace.$NGINX_PID"
    stop_pid "$NGINX_PID"
fi

per() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.0f", a / b }'; }
per1() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.2f", a / b }'; }
log "target      instructions/req  syscalls/req   (measured requests: callgrind, strace)"
log "$(printf '%-11s %16s %12s   (%s, %s)' gatehouse "$(per "$gh_instr" "$gh_req")" "$(per1 "$gh_calls" "$gh_sreq")" "$gh_req" "$gh_sreq")"
if [ "$NGINX" = 1 ]; then
    log "$(printf '%-11s %16s %12s   (%s, %s)' nginx "$(per "$nx_instr" "$nx_req")" "$(per1 "$nx_calls" "$nx_sreq")" "$nx_req" "$nx_sreq")"
    log "gatehouse/nginx instructions per request: $(awk -v a="$gh_instr" -v b="$gh_req" -v c="$nx_instr" -v d="$nx_req" 'BEGIN { printf "%.2f", (a / b) / (c / d) }')"
fi
# valgrind does not emulate the CPU's SHA extensions, so the audit chain's SHA-256 runs
# aws-lc's AVX code here, several times the instructions it takes on hardware with them.
gh_sha=$(callgrind_annotate --inclusive=yes "$gh_file" 2>/dev/null |
    awk '!done && / \?\?\?:sha256_block_data_order / { v = $1; gsub(",", "", v); print v; done = 1 }')
log "gatehouse without SHA-256 blocks: $(per "$(( gh_instr - ${gh_sha:-0} ))" "$gh_req") instructions/req (SHA-256 under valgrind: $(per "${gh_sha:-0}" "$gh_req"), AVX code path)"
log ""
log "gatehouse system calls (strace -c over $gh_sreq requests):"
syscall_table "$gh_sreq" "$gh_strace" | tee -a "$OUT"
if [ "$NGINX" = 1 ]; then
    log "nginx system calls (strace -c over $nx_sreq requests):"
    syscall_table "$nx_sreq" "$nx_strace" | tee -a "$OUT"
fi
log ""
log "gatehouse: functions by inclusive instructions per request (top $TOP):"
callgrind_annotate --inclusive=yes "$gh_file" 2>/dev/null |
    awk -v n="$gh_req" -v top="$TOP" '/^[ 0-9,]+ \(/ && !/PROGRAM TOTALS/ {
        v = $1; gsub(",", "", v); $1 = ""; $2 = "";
        sub(/^ +/, ""); sub(/ \[[^]]*\]$/, "");
        if (length($0) > 110) $0 = substr($0, 1, 107) "...";
        if (++k <= top) printf "  %9.0f  %s\n", v / n, $0 }' | tee -a "$OUT"
echo "results written to $OUT" >&2
