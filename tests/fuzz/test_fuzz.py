"""The fuzz targets in the test run: the kept corpus and every past crash replayed, random
inputs through each target (hypothesis; both cores compared where there are two), and a short
coverage-guided atheris run of each (when atheris is installed; once, with the compiled core).

Long runs: ``python -m tests.fuzz TARGET SECONDS`` (see tests/fuzz/__main__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink._core import extensions_disabled

from .targets import TARGETS

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("NHLINK_FUZZ_SECONDS", "4"))


def inputs(kind: str) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for target in TARGETS:
        folder = HERE / kind / target
        if folder.is_dir():
            found += [(target, path) for path in sorted(folder.iterdir()) if path.is_file()]
    return found


@pytest.mark.parametrize(
    ("target", "path"),
    inputs("corpus") + inputs("regressions"),
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_corpus_and_regressions(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", list(TARGETS))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=2048))
def test_random_inputs(target: str, data: bytes) -> None:
    TARGETS[target](data)


@pytest.mark.skipif(extensions_disabled(), reason="independent of the core choice: runs once")
@pytest.mark.parametrize("target", list(TARGETS))
def test_coverage_guided_run(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris not installed (pip install -e '.[fuzz]')")
    root = HERE.parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz",
            target,
            str(SECONDS),
            str(tmp_path),
            str(HERE / "corpus" / target),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, f"atheris found a crash in {target}:\n{tail}"
    assert "Done" in tail
