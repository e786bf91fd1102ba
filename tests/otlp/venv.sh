#!/usr/bin/env bash
# Prints the path of a Python interpreter with the pinned OpenTelemetry packages of
# tests/otlp/requirements.txt installed, creating the venv first when needed.
#
# It is the venv tests/support/python.rs uses: $TMPDIR/gatehouse-otlp-venv-<FNV-1a 64 of the
# requirements file, 16 hex digits>, created under an exclusive flock on
# $TMPDIR/gatehouse-otlp-venv.lock (Rust's File::lock is flock too), so the tests, the demo
# and CI install it once between them. GATEHOUSE_PYTHON names the base interpreter
# (default python3). Needs python3 with venv, flock, and PyPI the first time.
#
#   PY=$(tests/otlp/venv.sh)
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REQUIREMENTS=$DIR/requirements.txt
BASE=${GATEHOUSE_PYTHON:-python3}
TMP=${TMPDIR:-/tmp}
TMP=${TMP%/}

HASH=$("$BASE" -c '
import sys
h = 0xCBF29CE484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
print("%016x" % h)
' "$REQUIREMENTS")
VENV=$TMP/gatehouse-otlp-venv-$HASH
PYTHON=$VENV/bin/python
IMPORTS='import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.exporter.otlp.json.http, opentelemetry.exporter.otlp.proto.grpc, grpc'

ready() { [ -x "$PYTHON" ] && timeout 60 "$PYTHON" -c "$IMPORTS" >/dev/null 2>&1; }

if ! ready; then
    exec 9>"$TMP/gatehouse-otlp-venv.lock"
    flock -w 900 9 || { echo "venv.sh: waited 15 minutes for $TMP/gatehouse-otlp-venv.lock" >&2; exit 1; }
    if ! ready; then
        echo "venv.sh: installing tests/otlp/requirements.txt into $VENV (once)" >&2
        rm -rf "$VENV"
        timeout 120 "$BASE" -m venv "$VENV" >&2
        timeout 600 "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
            -r "$REQUIREMENTS" >&2
        ready || { echo "venv.sh: the packages are missing after pip install" >&2; exit 1; }
    fi
    exec 9>&-
fi
printf '%s\n' "$PYTHON"
