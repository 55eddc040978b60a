"""The Phoenix message codec (PROTOCOL.md §4): both implementations, against the stdlib json."""

from __future__ import annotations

import collections
import enum
import json
import math
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import pytest

from nhlink.errors import DecodeError, EncodeError


def dumps(value: Any) -> bytes:
    """The reference encoding: what encode_message must produce byte for byte."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down, floats compared bit for bit (-0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex() if not math.isnan(a) else math.isnan(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


class IntKind(enum.IntEnum):
    ONE = 1


class Text(str):
    def __str__(self) -> str:
        return "not used"


class Number(int):
    def __repr__(self) -> str:
        return "not used"


class Real(float):
    def __repr__(self) -> str:
        return "not used"


class Reversed(list[Any]):
    """json iterates list subclasses, so __iter__ decides what is encoded."""

    def __iter__(self) -> Any:
        return iter(list.__reversed__(self))


class OnlyX(dict[Any, Any]):
    """json asks dict subclasses for items()."""

    def items(self) -> Any:
        return [("x", 1)]


PAYLOADS: list[Any] = [
    {},
    [],
    None,
    True,
    False,
    0,
    -1,
    42,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**64) - 1,
    10**40,
    -(10**100),
    0.0,
    -0.0,
    0.1,
    1.5,
    -2.5e-300,
    1e16,
    1e-7,
    1e22,
    123456789.123456789,
    5e-324,
    1.7976931348623157e308,
    "",
    "plain ascii",
    'quote " backslash \\ slash /',
    "\b\f\n\r\t",
    "".join(chr(c) for c in range(32)) + "\x7f",
    "é ü ß ñ ¥ ÿ",
    "Ā ӿ ก 中文 日本語 \u2028 \u2029 \ufeff \uffff",
    "emoji 😀 🚀 \U0010ffff \U00010000",
    "mixed \x00 é \t 中 😀 \\",
    "a" * 600,
    ("é" * 300) + "\n",
    {"value": 42},
    {"a": {"b": {"c": [1, 2, {"d": None}]}}},
    [1, "two", 3.0, [4], {"five": 5}, None, True],
    {"": "", "é": "é", "😀": [], "\n": {}},
    {7: "int", 2.5: "float", True: "t", False: "f", None: "n"},
    {-0.0: 0, 1e16: 1, 10**30: 2},
    (1, 2, (3,)),
    {"tuple": ()},
    IntKind.ONE,
    {IntKind.ONE: IntKind.ONE},
    Text("subclass"),
    {Text("k"): Text("v")},
    Number(7),
    Real(2.25),
    {Real(0.5): Real(0.25)},
    Reversed([1, 2, 3]),
    OnlyX(a=1),
    OnlyX(),
    collections.OrderedDict([("z", 1), ("a", 2)]),
    {"update_available": False, "firmware_url": None, "deployment_id": None},
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_encode_matches_json_dumps(core: ModuleType, payload: Any) -> None:
    fields = ["3", "9", "device", "status_update", payload]
    assert core.encode_message(*fields) == dumps(fields)


@pytest.mark.parametrize(
    "fields",
    [
        (None, None, "phoenix", "heartbeat", {}),
        ("1", "1", "device", "phx_join", {"device_api_version": "2.2.0"}),
        ("", "", "", "", ""),
        ("é", "😀", "extensions", "health:check", [None]),
        (Text("j"), Text("r"), Text("t"), Text("e"), 1),
    ],
)
def test_encode_fields(core: ModuleType, fields: tuple[Any, ...]) -> None:
    assert core.encode_message(*fields) == dumps(list(fields))


def test_encode_keywords(core: ModuleType) -> None:
    data = core.encode_message(join_ref=None, ref="5", topic="t", event="e", payload={})
    assert data == b'[null,"5","t","e",{}]'


def _circular_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _circular_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def nested(depth: int) -> Any:
    """``depth`` levels of arrays: nested(1) == []."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "payload",
    [
        object(),
        {1, 2},
        b"bytes",
        bytearray(b"x"),
        1j,
        [1, object()],
        {"k": {"nested": frozenset()}},
        float("nan"),
        float("inf"),
        float("-inf"),
        [float("nan")],
        {float("nan"): 1},
        {float("inf"): 1},
        {(1, 2): "tuple key"},
        {b"k": "bytes key"},
        "\ud800",
        "lone low \udc00 surrogate",
        {"\udfff": 1},
        ["ok", "\ud83d"],
        _circular_list(),
        _circular_dict(),
        nested(300),
        10**5000,
        {10**5000: 1},
    ],
    ids=lambda value: type(value).__name__,
)
def test_encode_rejects(core: ModuleType, payload: Any) -> None:
    with pytest.raises(EncodeError):
        core.encode_message(None, "1", "device", "e", payload)


@pytest.mark.parametrize(
    "fields",
    [
        (1, None, "t", "e", {}),
        (None, 2, "t", "e", {}),
        (None, None, None, "e", {}),
        (None, None, "t", b"e", {}),
        (None, None, "t", 5, {}),
        (["1"], None, "t", "e", {}),
        (None, None, "\ud800", "e", {}),
        ("\udc00", None, "t", "e", {}),
    ],
)
def test_encode_rejects_fields(core: ModuleType, fields: tuple[Any, ...]) -> None:
    with pytest.raises(EncodeError):
        core.encode_message(*fields)


def test_encode_error_is_local_protocol_error(core: ModuleType) -> None:
    from nhlink.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        core.encode_message(None, None, "t", "e", object())


def test_depth_limit(core: ModuleType) -> None:
    limit = core.MAX_JSON_DEPTH
    assert limit == 256
    # The outer 5-element array is level 1, so the payload may nest limit - 1 levels.
    ok = core.encode_message(None, None, "t", "e", nested(limit - 1))
    assert ok == dumps([None, None, "t", "e", nested(limit - 1)])
    assert core.decode_message(ok).payload == nested(limit - 1)
    with pytest.raises(EncodeError):
        core.encode_message(None, None, "t", "e", nested(limit))
    with pytest.raises(EncodeError):
        core.encode_message(None, None, "t", "e", {"a": nested(limit - 1)})
    too_deep = dumps([None, None, "t", "e", nested(limit)])
    with pytest.raises(DecodeError):
        core.decode_message(too_deep)
    objects = b'[null,null,"t","e",' + b'{"a":' * limit + b"1" + b"}" * limit + b"]"
    with pytest.raises(DecodeError):
        core.decode_message(objects)
    deep = b'[null,null,"t","e",' + b"[" * 100_000 + b"]" * 100_000 + b"]"
    with pytest.raises(DecodeError):
        core.decode_message(deep)


def outcomes_on_small_stack(
    decode: Callable[[bytes], object], messages: Mapping[str, bytes]
) -> dict[str, str]:
    """Decode each message on a thread with musl's 128 KiB stack: name -> "ok" or
    "DecodeError" (a C stack overflow would kill the test process instead)."""
    results: dict[str, str] = {}

    def work() -> None:
        for name, data in messages.items():
            try:
                decode(data)
                results[name] = "ok"
            except DecodeError:
                results[name] = "DecodeError"

    previous = threading.stack_size(128 * 1024)
    try:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    return results


def test_deep_input_on_a_small_thread_stack(core: ModuleType) -> None:
    # musl gives threads 128 KiB of stack: the scanner must not recurse per level (a crash
    # here kills the test process).
    limit = core.MAX_JSON_DEPTH
    messages = {
        "arrays": dumps([None, None, "t", "e", nested(limit - 1)]),
        "objects": b'[null,null,"t","e",'
        + b'{"k":' * (limit - 1)
        + b"1"
        + b"}" * (limit - 1)
        + b"]",
        "unclosed": b'[null,null,"t","e",' + b'{"k":[' * 50_000,
        "too deep": b'[null,null,"t","e",' + b"[" * 50_000 + b"]" * 50_000 + b"]",
    }
    results = outcomes_on_small_stack(core.decode_message, messages)
    assert results == {
        "arrays": "ok",
        "objects": "ok",
        "unclosed": "DecodeError",
        "too deep": "DecodeError",
    }


def test_encode_does_not_mutate(core: ModuleType) -> None:
    payload = {"b": [1, 2], "a": {"c": None}}
    core.encode_message(None, None, "t", "e", payload)
    assert payload == {"b": [1, 2], "a": {"c": None}}
    assert list(payload) == ["b", "a"]


# -- decoding --------------------------------------------------------------------------------

DOCUMENTS: list[str] = [
    '[null,null,"phoenix","phx_reply",{"status":"ok","response":{}}]',
    '["1","1","device","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]',
    '[null,null,"device","update",{"firmware_url":"https://x/y?a=1&b=2","size":1234567}]',
    ' \t\r\n[ null , "7" , "t" , "e" , [ ] ] \n\r\t ',
    '["","","","",""]',
    '[null,null,"t","e",[0,-0,1,-1,9223372036854775807,-9223372036854775808,'
    "9223372036854775808,123456789012345678901234567890,-123456789012345678901234567890]]",
    '[null,null,"t","e",[0.0,-0.0,1.5,1e5,1E5,1e+5,1e-5,1.25E-3,-2.5e+300,1e400,-1e400,1e-400]]',
    '[null,null,"t","e",[0.1,0.30000000000000004,1.7976931348623157e308,5e-324,2.2250738585072014e-308]]',
    '[null,null,"t","e",[123456789012345678.5,1.000000000000000000000001,0e0,0E-0,-0.0e-0]]',
    '[null,null,"t","e","\\"\\\\\\/\\b\\f\\n\\r\\t"]',
    '[null,null,"t","e","\\u0000\\u001f\\u0041\\u00e9\\u4e2d\\uFFFF\\uabcd\\uABCD"]',
    '[null,null,"t","e","\\ud83d\\ude00 pair"]',
    '[null,null,"t","e","\\ud800 lone high"]',
    '[null,null,"t","e","lone low \\udc00"]',
    '[null,null,"t","e","\\ud800\\u0041 high then letter"]',
    '[null,null,"t","e","\\udc00\\ud800 reversed"]',
    '[null,null,"t","e","\\ud800\\ud800\\udc00 double high"]',
    '[null,null,"t","e","\\ud800"]',
    '[null,null,"t","e","\\ud800\\"quote"]',
    '[null,null,"t","e","é ü 中文 😀 \x7f"]',
    '[null,null,"t","e","é\\n中\\t😀\\\\"]',
    '[null,null,"t","e",{"a":1,"a":2,"b":3,"a":4}]',
    '[null,null,"t","e",{"":{"":[{}]}}]',
    '[null,null,"t","e",[true,false,null,[true],{"t":false}]]',
    '[null,null,"t","e","' + "x" * 1000 + '"]',
    '[null,null,"t","e","' + "é" * 500 + '"]',
    '[null,null,"t","e","' + "\\n" * 300 + "é" * 10 + '"]',
    '[null,null,"t","e",{"key_that_is_exactly_24_b":1,"key_that_is_exactly_25_by":2}]',
    '[null,null,"t","e",{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,'
    '"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17,"k18":18,'
    '"k1":"dup","k17":"dup"}]',
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_decode_matches_json_loads(core: ModuleType, text: str) -> None:
    expected = json.loads(text)
    for data in (text.encode("utf-8", "surrogatepass"), text):
        message = core.decode_message(data)
        assert isinstance(message, core.Message)
        fields = [message.join_ref, message.ref, message.topic, message.event, message.payload]
        assert same(fields, expected)


def test_decode_input_types(core: ModuleType) -> None:
    data = b'["1","2","t","e",{"k":[1,"v"]}]'
    expected = core.Message("1", "2", "t", "e", {"k": [1, "v"]})
    padded = bytearray(b"xx" + data + b"yy")
    for value in (
        data,
        bytearray(data),
        memoryview(data),
        memoryview(padded)[2:-2],
        memoryview(b"".join(bytes([b, 0]) for b in data))[::2],  # not contiguous
        data.decode(),
    ):
        assert core.decode_message(value) == expected


def test_decode_str_with_lone_surrogates(core: ModuleType) -> None:
    # json.loads keeps raw surrogate characters of a str input; so do we.
    text = '["\ud800","r","t\udfff","e",{"\udc00":"\ud83d\ude00 \ud83d"}]'
    message = core.decode_message(text)
    assert same(list(message), json.loads(text))
    bad = '[null,null,"t","e","\ud800' + '\x01"]'
    with pytest.raises(DecodeError):
        core.decode_message(bad)
    with pytest.raises(DecodeError):
        core.decode_message('[null,null,"t","e",\ud800]')


def test_decode_rejects_non_buffers(core: ModuleType) -> None:
    for value in (None, 5, ["x"], {"a": 1}):
        with pytest.raises(TypeError):
            core.decode_message(value)


INVALID_JSON: list[bytes] = [
    b"",
    b" \t\n\r",
    b"[",
    b"]",
    b'[null,null,"t","e",{}',
    b'[null,null,"t","e",{}]]',
    b'[null,null,"t","e",{}] x',
    b'[null,null,"t","e",{}]\x00',
    b'[null,null,"t","e",{}]\x0c',
    b'\x0b[null,null,"t","e",{}]',
    b'\xc2\xa0[null,null,"t","e",{}]',
    b'\xef\xbb\xbf[null,null,"t","e",{}]',
    b'[null,null,"t","e",{},]',
    b'[null,null,"t","e",[1,]]',
    b'[null,null,"t","e",{"a":1,}]',
    b'[null,null,"t","e",{,}]',
    b'[null,null,"t","e",{"a" 1}]',
    b'[null,null,"t","e",{"a":}]',
    b'[null,null,"t","e",{a:1}]',
    b'[null,null,"t","e",{1:1}]',
    b"[null,null,'t',\"e\",{}]",
    b'[null,null,"t","e",NaN]',
    b'[null,null,"t","e",Infinity]',
    b'[null,null,"t","e",-Infinity]',
    b'[null,null,"t","e",[NaN]]',
    b'[null,null,"t","e",{"x":-Infinity}]',
    b'[null,null,"t","e",nan]',
    b'[null,null,"t","e",01]',
    b'[null,null,"t","e",-01]',
    b'[null,null,"t","e",1.]',
    b'[null,null,"t","e",.5]',
    b'[null,null,"t","e",1.e5]',
    b'[null,null,"t","e",1e]',
    b'[null,null,"t","e",1e+]',
    b'[null,null,"t","e",+1]',
    b'[null,null,"t","e",-]',
    b'[null,null,"t","e",- 1]',
    b'[null,null,"t","e",0x10]',
    b'[null,null,"t","e",1_000]',
    b'[null,null,"t","e",nul]',
    b'[null,null,"t","e",True]',
    b'[null,null,"t","e",tru]',
    b'[null,null,"t","e",fals]',
    b'[null,null,"t","e","unterminated]',
    b'[null,null,"t","e","tab\there"]',
    b'[null,null,"t","e","newline\nhere"]',
    b'[null,null,"t","e","nul\x00here"]',
    b'[null,null,"t","e","\x1f"]',
    b'[null,null,"t","e","bad escape \\x41"]',
    b'[null,null,"t","e","bad escape \\a"]',
    b'[null,null,"t","e","\\u12"]',
    b'[null,null,"t","e","\\u12G4"]',
    b'[null,null,"t","e","\\u"]',
    b'[null,null,"t","e","\\ud800\\u12"]',
    b'[null,null,"t","e","\\ud800\\uzzzz"]',
    b'[null,null,"t","e","trailing backslash\\"]',
    b'[null,null,"t","e","\\"]',
    b'[null,null,"t","e","\\',
    b'[null,null,"t","e","\\u00e9\\',
    b'[null,null,"t","e",["escaped then control \\n \x01"]]',
    b'[null\x00,null,"t","e",{}]',
]

INVALID_UTF8: list[bytes] = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xc2",
    b"\xc2\x41",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf0\x9f\x98",
    b"\xe4\xb8\xad\xff",
]


@pytest.mark.parametrize("data", INVALID_JSON)
def test_decode_rejects_invalid_json(core: ModuleType, data: bytes) -> None:
    with pytest.raises(DecodeError):
        core.decode_message(data)
    with pytest.raises(DecodeError):
        core.decode_message(data.decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("bad", INVALID_UTF8)
@pytest.mark.parametrize("escaped", [False, True])
def test_decode_rejects_invalid_utf8(core: ModuleType, bad: bytes, escaped: bool) -> None:
    # Inside a string (the only place where non-ASCII bytes can be valid), with and without an
    # escape in the same string (two different decoding paths), and outside any string.
    prefix = b"\\n" if escaped else b""
    with pytest.raises(DecodeError):
        core.decode_message(b'[null,null,"t","e","' + prefix + b"ok " + bad + b' ok"]')
    with pytest.raises(DecodeError):
        core.decode_message(b'[null,null,"t","e",{"' + prefix + bad + b'":1}]')
    with pytest.raises(DecodeError):
        core.decode_message(b'[null,null,"t","e",' + bad + b"]")


def test_decode_valid_utf8_edges(core: ModuleType) -> None:
    for char in (
        "\x7f",
        "\x80",
        "\u07ff",
        "\u0800",
        "\ud7ff",
        "\ue000",
        "\uffff",
        "\U00010000",
        "\U0010ffff",
    ):
        for prefix in ("", "\\t"):
            text = f'[null,null,"t","e","{prefix}{char}"]'
            assert core.decode_message(text.encode()).payload == json.loads(text)[4]


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "{}",
        '{"join_ref":null}',
        '"string"',
        "42",
        "[]",
        '["1"]',
        '[null,null,"t","e"]',
        '[null,null,"t","e",{},{}]',
        '[null,null,"t","e",{},null,null,null]',
        '[1,null,"t","e",{}]',
        '[null,1,"t","e",{}]',
        '[null,true,"t","e",{}]',
        '[[],null,"t","e",{}]',
        '[{},null,"t","e",{}]',
        '[null,null,null,"e",{}]',
        '[null,null,"t",null,{}]',
        '[null,null,1,"e",{}]',
        '[null,null,"t",1.5,{}]',
        '[null,null,["t"],"e",{}]',
        '[null,null,"t",{"e":1},{}]',
        '[null,null,"t",false,{}]',
    ],
)
def test_decode_rejects_wrong_shape(core: ModuleType, text: str) -> None:
    with pytest.raises(DecodeError, match=r"(?i)phoenix message|must be"):
        core.decode_message(text.encode())


def test_decode_payload_may_be_any_value(core: ModuleType) -> None:
    for payload in ("null", "1", '"s"', "[1]", "true", "1.5"):
        message = core.decode_message(f'[null,null,"t","e",{payload}]'.encode())
        assert same(message.payload, json.loads(payload))


def test_decode_int_digit_limit(core: ModuleType) -> None:
    limit = sys.get_int_max_str_digits()
    if limit == 0:
        pytest.skip("the int digit limit is disabled")
    ok = "9" * limit
    assert core.decode_message(f'[null,null,"t","e",{ok}]'.encode()).payload == int(ok)
    with pytest.raises(DecodeError):
        core.decode_message(f'[null,null,"t","e",{"9" * (limit + 1)}]'.encode())
    with pytest.raises(DecodeError):
        core.decode_message(f'[null,null,"t","e",[-{"9" * (limit + 1)}]]'.encode())


def test_decode_long_float_token(core: ModuleType) -> None:
    token = "0." + "1" * 400 + "e-5"
    message = core.decode_message(f'[null,null,"t","e",{token}]'.encode())
    assert message.payload == float(token)


def test_decode_error_is_remote_protocol_error(core: ModuleType) -> None:
    from nhlink.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError):
        core.decode_message(b"nope")


def test_truncation_at_every_byte(core: ModuleType) -> None:
    data = core.encode_message(
        "1", "22", "device", "update", {"url": "https://é/😀?a=\n", "n": [1.5, -20, None, True]}
    )
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            core.decode_message(data[:cut])
    assert core.decode_message(data).payload["n"] == [1.5, -20, None, True]


def test_round_trip(core: ModuleType) -> None:
    for payload in PAYLOADS:
        if isinstance(payload, (OnlyX, Reversed, tuple)) or payload == {"tuple": ()}:
            continue
        data = core.encode_message("1", None, "t", "e", payload)
        expected = json.loads(data)
        message = core.decode_message(data)
        assert same(message.payload, expected[4])


# -- Message ---------------------------------------------------------------------------------


def test_message_basics(core: ModuleType) -> None:
    message = core.Message("1", "2", "device", "update", {"a": [1]})
    assert (message.join_ref, message.ref, message.topic, message.event) == (
        "1",
        "2",
        "device",
        "update",
    )
    assert message.payload == {"a": [1]}
    join_ref, ref, topic, event, payload = message
    assert (join_ref, ref, topic, event, payload) == ("1", "2", "device", "update", {"a": [1]})
    assert list(message) == ["1", "2", "device", "update", {"a": [1]}]
    assert repr(message) == (
        "Message(join_ref='1', ref='2', topic='device', event='update', payload={'a': [1]})"
    )
    assert message == core.Message("1", "2", "device", "update", {"a": [1]})
    assert message != core.Message("1", "2", "device", "update", {"a": [2]})
    assert message != core.Message(None, "2", "device", "update", {"a": [1]})
    assert message != ("1", "2", "device", "update", {"a": [1]})
    assert message != "message"
    assert (message == object()) is False
    with pytest.raises(TypeError):
        hash(message)
    message.payload = None
    assert message.payload is None


def test_message_equal_across_implementations(py_core: ModuleType, c_core: ModuleType) -> None:
    args = ("1", None, "t", "e", {"x": [1.5]})
    py_message, c_message = py_core.Message(*args), c_core.Message(*args)
    assert py_message == c_message
    assert c_message == py_message
    assert (py_message != c_message) is False
    assert repr(py_message) == repr(c_message)
    assert c_message != py_core.Message("2", None, "t", "e", {"x": [1.5]})
    data = c_core.encode_message(*args)
    assert py_core.decode_message(data) == c_core.decode_message(data)


def test_message_compares_to_lookalikes(core: ModuleType) -> None:
    class Lookalike:
        join_ref, ref, topic, event, payload = "1", "2", "t", "e", 3

    assert core.Message("1", "2", "t", "e", 3) == Lookalike()
    assert core.Message("1", "2", "t", "e", 4) != Lookalike()


# -- binary frames (PROTOCOL.md §4.5) --------------------------------------------------------


def push_frame(join_ref: bytes, topic: bytes, event: bytes, data: bytes) -> bytes:
    return bytes([0, len(join_ref), len(topic), len(event)]) + join_ref + topic + event + data


def reply_frame(join_ref: bytes, ref: bytes, topic: bytes, status: bytes, data: bytes) -> bytes:
    sizes = bytes([1, len(join_ref), len(ref), len(topic), len(status)])
    return sizes + join_ref + ref + topic + status + data


def broadcast_frame(topic: bytes, event: bytes, data: bytes) -> bytes:
    return bytes([2, len(topic), len(event)]) + topic + event + data


BINARY_FRAMES: list[tuple[bytes, tuple[Any, ...]]] = [
    (
        push_frame(b"12", b"device", b"file", b"\x00\x01raw"),
        ("12", None, "device", "file", b"\x00\x01raw"),
    ),
    (push_frame(b"", b"t", b"e", b""), (None, None, "t", "e", b"")),
    (
        push_frame("é".encode(), "中".encode(), "😀".encode(), b"\xff"),
        ("é", None, "中", "😀", b"\xff"),
    ),
    (
        reply_frame(b"1", b"7", b"device", b"ok", b"\xde\xad"),
        ("1", "7", "device", "phx_reply", {"status": "ok", "response": b"\xde\xad"}),
    ),
    (
        reply_frame(b"", b"", b"t", b"error", b""),
        (None, None, "t", "phx_reply", {"status": "error", "response": b""}),
    ),
    (broadcast_frame(b"device", b"reboot", b"{}"), (None, None, "device", "reboot", b"{}")),
    (broadcast_frame(b"", b"", b""), (None, None, "", "", b"")),
    (
        broadcast_frame(b"t" * 255, b"e" * 255, b"d" * 1000),
        (None, None, "t" * 255, "e" * 255, b"d" * 1000),
    ),
]


@pytest.mark.parametrize(("frame", "expected"), BINARY_FRAMES)
def test_decode_binary(core: ModuleType, frame: bytes, expected: tuple[Any, ...]) -> None:
    for data in (frame, bytearray(frame), memoryview(frame), memoryview(b"-" + frame)[1:]):
        message = core.decode_binary(data)
        assert isinstance(message, core.Message)
        assert same(list(message), list(expected))
    assert type(core.decode_binary(frame).payload) in (bytes, dict)
    for cut in range(len(frame)):
        truncated = frame[:cut]
        # A shorter frame is only valid where the cut falls in the raw data.
        header = {0: 4, 1: 5, 2: 3}[frame[0]]
        fields_end = header + sum(frame[1:header])
        if cut >= fields_end:
            continue
        with pytest.raises(DecodeError):
            core.decode_binary(truncated)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x03",
        b"\x03\x00\x00\x00",
        b"\xff\x01\x01\x01abc",
        push_frame(b"\xff", b"t", b"e", b""),
        push_frame(b"1", b"\xc3", b"e", b""),
        push_frame(b"1", b"t", b"\xed\xa0\x80", b""),
        reply_frame(b"1", b"\x80", b"t", b"ok", b""),
        reply_frame(b"1", b"2", b"t", b"\xc0\x80", b""),
        broadcast_frame(b"\xf5", b"e", b""),
        bytes([0, 5, 1, 1]) + b"ab",
        bytes([1, 0, 0, 0, 3]) + b"ok",
        bytes([2, 200, 0]) + b"x" * 199,
    ],
)
def test_decode_binary_rejects(core: ModuleType, frame: bytes) -> None:
    with pytest.raises(DecodeError):
        core.decode_binary(frame)


def test_decode_binary_rejects_non_buffers(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.decode_binary("text")
    with pytest.raises(TypeError):
        core.decode_binary(7)
