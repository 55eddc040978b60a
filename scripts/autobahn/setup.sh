#!/usr/bin/env bash
# Install the Autobahn|Testsuite (a Python 2.7 program) outside the work tree.
#
#   scripts/autobahn/setup.sh            # idempotent: a second run is a no-op
#   NHLINK_AUTOBAHN_HOME=/some/dir scripts/autobahn/setup.sh
#
# Layout under $NHLINK_AUTOBAHN_HOME (default ~/.cache/nhlink-autobahn):
#   helper/   Python 3 venv holding virtualenv==20.21.1 (the last release that makes 2.7 envs)
#   py27/     Python 2.7 env with autobahntestsuite and its pinned dependencies
#   .installed-<hash>   marker written when everything installed and `wstest` imports
# Everything comes from the package registry; only pyenv's CPython 2.7.18 is taken from the machine.
set -euo pipefail

HOME_DIR="${NHLINK_AUTOBAHN_HOME:-$HOME/.cache/nhlink-autobahn}"
HELPER="$HOME_DIR/helper"
PY27="$HOME_DIR/py27"
VIRTUALENV_PIN="virtualenv==20.21.1"

# Pins the autobahntestsuite sdist declares (its wheel forgets them), installed in stages:
# the build/packaging base first, then the crypto and Twisted stack, then web bits, then the suite
# itself with --no-deps so nothing newer (and Python-3-only) gets resolved in behind our backs.
STAGE1=(setuptools==44.0.0 six==1.16.0 incremental==16.10.1 zope.interface==4.6.0 txaio==2.1.0)
STAGE2=(cryptography==3.3.2 pyOpenSSL==19.1.0 service_identity==18.1.0 Twisted==19.10.0)
STAGE3=(markupsafe==1.1.1 jinja2==2.11.3 Werkzeug==1.0.1 klein==17.10.0 unittest2==1.1.0)
STAGE4=("autobahn[accelerate,twisted]==0.10.9")
STAGE5=(autobahntestsuite==25.10.1)

ALL_PINS="$VIRTUALENV_PIN ${STAGE1[*]} ${STAGE2[*]} ${STAGE3[*]} ${STAGE4[*]} ${STAGE5[*]}"
MARKER="$PY27/.installed-$(printf '%s' "$ALL_PINS" | sha256sum | cut -c1-16)"

t0=$(date +%s)
step_t=$t0
lap() {  # lap "what was done"
    local now
    now=$(date +%s)
    printf '[autobahn-setup] %-44s %4ss (total %ss)\n' "$1" "$((now - step_t))" "$((now - t0))"
    step_t=$now
}

if [[ -f "$MARKER" && -x "$PY27/bin/python" ]] \
    && "$PY27/bin/python" -c 'import autobahntestsuite.wstest' >/dev/null 2>&1; then
    echo "[autobahn-setup] already installed in $PY27 (marker $(basename "$MARKER")); nothing to do"
    exit 0
fi

# --- find CPython 2.7.18 from pyenv -------------------------------------------------------------
PYENV_ROOT_DIR=""
if command -v pyenv >/dev/null 2>&1; then
    PYENV_ROOT_DIR="$(pyenv root 2>/dev/null || true)"
fi
[[ -n "$PYENV_ROOT_DIR" ]] || PYENV_ROOT_DIR="${PYENV_ROOT:-/root/.pyenv}"
PY2="$PYENV_ROOT_DIR/versions/2.7.18/bin/python2.7"
if [[ ! -x "$PY2" && -x /root/.pyenv/versions/2.7.18/bin/python2.7 ]]; then
    PY2=/root/.pyenv/versions/2.7.18/bin/python2.7
fi
if [[ ! -x "$PY2" ]]; then
    echo "[autobahn-setup] ERROR: CPython 2.7.18 not found at $PYENV_ROOT_DIR/versions/2.7.18" >&2
    echo "[autobahn-setup] (looked via 'pyenv root' and /root/.pyenv). Autobahn|Testsuite needs" >&2
    echo "[autobahn-setup] Python 2.7; install it with 'pyenv install 2.7.18'." >&2
    exit 2
fi

# --- a Python 3 for the helper venv (not a pyenv shim, not the project venv) -------------------
PY3=""
for cand in /usr/bin/python3 "$(command -v python3 || true)"; do
    if [[ -n "$cand" && -x "$cand" ]] && "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        PY3="$cand"
        break
    fi
done
if [[ -z "$PY3" ]]; then
    echo "[autobahn-setup] ERROR: no Python 3 with venv/ensurepip found" >&2
    exit 2
fi

mkdir -p "$HOME_DIR"
echo "[autobahn-setup] home $HOME_DIR; python2 $PY2; helper python3 $PY3"

# --- helper venv with virtualenv 20.21.1 --------------------------------------------------------
if ! "$HELPER/bin/python" -c 'import virtualenv, sys; sys.exit(virtualenv.__version__ != "20.21.1")' \
        >/dev/null 2>&1; then
    rm -rf "$HELPER"
    "$PY3" -m venv "$HELPER"
    "$HELPER/bin/python" -m pip install -q --disable-pip-version-check "$VIRTUALENV_PIN" 2>&1 \
        | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
fi
lap "helper venv ($VIRTUALENV_PIN)"

# --- the Python 2.7 env ---------------------------------------------------------------------------
# Always rebuilt when the marker is missing, so a half-finished earlier run can't leave junk behind.
rm -rf "$PY27"
"$HELPER/bin/python" -m virtualenv -q --no-periodic-update -p "$PY2" "$PY27"
lap "python 2.7 env"

pip27() {
    # Machine-wide pip constraints are for Python 3 tools; drop pip's noise about local index
    # folders that hold no Python 2 packages (pip's exit status still decides, via pipefail).
    PIP_CONSTRAINT="" PIP_NO_PYTHON_VERSION_WARNING=1 \
        "$PY27/bin/python" -m pip "$@" --disable-pip-version-check 2>&1 \
        | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
}
pip27 install -q --no-cache-dir "${STAGE1[@]}";  lap "stage 1: setuptools six incremental zope txaio"
pip27 install -q --no-cache-dir "${STAGE2[@]}";  lap "stage 2: cryptography pyOpenSSL Twisted"
pip27 install -q --no-cache-dir "${STAGE3[@]}";  lap "stage 3: jinja2 werkzeug klein unittest2"
pip27 install -q --no-cache-dir "${STAGE4[@]}";  lap "stage 4: autobahn 0.10.9"
pip27 install -q --no-cache-dir --no-deps "${STAGE5[@]}";  lap "stage 5: autobahntestsuite"

# --- check -------------------------------------------------------------------------------------
"$PY27/bin/python" - <<'PYCHECK'
import autobahn, autobahntestsuite, twisted
import autobahntestsuite.wstest
print("[autobahn-setup] ok: autobahn %s, autobahntestsuite %s, Twisted %s" % (
    autobahn.__version__, autobahntestsuite.__version__, twisted.__version__))
PYCHECK
pip27 check || {
    echo "[autobahn-setup] ERROR: 'pip check' reports broken requirements in $PY27" >&2
    exit 1
}
: > "$MARKER"
lap "check"
echo "[autobahn-setup] done: $PY27/bin/python (marker $(basename "$MARKER"))"
