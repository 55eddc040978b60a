"""WebSocket masking (RFC 6455 §5.3): ``apply_mask`` and ``mask_inplace`` on both cores."""

from __future__ import annotations

import array
from types import ModuleType

import pytest

KEY = bytes.fromhex("37fa213d")  # the masking key of the RFC 6455 §5.7 examples


def reference_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """Byte i XOR key[(offset + i) % 4], one byte at a time: obviously right, slow."""
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


def sample(n: int) -> bytes:
    return bytes((i * 131 + 7) & 0xFF for i in range(n))


def test_rfc_6455_example(core: ModuleType) -> None:
    # §5.7: "Hello" masked with 37 fa 21 3d.
    assert core.apply_mask(b"Hello", KEY) == bytes.fromhex("7f9f4d5158")
    assert core.apply_mask(bytes.fromhex("7f9f4d5158"), KEY) == b"Hello"


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 7, -1])
def test_apply_mask_matches_reference(core: ModuleType, offset: int) -> None:
    # Every length around the 8-byte words and the 32-byte blocks of the compiled kernel.
    for n in [*range(70), 125, 126, 4095, 4096, 4097]:
        data = sample(n)
        expected = reference_mask(data, KEY, offset)
        assert core.apply_mask(data, KEY, offset) == expected, n
        assert core.apply_mask(bytearray(data), KEY, offset) == expected, n
        assert core.apply_mask(memoryview(data), KEY, offset) == expected, n


def test_apply_mask_returns_new_bytes_and_leaves_input(core: ModuleType) -> None:
    data = bytearray(b"payload!")
    out = core.apply_mask(data, KEY)
    assert type(out) is bytes
    assert data == b"payload!"
    assert core.apply_mask(b"", KEY) == b""


def test_apply_mask_is_an_involution(core: ModuleType) -> None:
    data = sample(1000)
    assert core.apply_mask(core.apply_mask(data, KEY, 3), KEY, 3) == data


def test_apply_mask_accepts_any_key_buffer(core: ModuleType) -> None:
    data = sample(33)
    expected = reference_mask(data, KEY)
    assert core.apply_mask(data, bytearray(KEY)) == expected
    assert core.apply_mask(data, memoryview(KEY)) == expected


def test_apply_mask_sees_bytes_of_a_wide_memoryview(core: ModuleType) -> None:
    words = array.array("I", [0x01020304, 0xA0B0C0D0, 7])
    raw = words.tobytes()
    assert core.apply_mask(memoryview(words), KEY) == reference_mask(raw, KEY)


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_key_must_be_four_bytes(core: ModuleType, key: bytes) -> None:
    with pytest.raises(ValueError):
        core.apply_mask(b"data", key)
    with pytest.raises(ValueError):
        core.mask_inplace(bytearray(b"data"), key)


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5])
def test_mask_inplace_bytearray(core: ModuleType, offset: int) -> None:
    for n in [0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 100]:
        data = sample(n)
        buf = bytearray(data)
        assert core.mask_inplace(buf, KEY, offset) == (offset + n) % 4
        assert buf == reference_mask(data, KEY, offset)


def test_mask_inplace_memoryview_slice(core: ModuleType) -> None:
    data = sample(50)
    buf = bytearray(data)
    assert core.mask_inplace(memoryview(buf)[10:30], KEY, 1) == (1 + 20) % 4
    assert buf[:10] == data[:10]
    assert buf[10:30] == reference_mask(data[10:30], KEY, 1)
    assert buf[30:] == data[30:]


def test_mask_inplace_continues_across_chunks(core: ModuleType) -> None:
    data = sample(1000)
    buf = bytearray(data)
    offset = 0
    start = 0
    for size in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 15]:
        offset = core.mask_inplace(memoryview(buf)[start : start + size], KEY, offset)
        start += size
    assert start == len(data)
    assert buf == core.apply_mask(data, KEY)


def test_mask_inplace_rejects_read_only_buffers(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.mask_inplace(b"immutable", KEY)
    with pytest.raises(TypeError):
        core.mask_inplace(memoryview(b"immutable"), KEY)


def test_both_cores_agree(py_core: ModuleType, c_core: ModuleType) -> None:
    for n in range(0, 200, 7):
        data = sample(n)
        for offset in range(4):
            assert py_core.apply_mask(data, KEY, offset) == c_core.apply_mask(data, KEY, offset)
