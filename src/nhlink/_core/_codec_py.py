"""Phoenix Channels v2 message codec (PROTOCOL.md §4), pure Python.

The compiled twin is :mod:`nhlink._core._codec_c` (a hand-written JSON encoder and scanner); both
give the same results byte for byte. This one is built on the standard library's :mod:`json`
with encoder and decoder objects made once, at import.

Wire format (§4.1): every text frame holds one JSON array of exactly five elements,
``[join_ref, ref, topic, event, payload]``; ``join_ref`` and ``ref`` are strings or null,
``topic`` and ``event`` strings, ``payload`` any JSON value. Binary frames (§4.5) carry raw
payloads; NervesHub never sends them under vsn 2.0.0, :func:`decode_binary` exists for
completeness.

The JSON dialect is exactly ``json.dumps(..., ensure_ascii=False, separators=(",", ":"),
allow_nan=False)`` out and ``json.loads`` in, except that ``NaN``/``Infinity`` are rejected in
both directions and nesting deeper than :data:`MAX_JSON_DEPTH` (counting the outer array) is
refused: a peer must not be able to make us recurse without bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import DecodeError, EncodeError

__all__ = [
    "MAX_JSON_DEPTH",
    "Buffer",
    "Message",
    "decode_binary",
    "decode_message",
    "encode_message",
]

Buffer = bytes | bytearray | memoryview

#: Deepest nesting of arrays/objects accepted in a message, the outer 5-element array included.
MAX_JSON_DEPTH = 256

# Binary frame kinds of the V2 serializer (Phoenix.Socket.V2.JSONSerializer, phoenix.js).
_PUSH = 0
_REPLY = 1
_BROADCAST = 2
_PHX_REPLY = "phx_reply"


class Message:
    """One Phoenix Channels message: ``[join_ref, ref, topic, event, payload]``.

    Compares equal to any object with the same five attributes (so a compiled ``Message``
    equals a pure one) and unpacks like a tuple: ``join_ref, ref, topic, event, payload = m``.
    """

    # Defining __eq__ makes instances unhashable, as fits a mutable value object.
    __slots__ = ("event", "join_ref", "payload", "ref", "topic")

    def __init__(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> None:
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic
        self.event = event
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        try:
            that: Any = other
            return bool(
                self.topic == that.topic
                and self.event == that.event
                and self.ref == that.ref
                and self.join_ref == that.join_ref
                and self.payload == that.payload
            )
        except AttributeError:
            return NotImplemented

    def __repr__(self) -> str:
        return (
            f"Message(join_ref={self.join_ref!r}, ref={self.ref!r}, topic={self.topic!r}, "
            f"event={self.event!r}, payload={self.payload!r})"
        )

    def __iter__(self) -> Iterator[Any]:
        return iter((self.join_ref, self.ref, self.topic, self.event, self.payload))


# -- encoding ----------------------------------------------------------------------------------

# One encoder for the process: json.JSONEncoder keeps no state between calls.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode = _ENCODER.encode


def _too_deep(value: Any, limit: int) -> bool:
    """True when arrays/objects nest more than ``limit`` levels in ``value`` (``[]`` is 1).

    Walks the containers the way :mod:`json` does (list/tuple and dict, subclasses included),
    iteratively, and stops as soon as the limit is passed.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, str):
            continue
        if isinstance(obj, (list, tuple)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in obj)
        elif isinstance(obj, dict):
            if depth > limit:
                return True
            values = obj.values() if type(obj) is dict else (v for _, v in obj.items())
            stack.extend((item, depth + 1) for item in values)
    return False


def _check_refs(join_ref: object, ref: object, topic: object, event: object) -> None:
    if join_ref is not None and not isinstance(join_ref, str):
        raise EncodeError(f"join_ref must be a str or None, not {type(join_ref).__name__}")
    if ref is not None and not isinstance(ref, str):
        raise EncodeError(f"ref must be a str or None, not {type(ref).__name__}")
    if not isinstance(topic, str):
        raise EncodeError(f"topic must be a str, not {type(topic).__name__}")
    if not isinstance(event, str):
        raise EncodeError(f"event must be a str, not {type(event).__name__}")


def encode_message(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> bytes:
    """The UTF-8 JSON text of ``[join_ref, ref, topic, event, payload]`` for a text frame.

    Raises :class:`EncodeError` when the payload has no JSON form (unsupported type, NaN or
    infinity, a lone surrogate, a circular reference, nesting deeper than MAX_JSON_DEPTH) or
    the refs, topic or event have the wrong type. Does not mutate ``payload``.
    """
    _check_refs(join_ref, ref, topic, event)
    try:
        # UnicodeEncodeError (a lone surrogate) is a ValueError; RecursionError on deep input.
        data = _encode([join_ref, ref, topic, event, payload]).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"cannot encode the {event!r} message as JSON: {exc}") from exc
    # Cheap filter first: brackets inside strings count too, so only a hint to walk.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _too_deep(
        payload, MAX_JSON_DEPTH - 1
    ):
        raise EncodeError(
            f"cannot encode the {event!r} message: nesting deeper than {MAX_JSON_DEPTH} levels"
        )
    return data


# -- decoding ----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not valid JSON")


# One decoder for the process; its C scanner is called directly (``scan_once``), which skips
# the two regular-expression whitespace matches of ``JSONDecoder.decode`` in the common case.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# typeshed does not declare the (public, documented-by-use) scanner attribute.
_scan_once: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE = " \t\n\r"


def _as_text(data: Any) -> str:
    """``data`` as a str: strict UTF-8 for bytes-like input (DecodeError when invalid)."""
    try:
        if type(data) is bytes:
            return data.decode("utf-8")
        if isinstance(data, str):
            return data
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = data.tobytes()
        return str(data, "utf-8")  # any bytes-like object; TypeError for anything else
    except UnicodeDecodeError as exc:
        raise DecodeError(f"message is not valid UTF-8: {exc}") from exc


# JSON strings (escapes included) and the brackets outside them, for _deeper_than.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _deeper_than(text: str, limit: int) -> bool:
    """True when arrays/objects in ``text`` (any text) open more than ``limit`` levels deep.

    Checked *before* json.loads, whose C scanner recurses once per level: unchecked, a deep
    message would overflow a small thread stack (musl gives threads 128 KiB) before json's own
    recursion limit. Where text is not JSON, json.loads fails no deeper than this count.
    """
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _loads(text: str) -> Any:
    """``json.loads(text)``, minus NaN/Infinity; DecodeError instead of ValueError."""
    # Cheap filter first: brackets inside strings count too, so only a hint to scan.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(text, MAX_JSON_DEPTH):
        raise DecodeError(f"message nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            # Leading whitespace or not JSON: let the full decoder skip or explain.
            return _DECODER.decode(text)
        if end != len(text) and text[end:].strip(_WHITESPACE):
            raise DecodeError(f"extra data after the JSON value at character {end}")
        return value
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, too deep
        raise DecodeError(f"message is not valid JSON: {exc}") from exc


def decode_message(data: Buffer | str, /) -> Message:
    """Parse one text frame into a :class:`Message`.

    ``data``: the frame payload, bytes-like (strict UTF-8) or str. Raises
    :class:`DecodeError` for invalid UTF-8 or JSON, NaN/Infinity, nesting deeper than
    MAX_JSON_DEPTH, or a value that is not a 5-element array of the right types.
    """
    text = _as_text(data)
    value = _loads(text)
    if type(value) is not list:
        raise DecodeError(
            f"a Phoenix message must be a JSON array, got {type(value).__name__} "
            "(JSON " + ("object" if type(value) is dict else "scalar") + ")"
        )
    if len(value) != 5:
        raise DecodeError(
            f"a Phoenix message must be an array of 5 elements "
            f"[join_ref, ref, topic, event, payload], got {len(value)}"
        )
    join_ref, ref, topic, event, payload = value
    if join_ref is not None and type(join_ref) is not str:
        raise DecodeError(f"join_ref must be a string or null, got {_json_type(join_ref)}")
    if ref is not None and type(ref) is not str:
        raise DecodeError(f"ref must be a string or null, got {_json_type(ref)}")
    if type(topic) is not str:
        raise DecodeError(f"topic must be a string, got {_json_type(topic)}")
    if type(event) is not str:
        raise DecodeError(f"event must be a string, got {_json_type(event)}")
    return Message(join_ref, ref, topic, event, payload)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field(buf: bytes, start: int, size: int, what: str) -> str:
    try:
        return buf[start : start + size].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"binary frame: {what} is not valid UTF-8: {exc}") from exc


def decode_binary(data: Buffer, /) -> Message:
    """Parse one V2 binary frame (PROTOCOL.md §4.5) sent by the server.

    * push (kind 0): ``join_ref, topic, event`` then the raw data: the payload is ``bytes``;
    * reply (kind 1): ``join_ref, ref, topic, status`` then the data: the event is
      ``"phx_reply"`` and the payload ``{"status": status, "response": bytes}``;
    * broadcast (kind 2): ``topic, event`` then the data.

    Field sizes are single bytes; an empty join_ref or ref is ``None``. Raises
    :class:`DecodeError` for an unknown kind, a truncated frame, or a field that is not UTF-8.
    """
    buf = data if type(data) is bytes else memoryview(data).tobytes()
    n = len(buf)
    if n == 0:
        raise DecodeError("binary frame: empty")
    kind = buf[0]
    if kind == _PUSH:
        header = 4
    elif kind == _REPLY:
        header = 5
    elif kind == _BROADCAST:
        header = 3
    else:
        raise DecodeError(
            f"binary frame: unknown kind {kind} (expected 0 push, 1 reply, 2 broadcast)"
        )
    if n < header:
        raise DecodeError(f"binary frame: truncated header ({n} of {header} bytes)")
    sizes = buf[1:header]
    if header + sum(sizes) > n:
        raise DecodeError(
            f"binary frame: truncated: header announces {header + sum(sizes)} bytes of fields, "
            f"frame has {n}"
        )
    pos = header
    fields: list[str] = []
    names = {_PUSH: ("join_ref", "topic", "event"), _REPLY: ("join_ref", "ref", "topic", "status")}
    for name, size in zip(names.get(kind, ("topic", "event")), sizes, strict=True):
        fields.append(_field(buf, pos, size, name))
        pos += size
    payload = buf[pos:]
    if kind == _PUSH:
        return Message(fields[0] or None, None, fields[1], fields[2], payload)
    if kind == _REPLY:
        return Message(
            fields[0] or None,
            fields[1] or None,
            fields[2],
            _PHX_REPLY,
            {"status": fields[3], "response": payload},
        )
    return Message(None, None, fields[0], fields[1], payload)
