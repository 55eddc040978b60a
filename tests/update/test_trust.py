"""The verification guarantee, end to end (issue: "never install or report what was not
verified"), with real writers, a real file and a real command:

* a writer never receives a byte that could still fail verification, where verification is
  possible: a part only after its SHA-256 matched; without parts, never the end of an image
  whose whole-file SHA-256 did not match;
* ``completed`` is sent only when the bytes the writer holds hash to ``checksum``: a resumed
  image's prefix is read back and re-verified, and a damaged one restarts at the damage;
* a resume point never covers bytes the writer had not made durable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nhlink import NervesHubLink
from nhlink.testing import FakeHub
from nhlink.testing.firmware import Faults, FirmwareServer
from nhlink.update.manager import UpdateManager
from nhlink.update.writer import FwupWriter
from nhlink.update.writers import CommandWriter, FileWriter
from tests.support import (
    NEW_META,
    MiB,
    deliver,
    image,
    ota_options,
    push,
    sha,
    statuses,
    wait_status,
)

BLOCK = 64 * 1024  # the writer block size (StreamingDigest's default)


class SpyWriter(FileWriter):
    """A FileWriter that records what it was given: every byte, syncs, finish and abort."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lock = threading.Lock()
        self.received = bytearray()  # every byte handed to fwup_chunk, in order
        self.start = 0  # the offset fwup_begin was last called with
        self.begins: list[int] = []
        self.synced = 0  # end of the bytes made durable
        self.finished = 0
        self.aborted = 0

    @property
    def held(self) -> int:
        """End of the image the writer holds (offset of its next byte)."""
        return self.start + len(self.received)

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
        super().fwup_begin(size, firmware_meta, offset)
        with self.lock:
            self.start = offset
            self.begins.append(offset)
            self.received.clear()
            self.synced = offset

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        super().fwup_chunk(data)
        with self.lock:
            self.received += data

    def fwup_sync(self) -> None:
        super().fwup_sync()
        with self.lock:
            self.synced = self.held

    def fwup_finish(self) -> None:
        self.finished += 1
        super().fwup_finish()

    def fwup_abort(self) -> None:
        self.aborted += 1
        super().fwup_abort()


# -- 1. nothing unverified reaches the writer ---------------------------------------------------


async def test_wrong_checksum_without_parts_never_completes_the_image(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(3 * MiB + 12345)
    target = tmp_path / "firmware.img"
    target.write_bytes(b"the old firmware")
    writer = SpyWriter(target)
    failed = await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="failed",
        writer=writer,
        options=ota_options(hub, tmp_path),
        checksum="AB" * 32,
        with_parts=False,
    )
    assert "SHA-256 mismatch" in failed["reason"]
    # The writer got a prefix and never the last block: an incomplete image, then the abort.
    assert bytes(writer.received) == data[: len(writer.received)]
    assert len(writer.received) <= len(data) - (len(data) % BLOCK or BLOCK)
    assert (writer.finished, writer.aborted) == (0, 1)
    assert target.read_bytes() == b"the old firmware"
    assert statuses(hub) == ["received", "started", "downloading", "failed"]


@pytest.mark.parametrize("bad_part", [0, 2, 3])
async def test_a_corrupted_part_never_reaches_the_writer(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, bad_part: int
) -> None:
    data = image(3 * MiB + 777)
    url = fw.add("fw.bin", data, faults=Faults(corrupt_at=bad_part * MiB + 100))
    writer = SpyWriter(tmp_path / "firmware.img")
    failed = await deliver(
        hub, url, data, expect="failed", writer=writer, options=ota_options(hub, tmp_path)
    )
    assert f"part {bad_part}" in failed["reason"]
    # Exactly the verified parts before it, nothing of the bad one.
    assert bytes(writer.received) == data[: bad_part * MiB]
    assert (writer.finished, writer.aborted) == (0, 1)


async def test_parts_fine_but_whole_checksum_wrong_keeps_the_last_part(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    # An inconsistent server (parts of one image, checksum of another): the last part is held
    # until the whole-file check, so the writer never has a complete image.
    data = image(3 * MiB + 5)
    writer = SpyWriter(tmp_path / "firmware.img")
    async with NervesHubLink(fwup_writer=writer, **ota_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data, checksum=sha(b"another image"))
        failed = await wait_status(hub, "failed")
    assert "SHA-256 mismatch" in failed["reason"]
    assert bytes(writer.received) == data[: 3 * MiB]
    assert writer.aborted == 1 and writer.finished == 0


INSTALL_ON_EOF = 'cat > "$1.incoming" && mv "$1.incoming" "$1"'


@pytest.mark.parametrize("case", ["wrong-checksum", "bad-part"])
async def test_command_acting_on_eof_never_installs_a_failed_image(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, case: str
) -> None:
    # A command that installs what it read once its input ends (as `fwup -a` or
    # `swupdate -i -` do): it must be killed before it ever sees the end of a bad image.
    data = image(2 * MiB + 4321)
    target = tmp_path / "installed.img"
    writer = CommandWriter(["sh", "-c", INSTALL_ON_EOF, "sh", str(target)])
    if case == "wrong-checksum":
        url = fw.add("fw.bin", data)
        checksum, with_parts = "CD" * 32, False
    else:
        url = fw.add("fw.bin", data, faults=Faults(corrupt_at=MiB + 10))
        checksum, with_parts = "auto", True
    await deliver(
        hub,
        url,
        data,
        expect="failed",
        writer=writer,
        options=ota_options(hub, tmp_path),
        checksum=checksum,
        with_parts=with_parts,
    )
    assert not target.exists()
    incoming = tmp_path / "installed.img.incoming"
    held = incoming.read_bytes() if incoming.exists() else b""
    assert data.startswith(held) and len(held) < len(data)
    # The same command with a good image installs it.
    fw.set_faults("fw.bin", Faults())
    async with NervesHubLink(fwup_writer=writer, **ota_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await hub.wait_for(lambda: statuses(hub).count("completed") == 1, timeout=30)
    assert target.read_bytes() == data


async def test_command_writer_env_is_added_to_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    writer = CommandWriter(
        ["sh", "-c", 'cat > /dev/null; echo "$NHLINK_TEST_VAR:$PATH" > "$1"', "sh", str(out)],
        env={"NHLINK_TEST_VAR": "set"},
    )
    await writer.fwup_begin(0, {})
    await writer.fwup_chunk(b"x")
    await writer.fwup_finish()
    value, path = out.read_text().strip().split(":", 1)
    assert value == "set"
    assert path  # PATH inherited, not replaced


# -- 2. resumed images are re-verified -----------------------------------------------------------


def prepare_resume(
    tmp_path: Path, data: bytes, verified_offset: int, held: bytes
) -> tuple[Path, Path]:
    """A crashed device: a state file saying ``verified_offset`` and a partial image."""
    target = tmp_path / "firmware.img"
    state = tmp_path / "state" / "gw-0001.json"
    state.parent.mkdir(parents=True)
    state.write_text(
        json.dumps(
            {
                "validated_uuid": None,
                "download": {
                    "uuid": NEW_META["uuid"],
                    "checksum": sha(data).upper(),
                    "size": len(data),
                    "verified_offset": verified_offset,
                },
                "extra": {},
            }
        )
    )
    FileWriter(target).partial_path.write_bytes(held)
    return target, state


@pytest.mark.parametrize(
    ("damage_at", "expected_range"),
    [
        (None, f"bytes={3 * MiB}-"),  # intact: resume at the saved point
        (MiB + 17, f"bytes={MiB}-"),  # part 1 damaged: resume after part 0
        (5, None),  # part 0 damaged: start over
    ],
)
async def test_resume_reverifies_the_held_prefix(
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
    damage_at: int | None,
    expected_range: str | None,
) -> None:
    data = image(5 * MiB + 999)
    held = bytearray(data[: 3 * MiB])
    if damage_at is not None:
        held[damage_at] ^= 0x01
    target, _ = prepare_resume(tmp_path, data, 3 * MiB, bytes(held))
    writer = SpyWriter(target)
    await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="completed",
        writer=writer,
        options=ota_options(hub, tmp_path),
    )
    assert sha(target.read_bytes()) == sha(data)
    requests = fw.requests_for("fw.bin")
    assert len(requests) == 1
    assert requests[0].range == expected_range


async def test_resume_with_the_first_part_zeroed_is_caught(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    # The reproduction from the issue: verified_offset 3 MiB, a partial image whose first MiB is
    # zeros (a power cut before the page cache reached the disk). Today's code sent
    # `Range: bytes=3145728-` and reported `completed` for a wrong image.
    data = image(4 * MiB + 10)
    held = b"\0" * MiB + data[MiB : 3 * MiB]
    target, state = prepare_resume(tmp_path, data, 3 * MiB, held)
    await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="completed",
        writer=FileWriter(target),
        options=ota_options(hub, tmp_path),
    )
    assert target.read_bytes() == data
    assert [r.range for r in fw.requests_for("fw.bin")] == [None]
    assert json.loads(state.read_text())["download"] is None


@pytest.mark.parametrize(
    ("held_size", "expected_range"),
    [
        (0, None),  # gone: start over from 0
        (MiB - 1, None),  # not even one whole part
        (MiB, f"bytes={MiB}-"),
        (3 * MiB - 1, f"bytes={2 * MiB}-"),  # lost writes: resume at the last whole part held
    ],
)
async def test_resume_point_beyond_the_held_image(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, held_size: int, expected_range: str | None
) -> None:
    # The partial image is shorter than the resume point (a power cut lost its last writes) or
    # gone: resume at the last whole part it still holds (re-verified), else start over; no
    # "cannot resume" failure either way.
    data = image(4 * MiB)
    target, _ = prepare_resume(tmp_path, data, 3 * MiB, data[:held_size])
    if held_size == 0:
        FileWriter(target).partial_path.unlink()
    await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="completed",
        writer=FileWriter(target),
        options=ota_options(hub, tmp_path),
    )
    assert target.read_bytes() == data
    assert [r.range for r in fw.requests_for("fw.bin")] == [expected_range]
    assert "failed" not in statuses(hub)


class NoReadBack(FileWriter):
    """Claims it can resume but cannot read back what it holds: nhlink cannot re-verify it."""

    fwup_read = FwupWriter.fwup_read  # the interface's default: not implemented


async def test_writer_that_cannot_read_back_never_resumes(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(4 * MiB)
    target, _ = prepare_resume(tmp_path, data, 3 * MiB, data[: 3 * MiB])
    writer = NoReadBack(target)
    await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="completed",
        writer=writer,
        options=ota_options(hub, tmp_path),
    )
    assert target.read_bytes() == data
    assert [r.range for r in fw.requests_for("fw.bin")] == [None]


async def test_resume_points_cover_only_synced_bytes(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image(6 * MiB + 3)
    writer = SpyWriter(tmp_path / "firmware.img")
    saved: list[tuple[int, int]] = []  # (resume point, bytes durable at that moment)
    original = UpdateManager.save_resume_point

    async def spy(manager: UpdateManager, info: Any, verified_offset: int) -> None:
        with writer.lock:
            saved.append((verified_offset, writer.synced))
        await original(manager, info, verified_offset)

    # On the class: an UpdateManager has slots, no instance attributes to patch.
    monkeypatch.setattr(UpdateManager, "save_resume_point", spy)
    async with NervesHubLink(fwup_writer=writer, **ota_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("fw.bin", data), data)
        await wait_status(hub, "completed")
    points = [point for point, _ in saved]
    # A point per part, rising, up to the last part before the end (6 MiB; the final 3-byte
    # part is never a resume point).
    assert points == sorted(points) and points[-1] == 6 * MiB
    assert all(point <= durable for point, durable in saved)
    assert all(point % MiB == 0 for point in points)
    assert sha(writer.path.read_bytes()) == sha(data)


async def test_parts_only_update_is_verified_and_accepted(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    # No whole-file checksum but part checksums covering every byte: verified, so accepted.
    data = image(2 * MiB + 50)
    writer = SpyWriter(tmp_path / "firmware.img")
    await deliver(
        hub,
        fw.add("fw.bin", data),
        data,
        expect="completed",
        writer=writer,
        options=ota_options(hub, tmp_path),
        checksum=None,
    )
    assert writer.path.read_bytes() == data
