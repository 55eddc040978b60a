#!/usr/bin/env bash
# The README's main command: install nhlink into .venv (if needed) and run `nhlink demo`, a whole
# OTA update against the built-in NervesHub test server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/nhlink demo "$@"
