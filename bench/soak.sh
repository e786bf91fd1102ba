#!/usr/bin/env bash
# Soak test: tests/soak.rs (the full path: TLS, JWT, policy, audit, identity header injection)
# at half of the measured peak for SOAK_SECONDS (default 1800), release build, sampling the
# gateway's RSS and open file descriptors every 10 s; then plots RSS over time as a PNG.
#
#   bench/soak.sh                 # 30 minutes
#   SOAK_SECONDS=300 bench/soak.sh
#
# Writes bench/results/soak-<date>.csv, .txt (the test's summary line and machine info) and
# .png. Needs what the tests need (Node for the OpenID provider, git, python3 for the plot;
# matplotlib is installed into a venv under /tmp on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SOAK_SECONDS:-1800}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="bench/results/soak-$stamp"
mkdir -p bench/results

{
  echo "soak: $seconds s, sampled every 10 s"
  echo "date: $(date -u -Iseconds)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo ' (+ uncommitted changes in src/)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(uname -r)"
  echo "rustc: $(rustc --version)"
} > "$out.txt"

set +e
SOAK_SECONDS="$seconds" SOAK_SAMPLE=10 SOAK_CSV="$PWD/$out.csv" \
  timeout $((seconds + 1200)) cargo test --release --locked --test soak -- --nocapture 2>&1 \
  | tee -a "$out.log" | grep -E '^soak:|test result|panicked' | tee -a "$out.txt"
status=${PIPESTATUS[0]}
set -e

venv="${TMPDIR:-/tmp}/gatehouse-plot-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib==3.10.7
fi
"$venv/bin/python" - "$out.csv" "$out.png" "$(grep '^soak:' "$out.txt" || true)" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
t = [int(r["seconds"]) / 60 for r in rows]
rss = [int(r["rss_kib"]) / 1024 for r in rows]
fds = [int(r["fds"]) for r in rows]
fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
ax.plot(t, rss, color="tab:blue", label="RSS (MiB)")
ax.set_xlabel("minutes")
ax.set_ylabel("RSS (MiB)", color="tab:blue")
ax.set_ylim(0, max(rss) * 1.3)
ax2 = ax.twinx()
ax2.plot(t, fds, color="tab:orange", label="open file descriptors")
ax2.set_ylabel("open file descriptors", color="tab:orange")
ax2.set_ylim(0, max(fds) * 1.3)
ax.set_title("gatehouse soak: full path at half of peak load", fontsize=11)
fig.text(0.01, 0.01, sys.argv[3][:160], fontsize=7)
fig.tight_layout(rect=(0, 0.04, 1, 1))
fig.savefig(sys.argv[2])
PY
rm -f "$out.log"
echo "results: $out.txt, $out.csv, $out.png"
exit "$status"
