"""The hub's NH1 verifier against PROTOCOL.md §3.3 and the §3.2.4 rules (no network)."""

from __future__ import annotations

import hashlib

import pytest

from nhlink.testing import _nh1
from tests.testing import _signer
from tests.testing._signer import (
    VECTOR_HEADERS,
    VECTOR_IDENTIFIER,
    VECTOR_KEY,
    VECTOR_SECRET,
    VECTOR_T,
)

SECRETS = {VECTOR_KEY: VECTOR_SECRET}
NOW_MS = VECTOR_T * 1000


def verify(headers: dict[str, str], now_ms: int = NOW_MS, max_age: float = 90) -> str:
    return _nh1.verify_headers(headers, SECRETS, now_ms=now_ms, max_age=max_age).identifier


def reason(headers: dict[str, str], now_ms: int = NOW_MS) -> str:
    with pytest.raises(_nh1.NH1Error) as info:
        verify(headers, now_ms)
    return info.value.reason


def test_vector_intermediate_values() -> None:
    alg = _nh1.parse_alg("NH1-HMAC-sha256-1000-32")
    salt = _nh1.build_salt(alg.header, VECTOR_KEY, VECTOR_T)
    assert salt == (
        b"NH1:device-socket:shared-secret:connect\n\nx-nh-alg=NH1-HMAC-sha256-1000-32\n"
        b"x-nh-key=nhp_1234567890abcdef\nx-nh-time=1700000000\n"
    )
    key = _nh1.derive_key(VECTOR_SECRET, salt, alg)
    assert key.hex() == "2310b1ae920b17acef8026024c06e476997207d93099ed36e0be972facfc5bd2"


def test_test_signer_reproduces_the_vector() -> None:
    headers = _signer.sign(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_T)
    assert headers == VECTOR_HEADERS


def test_vector_accepted_at_t() -> None:
    assert verify(VECTOR_HEADERS) == "device-0001"


def test_vector_accepted_until_max_age() -> None:
    assert verify(VECTOR_HEADERS, NOW_MS + 90_000) == "device-0001"


def test_vector_expired_after_max_age() -> None:
    assert reason(VECTOR_HEADERS, NOW_MS + 90_001) == "expired"
    assert reason(VECTOR_HEADERS, NOW_MS + 91_000) == "expired"


def test_token_in_the_future_is_invalid() -> None:
    headers = _signer.sign(VECTOR_KEY, VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_T + 5)
    assert reason(headers) == "invalid"
    # ...even by one millisecond: no tolerance.
    assert reason(VECTOR_HEADERS, NOW_MS - 1) == "invalid"


def test_server_max_age_replaces_the_tokens() -> None:
    # The token says 86400 s; the server's own 90 s applies, and another setting is honoured.
    assert reason(VECTOR_HEADERS, NOW_MS + 3_600_000) == "expired"
    assert _nh1.verify_headers(
        VECTOR_HEADERS, SECRETS, now_ms=NOW_MS + 3_600_000, max_age=7200
    ).identifier == ("device-0001")


def test_bad_signature() -> None:
    headers = dict(VECTOR_HEADERS)
    token = headers["x-nh-signature"]
    headers["x-nh-signature"] = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert reason(headers) == "bad_signature"


def test_wrong_secret() -> None:
    headers = _signer.sign(VECTOR_KEY, "another secret", VECTOR_IDENTIFIER, VECTOR_T)
    assert reason(headers) == "bad_signature"


def test_base64_decoded_secret_is_wrong() -> None:
    # §3.2.1: the secret is text. Treating it any other way changes the key.
    headers = _signer.sign(VECTOR_KEY, VECTOR_SECRET.upper(), VECTOR_IDENTIFIER, VECTOR_T)
    assert reason(headers) == "bad_signature"


def test_unknown_key() -> None:
    headers = _signer.sign("nhp_unknown", VECTOR_SECRET, VECTOR_IDENTIFIER, VECTOR_T)
    with pytest.raises(_nh1.NH1Error) as info:
        verify(headers)
    error = info.value
    assert error.reason == "unknown_key"
    assert error.identifier == "device-0001"  # unverified hint, for counting attempts


def test_headers_must_all_be_present() -> None:
    for name in ("x-nh-alg", "x-nh-key", "x-nh-signature"):
        headers = {k: v for k, v in VECTOR_HEADERS.items() if k != name}
        assert reason(headers) == "missing_header"


def test_missing_time_is_a_server_crash() -> None:
    # The server parses x-nh-alg, then Integer.parse(nil) raises: 503, not 401 (the hub's part).
    headers = {k: v for k, v in VECTOR_HEADERS.items() if k != "x-nh-time"}
    with pytest.raises(_nh1.NH1Crash) as info:
        verify(headers)
    assert info.value.reason == "missing_time"
    assert info.value.identifier == VECTOR_IDENTIFIER
    # ...only once x-nh-alg has parsed; before that it is an ordinary refusal.
    assert reason(dict(headers, **{"x-nh-alg": "NH1-HMAC-sha256-1000"})) == "bad_alg"
    del headers["x-nh-alg"]
    assert reason(headers) == "missing_header"
    with pytest.raises(_nh1.NH1Error) as plain:
        verify(headers)
    assert not isinstance(plain.value, _nh1.NH1Crash)


def test_time_header_is_canonicalised_for_the_salt() -> None:
    # The server rebuilds the salt from the *parsed* time: "01700000000" -> "1700000000", so a
    # token signed over the canonical salt verifies, and one over the literal text does not.
    headers = dict(VECTOR_HEADERS, **{"x-nh-time": "01700000000"})
    assert verify(headers) == "device-0001"


def test_time_header_must_be_an_integer() -> None:
    for bad in ("1700000000.5", "", "abc", "1e9"):
        assert reason(dict(VECTOR_HEADERS, **{"x-nh-time": bad})) == "bad_time"


@pytest.mark.parametrize(
    "alg",
    [
        "NH2-HMAC-sha256-1000-32",
        "NH1-HMAC-md4-1000-32",
        "NH1-HMAC-sha256-1000",
        "NH1-HMAC-sha256-x-32",
        "NH1-HMAC-sha256-0-32",
        "NH1-HMAC-sha256-1000-0",
        "NH1-HMAC-sha256-10000000-32",
    ],
)
def test_bad_alg(alg: str) -> None:
    assert reason(dict(VECTOR_HEADERS, **{"x-nh-alg": alg})) == "bad_alg"


@pytest.mark.parametrize(
    ("digest", "hashlib_name"), [("sha", "sha1"), ("SHA512", "sha512"), ("sha384", "sha384")]
)
def test_other_pbkdf2_parameters_are_honoured(digest: str, hashlib_name: str) -> None:
    import hashlib
    import hmac

    alg = f"NH1-HMAC-{digest}-50-48"
    salt = _signer.salt(VECTOR_KEY, VECTOR_T, alg=alg)
    key = hashlib.pbkdf2_hmac(hashlib_name, VECTOR_SECRET.encode(), salt, 50, 48)
    message = "SFMyNTY." + _signer.b64url(_signer.etf_payload("dev-x", NOW_MS))
    mac = _signer.b64url(hmac.new(key, message.encode(), "sha256").digest())
    headers = dict(VECTOR_HEADERS, **{"x-nh-alg": alg, "x-nh-signature": f"{message}.{mac}"})
    assert verify(headers) == "dev-x"


@pytest.mark.parametrize("protected", ["HS384", "HS512"])
def test_other_mac_headers(protected: str) -> None:
    headers = _signer.sign(VECTOR_KEY, VECTOR_SECRET, "dev-y", VECTOR_T, protected=protected)
    assert verify(headers) == "dev-y"


def test_unknown_mac_header() -> None:
    headers = _signer.sign(VECTOR_KEY, VECTOR_SECRET, "dev-y", VECTOR_T, protected="HS1")
    assert reason(headers) == "bad_protected_header"


@pytest.mark.parametrize(
    "token",
    [
        "SFMyNTY.g2gD",
        "SFMyNTY..abc",
        "a.b.c.d",
        "SFMyNTY=.g2gD.abc",
        "SFMyNTY.g2g+.abc",
        "",
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(dict(VECTOR_HEADERS, **{"x-nh-signature": token})) in (
        "malformed_token",
        "bad_signature",
    )


def test_padded_base64_is_rejected() -> None:
    token = VECTOR_HEADERS["x-nh-signature"]
    protected, payload, mac = token.split(".")
    padded = f"{protected}.{payload}.{mac}="
    assert reason(dict(VECTOR_HEADERS, **{"x-nh-signature": padded})) == "malformed_token"


def _signed_payload(payload: bytes) -> dict[str, str]:
    return _signer.sign(VECTOR_KEY, VECTOR_SECRET, "", VECTOR_T, payload=payload)


def test_identifier_must_be_a_binary() -> None:
    # §3.2.3: a STRING_EXT (charlist) identifier is an error even with a valid MAC.
    charlist = b"\x83h\x03k\x00\x03abc" + b"n\x06\x00" + NOW_MS.to_bytes(6, "little") + b"a\x01"
    assert reason(_signed_payload(charlist)) == "bad_payload"


def test_payload_must_be_a_3_tuple() -> None:
    two = b"\x83h\x02m\x00\x00\x00\x01xn\x06\x00" + NOW_MS.to_bytes(6, "little")
    assert reason(_signed_payload(two)) == "bad_payload"


def test_non_integer_time_is_invalid() -> None:
    payload = b"\x83h\x03m\x00\x00\x00\x01xm\x00\x00\x00\x01ya\x01"
    assert reason(_signed_payload(payload)) == "invalid"


def test_empty_identifier_rejected() -> None:
    assert reason(_signed_payload(_signer.etf_payload("", NOW_MS))) == "bad_identifier"


def test_integer_encodings_are_all_accepted() -> None:
    # The server decodes with a general decoder: INTEGER_EXT max-age, small times, etc.
    payload = b"\x83h\x03m\x00\x00\x00\x01zb\x00\x00\x00\x05a\x00"
    assert _nh1.verify_headers(
        _signed_payload(payload), SECRETS, now_ms=5, max_age=90
    ).identifier == ("z")


def test_peek_identifier() -> None:
    assert _nh1.peek_identifier(VECTOR_HEADERS["x-nh-signature"]) == "device-0001"
    assert _nh1.peek_identifier("garbage") is None


def test_derived_keys_are_cached_by_secret_salt_and_algorithm() -> None:
    """As the server (``Plug.Crypto.verify`` keeps every derived key): a second device signing
    in the same second costs no PBKDF2; another secret, salt or algorithm derives anew; the
    cache stays bounded."""
    alg = _nh1.parse_alg("NH1-HMAC-sha256-1000-32")
    salt = _nh1.build_salt(alg.header, "nhp_cache", 1_700_000_000)
    _nh1._DERIVED.clear()
    first = _nh1.derive_key("secret-one", salt, alg)
    assert _nh1.derive_key("secret-one", salt, alg) is first  # from the cache
    assert first == hashlib.pbkdf2_hmac("sha256", b"secret-one", salt, 1000, 32)
    other = _nh1.derive_key("secret-two", salt, alg)
    assert other == hashlib.pbkdf2_hmac("sha256", b"secret-two", salt, 1000, 32) != first
    later = _nh1.build_salt(alg.header, "nhp_cache", 1_700_000_001)
    assert _nh1.derive_key("secret-one", later, alg) != first
    for n in range(_nh1._DERIVED_MAX + 10):
        _nh1.derive_key("secret-one", _nh1.build_salt(alg.header, "k", n), alg)
    assert len(_nh1._DERIVED) == _nh1._DERIVED_MAX
