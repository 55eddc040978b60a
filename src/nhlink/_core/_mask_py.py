"""WebSocket masking (RFC 6455 §5.3), pure Python. The compiled twin is :mod:`nhlink._core._mask`.

A byte loop in Python costs ~50 ns per byte. Instead the whole payload becomes one big integer and
is XORed with the key repeated to the same length: ``int.from_bytes`` and ``int.to_bytes`` run in
C, so the cost per byte is a few nanoseconds (the trick websockets and aiohttp use for their
fallbacks). Native byte order, because the order only has to agree between the two conversions.

Contract: functions never keep a reference to their arguments. ``apply_mask`` and
``mask_with_header`` return a new ``bytes``; ``mask_inplace`` mutates the caller's buffer.

Also here, as in the compiled twin: :func:`payload_buffer`, the destination the frame parser
receives a large payload into.
"""

from __future__ import annotations

import sys

__all__ = ["apply_mask", "mask_inplace", "mask_with_header", "payload_buffer"]

Buffer = bytes | bytearray | memoryview

_BYTEORDER = sys.byteorder


def _rotated_key(key: Buffer, offset: int) -> bytes:
    if type(key) is not bytes:
        key = bytes(key)
    if len(key) != 4:
        raise ValueError(f"mask key must be exactly 4 bytes, got {len(key)}")
    rot = offset & 3  # same as offset % 4, also for negative offsets
    if rot:
        # Byte i of the payload meets key[(offset + i) % 4]: start the key at offset % 4.
        key = key[rot:] + key[:rot]
    return key


def _xor(data: Buffer, key: bytes) -> bytes:
    if type(data) is memoryview and (data.ndim != 1 or data.itemsize != 1):
        data = data.cast("B")  # len() of a cast view counts bytes
    n = len(data)
    if not n:
        return b""
    repeated = key * (n >> 2) + key[: n & 3]
    value = int.from_bytes(data, _BYTEORDER) ^ int.from_bytes(repeated, _BYTEORDER)
    return value.to_bytes(n, _BYTEORDER)


def apply_mask(data: Buffer, key: Buffer, offset: int = 0) -> bytes:
    """Return ``data`` masked with ``key`` as new ``bytes``: byte i is XORed with
    ``key[(offset + i) % 4]`` (RFC 6455 §5.3). Masking is its own inverse, so this also unmasks.

    ``data`` is any C-contiguous buffer; ``key`` must be exactly 4 bytes (else ``ValueError``).
    Neither argument is modified or kept.
    """
    return _xor(data, _rotated_key(key, offset))


def mask_inplace(buf: bytearray | memoryview, key: Buffer, offset: int = 0) -> int:
    """Mask the writable buffer ``buf`` (a ``bytearray`` or writable ``memoryview``) in place:
    byte i is XORed with ``key[(offset + i) % 4]`` (RFC 6455 §5.3).

    Returns ``(offset + len(buf)) % 4``: pass it as ``offset`` with the next chunk to continue
    masking one payload across chunk boundaries. Raises ``TypeError`` for a read-only buffer and
    ``ValueError`` when ``key`` is not exactly 4 bytes.
    """
    rotated = _rotated_key(key, offset)
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("mask_inplace needs a writable buffer (bytearray or memoryview)")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    view[:] = _xor(view, rotated)
    return (offset + len(view)) & 3


def mask_with_header(header: bytes, data: Buffer, key: Buffer) -> bytes:
    """Return ``header + apply_mask(data, key)``: a client frame is its header, masking key and
    masked payload (RFC 6455 §5.2). ``key`` must be exactly 4 bytes (else ``ValueError``).
    """
    return header + _xor(data, _rotated_key(key, 0))


def payload_buffer(n: int) -> tuple[bytes | bytearray, memoryview]:
    """Return ``(owner, view)``: ``owner`` becomes the payload (``bytes(owner)`` when it is not
    already ``bytes``), ``view`` is a writable ``memoryview`` of its ``n`` bytes to receive into.

    Pure Python cannot write into a ``bytes``: ``owner`` is a ``bytearray``, and making the payload
    costs one copy (the compiled twin receives into the final ``bytes``). Release ``view`` before
    using ``owner``.
    """
    if n < 0:
        raise ValueError("payload size must be >= 0")
    owner = bytearray(n)
    return owner, memoryview(owner)
