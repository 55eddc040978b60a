"""wss:// against the websockets library's server with certificates generated at test time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from nhlink.errors import ConfigError, TLSVerificationError
from nhlink.testing.certs import PKI, create_pki
from nhlink.transport import client_ssl_context, connect
from nhlink.transport.tlslayer import TLSTransport
from tests.support import tls_server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return create_pki(tmp_path_factory.mktemp("pki"))


async def _peer_cn(ws: ServerConnection) -> None:
    sslobj = ws.transport.get_extra_info("ssl_object")
    cert = sslobj.getpeercert() if sslobj is not None else None
    cn = ""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    await ws.send(f"cn={cn}")
    async for message in ws:
        await ws.send(message)


async def _start(
    pki: PKI, *, require_client: bool = False, tls13: bool = True
) -> tuple[object, str]:
    server = await serve(
        _peer_cn,
        "127.0.0.1",
        0,
        ssl=tls_server_context(pki, require_client=require_client, tls13=tls13),
        max_size=4 << 20,
    )
    port = server.sockets[0].getsockname()[1]
    return server, f"wss://127.0.0.1:{port}/"


@pytest.fixture
async def tls_url(pki: PKI) -> AsyncIterator[str]:
    server, url = await _start(pki)
    yield url
    server.close()  # type: ignore[attr-defined]


async def test_verified_server(pki: PKI, tls_url: str) -> None:
    ctx = client_ssl_context(cafile=pki.ca.cert)
    async with connect(tls_url, ssl=ctx) as ws:
        assert await ws.recv() == "cn="
        await ws.send_text("over tls")
        assert await ws.recv() == "over tls"


async def test_untrusted_server_rejected(pki: PKI, tls_url: str) -> None:
    ctx = client_ssl_context(cafile=pki.untrusted_ca.cert)
    with pytest.raises(TLSVerificationError, match="did not verify"):
        await connect(tls_url, ssl=ctx)


async def test_system_store_does_not_trust_test_ca(tls_url: str) -> None:
    with pytest.raises(TLSVerificationError):
        await connect(tls_url)  # default context: verification on, system CAs


async def test_hostname_checked(pki: PKI, tls_url: str) -> None:
    ctx = client_ssl_context(cafile=pki.ca.cert)
    with pytest.raises(TLSVerificationError, match="did not verify"):
        await connect(tls_url, ssl=ctx, server_hostname="not-the-hub.example")


async def test_disabling_verification_is_loud(
    pki: PKI, tls_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nhlink.transport.tls"):
        ctx = client_ssl_context(dangerously_disable_verification=True)
    assert "DISABLED" in caplog.text
    async with connect(tls_url, ssl=ctx) as ws:
        assert await ws.recv() == "cn="


@pytest.mark.parametrize("tls13", [False, True])
async def test_mtls_device_certificate(pki: PKI, tls13: bool) -> None:
    server, url = await _start(pki, require_client=True, tls13=tls13)
    try:
        device = pki.device("gw-0001")
        ctx = client_ssl_context(cafile=pki.ca.cert, certfile=device.cert, keyfile=device.key)
        async with connect(url, ssl=ctx) as ws:
            assert await ws.recv() == "cn=gw-0001"
    finally:
        server.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("tls13", [False, True])
async def test_rejected_client_certificate(pki: PKI, tls13: bool) -> None:
    server, url = await _start(pki, require_client=True, tls13=tls13)
    try:
        stranger = pki.device("intruder", trusted=False)
        ctx = client_ssl_context(cafile=pki.ca.cert, certfile=stranger.cert, keyfile=stranger.key)
        with pytest.raises(TLSVerificationError):
            await asyncio.wait_for(connect(url, ssl=ctx), 10)
    finally:
        server.close()  # type: ignore[attr-defined]


async def test_chain_file_is_sent(pki: PKI, tmp_path: Path) -> None:
    server, url = await _start(pki, require_client=True)
    try:
        device = pki.device("gw-chain")
        ctx = client_ssl_context(
            cafile=pki.ca.cert, certfile=device.cert, keyfile=device.key, chainfile=pki.ca.cert
        )
        async with connect(url, ssl=ctx) as ws:
            assert await ws.recv() == "cn=gw-chain"
    finally:
        server.close()  # type: ignore[attr-defined]


def test_config_errors(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        client_ssl_context(cafile=tmp_path / "missing.pem")
    assert info.value.option == "ca_file"
    with pytest.raises(ConfigError) as info:
        client_ssl_context(certfile=pki.server.cert)
    assert info.value.option == "device_cert"
    with pytest.raises(ConfigError) as info:
        client_ssl_context(certfile=pki.server.cert, keyfile=pki.ca.key)  # key does not match
    assert info.value.option == "device_cert"


async def test_ssl_context_on_plain_url_refused(pki: PKI) -> None:
    with pytest.raises(ConfigError):
        await connect("ws://127.0.0.1:9/", ssl=client_ssl_context(cafile=pki.ca.cert))


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
async def test_large_messages_are_received_in_place_over_tls(
    pki: PKI, tls13: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio's TLS transport drives a BufferedProtocol with SSLObject.read(n, buffer): the rest
    # of a large frame is decrypted straight into the frame's payload.
    from nhlink.protocol.websocket import ClientConnection

    in_place: list[int] = []
    original = ClientConnection.receive_payload

    def counting(self: ClientConnection, nbytes: int) -> list[str | bytes]:
        in_place.append(nbytes)
        return original(self, nbytes)

    monkeypatch.setattr(ClientConnection, "receive_payload", counting)
    server, url = await _start(pki, tls13=tls13)
    try:
        big = bytes(range(256)) * 8192  # 2 MiB
        text = "€" * 100_000  # 300,000 bytes of UTF-8
        async with connect(
            url, ssl=client_ssl_context(cafile=pki.ca.cert), max_message_size=4 << 20
        ) as ws:
            assert await ws.recv() == "cn="
            for message in (big, "small", text, b"\x00" * 70_000, big):
                await ws.send(message)
                assert await ws.recv() == message
    finally:
        server.close()  # type: ignore[attr-defined]
    # Most of the large payloads' bytes went in place (only what came with a header did not).
    assert sum(in_place) > (2 * len(big) + 300_000) // 2


@pytest.mark.parametrize("read_size", [16 * 1024, 64 * 1024, 0], ids=["16k", "default", "asyncio"])
async def test_tls_connections_keep_no_read_buffer_and_verify_the_same(
    pki: PKI, tls_url: str, read_size: int
) -> None:
    # asyncio's TLS keeps a 256 KiB zero-filled read buffer per connection; nhlink's TLS layer
    # reads ciphertext into one buffer the loop's connections share. Verification is the same
    # context's either way.
    ctx = client_ssl_context(cafile=pki.ca.cert)
    async with (
        connect(tls_url, ssl=ctx, tls_read_size=read_size) as ws1,
        connect(tls_url, ssl=ctx, tls_read_size=read_size) as ws2,
    ):
        assert await ws1.recv() == await ws2.recv() == "cn="
        t1, t2 = ws1._transport, ws2._transport
        if read_size:
            assert isinstance(t1, TLSTransport) and isinstance(t2, TLSTransport)
            assert t1._read_view is t2._read_view  # shared, not per connection
            assert len(t1._read_view) == read_size
            assert not hasattr(t1, "__dict__")
        else:
            tls = t1._ssl_protocol  # type: ignore[union-attr]
            assert len(tls._ssl_buffer) == 256 * 1024
        assert t1 is not None and t1.get_extra_info("ssl_object").version() == "TLSv1.3"
        await ws1.send_text("x" * 100_000)
        assert await ws1.recv() == "x" * 100_000
    with pytest.raises(TLSVerificationError, match="did not verify"):
        await connect(
            tls_url, ssl=client_ssl_context(cafile=pki.untrusted_ca.cert), tls_read_size=read_size
        )
    with pytest.raises(ConfigError, match="tls_read_size"):
        connect(tls_url, tls_read_size=100)
