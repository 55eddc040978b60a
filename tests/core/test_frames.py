"""WebSocket frames (RFC 6455 §5): build_frame, FrameParser, close payloads, UTF-8 validation.

Every test runs against both cores (the ``core`` fixture). Server frames in the tests are written
byte by byte with :func:`server_frame`, which can also produce the malformed headers a
conforming serializer refuses to write.
"""

from __future__ import annotations

import importlib
import struct
import time
from types import ModuleType
from typing import Any

import pytest
from websockets.extensions.base import Extension
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.streams import StreamReader

from nhlink.errors import FrameError, LocalProtocolError

KEY = bytes.fromhex("37fa213d")  # RFC 6455 §5.7
MIB = 1024 * 1024

# Autobahn 6.4.1: valid, then the octets that make it invalid (U+110000), then the rest.
UTF8_PART1 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
UTF8_PART2 = b"\xf4\x90\x80\x80"
UTF8_PART3 = b"\x65\x64\x69\x74\x65\x64"


def server_frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    length_bytes: int | None = None,
    length: int | None = None,
    mask: bytes | None = None,
) -> bytes:
    """Serialize a frame as a server would (unmasked unless ``mask``), malformed on request.

    ``rsv`` is the 3 RSV bits (4 = RSV1, 2 = RSV2, 1 = RSV3); ``length_bytes`` forces the length
    encoding (0, 2 or 8 extended bytes), ``length`` overrides the announced length.
    """
    n = len(payload) if length is None else length
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    m = 0x80 if mask is not None else 0
    if length_bytes == 0:
        head = struct.pack("!BB", b0, m | n)
    elif length_bytes == 2:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask is not None:
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def feed_bytewise(parser: Any, data: bytes) -> list[Any]:
    frames: list[Any] = []
    for i in range(len(data)):
        frames += parser.feed(data[i : i + 1])
    return frames


def fields(frame: Any) -> tuple[int, bool, bool, bytes]:
    return (frame.opcode, frame.fin, frame.rsv1, frame.payload)


def assert_rejected(core: ModuleType, data: bytes, close_code: int, **options: Any) -> None:
    """``data`` must be rejected with ``close_code``, fed whole and fed one byte at a time."""
    with pytest.raises(FrameError) as info:
        core.FrameParser(**options).feed(data)
    assert info.value.close_code == close_code, info.value
    with pytest.raises(FrameError) as info:
        feed_bytewise(core.FrameParser(**options), data)
    assert info.value.close_code == close_code, info.value


# --- RFC 6455 §5.7 examples, byte for byte ------------------------------------------------------


def test_rfc_single_frame_unmasked_text(core: ModuleType) -> None:
    frames = core.FrameParser().feed(bytes.fromhex("810548656c6c6f"))
    assert frames == [core.Frame(core.OP_TEXT, b"Hello")]
    assert fields(frames[0]) == (1, True, False, b"Hello")


def test_rfc_single_frame_masked_text_is_what_build_frame_writes(core: ModuleType) -> None:
    expected = bytes.fromhex("818537fa213d7f9f4d5158")
    assert core.build_frame(core.OP_TEXT, b"Hello", KEY) == expected


def test_rfc_fragmented_unmasked_text(core: ModuleType) -> None:
    parser = core.FrameParser()
    first = parser.feed(bytes.fromhex("010348656c"))
    assert [fields(f) for f in first] == [(core.OP_TEXT, False, False, b"Hel")]
    assert parser.message_in_progress
    second = parser.feed(bytes.fromhex("80026c6f"))
    assert [fields(f) for f in second] == [(core.OP_CONT, True, False, b"lo")]
    assert not parser.message_in_progress


def test_rfc_ping_and_masked_pong(core: ModuleType) -> None:
    frames = core.FrameParser().feed(bytes.fromhex("890548656c6c6f"))
    assert frames == [core.Frame(core.OP_PING, b"Hello")]
    pong = core.build_frame(core.OP_PONG, frames[0].payload, KEY)
    assert pong == bytes.fromhex("8a8537fa213d7f9f4d5158")


@pytest.mark.parametrize(
    ("size", "header"),
    [(256, "827e0100"), (65536, "827f0000000000010000")],
)
def test_rfc_binary_length_headers(core: ModuleType, size: int, header: str) -> None:
    payload = bytes(range(256)) * (size // 256)
    data = bytes.fromhex(header) + payload
    assert core.FrameParser().feed(data) == [core.Frame(core.OP_BINARY, payload)]
    built = core.build_frame(core.OP_BINARY, payload, KEY)
    masked_header = bytearray.fromhex(header)
    masked_header[1] |= 0x80
    assert built[: len(masked_header) + 4] == bytes(masked_header) + KEY
    assert core.apply_mask(built[len(masked_header) + 4 :], KEY) == payload


# --- build_frame -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_build_frame_length_encodings(core: ModuleType, size: int) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    data = core.build_frame(core.OP_BINARY, payload, KEY)
    if size < 126:
        assert data[1] == 0x80 | size
        assert data[2:6] == KEY
        body = data[6:]
    elif size < 65536:
        assert data[1] == 0x80 | 126
        assert struct.unpack("!H", data[2:4])[0] == size
        body = data[8:]
    else:
        assert data[1] == 0x80 | 127
        assert struct.unpack("!Q", data[2:10])[0] == size
        body = data[14:]
    assert core.apply_mask(body, KEY) == payload


def test_build_frame_flags_and_buffers(core: ModuleType) -> None:
    data = core.build_frame(core.OP_TEXT, bytearray(b"abc"), memoryview(KEY), fin=False, rsv1=True)
    assert data[0] == 0x40 | core.OP_TEXT
    assert core.build_frame(core.OP_CONT, memoryview(b"abc"), KEY)[0] == 0x80
    assert core.build_frame(core.OP_CLOSE, b"", KEY) == bytes([0x88, 0x80]) + KEY


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, -1])
def test_build_frame_rejects_reserved_opcodes(core: ModuleType, opcode: int) -> None:
    with pytest.raises(LocalProtocolError):
        core.build_frame(opcode, b"", KEY)


@pytest.mark.parametrize("opcode", [8, 9, 10])
def test_build_frame_control_frame_rules(core: ModuleType, opcode: int) -> None:
    core.build_frame(opcode, b"x" * 125, KEY)
    with pytest.raises(LocalProtocolError):
        core.build_frame(opcode, b"x" * 126, KEY)
    with pytest.raises(LocalProtocolError):
        core.build_frame(opcode, b"", KEY, fin=False)
    with pytest.raises(LocalProtocolError):
        core.build_frame(opcode, b"", KEY, rsv1=True)


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_build_frame_rejects_bad_mask_key(core: ModuleType, key: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        core.build_frame(core.OP_TEXT, b"hi", key)


# --- Frame -----------------------------------------------------------------------------------


def test_frame_fields_equality_and_repr(core: ModuleType) -> None:
    frame = core.Frame(core.OP_BINARY, bytearray(b"\x00\x01"), fin=False, rsv1=True)
    assert fields(frame) == (2, False, True, b"\x00\x01")
    assert type(frame.payload) is bytes
    assert frame == core.Frame(2, b"\x00\x01", False, True)
    assert frame != core.Frame(2, b"\x00\x01", True, True)
    assert frame != core.Frame(1, b"\x00\x01", False, True)
    assert frame != (2, b"\x00\x01", False, True)
    assert "opcode=2" in repr(frame)
    assert "fin=False" in repr(frame)
    assert "100 B" in repr(core.Frame(2, b"x" * 100))
    with pytest.raises(TypeError):
        hash(frame)


def test_frames_of_both_cores_compare_equal(py_core: ModuleType, c_core: ModuleType) -> None:
    assert py_core.Frame(1, b"a") == c_core.Frame(1, b"a")
    assert c_core.Frame(1, b"a") == py_core.Frame(1, b"a")
    assert c_core.Frame(1, b"a") != py_core.Frame(1, b"b")


# --- Parsing ---------------------------------------------------------------------------------


def test_feeding_one_byte_at_a_time(core: ModuleType) -> None:
    stream = (
        server_frame(core.OP_TEXT, b"Hello")
        + server_frame(core.OP_BINARY, b"\x00" * 300)
        + server_frame(core.OP_PING, b"")
        + server_frame(core.OP_BINARY, bytes(range(256)) * 257)
        + server_frame(core.OP_TEXT, "κόσμε".encode(), fin=False)
        + server_frame(core.OP_CONT, "é".encode())
        + server_frame(core.OP_CLOSE, b"\x03\xe8bye")
    )
    whole = core.FrameParser().feed(stream)
    assert feed_bytewise(core.FrameParser(), stream) == whole
    assert [f.opcode for f in whole] == [1, 2, 9, 2, 1, 0, 8]
    assert whole[3].payload == bytes(range(256)) * 257


def test_empty_feeds_and_split_headers(core: ModuleType) -> None:
    parser = core.FrameParser()
    data = server_frame(core.OP_BINARY, b"y" * 70000)  # 10-byte header
    assert parser.feed(b"") == []
    assert parser.feed(data[:1]) == []
    assert parser.feed(data[1:7]) == []
    assert parser.feed(b"") == []
    assert parser.feed(data[7:12]) == []
    assert parser.feed(data[12:]) == [core.Frame(core.OP_BINARY, b"y" * 70000)]


def test_accepts_bytearray_and_memoryview(core: ModuleType) -> None:
    data = server_frame(core.OP_TEXT, b"abc") * 2
    assert len(core.FrameParser().feed(bytearray(data))) == 2
    assert len(core.FrameParser().feed(memoryview(data))) == 2


def test_frames_are_returned_in_order_and_the_rest_is_buffered(core: ModuleType) -> None:
    parser = core.FrameParser()
    data = server_frame(core.OP_TEXT, b"one") + server_frame(core.OP_TEXT, b"two")
    assert parser.feed(data + data[:4]) == [
        core.Frame(core.OP_TEXT, b"one"),
        core.Frame(core.OP_TEXT, b"two"),
    ]
    assert parser.feed(data[4:]) == [
        core.Frame(core.OP_TEXT, b"one"),
        core.Frame(core.OP_TEXT, b"two"),
    ]


def test_control_frames_interleaved_in_a_fragmented_message(core: ModuleType) -> None:
    parser = core.FrameParser()
    stream = [
        server_frame(core.OP_TEXT, UTF8_PART1[:3], fin=False),
        server_frame(core.OP_PING, b"p1"),
        server_frame(core.OP_CONT, UTF8_PART1[3:7], fin=False),
        server_frame(core.OP_PONG, b""),
        server_frame(core.OP_CLOSE, b"\x03\xe8"),
        server_frame(core.OP_CONT, UTF8_PART1[7:]),
    ]
    frames = parser.feed(b"".join(stream))
    assert [(f.opcode, f.fin) for f in frames] == [
        (1, False),
        (9, True),
        (0, False),
        (10, True),
        (8, True),
        (0, True),
    ]
    assert b"".join(f.payload for f in frames if f.opcode < 8) == UTF8_PART1
    assert not parser.message_in_progress


def test_message_in_progress(core: ModuleType) -> None:
    parser = core.FrameParser()
    assert not parser.message_in_progress
    parser.feed(server_frame(core.OP_BINARY, b"a", fin=False))
    assert parser.message_in_progress
    parser.feed(server_frame(core.OP_PING, b""))
    assert parser.message_in_progress
    parser.feed(server_frame(core.OP_CONT, b"b", fin=False))
    assert parser.message_in_progress
    parser.feed(server_frame(core.OP_CONT, b"c"))
    assert not parser.message_in_progress
    parser.feed(server_frame(core.OP_TEXT, b"whole"))
    assert not parser.message_in_progress


@pytest.mark.parametrize("size", [65536, 70000, 1 << 20])
def test_64_bit_lengths(core: ModuleType, size: int) -> None:
    payload = b"z" * size
    data = server_frame(core.OP_BINARY, payload)
    assert data[1] == 127
    assert core.FrameParser().feed(data) == [core.Frame(core.OP_BINARY, payload)]


def test_large_frame_in_small_chunks_is_linear(core: ModuleType) -> None:
    # 16 MiB in 4 KiB reads: quadratic buffering would take minutes here.
    payload = bytes(range(256)) * (16 * MIB // 256)
    data = server_frame(core.OP_BINARY, payload)
    parser = core.FrameParser()
    frames: list[Any] = []
    started = time.perf_counter()
    for i in range(0, len(data), 4096):
        frames += parser.feed(data[i : i + 4096])
    elapsed = time.perf_counter() - started
    assert len(frames) == 1
    assert frames[0].payload == payload
    assert elapsed < 5.0, elapsed


def test_large_text_frame_in_small_chunks(core: ModuleType) -> None:
    payload = "ünïcødé text, ".encode() * (2 * MIB // 16)
    data = server_frame(core.OP_TEXT, payload)
    parser = core.FrameParser()
    frames: list[Any] = []
    for i in range(0, len(data), 4093):  # odd chunks split characters
        frames += parser.feed(data[i : i + 4093])
    assert frames == [core.Frame(core.OP_TEXT, payload)]


# --- Rejections ------------------------------------------------------------------------------


def test_masked_server_frame(core: ModuleType) -> None:
    # RFC 6455 §5.1: a client MUST close the connection on a masked frame.
    assert_rejected(core, server_frame(core.OP_TEXT, b"Hello", mask=KEY), 1002)


@pytest.mark.parametrize("rsv", [1, 2, 3, 5, 6, 7])
def test_rsv2_rsv3(core: ModuleType, rsv: int) -> None:
    assert_rejected(core, server_frame(core.OP_BINARY, b"x", rsv=rsv), 1002)
    assert_rejected(core, server_frame(core.OP_BINARY, b"x", rsv=rsv), 1002, allow_rsv1=True)


def test_rsv1_needs_an_extension(core: ModuleType) -> None:
    assert_rejected(core, server_frame(core.OP_TEXT, b"x", rsv=4), 1002)


def test_rsv1_allowed_on_the_first_data_frame(core: ModuleType) -> None:
    # Compressed text is not valid UTF-8 before inflating: left to the layer above.
    parser = core.FrameParser(allow_rsv1=True)
    frames = parser.feed(
        server_frame(core.OP_TEXT, b"\xff\xfe", rsv=4, fin=False)
        + server_frame(core.OP_CONT, b"\xc0")
        + server_frame(core.OP_BINARY, b"\x00", rsv=4)
    )
    assert [fields(f) for f in frames] == [
        (1, False, True, b"\xff\xfe"),
        (0, True, False, b"\xc0"),
        (2, True, True, b"\x00"),
    ]


def test_rsv1_never_on_continuation_or_control(core: ModuleType) -> None:
    start = server_frame(core.OP_TEXT, b"a", rsv=4, fin=False)
    assert_rejected(core, start + server_frame(core.OP_CONT, b"b", rsv=4), 1002, allow_rsv1=True)
    for opcode in (core.OP_PING, core.OP_PONG, core.OP_CLOSE):
        assert_rejected(core, server_frame(opcode, b"", rsv=4), 1002, allow_rsv1=True)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes(core: ModuleType, opcode: int) -> None:
    assert_rejected(core, server_frame(opcode, b""), 1002)


@pytest.mark.parametrize("opcode", [8, 9, 10])
def test_fragmented_control_frame(core: ModuleType, opcode: int) -> None:
    assert_rejected(core, server_frame(opcode, b"", fin=False), 1002)


@pytest.mark.parametrize("opcode", [8, 9, 10])
def test_control_frame_over_125_bytes(core: ModuleType, opcode: int) -> None:
    assert_rejected(core, server_frame(opcode, b"\x03\xe8" + b"x" * 124), 1002)
    assert_rejected(core, server_frame(opcode, b"x" * 126, length_bytes=2), 1002)


def test_control_frame_of_125_bytes(core: ModuleType) -> None:
    frames = core.FrameParser().feed(server_frame(core.OP_PING, b"x" * 125))
    assert frames == [core.Frame(core.OP_PING, b"x" * 125)]


def test_non_minimal_lengths(core: ModuleType) -> None:
    assert_rejected(core, server_frame(core.OP_BINARY, b"x" * 125, length_bytes=2), 1002)
    assert_rejected(core, server_frame(core.OP_BINARY, b"", length_bytes=2), 1002)
    assert_rejected(core, server_frame(core.OP_BINARY, b"x" * 65535, length_bytes=8), 1002)
    assert_rejected(core, server_frame(core.OP_BINARY, b"x" * 3, length_bytes=8), 1002)
    # The smallest lengths of each encoding are fine.
    frames = core.FrameParser().feed(
        server_frame(core.OP_BINARY, b"x" * 126, length_bytes=2)
        + server_frame(core.OP_BINARY, b"x" * 65536, length_bytes=8)
    )
    assert [len(f.payload) for f in frames] == [126, 65536]


def test_64_bit_length_with_top_bit(core: ModuleType) -> None:
    assert_rejected(core, server_frame(core.OP_BINARY, length=1 << 63), 1002)
    assert_rejected(core, server_frame(core.OP_BINARY, length=(1 << 64) - 1), 1002)


def test_max_frame_size_is_decided_from_the_header(core: ModuleType) -> None:
    parser = core.FrameParser(max_frame_size=1000)
    assert parser.feed(server_frame(core.OP_BINARY, b"x" * 1000)) != []
    header = server_frame(core.OP_BINARY, length=1001, length_bytes=2)
    assert len(header) == 4
    with pytest.raises(FrameError) as info:
        parser.feed(header)  # no payload byte has arrived yet
    assert info.value.close_code == 1009
    assert_rejected(core, server_frame(core.OP_BINARY, length=1 << 40), 1009)


def test_max_frame_size_also_limits_control_frames(core: ModuleType) -> None:
    assert_rejected(core, server_frame(core.OP_PING, b"x" * 11), 1009, max_frame_size=10)


def test_max_message_size_over_fragments(core: ModuleType) -> None:
    options = {"max_message_size": 100}
    first = server_frame(core.OP_BINARY, b"x" * 60, fin=False)
    assert len(core.FrameParser(**options).feed(first + server_frame(core.OP_CONT, b"y" * 40))) == 2
    assert_rejected(core, first + server_frame(core.OP_CONT, b"y" * 41), 1009, **options)
    assert_rejected(core, server_frame(core.OP_TEXT, b"y" * 101), 1009, **options)
    # Control frames in between do not count.
    ping = server_frame(core.OP_PING, b"p" * 50)
    ok = first + ping + server_frame(core.OP_CONT, b"y" * 40)
    assert len(core.FrameParser(**options).feed(ok)) == 3


def test_message_size_restarts_with_each_message(core: ModuleType) -> None:
    # Three 100-byte messages through a 100-byte limit: each message's count starts at 0.
    parser = core.FrameParser(max_message_size=100)
    for _ in range(3):
        [first] = parser.feed(server_frame(core.OP_BINARY, b"x" * 60, fin=False))
        assert (first.opcode, first.fin, len(first.payload)) == (core.OP_BINARY, False, 60)
        assert parser.message_in_progress
        [last] = parser.feed(server_frame(core.OP_CONT, b"x" * 40))
        assert (last.opcode, last.fin, len(last.payload)) == (core.OP_CONT, True, 40)
        assert not parser.message_in_progress
    # One byte more in a message is refused.
    parser.feed(server_frame(core.OP_BINARY, b"x" * 60, fin=False))
    with pytest.raises(FrameError) as info:
        parser.feed(server_frame(core.OP_CONT, b"x" * 41))
    assert info.value.close_code == 1009


def test_continuation_without_a_message(core: ModuleType) -> None:
    assert_rejected(core, server_frame(core.OP_CONT, b"x"), 1002)
    whole = server_frame(core.OP_TEXT, b"done")
    assert_rejected(core, whole + server_frame(core.OP_CONT, b"x"), 1002)


@pytest.mark.parametrize("second", [1, 2])
def test_new_message_while_one_is_in_progress(core: ModuleType, second: int) -> None:
    start = server_frame(core.OP_BINARY, b"x", fin=False)
    assert_rejected(core, start + server_frame(second, b"y"), 1002)
    assert_rejected(core, start + server_frame(second, b"y", fin=False), 1002)


def test_parser_is_dead_after_an_error(core: ModuleType) -> None:
    parser = core.FrameParser()
    with pytest.raises(FrameError):
        parser.feed(server_frame(core.OP_TEXT, b"\xff"))
    for data in (server_frame(core.OP_TEXT, b"fine"), b""):
        with pytest.raises(FrameError) as info:
            parser.feed(data)
        assert info.value.close_code == 1007


# --- UTF-8 in text messages (RFC 6455 §8.1) ------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong "/"
        b"\xe0\x80\xaf",  # overlong
        b"\xed\xa0\x80",  # surrogate U+D800
        b"\xed\xbf\xbf",  # surrogate U+DFFF
        b"\xf4\x90\x80\x80",  # U+110000
        b"\xf8\x88\x80\x80\x80",  # 5-byte form
        b"\x80",  # lone continuation
        b"\xce",  # truncated at the end of the message
        UTF8_PART1 + UTF8_PART2 + UTF8_PART3,
    ],
)
def test_invalid_utf8_text(core: ModuleType, payload: bytes) -> None:
    assert_rejected(core, server_frame(core.OP_TEXT, payload), 1007)
    assert core.FrameParser(validate_utf8=False).feed(server_frame(core.OP_TEXT, payload))


def test_binary_is_not_validated(core: ModuleType) -> None:
    assert core.FrameParser().feed(server_frame(core.OP_BINARY, b"\xff\xfe"))


def test_utf8_fails_fast_across_fragments(core: ModuleType) -> None:
    # Autobahn 6.4.1/6.4.2: the frame that makes the text invalid is rejected before the message
    # is complete.
    parser = core.FrameParser()
    assert parser.feed(server_frame(core.OP_TEXT, UTF8_PART1, fin=False))
    with pytest.raises(FrameError) as info:
        parser.feed(server_frame(core.OP_CONT, UTF8_PART2[:2], fin=False))
    assert info.value.close_code == 1007


def test_utf8_fails_fast_within_a_frame(core: ModuleType) -> None:
    # Autobahn 6.4.3/6.4.4: one frame arriving in pieces; the piece that makes it invalid is
    # rejected before the frame is complete.
    payload = UTF8_PART1 + UTF8_PART2 + UTF8_PART3
    data = server_frame(core.OP_TEXT, payload)
    parser = core.FrameParser()
    assert parser.feed(data[: 2 + len(UTF8_PART1)]) == []
    with pytest.raises(FrameError) as info:
        parser.feed(data[2 + len(UTF8_PART1) : 2 + len(UTF8_PART1) + 2])
    assert info.value.close_code == 1007


def test_utf8_fails_fast_on_a_surrogate_prefix(core: ModuleType) -> None:
    parser = core.FrameParser()
    assert parser.feed(server_frame(core.OP_TEXT, b"ok\xed", fin=False))
    with pytest.raises(FrameError) as info:
        parser.feed(server_frame(core.OP_CONT, b"\xa0", fin=False))
    assert info.value.close_code == 1007


def test_utf8_character_split_across_fragments_and_chunks(core: ModuleType) -> None:
    text = "€𝄞ü".encode()
    stream = b"".join(
        server_frame(core.OP_TEXT if i == 0 else core.OP_CONT, text[i : i + 1], fin=i == 8)
        for i in range(len(text))
    )
    assert len(text) == 9
    assert len(feed_bytewise(core.FrameParser(), stream)) == 9


def test_utf8_incomplete_at_the_final_fragment(core: ModuleType) -> None:
    stream = server_frame(core.OP_TEXT, b"abc\xe2\x82", fin=False)
    parser = core.FrameParser()
    assert parser.feed(stream)
    with pytest.raises(FrameError) as info:
        parser.feed(server_frame(core.OP_CONT, b""))
    assert info.value.close_code == 1007


def test_utf8_validator(core: ModuleType) -> None:
    validator = core.Utf8Validator()
    validator.feed("Grüße, ".encode()[:3])
    validator.feed(bytearray("Grüße, ".encode()[3:]))
    validator.feed(memoryview("🎉".encode()), final=True)
    validator.feed(b"next message", final=True)
    validator.feed(b"\xc2")
    validator.feed(b"\x80", final=True)  # ends a character: the next message starts clean
    validator.feed(b"a", final=True)
    validator.feed(b"\xe2\x82")
    with pytest.raises(FrameError) as info:
        validator.feed(b"", final=True)
    assert info.value.close_code == 1007
    with pytest.raises(FrameError):
        validator.feed(b"still failed")
    validator.reset()
    validator.feed(b"\xe2\x82")
    validator.reset()
    validator.feed(b"fresh", final=True)


def test_utf8_validator_agrees_with_python_on_every_two_byte_sequence(core: ModuleType) -> None:
    for first in range(256):
        for second in range(256):
            data = bytes((first, second))
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                valid = False
            else:
                valid = True
            validator = core.Utf8Validator()
            try:
                validator.feed(data, final=True)
            except FrameError:
                assert not valid, data
            else:
                assert valid, data


@pytest.mark.parametrize("bad", [b"\xed\xa0", b"\xf4\x90", b"\xe0\x9f", b"\xc1", b"\xf5"])
def test_utf8_validator_rejects_impossible_prefixes_at_once(core: ModuleType, bad: bytes) -> None:
    validator = core.Utf8Validator()
    validator.feed(b"abc")
    with pytest.raises(FrameError) as info:
        validator.feed(bad)  # not final: the prefix alone is already invalid
    assert info.value.close_code == 1007


# --- Close payloads (RFC 6455 §5.5.1, §7.4) ----------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_close_payload_round_trip(core: ModuleType, code: int) -> None:
    payload = core.build_close_payload(code, "bye ✓")
    assert payload == struct.pack("!H", code) + "bye ✓".encode()
    assert core.parse_close_payload(payload) == (code, "bye ✓")
    assert core.parse_close_payload(bytearray(payload)) == (code, "bye ✓")
    frames = core.FrameParser().feed(server_frame(core.OP_CLOSE, payload))
    assert frames == [core.Frame(core.OP_CLOSE, payload)]


def test_close_payload_without_code(core: ModuleType) -> None:
    assert core.build_close_payload(None) == b""
    assert core.parse_close_payload(b"") == (core.CLOSE_NO_STATUS, "") == (1005, "")
    with pytest.raises(LocalProtocolError):
        core.build_close_payload(None, "reason without a code")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes(core: ModuleType, code: int) -> None:
    with pytest.raises(LocalProtocolError):
        core.build_close_payload(code)
    with pytest.raises(FrameError) as info:
        core.parse_close_payload(struct.pack("!H", code))
    assert info.value.close_code == 1002
    assert_rejected(core, server_frame(core.OP_CLOSE, struct.pack("!H", code)), 1002)


def test_close_payload_of_one_byte(core: ModuleType) -> None:
    with pytest.raises(FrameError) as info:
        core.parse_close_payload(b"\x03")
    assert info.value.close_code == 1002
    assert_rejected(core, server_frame(core.OP_CLOSE, b"\x03"), 1002)


def test_close_reason_must_be_utf8(core: ModuleType) -> None:
    payload = b"\x03\xe8" + UTF8_PART1 + b"\xed\xa0\x80"
    with pytest.raises(FrameError) as info:
        core.parse_close_payload(payload)
    assert info.value.close_code == 1007
    assert_rejected(core, server_frame(core.OP_CLOSE, payload), 1007)


def test_close_payload_is_not_checked_without_validation(core: ModuleType) -> None:
    frames = core.FrameParser(validate_utf8=False).feed(server_frame(core.OP_CLOSE, b"\x03"))
    assert frames == [core.Frame(core.OP_CLOSE, b"\x03")]


def test_close_payload_size_limit(core: ModuleType) -> None:
    assert len(core.build_close_payload(1000, "x" * 123)) == 125
    with pytest.raises(LocalProtocolError):
        core.build_close_payload(1000, "x" * 124)
    with pytest.raises(LocalProtocolError):
        core.build_close_payload(1000, "é" * 62)  # 2 + 124 bytes
    with pytest.raises(LocalProtocolError):
        core.build_close_payload(1000, "\ud800")  # not encodable


# --- Interoperability with the websockets library ---------------------------------------------

INTEROP_FRAMES = [
    (1, b"Hello", True),
    (1, "Grüße 🎉".encode(), False),
    (0, b"", True),
    (2, bytes(range(256)), True),
    (2, b"\x00" * 125, True),
    (2, b"\x01" * 126, True),
    (2, b"\x02" * 65535, True),
    (2, b"\x03" * 65536, True),
    (9, b"ping", True),
    (10, b"", True),
    (8, b"\x03\xe8done", True),
]


def websockets_parse(data: bytes, *, mask: bool) -> list[WsFrame]:
    """Parse ``data`` with websockets' own frame parser (generator + StreamReader)."""
    reader = StreamReader()
    frames: list[WsFrame] = []
    no_extensions: list[Extension] = []

    def parse() -> Any:
        while True:
            frame = yield from WsFrame.parse(
                reader.read_exact, mask=mask, max_size=None, extensions=no_extensions
            )
            frames.append(frame)

    parser = parse()
    next(parser)
    reader.feed_data(data)
    next(parser)
    return frames


def test_websockets_parses_our_frames(core: ModuleType) -> None:
    data = b"".join(core.build_frame(op, p, KEY, fin=fin) for op, p, fin in INTEROP_FRAMES)
    parsed = websockets_parse(data, mask=True)  # server side: expects masked frames
    assert [(int(f.opcode), bytes(f.data), f.fin) for f in parsed] == INTEROP_FRAMES


def test_we_parse_websockets_frames(core: ModuleType) -> None:
    data = b"".join(
        WsFrame(Opcode(op), p, fin=fin).serialize(mask=False, extensions=[])
        for op, p, fin in INTEROP_FRAMES
    )
    frames = core.FrameParser().feed(data)
    assert [(f.opcode, f.payload, f.fin) for f in frames] == INTEROP_FRAMES
    assert feed_bytewise(core.FrameParser(), data) == frames


def test_pure_core_masks_with_the_pure_kernel(py_core: ModuleType) -> None:
    # The pure twin must load no extension module: it is what NHLINK_NO_EXTENSIONS runs.
    frames_py = importlib.import_module("nhlink._core._frames_py")
    assert frames_py._COMPILED is False
    assert frames_py._mask_with_header.__module__ == "nhlink._core._mask_py"
    assert py_core.build_frame is frames_py.build_frame
