"""The hub's minimal ETF decoder (nhlink.testing._etf)."""

from __future__ import annotations

import pytest

from nhlink.testing import _etf
from tests.testing import _signer

# PROTOCOL.md §3.3
VECTOR_PAYLOAD = bytes.fromhex(
    "836803 6d0000000b6465766963652d30303031 6e0600 0068e5cf8b01 6200015180".replace(" ", "")
)


def test_decodes_the_vector_payload() -> None:
    assert _etf.decode(VECTOR_PAYLOAD) == (b"device-0001", 1700000000000, 86400)


def test_matches_the_test_signer() -> None:
    assert _signer.etf_payload("device-0001", 1700000000000) == VECTOR_PAYLOAD


@pytest.mark.parametrize(
    ("data", "term"),
    [
        (b"\x83a\x07", 7),
        (b"\x83a\xff", 255),
        (b"\x83b\xff\xff\xff\xfe", -2),
        (b"\x83n\x01\x01\x05", -5),
        (b"\x83n\x00\x00", 0),
        (b"\x83m\x00\x00\x00\x00", b""),
        (b"\x83h\x00", ()),
        (b"\x83h\x02h\x01a\x01m\x00\x00\x00\x01x", ((1,), b"x")),
    ],
)
def test_supported_terms(data: bytes, term: object) -> None:
    assert _etf.decode(data) == term


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x82a\x01",  # wrong version byte
        b"\x83",  # nothing after the version
        b"\x83k\x00\x03abc",  # STRING_EXT (a charlist): not accepted
        b"\x83d\x00\x02ok",  # ATOM_EXT
        b"\x83l\x00\x00\x00\x00j",  # LIST_EXT
        b"\x83t\x00\x00\x00\x00",  # MAP_EXT
        b"\x83P\x00\x00\x00\x01x",  # compressed
        b"\x83a\x01\x00",  # trailing byte
        b"\x83b\x00\x00",  # truncated INTEGER_EXT
        b"\x83m\x00\x00\x00\x05abc",  # truncated BINARY_EXT
        b"\x83n\x02\x00\x01",  # truncated SMALL_BIG_EXT
        b"\x83n\x01\x02\x01",  # bad sign byte
        b"\x83h\x02a\x01",  # tuple missing an element
        b"\x83" + b"h\x01" * 20 + b"a\x01",  # nested too deeply
    ],
)
def test_rejected(data: bytes) -> None:
    with pytest.raises(_etf.ETFError):
        _etf.decode(data)
