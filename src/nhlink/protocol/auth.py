"""NervesHub shared-secret ("NH1") signing, PROTOCOL.md §3.2 — sans-I/O: the time comes in.

The token is ``Plug.Crypto.sign/4``'s MessageVerifier format::

    "SFMyNTY" "." b64url(term_to_binary({identifier, signed_ms, 86400})) "." b64url(HMAC)

with the HMAC key derived by PBKDF2-HMAC-SHA256 from the secret (used as ASCII text, never
base64-decoded) and a five-line salt built from the other headers. The term encoder below is the
tiny subset of the Erlang External Term Format this needs (§3.2.3 step 3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ClockNotSet, ConfigError
from . import wire

__all__ = [
    "CLOCK_VALID_AFTER",
    "SharedSecretSigner",
    "encode_term",
    "parse_http_date",
    "sign",
]

#: PROTOCOL.md §3.2.5 / §14.7: a Unix time below this means the clock was never set.
CLOCK_VALID_AFTER = 1_000_000_000

_ALG = wire.NH1_ALG
_ITERATIONS = 1000
_KEY_LENGTH = 32
_MAX_AGE_FIELD = 86400
_PROTECTED_HS256 = "SFMyNTY"  # base64url("HS256"), unpadded


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _etf_integer(value: int) -> bytes:
    # Erlang's term_to_binary picks the smallest encoding: SMALL_INTEGER_EXT (0..255),
    # INTEGER_EXT (signed 32-bit), else SMALL_BIG_EXT (little-endian magnitude).
    if 0 <= value <= 255:
        return b"\x61" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"\x62" + struct.pack(">i", value)
    magnitude = abs(value)
    digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    if len(digits) > 255:
        raise ValueError("integer too large for SMALL_BIG_EXT")
    return b"\x6e" + bytes([len(digits), 1 if value < 0 else 0]) + digits


def encode_term(identifier: str, signed_ms: int, max_age: int = _MAX_AGE_FIELD) -> bytes:
    """``term_to_binary({identifier :: binary, signed_ms, max_age})``, as Erlang encodes it."""
    ident = identifier.encode("utf-8")
    return (
        b"\x83\x68\x03"  # version, SMALL_TUPLE_EXT arity 3
        + b"\x6d"  # BINARY_EXT — never STRING_EXT, which would decode to a charlist (§3.2.3)
        + struct.pack(">I", len(ident))
        + ident
        + _etf_integer(signed_ms)
        + _etf_integer(max_age)
    )


def _salt(key: str, signed_at: int) -> bytes:
    return (
        f"NH1:device-socket:shared-secret:connect\n\n"
        f"x-nh-alg={_ALG}\nx-nh-key={key}\nx-nh-time={signed_at}\n"
    ).encode()


# The PBKDF2 key depends on the product key, the secret and the second signed at, not on the
# device: every device of a product that signs in the same second derives the same key. Keep the
# last few (a fleet of 10,000 devices joining at 1,000/s derives one per second, not 1,000). Safe:
# the entries are only as sensitive as the secret this process already holds, each is good for
# one second of signing, and they stay in this process.
_DERIVED: dict[tuple[str, str, int], bytes] = {}
_DERIVED_MAX = 8


def _derived_key(key: str, secret: str, signed_at: int) -> bytes:
    cache_key = (key, secret, signed_at)
    derived = _DERIVED.get(cache_key)
    if derived is None:
        derived = hashlib.pbkdf2_hmac(
            "sha256", secret.encode("ascii"), _salt(key, signed_at), _ITERATIONS, _KEY_LENGTH
        )
        if len(_DERIVED) >= _DERIVED_MAX:
            del _DERIVED[next(iter(_DERIVED))]  # the oldest
        _DERIVED[cache_key] = derived
    return derived


def sign(key: str, secret: str, identifier: str, signed_at: int) -> dict[str, str]:
    """The four ``x-nh-*`` headers for one connection attempt, signed at Unix second ``signed_at``.

    Pure function: the same inputs give the same headers (PROTOCOL.md §3.3 is the test vector).
    Callers must sign afresh for every connection attempt (the server accepts 90 s at most).
    """
    if signed_at < 0:
        raise ValueError("signed_at must be a non-negative Unix time")
    derived = _derived_key(key, secret, signed_at)
    message = _PROTECTED_HS256 + "." + _b64url(encode_term(identifier, signed_at * 1000))
    mac = hmac.new(derived, message.encode("ascii"), hashlib.sha256).digest()
    return {
        wire.HEADER_ALG: _ALG,
        wire.HEADER_KEY: key,
        wire.HEADER_TIME: str(signed_at),  # canonical decimal: the server rebuilds the salt from it
        wire.HEADER_SIGNATURE: message + "." + _b64url(mac),
    }


def parse_http_date(value: str | None) -> int | None:
    """An RFC 9110 ``Date`` header as Unix seconds, or None when absent or unparsable."""
    if not value:
        return None
    try:
        import email.utils  # at the first response, not at import

        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())


@dataclass(slots=True)
class SharedSecretSigner:
    """Signs connection attempts and recovers from a slow clock with the server's ``Date``.

    Holds no secret in its ``repr``. Usage per attempt: ``headers = signer.headers(now)``; after
    every upgrade response (101 or refused) call ``signer.observe_server_date(headers, now)``:
    from then on it signs with the server's clock, which recovers a slow clock (NHL's trick,
    PROTOCOL.md §3.2.5) and a fast one (the server refuses future-dated tokens).
    """

    key: str
    secret: str
    identifier: str
    _server_offset: float | None = None

    def __post_init__(self) -> None:
        if not self.key:
            raise ConfigError("product_key", "must not be empty")
        if not self.secret:
            raise ConfigError("product_secret", "must not be empty")
        if not self.secret.isascii():
            raise ConfigError(
                "product_secret", "must be ASCII text (it is used as-is, not decoded)"
            )
        if not self.identifier:
            raise ConfigError("identifier", "must not be empty")

    def __repr__(self) -> str:
        return (
            f"SharedSecretSigner(key={self.key!r}, identifier={self.identifier!r}, secret=<hidden>)"
        )

    def signing_time(self, now: float) -> int:
        """The Unix second to sign with at local time ``now``; raises ClockNotSet if unset.

        The server refuses any token from its future, even by a fraction of a second
        (§3.2.4), and accepts 90 s of the past. So: once a server ``Date`` is known, sign with
        the server's time (it never runs ahead: ``Date`` is truncated and arrives late); before
        that, sign one second in the past to absorb sub-second skew (§3.2.5).
        """
        if self._server_offset is not None:
            return int(now + self._server_offset)
        if now < CLOCK_VALID_AFTER:
            raise ClockNotSet(
                f"system clock reads {int(now)} (before 2001-09-09); refusing to sign "
                "shared-secret headers until it is set (NTP/SNTP)"
            )
        return int(now) - 1

    def headers(self, now: float) -> dict[str, str]:
        """Fresh ``x-nh-*`` headers for a connection attempt at local time ``now``."""
        return sign(self.key, self.secret, self.identifier, self.signing_time(now))

    def observe_server_date(self, headers: Mapping[str, str], now: float) -> bool:
        """Remember the server clock from a response's ``Date`` header (local time ``now``).

        Returns True if a date was found. ``Date`` has 1 s resolution and is truncated, so using
        it never signs in the server's future.
        """
        server = parse_http_date(headers.get("date") or headers.get("Date"))
        if server is None:
            return False
        self._server_offset = server - now
        return True
