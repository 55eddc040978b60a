"""The Phoenix MessagePack codec (vsn 3.0.0, PROTOCOL.md §4.6): both implementations.

Expected bytes are written out by hand from the MessagePack specification, so these tests need
no MessagePack library; the property tests compare with the ``msgpack`` package.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from types import ModuleType
from typing import Any

import pytest

from nhlink.errors import DecodeError, EncodeError

from .test_codec import outcomes_on_small_stack, same

HEARTBEAT = bytes.fromhex("95c0a135a770686f656e6978a968656172746265617480")


def enc(core: ModuleType, payload: Any) -> bytes:
    """The encoding of ``payload`` alone (the envelope's fixed prefix stripped)."""
    data: bytes = core.encode_msgpack(None, None, "t", "e", payload)
    prefix = b"\x95\xc0\xc0\xa1t\xa1e"
    assert data.startswith(prefix)
    return data[len(prefix) :]


def dec(core: ModuleType, payload: bytes) -> Any:
    """Decode ``payload`` as the payload of an envelope."""
    return core.decode_msgpack(b"\x95\xc0\xc0\xa1t\xa1e" + payload).payload


# -- the PROTOCOL.md example -------------------------------------------------------------------


def test_heartbeat_example_both_ways(core: ModuleType) -> None:
    assert core.encode_msgpack(None, "5", "phoenix", "heartbeat", {}) == HEARTBEAT
    message = core.decode_msgpack(HEARTBEAT)
    assert list(message) == [None, "5", "phoenix", "heartbeat", {}]
    assert isinstance(message, core.Message)


def test_reply_decodes(core: ModuleType) -> None:
    reply = b"\x95\xc0\xa15\xa7phoenix\xa9phx_reply\x82\xa6status\xa2ok\xa8response\x80"
    assert list(core.decode_msgpack(reply)) == [
        None,
        "5",
        "phoenix",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]


# -- encoding: every format at its boundaries --------------------------------------------------

INTS: list[tuple[int, bytes]] = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\xcc\x80"),
    (255, b"\xcc\xff"),
    (256, b"\xcd\x01\x00"),
    (65535, b"\xcd\xff\xff"),
    (65536, b"\xce\x00\x01\x00\x00"),
    (2**32 - 1, b"\xce\xff\xff\xff\xff"),
    (2**32, b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00"),
    (2**63, b"\xcf\x80" + b"\x00" * 7),
    (2**64 - 1, b"\xcf" + b"\xff" * 8),
    (-1, b"\xff"),
    (-32, b"\xe0"),
    (-33, b"\xd0\xdf"),
    (-128, b"\xd0\x80"),
    (-129, b"\xd1\xff\x7f"),
    (-32768, b"\xd1\x80\x00"),
    (-32769, b"\xd2\xff\xff\x7f\xff"),
    (-(2**31), b"\xd2\x80\x00\x00\x00"),
    (-(2**31) - 1, b"\xd3\xff\xff\xff\xff\x7f\xff\xff\xff"),
    (-(2**63), b"\xd3\x80" + b"\x00" * 7),
]


@pytest.mark.parametrize(("value", "expected"), INTS, ids=[str(v) for v, _ in INTS])
def test_integers_smallest_format(core: ModuleType, value: int, expected: bytes) -> None:
    assert enc(core, value) == expected
    assert same(dec(core, expected), value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30, -(10**30)])
def test_integers_outside_64_bits_refused(core: ModuleType, value: int) -> None:
    with pytest.raises(EncodeError, match="64 bits"):
        core.encode_msgpack(None, None, "t", "e", {"n": value})


def test_scalars(core: ModuleType) -> None:
    assert enc(core, None) == b"\xc0"
    assert enc(core, True) == b"\xc3"
    assert enc(core, False) == b"\xc2"
    # Floats are always float 64, as msgpax and the msgpack package write them.
    assert enc(core, 1.5) == b"\xcb" + struct.pack(">d", 1.5)
    assert enc(core, -0.0) == b"\xcb\x80" + b"\x00" * 7
    assert enc(core, 1e300) == b"\xcb" + struct.pack(">d", 1e300)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_refused(core: ModuleType, value: float) -> None:
    with pytest.raises(EncodeError, match="NaN and infinity"):
        core.encode_msgpack(None, None, "t", "e", [value])


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\xa0"),
        (31, b"\xbf"),
        (32, b"\xd9\x20"),
        (255, b"\xd9\xff"),
        (256, b"\xda\x01\x00"),
        (65535, b"\xda\xff\xff"),
        (65536, b"\xdb\x00\x01\x00\x00"),
    ],
)
def test_str_formats(core: ModuleType, size: int, header: bytes) -> None:
    text = "x" * size
    assert enc(core, text) == header + text.encode()
    assert dec(core, header + text.encode()) == text


def test_non_ascii_text_is_utf8(core: ModuleType) -> None:
    text = "é✓😀" * 3  # 2-, 3- and 4-byte characters: 27 bytes
    assert enc(core, text) == bytes([0xA0 | 27]) + text.encode()
    assert dec(core, bytes([0xA0 | 27]) + text.encode()) == text


def test_lone_surrogate_refused(core: ModuleType) -> None:
    with pytest.raises(EncodeError, match="surrogate"):
        core.encode_msgpack(None, None, "t", "e", {"s": "a\ud800b"})


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\xc4\x00"),
        (255, b"\xc4\xff"),
        (256, b"\xc5\x01\x00"),
        (65536, b"\xc6\x00\x01\x00\x00"),
    ],
)
def test_bin_formats(core: ModuleType, size: int, header: bytes) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for value in (data, bytearray(data), memoryview(data)):
        assert enc(core, value) == header + data
    decoded = dec(core, header + data)
    assert type(decoded) is bytes and decoded == data


def test_non_contiguous_memoryview_encodes_its_bytes(core: ModuleType) -> None:
    view = memoryview(b"abcdef")[::2]
    assert enc(core, view) == b"\xc4\x03ace"


@pytest.mark.parametrize(
    ("count", "header"),
    [(0, b"\x90"), (15, b"\x9f"), (16, b"\xdc\x00\x10"), (65536, b"\xdd\x00\x01\x00\x00")],
)
def test_array_formats(core: ModuleType, count: int, header: bytes) -> None:
    assert enc(core, [None] * count) == header + b"\xc0" * count
    assert enc(core, (None,) * count) == header + b"\xc0" * count
    assert dec(core, header + b"\xc0" * count) == [None] * count


@pytest.mark.parametrize(
    ("count", "header"),
    [(0, b"\x80"), (15, b"\x8f"), (16, b"\xde\x00\x10"), (65536, b"\xdf\x00\x01\x00\x00")],
)
def test_map_formats(core: ModuleType, count: int, header: bytes) -> None:
    value = {f"{i:05}": i % 100 for i in range(count)}
    body = b"".join(b"\xa5" + f"{i:05}".encode() + bytes([i % 100]) for i in range(count))
    assert enc(core, value) == header + body
    assert dec(core, header + body) == value


def test_map_keys_coerced_as_json_does(core: ModuleType) -> None:
    class Kind(enum.IntEnum):
        ONE = 1

    payload = {1: "a", 2.5: "b", None: "d", False: "f", -7: "g"}
    assert dec(core, enc(core, payload)) == json.loads(json.dumps(payload))
    assert dec(core, enc(core, {True: 1})) == {"true": 1}
    assert dec(core, enc(core, {Kind.ONE: 1})) == json.loads(json.dumps({Kind.ONE: 1}))
    with pytest.raises(EncodeError, match="map keys"):
        core.encode_msgpack(None, None, "t", "e", {(1, 2): "tuple key"})
    with pytest.raises(EncodeError, match="finite"):
        core.encode_msgpack(None, None, "t", "e", {math.nan: 1})


def test_subclasses_encode_as_their_value(core: ModuleType) -> None:
    class Kind(enum.IntEnum):
        TWO = 2

    class Text(str):
        def encode(self, *args: Any, **kwargs: Any) -> bytes:
            raise AssertionError("never called")

    class Backwards(list[Any]):
        def __iter__(self) -> Any:
            return iter([*list.__iter__(self)][::-1])

    class Real(float):
        pass

    class Ordered(dict[str, Any]):
        def items(self) -> Any:
            return sorted(dict.items(self))

    assert enc(core, Kind.TWO) == b"\x02"
    assert enc(core, Text("hi")) == b"\xa2hi"
    assert enc(core, Backwards([1, 2, 3])) == b"\x93\x03\x02\x01"
    assert enc(core, Real(0.5)) == b"\xcb" + struct.pack(">d", 0.5)
    assert enc(core, Ordered(b=1, a=2)) == b"\x82\xa1a\x02\xa1b\x01"


def test_iterator_yielding_fewer_items_than_len_stays_consistent(core: ModuleType) -> None:
    class Liar(list[Any]):
        def __iter__(self) -> Any:
            return iter([1])

    assert enc(core, Liar([1, 2, 3])) == b"\x91\x01"


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, Exception("x")])
def test_unsupported_types_refused(core: ModuleType, value: Any) -> None:
    with pytest.raises(EncodeError, match="no MessagePack form"):
        core.encode_msgpack(None, None, "t", "e", {"v": value})


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((1, None, "t", "e"), "join_ref"),
        ((None, 2, "t", "e"), "ref"),
        ((None, None, b"t", "e"), "topic"),
        ((None, None, "t", None), "event"),
    ],
)
def test_envelope_field_types_on_encode(core: ModuleType, args: tuple[Any, ...], what: str) -> None:
    with pytest.raises(EncodeError, match=what):
        core.encode_msgpack(*args, {})


def test_depth_limit_both_ways(core: ModuleType) -> None:
    limit = core.MAX_MSGPACK_DEPTH
    assert limit == 256

    def nested(levels: int) -> Any:
        value: Any = []
        for _ in range(levels - 1):
            value = [value]
        return value

    # The outer envelope is level 1: the payload may nest limit - 1 levels.
    ok = core.encode_msgpack(None, None, "t", "e", nested(limit - 1))
    assert dec(core, ok[7:]) == nested(limit - 1)
    with pytest.raises(EncodeError, match="deeper than 256"):
        core.encode_msgpack(None, None, "t", "e", nested(limit))
    with pytest.raises(DecodeError, match="deeper than 256"):
        dec(core, b"\x91" * (limit - 1) + b"\x90")
    with pytest.raises(DecodeError, match="deeper than 256"):
        dec(core, b"\x81\xa1k" * (limit - 1) + b"\x80")


def test_circular_reference_refused(core: ModuleType) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="deeper"):
        core.encode_msgpack(None, None, "t", "e", loop)


def test_encode_does_not_mutate(core: ModuleType) -> None:
    payload = {"b": [1, 2], "a": {"c": None}, 1: "x"}
    core.encode_msgpack(None, None, "t", "e", payload)
    assert payload == {"b": [1, 2], "a": {"c": None}, 1: "x"}


def test_large_payload_leaves_the_stack_buffer(core: ModuleType) -> None:
    payload = {"data": "é" * 50_000, "n": list(range(1000))}
    data = core.encode_msgpack("1", "2", "console", "up", payload)
    assert core.decode_msgpack(data).payload == payload


# -- decoding ----------------------------------------------------------------------------------


def test_every_decoded_type(core: ModuleType) -> None:
    value = dec(
        core,
        b"\xdc\x00\x0f\xc0\xc2\xc3\x05\xfb\xcc\xc8\xd0\x80\xca\x3f\xc0\x00\x00\xcb"
        + struct.pack(">d", 0.1)
        + b"\xa3abc\xc4\x02\x00\x01\x91\x01\x81\xa1k\xa1v\xcf"
        + struct.pack(">Q", 2**64 - 1)
        + b"\xd3"
        + struct.pack(">q", -(2**63)),
    )
    assert same(
        value,
        [
            None,
            False,
            True,
            5,
            -5,
            200,
            -128,
            1.5,
            0.1,
            "abc",
            b"\x00\x01",
            [1],
            {"k": "v"},
            2**64 - 1,
            -(2**63),
        ],
    )


def test_int_refs_become_strings(core: ModuleType) -> None:
    frame = b"\x95\x07\xcd\x01\x00\xa6device\xa6update\x80"
    assert list(core.decode_msgpack(frame)) == ["7", "256", "device", "update", {}]
    negative = b"\x95\xff\xc0\xa1t\xa1e\x80"
    assert core.decode_msgpack(negative).join_ref == "-1"


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "empty"),
        (b"\x94\xc0\xc0\xa1t\xa1e", "5 elements"),
        (b"\x96\xc0\xc0\xa1t\xa1e\x80\x80", "5 elements"),
        (b"\x80", "must be a MessagePack array, got a map"),
        (b"\xa1x", "must be a MessagePack array, got a string"),
        (b"\x95\xc0\xc0\xa1t\xa1e\x80\x00", "extra data"),
        (b"\x95\xc0\xc0\xa1t\xa1e\x80\x95", "extra data"),
        (b"\x80\x00", "extra data"),
        (b"\x95\xc3\xc0\xa1t\xa1e\x80", "join_ref"),
        (b"\x95\xc0\xcb" + struct.pack(">d", 1.0) + b"\xa1t\xa1e\x80", "ref"),
        (b"\x95\xc0\x90\xa1t\xa1e\x80", "ref"),
        (b"\x95\xc0\xc0\x01\xa1e\x80", "topic"),
        (b"\x95\xc0\xc0\xc4\x01t\xa1e\x80", "topic"),
        (b"\x95\xc0\xc0\xa1t\xc0\x80", "event"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xc1", "0xc1 is not a MessagePack type"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xa2\xc3\x28", "UTF-8"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xa3\xed\xa0\x80", "UTF-8"),  # an encoded surrogate
        (b"\x95\xc0\xc0\xa1t\xa1e\x81\x01\x02", "map keys must be strings"),
        (b"\x95\xc0\xc0\xa1t\xa1e\x81\xc4\x01k\x02", "map keys must be strings"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xca\x7f\xc0\x00\x00", "NaN or infinity"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xcb\x7f\xf0" + b"\x00" * 6, "NaN or infinity"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xcb\xff\xf8" + b"\x00" * 6, "NaN or infinity"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xdd\xff\xff\xff\xff\xc0", "runs past the end"),
        (b"\x95\xc0\xc0\xa1t\xa1e\xdf\x00\x00\x00\x02\xa1k\xc0", "runs past the end"),
        (b"\xdd\xff\xff\xff\xff", "5 elements"),
    ],
)
def test_malformed_frames(core: ModuleType, frame: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        core.decode_msgpack(frame)


EXT_MARKERS = [0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xC7, 0xC8, 0xC9]


@pytest.mark.parametrize("marker", EXT_MARKERS, ids=[f"0x{m:02x}" for m in EXT_MARKERS])
def test_ext_values_refused(core: ModuleType, marker: int) -> None:
    # e.g. the timestamp ext -1: d6 ff + 4 bytes of seconds.
    frame = b"\x95\xc0\xc0\xa1t\xa1e" + bytes([marker, 1, 0xFF]) + b"\x00" * 16
    with pytest.raises(DecodeError, match="ext values are not accepted"):
        core.decode_msgpack(frame)


def test_every_truncation_is_a_decode_error(core: ModuleType) -> None:
    full = core.encode_msgpack(
        "12",
        "345",
        "device",
        "update",
        {"s": "x" * 40, "b": b"\x00" * 300, "n": [2**40, -(2**40), 0.25, 70000], "m": {"k": None}},
    )
    core.decode_msgpack(full)
    for cut in range(len(full)):
        with pytest.raises(DecodeError):
            core.decode_msgpack(full[:cut])


def test_input_types(core: ModuleType) -> None:
    expected = list(core.decode_msgpack(HEARTBEAT))
    assert list(core.decode_msgpack(bytearray(HEARTBEAT))) == expected
    assert list(core.decode_msgpack(memoryview(HEARTBEAT))) == expected
    spread = bytes(b for pair in zip(HEARTBEAT, bytes(len(HEARTBEAT)), strict=True) for b in pair)
    assert list(core.decode_msgpack(memoryview(spread)[::2])) == expected
    with pytest.raises(TypeError, match="bytes-like"):
        core.decode_msgpack(HEARTBEAT.decode("latin-1"))


def test_short_strings_from_the_cache_are_correct(core: ModuleType) -> None:
    # The compiled decoder hands out cached str objects for short ASCII strings: keys and values
    # that collide in the cache must still come back exact.
    words = [f"k{i}" for i in range(3000)] + ["a" * 24, "b" * 24, ""]
    payload = {w: w for w in words}
    data = core.encode_msgpack(None, None, "t", "e", payload)
    assert core.decode_msgpack(data).payload == payload


def test_duplicate_keys_last_wins(core: ModuleType) -> None:
    assert dec(core, b"\x82\xa1k\x01\xa1k\x02") == {"k": 2}


def test_deep_message_on_a_small_thread_stack(core: ModuleType) -> None:
    # musl gives threads 128 KiB of stack: decoding the deepest message allowed (and one too
    # deep) must fit there.
    depth = core.MAX_MSGPACK_DEPTH
    envelope = b"\x95\xc0\xc0\xa1t\xa1e"
    results = outcomes_on_small_stack(
        core.decode_msgpack,
        {
            "arrays": envelope + b"\x91" * (depth - 2) + b"\x90",
            "maps": envelope + b"\x81\xa1k" * (depth - 2) + b"\x80",
            "too deep": envelope + b"\x91" * depth + b"\x90",
        },
    )
    assert results == {"arrays": "ok", "maps": "ok", "too deep": "DecodeError"}
