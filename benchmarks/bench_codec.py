"""The Phoenix message codec, nhlink against the standard library and the fast JSON libraries.

Run: ``python -m pytest benchmarks/bench_codec.py -p no:cacheprovider --benchmark-only -q``.

Two messages a device really handles (PROTOCOL.md §4.1, §6.5, §7.1):

* ``fwup_progress`` (47 B), the message a device sends most: ``["1","7","device",
  "fwup_progress",{"value":42}]``;
* ``update`` (~700 B), the server push that starts a firmware update: a pre-signed S3 URL,
  ``firmware_meta``, size, upper-case checksum, one part checksum, deployment id.

Every rival does the same job as nhlink. Encoding: the five fields to UTF-8 JSON ``bytes``.
Decoding: UTF-8 ``bytes`` to a message object, with the same shape validation (a list of five,
refs str or null, topic and event str) and NaN/Infinity refused where the library would accept
them (json via ``parse_constant``; orjson and msgspec reject them already). Baseline: the
standard library with encoder/decoder objects made once (``json.JSONEncoder`` with
``ensure_ascii=False``, compact separators, ``allow_nan=False``; ``json.JSONDecoder``).

One round runs the call 100 times through ``map`` (C-level iteration, so the harness adds almost
nothing per call); ``extra_info`` carries ``impl``, ``items`` (100 messages) and ``unit``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from typing import Any

import pytest

from benchmarks._bench import optional, run
from nhlink.errors import DecodeError

BATCH = 100

SIGNATURE = "1f0c7e2d9b8a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"
UPDATE_PAYLOAD: dict[str, Any] = {
    "update_available": True,
    "firmware_url": (
        "https://nerves-hub.s3.amazonaws.com/firmware/5b1e7c2a.fw"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20260527T120000Z&X-Amz-Expires=86400"
        f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
    ),
    "firmware_meta": {
        "uuid": "5b1e7c2a-9d4f-4e8a-b3c6-0f1d2e3a4b5c",
        "product": "gateway",
        "version": "1.2.0",
        "architecture": "arm",
        "platform": "rpi4",
        "author": None,
        "description": None,
        "vcs_identifier": None,
        "misc": None,
    },
    "size": 1000448,
    "checksum": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
    "partials_checksums": ["2C26B46B68FFC68FF99B453C1D30413413422D706483BFA0F98A5E886266E7AE"],
    "deployment_id": 42,
}

MESSAGES: dict[str, tuple[Any, ...]] = {
    "fwup_progress 47 B": ("1", "7", "device", "fwup_progress", {"value": 42}),
    "update 700 B": (None, None, "device", "update", UPDATE_PAYLOAD),
}


NH_C = optional("nhlink._core.cython")
NH_PY = optional("nhlink._core.python")
ORJSON = optional("orjson")
MSGSPEC = optional("msgspec")


# --- rivals, each doing nhlink's job ----------------------------------------------------------


class Msg:
    """What the rivals' decoders return: the five fields, like nhlink's Message."""

    __slots__ = ("event", "join_ref", "payload", "ref", "topic")

    def __init__(self, join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> None:
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic
        self.event = event
        self.payload = payload


def validated(value: Any) -> Msg:
    """The shape validation nhlink does on every decoded message."""
    if type(value) is not list or len(value) != 5:
        raise DecodeError("not a 5-element array")
    join_ref, ref, topic, event, payload = value
    if join_ref is not None and type(join_ref) is not str:
        raise DecodeError("bad join_ref")
    if ref is not None and type(ref) is not str:
        raise DecodeError("bad ref")
    if type(topic) is not str or type(event) is not str:
        raise DecodeError("bad topic or event")
    return Msg(join_ref, ref, topic, event, payload)


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not JSON")


_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def json_encode(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> bytes:
    return _JSON_ENCODER.encode([join_ref, ref, topic, event, payload]).encode("utf-8")


def json_decode(data: bytes) -> Msg:
    return validated(_JSON_DECODER.decode(data.decode("utf-8")))


def rivals() -> dict[str, tuple[Callable[..., bytes], Callable[[bytes], object]]]:
    impls: dict[str, tuple[Callable[..., bytes], Callable[[bytes], object]]] = {}
    if NH_C is not None:
        impls["nhlink-cython"] = (NH_C.encode_message, NH_C.decode_message)
    if NH_PY is not None:
        impls["nhlink-python"] = (NH_PY.encode_message, NH_PY.decode_message)
    impls["json"] = (json_encode, json_decode)
    if ORJSON is not None:
        dumps, loads = ORJSON.dumps, ORJSON.loads

        def orjson_encode(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> bytes:
            return dumps([join_ref, ref, topic, event, payload])  # type: ignore[no-any-return]

        def orjson_decode(data: bytes) -> Msg:
            return validated(loads(data))

        impls["orjson"] = (orjson_encode, orjson_decode)
    if MSGSPEC is not None:
        encoder, decoder = MSGSPEC.json.Encoder(), MSGSPEC.json.Decoder()
        encode, decode = encoder.encode, decoder.decode

        def msgspec_encode(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> bytes:
            return encode([join_ref, ref, topic, event, payload])  # type: ignore[no-any-return]

        def msgspec_decode(data: bytes) -> Msg:
            return validated(decode(data))

        impls["msgspec"] = (msgspec_encode, msgspec_decode)
    return impls


RIVALS = rivals()


@pytest.mark.parametrize("impl", list(RIVALS))
@pytest.mark.parametrize("message", list(MESSAGES))
def test_encode(benchmark: Any, message: str, impl: str) -> None:
    encode = RIVALS[impl][0]
    fields = MESSAGES[message]
    expected = json_encode(*fields)
    if impl.startswith("nhlink"):
        assert encode(*fields) == expected
    else:
        assert json.loads(encode(*fields)) == json.loads(expected)
    batch = [fields] * BATCH

    def round_() -> None:
        deque(starmap(encode, batch), 0)

    run(
        benchmark, round_, group=f"codec: encode {message}", impl=impl, items=BATCH, unit="messages"
    )


@pytest.mark.parametrize("impl", list(RIVALS))
@pytest.mark.parametrize("message", list(MESSAGES))
def test_decode(benchmark: Any, message: str, impl: str) -> None:
    decode = RIVALS[impl][1]
    data = json_encode(*MESSAGES[message])
    decoded: Any = decode(data)
    assert (decoded.topic, decoded.event, decoded.payload) == MESSAGES[message][2:]

    def round_() -> None:
        deque(map(decode, repeat(data, BATCH)), 0)

    run(
        benchmark, round_, group=f"codec: decode {message}", impl=impl, items=BATCH, unit="messages"
    )
