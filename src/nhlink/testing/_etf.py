"""A minimal Erlang External Term Format decoder, for the NH1 token payload only.

PROTOCOL.md §3.2.3 step 3: the payload is ``term_to_binary({identifier, signed_ms, max_age})``.
This decoder accepts exactly the term types that payload can contain and rejects everything
else, so a client that emits (say) STRING_EXT for the identifier is caught here instead of
being silently accepted.

Supported tags (Erlang ``erts/emulator/beam/external.h``):

==========  ===================  ================================================
tag         name                 decoded as
==========  ===================  ================================================
131         version byte         (prefix, required once)
97  (a)     SMALL_INTEGER_EXT    ``int`` (uint8)
98  (b)     INTEGER_EXT          ``int`` (int32, big-endian)
110 (n)     SMALL_BIG_EXT        ``int`` (n bytes, sign byte, magnitude little-endian)
104 (h)     SMALL_TUPLE_EXT      ``tuple``
109 (m)     BINARY_EXT           ``bytes`` (uint32 length, big-endian)
==========  ===================  ================================================

Deliberately stricter than ``:erlang.binary_to_term/2``: trailing bytes after the term are an
error (Erlang ignores them), and a SMALL_BIG_EXT sign byte other than 0 or 1 is rejected.
This module does no I/O and never imports anything from nhlink's client code.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ETFError", "Term", "decode"]

VERSION: Final = 131
SMALL_INTEGER_EXT: Final = 97
INTEGER_EXT: Final = 98
SMALL_TUPLE_EXT: Final = 104
BINARY_EXT: Final = 109
SMALL_BIG_EXT: Final = 110

# Tuples nest only one level in a real payload; a small bound keeps hostile input cheap.
MAX_DEPTH: Final = 8

Term = int | bytes | tuple["Term", ...]


class ETFError(ValueError):
    """The bytes are not a supported External Term Format term."""


def decode(data: bytes) -> Term:
    """Decode one ETF term (with its 131 version byte) that must span all of ``data``."""
    if not data or data[0] != VERSION:
        raise ETFError("missing ETF version byte 131")
    term, end = _decode(data, 1, 0)
    if end != len(data):
        raise ETFError(f"{len(data) - end} trailing bytes after the term")
    return term


def _need(data: bytes, pos: int, count: int) -> None:
    if pos + count > len(data):
        raise ETFError("truncated term")


def _decode(data: bytes, pos: int, depth: int) -> tuple[Term, int]:
    _need(data, pos, 1)
    tag = data[pos]
    pos += 1
    if tag == SMALL_INTEGER_EXT:
        _need(data, pos, 1)
        return data[pos], pos + 1
    if tag == INTEGER_EXT:
        _need(data, pos, 4)
        return int.from_bytes(data[pos : pos + 4], "big", signed=True), pos + 4
    if tag == SMALL_BIG_EXT:
        _need(data, pos, 2)
        count, sign = data[pos], data[pos + 1]
        pos += 2
        if sign not in (0, 1):
            raise ETFError(f"bad SMALL_BIG_EXT sign byte {sign}")
        _need(data, pos, count)
        magnitude = int.from_bytes(data[pos : pos + count], "little")
        return (-magnitude if sign else magnitude), pos + count
    if tag == BINARY_EXT:
        _need(data, pos, 4)
        length = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        _need(data, pos, length)
        return bytes(data[pos : pos + length]), pos + length
    if tag == SMALL_TUPLE_EXT:
        if depth >= MAX_DEPTH:
            raise ETFError("tuples nested too deeply")
        _need(data, pos, 1)
        arity = data[pos]
        pos += 1
        items: list[Term] = []
        for _ in range(arity):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return tuple(items), pos
    raise ETFError(f"unsupported ETF tag {tag}")
