#!/usr/bin/env bash
# The whole story in one command. On 127.0.0.1 only, this starts
#   - a real OpenID provider (tests/oidc/provider.mjs: the `oidc-provider` npm package) with
#     the users alice (engineering: developer) and bob (sre),
#   - a git smart-HTTP server (`git http-backend`) standing in for Gogs, whose real
#     `post-receive` hook (demo/gogs/post-receive) sends Gogs-shaped, signed push webhooks,
#   - an OTLP receiver standing in for Lightstep (demo/lightstep_receiver.py),
#   - a webhook receiver that checks the gateway's re-signed forwards
#     (tests/webhooks/receiver.py, with the `standardwebhooks` library),
#   - gatehouse, with the example policies in policies/,
# and then, narrating each step:
#   1. alice signs in with the device grant (`gatehouse login`; the demo completes the
#      provider's login for her in headless Chromium) and clones through the gateway with
#      `gatehouse git-credential` as git's credential helper;
#   2. she pushes a branch; her push to main is refused by the policy rule protect-main, in
#      git's output; bob (sre) signs in and lands her commit on main;
#   3. the push webhook reaches the gateway, is verified and recorded with the verified pusher
#      (bob), and is forwarded, signed again, to the receiver, which checks the signature;
#   4. the checkout service built from that commit sends traces with the OpenTelemetry Python
#      SDK through the gateway with a CI token; the Lightstep stand-in shows them enriched
#      with the commit, its author and the verified pusher, and the gateway's Lightstep token;
#   5. the gateway stops; the auditor verifies the audit log's chain and exports it as CSV.
# Every step is checked; the demo exits non-zero naming the step that did not do what it
# says. Every process started here is stopped by pid (also on failure and Ctrl-C), and the
# temporary directory removed; on failure the logs are kept under target/demo-logs.
#
#   ./demo/run.sh
#
# Needs: cargo, git (with git-http-backend), curl (with HTTP/2), coreutils `timeout`, flock,
# node and npm (tests/oidc is installed with `npm ci` when missing), /usr/bin/chromium
# (or CHROMIUM_PATH), python3 with venv and the `standardwebhooks` package
# (tests/webhooks/requirements.txt); the OpenTelemetry SDK is installed into a venv by
# tests/otlp/venv.sh (PyPI, once).
set -euo pipefail

REPO=platform/checkout
PASSWORD="correct horse"   # every user's password at the demo provider (tests/oidc/provider.mjs)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
GATEHOUSE=$TARGET_DIR/release/gatehouse
GIT_SERVER=$TARGET_DIR/release/examples/git_http_server
SAVED_LOGS=$TARGET_DIR/demo-logs
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

PIDS=()    # long-running processes started here
CURRENT=   # the bounded step running right now (a `timeout` process)
WORK=
STEP="starting"

say() { printf '%s\n' "$*"; }
indent() { sed 's/^/    /'; }
step() {
    STEP=$1
    printf '\n==> %s\n' "$1"
}
fail() {
    printf '\nFAILED: %s\n  in step: %s\n' "$1" "$STEP" >&2
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

LOGS=(gateway.log git-server.log provider.log lightstep.log receiver.log receiver.jsonl
    hooks.jsonl gatehouse.toml alice-login.out bob-login.out)

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
        for f in "${LOGS[@]}"; do
            [ -f "$WORK/$f" ] && cp "$WORK/$f" "$SAVED_LOGS/$f"
        done
        if [ -f "$WORK/gateway.log" ]; then
            printf '\nThe logs are saved in %s (gateway, git server, provider, receivers, config).\n' "$SAVED_LOGS" >&2
            printf 'The gateway log'"'"'s last 30 lines:\n' >&2
            tail -n 30 "$WORK/gateway.log" | indent >&2
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
        indent <"$WORK/out" >&2
        fail "$what did not finish within ${secs}s"
    elif [ $rc -ne 0 ]; then
        indent <"$WORK/out" >&2
        fail "$what failed (exit status $rc)"
    fi
}

# wait_for_addr FILE KEY PID WHAT: prints the value of KEY= once the process has written it.
wait_for_addr() {
    local file=$1 key=$2 pid=$3 what=$4 i line
    for ((i = 0; i < 300; i++)); do
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
    fail "$what did not report its address within 30s"
}

# wait_until SECS WHAT CMD...: polls CMD (quietly) every 0.2s until it succeeds.
wait_until() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "$what (waited ${secs}s)"
}

STEP="checking prerequisites"
for tool in cargo git curl timeout flock node npm python3; do
    command -v "$tool" >/dev/null || fail "'$tool' is not installed"
done
curl --version | grep -qw HTTP2 || fail "this curl has no HTTP/2 support"
[ -x "$(git --exec-path)/git-http-backend" ] || fail "git-http-backend is not installed"
[ -x "$CHROMIUM" ] || fail "$CHROMIUM is missing (apt-get install chromium, or set CHROMIUM_PATH)"
python3 -c 'import standardwebhooks' 2>/dev/null ||
    fail "python3 cannot import standardwebhooks: pip install -r tests/webhooks/requirements.txt"

step "Building gatehouse and the demo git server (cargo build --release; the first build takes a few minutes)."
bounded 1800 - cargo build --release --quiet --bin gatehouse --example git_http_server ||
    fail "cargo build failed or took longer than 30 minutes"
rm -rf "$SAVED_LOGS"   # logs of an earlier failed run
[ -x "$GATEHOUSE" ] && [ -x "$GIT_SERVER" ] || fail "built binaries not found under $TARGET_DIR/release"

step "Installing what the provider, the browser and the Python SDK need (once)."
# The same checks and locks the tests use (tests/support/oidc.rs, tests/support/python.rs).
NODE_DEPS_CHECK='const fs=require("fs");const p=JSON.parse(fs.readFileSync("package.json","utf8"));
for (const [n,v] of Object.entries(p.dependencies)) {
const i=JSON.parse(fs.readFileSync("node_modules/"+n+"/package.json","utf8"));
if (i.version!==v) process.exit(1);}'
if ! (cd tests/oidc && node -e "$NODE_DEPS_CHECK") 2>/dev/null; then
    say "npm ci --prefix tests/oidc (oidc-provider, playwright-core; no browser download)"
    bounded 600 - env PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 flock "${TMPDIR:-/tmp}/gatehouse-oidc-npm-ci.lock" \
        npm ci --no-audit --no-fund --prefix tests/oidc || fail "npm ci --prefix tests/oidc failed"
fi
bounded 900 "${TMPDIR:-/tmp}/gatehouse-demo-venv.out" tests/otlp/venv.sh ||
    { cat "${TMPDIR:-/tmp}/gatehouse-demo-venv.out" >&2; fail "tests/otlp/venv.sh could not make the OpenTelemetry venv"; }
PY=$(tail -n 1 "${TMPDIR:-/tmp}/gatehouse-demo-venv.out")
rm -f "${TMPDIR:-/tmp}/gatehouse-demo-venv.out"
[ -x "$PY" ] || fail "tests/otlp/venv.sh printed no interpreter"
say "node modules in tests/oidc; OpenTelemetry SDK in $(dirname "$(dirname "$PY")")"

START=$(date +%s%N)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-demo.XXXXXX")
mkdir -p "$WORK/home" "$WORK/repos" "$WORK/empty-cert-dir" "$WORK/secrets" "$WORK/provider"
chmod 700 "$WORK/secrets"
CA=$WORK/certs/ca.crt

# Every process below gets a clean, explicit environment: no user or system git config, no
# proxy settings, and only the demo CA trusted, whatever this machine's environment says.
BASE_ENV=(
    env -i
    PATH="$PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 TZ=UTC
    GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
    SSL_CERT_FILE="$CA" SSL_CERT_DIR="$WORK/empty-cert-dir" CURL_CA_BUNDLE="$CA"
    REQUESTS_CA_BUNDLE="$CA" NODE_EXTRA_CA_CERTS="$CA" GIT_SSL_CAINFO="$CA"
)
CLEAN_ENV=("${BASE_ENV[@]}" HOME="$WORK/home" GIT_CONFIG_GLOBAL=/dev/null)
# alice and bob each have a home of their own: their git config and their gatehouse login.
person_env() {
    printf '%s\n' HOME="$WORK/$1" XDG_CONFIG_HOME="$WORK/$1/.config" GIT_CONFIG_GLOBAL="$WORK/$1/.gitconfig"
}
mapfile -t ALICE_VARS < <(person_env alice)
mapfile -t BOB_VARS < <(person_env bob)
ALICE=("${BASE_ENV[@]}" "${ALICE_VARS[@]}")
BOB=("${BASE_ENV[@]}" "${BOB_VARS[@]}")
mkdir -p "$WORK/alice/.config" "$WORK/bob/.config"

secret() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
write_secret() { printf '%s' "$2" >"$WORK/secrets/$1"; chmod 600 "$WORK/secrets/$1"; }
write_secret oidc-web "web-$(secret 16)"
write_secret oidc-ci "ci-$(secret 16)"
write_secret broker-token "broker-$(secret 16)"
write_secret lightstep-token "lightstep-project-token-$(secret 8)"
write_secret gogs-hook "$(secret 32)"
write_secret receiver "whsec_$(head -c 32 /dev/urandom | base64)"
head -c 32 /dev/urandom | base64 >"$WORK/secrets/session.keys"
LIGHTSTEP_TOKEN=$(cat "$WORK/secrets/lightstep-token")

step "Setting the stage: a development CA, the OpenID provider, Gogs's stand-in, the receivers and gatehouse."
must 30 "gatehouse certs dev" "${CLEAN_ENV[@]}" "$GATEHOUSE" certs dev --out "$WORK/certs"
for f in ca.crt server.crt server.key; do
    [ -s "$WORK/certs/$f" ] || fail "gatehouse certs dev did not write $f"
done
say "A fresh CA signed the certificate for localhost and 127.0.0.1; everything below trusts that CA alone."

"${CLEAN_ENV[@]}" OIDC_ADDR_FILE="$WORK/provider/issuer" \
    OIDC_TLS_CERT="$WORK/certs/server.crt" OIDC_TLS_KEY="$WORK/certs/server.key" \
    OIDC_WEB_CLIENT_SECRET="$(cat "$WORK/secrets/oidc-web")" \
    OIDC_CI_CLIENT_SECRET="$(cat "$WORK/secrets/oidc-ci")" \
    node tests/oidc/provider.mjs </dev/null >"$WORK/provider.log" 2>&1 &
PIDS+=($!)
ISSUER=$(wait_for_addr "$WORK/provider/issuer" issuer "${PIDS[-1]}" "the OpenID provider")
case $ISSUER in https://127.0.0.1:*) ;; *) fail "the provider's issuer is $ISSUER, not on 127.0.0.1" ;; esac
say "OpenID provider (oidc-provider):  $ISSUER   users alice (group engineering), bob (groups sre, engineering)"

# Gogs's stand-in: the repository already exists with one commit on main.
BARE=$WORK/repos/$REPO.git
must 30 "git init --bare" "${CLEAN_ENV[@]}" git init --quiet --bare --initial-branch=main "$BARE"
SEED=$WORK/seed
must 30 "git init" "${CLEAN_ENV[@]}" git init --quiet --initial-branch=main "$SEED"
cat >"$SEED/checkout.py" <<'EOF'
def price(item):
    return catalogue.lookup(item).price
EOF
must 30 "git add" "${CLEAN_ENV[@]}" git -C "$SEED" add checkout.py
must 30 "git commit" "${CLEAN_ENV[@]}" GIT_AUTHOR_NAME="Carol Example" GIT_AUTHOR_EMAIL=carol@example.test \
    GIT_COMMITTER_NAME="Carol Example" GIT_COMMITTER_EMAIL=carol@example.test \
    git -C "$SEED" commit --quiet -m "Initial import of the checkout service"
must 30 "git push (seeding)" "${CLEAN_ENV[@]}" git -C "$SEED" push --quiet "$BARE" main
"${CLEAN_ENV[@]}" RUST_LOG=info "$GIT_SERVER" --root "$WORK/repos" --addr-file "$WORK/git-server.addr" \
    </dev/null >"$WORK/git-server.log" 2>&1 &
PIDS+=($!)
GIT_ADDR=$(wait_for_addr "$WORK/git-server.addr" http "${PIDS[-1]}" "the git server")
case $GIT_ADDR in 127.0.0.1:*) ;; *) fail "the git server listens on $GIT_ADDR, not 127.0.0.1" ;; esac
say "Gogs's stand-in (git http-backend): http://$GIT_ADDR   repository $REPO, main at its first commit"

"${CLEAN_ENV[@]}" "$PY" -u demo/lightstep_receiver.py "$WORK/lightstep.addr" \
    </dev/null >"$WORK/lightstep.log" 2>&1 &
PIDS+=($!)
LIGHTSTEP_ADDR=$(wait_for_addr "$WORK/lightstep.addr" http "${PIDS[-1]}" "the Lightstep stand-in")
say "Lightstep's stand-in (OTLP/HTTP): http://$LIGHTSTEP_ADDR"

"${CLEAN_ENV[@]}" python3 tests/webhooks/receiver.py "$WORK/receiver.port" "$WORK/receiver.jsonl" \
    "$(cat "$WORK/secrets/receiver")" "$WORK/receiver.accept" </dev/null >"$WORK/receiver.log" 2>&1 &
PIDS+=($!)
wait_until 30 "the webhook receiver did not start" test -s "$WORK/receiver.port"
RECEIVER_URL=http://127.0.0.1:$(cat "$WORK/receiver.port")/ok
say "Webhook receiver (CI; checks signatures with standardwebhooks): $RECEIVER_URL"

must 30 "gatehouse audit keygen" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit keygen --out "$WORK/audit-signing.pem"

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

[identity.oidc]
issuer = "$ISSUER"
client_id = "gatehouse-web"
client_secret_file = "$WORK/secrets/oidc-web"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
ca_file = "$CA"
prompt = "consent"
cli_client_id = "gatehouse-cli"

[identity.session]
keys_file = "$WORK/secrets/session.keys"

[[identity.jwt]]
issuer = "$ISSUER"
audiences = ["gatehouse"]
ca_file = "$CA"

[policy]
dir = "$ROOT/policies"
watch = false

[audit]
dir = "$WORK/audit"
replica = "demo"
signing_key_file = "$WORK/audit-signing.pem"

[webhooks]
store = "$WORK/webhooks.sqlite"
retry_base = "200ms"
retry_max = "2s"

[[webhooks.sources]]
name = "gogs"
secret_file = "$WORK/secrets/gogs-hook"

[[webhooks.receivers]]
name = "ci"
url = "$RECEIVER_URL"
events = ["push"]
repos = ["platform/*"]
secret_file = "$WORK/secrets/receiver"

[[routes]]
name = "gogs"
kind = "gogs"
hosts = ["localhost"]
upstream = "http://$GIT_ADDR"
max_body_bytes = "1GiB"

[routes.gogs]
user_header = "X-WEBAUTH-USER"
[[routes.gogs.credentials]]
username = "gatehouse-broker"
token_file = "$WORK/secrets/broker-token"

[[routes]]
name = "lightstep"
kind = "otlp"
hosts = ["127.0.0.1"]
upstream = "http://$LIGHTSTEP_ADDR"

[routes.otlp]
access_token_file = "$WORK/secrets/lightstep-token"
traces_path = "/traces/otlp/v0.9"
metrics_path = "/metrics/otlp/v0.9"
EOF
must 30 "gatehouse check" "${CLEAN_ENV[@]}" "$GATEHOUSE" check --config "$WORK/gatehouse.toml"

"${CLEAN_ENV[@]}" RUST_LOG=info "$GATEHOUSE" serve --config "$WORK/gatehouse.toml" --addr-file "$WORK/gateway.addr" \
    </dev/null >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GW_PID=$!
GW_ADDR=$(wait_for_addr "$WORK/gateway.addr" https "$GW_PID" "the gateway")
METRICS_ADDR=$(wait_for_addr "$WORK/gateway.addr" metrics "$GW_PID" "the gateway")
case $GW_ADDR in 127.0.0.1:*) ;; *) fail "the gateway listens on $GW_ADDR, not 127.0.0.1" ;; esac
case $METRICS_ADDR in 127.0.0.1:*) ;; *) fail "the metrics listener is on $METRICS_ADDR, not 127.0.0.1" ;; esac
PORT=${GW_ADDR##*:}
BASE=https://localhost:$PORT           # Gogs, through the gateway
OTLP=https://127.0.0.1:$PORT           # Lightstep ingest, through the gateway
URL=$BASE/$REPO.git
say "gatehouse:                        $BASE (route gogs) and $OTLP (route lightstep), TLS;"
say "                                  policies from policies/, audit log signed, webhooks at /.gatehouse/hooks/gogs"

# The repository's hook: Gogs posts its webhooks to the gateway.
cp demo/gogs/post-receive "$BARE/hooks/post-receive"
chmod +x "$BARE/hooks/post-receive"
for kv in "gogs.webhookUrl=$OTLP/.gatehouse/hooks/gogs" "gogs.secretFile=$WORK/secrets/gogs-hook" \
    "gogs.caFile=$CA" "gogs.webUrl=$BASE/$REPO" "gogs.logFile=$WORK/hooks.jsonl"; do
    must 10 "git config ${kv%%=*}" "${CLEAN_ENV[@]}" git --git-dir="$BARE" config "${kv%%=*}" "${kv#*=}"
done
say "The repository's post-receive hook sends Gogs's push webhooks, signed with the hook's secret, to the gateway."

# git as alice or bob: localhost pinned to 127.0.0.1 (the gateway listens there only).
AGIT=("${ALICE[@]}" git -c "http.curloptResolve=localhost:$PORT:127.0.0.1")
BGIT=("${BOB[@]}" git -c "http.curloptResolve=localhost:$PORT:127.0.0.1")
A=$WORK/alice/checkout
B=$WORK/bob/checkout

# sign_in WHO ENV-ARRAY-NAME: `gatehouse login` as WHO; the demo plays WHO in the browser.
sign_in() {
    local who=$1 rc=0 url="" i
    local -n penv=$2
    : >"$WORK/$who-login.out"
    timeout -k 5 90 "${penv[@]}" "$GATEHOUSE" login --gateway "$BASE" --ca-file "$CA" \
        </dev/null >"$WORK/$who-login.out" 2>&1 &
    local login_pid=$!
    PIDS+=("$login_pid")
    for ((i = 0; i < 300; i++)); do
        url=$(sed -n 's/^Open //p' "$WORK/$who-login.out" 2>/dev/null || true)
        [ -n "$url" ] && break
        alive "$login_pid" || break
        sleep 0.1
    done
    [ -n "$url" ] || { indent <"$WORK/$who-login.out" >&2; fail "gatehouse login printed no sign-in URL for $who"; }
    say "\$ gatehouse login --gateway $BASE"
    indent <"$WORK/$who-login.out"
    say "(the demo opens that page in headless Chromium, confirms the code and signs in as $who)"
    must 90 "signing in as $who in the browser" "${CLEAN_ENV[@]}" CHROMIUM_PATH="$CHROMIUM" \
        BROWSER_TLS_CERTS="$WORK/certs/server.crt" BROWSER_TIMEOUT_MS=60000 \
        node tests/oidc/browser.mjs device "$url" "$who" "$PASSWORD"
    grep -q '"ok":true' "$WORK/out" || { indent <"$WORK/out" >&2; fail "the provider did not confirm $who's device sign-in"; }
    wait "$login_pid" || rc=$?
    [ $rc -eq 0 ] || { indent <"$WORK/$who-login.out" >&2; fail "gatehouse login for $who failed (exit status $rc)"; }
    tail -n 1 "$WORK/$who-login.out" | indent
    [ -s "$WORK/$who/.config/gatehouse/credentials.json" ] || fail "gatehouse login stored no tokens for $who"
}

# setup_git ENV-ARRAY-NAME NAME EMAIL: the person's git identity and the credential helper.
setup_git() {
    local -n genv=$1
    must 10 "git config" "${genv[@]}" git config --global user.name "$2"
    must 10 "git config" "${genv[@]}" git config --global user.email "$3"
    must 10 "git config" "${genv[@]}" git config --global "credential.$BASE.helper" "!$GATEHOUSE git-credential --ca-file $CA"
}

###############################################################################################
step "1. alice signs in with the device grant and clones $REPO through the gateway."
sign_in alice ALICE
setup_git ALICE "Alice Example" alice@example.test
say "\$ git config --global credential.$BASE.helper '!gatehouse git-credential --ca-file ca.crt'"
say "\$ git clone $URL"
must 60 "alice's git clone" "${AGIT[@]}" clone --quiet "$URL" "$A"
[ -f "$A/checkout.py" ] || fail "alice's clone has no checkout.py"
say "Cloned: $("${AGIT[@]}" -C "$A" log --oneline -1 | head -c 100)"
grep -h '"kind":"git_fetch"' "$WORK"/audit/*.jsonl | grep '"username":"alice"' | grep -q '"method":"basic"' ||
    fail "the audit log has no git fetch by alice authenticated with Basic (the credential helper's token)"
say "The gateway authenticated alice's token (Basic, from the helper) and recorded the fetch as hers."

###############################################################################################
step "2. alice pushes a branch; her push to main is refused by policy; bob (sre) lands it on main."
cat >"$A/checkout.py" <<'EOF'
import functools


@functools.lru_cache(maxsize=4096)
def price(item):
    return catalogue.lookup(item).price
EOF
must 10 "git switch" "${AGIT[@]}" -C "$A" switch --quiet -c price-cache
must 10 "git commit" "${AGIT[@]}" -C "$A" commit --quiet -am "checkout: cache price lookups"
say "\$ git push origin price-cache            # alice, to her branch"
must 60 "alice's push to price-cache" "${AGIT[@]}" -C "$A" push origin price-cache
indent <"$WORK/out"
grep -q 'price-cache -> price-cache' "$WORK/out" || fail "git did not report alice's branch as pushed"
grep -q 'verified pusher alice' "$WORK/out" ||
    fail "the webhook for alice's branch was not recorded with the verified pusher alice"

say "\$ git push origin HEAD:main             # alice, to the protected branch"
rc=0
bounded 60 "$WORK/out" "${AGIT[@]}" -C "$A" push origin HEAD:main || rc=$?
indent <"$WORK/out"
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then
    fail "alice's push to main was not refused (git exit status $rc)"
fi
grep -q 'remote rejected.*main.*denied by policy protect-main' "$WORK/out" ||
    fail "git's output does not show the refusal by policy protect-main"
ON_SERVER=$("${CLEAN_ENV[@]}" git --git-dir="$BARE" rev-parse main)
[ "$ON_SERVER" != "$("${AGIT[@]}" -C "$A" rev-parse HEAD)" ] || fail "main on the server moved to alice's commit"
say "Refused before anything reached the git server: main is unchanged."

say ""
sign_in bob BOB
setup_git BOB "Bob Example" bob@example.test
say "\$ git clone $URL && git cherry-pick origin/price-cache && git push origin main   # bob"
must 60 "bob's git clone" "${BGIT[@]}" clone --quiet "$URL" "$B"
must 30 "bob's cherry-pick" "${BGIT[@]}" -C "$B" cherry-pick origin/price-cache
must 60 "bob's push to main" "${BGIT[@]}" -C "$B" push origin main
indent <"$WORK/out"
SHA=$("${BGIT[@]}" -C "$B" rev-parse HEAD)
SHORT=${SHA:0:12}
[ "$("${CLEAN_ENV[@]}" git --git-dir="$BARE" rev-parse main)" = "$SHA" ] ||
    fail "main on the server is not bob's commit $SHA"
AUTHOR=$("${BGIT[@]}" -C "$B" log -1 --format='%an <%ae>, committed by %cn')
say "main is now $SHORT ($AUTHOR)."

###############################################################################################
step "3. The push webhook: verified, recorded with the verified pusher, forwarded re-signed."
DELIVERY=$(python3 - "$WORK/hooks.jsonl" <<'EOF'
import json, sys
last = None
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["event"] == "push" and d["ref"] == "refs/heads/main":
        last = d
if last:
    print(last["delivery"])
    print(f'{last["status"]} {last["answer"]}')
EOF
)
[ -n "$DELIVERY" ] || fail "the post-receive hook sent no push webhook for main"
ANSWER=$(sed -n 2p <<<"$DELIVERY")
DELIVERY=$(head -n 1 <<<"$DELIVERY")
say "Gogs (the hook) posted push delivery $DELIVERY, signed with X-Gogs-Signature; the gateway answered:"
say "    $ANSWER"
case $ANSWER in
200\ accepted\ push\ delivery*"verified pusher bob"*"queued for ci"*) ;;
*) fail "the gateway did not accept the delivery with the verified pusher bob and queue it for ci" ;;
esac
say "\$ gatehouse webhooks commit $SHORT"
must 30 "gatehouse webhooks commit" "${CLEAN_ENV[@]}" "$GATEHOUSE" webhooks commit "$SHORT" --config "$WORK/gatehouse.toml"
indent <"$WORK/out"
grep -q 'gogs pusher: gatehouse-broker' "$WORK/out" || fail "the store does not have Gogs's pusher (the broker account)"
grep -q 'verified pusher: bob <bob@example.test>' "$WORK/out" || fail "the store does not have bob as the verified pusher"

received() {
    python3 - "$WORK/receiver.jsonl" "$DELIVERY" <<'EOF'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except FileNotFoundError:
    sys.exit(1)
for line in lines:
    r = json.loads(line)
    h = r["headers"]
    if h.get("x-gogs-delivery") == sys.argv[2] and r["status"] == 200:
        print(f'receiver: POST {r["path"]} delivery {h["webhook-id"]} (attempt {r["attempt"]}) -> {r["status"]}')
        print(f'  webhook-signature (Standard Webhooks, checked with standardwebhooks): {"valid" if r["standard_ok"] else "INVALID"}')
        print(f'  X-Gogs-Signature (HMAC-SHA256 with the receiver\'s own secret): {"valid" if r["gogs_ok"] else "INVALID"}')
        print(f'  X-Gatehouse-Verified-Pusher: {h.get("x-gatehouse-verified-pusher", "(none)")} <{h.get("x-gatehouse-verified-pusher-email", "")}>')
        sys.exit(0)
sys.exit(1)
EOF
}
wait_until 30 "the receiver did not get the forwarded delivery $DELIVERY" received
received >"$WORK/out"
indent <"$WORK/out"
grep -q 'webhook-signature.*: valid' "$WORK/out" || fail "the forward's webhook-signature did not verify at the receiver"
grep -q 'X-Gogs-Signature.*: valid' "$WORK/out" || fail "the forward's X-Gogs-Signature did not verify at the receiver"
grep -q 'X-Gatehouse-Verified-Pusher: bob <bob@example.test>' "$WORK/out" ||
    fail "the forward does not name bob as the verified pusher"

###############################################################################################
step "4. The checkout service built from $SHORT sends traces through the gateway with a CI token."
TOKEN_ENDPOINT=$(bounded 30 - "${CLEAN_ENV[@]}" curl -q -fsS --max-time 20 "$ISSUER/.well-known/openid-configuration" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token_endpoint"])') ||
    fail "cannot read the provider's token endpoint"
CI_TOKEN=$(bounded 30 - "${CLEAN_ENV[@]}" curl -q -fsS --max-time 20 --user "ci-pipeline:$(cat "$WORK/secrets/oidc-ci")" \
    -d grant_type=client_credentials "$TOKEN_ENDPOINT" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') ||
    fail "the provider issued no client-credentials token to ci-pipeline"
say "CI got a client-credentials JWT for ci-pipeline (role ci: may send telemetry for checkout, payments-*)."
say "\$ python demo/checkout_service.py $OTLP/v1/traces \$CI_TOKEN ca.crt $SHORT    # OpenTelemetry SDK, service.version=$SHORT"
must 60 "the checkout service's export" "${CLEAN_ENV[@]}" "$PY" demo/checkout_service.py \
    "$OTLP/v1/traces" "$CI_TOKEN" "$CA" "$SHORT"
indent <"$WORK/out"
wait_until 10 "the Lightstep stand-in printed no export" grep -q '^export to' "$WORK/lightstep.log"
say "What the Lightstep stand-in received:"
sed -n '/^export to/,$p' "$WORK/lightstep.log" | indent
SEEN=$(sed -n '/^export to/,$p' "$WORK/lightstep.log")
expect() { grep -qxF -- "$1" <<<"$SEEN" || fail "$2 (expected the line '$1')"; }
expect "export to /traces/otlp/v0.9" "the export did not go to Lightstep's traces path"
expect "  lightstep-access-token: $LIGHTSTEP_TOKEN" "Lightstep did not get the gateway's access token"
expect "  authorization: (none)" "the caller's credentials reached Lightstep"
expect "    service.version = $SHORT" "the service's own version is not there"
expect "    vcs.ref.head.revision = $SHA" "the spans are not attributed to commit $SHA"
expect "    vcs.ref.head.name = main" "the spans do not name the branch main"
expect "    gatehouse.commit.author.name = Alice Example" "the spans do not name the commit's author"
expect "    gatehouse.push.verified_pusher = bob" "the spans do not name the verified pusher bob"
expect "    enduser.id = ci-pipeline" "the spans do not name the sender ci-pipeline"
grep -qF "$CI_TOKEN" "$WORK/lightstep.log" && fail "the CI token reached Lightstep"
say "The service never held the Lightstep token; the spans carry the commit, its author (alice) and who pushed it (bob)."

###############################################################################################
step "The gateway itself: HTTP/2, a refused path, its metrics."
CURL=("${CLEAN_ENV[@]}" curl -q --silent --show-error --max-time 20 --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1")
must 30 "curl --http2 /.gatehouse/ready" "${CURL[@]}" --http2 -o "$WORK/ready.body" \
    -w '%{http_version} %{http_code}' "$BASE/.gatehouse/ready"
GOT=$(cat "$WORK/out")
[ "$GOT" = "2 200" ] || fail "expected HTTP/2 with status 200 from /.gatehouse/ready, got '$GOT'"
say "GET /.gatehouse/ready over HTTP/$GOT: $(cat "$WORK/ready.body")"
must 30 "curl with a dot-segment path" "${CURL[@]}" --path-as-is -o "$WORK/dot.body" -w '%{http_code}' \
    "$BASE/$REPO.git/../other.git/info/refs?service=git-upload-pack"
GOT=$(cat "$WORK/out")
[ "$GOT" = "400" ] || fail "expected 400 for a dot-segment path, got '$GOT'"
say "GET /$REPO.git/../other.git/info/refs refused with $GOT: $(head -n 1 "$WORK/dot.body")"
must 30 "curl /metrics" "${CLEAN_ENV[@]}" curl -q --silent --show-error --max-time 10 "http://$METRICS_ADDR/metrics"
cp "$WORK/out" "$WORK/metrics.txt"
say "Some of its Prometheus metrics (http://$METRICS_ADDR/metrics):"
grep -E '^gatehouse_(webhook_deliveries_total|webhook_forward_attempts_total|otlp_exports_total|policy_decisions_total|requests_rejected_total)\{' "$WORK/metrics.txt" |
    awk '$2 != 0' | indent
metric() { awk -v s="$1" 'index($0, s " ") == 1 { print $2 }' "$WORK/metrics.txt"; }
ACCEPTED=$(metric 'gatehouse_webhook_deliveries_total{result="accepted"}')
[ "${ACCEPTED:-0}" -ge 2 ] 2>/dev/null || fail "expected at least 2 accepted webhook deliveries, metrics show '${ACCEPTED:-none}'"
ATTRIBUTED=$(metric 'gatehouse_otlp_exports_total{result="attributed"}')
[ "${ATTRIBUTED:-0}" -ge 1 ] 2>/dev/null || fail "no attributed OTLP export in the metrics ('${ATTRIBUTED:-none}')"

###############################################################################################
step "5. The auditor verifies the gateway's audit log and exports this session as CSV."
kill -TERM "$GW_PID"
for _ in $(seq 1 100); do alive "$GW_PID" || break; sleep 0.1; done
alive "$GW_PID" && fail "the gateway did not stop within 10s of SIGTERM"
say "(gateway stopped: its last checkpoint is signed at shutdown)"
say "\$ gatehouse audit verify audit/ --pubkey audit-signing.pem.pub"
must 60 "gatehouse audit verify" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit verify "$WORK/audit" \
    --pubkey "$WORK/audit-signing.pem.pub"
indent <"$WORK/out"
grep -q '^OK: .*(signatures checked)$' "$WORK/out" || fail "audit verify did not report OK with signatures checked"
SINCE=$(date -u -d "@$((START / 1000000000 - 60))" +%Y-%m-%dT%H:%M:%SZ)
UNTIL=$(date -u -d "+1 minute" +%Y-%m-%dT%H:%M:%SZ)
say "\$ gatehouse audit export audit/ --since $SINCE --until $UNTIL --format csv --out audit.csv --pubkey audit-signing.pem.pub"
must 60 "gatehouse audit export" "${CLEAN_ENV[@]}" "$GATEHOUSE" audit export "$WORK/audit" \
    --since "$SINCE" --until "$UNTIL" --format csv --out "$WORK/audit.csv" \
    --pubkey "$WORK/audit-signing.pem.pub"
tail -n 1 "$WORK/out" | indent
grep -q 'chain verified' "$WORK/out" || fail "audit export did not report a verified chain"
head -1 "$WORK/audit.csv" | grep -q '^time,kind,replica,seq,' || fail "the CSV export has no header row"
say "The rows of audit.csv (some of its 38 columns):"
CSV_TABLE=$(cat <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
cols = [("time", 8), ("kind", 13), ("who", 11), ("method", 6), ("path", 34), ("action", 15),
        ("decision", 8), ("rule", 18), ("status", 6)]
print("  ".join(name.ljust(width) for name, width in cols))
def cell(r, name):
    if name == "time":
        return r["time"][11:19]
    if name == "who":
        return r["username"] or r["client_id"] or r["subject"] or "-"
    if name == "path":
        p = r["path"] or "-"
        return p if len(p) <= 34 else "..." + p[-31:]
    return r[name] or "-"
for r in rows:
    print("  ".join(cell(r, name)[:width].ljust(width) for name, width in cols).rstrip())
print(f"{len(rows)} rows")
EOF
)
must 30 "reading audit.csv" python3 -c "$CSV_TABLE" "$WORK/audit.csv"
cat "$WORK/out"
CSV=$WORK/audit.csv
grep -q ',alice,.*,git_fetch,' "$CSV" || fail "the CSV has no git fetch by alice"
grep -q ',alice,.*,git_push,.*,deny,protect-main,' "$CSV" || fail "the CSV has no push by alice denied by protect-main"
grep -q ',bob,.*,git_push,.*,allow,write-code,' "$CSV" || fail "the CSV has no push by bob allowed by write-code"
grep -q ',webhook_push,' "$CSV" || fail "the CSV has no webhook delivery"
grep -q ',ci-pipeline,.*,otlp_traces,.*,allow,ci-sends-telemetry,' "$CSV" || fail "the CSV has no trace export by ci-pipeline"

ELAPSED_MS=$((($(date +%s%N) - START) / 1000000))
printf '\nAll steps passed in %d.%03ds (after the build). Stopping the provider, the git server and the receivers.\n' \
    $((ELAPSED_MS / 1000)) $((ELAPSED_MS % 1000))
