#!/usr/bin/env bash
# A short, deterministic run of every fuzz target, as CI runs it: the committed corpus first,
# then a fixed number of fuzzing iterations from a fixed seed, so the same commit always does
# the same work (a failure is a real crash, not bad luck). New inputs go to a temporary
# directory, never into the committed corpus. Long runs are for people:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> -- -max_total_time=1800
set -euo pipefail
cd "$(dirname "$0")"
runs="${FUZZ_RUNS:-10000}"
# cargo-fuzz drives libFuzzer with nightly-only sanitizer flags; the stable toolchain accepts
# them with RUSTC_BOOTSTRAP (the machine has only stable).
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target"
  echo "== fuzz $target ($runs runs, seed 1)"
  set +e
  # The first run builds the targets (all share one build of the gateway).
  timeout 30m cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
    -runs="$runs" -seed=1 -max_total_time=120 -print_final_stats=1 \
    -artifact_prefix="$work/$target-" > "$work/$target.log" 2>&1
  status=$?
  set -e
  grep -E '^(Done|stat::number_of_executed_units|INFO: seed corpus)|ERROR|panicked|SUMMARY' "$work/$target.log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status):" >&2
    tail -40 "$work/$target.log" >&2
    exit 1
  fi
done
