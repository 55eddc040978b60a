"""Property tests: the two MessagePack codecs agree with each other and with the ``msgpack``
package (an independent C implementation) on random Phoenix messages, both ways."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nhlink.errors import DecodeError, EncodeError

from .test_codec import same

msgpack = pytest.importorskip("msgpack")

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
KEYS = st.one_of(TEXT, st.sampled_from(["status", "value", "firmware_url", "a", "", "é"]))
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-40, max_value=300),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.binary(max_size=40),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(KEYS, children, max_size=6)
    ),
    max_leaves=30,
)
REFS = st.one_of(st.none(), st.text(st.characters(codec="utf-8"), max_size=8))
MESSAGES = st.tuples(REFS, REFS, TEXT, TEXT, VALUES)


def reference(message: tuple[Any, ...]) -> bytes:
    """What msgpack writes: str as str, bytes as bin, floats as float 64 (its defaults)."""
    data: bytes = msgpack.packb(list(message), use_bin_type=True)
    return data


@SETTINGS
@given(message=MESSAGES)
def test_encoders_agree_with_msgpack(
    py_core: ModuleType, c_core: ModuleType, message: tuple[Any, ...]
) -> None:
    expected = reference(message)
    assert py_core.encode_msgpack(*message) == expected
    assert c_core.encode_msgpack(*message) == expected


@SETTINGS
@given(message=MESSAGES)
def test_pure_encoder_agrees_with_msgpack(py_core: ModuleType, message: tuple[Any, ...]) -> None:
    # Runs under NHLINK_NO_EXTENSIONS=1 too, where the compiled core is skipped.
    assert py_core.encode_msgpack(*message) == reference(message)


@SETTINGS
@given(message=MESSAGES)
def test_decoders_read_what_msgpack_writes(core: ModuleType, message: tuple[Any, ...]) -> None:
    decoded = core.decode_msgpack(reference(message))
    assert same(list(decoded), list(message))


@SETTINGS
@given(message=MESSAGES)
def test_msgpack_reads_what_we_write(core: ModuleType, message: tuple[Any, ...]) -> None:
    value = msgpack.unpackb(core.encode_msgpack(*message), raw=False, strict_map_key=False)
    assert same(value, list(message))


@SETTINGS
@given(
    join_ref=st.one_of(st.none(), INT64, TEXT),
    ref=st.one_of(st.none(), INT64, TEXT),
    payload=VALUES,
)
def test_integer_refs_become_strings(
    core: ModuleType, join_ref: Any, ref: Any, payload: Any
) -> None:
    frame = msgpack.packb([join_ref, ref, "device", "update", payload], use_bin_type=True)
    message = core.decode_msgpack(frame)
    assert message.join_ref == (None if join_ref is None else str(join_ref))
    assert message.ref == (None if ref is None else str(ref))


def _outcome(core: ModuleType, data: bytes) -> Any:
    try:
        return ("ok", list(core.decode_msgpack(data)))
    except DecodeError:
        return ("DecodeError", None)


def _agree(py_core: ModuleType, c_core: ModuleType, data: bytes) -> None:
    a, b = _outcome(py_core, data), _outcome(c_core, data)
    assert a[0] == b[0], (data.hex(), a, b)
    if a[0] == "ok":
        assert same(a[1], b[1])


@SETTINGS
@given(data=st.binary(max_size=64))
def test_decoders_agree_on_random_bytes(
    py_core: ModuleType, c_core: ModuleType, data: bytes
) -> None:
    _agree(py_core, c_core, data)
    _agree(py_core, c_core, b"\x95" + data)


@SETTINGS
@given(message=MESSAGES, position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_decoders_agree_on_damaged_frames(
    py_core: ModuleType, c_core: ModuleType, message: tuple[Any, ...], position: int, byte: int
) -> None:
    frame = bytearray(reference(message))
    position %= len(frame)
    frame[position] = byte
    _agree(py_core, c_core, bytes(frame))
    _agree(py_core, c_core, bytes(frame[:position]))


@SETTINGS
@given(payload=VALUES, extra=st.sampled_from([float("nan"), float("inf"), 2**64, {1, 2}]))
def test_encoders_agree_on_refusals(
    py_core: ModuleType, c_core: ModuleType, payload: Any, extra: Any
) -> None:
    assume(not isinstance(payload, (bytes, str)))
    bad = {"ok": payload, "bad": [extra]}
    for core in (py_core, c_core):
        with pytest.raises(EncodeError):
            core.encode_msgpack(None, None, "t", "e", bad)
