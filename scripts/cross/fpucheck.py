"""Which installed extension modules switch the FPU to flush-to-zero when they are loaded?

A shared object linked with ``-ffast-math`` (gcc's ``crtfastmath.o``) sets the flush-to-zero
bit of the FPU (FPSCR on 32-bit ARM, FPCR on aarch64, MXCSR on x86) in a constructor: loading it
changes float arithmetic for the whole process, whoever imported it. On armv7l one of nhlink's
own dependencies does (see docs/packaging.md), so run.sh checks every extension module of the
test venv: each is loaded with ``dlopen`` (constructors run, no Python code does) after the FPU
is reset to its default state, and the flag is read back. Usage::

    python fpucheck.py [--json OUT] SITE_PACKAGES

Prints one line per culprit and, as JSON, ``{"flush_to_zero": [...], "unloadable": [...]}``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import struct
import sys
from pathlib import Path

_SMALLEST_SUBNORMAL = struct.unpack("d", struct.pack("q", 1))[0]  # 5e-324, built from bits


def flush_to_zero() -> bool:
    """True when the FPU treats subnormals as zero (the comparison reads the denormal as 0)."""
    return bool(_SMALLEST_SUBNORMAL == 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site_packages", type=Path)
    ap.add_argument("--json")
    args = ap.parse_args()

    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    fe_dfl_env = ctypes.c_void_p(-1)  # glibc: FE_DFL_ENV is ((const fenv_t *) -1)

    def reset() -> None:
        if libm.fesetenv(fe_dfl_env) != 0:
            raise SystemExit("fesetenv(FE_DFL_ENV) failed")

    reset()
    if flush_to_zero():
        raise SystemExit("flush-to-zero is on even after fesetenv(FE_DFL_ENV): cannot check")
    culprits: list[str] = []
    unloadable: list[str] = []
    for path in sorted(args.site_packages.rglob("*.so")):
        name = str(path.relative_to(args.site_packages))
        reset()
        try:
            ctypes.CDLL(str(path))
        except OSError:
            unloadable.append(name)
            continue
        if flush_to_zero():
            culprits.append(name)
            print(f"flush-to-zero switched on by loading {name}")
    reset()
    result = {"flush_to_zero": culprits, "unloadable": unloadable}
    if not culprits:
        print("no extension module switches the FPU to flush-to-zero")
    if unloadable:
        print(f"could not dlopen (not checked): {', '.join(unloadable)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
