"""nhlink's TLS layer (:class:`~nhlink.transport.tlslayer.TLSTransport`) against a scripted peer.

The peer is Python's blocking :class:`ssl.SSLSocket` in a thread, on 127.0.0.1, with certificates
made at test time, so each test can make the server do one exact thing: close with or without
``close_notify``, send a forged record, send a burst of records while the client has paused
reading, refuse the client's certificate, or never answer the handshake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable

import pytest

from nhlink.errors import ConfigError, ConnectTimeout, TLSVerificationError
from nhlink.testing.certs import PKI, create_pki
from nhlink.transport import client_ssl_context, connect
from nhlink.transport.tlslayer import TLSTransport
from nhlink.transport.ws import _open_tls
from tests.support import tls_server_context

TIMEOUT = 10.0
Script = Callable[[ssl.SSLSocket], object]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return create_pki(tmp_path_factory.mktemp("pki"))


class Peer:
    """One TLS connection served by ``script`` in a thread; ``result`` is what it returned (or
    raised)."""

    def __init__(
        self, ctx: ssl.SSLContext | None, script: Script | Callable[[socket.socket], object]
    ):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.port = self._listener.getsockname()[1]
        self.result: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ctx, script), daemon=True)
        self._thread.start()

    def _run(self, ctx: ssl.SSLContext | None, script: Callable[..., object]) -> None:
        try:
            raw, _ = self._listener.accept()
            raw.settimeout(TIMEOUT)
            with raw:
                if ctx is None:
                    self.result.set_result(script(raw))
                    return
                # suppress_ragged_eofs=False: a TCP close without close_notify raises, so a
                # clean b"" really means the client sent close_notify.
                with ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as tls:
                    self.result.set_result(script(tls))
        except BaseException as exc:
            self.result.set_exception(exc)
        finally:
            self._listener.close()

    async def outcome(self) -> object:
        return await asyncio.wait_for(asyncio.wrap_future(self.result), TIMEOUT)


class App(asyncio.BufferedProtocol):
    """An application protocol that records what the TLS layer gives it."""

    def __init__(self, *, pause_at_first: bool = False) -> None:
        self.buffer = bytearray(4096)
        self.data = bytearray()
        self.transport: TLSTransport | None = None
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.pause_at_first = pause_at_first
        self.updates = 0
        self.got: asyncio.Event = asyncio.Event()
        self.want = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TLSTransport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.updates += 1
        if self.pause_at_first and self.updates == 1:
            assert self.transport is not None
            self.transport.pause_reading()
        if len(self.data) >= self.want:
            self.got.set()

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)

    async def received(self, n: int) -> bytes:
        self.want = n
        if len(self.data) < n:
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), TIMEOUT)
        return bytes(self.data)


async def _open(
    pki: PKI, port: int, app: App, *, ctx: ssl.SSLContext | None = None
) -> TLSTransport:
    loop = asyncio.get_running_loop()
    await _open_tls(
        loop,
        app,
        ctx or client_ssl_context(cafile=pki.ca.cert),
        "127.0.0.1",
        16384,
        "127.0.0.1",
        port,
        None,
    )
    assert app.transport is not None
    return app.transport


@pytest.fixture(params=[True, False], ids=["tls1.3", "tls1.2"])
def tls13(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_echo_and_connection_details(pki: PKI, tls13: bool) -> None:
    def script(s: ssl.SSLSocket) -> str:
        s.sendall(s.recv(100).upper())
        assert s.recv(100) == b""  # until the client's close_notify
        return str(s.version())

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    tls = await _open(pki, peer.port, app)
    tls.write(b"")  # nothing to send, no record
    tls.write(b"hello")
    assert await app.received(5) == b"HELLO"
    assert tls.get_extra_info("ssl_object").version() == ("TLSv1.3" if tls13 else "TLSv1.2")
    subject = dict(x[0] for x in tls.get_extra_info("peercert")["subject"])
    assert subject["commonName"]
    assert tls.get_extra_info("cipher")[0]
    assert tls.get_extra_info("sockname")[0] == "127.0.0.1"  # from the TCP transport
    assert not hasattr(tls, "__dict__")
    tls.close()
    assert await peer.outcome() == ("TLSv1.3" if tls13 else "TLSv1.2")
    assert await asyncio.wait_for(app.lost, TIMEOUT) is None


async def test_a_close_notify_is_an_eof_and_answered(pki: PKI, tls13: bool) -> None:
    def script(s: ssl.SSLSocket) -> str:
        s.sendall(b"bye")
        plain = s.unwrap()  # sends close_notify, returns only once the client's came back
        plain.close()
        return "unwrapped"

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    await _open(pki, peer.port, app)
    assert await app.received(3) == b"bye"
    assert await asyncio.wait_for(app.lost, TIMEOUT) is None
    assert app.eof
    assert await peer.outcome() == "unwrapped"


async def test_close_sends_close_notify(pki: PKI, tls13: bool) -> None:
    def script(s: ssl.SSLSocket) -> bytes:
        first = s.recv(100)
        return first + b"|" + s.recv(100)  # b"" only for close_notify (ragged EOFs raise)

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    tls = await _open(pki, peer.port, app)
    tls.write(b"last words")
    tls.close()
    assert tls.is_closing()
    tls.write(b"dropped")  # after close: dropped quietly, as asyncio's transports do
    assert await peer.outcome() == b"last words|"
    assert await asyncio.wait_for(app.lost, TIMEOUT) is None


async def test_tcp_closed_without_close_notify_is_an_eof(pki: PKI, tls13: bool) -> None:
    def script(s: ssl.SSLSocket) -> None:
        s.sendall(b"cut")
        s.shutdown(socket.SHUT_RDWR)  # TCP FIN, no close_notify

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    await _open(pki, peer.port, app)
    await peer.outcome()
    assert await app.received(3) == b"cut"
    assert await asyncio.wait_for(app.lost, TIMEOUT) is None
    assert app.eof


async def test_a_forged_record_ends_the_connection_with_a_tls_error(pki: PKI, tls13: bool) -> None:
    def script(s: ssl.SSLSocket) -> None:
        s.sendall(b"genuine")
        s.recv(10)  # the client saw it
        # An application-data record that was never encrypted with this session's keys.
        os.write(s.fileno(), b"\x17\x03\x03\x00\x20" + bytes(32))
        with contextlib.suppress(ssl.SSLError, OSError):
            s.recv(10)  # the client's alert (or its close)

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    tls = await _open(pki, peer.port, app)
    assert await app.received(7) == b"genuine"
    tls.write(b"ok")
    exc = await asyncio.wait_for(app.lost, TIMEOUT)
    assert isinstance(exc, ssl.SSLError), exc
    assert exc.__traceback__ is None  # kept without the frames (and buffers) it passed
    assert app.data == b"genuine"  # nothing of the forged record reached the application
    await peer.outcome()


async def test_records_wait_while_reading_is_paused(pki: PKI, tls13: bool) -> None:
    chunks = [bytes([i]) * 1000 for i in range(60)]

    sent: concurrent.futures.Future[None] = concurrent.futures.Future()

    def script(s: ssl.SSLSocket) -> str:
        for chunk in chunks:
            s.sendall(chunk)  # one record each
        sent.set_result(None)
        return s.recv(10).decode()

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App(pause_at_first=True)
    tls = await _open(pki, peer.port, app)
    app.want = 1
    await asyncio.wait_for(app.got.wait(), TIMEOUT)
    assert not tls.is_reading()
    delivered = len(app.data)
    assert delivered < 60_000  # paused after the first delivery: the rest waits
    await asyncio.wait_for(asyncio.wrap_future(sent), TIMEOUT)  # all of it is on its way
    assert len(app.data) == delivered  # and nothing more was delivered while paused
    tls.resume_reading()
    assert await app.received(60_000) == b"".join(chunks)  # all of it, in order
    tls.write(b"done")
    assert await peer.outcome() == "done"
    tls.close()


async def test_a_large_write_arrives_whole(pki: PKI, tls13: bool) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 123)  # more than one 256 KiB encryption step

    def script(s: ssl.SSLSocket) -> str:
        digest = hashlib.sha256()
        left = len(blob)
        while left:
            data = s.recv(min(left, 65536))
            assert data
            digest.update(data)
            left -= len(data)
        return digest.hexdigest()

    peer = Peer(tls_server_context(pki, tls13=tls13), script)
    app = App()
    tls = await _open(pki, peer.port, app)
    tls.write(blob)
    assert await peer.outcome() == hashlib.sha256(blob).hexdigest()
    tls.close()


async def test_a_failed_verification_sends_the_alert(pki: PKI) -> None:
    peer = Peer(tls_server_context(pki), lambda s: None)
    app = App()
    with pytest.raises(ssl.SSLCertVerificationError):
        await _open(pki, peer.port, app, ctx=client_ssl_context(cafile=pki.untrusted_ca.cert))
    with pytest.raises(ssl.SSLError, match=r"(?i)unknown.ca"):
        await peer.outcome()  # the server learnt why: the client's unknown-CA alert
    assert app.transport is None  # the application never saw a connection


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
async def test_a_refused_client_certificate_is_a_verification_error(pki: PKI, tls13: bool) -> None:
    stranger = pki.device("intruder", trusted=False)

    def script(s: ssl.SSLSocket) -> None:
        s.recv(10)

    peer = Peer(tls_server_context(pki, tls13=tls13, require_client=True), script)
    ctx = client_ssl_context(cafile=pki.ca.cert, certfile=stranger.cert, keyfile=stranger.key)
    with pytest.raises(TLSVerificationError):
        await connect(f"wss://127.0.0.1:{peer.port}/", ssl=ctx, open_timeout=TIMEOUT)
    with pytest.raises(ssl.SSLError):
        await peer.outcome()


async def test_a_connection_closed_during_the_handshake_fails_it(pki: PKI) -> None:
    peer = Peer(None, lambda raw: raw.recv(1))  # TCP accepted, ClientHello read, then closed
    with pytest.raises(TLSVerificationError, match="dropped the connection"):
        await connect(
            f"wss://127.0.0.1:{peer.port}/",
            ssl=client_ssl_context(cafile=pki.ca.cert),
            open_timeout=TIMEOUT,
        )
    await peer.outcome()


async def test_a_stalled_handshake_times_out_and_closes_the_socket(pki: PKI) -> None:
    def script(raw: socket.socket) -> bytes:
        hello = raw.recv(65536)  # never answered
        while raw.recv(65536):
            pass
        return hello[:1]  # returns once the client closed TCP

    peer = Peer(None, script)
    with pytest.raises(ConnectTimeout):
        await connect(
            f"wss://127.0.0.1:{peer.port}/",
            ssl=client_ssl_context(cafile=pki.ca.cert),
            open_timeout=0.5,
        )
    assert await peer.outcome() == b"\x16"  # a TLS handshake record was sent, then TCP closed


def _renegotiate_function() -> Callable[[ssl.SSLSocket], None] | None:
    """``SSL_renegotiate`` + ``SSL_do_handshake`` on a server socket through ctypes (Python's ssl
    has no call for it): sends a HelloRequest. None where this CPython's ``_ssl`` objects are not
    laid out as expected (checked: the SSL found must belong to the socket's own SSL_CTX)."""
    from nhlink.transport.pkcs11 import _loaded_libraries

    lib = ctypes.CDLL(_loaded_libraries()[1])
    vp = ctypes.c_void_p
    lib.SSL_get_SSL_CTX.argtypes, lib.SSL_get_SSL_CTX.restype = [vp], vp
    lib.SSL_renegotiate.argtypes, lib.SSL_renegotiate.restype = [vp], ctypes.c_int
    lib.SSL_do_handshake.argtypes, lib.SSL_do_handshake.restype = [vp], ctypes.c_int
    head = object.__basicsize__

    def ssl_pointer(s: ssl.SSLSocket | ssl.SSLObject) -> int | None:
        # _ssl._SSLSocket: header, the socket's weakref, then SSL*; _SSLContext: header, SSL_CTX*.
        native = s._sslobj  # type: ignore[union-attr]
        pointer = vp.from_address(id(native) + head + ctypes.sizeof(vp)).value
        ctx = vp.from_address(id(s.context) + head).value
        if not pointer or not ctx or lib.SSL_get_SSL_CTX(pointer) != ctx:
            return None
        return int(pointer)

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe"
    )
    if ssl_pointer(probe) is None:
        return None

    def renegotiate(s: ssl.SSLSocket) -> None:
        pointer = ssl_pointer(s)
        assert pointer is not None
        assert lib.SSL_renegotiate(pointer) == 1
        assert lib.SSL_do_handshake(pointer) == 1  # the HelloRequest is out

    return renegotiate


async def test_writes_wait_for_a_renegotiation_and_keep_their_order(pki: PKI) -> None:
    # TLS 1.2 lets a server renegotiate; a write while the client's new handshake waits for the
    # server is held back (OpenSSL wants to read first) and sent, in order, once it is done.
    renegotiate = _renegotiate_function()
    if renegotiate is None:
        pytest.skip("this CPython's _ssl layout is not the one the ctypes probe knows")

    def script(s: ssl.SSLSocket) -> bytes:
        assert s.recv(10) == b"go"
        renegotiate(s)
        s.sendall(b"ping")  # application data right behind the HelloRequest
        received = b""
        while len(received) < 9:
            received += s.recv(10)  # drives the server's side of the new handshake
        return received

    peer = Peer(tls_server_context(pki, tls13=False), script)
    held_back: list[bool] = []

    class Ponger(App):
        def buffer_updated(self, nbytes: int) -> None:
            super().buffer_updated(nbytes)
            assert self.transport is not None
            self.transport.write(b"pong")
            self.transport.write(b"!")
            held_back.append(self.transport._backlog is not None)
            self.transport.write(b"done")

    app = Ponger()
    tls = await _open(pki, peer.port, app)
    tls.write(b"go")
    assert await peer.outcome() == b"pong!done"
    assert await app.received(4) == b"ping"
    assert held_back == [True]  # the writes really waited for the handshake
    tls.close()


@pytest.mark.parametrize("method", ["abort", "close"])
async def test_abort_or_close_during_the_handshake_fails_it_at_once(pki: PKI, method: str) -> None:
    peer = Peer(None, lambda raw: raw.recv(65536) and raw.recv(1))  # never answers
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    app = App()
    tls = TLSTransport(
        loop, app, client_ssl_context(cafile=pki.ca.cert), "127.0.0.1", waiter, 16384
    )
    await loop.create_connection(lambda: tls, "127.0.0.1", peer.port)
    assert tls.is_closing()  # not open yet
    getattr(tls, method)()
    with pytest.raises(ConnectionAbortedError):
        await asyncio.wait_for(waiter, TIMEOUT)  # at once, not after a handshake timeout
    assert app.transport is None
    assert await peer.outcome() == b""  # the server saw the TCP connection end


async def test_an_eof_while_reading_is_paused_waits_for_the_records_before_it(pki: PKI) -> None:
    # A proactor event loop reports EOF even while the application has reading paused; the
    # records already received must still come first, then the EOF.
    chunks = [bytes([i]) * 1000 for i in range(8)]  # one TCP read's worth

    def script(s: ssl.SSLSocket) -> None:
        for chunk in chunks:
            s.sendall(chunk)
        with contextlib.suppress(ssl.SSLEOFError):
            s.recv(10)  # until the client closes TCP (no close_notify: the EOF was TCP's)

    peer = Peer(tls_server_context(pki), script)
    app = App(pause_at_first=True)
    tls = await _open(pki, peer.port, app)
    await app.received(1)
    while len(app.data) + tls._incoming.pending + tls._sslobj.pending() < 8000:
        # the rest is still on its way into this connection's BIO: let one more read happen
        tls.resume_reading()
        app.pause_at_first, app.updates = True, 0
        await app.received(len(app.data) + 1)
    assert not tls.is_reading()
    delivered = len(app.data)
    assert tls.eof_received() is True  # held: records are waiting
    assert (app.eof, len(app.data)) == (False, delivered)  # nothing yet, not even the EOF
    app.pause_at_first = False
    tls.resume_reading()
    assert await app.received(8000) == b"".join(chunks)
    assert await asyncio.wait_for(app.lost, TIMEOUT) is None
    assert app.eof
    await peer.outcome()


async def test_a_handshake_longer_than_its_limit_is_a_connect_timeout(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nhlink.transport.ws as ws_module

    monkeypatch.setattr(ws_module, "_TLS_HANDSHAKE_TIMEOUT", 0.3)  # asyncio's 60 s, shortened
    peer = Peer(None, lambda raw: raw.recv(65536) and raw.recv(1))  # never answers
    with pytest.raises(ConnectTimeout, match="TLS handshake"):
        await connect(
            f"wss://127.0.0.1:{peer.port}/",
            ssl=client_ssl_context(cafile=pki.ca.cert),
            open_timeout=None,  # no overall limit: the handshake's own applies
        )
    assert await peer.outcome() == b""


async def test_an_invalid_server_name_is_refused_before_any_connection(pki: PKI) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    with listener:
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError, match="server_hostname"):
            await connect(
                f"wss://127.0.0.1:{port}/",
                ssl=client_ssl_context(cafile=pki.ca.cert),
                server_hostname="a" * 64 + ".example",  # an IDNA label over 63 characters
            )
        with pytest.raises(BlockingIOError):
            listener.accept()  # no TCP connection was made (so none was left open)


async def test_an_application_failing_in_connection_made_fails_the_attempt(pki: PKI) -> None:
    class Failing(App):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            raise LookupError("the application refused")

    def script(s: ssl.SSLSocket) -> str:
        try:
            return repr(s.recv(10))
        except ssl.SSLEOFError:
            return "TCP closed"

    peer = Peer(tls_server_context(pki), script)
    app = Failing()
    with pytest.raises(LookupError, match="refused"):
        await asyncio.wait_for(_open(pki, peer.port, app), TIMEOUT)  # at once, no timeout
    assert await peer.outcome() == "TCP closed"  # nothing was sent, the connection ended
    assert not app.lost.done()  # connection_lost only follows a connection_made that worked
