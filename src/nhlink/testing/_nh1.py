"""Server-side verification of NH1 shared-secret headers (PROTOCOL.md §3.2), written independently.

This is what NervesHub's ``DeviceSocket`` does with ``Plug.Crypto.verify/4``, re-done with the
standard library: it must not share code with nhlink's signer, so that a bug in one is caught by
the other. Steps (§3.2.4):

1. ``x-nh-alg`` must be ``NH1-HMAC-<digest>-<iterations>-<key_length>``; parse it loosely.
2. Rebuild the salt from the *headers*; the time is the *parsed* integer, so ``0017`` is ``17``.
3. ``K = PBKDF2-HMAC-<digest>(secret as text, salt, iterations, key_length)``.
4. The token is ``protected.payload.signature``; ``protected`` names the MAC (HS256/384/512);
   recompute the HMAC over ``protected.payload`` and compare in constant time.
5. Decode the ETF payload ``{identifier, signed_ms, max_age}``; ignore the token's max-age and
   apply the server's own: future ``signed_ms`` is *invalid*, older than max-age is *expired*.

Every failure raises :class:`NH1Error` whose ``reason`` is a short code for diagnostics (the hub
answers all of them with the same bare 401, as the real server does), except :class:`NH1Crash`:
a case where the server's own verification code raises instead of refusing, which its
``DeviceSocket`` turns into 503 "platform unavailable". Secrets and derived keys never appear in
messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from nhlink.testing import _etf

__all__ = [
    "Algorithm",
    "NH1Crash",
    "NH1Error",
    "Verified",
    "build_salt",
    "derive_key",
    "parse_alg",
    "parse_time",
    "peek_identifier",
    "verify_headers",
    "verify_token",
]

SALT_PREFIX: Final = "NH1:device-socket:shared-secret:connect\n\n"
ALG_PREFIX: Final = "NH1-HMAC-"

# plug_crypto's KeyGenerator accepts any :crypto hmac digest; these are the ones PROTOCOL.md
# §3.2.2 lists. Erlang calls SHA-1 ``sha``.
_PBKDF2_DIGESTS: Final = {
    "sha": "sha1",
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
}

# MessageVerifier's protected header: base64url("HS256") etc. (§3.2.4 step 4).
_MAC_DIGESTS: Final = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}

# The real server honours any count; a test server bounds the work one request can cause,
# since PBKDF2 runs on the event loop.
MAX_ITERATIONS: Final = 200_000
MAX_KEY_LENGTH: Final = 1024

# Elixir's Integer.parse/1 with nothing left over: an optional sign, then digits.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class NH1Error(Exception):
    """NH1 verification failed. ``reason`` is a short code; ``identifier`` is the (unverified)
    identifier found in the token, when it could be read, for attributing the attempt."""

    def __init__(self, reason: str, identifier: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.identifier = identifier


class NH1Crash(NH1Error):
    """The server's verification *raises* here rather than refusing the credentials.

    ``Authentication.authenticate`` rescues only ``ArgumentError``; anything else escapes to
    ``DeviceSocket.authenticate``, which catches it as "platform unavailable" (503 with the
    ``nh-connection-error-reason`` header). The one case reachable from headers alone: a
    well-formed ``x-nh-alg`` and no ``x-nh-time`` (``Integer.parse(nil)`` has no clause).
    """


@dataclass(frozen=True)
class Algorithm:
    """A parsed ``x-nh-alg`` value. ``header`` is the text exactly as received."""

    header: str
    digest: str  # hashlib name
    iterations: int
    key_length: int


def _split_alg(value: str) -> tuple[str, int, int]:
    """The server's ``decode_from_headers`` parse of ``x-nh-alg``: prefix, three parts, a digest
    it knows, integer iterations and key length (no range check yet)."""
    if not value.startswith(ALG_PREFIX):
        raise NH1Error("bad_alg")
    parts = value[len(ALG_PREFIX) :].split("-")
    if len(parts) != 3 or not _INTEGER.fullmatch(parts[1]) or not _INTEGER.fullmatch(parts[2]):
        raise NH1Error("bad_alg")
    digest = _PBKDF2_DIGESTS.get(parts[0].lower())
    if digest is None:
        raise NH1Error("bad_alg")
    return digest, int(parts[1]), int(parts[2])


def parse_alg(value: str) -> Algorithm:
    """Parse ``NH1-HMAC-<digest>-<iterations>-<key_length>`` (digest case-insensitive)."""
    digest, iterations, key_length = _split_alg(value)
    if not 1 <= iterations <= MAX_ITERATIONS or not 1 <= key_length <= MAX_KEY_LENGTH:
        raise NH1Error("bad_alg")
    return Algorithm(value, digest, iterations, key_length)


def parse_time(value: str) -> int:
    """Parse ``x-nh-time`` like Elixir's ``Integer.parse/1`` with no remainder."""
    if not _INTEGER.fullmatch(value):
        raise NH1Error("bad_time")
    return int(value)


def build_salt(alg_header: str, key: str, time: int) -> bytes:
    """The five-line salt of §3.2.3 step 1, rebuilt from the headers (time canonicalised)."""
    text = f"{SALT_PREFIX}x-nh-alg={alg_header}\nx-nh-key={key}\nx-nh-time={time}\n"
    return text.encode("utf-8")


# Derived keys by (secret, salt, algorithm), as the server keeps them: ``Plug.Crypto.verify``
# caches every key it derives (``Plug.Crypto.Keys``, an ETS table), so a fleet signing in the
# same second costs one PBKDF2, not one per device. Bounded here (oldest out first).
_DERIVED: dict[tuple[str, bytes, Algorithm], bytes] = {}
_DERIVED_MAX = 256


def derive_key(secret: str, salt: bytes, alg: Algorithm) -> bytes:
    """PBKDF2 of the secret *as text* (it is never base64-decoded, §3.2.1)."""
    cache_key = (secret, salt, alg)
    derived = _DERIVED.get(cache_key)
    if derived is None:
        derived = hashlib.pbkdf2_hmac(
            alg.digest, secret.encode("utf-8"), salt, alg.iterations, alg.key_length
        )
        if len(_DERIVED) >= _DERIVED_MAX:
            del _DERIVED[next(iter(_DERIVED))]
        _DERIVED[cache_key] = derived
    return derived


def _b64url_decode(text: str) -> bytes:
    # Unpadded URL-safe alphabet only (§3.2.3: "without = padding").
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise NH1Error("malformed_token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NH1Error("malformed_token") from None


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        # plug_crypto would try its legacy "payload--signature" format here; NervesHub
        # clients never produce it.
        raise NH1Error("malformed_token")
    return parts[0], parts[1], parts[2]


def _decode_payload(payload_b64: str) -> tuple[str | None, _etf.Term]:
    """``(identifier, signed_ms)``; identifier is None unless it is a UTF-8 BINARY_EXT."""
    try:
        term = _etf.decode(_b64url_decode(payload_b64))
    except _etf.ETFError:
        raise NH1Error("bad_payload") from None
    if not isinstance(term, tuple) or len(term) != 3:
        raise NH1Error("bad_payload")
    identifier: str | None = None
    if isinstance(term[0], bytes):
        try:
            identifier = term[0].decode("utf-8")
        except UnicodeDecodeError:
            identifier = None
    return identifier, term[1]


def peek_identifier(token: str) -> str | None:
    """The identifier inside a token, **unverified** (for counting rejected attempts)."""
    try:
        _, payload, _ = _split(token)
        return _decode_payload(payload)[0]
    except NH1Error:
        return None


def verify_token(token: str, key: bytes, *, now_ms: int, max_age: float) -> str:
    """Verify a ``protected.payload.signature`` token with derived key ``key``.

    Returns the identifier. ``max_age`` (seconds) replaces the token's own, as on the server.
    """
    protected, payload, signature = _split(token)
    hint = peek_identifier(token)
    try:
        mac_name = _b64url_decode(protected).decode("ascii")
    except (NH1Error, UnicodeDecodeError):
        raise NH1Error("malformed_token", hint) from None
    digest = _MAC_DIGESTS.get(mac_name)
    if digest is None:
        raise NH1Error("bad_protected_header", hint)
    expected = hmac.new(key, f"{protected}.{payload}".encode("ascii"), digest).digest()
    try:
        given = _b64url_decode(signature)
    except NH1Error:
        raise NH1Error("malformed_token", hint) from None
    if not hmac.compare_digest(given, expected):
        raise NH1Error("bad_signature", hint)
    identifier, signed = _decode_payload(payload)
    # Plug.Crypto.verify: `signed > now_ms()` -> :invalid. A non-integer sorts above every
    # number in Erlang's term order, so it is "in the future" too.
    if not isinstance(signed, int) or signed > now_ms:
        raise NH1Error("invalid", identifier)
    if max_age <= 0 or signed + int(max_age * 1000) < now_ms:
        raise NH1Error("expired", identifier)
    if not identifier:
        raise NH1Error("bad_identifier", identifier)
    return identifier


@dataclass(frozen=True)
class Verified:
    """A successful NH1 verification."""

    key: str
    identifier: str


def verify_headers(
    headers: Mapping[str, str],
    secret_for: Mapping[str, str],
    *,
    now_ms: int,
    max_age: float,
) -> Verified:
    """Run the whole §3.2.4 check on request headers (a case-insensitive mapping).

    ``secret_for`` maps known, active keys to their secrets. Identity rules (product key vs
    device key) are the caller's business. Raises :class:`NH1Crash` (the server answers 503)
    when ``x-nh-alg`` parses but ``x-nh-time`` is missing, checked in the server's order.
    """
    alg_value = headers.get("x-nh-alg")
    key = headers.get("x-nh-key")
    time_value = headers.get("x-nh-time")
    token = headers.get("x-nh-signature")
    hint = peek_identifier(token) if token is not None else None
    if alg_value is None:
        raise NH1Error("missing_header", hint)
    if time_value is None:
        try:
            _split_alg(alg_value)
        except NH1Error:
            raise NH1Error("bad_alg", hint) from None
        raise NH1Crash("missing_time", hint)
    if key is None or token is None:
        raise NH1Error("missing_header", hint)
    try:
        alg = parse_alg(alg_value)
        signed_at = parse_time(time_value)
    except NH1Error as exc:
        raise NH1Error(exc.reason, hint) from None
    secret = secret_for.get(key)
    if secret is None:
        raise NH1Error("unknown_key", hint)
    derived = derive_key(secret, build_salt(alg.header, key, signed_at), alg)
    return Verified(key, verify_token(token, derived, now_ms=now_ms, max_age=max_age))
