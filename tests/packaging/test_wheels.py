"""The distributions themselves: the sdist and the pure ``py3-none-any`` wheel, and the release
matrix of ``[tool.cibuildwheel]``.

Built from a copy of the checkout into a temporary directory, then installed into fresh venvs:
the sdist on a "machine without a compiler" (``CC`` points nowhere) falls back to the pure core
with a clear message, unless ``NHLINK_REQUIRE_EXTENSIONS=1`` makes that an error; the pure wheel
holds no compiled or Cython-only file and passes the whole suite. The ARM wheels are built and
tested under emulation by ``scripts/cross/run.sh`` (see docs/packaging.md).

These need PyPI (fresh venvs; the sdist installs with build isolation) and take about a minute
and a half natively: all are marked ``slow``, and skipped under ``NHLINK_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink._core import extensions_disabled

pytestmark = [
    pytest.mark.slow,
    # They build and install on their own, the same whichever core this run uses: once is enough
    # (scripts/test.sh runs the suite twice, the second time with NHLINK_NO_EXTENSIONS=1).
    pytest.mark.skipif(extensions_disabled(), reason="independent of the core: runs once"),
]

REPO = Path(__file__).resolve().parents[2]
JUNK = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.so",
    "*.c",
    "*.pyc",
    ".hypothesis",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".benchmarks",
    ".autobahn",
)
BANNER = "could not compile the nhlink extension"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the switches of the run we are part of (CI sets some)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NHLINK_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "CC", "CXX")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(
    *cmd: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout (end)\n{proc.stdout[-4000:]}\n--- stderr (end)\n{proc.stderr[-4000:]}"
        )
    return proc


def venv(path: Path, *packages: str | Path) -> Path:
    """A fresh venv at ``path`` with ``packages`` installed; returns its python."""
    run(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    if packages:
        run(python, "-m", "pip", "install", "-q", *packages)
    return python


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("dists")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tools(workdir: Path) -> Path:
    """A venv with the build frontend, the build requirements and cibuildwheel."""
    return venv(workdir / "tools", "build", "setuptools>=77", "Cython>=3.0.10", "cibuildwheel")


@pytest.fixture(scope="module")
def dists(workdir: Path, tools: Path) -> dict[str, Path]:
    """The sdist and, built from it, the pure wheel (NHLINK_NO_EXTENSIONS=1)."""
    source = workdir / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*JUNK))
    out = workdir / "dist"
    run(
        tools,
        "-m",
        "build",
        "--no-isolation",
        "--outdir",
        out,
        source,
        env=clean_env(NHLINK_NO_EXTENSIONS="1"),
    )
    (sdist,) = out.glob("nhlink-*.tar.gz")
    (wheel,) = out.glob("nhlink-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_pure_wheel_is_py3_none_any(dists: dict[str, Path]) -> None:
    wheel = dists["wheel"]
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert "Root-Is-Purelib: true" in meta
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c", ".pyx", ".pxd"))]
    # The Cython-only sources (symlinks to the pure twins in the checkout) stay out of wheels.
    assert "nhlink/_core/_frames_c.py" not in names
    assert "nhlink/_core/_digest_c.py" not in names
    for name in ("_frames_py.py", "_digest_py.py", "_codec_py.py", "_mask_py.py", "_frames_c.pyi"):
        assert f"nhlink/_core/{name}" in names
    assert "nhlink/py.typed" in names
    # `nhlink config example|unit` print package data.
    assert "nhlink/agent/data/nhlink.example.toml" in names
    assert "nhlink/agent/data/nhlink.service" in names


def test_sdist_holds_sources_not_build_products(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
    for name in (
        "setup.py",
        "pyproject.toml",
        "src/nhlink/_core/_mask.pyx",
        "src/nhlink/_core/_frames_c.pxd",
        "src/nhlink/_core/_frames_c.py",
        "tests/core/test_frames.py",
        "tests/packaging/test_32bit.py",
        "src/nhlink/agent/data/nhlink.service",
        "src/nhlink/agent/data/nhlink.example.toml",
    ):
        assert name in names, name
    assert not [n for n in names if n.endswith((".so", ".c", ".pyc"))]


def test_sdist_without_a_compiler_installs_the_pure_core(
    workdir: Path, dists: dict[str, Path]
) -> None:
    python = venv(workdir / "nocc")
    nowhere = str(workdir / "no-such-compiler")
    proc = run(
        python, "-m", "pip", "install", "-v", dists["sdist"], env=clean_env(CC=nowhere, CXX=nowhere)
    )
    output = proc.stdout + proc.stderr
    assert BANNER in output
    assert "nhlink will use its pure-Python core" in output
    assert "NHLINK_REQUIRE_EXTENSIONS=1" in output
    probe = run(python, "-c", "import nhlink._core as c; print(c.IMPLEMENTATION)", cwd=workdir)
    assert probe.stdout.strip() == "python"


def test_sdist_without_a_compiler_fails_when_extensions_are_required(
    workdir: Path, dists: dict[str, Path]
) -> None:
    python = venv(workdir / "nocc-required")
    nowhere = str(workdir / "no-such-compiler")
    proc = run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        dists["sdist"],
        env=clean_env(CC=nowhere, CXX=nowhere, NHLINK_REQUIRE_EXTENSIONS="1"),
        check=False,
    )
    assert proc.returncode != 0
    assert run(python, "-m", "pip", "show", "nhlink", check=False).returncode != 0


@pytest.mark.timeout(900)  # the whole suite, reliability campaign included
def test_pure_wheel_passes_the_whole_suite(workdir: Path, dists: dict[str, Path]) -> None:
    """Against the installed wheel, never the checkout: tests and config copied elsewhere."""
    python = venv(workdir / "pure", f"{dists['wheel']}[test]")
    probe = run(python, "-c", "import nhlink._core as c; print(c.IMPLEMENTATION)", cwd=workdir)
    assert probe.stdout.strip() == "python"
    assert run(workdir / "pure" / "bin" / "nhlink", "--help").returncode == 0
    suite = workdir / "suite"
    suite.mkdir()
    for name in ("tests", "docs"):  # some tests read the docs they check
        shutil.copytree(REPO / name, suite / name, ignore=shutil.ignore_patterns(*JUNK))
    shutil.copy2(REPO / "pyproject.toml", suite / "pyproject.toml")
    proc = run(
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-x",
        "--ignore=tests/packaging/test_wheels.py",
        "--ignore=tests/test_autobahn.py",
        cwd=suite,
        check=False,
    )
    tail = proc.stdout[-3000:]
    failures = proc.stdout.find("= FAILURES =")
    # The failure itself, not only the summary (a long skip list can fill the tail).
    assert proc.returncode == 0, proc.stdout[failures : failures + 6000] if failures >= 0 else tail
    assert " passed" in tail and "failed" not in tail.splitlines()[-1], tail
    assert "src/nhlink" not in proc.stdout  # the checkout was never imported


def test_cibuildwheel_release_matrix(tools: Path) -> None:
    cibuildwheel = tools.parent / "cibuildwheel"
    proc = run(cibuildwheel, "--print-build-identifiers", "--platform", "linux", cwd=REPO)
    identifiers = set(proc.stdout.split())
    expected = {
        f"cp3{minor}-{libc}_{arch}"
        for minor in (11, 12, 13, 14)
        for libc in ("manylinux", "musllinux")
        for arch in ("x86_64", "aarch64", "armv7l")
    }
    assert identifiers == expected, sorted(identifiers ^ expected)
