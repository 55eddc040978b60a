"""Property tests: both StreamingDigest twins agree with each other and with hashlib."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink.errors import ChecksumMismatch

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KINDS = (bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int, int, list[Any]]:
    """Data, a block size, a part size, and the data cut into chunks of random types."""
    data = draw(st.binary(max_size=6000))
    block_size = draw(st.integers(min_value=1, max_value=300))
    part_size = block_size * draw(st.integers(min_value=1, max_value=4))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=30)))
    pieces: list[Any] = []
    start = 0
    for end in [*cuts, len(data)]:
        kind = draw(st.sampled_from(KINDS))
        pieces.append(kind(data[start:end]))
        start = end
    return data, block_size, part_size, pieces


def part_checksums(data: bytes, part_size: int) -> list[str]:
    chunks = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    return [hashlib.sha256(chunk).hexdigest().upper() for chunk in chunks]


def run(core: ModuleType, pieces: list[Any], **kwargs: Any) -> dict[str, Any]:
    """Feed everything; record blocks, tail, digests, or the mismatch raised.

    Checks the gate on the way: after every call, the bytes returned so far are exactly
    ``released`` bytes, and every byte is returned, held or pending (``held``)."""
    digest = core.StreamingDigest(**kwargs)
    blocks: list[bytes] = []
    released: list[int] = []
    result: dict[str, Any] = {"blocks": blocks, "released": released}
    start = digest.released
    try:
        for piece in pieces:
            blocks.extend(bytes(block) for block in digest.feed(piece))
            released.append(digest.released)
            assert digest.released == start + sum(map(len, blocks))
            assert digest.held == digest.total - digest.released
        result["tail"] = b"".join(bytes(block) for block in digest.flush())
    except ChecksumMismatch as exc:
        result["error"] = (str(exc), exc.expected, exc.actual)
    result["parts"] = digest.part_digests
    result["verified"] = digest.verified_offset
    result["total"] = digest.total
    if "tail" in result and digest.whole_available:
        result["hex"] = digest.hexdigest()
    return result


@SETTINGS
@given(stream=streams(), with_parts=st.booleans(), with_checksum=st.booleans())
def test_blocks_and_digests(
    py_core: ModuleType,
    c_core: ModuleType,
    stream: tuple[bytes, int, int, list[Any]],
    with_parts: bool,
    with_checksum: bool,
) -> None:
    data, block_size, part_size, pieces = stream
    kwargs: dict[str, Any] = {"block_size": block_size, "part_size": part_size}
    if with_parts:
        kwargs["part_checksums"] = part_checksums(data, part_size)
    if with_checksum:
        kwargs["checksum"] = hashlib.sha256(data).hexdigest().upper()
    py_result = run(py_core, pieces, **kwargs)
    assert run(c_core, pieces, **kwargs) == py_result
    blocks = py_result["blocks"]
    assert all(len(block) == block_size for block in blocks)
    assert b"".join(blocks) + py_result["tail"] == data
    # The gate: what the writer held after each chunk never included an unverified part, nor
    # (with only a whole-file checksum) the last block.
    for released in py_result["released"]:
        if with_parts:
            assert released % part_size == 0
            if with_checksum:
                assert released <= max(0, len(data) - 1) // part_size * part_size
        elif with_checksum:
            assert released <= max(0, len(data) - block_size)
    if not with_parts and not with_checksum:
        assert len(py_result["tail"]) < block_size
    assert py_result["hex"] == hashlib.sha256(data).hexdigest()
    assert py_result["total"] == len(data)
    if with_parts:
        assert py_result["parts"] == [c.lower() for c in kwargs["part_checksums"]]
        assert py_result["verified"] == len(data)
    else:
        assert py_result["parts"] == []


@SETTINGS
@given(stream=streams(), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_corruption_is_caught_in_the_right_part(
    py_core: ModuleType,
    c_core: ModuleType,
    stream: tuple[bytes, int, int, list[Any]],
    position: int,
    flip: int,
) -> None:
    data, block_size, part_size, pieces = stream
    if not data:
        return
    position %= len(data)
    expected = part_checksums(data, part_size)
    # Corrupt one byte of the stream as it is delivered.
    corrupted = bytearray(data)
    corrupted[position] ^= flip
    cut: list[Any] = []
    start = 0
    for piece in pieces:
        size = len(bytes(piece))
        cut.append(bytes(corrupted[start : start + size]))
        start += size
    kwargs = {"block_size": block_size, "part_size": part_size, "part_checksums": expected}
    py_result = run(py_core, cut, **kwargs)
    assert run(c_core, cut, **kwargs) == py_result
    index = position // part_size
    message, wanted, actual = py_result["error"]
    assert f"part {index}" in message
    assert wanted == expected[index].lower()
    bad_part = bytes(corrupted[index * part_size : (index + 1) * part_size])
    assert actual == hashlib.sha256(bad_part).hexdigest()
    assert py_result["verified"] == index * part_size
    # Every byte handed to the writer before the failure belongs to verified parts: the bad
    # part never leaks out.
    assert len(b"".join(py_result["blocks"])) <= index * part_size


@SETTINGS
@given(stream=streams(), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_wrong_whole_checksum_never_completes_the_image(
    py_core: ModuleType,
    c_core: ModuleType,
    stream: tuple[bytes, int, int, list[Any]],
    position: int,
    flip: int,
) -> None:
    data, block_size, part_size, pieces = stream
    if not data:
        return
    position %= len(data)
    wrong = bytearray(data)
    wrong[position] ^= flip
    kwargs = {
        "block_size": block_size,
        "part_size": part_size,
        "checksum": hashlib.sha256(wrong).hexdigest(),
    }
    py_result = run(py_core, pieces, **kwargs)
    assert run(c_core, pieces, **kwargs) == py_result
    assert py_result["error"][2] == hashlib.sha256(data).hexdigest()
    out = b"".join(py_result["blocks"])
    assert data.startswith(out) and len(out) <= max(0, len(data) - block_size)


@SETTINGS
@given(stream=streams(), resume_part=st.integers(min_value=0, max_value=20), bad=st.booleans())
def test_absorb_then_stream(
    py_core: ModuleType,
    c_core: ModuleType,
    stream: tuple[bytes, int, int, list[Any]],
    resume_part: int,
    bad: bool,
) -> None:
    data, block_size, part_size, _ = stream
    whole_parts = len(data) // part_size
    resume = min(resume_part, whole_parts)
    expected = part_checksums(data, part_size)
    results = []
    for core in (py_core, c_core):
        digest = core.StreamingDigest(
            block_size=block_size,
            part_size=part_size,
            part_checksums=expected,
            checksum=hashlib.sha256(data).hexdigest(),
        )
        good = 0
        for k in range(resume):
            chunk = bytearray(data[k * part_size : (k + 1) * part_size])
            if bad and k == resume - 1:
                chunk[0] ^= 1
            if not digest.absorb(chunk):
                break
            good += 1
        assert digest.total == digest.released == good * part_size
        rest = data[good * part_size :]
        out = [bytes(b) for i in range(0, len(rest), 97) for b in digest.feed(rest[i : i + 97])]
        out += [bytes(b) for b in digest.flush()]
        assert b"".join(out) == rest
        results.append((good, digest.hexdigest(), digest.part_digests))
    assert results[0] == results[1]
    assert results[0][0] == (resume - 1 if bad and resume else resume)


@SETTINGS
@given(stream=streams(), resume_part=st.integers(min_value=0, max_value=20))
def test_resume(
    py_core: ModuleType,
    c_core: ModuleType,
    stream: tuple[bytes, int, int, list[Any]],
    resume_part: int,
) -> None:
    data, block_size, part_size, _ = stream
    offset = min(resume_part, len(data) // part_size) * part_size
    rest = data[offset:]
    pieces = [rest[i : i + 97] for i in range(0, len(rest), 97)]
    expected = part_checksums(data, part_size)
    kwargs: dict[str, Any] = {
        "block_size": block_size,
        "part_size": part_size,
        "part_checksums": expected,
        "offset": offset,
    }
    py_result = run(py_core, pieces, **kwargs)
    assert run(c_core, pieces, **kwargs) == py_result
    assert b"".join(py_result["blocks"]) + py_result["tail"] == rest
    assert all(released % part_size == 0 for released in py_result["released"])
    assert py_result["total"] == len(data)
    assert py_result["verified"] == len(data)
    assert py_result["parts"] == [c.lower() for c in expected][offset // part_size :]
