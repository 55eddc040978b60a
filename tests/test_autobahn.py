"""Autobahn|Testsuite conformance of nhlink's WebSocket client.

Opt-in: skipped unless ``NHLINK_AUTOBAHN=1`` (CI sets it after ``scripts/autobahn/setup.sh`` has
installed the Python 2.7 suite). Runs ``scripts/autobahn/run.py --client nhlink`` for the core
implementation in use (``NHLINK_NO_EXTENSIONS=1`` is inherited and selects the pure-Python one)
and requires every run case to be graded and none to have FAILED: over ws:// and over wss://
(nhlink's own TLS layer, certificates made for the run and verified).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "scripts" / "autobahn" / "run.py"
CASES = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*"
DEADLINE_S = 20 * 60

pytestmark = [
    pytest.mark.autobahn,
    pytest.mark.skipif(
        os.environ.get("NHLINK_AUTOBAHN", "").strip() in ("", "0"),
        reason="set NHLINK_AUTOBAHN=1 (after scripts/autobahn/setup.sh) to run Autobahn",
    ),
]


@pytest.mark.timeout(DEADLINE_S + 180)
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_autobahn_client_conformance(tmp_path: Path, tls: bool) -> None:
    summary_path = tmp_path / "autobahn.json"
    cmd = [
        sys.executable,
        str(RUN),
        "--client",
        "nhlink",
        "--cases",
        CASES,
        "--deadline",
        str(DEADLINE_S),
        "--json",
        str(summary_path),
        "--reports",
        str(tmp_path / "reports"),
        *(["--tls"] if tls else []),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=DEADLINE_S + 120, check=False, cwd=REPO
    )
    output = proc.stdout + proc.stderr
    print(output)  # the summary, in CI's log with -s / -rA and on failure
    assert summary_path.exists(), f"run.py wrote no summary (exit {proc.returncode}):\n{output}"
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    assert not summary.get("error"), f"harness error: {summary.get('error')}\n{output}"
    assert not summary["deadline_hit"], output
    assert summary["run"] > 0, output
    assert summary["tls"] is tls, output
    assert summary["graded"] == summary["run"] == summary["selected"], output
    assert summary["failed"] == [], f"FAILED cases: {summary['non_ok']}\n{output}"
    assert proc.returncode == 0, output
