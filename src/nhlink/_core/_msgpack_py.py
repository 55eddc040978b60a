"""Phoenix MessagePack message codec (vsn 3.0.0, PROTOCOL.md §4.6), pure Python.

The compiled twin is :mod:`nhlink._core._msgpack_c`; both give the same results byte for byte,
which the property tests check on random messages (and against the ``msgpack`` package). No
dependency on any MessagePack library.

Wire format: every frame is a **binary** WebSocket frame holding exactly one MessagePack value,
an array of five elements ``[join_ref, ref, topic, event, payload]``.

Encoding writes what the ``msgpack`` package writes with its defaults (``use_bin_type=True``):
nil, bool, integers in the smallest format (unsigned formats for non-negative values), floats
always as float 64, ``str`` as str 8/16/32 (valid UTF-8), ``bytes``-like as bin, lists and tuples
as arrays, dicts as maps. Map keys are strings: a non-string key is turned into one exactly as
:mod:`json` does (``1`` → ``"1"``, ``True`` → ``"true"``, ``None`` → ``"null"``), so a payload
means the same thing under both serializers. Refused with :class:`EncodeError`: NaN and ±infinity,
integers outside int64/uint64, lone surrogates, other types, nesting deeper than
:data:`MAX_MSGPACK_DEPTH` (the outer array included; a circular reference ends there too).

Decoding reads the whole format the server can send: nil, bool, every int width, float 32/64,
str and bin 8/16/32 (str as text, strict UTF-8; bin as ``bytes``), array and map 16/32 with
string keys. Refused with :class:`DecodeError`: ext and fixext values (the timestamp too: no
device payload carries one), the never-used byte ``0xc1``, non-finite floats, map keys that are
not strings, lengths that run past the end, bytes after the value, nesting deeper than
:data:`MAX_MSGPACK_DEPTH`, an envelope that is not a 5-element array of the right types.
Integer refs (the server turns refs into strings, but a peer may send integers) become strings.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from ..errors import DecodeError, EncodeError
from ._codec_py import Buffer, Message

__all__ = ["MAX_MSGPACK_DEPTH", "decode_msgpack", "encode_msgpack"]

#: Deepest nesting of arrays/maps accepted in a message, the outer 5-element array included.
MAX_MSGPACK_DEPTH = 256

_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)

_pack_B = struct.Struct(">B").pack
_pack_H = struct.Struct(">H").pack
_pack_I = struct.Struct(">I").pack
_pack_Q = struct.Struct(">Q").pack
_pack_b = struct.Struct(">b").pack
_pack_h = struct.Struct(">h").pack
_pack_i = struct.Struct(">i").pack
_pack_q = struct.Struct(">q").pack
_pack_d = struct.Struct(">d").pack
_FLOAT64 = b"\xcb"


# -- encoding ----------------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


def _int(out: bytearray, v: int) -> None:
    if v >= 0:
        if v < 0x80:
            out.append(v)
        elif v <= 0xFF:
            out += b"\xcc" + _pack_B(v)
        elif v <= 0xFFFF:
            out += b"\xcd" + _pack_H(v)
        elif v <= 0xFFFFFFFF:
            out += b"\xce" + _pack_I(v)
        elif v <= _UINT64_MAX:
            out += b"\xcf" + _pack_Q(v)
        else:
            raise EncodeError(f"integer {v} does not fit in 64 bits")
    elif v >= -32:
        out.append(v & 0xFF)
    elif v >= -0x80:
        out += b"\xd0" + _pack_b(v)
    elif v >= -0x8000:
        out += b"\xd1" + _pack_h(v)
    elif v >= -0x80000000:
        out += b"\xd2" + _pack_i(v)
    elif v >= _INT64_MIN:
        out += b"\xd3" + _pack_q(v)
    else:
        raise EncodeError(f"integer {v} does not fit in 64 bits")


def _str(out: bytearray, s: str) -> None:
    try:
        data = str.encode(s, "utf-8")  # str subclasses: their value, never their methods
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not valid Unicode (lone surrogate?): {exc}") from exc
    n = len(data)
    if n < 32:
        out.append(0xA0 | n)
    elif n <= 0xFF:
        out += b"\xd9" + _pack_B(n)
    elif n <= 0xFFFF:
        out += b"\xda" + _pack_H(n)
    elif n <= 0xFFFFFFFF:
        out += b"\xdb" + _pack_I(n)
    else:
        raise EncodeError("string longer than 4 GiB")
    out += data


def _bin(out: bytearray, data: bytes | bytearray | memoryview) -> None:
    view = bytes(data) if isinstance(data, memoryview) else data  # any shape, as bytes
    n = len(view)
    if n <= 0xFF:
        out += b"\xc4" + _pack_B(n)
    elif n <= 0xFFFF:
        out += b"\xc5" + _pack_H(n)
    elif n <= 0xFFFFFFFF:
        out += b"\xc6" + _pack_I(n)
    else:
        raise EncodeError("binary value longer than 4 GiB")
    out += view


def _header(out: bytearray, n: int, fix: int, m16: bytes, m32: bytes) -> None:
    if n < 16:
        out.append(fix | n)
    elif n <= 0xFFFF:
        out += m16 + _pack_H(n)
    elif n <= 0xFFFFFFFF:
        out += m32 + _pack_I(n)
    else:
        raise EncodeError("array or map with more than 2**32-1 elements")


def _key(k: Any) -> str:
    """A map key as :mod:`json` writes it: str as is; int, float, bool, None coerced."""
    if isinstance(k, str):
        return k
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return int.__repr__(k)
    if isinstance(k, float):
        if not math.isfinite(k):
            raise EncodeError(f"map key {k!r} is not a finite number")
        return float.__repr__(k)
    raise EncodeError(f"map keys must be str, int, float, bool or None, not {type(k).__name__}")


def _enc(out: bytearray, v: Any, depth: int) -> None:
    t = type(v)
    if t is str:
        _str(out, v)
    elif v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif t is int:
        _int(out, v)
    elif t is float:
        if not math.isfinite(v):
            raise EncodeError(f"{v!r} has no place in a message (NaN and infinity are refused)")
        out += _FLOAT64 + _pack_d(v)
    elif t is dict or (t is not list and t is not tuple and isinstance(v, dict)):
        if depth >= MAX_MSGPACK_DEPTH:
            raise _TooDeep
        entries = v.items() if t is dict else list(v.items())  # a subclass: count what it yields
        _header(out, len(entries), 0x80, b"\xde", b"\xdf")
        for k, item in entries:
            _str(out, _key(k))
            _enc(out, item, depth + 1)
    elif t is list or t is tuple or isinstance(v, (list, tuple)):
        if depth >= MAX_MSGPACK_DEPTH:
            raise _TooDeep
        items = v if t is list or t is tuple else list(v)  # a subclass: count what it yields
        _header(out, len(items), 0x90, b"\xdc", b"\xdd")
        for item in items:
            _enc(out, item, depth + 1)
    elif isinstance(v, str):
        _str(out, v)
    elif isinstance(v, int):  # int subclasses (IntEnum, ...); bool handled above
        _int(out, int(v))
    elif isinstance(v, float):
        _enc(out, float(v), depth)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _bin(out, v)
    else:
        raise EncodeError(f"Object of type {t.__name__} has no MessagePack form")


def _ref(out: bytearray, ref: object, what: str) -> None:
    if ref is None:
        out.append(0xC0)
    elif isinstance(ref, str):
        _str(out, ref)
    else:
        raise EncodeError(f"{what} must be a str or None, not {type(ref).__name__}")


def encode_msgpack(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> bytes:
    """The MessagePack bytes of ``[join_ref, ref, topic, event, payload]`` for a binary frame.

    Raises :class:`EncodeError` when the payload has no MessagePack form here (see the module
    docstring) or the refs, topic or event have the wrong type. Does not mutate ``payload``.
    """
    if not isinstance(topic, str):
        raise EncodeError(f"topic must be a str, not {type(topic).__name__}")
    if not isinstance(event, str):
        raise EncodeError(f"event must be a str, not {type(event).__name__}")
    out = bytearray(b"\x95")
    try:
        _ref(out, join_ref, "join_ref")
        _ref(out, ref, "ref")
        _str(out, topic)
        _str(out, event)
        _enc(out, payload, 1)
    except _TooDeep:
        raise EncodeError(
            f"cannot encode the {event!r} message: nesting deeper than {MAX_MSGPACK_DEPTH} levels"
        ) from None
    except EncodeError as exc:
        raise EncodeError(f"cannot encode the {event!r} message as MessagePack: {exc}") from None
    return bytes(out)


# -- decoding ----------------------------------------------------------------------------------

_unpack_H = struct.Struct(">H").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_b = struct.Struct(">b").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

# Markers of ext 8/16/32 and fixext 1/2/4/8/16.
_EXT_MARKERS = frozenset((0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8))


class _Reader:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def fail(self, what: str, at: int | None = None) -> DecodeError:
        return DecodeError(
            f"message is not valid MessagePack: {what} at byte {self.pos if at is None else at}"
        )

    def need(self, n: int, what: str) -> int:
        """Start of the next ``n`` bytes (advancing past them); DecodeError if truncated."""
        pos = self.pos
        if self.end - pos < n:
            raise self.fail(f"truncated {what}", pos)
        self.pos = pos + n
        return pos

    def length(self, size: int, what: str) -> int:
        at = self.need(size, f"{what} length")
        if size == 1:
            return self.buf[at]
        if size == 2:
            return int(_unpack_H(self.buf, at)[0])
        return int(_unpack_I(self.buf, at)[0])

    def text(self, n: int) -> str:
        at = self.need(n, "string")
        try:
            return self.buf[at : at + n].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"string is not valid UTF-8 ({exc.reason})", at) from None

    def value(self, depth: int) -> Any:
        at = self.need(1, "value")
        b = self.buf[at]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth, at)
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth, at)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b == 0xD9:
            return self.text(self.length(1, "str 8"))
        if b == 0xDA:
            return self.text(self.length(2, "str 16"))
        if b == 0xDB:
            return self.text(self.length(4, "str 32"))
        if 0xCC <= b <= 0xD3:
            return self.integer(b)
        if b == 0xCA or b == 0xCB:
            if b == 0xCA:
                x = float(_unpack_f(self.buf, self.need(4, "float 32"))[0])
            else:
                x = float(_unpack_d(self.buf, self.need(8, "float 64"))[0])
            if not math.isfinite(x):
                raise self.fail("NaN or infinity (refused)", at)
            return x
        if 0xC4 <= b <= 0xC6:
            n = self.length(1 << (b - 0xC4), "bin")
            start = self.need(n, "bin")
            return self.buf[start : start + n]
        if b == 0xDC or b == 0xDD:
            return self.array(self.length(2 if b == 0xDC else 4, "array"), depth, at)
        if b == 0xDE or b == 0xDF:
            return self.map(self.length(2 if b == 0xDE else 4, "map"), depth, at)
        if b in _EXT_MARKERS:
            raise self.fail("ext values are not accepted (PROTOCOL.md §4.6)", at)
        raise self.fail(f"0x{b:02x} is not a MessagePack type", at)

    def integer(self, b: int) -> int:
        buf = self.buf
        if b == 0xCC:
            return buf[self.need(1, "uint 8")]
        if b == 0xCD:
            return int(_unpack_H(buf, self.need(2, "uint 16"))[0])
        if b == 0xCE:
            return int(_unpack_I(buf, self.need(4, "uint 32"))[0])
        if b == 0xCF:
            return int(_unpack_Q(buf, self.need(8, "uint 64"))[0])
        if b == 0xD0:
            return int(_unpack_b(buf, self.need(1, "int 8"))[0])
        if b == 0xD1:
            return int(_unpack_h(buf, self.need(2, "int 16"))[0])
        if b == 0xD2:
            return int(_unpack_i(buf, self.need(4, "int 32"))[0])
        return int(_unpack_q(buf, self.need(8, "int 64"))[0])

    def array(self, n: int, depth: int, at: int) -> list[Any]:
        if depth >= MAX_MSGPACK_DEPTH:
            raise DecodeError(f"message nests deeper than {MAX_MSGPACK_DEPTH} levels")
        if n > self.end - self.pos:  # every element takes at least one byte
            raise self.fail(f"array of {n} elements runs past the end", at)
        value = self.value
        return [value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int, at: int) -> dict[str, Any]:
        if depth >= MAX_MSGPACK_DEPTH:
            raise DecodeError(f"message nests deeper than {MAX_MSGPACK_DEPTH} levels")
        if 2 * n > self.end - self.pos:  # every entry takes at least two bytes
            raise self.fail(f"map of {n} entries runs past the end", at)
        result: dict[str, Any] = {}
        for _ in range(n):
            key_at = self.pos
            key = self.key()
            if key is None:
                raise self.fail("map keys must be strings", key_at)
            result[key] = self.value(depth + 1)
        return result

    def key(self) -> str | None:
        at = self.need(1, "map key")
        b = self.buf[at]
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if 0xD9 <= b <= 0xDB:
            return self.text(self.length(1 << (b - 0xD9), "str"))
        return None


def _ref_of(value: Any, what: str) -> str | None:
    if value is None or type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise DecodeError(f"{what} must be a string, an integer or nil, got {_kind(value)}")


def _kind(value: Any) -> str:
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    return "nil"


def decode_msgpack(data: Buffer, /) -> Message:
    """Parse one binary frame of the vsn 3.0.0 serializer into a :class:`Message`.

    Raises :class:`DecodeError` for anything but exactly one MessagePack value that is a
    5-element array ``[join_ref, ref, topic, event, payload]`` with string-or-nil refs (integers
    are turned into strings) and string topic and event. See the module docstring.
    """
    try:
        buf = data if type(data) is bytes else memoryview(data).tobytes()
    except TypeError:
        raise TypeError(
            f"a MessagePack frame must be bytes-like, not {type(data).__name__}"
        ) from None
    reader = _Reader(buf)
    if not buf:
        raise DecodeError("message is not valid MessagePack: empty frame")
    first = buf[0]
    if 0x90 <= first <= 0x9F:
        count = first & 0x0F
        reader.pos = 1
    elif first == 0xDC or first == 0xDD:
        reader.pos = 1
        count = reader.length(2 if first == 0xDC else 4, "array")
    else:
        # Decode it anyway, for the error: invalid MessagePack says so before "not an array".
        value = reader.value(0)
        if reader.pos != reader.end:
            raise reader.fail("extra data after the MessagePack value")
        raise DecodeError(f"a Phoenix message must be a MessagePack array, got {_kind(value)}")
    if count != 5:
        raise DecodeError(
            "a Phoenix message must be an array of 5 elements "
            f"[join_ref, ref, topic, event, payload], got {count}"
        )
    join_ref = reader.value(1)
    ref = reader.value(1)
    topic = reader.value(1)
    event = reader.value(1)
    payload = reader.value(1)
    if reader.pos != reader.end:
        raise reader.fail("extra data after the MessagePack value")
    join_ref = _ref_of(join_ref, "join_ref")
    ref = _ref_of(ref, "ref")
    if type(topic) is not str:
        raise DecodeError(f"topic must be a string, got {_kind(topic)}")
    if type(event) is not str:
        raise DecodeError(f"event must be a string, got {_kind(event)}")
    return Message(join_ref, ref, topic, event, payload)
