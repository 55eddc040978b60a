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


# -- receiving in place (payload_buffer / payload_received) ---------------------------------------


def buffered_outcomes(core: ModuleType, data: bytes, reads: list[int], **options: Any) -> list[Any]:
    """Read ``data`` as an ``asyncio.BufferedProtocol`` transport would, in reads of the given
    sizes (cycled): into ``payload_buffer()`` when the parser offers one, else a chunk to feed.
    Each read's outcome is recorded as in :func:`outcomes`."""
    parser = core.FrameParser(**options)
    result: list[Any] = []
    pos = 0
    i = 0
    while pos < len(data):
        want = reads[i % len(reads)] if reads else len(data)
        i += 1
        view = parser.payload_buffer()
        try:
            if view is None:
                frames = parser.feed(data[pos : pos + want])
                pos += min(want, len(data) - pos)
            else:
                n = min(want, len(view), len(data) - pos)
                view[:n] = data[pos : pos + n]
                pos += n
                frames = parser.payload_received(n)
        except FrameError as exc:
            result.append(("error", exc.close_code))
            break
        result.append([(f.opcode, f.payload, f.fin, f.rsv1) for f in frames])
    return result


@st.composite
def large_streams(draw: st.DrawFn) -> list[FrameSpec]:
    """Streams with frames of 64 KiB and more (received in place), text and binary, fragmented,
    between small frames."""
    frames: list[FrameSpec] = []
    for _ in range(draw(st.integers(1, 3))):
        size = draw(st.sampled_from([65535, 65536, 65537, 70_000, 131_072, 200_003]))
        if draw(st.booleans()):
            payload = ("é€a" * (size // 6 + 1)).encode()[:size]
            payload = payload[: len(payload.decode("utf-8", "ignore").encode())]
            opcode = 1
        else:
            payload = bytes(range(256)) * (size // 256 + 1)
            payload = payload[:size]
            opcode = 2
        if draw(st.booleans()):
            cut = draw(st.integers(0, len(payload)))
            frames.append((opcode, payload[:cut], False, False))
            frames.append(draw(control_frames().filter(lambda f: f[0] != 8)))
            frames.append((0, payload[cut:], True, False))
        else:
            frames.append((opcode, payload, True, False))
        frames.extend(draw(streams()))
    return frames


@PROPERTY
@given(
    frames=st.one_of(large_streams(), streams()),
    reads=st.lists(st.integers(1, 300_000), max_size=6),
)
def test_in_place_receive_gives_the_serialized_frames(
    py_core: ModuleType, c_core: ModuleType, frames: list[FrameSpec], reads: list[int]
) -> None:
    data = serialize(frames)
    for core in (py_core, c_core):
        parsed = [f for result in buffered_outcomes(core, data, reads) for f in result]
        assert parsed == frames, core.__name__
        # And the same frames as plain feeding in the same splits.
        assert buffered_outcomes(core, data, reads) == buffered_outcomes(py_core, data, reads)


@PROPERTY
@given(
    frames=large_streams(),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=3),
    reads=st.lists(st.integers(1, 300_000), max_size=6),
)
def test_in_place_receive_of_corrupted_streams_agrees(
    py_core: ModuleType,
    c_core: ModuleType,
    frames: list[FrameSpec],
    flips: list[tuple[int, int]],
    reads: list[int],
) -> None:
    # A flipped byte inside a large text payload must fail at the same read in both cores (the
    # UTF-8 check runs on each piece received in place: fail fast, Autobahn 6.4.x).
    data = bytearray(serialize(frames))
    for position, xor in flips:
        data[position % len(data)] ^= xor
    options = {"max_message_size": 150_000}
    assert buffered_outcomes(py_core, bytes(data), reads, **options) == buffered_outcomes(
        c_core, bytes(data), reads, **options
    )


def test_invalid_utf8_in_a_large_text_frame_fails_at_the_read_that_brings_it(
    core: ModuleType,
) -> None:
    payload = bytearray(b"a" * 200_000)
    payload[150_000] = 0xFF
    data = server_frame(1, bytes(payload))
    result = buffered_outcomes(core, data, [65536])
    # Reads of 64 KiB: the header and 65,526 payload bytes, then 65,536 more (131,062 in all,
    # still valid), then the read that holds byte 150,000.
    assert result == [[], [], ("error", 1007)]


def test_a_payload_received_in_place_is_immutable_once_delivered(core: ModuleType) -> None:
    parser = core.FrameParser()
    data = server_frame(2, bytes(range(256)) * 512)  # 128 KiB
    assert parser.feed(data[:100]) == []
    view = parser.payload_buffer()
    assert view is not None and len(view) == len(data) - 100
    view[:] = data[100:]
    (frame,) = parser.payload_received(len(view))
    assert type(frame.payload) is bytes and frame.payload == bytes(range(256)) * 512
    assert parser.payload_buffer() is None  # back to headers: read into your own buffer
    with pytest.raises(ValueError):
        view[0] = 1  # released: nothing can write into the delivered payload
    with pytest.raises(ValueError):
        parser.payload_received(1)  # no view to match


def test_a_frame_over_16_mib_stays_whole_as_it_comes_down_to_16_mib(core: ModuleType) -> None:
    # It collects in parts from its first byte; it must not switch to in-place receiving when
    # the bytes still due drop under 16 MiB (that would lose the parts received so far).
    payload = bytes(range(256)) * (((16 << 20) + 300_000) // 256)
    size = len(payload)
    big = server_frame(2, payload)
    after = server_frame(1, b"next")
    parser = core.FrameParser(max_frame_size=32 << 20, max_message_size=32 << 20)
    frames = []
    data = big + after
    for i in range(0, len(data), 1 << 20):
        view = parser.payload_buffer()
        assert view is None  # never offered for this frame
        frames += parser.feed(data[i : i + (1 << 20)])
    assert [(f.opcode, len(f.payload)) for f in frames] == [(2, size), (1, 4)]
    assert frames[0].payload == payload and frames[1].payload == b"next"


def test_payload_received_needs_the_view_it_reports_on(core: ModuleType) -> None:
    parser = core.FrameParser()
    parser.feed(server_frame(2, bytes(100_000))[:1000])  # in place from here, no view lent yet
    with pytest.raises(ValueError):
        parser.payload_received(10)
    view = parser.payload_buffer()
    assert view is not None
    with pytest.raises(ValueError):
        parser.payload_received(len(view) + 1)


def test_a_payload_buffer_is_offered_only_for_large_frames(core: ModuleType) -> None:
    parser = core.FrameParser()
    assert parser.payload_buffer() is None
    parser.feed(server_frame(2, bytes(65535))[:50])
    assert parser.payload_buffer() is None  # 65,535 bytes: collected the usual way
    parser.feed(server_frame(2, bytes(65535))[50:])
    parser.feed(server_frame(2, bytes(65536))[:10])
    view = parser.payload_buffer()
    assert view is not None and len(view) == 65536
    # Above 16 MiB a header alone must not make the parser allocate the payload: parts again.
    parser = core.FrameParser(max_frame_size=1 << 40, max_message_size=1 << 40)
    assert parser.feed(server_frame(2, b"", length=(16 << 20) + 1)) == []
    assert parser.payload_buffer() is None


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


def test_a_payload_exporter_not_made_by_payload_buffer_exports_nothing(c_core: ModuleType) -> None:
    from nhlink._core import _mask

    with pytest.raises(BufferError):
        memoryview(_mask._Filling())  # type: ignore[attr-defined]  # private, compiled only
