#!/usr/bin/env bash
# Long fuzzing runs, for people (CI runs `smoke.sh`): every target (or the ones named) for
# FUZZ_SECONDS each, FUZZ_JOBS at a time, starting from the committed corpus. New inputs go to
# a scratch directory; crashes are kept under `artifacts/<target>/`. One line per target is
# appended to `results/<UTC time>.txt`: executions, coverage, features, corpus size, crashes.
#   FUZZ_SECONDS=1800 FUZZ_JOBS=2 nice -n 19 fuzz/long.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-1800}"
jobs="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
# Build once, then run the binaries directly, so edits to the gateway made while the runs go on
# do not rebuild (or break) the targets half way.
cargo fuzz build
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
mkdir -p results
out="results/$(date -u +%Y%m%dT%H%M%SZ).txt"
echo "# fuzz/long.sh at $rev: ${seconds}s per target, $jobs at a time, $(nproc) cores" > "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

run() {
  local target="$1" log="$work/$1.log"
  mkdir -p "$work/$target" "artifacts/$target"
  set +e
  "$bin/$target" "$work/$target" "corpus/$target" -max_total_time="$seconds" \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" > "$log" 2>&1
  local status=$?
  set -e
  local runs cov ft corpus crashes slow
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  ft="$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  corpus="$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  # Crashes, leaks, timeouts and out-of-memory inputs; slow units (over 10 s, which a
  # stopped or starved process also produces) are counted apart.
  crashes="$(find "artifacts/$target" -type f -newer "$out" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)"
  slow="$(find "artifacts/$target" -type f -newer "$out" -name 'slow-unit-*' | wc -l)"
  printf '%-16s exit=%s runs=%s cov=%s ft=%s corpus=%s new_crashes=%s slow_units=%s\n' \
    "$target" "$status" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}" "$crashes" "$slow" >> "$out"
  if [ "$status" -ne 0 ]; then tail -60 "$log" > "$out.$target.crash"; fi
}

for target in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  run "$target" &
done
wait
cat "$out"
