# bench/lib.sh: what the loopback benchmarks share (sourced by proxy.sh and jwt.sh).
# The caller sets TMP, PIDS=(), WATCHDOG="", WRK_PGID="" and MAX_SECONDS, then calls
# `bench_bound NAME` to stop everything by pid on exit or when the time limit is reached.

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    [ -n "$WRK_PGID" ] && kill -TERM -- "-$WRK_PGID" 2>/dev/null || true
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
# Bounds the whole script: the watchdog signals this shell, whose trap stops everything.
# (Its sleep is killed with it, so no stray process keeps the caller's pipes open.)
bench_bound() {
    trap cleanup EXIT
    trap 'echo "interrupted" >&2; exit 130' INT TERM
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        sleep "$MAX_SECONDS" >/dev/null 2>&1 </dev/null &
        sp=$!
        wait "$sp" && { echo "$1: time limit ${MAX_SECONDS}s reached" >&2; kill -TERM $$; }
    ) &
    WATCHDOG=$!
}

# ---------------------------------------------------------------------------------------
# helpers

free_port() {
    python3 - <<'EOF' 2>/dev/null && return
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
    local p
    while :; do
        p=$(( 20000 + RANDOM % 30000 ))
        ss -ltnH "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}

wait_port() { # port seconds
    local deadline=$(( SECONDS + $2 ))
    while [ $SECONDS -lt "$deadline" ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on 127.0.0.1:$1 after $2 s" >&2
    return 1
}

# utime+stime in clock ticks of a process and all its threads (fields 14, 15 of stat).
proc_ticks() {
    local sum=0 pid f
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        f=$(sed 's/^.*) //' "/proc/$pid/stat")
        set -- $f
        sum=$(( sum + ${12} + ${13} ))
    done
    echo "$sum"
}

proc_user_ticks() { # utime only
    local sum=0 pid f
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        f=$(sed 's/^.*) //' "/proc/$pid/stat")
        set -- $f
        sum=$(( sum + ${12} ))
    done
    echo "$sum"
}

# The process and its direct children (nginx master + worker).
proc_family() {
    local pid=$1 kids
    kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
    echo "$pid" $kids
}

# jiffies of one core from /proc/stat: busy (all but idle and iowait), total, and busy in
# process context (busy minus irq and softirq: loopback TCP work runs partly in softirq,
# charged to no process, so it must not count as someone else's load).
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t, t - $5 - $6 - $7 - $8 }' /proc/stat
}

to_ms() { # wrk value like 812.00us / 1.23ms / 2.01s
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

CLK_TCK=$(getconf CLK_TCK)
