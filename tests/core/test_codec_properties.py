"""Property tests: the two codecs agree with each other and with the stdlib json on random input."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhlink.errors import DecodeError, EncodeError

from .test_codec import dumps, same

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text without lone surrogates (it has a UTF-8 form), and text that may hold them.
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
# Short ASCII keys repeat, as in real messages (exercises the decoder's string cache).
KEYS = st.one_of(TEXT, st.sampled_from(["status", "value", "firmware_url", "a", "", "é"]))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(KEYS, children, max_size=6)
    ),
    max_leaves=30,
)
ANY_JSON = st.recursive(
    st.one_of(SCALARS, ANY_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(KEYS, ANY_TEXT), children, max_size=6),
    ),
    max_leaves=20,
)
REFS = st.one_of(st.none(), st.text(st.characters(codec="utf-8"), max_size=8))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def reference_decode(text: str) -> list[Any] | None:
    """What decode_message must return (as a list), or None where it must raise DecodeError."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if type(value) is not list or len(value) != 5:
        return None
    join_ref, ref, topic, event, _ = value
    if join_ref is not None and type(join_ref) is not str:
        return None
    if ref is not None and type(ref) is not str:
        return None
    if type(topic) is not str or type(event) is not str:
        return None
    if text.count("[") + text.count("{") > 256 and _depth(value) > 256:
        return None
    return value


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def decode_or_none(core: ModuleType, data: Any) -> list[Any] | None:
    try:
        return list(core.decode_message(data))
    except DecodeError:
        return None


@SETTINGS
@given(join_ref=REFS, ref=REFS, topic=TEXT, event=TEXT, payload=JSON)
def test_encode_agrees_with_json(
    py_core: ModuleType,
    c_core: ModuleType,
    join_ref: str | None,
    ref: str | None,
    topic: str,
    event: str,
    payload: Any,
) -> None:
    fields = [join_ref, ref, topic, event, payload]
    expected = dumps(fields)
    assert py_core.encode_message(*fields) == expected
    assert c_core.encode_message(*fields) == expected
    for core in (py_core, c_core):
        assert same(list(core.decode_message(expected)), json.loads(expected))


@SETTINGS
@given(payload=ANY_JSON, topic=ANY_TEXT)
def test_encode_agrees_with_surrogates(
    py_core: ModuleType, c_core: ModuleType, payload: Any, topic: str
) -> None:
    results: list[bytes | None] = []
    for core in (py_core, c_core):
        try:
            results.append(core.encode_message("1", "2", topic, "e", payload))
        except EncodeError:
            results.append(None)
    assert results[0] == results[1]
    try:
        expected: bytes | None = dumps(["1", "2", topic, "e", payload])
    except UnicodeEncodeError:
        expected = None
    assert results[0] == expected


@SETTINGS
@given(join_ref=REFS, ref=REFS, topic=ANY_TEXT, event=ANY_TEXT, payload=ANY_JSON)
def test_decode_escaped_json(
    py_core: ModuleType,
    c_core: ModuleType,
    join_ref: str | None,
    ref: str | None,
    topic: str,
    event: str,
    payload: Any,
) -> None:
    # ensure_ascii=True writes \uXXXX escapes, surrogate pairs and lone surrogates included.
    text = json.dumps([join_ref, ref, topic, event, payload])
    expected = json.loads(text)
    for core in (py_core, c_core):
        for data in (text, text.encode("ascii")):
            assert same(list(core.decode_message(data)), expected)


@SETTINGS
@given(data=st.binary(max_size=80))
def test_decode_random_bytes(py_core: ModuleType, c_core: ModuleType, data: bytes) -> None:
    py_result = decode_or_none(py_core, data)
    assert same(py_result, decode_or_none(c_core, data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert py_result is None
    else:
        assert same(py_result, reference_decode(text))


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid encoded message with a few random edits: mostly near-valid input."""
    fields = [draw(REFS), draw(REFS), draw(TEXT), draw(TEXT), draw(JSON)]
    data = bytearray(dumps(fields))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        byte = draw(
            st.one_of(
                st.sampled_from(list(b'"\\{}[],:-+.eE0u \t\n\x00\x1f\x7f\x80\xc3\xed\xf0\xff')),
                st.integers(min_value=0, max_value=255),
            )
        )
        if kind == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if kind == "replace":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


@SETTINGS
@given(data=mutated_messages())
def test_decode_mutated_messages(py_core: ModuleType, c_core: ModuleType, data: bytes) -> None:
    py_result = decode_or_none(py_core, data)
    assert same(py_result, decode_or_none(c_core, data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert py_result is None
    else:
        assert same(py_result, reference_decode(text))
        assert same(decode_or_none(c_core, text), py_result)


@SETTINGS
@given(
    text=st.one_of(
        ANY_TEXT, st.builds(lambda a, b: f'[null,"1","{a}","e",{b}]', ANY_TEXT, ANY_TEXT)
    )
)
def test_decode_random_str(py_core: ModuleType, c_core: ModuleType, text: str) -> None:
    py_result = decode_or_none(py_core, text)
    assert same(py_result, decode_or_none(c_core, text))
    assert same(py_result, reference_decode(text))


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=40),
        st.builds(
            bytes.__add__,
            st.sampled_from([b"\x00\x01\x02\x03", b"\x01\x01\x01\x01\x02", b"\x02\x01\x01"]),
            st.binary(max_size=12),
        ),
    )
)
def test_decode_binary_agrees(py_core: ModuleType, c_core: ModuleType, data: bytes) -> None:
    results: list[list[Any] | None] = []
    for core in (py_core, c_core):
        try:
            results.append(list(core.decode_binary(data)))
        except DecodeError:
            results.append(None)
    assert same(results[0], results[1])
