"""Crash-resume: the device process is killed with SIGKILL at random points of an update,
sometimes with the partial image's last writes lost as in a power cut (truncated to a random
point), restarted, and the final state checked: the update completes with exactly the served
image, and a resume re-fetches at most what it lost plus one part and the read buffer.

NHLINK_CRASH_RUNS (default 20) runs; NHLINK_CRASH_SEEDS=3,9 replays particular ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import nhlink
from nhlink import NervesHubLink
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.proxy import Fault, FaultProxy
from nhlink.update.writers import FileWriter
from tests.support import (
    DEVICE_SCRIPT,
    MiB,
    device_options,
    ota_options,
    push,
    resume_point,
    sha,
    statuses,
)

from .scenarios import READ_BUFFER

#: Child processes import the same nhlink as this one (a checkout's or an installed wheel's).
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(next(iter(nhlink.__path__))).parent), os.environ.get("PYTHONPATH", "")]
    ),
}


def _seeds() -> list[int]:
    chosen = os.environ.get("NHLINK_CRASH_SEEDS")
    if chosen:
        return [int(s) for s in chosen.split(",") if s.strip()]
    return list(range(int(os.environ.get("NHLINK_CRASH_RUNS", "20"))))


def downloading(state: Path) -> bool:
    try:
        return json.loads(state.read_text())["download"] is not None
    except (OSError, ValueError, KeyError, TypeError):
        return False


@pytest.mark.parametrize("seed", _seeds())
async def test_killed_and_restarted(
    seed: int, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    size = rng.randint(3, 6) * MiB + rng.randint(0, MiB - 1)
    data = rng.randbytes(size)
    kill_at = rng.randint(0, size // MiB - 1) * MiB  # once the resume point reached this
    power_cut = rng.random() < 0.5
    target = tmp_path / "firmware.img"
    target.write_bytes(b"the old image")
    state = tmp_path / "state" / "gw-0001.json"
    async with FaultProxy("127.0.0.1", fw.port, seed=seed) as proxy:
        # Slow enough to be killed mid-way: 8 MiB/s after the first bytes.
        proxy.always = (Fault("slow", at=1000, rate=8 * MiB),)
        url = fw.add("fw.bin", data).replace(f":{fw.port}/", f":{proxy.port}/")
        # Frequent heartbeats wake hub.wait_for, which re-reads the state file (0.1 s: a 50 ms
        # heartbeat timed out on a loaded machine and lost the statuses sent meanwhile).
        opts = device_options(hub, "gw-0001", tmp_path, heartbeat_interval=0.1)
        opts["state_dir"] = str(opts["state_dir"])
        proc = subprocess.Popen(  # noqa: ASYNC220 - a real device process, killed below
            [sys.executable, "-c", DEVICE_SCRIPT, json.dumps({**opts, "target": str(target)})],
            env=CHILD_ENV,
        )
        try:
            await hub.wait_for_device("gw-0001", timeout=30)
            await push(hub, url, data)
            # The download began (its record is in the state file; statuses are best-effort
            # and may be lost to a reconnect, so they are not what this waits for)...
            await hub.wait_for(lambda: downloading(state), timeout=30)
            # ...and reached the kill point.
            await hub.wait_for(lambda: resume_point(state) >= kill_at, timeout=30)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        await hub.wait_for_disconnect("gw-0001", timeout=10)
    saved = resume_point(state)
    partial = FileWriter(target).partial_path
    held = partial.stat().st_size if partial.exists() else 0
    if power_cut and held:
        # The last writes never reached the disk: a random shorter (or empty) partial image.
        keep = rng.randint(0, held)
        with partial.open("r+b") as f:
            f.truncate(keep)
        held = keep
    good = min(saved, held // MiB * MiB)  # what can survive re-verification
    before = len(fw.requests_for("fw.bin"))
    async with NervesHubLink(fwup_writer=FileWriter(target), **ota_options(hub, tmp_path)):
        record = await hub.wait_for(lambda: hub.devices["gw-0001"].joins >= 2 or None, timeout=15)
        assert record
        await push(hub, fw.add("fw.bin", data), data)
        await hub.wait_for(lambda: statuses(hub).count("completed") == 1, timeout=30)
    assert sha(target.read_bytes()) == sha(data), f"seed {seed}: wrong image installed"
    assert json.loads(state.read_text())["download"] is None
    refetched = sum(r.bytes_sent for r in fw.requests_for("fw.bin")[before:])
    assert refetched <= size - good + MiB + READ_BUFFER, (
        f"seed {seed}: fetched {refetched} bytes after resuming with {good} good of {size}"
    )
    assert "failed" not in statuses(hub)
