"""``stop(suspend_update=True)``: a download into a writer that resumes is kept for the next
start (synced, resume point saved, ``fwup_suspend``, nothing reported); other writers are
aborted and the update reported ``failed`` as with a plain ``stop()``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nhlink
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.proxy import Fault, FaultProxy
from nhlink.update.writers import CommandWriter, FileWriter
from tests.support import MiB, image, ota_options, push, sha, statuses, wait_status


class CountingFileWriter(FileWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path, fsync=False)
        self.calls: list[str] = []

    def fwup_suspend(self) -> None:
        self.calls.append("suspend")
        super().fwup_suspend()

    def fwup_abort(self) -> None:
        self.calls.append("abort")
        super().fwup_abort()


async def interrupted(
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
    writer: Any,
    data: bytes,
    rate: int,
    until: Callable[[], bool] = lambda: True,
) -> nhlink.NervesHubLink:
    """Start a device, push ``data`` through a slow proxy, wait for ``downloading`` and
    ``until()``, then ``stop(suspend_update=True)``; returns the stopped link."""
    async with FaultProxy("127.0.0.1", fw.port, seed=rate) as proxy:
        proxy.always = (Fault("slow", at=1000, rate=rate),)
        url = fw.add("fw.bin", data).replace(f":{fw.port}/", f":{proxy.port}/")
        link = nhlink.NervesHubLink(fwup_writer=writer, **ota_options(hub, tmp_path))
        await link.start()
        try:
            await link.wait_joined(10)
            await push(hub, url, data)
            await wait_status(hub, "downloading")
            await hub.wait_for(until, timeout=30)
        finally:
            await link.stop(suspend_update=True)
    return link


def saved(state: Path) -> dict[str, Any] | None:
    download: dict[str, Any] | None = json.loads(state.read_text())["download"]
    return download


async def test_suspended_download_resumes_after_a_restart(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(6 * MiB + 99, seed=11)
    target = tmp_path / "fw.img"
    state = tmp_path / "state" / "gw-0001.json"
    writer = CountingFileWriter(target)
    link = await interrupted(
        hub,
        fw,
        tmp_path,
        writer,
        data,
        4 * MiB,
        lambda: (saved(state) or {}).get("verified_offset", 0) >= MiB,
    )
    point = saved(state)
    assert point is not None and point["verified_offset"] % MiB == 0
    assert point["verified_offset"] >= MiB
    assert writer.calls == ["suspend"]
    assert writer.partial_path.stat().st_size >= point["verified_offset"]
    assert "failed" not in statuses(hub)
    assert link.updates.failed_count == 0

    async with nhlink.NervesHubLink(
        fwup_writer=FileWriter(target, fsync=False), **ota_options(hub, tmp_path)
    ) as again:
        await again.wait_joined(10)
        await push(hub, fw.add("fw.bin", data), data)
        await hub.wait_for(lambda: statuses(hub).count("completed") == 1, timeout=30)
    assert sha(target.read_bytes()) == sha(data)
    assert fw.requests_for("fw.bin")[-1].range == f"bytes={point['verified_offset']}-"


async def test_a_writer_that_cannot_resume_is_aborted_and_the_update_failed(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(4 * MiB, seed=12)
    out = tmp_path / "out"
    await interrupted(hub, fw, tmp_path, CommandWriter(["sh", "-c", f"cat > {out}"]), data, 2 * MiB)
    payload = await wait_status(hub, "failed")
    assert "cancelled" in payload["reason"]
    assert saved(tmp_path / "state" / "gw-0001.json") is None
