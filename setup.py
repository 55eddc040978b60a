"""Build script: only the Cython extension modules live here; metadata is in pyproject.toml.

Environment switches (build time):

* ``NHLINK_NO_EXTENSIONS=1``      build no extensions: a pure ``py3-none-any`` wheel.
* ``NHLINK_REQUIRE_EXTENSIONS=1`` a failed compile is an error (wheel builds, CI). Without it a
                                  failed compile warns loudly and the pure-Python core is used.

Two hot modules are compiled from the same Python source as their pure twin (Cython's pure-Python
mode): ``_frames_c.py`` and ``_digest_c.py`` are symlinks to ``_frames_py.py`` and ``_digest_py.py``,
and the ``.pxd`` files of the same names add the C types. The other three are hand-written ``.pyx``
where pointers pay (masking, the Phoenix codecs: the JSON scanner and MessagePack).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


NO_EXTENSIONS = _flag("NHLINK_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _flag("NHLINK_REQUIRE_EXTENSIONS")
if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    sys.exit("NHLINK_NO_EXTENSIONS and NHLINK_REQUIRE_EXTENSIONS are both set; choose one")

CORE = Path("src") / "nhlink" / "_core"
# (module, source). Sources ending in _c.py are symlinks to the pure twin; the .pxd beside them types it.
EXTENSIONS = [
    ("nhlink._core._mask", CORE / "_mask.pyx"),
    ("nhlink._core._frames_c", CORE / "_frames_c.py"),
    ("nhlink._core._codec_c", CORE / "_codec_c.pyx"),
    ("nhlink._core._digest_c", CORE / "_digest_c.py"),
    ("nhlink._core._msgpack_c", CORE / "_msgpack_c.pyx"),
]
# Symlinked sources are Cython inputs only: never install them as Python modules.
CYTHON_ONLY_MODULES = {"_frames_c", "_digest_c"}

DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}

BANNER = "*" * 78


class OptionalBuildExt(build_ext):
    """Compile the extensions; on failure warn and fall back unless extensions are required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing entirely, etc.
            self._failed(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc, ext.name)

    def _failed(self, exc: BaseException, name: str = "") -> None:
        if REQUIRE_EXTENSIONS:
            raise exc
        print(
            f"\n{BANNER}\nWARNING: could not compile the nhlink extension {name or ''}: {exc}\n"
            "nhlink will use its pure-Python core (same behaviour, slower hot paths).\n"
            f"Set NHLINK_REQUIRE_EXTENSIONS=1 to make this an error.\n{BANNER}\n",
            file=sys.stderr,
        )


class BuildPyWithoutCythonSources(build_py):
    """Leave the ``*_c.py`` Cython inputs out of wheels: only their compiled form belongs there."""

    def find_package_modules(self, package: str, package_dir: str) -> list[Any]:
        modules = super().find_package_modules(package, package_dir)
        if package != "nhlink._core":
            return modules
        return [m for m in modules if m[1] not in CYTHON_ONLY_MODULES]


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise
        print(
            f"{BANNER}\nWARNING: Cython is not available ({exc}); building the pure-Python core.\n"
            f"{BANNER}",
            file=sys.stderr,
        )
        return []
    exts = [Extension(name, [str(src)], extra_compile_args=["-O3", "-g0"]) for name, src in EXTENSIONS]
    return cythonize(exts, compiler_directives=DIRECTIVES, quiet=True)  # type: ignore[no-any-return]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithoutCythonSources},
)
