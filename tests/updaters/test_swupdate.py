"""SwupdateWriter against the real SWUpdate 2022.12 daemon: signed .swu files streamed over its
IPC socket into file-backed A/B slots. End to end from an ``update`` pushed by FakeHub."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nhlink import NervesHubLink, WriterError
from nhlink.testing import FakeHub
from nhlink.testing.firmware import Faults, FirmwareServer
from nhlink.update.writers import SwupdateWriter
from nhlink.update.writers.swupdate import IPC_MESSAGE_SIZE, PROGRESS_MESSAGE_SIZE

from .conftest import (
    MiB,
    SwupdateSystem,
    image,
    in_thread,
    link_options,
    progress_values,
    push,
    statuses,
    wait_status,
)


def writer_for(system: SwupdateSystem, **extra: Any) -> SwupdateWriter:
    return SwupdateWriter(socket_dir=system.run_dir, selection="stable,copy2", **extra)


def test_ipc_layout_matches_swupdate_2022_12() -> None:
    # sizeof(ipc_message) and sizeof(struct progress_msg) on x86_64/aarch64 with SWUpdate 2022.12.
    if sys.maxsize > 2**32:
        assert (IPC_MESSAGE_SIZE, PROGRESS_MESSAGE_SIZE) == (3120, 2416)


async def test_good_install_streams_into_slot_b(
    swupdate_system: SwupdateSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    payload = image(3 * MiB + 999, seed=11)
    swu = await in_thread(swupdate_system.swu, payload)
    writer = writer_for(swupdate_system)
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("update.swu", swu), swu)
        await wait_status(hub, "completed")
    assert statuses(hub) == ["received", "started", "downloading", "updating", "completed"]
    slot_b = swupdate_system.slots["B"].read_bytes()
    assert slot_b[: len(payload)] == payload
    assert swupdate_system.slots["A"].read_bytes() == swupdate_system.slot_a_content
    assert swupdate_system.boot_changes() == ["set-primary B"]
    # A streaming install reports "updating" progress only (PROTOCOL.md §7.3).
    updating = progress_values(hub, "updating")
    assert updating == sorted(updating) and updating[-1] == 100
    assert len(updating) >= 2 and updating[0] < 100  # throttled to one report per 0.5 s
    assert progress_values(hub, "downloading") == []
    assert any("SWUPDATE successful" in text for _, text in writer.last_messages)


REJECTIONS: dict[str, tuple[dict[str, Any], str]] = {
    # case: (how the .swu is made, words from SWUpdate's reason)
    "tampered": ({"tamper_image_at": 2 * MiB}, "HASH mismatch"),
    "other-ca": ({"signer": "other"}, "Authentication of all signatures failed"),
    "incompatible": ({"hw_rev": "2.0"}, "SW not compatible with hardware"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejected_images_fail_with_swupdates_reason(
    swupdate_system: SwupdateSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path, case: str
) -> None:
    how, words = REJECTIONS[case]
    payload = image(3 * MiB, seed=12)
    kwargs = dict(how)
    if kwargs.get("signer") == "other":
        kwargs["signer"] = swupdate_system.pki.other
    swu = await in_thread(lambda: swupdate_system.swu(payload, **kwargs))
    writer = writer_for(swupdate_system)
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("update.swu", swu), swu)
        failed = await wait_status(hub, "failed")
        assert link.status.joined
    assert words in failed["reason"], failed["reason"]
    assert failed["reason"].startswith("SWUpdate")
    # The boot switch never happened and the running slot is intact. (A tampered image that is
    # installed directly has overwritten slot B already: the documented trade-off.)
    assert swupdate_system.boot_changes() == []
    assert swupdate_system.slots["A"].read_bytes() == swupdate_system.slot_a_content
    if case != "tampered":
        assert set(swupdate_system.slots["B"].read_bytes()) == {0}


async def test_download_cut_and_resumed_installs_once(
    swupdate_system: SwupdateSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    payload = image(3 * MiB, seed=13)
    swu = await in_thread(swupdate_system.swu, payload)
    url = fw.add("update.swu", swu, faults=Faults(cut_after=MiB + 100, cut_times=1))
    async with NervesHubLink(
        fwup_writer=writer_for(swupdate_system),
        **link_options(hub, tmp_path),
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, swu)
        await wait_status(hub, "completed")
    requests = fw.requests_for("update.swu")
    assert len(requests) == 2 and requests[1].range is not None
    assert swupdate_system.slots["B"].read_bytes()[: len(payload)] == payload
    assert swupdate_system.boot_changes() == ["set-primary B"]  # installed once


async def test_aborted_stream_leaves_the_daemon_ready(swupdate_system: SwupdateSystem) -> None:
    payload = image(2 * MiB, seed=14)
    swu = await in_thread(swupdate_system.swu, payload)
    writer = writer_for(swupdate_system)
    await writer.fwup_begin(len(swu), {})
    await writer.fwup_chunk(swu[: MiB // 2])
    await writer.fwup_abort()  # e.g. the download failed for good
    assert swupdate_system.boot_changes() == []
    # The next update is accepted at once and installs.
    await writer.fwup_begin(len(swu), {})
    for i in range(0, len(swu), 256 * 1024):
        await writer.fwup_chunk(swu[i : i + 256 * 1024])
    await writer.fwup_finish()
    assert swupdate_system.boot_changes() == ["set-primary B"]


async def test_selection_not_accepted(swupdate_system: SwupdateSystem) -> None:
    writer = SwupdateWriter(socket_dir=swupdate_system.run_dir, selection="stable,copy9")
    with pytest.raises(WriterError, match=r"refused.*stable,copy9"):
        await writer.fwup_begin(1000, {})
    await writer.fwup_abort()


async def test_no_daemon(tmp_path: Path) -> None:
    writer = SwupdateWriter(socket_dir=tmp_path)
    with pytest.raises(WriterError, match="cannot reach the SWUpdate daemon"):
        await writer.fwup_begin(1000, {})
    await writer.fwup_abort()
    with pytest.raises(ValueError, match="collection,mode"):
        SwupdateWriter(selection="stable")


async def test_confirm_command(tmp_path: Path) -> None:
    marker = tmp_path / "confirmed"
    writer = SwupdateWriter(
        socket_dir=tmp_path, confirm_command=["sh", "-c", f"echo ok > {marker}"]
    )
    await writer.fwup_confirm()
    assert marker.read_text() == "ok\n"
    failing = SwupdateWriter(socket_dir=tmp_path, confirm_command=["sh", "-c", "exit 3"])
    with pytest.raises(WriterError, match="status 3"):
        await failing.fwup_confirm()


# -- the verification gate with the real daemon ----------------------------------------------------


class SpySwupdateWriter(SwupdateWriter):
    """Records every byte SWUpdate was given."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received = bytearray()

    async def fwup_chunk(self, data: bytes | memoryview) -> None:
        self.received += data
        await super().fwup_chunk(data)


@pytest.mark.parametrize("installed_directly", [False, True])
async def test_wrong_checksum_without_parts_is_never_installed(
    swupdate_system: SwupdateSystem,
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
    installed_directly: bool,
) -> None:
    # PROTOCOL.md §7.1 allows no partials_checksums: only the whole-file checksum vouches for
    # the image, so the end of the stream is held back until it matched. SWUpdate sees an
    # incomplete .swu and installs nothing (today's code handed it everything first).
    payload = image(3 * MiB, seed=15)
    swu = await in_thread(
        lambda: swupdate_system.swu(payload, installed_directly=installed_directly)
    )
    writer = SpySwupdateWriter(socket_dir=swupdate_system.run_dir, selection="stable,copy2")
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("update.swu", swu), swu, checksum="EE" * 32, with_parts=False)
        failed = await wait_status(hub, "failed")
    assert "SHA-256 mismatch" in failed["reason"]
    assert swu.startswith(bytes(writer.received)) and len(writer.received) < len(swu)
    assert swupdate_system.boot_changes() == []
    assert swupdate_system.slots["A"].read_bytes() == swupdate_system.slot_a_content
    slot_b = swupdate_system.slots["B"].read_bytes()
    if installed_directly:
        # Streamed into the inactive slot as it arrived, but never completed nor activated.
        assert slot_b[: len(payload)] != payload
    else:
        assert set(slot_b) == {0}  # untouched


@pytest.mark.parametrize("bad_part", [0, 2])
async def test_a_corrupted_part_never_reaches_swupdate(
    swupdate_system: SwupdateSystem,
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
    bad_part: int,
) -> None:
    payload = image(3 * MiB, seed=16)
    swu = await in_thread(swupdate_system.swu, payload)
    url = fw.add("update.swu", swu, faults=Faults(corrupt_at=bad_part * MiB + 4096))
    writer = SpySwupdateWriter(socket_dir=swupdate_system.run_dir, selection="stable,copy2")
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, url, swu)
        failed = await wait_status(hub, "failed")
    assert f"part {bad_part}" in failed["reason"]
    assert bytes(writer.received) == swu[: bad_part * MiB]  # never a byte of the bad part
    assert swupdate_system.boot_changes() == []
    assert swupdate_system.slots["A"].read_bytes() == swupdate_system.slot_a_content
