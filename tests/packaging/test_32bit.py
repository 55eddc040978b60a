"""32-bit correctness: sizes, offsets and counters past 2 GiB and 4 GiB, on both cores.

On armv7l ``Py_ssize_t`` and C ``long`` are 32 bits wide, so every counter of the compiled core
that can outgrow 2**31 - 1 must be a ``long long`` (firmware images beyond 2 GiB, resume offsets,
64-bit WebSocket frame lengths). These tests run natively like any other and are part of the
emulated armv7l and aarch64 runs of ``scripts/cross/run.sh``, where ``NHLINK_EXPECT_POINTER_BITS``
makes :func:`test_pointer_width` prove which word size they ran on. Nothing here allocates more
than a few MiB: big sizes come from headers, offsets and sparse files, never from big buffers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nhlink.errors import ChecksumMismatch, FrameError, WriterError
from nhlink.update.writers import FileWriter

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
KEY = bytes.fromhex("37fa213d")
POINTER_BITS = struct.calcsize("P") * 8

# Past INT32_MAX, past UINT32_MAX, and far beyond: each a multiple of 1 MiB (a part boundary).
BIG_OFFSETS = [2 * GIB, 4 * GIB, 6 * GIB + 7 * MIB, 1 << 40]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ from block to block (cheap under emulation)."""
    unit = bytes((seed + i) & 0xFF for i in range(251))  # a prime period: no 64 KiB alignment
    return (unit * (size // len(unit) + 1))[:size]


def test_pointer_width() -> None:
    """Records the word size; the emulated runs set the one they must be running on."""
    assert sys.maxsize == (1 << (POINTER_BITS - 1)) - 1
    expected = os.environ.get("NHLINK_EXPECT_POINTER_BITS")
    if expected:
        assert int(expected) == POINTER_BITS, f"running on {POINTER_BITS}-bit, not {expected}"


# -- streaming digest ------------------------------------------------------------------------------


def _stream(digest: Any, data: bytes, chunk: int) -> bytes:
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out.extend(bytes(block) for block in digest.feed(data[i : i + chunk]))
    out.extend(bytes(block) for block in digest.flush())
    return b"".join(out)


@pytest.mark.parametrize("offset", BIG_OFFSETS[:3])
def test_digest_resumes_past_2gib_with_parts(core: ModuleType, offset: int) -> None:
    """Resume at a part boundary beyond 2/4 GiB: parts are indexed, checked and counted right."""
    data = pattern(2 * MIB + 300 * KIB)
    parts = [sha(data[i : i + MIB]) for i in range(0, len(data), MIB)]
    first = offset // MIB
    # Parts before the resume point are never looked at again: placeholders do.
    expected = ["0" * 64] * first + [p.upper() for p in parts]
    digest = core.StreamingDigest(part_checksums=expected, offset=offset)
    assert digest.total == offset
    assert digest.verified_offset == offset
    assert not digest.whole_available

    blocks = digest.feed(data[: MIB + 5])
    assert sum(len(b) for b in blocks) == MIB  # 16 whole 64 KiB blocks
    assert digest.verified_offset == offset + MIB
    assert digest.total == offset + MIB + 5

    rest = b"".join(bytes(b) for b in [*digest.feed(data[MIB + 5 :]), *digest.flush()])
    assert b"".join(bytes(b) for b in blocks) + rest == data
    assert digest.total == offset + len(data)
    assert digest.verified_offset == offset + len(data)
    assert digest.part_digests == parts


@pytest.mark.parametrize("offset", [*BIG_OFFSETS, 1 << 62])
def test_digest_total_past_4gib_without_parts(core: ModuleType, offset: int) -> None:
    data = pattern(200 * KIB + 3)
    digest = core.StreamingDigest(offset=offset)
    assert _stream(digest, data, 4096) == data
    assert digest.total == offset + len(data)
    assert digest.verified_offset == offset
    with pytest.raises(ValueError, match=str(offset)):
        digest.hexdigest()


def test_digest_part_size_of_2gib(core: ModuleType) -> None:
    """A part size that does not fit in 31 bits; the last (short) part is checked at flush."""
    part = 2 * GIB
    data = pattern(300 * KIB, seed=7)
    offset = 4 * part  # 8 GiB: part 4
    expected = ["0" * 64] * 4 + [sha(data)]
    digest = core.StreamingDigest(part_size=part, part_checksums=expected, offset=offset)
    assert _stream(digest, data, 10_000) == data
    assert digest.part_digests == [sha(data)]
    assert digest.verified_offset == offset + len(data)
    assert digest.total == offset + len(data)


def test_digest_too_long_reports_the_limit_past_4gib(core: ModuleType) -> None:
    part = 2 * GIB
    digest = core.StreamingDigest(part_size=part, part_checksums=["0" * 64] * 5, offset=5 * part)
    with pytest.raises(ChecksumMismatch, match=f"5 parts \\({5 * part} bytes\\)"):
        _stream(digest, pattern(70 * KIB), 70 * KIB)


def test_digest_missing_parts_report_the_end_past_4gib(core: ModuleType) -> None:
    part = 2 * GIB
    data = pattern(1000)
    expected = ["0" * 64] * 4 + [sha(data), "1" * 64]
    digest = core.StreamingDigest(part_size=part, part_checksums=expected, offset=4 * part)
    with pytest.raises(ChecksumMismatch, match=f"ended at byte {4 * part + len(data)}"):
        _stream(digest, data, 100)
    assert digest.verified_offset == 4 * part + len(data)  # part 4 itself was fine


def test_digest_part_mismatch_names_the_part_past_4gib(core: ModuleType) -> None:
    offset = 6 * GIB
    digest = core.StreamingDigest(part_checksums=["0" * 64] * (offset // MIB + 1), offset=offset)
    with pytest.raises(ChecksumMismatch, match=f"part {offset // MIB}:"):
        digest.feed(pattern(MIB))
    assert digest.verified_offset == offset


# -- WebSocket frames: 64-bit lengths -------------------------------------------------------------


def header64(length: int, opcode: int = 2, fin: bool = True) -> bytes:
    """A server frame header (unmasked) with the 64-bit length form."""
    return struct.pack("!BBQ", (0x80 if fin else 0) | opcode, 127, length)


LENGTHS = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1]


@pytest.mark.parametrize("length", LENGTHS)
def test_64bit_length_over_the_limit_is_refused_from_the_header(
    core: ModuleType, length: int
) -> None:
    parser = core.FrameParser()  # 16 MiB limits
    with pytest.raises(FrameError, match=f"frame of {length} bytes exceeds") as info:
        parser.feed(header64(length))  # the header alone: no payload is ever buffered
    assert info.value.close_code == 1009


@pytest.mark.parametrize("length", LENGTHS)
def test_64bit_length_is_not_truncated(core: ModuleType, length: int) -> None:
    """Allowed by the limits, a > 2**31 frame waits for all its bytes: a length truncated to 32
    bits would complete a short frame (or a negative one) from the bytes below."""
    parser = core.FrameParser(max_frame_size=2**63 - 1, max_message_size=2**63 - 1)
    assert parser.feed(header64(length)) == []
    tail = b"\x81\x05hello" * 20  # would parse as text frames if the length had been cut
    assert parser.feed(b"x" * 5 + tail) == []
    assert parser.feed(tail) == []
    assert not parser.message_in_progress


def test_limits_past_4gib_are_kept_exactly(core: ModuleType) -> None:
    big = (1 << 40) + 3
    parser = core.FrameParser(max_frame_size=big, max_message_size=big + 1)
    assert parser.feed(header64(big)) == []  # exactly at the limit: accepted, waits for payload
    parser = core.FrameParser(max_frame_size=big, max_message_size=big + 1)
    with pytest.raises(FrameError, match=f"frame of {big + 1} bytes exceeds max_frame_size {big}"):
        parser.feed(header64(big + 1))
    with pytest.raises(ValueError):
        core.FrameParser(max_frame_size=1 << 63)


def test_fragmented_message_size_past_4gib(core: ModuleType) -> None:
    limit = 2**32 + 10
    first = struct.pack("!BB", 0x02, 10) + b"0123456789"  # binary, not FIN
    cont_ok = header64(2**32, opcode=0, fin=True)
    cont_bad = header64(2**32 + 1, opcode=0, fin=True)

    parser = core.FrameParser(max_frame_size=2**62, max_message_size=limit)
    frames = parser.feed(first)
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [(2, False, b"0123456789")]
    assert parser.feed(cont_ok) == []  # exactly at the message limit: accepted

    parser = core.FrameParser(max_frame_size=2**62, max_message_size=limit)
    parser.feed(first)
    with pytest.raises(FrameError, match=f"message of {2**32 + 11} bytes exceeds") as info:
        parser.feed(cont_bad)
    assert info.value.close_code == 1009


@pytest.mark.parametrize("size", [65535, 65536, 3 * MIB + 1])
def test_build_frame_length_encoding(core: ModuleType, size: int) -> None:
    """The length field and the payload round trip through the 16- and 64-bit forms."""
    payload = pattern(size, seed=3)
    data = core.build_frame(2, payload, KEY)
    if size < 65536:
        assert data[:2] == b"\x82\xfe" and struct.unpack("!H", data[2:4])[0] == size
        start = 4
    else:
        assert data[:2] == b"\x82\xff" and struct.unpack("!Q", data[2:10])[0] == size
        start = 10
    assert data[start : start + 4] == KEY
    assert core.apply_mask(data[start + 4 :], KEY) == payload


@pytest.mark.parametrize("offset", [2**31 - 1, 2**31, 2**32 + 2, (1 << 40) + 3])
def test_mask_offset_past_2gib(core: ModuleType, offset: int) -> None:
    """A mask offset is a stream position taken modulo 4; past 2 GiB it must still be one."""
    data = pattern(1000, seed=5)
    assert core.apply_mask(data, KEY, offset) == core.apply_mask(data, KEY, offset % 4)
    buf = bytearray(data)
    assert core.mask_inplace(buf, KEY, offset) == (offset + len(data)) % 4
    assert bytes(buf) == core.apply_mask(data, KEY, offset % 4)


# -- Phoenix codec: JSON integers around the 32-bit limits ----------------------------------------


INTS = [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**32 + 5, 2**53 + 1]


def test_json_integers_around_32_bits(core: ModuleType) -> None:
    payload = {"size": 5 * GIB + 1, "offsets": INTS, "nested": {str(i): i for i in INTS}}
    data = core.encode_message("1", "2", "device:1", "update", payload)
    assert json.loads(data) == ["1", "2", "device:1", "update", payload]
    message = core.decode_message(data)
    assert message.payload == payload
    assert all(type(v) is int for v in message.payload["offsets"])
    text = '[null,null,"t","e",[' + ",".join(str(i) for i in INTS) + "]]"
    assert core.decode_message(text).payload == INTS


# -- FileWriter: a sparse image past 2 and 4 GiB ---------------------------------------------------


@pytest.mark.parametrize("offset", [2 * GIB + 4096, 4 * GIB + 8192])
def test_file_writer_resumes_past_4gib(tmp_path: Path, offset: int) -> None:
    target = tmp_path / "firmware.img"
    writer = FileWriter(target, fsync=False)
    partial = writer.partial_path
    try:
        with open(partial, "wb") as f:
            f.truncate(offset + 12345)  # sparse: longer than the resume point, cut back to it
    except OSError as exc:  # e.g. EFBIG on a file system without large files
        pytest.skip(f"no sparse file of {offset} bytes here: {exc}")
    chunk = pattern(1000, seed=9)
    writer.fwup_begin(offset + 3 * len(chunk), {}, offset=offset)
    for _ in range(3):
        writer.fwup_chunk(chunk)
    writer.fwup_finish()
    assert target.stat().st_size == offset + 3 * len(chunk)
    with open(target, "rb") as f:
        f.seek(offset - 16)
        assert f.read(16) == bytes(16)
        assert f.read() == chunk * 3


def test_file_writer_refuses_a_short_partial_past_4gib(tmp_path: Path) -> None:
    writer = FileWriter(tmp_path / "firmware.img", fsync=False)
    with open(writer.partial_path, "wb") as f:
        f.truncate(4 * GIB)
    with pytest.raises(WriterError, match=str(4 * GIB + 1)):
        writer.fwup_begin(5 * GIB, {}, offset=4 * GIB + 1)
