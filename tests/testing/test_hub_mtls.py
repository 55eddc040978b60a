"""mTLS against FakeHub (§3.1, §2.4): the subject CN identifies the device."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from nhlink.testing import NO_AUTH_REASON, FakeHub
from nhlink.testing.certs import CertPair
from tests.testing import _signer
from tests.testing.conftest import KEY, SECRET, FrozenClock, join_device

pytest.importorskip("cryptography")


async def test_certificate_cn_identifies_the_device(pki: Any, clock: FrozenClock) -> None:
    device = pki.device("cert-device-1")
    async with FakeHub(tls=pki.server_context(), clock=clock) as hub:
        assert hub.url.startswith("wss://127.0.0.1:")
        async with connect(hub.url, ssl=pki.client_context(device), open_timeout=5) as ws:
            assert (await join_device(ws))[4]["status"] == "ok"
            record = await hub.wait_for_device("cert-device-1")
        assert record.auth == "certificate"
        assert record.certificate_sha1 is not None
        assert len(record.certificate_sha1) == 40
        assert record.certificate_sha1 == record.certificate_sha1.upper()


async def test_certificate_wins_over_shared_secret_headers(pki: Any, clock: FrozenClock) -> None:
    device = pki.device("cert-device-2")
    headers = _signer.sign(KEY, SECRET, "someone-else", int(clock()))
    async with (
        FakeHub(tls=pki.server_context(), shared_secrets={KEY: SECRET}, clock=clock) as hub,
        connect(
            hub.url, ssl=pki.client_context(device), additional_headers=headers, open_timeout=5
        ),
    ):
        await hub.wait_for_device("cert-device-2", joined=False)
    assert "someone-else" not in hub.devices


async def test_untrusted_ca_is_rejected_in_the_handshake(pki: Any, clock: FrozenClock) -> None:
    rogue = pki.device("rogue-device", trusted=False)
    async with FakeHub(tls=pki.server_context(), clock=clock) as hub:
        with pytest.raises(OSError):  # ssl.SSLError or a reset, depending on timing
            async with connect(hub.url, ssl=pki.client_context(rogue), open_timeout=5):
                pass
        assert "rogue-device" not in hub.devices
        assert hub.attempts == []


async def test_shared_secret_over_tls_without_a_certificate(pki: Any, clock: FrozenClock) -> None:
    headers = _signer.sign(KEY, SECRET, "secret-device", int(clock()))
    async with (
        FakeHub(tls=pki.server_context(), shared_secrets={KEY: SECRET}, clock=clock) as hub,
        connect(hub.url, ssl=pki.client_context(), additional_headers=headers, open_timeout=5),
    ):
        record = await hub.wait_for_device("secret-device", joined=False)
        assert record.auth == "product_key"


async def test_tls_without_any_credentials(pki: Any, clock: FrozenClock) -> None:
    async with FakeHub(tls=pki.server_context(), clock=clock) as hub:
        with pytest.raises(InvalidStatus) as info:
            async with connect(hub.url, ssl=pki.client_context(), open_timeout=5):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["nh-connection-error-reason"] == NO_AUTH_REASON


async def test_certificate_allow_list(pki: Any, clock: FrozenClock) -> None:
    known, unknown = pki.device("known-cn"), pki.device("unknown-cn")
    async with FakeHub(
        tls=pki.server_context(), clock=clock, certificate_identifiers={"known-cn"}
    ) as hub:
        async with connect(hub.url, ssl=pki.client_context(known), open_timeout=5):
            await hub.wait_for_device("known-cn", joined=False)
        with pytest.raises(InvalidStatus) as info:
            async with connect(hub.url, ssl=pki.client_context(unknown), open_timeout=5):
                pass
        assert info.value.response.status_code == 401
        assert hub.upgrade_counts("unknown-cn") == {401: 1}


async def test_certificate_without_cn_is_refused(pki: Any, clock: FrozenClock) -> None:
    anonymous = pki.device("")
    async with FakeHub(tls=pki.server_context(), clock=clock) as hub:
        with pytest.raises(InvalidStatus) as info:
            async with connect(hub.url, ssl=pki.client_context(anonymous), open_timeout=5):
                pass
        assert info.value.response.status_code == 401
        assert hub.attempts[-1].reason == "no_common_name"


async def test_server_is_tls_1_2_only_by_default(pki: Any, clock: FrozenClock) -> None:
    context = pki.client_context(pki.device("tls13-device"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    async with FakeHub(tls=pki.server_context(), clock=clock) as hub:
        with pytest.raises(OSError):
            async with connect(hub.url, ssl=context, open_timeout=5):
                pass
    async with (
        FakeHub(tls=pki.server_context(tls13=True), clock=clock) as hub,
        connect(hub.url, ssl=context, open_timeout=5) as ws,
    ):
        await hub.wait_for_device("tls13-device", joined=False)
        assert ws.transport.get_extra_info("ssl_object").version() == "TLSv1.3"


def test_pki_files(pki: Any) -> None:
    from cryptography import x509

    for pair in (pki.ca, pki.server, pki.untrusted_ca):
        assert isinstance(pair, CertPair)
        assert pair.cert.exists()
        assert pair.key.stat().st_mode & 0o777 == 0o600
    device = pki.device("pki-check")
    cert = x509.load_pem_x509_certificate(device.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["pki-check"]
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
