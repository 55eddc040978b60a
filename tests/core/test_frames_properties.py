"""Property tests: the two cores agree byte for byte, on any input split any way.

Random valid frame streams (fragmented messages, interleaved control frames, lengths across the
125/126/65535/65536 encoding boundaries) are split at random points; both parsers must return
exactly the frames that were serialized. Random and corrupted streams must give both cores the
same outcome for every ``feed`` (the same frames, or a ``FrameError`` with the same close code).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink.errors import FrameError

from .test_frames import server_frame
from .test_mask import reference_mask

# Modest example counts keep the suite fast; the fixtures are stateless modules, so sharing them
# across examples is safe.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (opcode, payload, fin, rsv1) as plain tuples, comparable across cores.
FrameSpec = tuple[int, bytes, bool, bool]

BOUNDARY_SIZES = [125, 126, 127, 65535, 65536]


@st.composite
def payload_sizes(draw: st.DrawFn) -> int:
    # Mostly small; sometimes exactly on an encoding boundary (the large ones stay rare).
    if draw(st.integers(0, 15)) == 0:
        return draw(st.sampled_from(BOUNDARY_SIZES))
    return draw(st.integers(0, 140))


@st.composite
def text_payloads(draw: st.DrawFn) -> bytes:
    size = draw(payload_sizes())
    if size > 1000:
        return ("é" * (size // 2) + "x" * (size % 2)).encode()
    return draw(st.text(max_size=size)).encode()


@st.composite
def control_frames(draw: st.DrawFn) -> FrameSpec:
    opcode = draw(st.sampled_from([9, 10, 8]))
    if opcode == 8:
        code = draw(st.sampled_from([1000, 1001, 1011, 1014, 3000, 4999]))
        reason = draw(st.text(max_size=20)).encode()  # at most 80 bytes
        return (8, code.to_bytes(2, "big") + reason, True, False)
    return (opcode, draw(st.binary(max_size=125)), True, False)


@st.composite
def messages(draw: st.DrawFn) -> list[FrameSpec]:
    """One data message, maybe fragmented, maybe with control frames between its fragments."""
    text = draw(st.booleans())
    if text:
        payload = draw(text_payloads())
    else:
        size = draw(payload_sizes())
        seed = draw(st.binary(min_size=1, max_size=16))
        payload = (seed * (size // len(seed) + 1))[:size]
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[FrameSpec] = []
    for i, piece in enumerate(pieces):
        opcode = (1 if text else 2) if i == 0 else 0
        frames.append((opcode, piece, i == len(pieces) - 1, False))
        if i < len(pieces) - 1 and draw(st.booleans()):
            frames.append(draw(control_frames()))
    return frames


@st.composite
def streams(draw: st.DrawFn) -> list[FrameSpec]:
    parts = draw(st.lists(st.one_of(messages(), control_frames().map(lambda f: [f])), max_size=6))
    return [frame for part in parts for frame in part]


def serialize(frames: list[FrameSpec]) -> bytes:
    return b"".join(server_frame(op, p, fin, 4 if rsv1 else 0) for op, p, fin, rsv1 in frames)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def outcomes(core: ModuleType, chunks: list[bytes], **options: Any) -> list[Any]:
    """What each feed returns: a list of frame tuples, or ("error", close_code)."""
    parser = core.FrameParser(**options)
    result: list[Any] = []
    for chunk in chunks:
        try:
            frames = parser.feed(chunk)
        except FrameError as exc:
            result.append(("error", exc.close_code))
        else:
            result.append([(f.opcode, f.payload, f.fin, f.rsv1) for f in frames])
    return result


@PROPERTY
@given(frames=streams(), cuts=st.lists(st.integers(0, 200_000), max_size=12))
def test_valid_streams_parse_identically_for_any_split(
    py_core: ModuleType, c_core: ModuleType, frames: list[FrameSpec], cuts: list[int]
) -> None:
    data = serialize(frames)
    chunks = split(data, cuts)
    for core in (py_core, c_core):
        parsed = [frame for result in outcomes(core, chunks) for frame in result]
        assert parsed == frames, core.__name__


@PROPERTY
@given(frames=streams(), cuts=st.lists(st.integers(0, 200_000), max_size=12))
def test_valid_streams_parse_for_any_split(
    core: ModuleType, frames: list[FrameSpec], cuts: list[int]
) -> None:
    parsed = [f for result in outcomes(core, split(serialize(frames), cuts)) for f in result]
    assert parsed == frames


@PROPERTY
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    allow_rsv1=st.booleans(),
    validate_utf8=st.booleans(),
)
def test_random_bytes_give_identical_outcomes(
    py_core: ModuleType,
    c_core: ModuleType,
    data: bytes,
    cuts: list[int],
    allow_rsv1: bool,
    validate_utf8: bool,
) -> None:
    chunks = split(data, cuts)
    options = {"allow_rsv1": allow_rsv1, "validate_utf8": validate_utf8, "max_frame_size": 200}
    assert outcomes(py_core, chunks, **options) == outcomes(c_core, chunks, **options)


@PROPERTY
@given(
    frames=streams(),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 200_000), max_size=8),
)
def test_corrupted_streams_give_identical_outcomes(
    py_core: ModuleType,
    c_core: ModuleType,
    frames: list[FrameSpec],
    flips: list[tuple[int, int]],
    cuts: list[int],
) -> None:
    data = bytearray(serialize(frames))
    if not data:
        return
    for position, xor in flips:
        data[position % len(data)] ^= xor
    chunks = split(bytes(data), cuts)
    options = {"max_message_size": 70_000}
    assert outcomes(py_core, chunks, **options) == outcomes(c_core, chunks, **options)


def utf8_outcomes(core: ModuleType, chunks: list[bytes]) -> list[str]:
    validator = core.Utf8Validator()
    result = []
    for i, chunk in enumerate(chunks):
        try:
            validator.feed(chunk, final=i == len(chunks) - 1)
        except FrameError as exc:
            result.append(f"error {exc.close_code}")
            break
        result.append("ok")
    return result


utf8ish = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.lists(
        st.sampled_from(
            # Lead and continuation bytes at the edges of the ranges the DFA distinguishes.
            [
                *(bytes([b]) for b in b"a\x80\x8f\x90\x9f\xa0\xbf\xc0\xc2\xe0\xed\xf0\xf4\xf5"),
                b"\xe2\x82\xac",
            ]
        ),
        max_size=12,
    ).map(b"".join),
)


@PROPERTY
@given(data=utf8ish, cuts=st.lists(st.integers(0, 60), max_size=6))
def test_utf8_validators_fail_at_the_same_byte(
    py_core: ModuleType, c_core: ModuleType, data: bytes, cuts: list[int]
) -> None:
    # Feeding one byte at a time pins down the exact byte where each validator gives up.
    bytewise = [data[i : i + 1] for i in range(len(data))] or [b""]
    assert utf8_outcomes(py_core, bytewise) == utf8_outcomes(c_core, bytewise)
    chunks = split(data, cuts)
    result = utf8_outcomes(py_core, chunks)
    assert result == utf8_outcomes(c_core, chunks)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert result[-1] == "error 1007"
    else:
        assert result == ["ok"] * len(chunks)


@PROPERTY
@given(
    data=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4), offset=st.integers(0, 7)
)
def test_apply_mask_agrees_with_reference(
    py_core: ModuleType, c_core: ModuleType, data: bytes, key: bytes, offset: int
) -> None:
    expected = reference_mask(data, key, offset)
    assert py_core.apply_mask(data, key, offset) == expected
    assert c_core.apply_mask(data, key, offset) == expected


@PROPERTY
@given(
    data=st.binary(max_size=300),
    key=st.binary(min_size=4, max_size=4),
    offset=st.integers(0, 3),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_mask_inplace_continues_across_random_chunks(
    core: ModuleType, data: bytes, key: bytes, offset: int, cuts: list[int]
) -> None:
    buf = bytearray(data)
    view = memoryview(buf)
    position = 0
    state = offset
    for chunk in split(data, cuts):
        state = core.mask_inplace(view[position : position + len(chunk)], key, state)
        position += len(chunk)
    assert state == (offset + len(data)) % 4
    assert bytes(buf) == core.apply_mask(data, key, offset) == reference_mask(data, key, offset)


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_boundary_sizes_split_everywhere_in_the_header(
    py_core: ModuleType, c_core: ModuleType, size: int
) -> None:
    # Deterministic complement to the random splits: every cut inside the header and near it.
    frame = [(2, bytes(size), True, False)]
    data = serialize(frame)
    for cut in range(1, 16):
        chunks = split(data, [cut])
        assert outcomes(py_core, chunks) == outcomes(c_core, chunks)
        assert [f for r in outcomes(c_core, chunks) for f in r] == frame
