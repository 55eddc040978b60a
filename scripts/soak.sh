#!/usr/bin/env bash
# Soak test (not part of CI): N devices (default 200) against FakeHub through fault proxies,
# with random reconnects, reboots and updates, for a bounded time; per-minute RSS, fds, tasks,
# joins and updates; fails on growth or on any invariant. See scripts/soak.py.
#
#   bash scripts/soak.sh [minutes] [extra soak.py options, e.g. --devices 100 --seed 7]
#
# Uses .venv (bash scripts/test.sh creates it); all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
shift || true
[ -x .venv/bin/python ] || { echo "soak: run bash scripts/test.sh first (creates .venv)" >&2; exit 2; }
exec .venv/bin/python scripts/soak.py --minutes "$minutes" "$@"
