"""`nhlink demo` and the command line, run for real."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from nhlink import _core
from nhlink.demo import run_demo


async def test_demo_lands_and_confirms_the_update(tmp_path: Path) -> None:
    out = io.StringIO()
    assert await run_demo(size_mib=3, workdir=tmp_path, out=out) == 0
    text = out.getvalue()
    assert "statuses sent: received, started, downloading, updating, completed" in text
    assert "SHA-256 matches" in text
    assert "joined with firmware_validated=False" in text
    assert (tmp_path / "slot-b" / "firmware.img").stat().st_size == 3 * 1024 * 1024
    assert f"core: {_core.IMPLEMENTATION}" in text


def test_cli_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nhlink", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("nhlink ")
    assert f"core: {_core.IMPLEMENTATION}" in out.stdout


def test_cli_demo_subprocess(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nhlink", "demo", "--size", "1", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "SHA-256 matches" in out.stdout
