"""The Phoenix MessagePack codec (vsn 3.0.0), nhlink against the MessagePack libraries.

Run: ``python -m pytest benchmarks/bench_msgpack.py -p no:cacheprovider --benchmark-only -q``,
or ``python benchmarks/compare.py msgpack`` for the ratio tables.

The two messages of ``bench_codec.py`` (PROTOCOL.md §4.6, §6.5, §7.1), MessagePack-encoded:
``fwup_progress`` (34 B instead of 47 B of JSON) and ``update`` (642 B instead of 726 B).

Every rival does the same job as nhlink. Encoding: the five fields to one MessagePack array as
``bytes``; before timing, every rival's bytes must decode to the message with every decoder, and
nhlink's must be msgpack's byte for byte. Decoding: ``bytes`` to a
message object with strings as text and the same shape validation (a list of five, refs str or
null, integer refs turned into str, topic and event str). Rivals: msgpack's C extension (a
``msgpack.Packer()`` made once; ``msgpack.unpackb(data, raw=False)``), ormsgpack
(``packb``/``unpackb``) and msgspec (``msgspec.msgpack.Encoder``/``Decoder`` made once). nhlink
also refuses NaN/Infinity, ext values and trailing bytes; the rivals accept NaN and ext values, so
they do a little less work. Baseline: msgpack.

The JSON codec (vsn 2.0.0) of nhlink's compiled core is in the same tables as
``nhlink-cython-json``, so JSON against MessagePack speed shows in one table; each row's note is
the encoded size.

One round runs the call 100 times through ``map`` (C-level iteration, so the harness adds almost
nothing per call); ``extra_info`` carries ``impl``, ``items`` (100 messages) and ``unit``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from typing import Any

import pytest

from benchmarks._bench import optional, run
from benchmarks.bench_codec import BATCH, MESSAGES, Msg, json_encode
from nhlink.errors import DecodeError

NH_C = optional("nhlink._core.cython")
NH_PY = optional("nhlink._core.python")
MSGPACK = optional("msgpack")
ORMSGPACK = optional("ormsgpack")
MSGSPEC = optional("msgspec")

Codec = tuple[Callable[..., bytes], Callable[[bytes], object]]


# --- rivals, each doing nhlink's job ----------------------------------------------------------


def _ref(value: Any, name: str) -> str:
    if type(value) is int:
        return str(value)  # §4.6: integer refs are taken as strings
    raise DecodeError(f"bad {name}")


def validated(value: Any) -> Msg:
    """The shape validation nhlink does on every decoded MessagePack message."""
    if type(value) is not list or len(value) != 5:
        raise DecodeError("not a 5-element array")
    join_ref, ref, topic, event, payload = value
    if join_ref is not None and type(join_ref) is not str:
        join_ref = _ref(join_ref, "join_ref")
    if ref is not None and type(ref) is not str:
        ref = _ref(ref, "ref")
    if type(topic) is not str or type(event) is not str:
        raise DecodeError("bad topic or event")
    return Msg(join_ref, ref, topic, event, payload)


def rivals() -> dict[str, Codec]:
    impls: dict[str, Codec] = {}
    if NH_C is not None:
        impls["nhlink-cython"] = (NH_C.encode_msgpack, NH_C.decode_msgpack)
    if NH_PY is not None:
        impls["nhlink-python"] = (NH_PY.encode_msgpack, NH_PY.decode_msgpack)
    if MSGPACK is not None:
        pack, unpackb = MSGPACK.Packer().pack, MSGPACK.unpackb

        def msgpack_encode(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> bytes:
            return pack([join_ref, ref, topic, event, payload])  # type: ignore[no-any-return]

        def msgpack_decode(data: bytes) -> Msg:
            return validated(unpackb(data, raw=False))

        impls["msgpack"] = (msgpack_encode, msgpack_decode)
    if ORMSGPACK is not None:
        packb, ounpackb = ORMSGPACK.packb, ORMSGPACK.unpackb

        def ormsgpack_encode(
            join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any
        ) -> bytes:
            return packb([join_ref, ref, topic, event, payload])  # type: ignore[no-any-return]

        def ormsgpack_decode(data: bytes) -> Msg:
            return validated(ounpackb(data))

        impls["ormsgpack"] = (ormsgpack_encode, ormsgpack_decode)
    if MSGSPEC is not None:
        encoder, decoder = MSGSPEC.msgpack.Encoder(), MSGSPEC.msgpack.Decoder()
        encode, decode = encoder.encode, decoder.decode

        def msgspec_encode(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any) -> bytes:
            return encode([join_ref, ref, topic, event, payload])  # type: ignore[no-any-return]

        def msgspec_decode(data: bytes) -> Msg:
            return validated(decode(data))

        impls["msgspec"] = (msgspec_encode, msgspec_decode)
    if NH_C is not None:
        impls["nhlink-cython-json"] = (NH_C.encode_message, NH_C.decode_message)
    return impls


RIVALS = rivals()


def _is_json(impl: str) -> bool:
    return impl.endswith("-json")


def _reference(fields: tuple[Any, ...]) -> bytes:
    """The MessagePack bytes every rival must produce: msgpack's, else nhlink's own."""
    if MSGPACK is not None:
        return MSGPACK.packb(list(fields))  # type: ignore[no-any-return]
    return RIVALS["nhlink-python"][0](*fields)


def _check_decoded(decoded: Any, fields: tuple[Any, ...]) -> None:
    got = (decoded.join_ref, decoded.ref, decoded.topic, decoded.event, decoded.payload)
    assert got == fields, (got, fields)


@pytest.mark.parametrize("impl", list(RIVALS))
@pytest.mark.parametrize("message", list(MESSAGES))
def test_encode(benchmark: Any, message: str, impl: str) -> None:
    encode = RIVALS[impl][0]
    fields = MESSAGES[message]
    data = encode(*fields)
    if _is_json(impl):
        assert data == json_encode(*fields)
    else:
        # Every encoding decodes to the message; nhlink's is msgpack's, byte for byte.
        for _, decode in (v for k, v in RIVALS.items() if not _is_json(k)):
            _check_decoded(decode(data), fields)
        if impl.startswith("nhlink"):
            assert data == _reference(fields)
    batch = [fields] * BATCH

    def round_() -> None:
        deque(starmap(encode, batch), 0)

    benchmark.extra_info["note"] = f"{len(data)} B"
    run(
        benchmark,
        round_,
        group=f"msgpack: encode {message}",
        impl=impl,
        items=BATCH,
        unit="messages",
    )


@pytest.mark.parametrize("impl", list(RIVALS))
@pytest.mark.parametrize("message", list(MESSAGES))
def test_decode(benchmark: Any, message: str, impl: str) -> None:
    decode = RIVALS[impl][1]
    fields = MESSAGES[message]
    data = json_encode(*fields) if _is_json(impl) else _reference(fields)
    _check_decoded(decode(data), fields)

    def round_() -> None:
        deque(map(decode, repeat(data, BATCH)), 0)

    benchmark.extra_info["note"] = f"{len(data)} B"
    run(
        benchmark,
        round_,
        group=f"msgpack: decode {message}",
        impl=impl,
        items=BATCH,
        unit="messages",
    )
