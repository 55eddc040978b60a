#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this through .ci/run).
#
# 1. Creates .venv (if missing) and installs nhlink from this checkout with its test, lint and
#    fuzzing tools (atheris); the Cython extensions are REQUIRED here (a failed compile is an
#    error).
# 2. Installs the real A/B updaters (RAUC, SWUpdate) from Debian's packages when run as root
#    (their tests skip with a reason otherwise) and prepares the Autobahn|Testsuite (a Python 2.7
#    environment, cached outside the work tree).
# 3. ruff + mypy --strict, then the whole suite twice: compiled core, then NHLINK_NO_EXTENSIONS=1;
#    then the end-to-end tests once more with every device speaking MessagePack (vsn 3.0.0).
#
# Environment: PYTHON (interpreter for the venv, default python3), NHLINK_AUTOBAHN=0 to skip the
# conformance run (it needs pyenv's Python 2.7), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
NHLINK_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pip install -q -e ".[test,lint,fuzz]"
.venv/bin/python -c 'import nhlink._core as c; assert c.IMPLEMENTATION == "cython", c.IMPLEMENTATION; print("core:", c.IMPLEMENTATION)'

bash scripts/updaters/install-debian.sh

export NHLINK_AUTOBAHN=${NHLINK_AUTOBAHN:-1}
if [ "$NHLINK_AUTOBAHN" = "1" ]; then
    bash scripts/autobahn/setup.sh
fi

echo "== ruff"; .venv/bin/ruff check src tests benchmarks scripts
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest, compiled core"
NHLINK_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pytest ${PYTEST_ARGS:-}
echo "== pytest, pure-Python core (NHLINK_NO_EXTENSIONS=1)"
NHLINK_NO_EXTENSIONS=1 .venv/bin/python -m pytest ${PYTEST_ARGS:-}
echo "== pytest, end to end over MessagePack (NHLINK_TEST_SERIALIZER=msgpack)"
NHLINK_REQUIRE_EXTENSIONS=1 NHLINK_TEST_SERIALIZER=msgpack .venv/bin/python -m pytest ${PYTEST_ARGS:-} \
    tests/test_link.py tests/test_link_rules.py tests/update tests/extensions tests/reliability \
    tests/remote tests/agent
