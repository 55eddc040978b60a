"""A tiny NH1 signer for the FakeHub tests, written from PROTOCOL.md §3.2.3 alone.

Deliberately independent of nhlink's client signer (and of the hub's verifier): the tests check
the hub against the documented algorithm and the §3.3 test vector, not against other nhlink code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ALG = "NH1-HMAC-sha256-1000-32"

# PROTOCOL.md §3.3
VECTOR_KEY = "nhp_1234567890abcdef"
VECTOR_SECRET = "s3cr3t-product-secret"
VECTOR_IDENTIFIER = "device-0001"
VECTOR_T = 1700000000
VECTOR_HEADERS = {
    "x-nh-alg": "NH1-HMAC-sha256-1000-32",
    "x-nh-key": "nhp_1234567890abcdef",
    "x-nh-time": "1700000000",
    "x-nh-signature": (
        "SFMyNTY.g2gDbQAAAAtkZXZpY2UtMDAwMW4GAABo5c-LAWIAAVGA"
        ".3hNvTesoK1CF1rcgg_YkchCFj5TSwQ80HDIGGVAEs2g"
    ),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def etf_payload(identifier: str, signed_ms: int, max_age: int = 86400) -> bytes:
    """term_to_binary({identifier, signed_ms, max_age}) for present-day values."""
    ident = identifier.encode("utf-8")
    magnitude = signed_ms.to_bytes((signed_ms.bit_length() + 7) // 8, "little")
    return (
        b"\x83\x68\x03"
        + b"\x6d"
        + len(ident).to_bytes(4, "big")
        + ident
        + b"\x6e"
        + bytes([len(magnitude), 0])
        + magnitude
        + b"\x62"
        + max_age.to_bytes(4, "big", signed=True)
    )


def salt(key: str, t: int, alg: str = ALG, time_text: str | None = None) -> bytes:
    text = time_text if time_text is not None else str(t)
    return (
        f"NH1:device-socket:shared-secret:connect\n\nx-nh-alg={alg}\nx-nh-key={key}\n"
        f"x-nh-time={text}\n"
    ).encode()


def sign(
    key: str,
    secret: str,
    identifier: str,
    t: int,
    *,
    signed_ms: int | None = None,
    protected: str = "HS256",
    payload: bytes | None = None,
) -> dict[str, str]:
    """The four x-nh-* headers for signing time ``t`` (token time ``signed_ms``, default t*1000)."""
    derived = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt(key, t), 1000, 32)
    body = payload if payload is not None else etf_payload(identifier, signed_ms or t * 1000)
    message = f"{b64url(protected.encode())}.{b64url(body)}"
    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}.get(protected, "sha256")
    mac = hmac.new(derived, message.encode(), digest).digest()
    return {
        "x-nh-alg": ALG,
        "x-nh-key": key,
        "x-nh-time": str(t),
        "x-nh-signature": f"{message}.{b64url(mac)}",
    }
