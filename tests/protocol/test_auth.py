"""NH1 shared-secret signing against PROTOCOL.md §3.3, the clock rules of §3.2.5."""

from __future__ import annotations

import base64
import hashlib

import pytest

from nhlink.errors import ClockNotSet, ConfigError
from nhlink.protocol import auth

KEY = "nhp_1234567890abcdef"
SECRET = "s3cr3t-product-secret"
IDENTIFIER = "device-0001"
T = 1700000000


def test_protocol_vector_headers() -> None:
    headers = auth.sign(KEY, SECRET, IDENTIFIER, T)
    assert headers == {
        "x-nh-alg": "NH1-HMAC-sha256-1000-32",
        "x-nh-key": "nhp_1234567890abcdef",
        "x-nh-time": "1700000000",
        "x-nh-signature": (
            "SFMyNTY.g2gDbQAAAAtkZXZpY2UtMDAwMW4GAABo5c-LAWIAAVGA."
            "3hNvTesoK1CF1rcgg_YkchCFj5TSwQ80HDIGGVAEs2g"
        ),
    }


def test_protocol_vector_intermediates() -> None:
    term = auth.encode_term(IDENTIFIER, T * 1000)
    assert term.hex(" ") == (
        "83 68 03 6d 00 00 00 0b 64 65 76 69 63 65 2d 30 30 30 31 6e 06 00 00 68 e5 cf 8b 01 "
        "62 00 01 51 80"
    )
    salt = auth._salt(KEY, T)
    assert salt == (
        b"NH1:device-socket:shared-secret:connect\n\nx-nh-alg=NH1-HMAC-sha256-1000-32\n"
        b"x-nh-key=nhp_1234567890abcdef\nx-nh-time=1700000000\n"
    )
    derived = hashlib.pbkdf2_hmac("sha256", SECRET.encode(), salt, 1000, 32)
    assert derived.hex() == "2310b1ae920b17acef8026024c06e476997207d93099ed36e0be972facfc5bd2"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "6100"),
        (255, "61ff"),
        (256, "6200000100"),
        (86400, "6200015180"),
        (-1, "62ffffffff"),
        (2**31 - 1, "627fffffff"),
        (2**31, "6e040000000080"),
        (-(2**31) - 1, "6e040101000080"),
    ],
)
def test_term_integers_match_erlang(value: int, encoded: str) -> None:
    # Values cross-checked with Erlang's term_to_binary encoding rules.
    assert auth._etf_integer(value).hex() == encoded


def test_identifier_is_binary_ext_with_utf8() -> None:
    term = auth.encode_term("gw-ü", 1)
    assert term[3] == 0x6D
    assert term[4:8] == (5).to_bytes(4, "big")
    assert term[8:13] == "gw-ü".encode()


def test_signature_is_unpadded_base64url() -> None:
    for ident in ("a", "ab", "abc", "device/with?odd=chars"):
        sig = auth.sign(KEY, SECRET, ident, T)["x-nh-signature"]
        protected, payload, mac = sig.split(".")
        assert protected == "SFMyNTY"
        assert base64.urlsafe_b64decode("SFMyNTY=") == b"HS256"
        assert "=" not in payload and "=" not in mac and "+" not in sig and "/" not in sig


def test_signer_refuses_unset_clock() -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    with pytest.raises(ClockNotSet, match="refusing to sign"):
        signer.headers(86400.0)


def test_signer_signs_a_second_in_the_past_without_server_date() -> None:
    # §3.2.5: absorbs sub-second skew; the server refuses even a fraction of a second ahead.
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    assert signer.headers(T + 0.999)["x-nh-time"] == str(T - 1)


@pytest.mark.parametrize("skew", [0.05, 0.3, 0.7, 0.99, 5.0, -30.0])
def test_signer_never_signs_in_the_servers_future(skew: float) -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    for server_now in (T + 0.0, T + 0.25, T + 0.5, T + 0.999):
        local = server_now + skew
        # The server's Date is truncated to the second and observed a little later.
        signer.observe_server_date({"date": _http_date(int(server_now))}, local + 0.02)
        for later in (0.0, 0.4, 1.7, 30.0):
            assert signer.signing_time(local + later) <= server_now + later
            assert signer.signing_time(local + later) >= server_now + later - 90


def _http_date(t: int) -> str:
    import email.utils

    return email.utils.formatdate(t, usegmt=True)


def test_signer_recovers_slow_clock_from_date() -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    local = T - 500.25  # local clock 500 s slow
    assert signer.observe_server_date({"date": "Tue, 14 Nov 2023 22:13:20 GMT"}, local)
    assert signer.signing_time(local + 2) == T + 2


def test_signer_recovers_fast_clock_from_date() -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    local = T + 5.5  # local clock 5.5 s fast; the server refuses future-dated tokens
    signer.observe_server_date({"date": "Tue, 14 Nov 2023 22:13:20 GMT"}, local)
    assert signer.signing_time(local + 1) == T + 1


def test_signer_ignores_missing_or_bad_date() -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    assert not signer.observe_server_date({}, T)
    assert not signer.observe_server_date({"date": "yesterday"}, T)
    assert signer.signing_time(T) == T - 1


def test_secret_hidden_from_repr() -> None:
    signer = auth.SharedSecretSigner(KEY, SECRET, IDENTIFIER)
    assert SECRET not in repr(signer)
    assert SECRET not in str(signer)


@pytest.mark.parametrize(
    ("key", "secret", "ident", "option"),
    [
        ("", SECRET, IDENTIFIER, "product_key"),
        (KEY, "", IDENTIFIER, "product_secret"),
        (KEY, "sécret", IDENTIFIER, "product_secret"),
        (KEY, SECRET, "", "identifier"),
    ],
)
def test_signer_config_errors(key: str, secret: str, ident: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        auth.SharedSecretSigner(key, secret, ident)
    assert info.value.option == option
