"""Streaming SHA-256 with chunk buffering (PROTOCOL.md §7.1, §11): both implementations."""

from __future__ import annotations

import array
import hashlib
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest

from nhlink.errors import ChecksumMismatch

KIB = 1024
MIB = 1024 * KIB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parts_of(data: bytes, part_size: int) -> list[str]:
    """NervesHub's partials_checksums: upper-case hex per part, the last one possibly short."""
    return [sha(data[i : i + part_size]).upper() for i in range(0, len(data), part_size)]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream(digest: Any, pieces: Iterable[Any]) -> tuple[list[bytes], bytes]:
    """Feed every piece; return the blocks (as bytes) and what flush returned, joined."""
    blocks: list[bytes] = []
    for piece in pieces:
        blocks.extend(bytes(block) for block in digest.feed(piece))
    return blocks, joined(digest.flush())


def joined(blocks: Iterable[Any]) -> bytes:
    return b"".join(bytes(block) for block in blocks)


DATA = os.urandom(5 * 64 * KIB + 12345)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 4096, 65535, 65536, 65537, 200_000])
def test_blocks_and_digest(core: ModuleType, chunk_size: int) -> None:
    digest = core.StreamingDigest()
    blocks, tail = stream(digest, chunks(DATA, chunk_size))
    assert all(len(block) == 65536 for block in blocks)
    assert len(blocks) == len(DATA) // 65536
    assert b"".join(blocks) + tail == DATA
    assert digest.total == len(DATA)
    assert digest.whole_available
    assert digest.hexdigest() == sha(DATA)
    digest.verify(sha(DATA).upper())
    digest.verify(sha(DATA))
    assert digest.part_digests == []
    assert digest.verified_offset == 0


def test_small_block_size(core: ModuleType) -> None:
    data = bytes(range(256)) * 3
    digest = core.StreamingDigest(block_size=10, part_size=20)
    blocks, tail = stream(digest, chunks(data, 3))
    assert [len(b) for b in blocks] == [10] * (len(data) // 10)
    assert tail == data[-(len(data) % 10) :]
    assert digest.hexdigest() == sha(data)


def test_input_types(core: ModuleType) -> None:
    data = os.urandom(3000)
    ints = array.array("I", data[:2000])
    pieces: list[Any] = [
        data[:100],
        bytearray(data[100:300]),
        memoryview(data)[300:700],
        memoryview(bytearray(data[700:1000])),
        memoryview(data[1000:2000])[::1],
        memoryview(data[2000:3000] * 2)[::2],  # not contiguous: every other byte
    ]
    expected = data[:2000] + (data[2000:3000] * 2)[::2]
    for block_size in (1, 64, 1024):
        digest = core.StreamingDigest(block_size=block_size, part_size=block_size)
        blocks, tail = stream(digest, pieces)
        assert b"".join(blocks) + tail == expected
        assert digest.hexdigest() == sha(expected)
    digest = core.StreamingDigest(block_size=100, part_size=100)
    blocks, tail = stream(digest, [ints, memoryview(ints)])
    assert b"".join(blocks) + tail == ints.tobytes() * 2


def test_rejects_non_buffers(core: ModuleType) -> None:
    digest = core.StreamingDigest()
    for value in ("text", 5, None, [1, 2]):
        with pytest.raises(TypeError):
            digest.feed(value)


def test_feed_is_positional_only(core: ModuleType) -> None:
    digest = core.StreamingDigest()
    with pytest.raises(TypeError):
        digest.feed(data=b"x")


def test_empty_stream(core: ModuleType) -> None:
    digest = core.StreamingDigest()
    assert digest.feed(b"") == []
    assert digest.feed(bytearray()) == []
    assert digest.flush() == []
    assert digest.hexdigest() == sha(b"")
    assert digest.total == 0


def test_zero_copy_blocks_of_immutable_bytes(core: ModuleType) -> None:
    data = os.urandom(3 * 1000 + 17)
    digest = core.StreamingDigest(block_size=1000, part_size=1000)
    blocks = digest.feed(data)
    assert len(blocks) == 3
    for index, block in enumerate(blocks):
        assert isinstance(block, memoryview)
        assert block.obj is data  # a view of the caller's bytes, no copy
        assert block.readonly
        assert bytes(block) == data[index * 1000 : (index + 1) * 1000]
    tail = digest.flush()
    assert tail == [data[-17:]] and type(tail[0]) is bytes


def test_small_chunks_coalesce_into_fresh_blocks(core: ModuleType) -> None:
    digest = core.StreamingDigest(block_size=100, part_size=100)
    data = os.urandom(1000)
    blocks: list[Any] = []
    for piece in chunks(data, 30):
        blocks.extend(digest.feed(piece))
    digest.flush()
    assert len(blocks) == 10
    assert len({id(block) for block in blocks}) == 10
    for index, block in enumerate(blocks):
        assert bytes(block) == data[index * 100 : (index + 1) * 100]
        if isinstance(block, memoryview):
            assert block.readonly


def test_mutable_input_may_be_reused(core: ModuleType) -> None:
    # The caller reuses one buffer (readinto style): handed-out blocks must not change.
    data = os.urandom(5000)
    buffer = bytearray(700)
    digest = core.StreamingDigest(block_size=1000, part_size=1000)
    blocks: list[Any] = []
    for start in range(0, len(data), 700):
        piece = data[start : start + 700]
        buffer[: len(piece)] = piece
        blocks.extend(digest.feed(memoryview(buffer)[: len(piece)]))
        buffer[:] = b"\xaa" * 700
    big = bytearray(data)
    blocks.extend(digest.feed(big))
    big[:] = bytes(len(big))
    tail = joined(digest.flush())
    assert b"".join(bytes(block) for block in blocks) + tail == data + data
    assert digest.hexdigest() == sha(data + data)


def test_blocks_are_not_touched_afterwards(core: ModuleType) -> None:
    digest = core.StreamingDigest(block_size=64, part_size=64)
    data = os.urandom(64 * 20 + 5)
    kept: list[tuple[Any, bytes]] = []
    for piece in chunks(data, 13):
        kept.extend((block, bytes(block)) for block in digest.feed(piece))
    digest.flush()
    assert all(bytes(block) == copy for block, copy in kept)


def test_verify_mismatch(core: ModuleType) -> None:
    digest = core.StreamingDigest()
    stream(digest, [b"firmware"])
    wrong = sha(b"other").upper()
    with pytest.raises(ChecksumMismatch) as info:
        digest.verify(wrong)
    assert info.value.expected == wrong
    assert info.value.actual == sha(b"firmware")
    assert "firmware image" in str(info.value)


@pytest.mark.parametrize("expected", ["", "abc", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63])
def test_verify_rejects_malformed_checksums(core: ModuleType, expected: str) -> None:
    digest = core.StreamingDigest()
    digest.flush()
    with pytest.raises(ValueError):
        digest.verify(expected)


def test_state_errors(core: ModuleType) -> None:
    digest = core.StreamingDigest()
    digest.feed(b"abc")
    with pytest.raises(ValueError):
        digest.hexdigest()
    with pytest.raises(ValueError):
        digest.verify(sha(b"abc"))
    assert digest.flush() == [b"abc"]
    with pytest.raises(ValueError):
        digest.feed(b"more")
    with pytest.raises(ValueError):
        digest.feed(bytearray(b"more"))
    with pytest.raises(ValueError):
        digest.flush()
    assert digest.hexdigest() == sha(b"abc")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_size": 0},
        {"block_size": -1},
        {"block_size": 1000, "part_size": 1500},
        {"block_size": 1000, "part_size": 0},
        {"block_size": 1000, "part_size": -1000},
        {"part_size": 65536 * 3 + 1},
        {"offset": 1},
        {"offset": -MIB},
        {"offset": MIB + 65536},
        {"part_checksums": ["abc"]},
        {"part_checksums": ["z" * 64]},
        {"part_checksums": [sha(b"ok"), "0" * 65]},
        {"checksum": "abc"},
        {"checksum": ""},
        {"checksum": "g" * 64},
    ],
)
def test_rejects_bad_arguments(core: ModuleType, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        core.StreamingDigest(**kwargs)


def test_part_checksums_must_be_a_sequence(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.StreamingDigest(part_checksums=sha(b"x"))


def test_parts_verified_as_they_complete(core: ModuleType) -> None:
    part = 4 * KIB
    data = os.urandom(5 * part + 100)
    expected = parts_of(data, part)
    digest = core.StreamingDigest(block_size=KIB, part_size=part, part_checksums=expected)
    assert digest.verified_offset == 0
    offsets = []
    for piece in chunks(data, 700):
        digest.feed(piece)
        offsets.append(digest.verified_offset)
    # Each part is checked the moment its last block is complete.
    assert sorted(set(offsets)) == [0, part, 2 * part, 3 * part, 4 * part, 5 * part]
    assert digest.part_digests == [p.lower() for p in expected[:5]]
    digest.flush()
    assert digest.verified_offset == len(data)
    assert digest.part_digests == [p.lower() for p in expected]
    assert digest.hexdigest() == sha(data)


def test_parts_exact_multiple(core: ModuleType) -> None:
    data = os.urandom(4 * 2048)
    digest = core.StreamingDigest(
        block_size=512, part_size=2048, part_checksums=parts_of(data, 2048)
    )
    _, tail = stream(digest, [data])
    assert tail == b""
    assert digest.verified_offset == len(data)
    assert len(digest.part_digests) == 4


@pytest.mark.parametrize("corrupt_at", [0, 1023, 1024, 4095, 4096, 9000, 10_239])
def test_part_mismatch_names_the_part(core: ModuleType, corrupt_at: int) -> None:
    part = 4 * KIB
    data = os.urandom(10 * KIB)
    expected = parts_of(data, part)
    bad = bytearray(data)
    bad[corrupt_at] ^= 0x01
    digest = core.StreamingDigest(block_size=KIB, part_size=part, part_checksums=expected)
    index = corrupt_at // part
    with pytest.raises(ChecksumMismatch) as info:
        stream(digest, chunks(bytes(bad), 100))
    assert f"part {index}" in str(info.value)
    assert info.value.expected == expected[index].lower()
    assert info.value.actual == sha(bytes(bad[index * part : (index + 1) * part]))
    assert digest.verified_offset == index * part
    assert len(digest.part_digests) == index + 1
    # A failed digest refuses more work until reset.
    with pytest.raises(ValueError):
        digest.feed(b"x")
    with pytest.raises(ValueError):
        digest.flush()
    digest.reset()
    stream(digest, [data])
    assert digest.hexdigest() == sha(data)
    assert digest.verified_offset == len(data)


def test_stream_longer_than_parts(core: ModuleType) -> None:
    data = os.urandom(3 * 1000)
    digest = core.StreamingDigest(
        block_size=500, part_size=1000, part_checksums=parts_of(data[:2000], 1000)
    )
    with pytest.raises(ChecksumMismatch, match="longer"):
        stream(digest, chunks(data, 300))
    assert digest.verified_offset == 2000
    # Also when the extra bytes only show up in the final short block.
    digest = core.StreamingDigest(
        block_size=500, part_size=1000, part_checksums=parts_of(data[:2000], 1000)
    )
    assert digest.feed(data[:2000] + b"x")
    with pytest.raises(ChecksumMismatch, match="longer"):
        digest.flush()


def test_stream_shorter_than_parts(core: ModuleType) -> None:
    data = os.urandom(3000)
    expected = parts_of(data, 1000)
    # Ends at a part boundary: the missing part is reported at flush.
    digest = core.StreamingDigest(block_size=500, part_size=1000, part_checksums=expected)
    digest.feed(data[:2000])
    with pytest.raises(ChecksumMismatch, match="part 2") as info:
        digest.flush()
    assert info.value.actual == sha(b"")
    assert digest.verified_offset == 2000
    # Ends inside a part: that part's digest is wrong.
    digest = core.StreamingDigest(block_size=500, part_size=1000, part_checksums=expected)
    digest.feed(data[:2500])
    with pytest.raises(ChecksumMismatch, match="part 2"):
        digest.flush()


def test_empty_parts_list(core: ModuleType) -> None:
    digest = core.StreamingDigest(block_size=4, part_size=4, part_checksums=[])
    digest.flush()
    assert digest.hexdigest() == sha(b"")
    digest = core.StreamingDigest(block_size=4, part_size=4, part_checksums=[])
    with pytest.raises(ChecksumMismatch):
        stream(digest, [b"abcdefgh"])


def test_resume_at_part_boundary(core: ModuleType) -> None:
    part = 2 * KIB
    data = os.urandom(5 * part + 333)
    expected = parts_of(data, part)
    offset = 2 * part
    digest = core.StreamingDigest(
        block_size=512, part_size=part, part_checksums=expected, offset=offset
    )
    assert digest.total == offset
    assert not digest.whole_available
    assert digest.verified_offset == offset
    blocks, tail = stream(digest, chunks(data[offset:], 1000))
    assert b"".join(blocks) + tail == data[offset:]
    assert digest.total == len(data)
    assert digest.part_digests == [p.lower() for p in expected[2:]]
    assert digest.verified_offset == len(data)
    with pytest.raises(ValueError, match="resumed"):
        digest.hexdigest()
    with pytest.raises(ValueError):
        digest.verify(sha(data))
    # Without part checksums a resumed stream hashes nothing but still re-blocks.
    digest = core.StreamingDigest(block_size=512, part_size=part, offset=offset)
    blocks, tail = stream(digest, [data[offset:]])
    assert b"".join(blocks) + tail == data[offset:]
    assert digest.verified_offset == offset
    assert digest.part_digests == []


def test_resume_checks_the_right_part(core: ModuleType) -> None:
    part = 1000
    data = os.urandom(4000)
    expected = parts_of(data, part)
    expected[3] = sha(b"wrong")
    digest = core.StreamingDigest(
        block_size=250, part_size=part, part_checksums=expected, offset=2000
    )
    with pytest.raises(ChecksumMismatch, match="part 3"):
        stream(digest, [data[2000:]])
    assert digest.verified_offset == 3000


def test_sizes_beyond_32_bits(core: ModuleType) -> None:
    offset = 5 * 1024 * MIB  # 5 GiB: a long long in the compiled twin
    digest = core.StreamingDigest(block_size=4, part_size=MIB, offset=offset)
    assert digest.total == offset
    digest.feed(b"abcdefgh")
    assert digest.total == offset + 8
    expected = [sha(b"x")] * 5121
    expected[5120] = sha(b"abcdef")
    digest = core.StreamingDigest(
        block_size=2, part_size=MIB, part_checksums=expected, offset=offset
    )
    digest.feed(b"abcdef")
    digest.flush()
    assert digest.verified_offset == offset + 6
    assert digest.part_digests == [sha(b"abcdef")]


def test_reset(core: ModuleType) -> None:
    part = 1000
    data = os.urandom(3500)
    expected = parts_of(data, part)
    digest = core.StreamingDigest(
        block_size=250, part_size=part, part_checksums=expected, offset=2000
    )
    digest.feed(data[2000:2600])
    # The server ignored the Range request: start over from byte 0.
    digest.reset()
    assert digest.total == 0
    assert digest.whole_available
    assert digest.verified_offset == 0
    assert digest.part_digests == []
    blocks, tail = stream(digest, chunks(data, 333))
    assert b"".join(blocks) + tail == data
    assert digest.hexdigest() == sha(data)
    assert digest.verified_offset == len(data)
    assert len(digest.part_digests) == 4
    # Also after flush.
    digest.reset()
    stream(digest, [data])
    digest.verify(sha(data).upper())


def test_part_digests_is_a_copy(core: ModuleType) -> None:
    data = b"x" * 8
    digest = core.StreamingDigest(block_size=4, part_size=4, part_checksums=parts_of(data, 4))
    stream(digest, [data])
    digest.part_digests.append("junk")
    assert len(digest.part_digests) == 2


def test_implementations_agree(py_core: ModuleType, c_core: ModuleType) -> None:
    data = os.urandom(70_000)
    results = []
    for core in (py_core, c_core):
        digest = core.StreamingDigest(
            block_size=4096, part_size=8192, part_checksums=parts_of(data, 8192)
        )
        pieces = [data[:10], bytearray(data[10:5000]), data[5000:40_000], memoryview(data)[40_000:]]
        results.append((stream(digest, pieces), digest.part_digests, digest.hexdigest()))
    assert results[0] == results[1]


# -- the verification gate: the writer never gets a byte that can still fail -------------------


def test_gate_parts_releases_a_part_only_once_it_matched(core: ModuleType) -> None:
    part = 4 * KIB
    data = os.urandom(5 * part + 300)
    digest = core.StreamingDigest(
        block_size=KIB, part_size=part, part_checksums=parts_of(data, part)
    )
    out = bytearray()
    for piece in chunks(data, 700):
        out += joined(digest.feed(piece))
        # Released bytes are whole verified parts, a prefix of the image, and lag by < 1 part
        # (+ the chunk that completed it).
        assert digest.released == len(out) <= digest.verified_offset
        assert len(out) % part == 0
        assert out == data[: len(out)]
        assert digest.total - len(out) < part + 700
        assert digest.held == digest.total - len(out)
    out += joined(digest.flush())
    assert out == data
    assert digest.released == digest.total == len(data)
    assert digest.held == 0


@pytest.mark.parametrize("corrupt_at", [0, 4095, 4096, 9000, 5 * 4096 + 10])
def test_gate_parts_never_releases_a_bad_part(core: ModuleType, corrupt_at: int) -> None:
    part = 4 * KIB
    data = os.urandom(5 * part + 300)
    bad = bytearray(data)
    bad[corrupt_at] ^= 0x40
    digest = core.StreamingDigest(
        block_size=KIB, part_size=part, part_checksums=parts_of(data, part)
    )
    out = bytearray()

    def deliver() -> None:
        nonlocal out
        for piece in chunks(bytes(bad), 500):
            out += joined(digest.feed(piece))
        out += joined(digest.flush())

    with pytest.raises(ChecksumMismatch, match=f"part {corrupt_at // part}"):
        deliver()
    # Only the parts before the bad one ever reached the caller.
    assert out == data[: len(out)]
    assert len(out) <= (corrupt_at // part) * part
    assert digest.held == digest.total - digest.released


def test_gate_parts_holds_the_last_part_for_the_whole_checksum(core: ModuleType) -> None:
    part = 1000
    data = os.urandom(3 * part)  # ends exactly on a part boundary: feed completes the last part
    expected = parts_of(data, part)
    digest = core.StreamingDigest(
        block_size=250, part_size=part, part_checksums=expected, checksum=sha(data)
    )
    out = joined(digest.feed(data))
    assert out == data[: 2 * part]  # parts 0 and 1; part 2 waits for the whole-file check
    assert digest.verified_offset == len(data)
    assert joined(digest.flush()) == data[2 * part :]
    # Parts that match but a whole-file checksum that does not (an inconsistent server): the
    # last part never reaches the writer.
    digest = core.StreamingDigest(
        block_size=250, part_size=part, part_checksums=expected, checksum=sha(b"other")
    )
    assert joined(digest.feed(data)) == data[: 2 * part]
    with pytest.raises(ChecksumMismatch) as info:
        digest.flush()
    assert info.value.actual == sha(data)
    assert digest.held == part
    with pytest.raises(ValueError):
        digest.flush()


@pytest.mark.parametrize("chunk_size", [1, 100, 1000, 5000, 70_000])
def test_gate_whole_holds_the_newest_block(core: ModuleType, chunk_size: int) -> None:
    block = 1000
    data = os.urandom(7 * block + 123)
    digest = core.StreamingDigest(block_size=block, part_size=block, checksum=sha(data).upper())
    out = bytearray()
    for piece in chunks(data, chunk_size):
        out += joined(digest.feed(piece))
        assert out == data[: len(out)]
        assert digest.held >= min(digest.total, block)  # never a complete image
    assert len(out) < len(data)
    out += joined(digest.flush())
    assert out == data


@pytest.mark.parametrize("size", [0, 10, 1000, 1001, 7 * 1000 + 5])
def test_gate_whole_wrong_checksum_keeps_the_tail(core: ModuleType, size: int) -> None:
    data = os.urandom(size)
    digest = core.StreamingDigest(block_size=1000, part_size=1000, checksum=sha(b"not it"))
    out = joined(digest.feed(data))
    with pytest.raises(ChecksumMismatch) as info:
        digest.flush()
    assert info.value.actual == sha(data)
    assert out == data[: len(out)]
    assert len(out) <= max(0, size - 1000)  # the last block (or all of a tiny image) held back
    with pytest.raises(ValueError):
        digest.feed(b"x")


def test_no_gate_without_anything_to_check(core: ModuleType) -> None:
    data = os.urandom(3000)
    digest = core.StreamingDigest(block_size=1000, part_size=1000)
    assert joined(digest.feed(data)) == data
    assert digest.held == 0


def test_checksum_with_an_offset_cannot_be_verified(core: ModuleType) -> None:
    data = os.urandom(2000)
    digest = core.StreamingDigest(
        block_size=500,
        part_size=1000,
        part_checksums=parts_of(data, 1000),
        offset=1000,
        checksum=sha(data),
    )
    assert joined(digest.feed(data[1000:])) == b""  # the last part waits for a check
    with pytest.raises(ChecksumMismatch, match="resumed at byte 1000"):
        digest.flush()


def test_absorb_a_resumed_prefix(core: ModuleType) -> None:
    part = 1000
    data = os.urandom(4 * part + 77)
    expected = parts_of(data, part)
    digest = core.StreamingDigest(
        block_size=250, part_size=part, part_checksums=expected, checksum=sha(data)
    )
    assert digest.absorb(data[:part])
    assert digest.absorb(memoryview(bytearray(data[part : 2 * part])))
    assert (digest.total, digest.released, digest.verified_offset) == (2 * part, 2 * part, 2 * part)
    # A damaged part is refused and changes nothing: the caller restarts there.
    damaged = bytearray(data[2 * part : 3 * part])
    damaged[5] ^= 1
    assert not digest.absorb(damaged)
    assert (digest.total, digest.released, digest.verified_offset) == (2 * part, 2 * part, 2 * part)
    assert digest.part_digests == [p.lower() for p in expected[:2]]
    rest = joined(digest.feed(data[2 * part :])) + joined(digest.flush())
    assert rest == data[2 * part :]
    assert digest.hexdigest() == sha(data)  # the whole-file digest covers the absorbed prefix


def test_absorb_misuse(core: ModuleType) -> None:
    data = os.urandom(2000)
    expected = parts_of(data, 1000)
    with pytest.raises(ValueError, match="part_checksums"):
        core.StreamingDigest(block_size=500, part_size=1000).absorb(data[:1000])
    digest = core.StreamingDigest(block_size=500, part_size=1000, part_checksums=expected)
    with pytest.raises(ValueError, match="exactly one part"):
        digest.absorb(data[:999])
    digest.feed(data[:10])
    with pytest.raises(ValueError, match="part boundary"):
        digest.absorb(data[:1000])
    digest = core.StreamingDigest(block_size=500, part_size=1000, part_checksums=expected[:1])
    assert digest.absorb(data[:1000])
    with pytest.raises(ValueError, match="beyond"):
        digest.absorb(data[1000:])
    digest.flush()
    with pytest.raises(ValueError, match="after flush"):
        digest.absorb(data[:1000])
    with pytest.raises(TypeError):
        core.StreamingDigest(part_checksums=expected).absorb("text")
