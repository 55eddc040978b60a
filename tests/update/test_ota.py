"""OTA end to end over 127.0.0.1: FakeHub pushes `update`, FirmwareServer serves the image
(with faults), a real writer receives it (PROTOCOL.md §7, §10, §11)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import nhlink
from nhlink import Apply, Ignore, NervesHubLink, Reschedule
from nhlink.config import LinkConfig
from nhlink.testing import FakeHub
from nhlink.testing.firmware import Faults, FirmwareServer
from nhlink.update.download import DownloadOptions
from nhlink.update.manager import UpdatePolicy
from nhlink.update.writer import FwupWriter
from nhlink.update.writers import FileWriter
from tests.support import (
    DEVICE_SCRIPT,
    META,
    NEW_META,
    MiB,
    Recorder,
    device_options,
    image,
    ota_options,
    push,
    statuses,
    wait_status,
)

options = ota_options


async def test_happy_path_every_status_in_order(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(3 * MiB + 12345)
    target = tmp_path / "slot" / "firmware.img"
    client = Recorder()
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(target), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data, query="X-Amz-Signature=secret"), data)
        await wait_status(hub, "completed")
        assert (link.updates.completed_count, link.updates.failed_count) == (1, 0)
    assert statuses(hub) == ["received", "started", "downloading", "updating", "completed"]
    assert target.read_bytes() == data
    assert client.asked[0]["uuid"] == NEW_META["uuid"]
    progress = hub.devices["gw-0001"].messages_for("device", "fwup_progress")
    values = [m.payload["value"] for m in progress]
    assert values == sorted(values) and values[-1] == 100
    assert {m.payload["stage"] for m in progress} == {"downloading", "updating"}
    assert client.progress == sorted(client.progress) and client.progress[-1] == 100
    assert len(fw.requests_for("fw.bin")) == 1
    assert fw.requests_for("fw.bin")[0].headers.get("x-nh-signature") is None


async def test_ignore(hub: FakeHub, fw: FirmwareServer, tmp_path: Path) -> None:
    data = image(1000)
    client = Recorder([Ignore("maintenance window closed")])
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        payload = await wait_status(hub, "ignored")
    assert payload["reason"] == "maintenance window closed"
    assert statuses(hub) == ["received", "ignored"]
    assert fw.requests_for("fw.bin") == []


async def test_reschedule_reported_then_asked_again(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(2000)
    client = Recorder([("reschedule", 200), Apply()])  # AVM spelling first
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        payload = await wait_status(hub, "rescheduled")
        assert payload["delay_for"] == 200  # milliseconds (§7.4), not minutes
        await wait_status(hub, "completed")
    assert len(client.asked) == 2
    assert statuses(hub) == [
        "received",
        "rescheduled",
        "received",
        "started",
        "downloading",
        "updating",
        "completed",
    ]


async def test_reschedule_cancelled_by_stop(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(2000)
    client = Recorder([Reschedule(60_000)])
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        await wait_status(hub, "rescheduled")
        assert link.updates._reschedule is not None
    assert link.updates._reschedule is None


async def test_checksum_mismatch_leaves_old_image(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(2 * MiB)
    target = tmp_path / "firmware.img"
    target.write_bytes(b"the old firmware")
    client = Recorder()
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(target), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data, checksum="AB" * 32, with_parts=False)
        payload = await wait_status(hub, "failed")
        assert link.status.joined  # the connection is untouched
        assert (link.updates.completed_count, link.updates.failed_count) == (0, 1)
    assert "SHA-256 mismatch" in payload["reason"]
    assert target.read_bytes() == b"the old firmware"
    assert not FileWriter(target).partial_path.exists()
    assert isinstance(client.errors[0], nhlink.ChecksumMismatch)


async def test_corrupt_part_detected_early(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(4 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(corrupt_at=MiB + 5))
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        payload = await wait_status(hub, "failed")
    assert "part 1" in payload["reason"]


async def test_missing_checksum_refused_unless_allowed(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(5000)
    url = fw.add("fw.bin", data)
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, data, checksum=None, with_parts=False)
        payload = await wait_status(hub, "failed")
    assert "no checksum" in payload["reason"]
    assert fw.requests_for("fw.bin") == []
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"),
        **options(hub, tmp_path, "gw-0002", allow_unverified_firmware=True),
    ):
        await hub.wait_for_device("gw-0002")
        await push(hub, url, data, checksum=None, with_parts=False, ident="gw-0002")
        await wait_status(hub, "completed", "gw-0002")
    assert (tmp_path / "f.img").read_bytes() == data


async def test_cut_mid_download_resumes_without_refetching(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(6 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(cut_after=2 * MiB + 100, cut_times=2))
    target = tmp_path / "f.img"
    async with NervesHubLink(fwup_writer=FileWriter(target), **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "completed")
    requests = fw.requests_for("fw.bin")
    assert len(requests) == 3
    assert requests[0].range is None and requests[1].range is not None
    sent = sum(r.bytes_sent for r in requests)
    assert len(data) <= sent < len(data) + 64 * 1024  # not twice
    assert target.read_bytes() == data
    assert statuses(hub).count("started") == 3  # one per connection (§7.3)


async def test_server_ignoring_range_restarts(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(3 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(cut_after=MiB, ignore_range=True))
    target = tmp_path / "f.img"
    async with NervesHubLink(fwup_writer=FileWriter(target), **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "completed")
    assert target.read_bytes() == data


async def test_404_fails_fast(hub: FakeHub, fw: FirmwareServer, tmp_path: Path) -> None:
    data = image(1000)
    url = fw.add("fw.bin", data, faults=Faults(status=404, status_times=None))
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"),
        **options(hub, tmp_path),
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        payload = await wait_status(hub, "failed")
    assert "404" in payload["reason"]
    assert "secret" not in payload["reason"]
    assert len(fw.requests_for("fw.bin")) == 1


async def test_503_retried(hub: FakeHub, fw: FirmwareServer, tmp_path: Path) -> None:
    data = image(100_000)
    url = fw.add("fw.bin", data, faults=Faults(status=503, status_times=2))
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"),
        **options(hub, tmp_path),
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "completed")
    assert [r.status for r in fw.requests_for("fw.bin")] == [503, 503, 200]


class FailingWriter(nhlink.FwupWriter):
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in
        self.calls: list[str] = []

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
        self.calls.append("begin")

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        if self.fail_in == "chunk":
            raise OSError(28, "No space left on device")

    def fwup_finish(self) -> None:
        self.calls.append("finish")
        if self.fail_in == "finish":
            raise RuntimeError("could not switch boot slot")

    def fwup_abort(self) -> None:
        self.calls.append("abort")


@pytest.mark.parametrize(
    ("where", "reason"), [("chunk", "No space left"), ("finish", "could not switch boot slot")]
)
async def test_writer_failures(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, where: str, reason: str
) -> None:
    data = image(300_000)
    writer = FailingWriter(where)
    async with NervesHubLink(fwup_writer=writer, **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        payload = await wait_status(hub, "failed")
        assert link.status.joined
    assert reason in payload["reason"]
    assert writer.calls[-1] == "abort"
    assert "completed" not in statuses(hub)


async def test_stop_during_download_aborts_and_reports(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(3 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(stall_after=MiB, stall_for=30))
    writer = FailingWriter("nowhere")
    link = NervesHubLink(fwup_writer=writer, **options(hub, tmp_path))
    async with link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "downloading")
        await fw.wait_for_requests(1, name="fw.bin")
    payload = await wait_status(hub, "failed")
    assert "cancelled" in payload["reason"]
    assert writer.calls == ["begin", "abort"]


async def test_second_update_during_download_ignored(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(2 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(stall_after=MiB, stall_for=0.5))
    async with NervesHubLink(
        fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "downloading")
        await push(hub, url, data)  # the server re-sends: must not start a second download
        # ... and garbage while it runs is dropped too: the server hears nothing about it.
        assert await hub.push("gw-0001", "device", "update", {"firmware_url": 5})
        assert await hub.push("gw-0001", "device", "update", "not even an object")
        await wait_status(hub, "completed")
    assert statuses(hub) == ["received", "started", "downloading", "updating", "completed"]
    assert len(fw.requests_for("fw.bin")) == 1


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"update_available": True, "firmware_meta": NEW_META, "size": 3}, "no firmware_url"),
        (
            {"firmware_url": "https://127.0.0.1:1/fw", "firmware_meta": {**NEW_META, "uuid": 7}},
            "uuid",
        ),
        ({"firmware_url": "https://127.0.0.1:1/fw", "firmware_meta": {"product": "x"}}, "uuid"),
    ],
)
async def test_malformed_update_is_reported_when_idle(
    hub: FakeHub, tmp_path: Path, payload: dict[str, Any], words: str
) -> None:
    writer = FileWriter(tmp_path / "f.img")
    async with NervesHubLink(fwup_writer=writer, **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        assert await hub.push("gw-0001", "device", "update", payload)
        failed = await wait_status(hub, "failed")
        assert link.status.joined
    assert failed["reason"].startswith("unusable update message")
    assert words in failed["reason"]


async def test_reschedule_has_a_floor(hub: FakeHub, fw: FirmwareServer, tmp_path: Path) -> None:
    # Reschedule(0) would re-ask (and report "rescheduled") in a tight loop: raised to the floor.
    data = image(1000)
    client = Recorder([Reschedule(0), ("reschedule", 0), Apply()])
    opts = options(hub, tmp_path, min_reschedule_delay=0.2)
    async with NervesHubLink(client=client, fwup_writer=FileWriter(tmp_path / "f.img"), **opts):
        await hub.wait_for_device("gw-0001")
        await push(hub, fw.add("fw.bin", data), data)
        await wait_status(hub, "completed")
    messages = hub.devices["gw-0001"].messages_for("device", "status_update")
    rescheduled = [m for m in messages if m.payload["status"] == "rescheduled"]
    assert [m.payload["delay_for"] for m in rescheduled] == [200, 200]
    received = [m.monotonic for m in messages if m.payload["status"] == "received"]
    assert len(received) == 3
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(received))
    assert statuses(hub).count("rescheduled") == 2


def test_reschedule_floor_default() -> None:
    assert UpdatePolicy().min_reschedule_ms == 60_000
    assert (
        LinkConfig.build(
            host="h", product_key="k", product_secret="s", identifier="i", firmware_meta=META
        ).min_reschedule_delay
        == 60.0
    )


async def test_plain_http_firmware_refused_by_default(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(1000)
    writer = FileWriter(tmp_path / "f.img")
    opts = options(hub, tmp_path, download_options=DownloadOptions())
    async with NervesHubLink(fwup_writer=writer, **opts) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        failed = await wait_status(hub, "failed")
    assert "plain http" in failed["reason"]
    assert fw.requests == []


# -- the seed's writer shapes (PROTOCOL.md §14.4) --------------------------------------------------


class SeedWriter(FwupWriter):
    """Written against the Elixir client: ``fwup_begin(size, meta)``, no offset."""

    def __init__(self) -> None:
        self.image = bytearray()
        self.done = False

    def fwup_begin(self, size, firmware_meta):  # type: ignore[no-untyped-def, override]
        self.image.clear()

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        self.image += data

    def fwup_finish(self) -> None:
        self.done = True


class FirmwareWriterShape:
    """No base class, the Elixir client's renamed callbacks (``firmware_*``), async ones too."""

    def __init__(self) -> None:
        self.image = bytearray()
        self.calls: list[str] = []

    def firmware_begin(self, size: int, firmware_meta: Mapping[str, Any]) -> None:
        self.calls.append(f"begin {size}")

    async def firmware_chunk(self, data: bytes | memoryview) -> None:
        self.image += data

    def firmware_finish(self) -> None:
        self.calls.append("finish")

    def firmware_abort(self) -> None:
        self.calls.append("abort")


@pytest.mark.parametrize("shape", ["seed-signature", "firmware-names"])
async def test_seed_writer_shapes(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, shape: str
) -> None:
    data = image(2 * MiB + 7)
    writer: Any = SeedWriter() if shape == "seed-signature" else FirmwareWriterShape()
    async with NervesHubLink(fwup_writer=writer, **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        await wait_status(hub, "completed")
    assert writer.image == data
    if shape == "firmware-names":
        assert writer.calls == [f"begin {len(data)}", "finish"]


def test_not_a_writer_is_a_config_error(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(nhlink.ConfigError, match="firmware_chunk"):
        NervesHubLink(fwup_writer=object(), **options(hub, tmp_path))


async def test_download_survives_socket_reconnect(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(3 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(stall_after=MiB, stall_for=0.5))
    target = tmp_path / "f.img"
    async with NervesHubLink(fwup_writer=FileWriter(target), **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "downloading")
        await hub.disconnect("gw-0001", code=1012)
        await wait_status(hub, "completed", timeout=15)
    assert target.read_bytes() == data
    assert len(fw.requests_for("fw.bin")) == 1


async def test_validation_after_update_and_reboot(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(10_000)
    writer = FileWriter(tmp_path / "f.img")
    async with NervesHubLink(fwup_writer=writer, **options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await link.confirm_update()  # the running 1.0.0 is good
        await push(hub, fw.add("fw.bin", data), data)
        await wait_status(hub, "completed")
    record = hub.devices["gw-0001"]
    # "Reboot" into the new firmware: it starts unvalidated until the application confirms.
    async with NervesHubLink(
        fwup_writer=writer, **options(hub, tmp_path, firmware_meta=NEW_META)
    ) as link:
        await hub.wait_for(lambda: record.joins >= 2)
        assert record.join_params is not None
        assert record.join_params["nerves_fw_uuid"] == NEW_META["uuid"]
        assert record.join_params["meta"]["firmware_validated"] is False
        await link.confirm_update()
        await hub.wait_for_message(
            "gw-0001",
            topic="device",
            event="firmware_validated",
            predicate=lambda m: m.connection == record.connections,  # this boot's message
        )
        assert writer.confirmed is True
    async with NervesHubLink(fwup_writer=writer, **options(hub, tmp_path, firmware_meta=NEW_META)):
        await hub.wait_for(lambda: record.joins >= 3)
        assert record.join_params["meta"]["firmware_validated"] is True


async def test_process_killed_mid_download_resumes_from_state_file(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(5 * MiB)
    url = fw.add("fw.bin", data, faults=Faults(stall_after=3 * MiB + 1000, stall_for=60))
    target = tmp_path / "slot.img"
    # Frequent heartbeats: every one wakes hub.wait_for, which re-reads the state file below.
    opts = device_options(hub, "gw-0001", tmp_path, heartbeat_interval=0.05)
    opts["state_dir"] = str(opts["state_dir"])
    proc = subprocess.Popen(  # noqa: ASYNC220 - a real device process, killed below
        [sys.executable, "-c", DEVICE_SCRIPT, json.dumps({**opts, "target": str(target)})],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await hub.wait_for_device("gw-0001", timeout=15)
        await push(hub, url, data)
        # Wait until the device verified 3 parts and persisted the resume point, then kill -9.
        state_file = Path(opts["state_dir"]) / "gw-0001.json"

        def resume_point() -> int:
            try:
                return int(json.loads(state_file.read_text())["download"]["verified_offset"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0

        await hub.wait_for(lambda: resume_point() >= 3 * MiB, timeout=10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    await hub.wait_for_disconnect("gw-0001", timeout=10)
    fw.set_faults("fw.bin", Faults())
    async with NervesHubLink(fwup_writer=FileWriter(target), **options(hub, tmp_path)):
        record = await hub.wait_for_device("gw-0001")
        assert record.join_params is not None
        assert record.join_params["currently_downloading_uuid"] == NEW_META["uuid"]
        await push(hub, url, data)
        await wait_status(hub, "completed")
    assert target.read_bytes() == data
    last = fw.requests_for("fw.bin")[-1]
    assert last.range == f"bytes={3 * MiB}-"


async def test_progress_without_size_uses_content_length(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(2 * MiB)
    client = Recorder()
    async with NervesHubLink(
        client=client, fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await hub.push_update(
            "gw-0001",
            firmware_url=fw.add("fw.bin", data),
            size=None,
            checksum=hashlib.sha256(data).hexdigest(),
            partials_checksums=None,
            firmware_meta=dict(NEW_META),
        )
        await wait_status(hub, "completed")
    downloading = [
        m.payload["value"]
        for m in hub.devices["gw-0001"].messages_for("device", "fwup_progress")
        if m.payload["stage"] == "downloading"
    ]
    assert downloading and downloading[-1] == 100
    assert client.progress[0] < 100


async def test_no_update_starts_once_stopping(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(1000)
    link = NervesHubLink(fwup_writer=FileWriter(tmp_path / "f.img"), **options(hub, tmp_path))
    async with link:
        await link.wait_joined(5)
        await link.updates.stop()  # what stop() does first
        await link.updates.on_update(
            {
                "update_available": True,
                "firmware_url": fw.add("fw.bin", data),
                "firmware_meta": NEW_META,
                "size": len(data),
                "checksum": hashlib.sha256(data).hexdigest(),
            }
        )
        assert not link.updates.busy
    assert fw.requests_for("fw.bin") == []


async def test_abort_never_overlaps_a_running_chunk(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    import threading

    calls: list[str] = []
    in_chunk = threading.Event()
    release = threading.Event()

    class BlockingWriter(nhlink.FwupWriter):
        def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
            calls.append("begin")

        def fwup_chunk(self, data: bytes | memoryview) -> None:
            if "chunk" not in calls:
                calls.append("chunk")
                in_chunk.set()
                release.wait(10)  # slow flash
                calls.append("chunk-end")

        def fwup_finish(self) -> None:
            calls.append("finish")

        def fwup_abort(self) -> None:
            calls.append("abort")

    data = image(3 * MiB)
    link = NervesHubLink(fwup_writer=BlockingWriter(), **options(hub, tmp_path))
    await link.start()
    await link.wait_joined(5)
    await push(hub, fw.add("fw.bin", data), data)
    assert await asyncio.to_thread(in_chunk.wait, 10)
    stopping = asyncio.create_task(link.stop())
    with pytest.raises(TimeoutError):  # stop() must wait for the chunk, not abort under it
        await asyncio.wait_for(asyncio.shield(stopping), 0.3)
    assert calls == ["begin", "chunk"]
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert calls == ["begin", "chunk", "chunk-end", "abort"]
