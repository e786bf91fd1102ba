#!/usr/bin/env bash
# bench/jwt.sh: bearer-JWT gateways compared on loopback: gatehouse against HAProxy (Debian's
# 2.6) doing the same checks on the same tokens: signature (jwt_verify), algorithm, issuer,
# audience, expiry and a groups claim, then proxying to the same upstream.
#
# Two workloads, each a wrk run (1 thread, fixed connections) with the proxy on core 0 (one
# gatehouse worker thread; HAProxy nbthread 1) and wrk plus the upstream (nginx) on core 1:
#   reused: every request carries the same token (a CI job's token, used for its lifetime);
#   unique: every request carries a token not seen before (gatehouse's verified-token cache
#           misses; the gateway is restarted before each round so earlier rounds cannot help).
# Reports requests/s, p50/p99 latency and proxy CPU per request, the median over rounds, and
# gatehouse/HAProxy ratios. gatehouse runs as deployed: policy decision and audit log on (it
# refuses to run without one). See bench/README.md.
#
# Everything listens on 127.0.0.1 with free ports, lives in a temp dir, is bounded in time and
# is stopped by pid on exit.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/jwt.sh [options]
  --alg ALG         RS256 (default: what Okta and Keycloak sign with) or ES256
  --rounds N        rounds per target and workload (default 3)
  --duration S      measured seconds per run (default 10)
  --warmup S        warm-up seconds before each run (default 3)
  --connections N   wrk connections (default 64)
  --tokens N        unique tokens to sign (default 150000; must exceed one unique run)
  --out FILE        results file (default bench/results/jwt-<alg>-<date>.txt)
Needs: haproxy, nginx (nginx-light), wrk, openssl, taskset, curl, python3, 2 cores.
EOF
}

ALG=RS256 ROUNDS=3 DURATION=10 WARMUP=3 CONNS=64 NTOKENS=150000 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --alg) ALG=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --tokens) NTOKENS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
case "$ALG" in RS256|ES256) ;; *) echo "--alg must be RS256 or ES256" >&2; exit 2 ;; esac
for cmd in haproxy nginx wrk openssl taskset curl python3; do
    command -v "$cmd" >/dev/null || { echo "bench/jwt.sh needs $cmd (apt-get install haproxy nginx-light wrk)" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 cores" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-$REPO/bench/results/jwt-$ALG-$STAMP.txt}
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d /tmp/gatehouse-jwt-bench.XXXXXX)
PIDS=()
WATCHDOG=""
WRK_PGID=""
MAX_SECONDS=$(( ROUNDS * 4 * (WARMUP + DURATION + 20) + 1800 ))
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_bound bench/jwt.sh

log() { echo "$*" | tee -a "$OUT"; }
: >"$OUT"
PROXY_CORE=0 LOAD_CORE=1

# ---------------------------------------------------------------------------------------
# build, keys and tokens

TARGET_DIR=${BENCH_TARGET_DIR:-$REPO/target/bench}
echo "building gatehouse (release, $TARGET_DIR) ..." >&2
cargo build --quiet --release --locked --manifest-path "$REPO/Cargo.toml" --target-dir "$TARGET_DIR" \
    --bin gatehouse --example bench_jwt_tokens
GATEHOUSE_BIN="$TARGET_DIR/release/gatehouse"
TOKENS_BIN="$TARGET_DIR/release/examples/bench_jwt_tokens"

mkdir -p "$TMP/keys" "$TMP/gatehouse" "$TMP/haproxy" "$TMP/nginx" "$TMP/certs"
if [ "$ALG" = RS256 ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/keys/key.pem" 2>/dev/null
else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/keys/key.pem" 2>/dev/null
fi
openssl pkey -in "$TMP/keys/key.pem" -pubout -out "$TMP/keys/pub.pem"
openssl pkcs8 -topk8 -nocrypt -in "$TMP/keys/key.pem" -outform DER -out "$TMP/keys/key.der"
ISSUER=https://idp.bench.test
echo "signing $NTOKENS $ALG tokens ..." >&2
"$TOKENS_BIN" "$ALG" "$TMP/keys/key.der" "$ISSUER" gatehouse "$NTOKENS" "$TMP/keys/jwks.json" "$TMP/keys/tokens.txt"
TOKEN=$(head -1 "$TMP/keys/tokens.txt")
# nginx's worker (not root) serves the JWKS; the private key stays unreadable to it.
chmod a+x "$TMP" "$TMP/keys"
chmod a+r "$TMP/keys/jwks.json"
chmod go-rwx "$TMP/keys/key.pem" "$TMP/keys/key.der"
"$GATEHOUSE_BIN" certs dev --out "$TMP/certs" --host localhost --host 127.0.0.1 >/dev/null 2>&1 \
    || "$GATEHOUSE_BIN" certs dev --out "$TMP/certs" >/dev/null

log "bench/jwt.sh $STAMP: $ALG, $ROUNDS rounds, ${DURATION}s measured after ${WARMUP}s warm-up, $CONNS connections, audit log on"
log "machine:   $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
log "haproxy:   $(haproxy -v | head -1)"
log "wrk:       $(wrk -v 2>&1 | head -1)"
log "gatehouse: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" status --porcelain -- src Cargo.toml | grep -q . && echo ' (with uncommitted changes in src)'), $(rustc --version)"

# ---------------------------------------------------------------------------------------
# processes

UP_PORT=$(free_port) JWKS_PORT=$(free_port) HA_PORT=$(free_port) GH_PORT=$(free_port)
# nginx: the upstream (13-byte answer) and, over TLS, the JWKS gatehouse fetches once.
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "hello, world\n"; } }
    server {
        listen 127.0.0.1:$JWKS_PORT ssl;
        ssl_certificate $TMP/certs/server.crt;
        ssl_certificate_key $TMP/certs/server.key;
        location = /jwks.json { default_type application/json; alias $TMP/keys/jwks.json; }
    }
}
EOF
taskset -c "$LOAD_CORE" nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' -e "$TMP/nginx/error.log" &
PIDS+=("$!")
wait_port "$UP_PORT" 10

# HAProxy: the documented JWT recipe (jwt_verify and claim checks with jwt_payload_query).
# Its JSON path cannot search an array, so the groups claim is matched in the decoded payload.
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:$HA_PORT
    http-request deny deny_status 401 unless { req.hdr(authorization) -m found }
    http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('\$.alg')
    http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('\$.iss')
    http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('\$.aud')
    http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('\$.exp','int')
    http-request set-var(txn.payload) http_auth_bearer,word(2,.),ub64dec
    http-request deny deny_status 401 unless { var(txn.alg) -m str $ALG }
    http-request deny deny_status 401 unless { var(txn.iss) -m str $ISSUER }
    http-request deny deny_status 401 unless { var(txn.aud) -m str gatehouse }
    http-request deny deny_status 401 unless { http_auth_bearer,jwt_verify(txn.alg,"$TMP/keys/pub.pem") -m int 1 }
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request deny deny_status 403 unless { var(txn.payload) -m reg '"groups":\[[^]]*"engineering"' }
    default_backend upstream
backend upstream
    http-reuse always
    server up 127.0.0.1:$UP_PORT
EOF
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg"

# gatehouse: one bearer route, the group turned into a role, one allow rule for it.
mkdir -p "$TMP/gatehouse/policies"
cat >"$TMP/gatehouse/policies/bench.yaml" <<EOF
roles:
  developer:
    groups: [engineering]
rules:
  - id: developers
    route: bench
    roles: [developer]
EOF
"$GATEHOUSE_BIN" audit keygen --out "$TMP/gatehouse/audit.pem" >/dev/null
cat >"$TMP/gatehouse/gatehouse.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
plaintext_listen = ["127.0.0.1:$GH_PORT"]
access_log = false

[tls]
cert_file = "$TMP/certs/server.crt"
key_file = "$TMP/certs/server.key"
watch = false

[metrics]
listen = "127.0.0.1:0"

[[identity.jwt]]
issuer = "$ISSUER"
audiences = ["gatehouse"]
algorithms = ["$ALG"]
jwks_uri = "https://localhost:$JWKS_PORT/jwks.json"
ca_file = "$TMP/certs/ca.crt"

[policy]
dir = "$TMP/gatehouse/policies"
watch = false

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
auth = ["bearer"]
EOF
"$GATEHOUSE_BIN" check --config "$TMP/gatehouse/gatehouse.toml" >/dev/null

HA_PID="" GH_PID=""
start_haproxy() {
    taskset -c "$PROXY_CORE" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/log" 2>&1 &
    HA_PID=$!
    PIDS+=("$HA_PID")
    wait_port "$HA_PORT" 10
}
start_gatehouse() {
    if [ -n "$GH_PID" ]; then
        kill -TERM "$GH_PID" 2>/dev/null || true
        wait "$GH_PID" 2>/dev/null || true
    fi
    rm -f "$TMP/gatehouse/addrs"
    TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c "$PROXY_CORE" "$GATEHOUSE_BIN" serve \
        --config "$TMP/gatehouse/gatehouse.toml" --addr-file "$TMP/gatehouse/addrs" \
        >>"$TMP/gatehouse/log" 2>&1 &
    GH_PID=$!
    PIDS+=("$GH_PID")
    wait_port "$GH_PORT" 15
}
start_haproxy
start_gatehouse
# The metrics listener's address, for the cache figures.
gh_metric() { # sample prefix
    local addr
    addr=$(sed -n 's/^metrics=//p' "$TMP/gatehouse/addrs")
    [ -n "$addr" ] || { echo 0; return; }
    curl -s "http://$addr/metrics" | awk -v k="$1" 'index($0, k) == 1 { print $2; f = 1 } END { if (!f) print 0 }'
}

# Sanity: both accept the token, refuse a tampered one and one without the group's role.
# The tampered token differs in the signature's first character: changing the last one may
# only touch base64 padding bits, which a lenient decoder ignores (the token stays valid).
sig=${TOKEN##*.}
if [ "${sig:0:1}" = A ]; then swap=B; else swap=A; fi
TAMPERED="${TOKEN%.*}.$swap${sig:1}"
for name in haproxy gatehouse; do
    port=$HA_PORT; [ $name = gatehouse ] && port=$GH_PORT
    ok=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/")
    bad=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TAMPERED" "http://127.0.0.1:$port/")
    none=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
    log "check $name: valid token $ok, tampered $bad, none $none"
    [ "$ok" = 200 ] && [ "$bad" != 200 ] && [ "$none" != 200 ] || { tail -20 "$TMP/gatehouse/log" >&2; exit 1; }
done

cat >"$TMP/unique.lua" <<'EOF'
-- Every request carries the next token of the file; never the same one twice in a run.
local tokens, i = {}, 0
function init(args)
    for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
function request()
    i = i + 1
    if i > #tokens then i = 1 end
    return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. tokens[i] })
end
EOF

# ---------------------------------------------------------------------------------------
# runs

declare -A RPS P50 P99 CPU
run_wrk() { # port workload seconds -> wrk output
    local args=(-t1 -c"$CONNS" -d"${3}s" --latency)
    if [ "$2" = unique ]; then
        args+=(-s "$TMP/unique.lua" "http://127.0.0.1:$1/" -- "$TMP/keys/tokens.txt")
    else
        args+=(-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/")
    fi
    taskset -c "$LOAD_CORE" wrk "${args[@]}"
}

measure() { # target workload round
    local target=$1 workload=$2 port pid out t0 t1 reqs
    if [ "$target" = gatehouse ]; then
        # A fresh process per unique round: nothing verified earlier is cached.
        [ "$workload" = unique ] && start_gatehouse
        port=$GH_PORT pid=$GH_PID
    else
        port=$HA_PORT pid=$HA_PID
    fi
    [ "$workload" = reused ] && run_wrk "$port" reused "$WARMUP" >/dev/null
    local miss0 hit0
    miss0=$(gh_metric 'gatehouse_token_cache_total{result="miss"}')
    hit0=$(gh_metric 'gatehouse_token_cache_total{result="hit"}')
    t0=$(proc_ticks "$pid")
    out=$(run_wrk "$port" "$workload" "$DURATION")
    t1=$(proc_ticks "$pid")
    reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
    local non2xx
    non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
    local rps p50 p99 cpu
    rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
    cpu=$(awk -v d=$(( t1 - t0 )) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    local reuse=""
    # More requests than tokens: the file came round again (HAProxy keeps nothing, so for it
    # this changes nothing; for gatehouse the cache figures say whether any was a hit).
    [ "$workload" = unique ] && [ "${reqs:-0}" -gt "$NTOKENS" ] && reuse="  ($reqs requests > $NTOKENS tokens)"
    local cache=""
    if [ "$target" = gatehouse ]; then
        cache=" cache hits $(awk -v a="$(gh_metric 'gatehouse_token_cache_total{result="hit"}')" -v b="$hit0" 'BEGIN{print a-b}') misses $(awk -v a="$(gh_metric 'gatehouse_token_cache_total{result="miss"}')" -v b="$miss0" 'BEGIN{print a-b}')"
    fi
    log "$(printf '%-9s %-6s round %s: %9s req/s  p50 %7s ms  p99 %7s ms  %6s µs CPU/request%s%s%s' \
        "$target" "$workload" "$3" "$rps" "$p50" "$p99" "$cpu" "${non2xx:+  NON-2XX $non2xx}" "$cache" "$reuse")"
    RPS[$target-$workload]+="$rps " P50[$target-$workload]+="$p50 " P99[$target-$workload]+="$p99 " CPU[$target-$workload]+="$cpu "
}

for round in $(seq "$ROUNDS"); do
    for workload in reused unique; do
        for target in haproxy gatehouse; do
            measure "$target" "$workload" "$round"
        done
    done
done

# ---------------------------------------------------------------------------------------
# summary

log ""
log "median of $ROUNDS rounds:"
for workload in reused unique; do
    for target in haproxy gatehouse; do
        k=$target-$workload
        # shellcheck disable=SC2086
        log "$(printf '  %-9s %-6s %9s req/s  p50 %7s ms  p99 %7s ms  %6s µs CPU/request' "$target" "$workload" \
            "$(median ${RPS[$k]})" "$(median ${P50[$k]})" "$(median ${P99[$k]})" "$(median ${CPU[$k]})")"
    done
    # shellcheck disable=SC2086
    ratio=$(awk -v g="$(median ${RPS[gatehouse-$workload]})" -v h="$(median ${RPS[haproxy-$workload]})" 'BEGIN { printf "%.2f", g / h }')
    log "  $workload: gatehouse/haproxy = ${ratio}x requests/s$([ "$workload" = reused ] && awk -v r="$ratio" 'BEGIN { print (r >= 1.5 ? " (target >= 1.5x: met)" : " (target >= 1.5x: NOT met)") }')"
done
log "results: $OUT"
