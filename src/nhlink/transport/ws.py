"""asyncio WebSocket client on the sans-I/O :class:`~nhlink.protocol.websocket.ClientConnection`.

Usable on its own::

    async with nhlink.transport.connect("wss://example.com/socket", open_timeout=10) as ws:
        await ws.send_text("hello")
        async for message in ws:      # str for text, bytes for binary
            ...

This module only moves bytes: an :class:`asyncio.BufferedProtocol` feeds the connection object and
writes what it produces. Reads go into one buffer shared by every connection of the event loop
(a connection keeps none of its own while idle), except the rest of a large frame, which the
socket writes straight into the frame's payload (``ClientConnection.receive_buffer``).
Backpressure both ways: reading pauses while more than ``read_limit`` bytes of messages wait for
the application, and sends wait while the transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as ssl_module
import weakref
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

from ..errors import (
    ConfigError,
    ConnectFailed,
    ConnectionClosed,
    ConnectTimeout,
    HandshakeError,
    LocalProtocolError,
    TLSVerificationError,
)
from ..protocol.websocket import CLOSED, CONNECTING, OPEN, ClientConnection, DeflateOptions, Message
from .proxy import Proxy, open_tunnel
from .tlslayer import TLSTransport

__all__ = ["WebSocket", "connect"]

logger = logging.getLogger(__name__)

_MASK_BATCH = 1024  # keys drawn from os.urandom at once: one syscall per 1024 frames


class _MaskKeys:
    """Fresh unpredictable 4-byte masking keys (RFC 6455 §5.3), drawn in batches.

    One per event loop, shared by its connections (:func:`_mask_keys`): every key is still
    drawn from ``os.urandom`` and used once, and a connection does not hold 4 KiB of keys
    while idle. Calls come from the loop's thread only, so the batch is never read twice.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(4 * _MASK_BATCH)
            pos = 0
        self._pos = pos + 4
        return self._buf[pos : pos + 4]


_mask_key_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _MaskKeys] = (
    weakref.WeakKeyDictionary()
)


def _mask_keys(loop: asyncio.AbstractEventLoop) -> _MaskKeys:
    pool = _mask_key_pools.get(loop)
    if pool is None:
        pool = _mask_key_pools[loop] = _MaskKeys()
    return pool


# asyncio's own read size (selector transports read up to 256 KiB at a time).
_READ_SIZE = 256 * 1024
_read_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def _read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The loop's read buffer. One per loop is enough: a transport calls ``get_buffer``, reads,
    then ``buffer_updated`` in one go, and ``buffer_updated`` copies what it needs out at once."""
    view = _read_buffers.get(loop)
    if view is None:
        view = _read_buffers[loop] = memoryview(bytearray(_READ_SIZE))
    return view


class _Protocol(asyncio.BufferedProtocol):
    """Glue between the event loop and one :class:`WebSocket`."""

    __slots__ = ("_buffer", "_direct", "_receive_buffer", "ws")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._buffer = _read_buffer(ws._loop)
        self._receive_buffer = ws._conn.receive_buffer
        self._direct = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.ws._connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._receive_buffer()
        if view is None:
            self._direct = False
            return self._buffer
        self._direct = True  # the rest of a large payload: read straight into it
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            self.ws._payload_received(nbytes)
        else:
            self.ws._data_received(self._buffer[:nbytes].tobytes())

    def eof_received(self) -> bool:
        self.ws._eof_received()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws._connection_lost(exc)

    def pause_writing(self) -> None:
        self.ws._pause_writing()

    def resume_writing(self) -> None:
        self.ws._resume_writing()


# TLS. asyncio's TLS (SSLProtocol) keeps a 256 KiB read buffer per connection (zero-filled, so
# resident: 2.5 GiB for 10,000 connections) and runs each record through a general state machine.
# TLSTransport drives the same SSLObject (same context, same verification) itself, reading
# ciphertext into a buffer the loop's connections share; tls_read_size is how much one read takes.
DEFAULT_TLS_READ_SIZE = 64 * 1024
_TLS_HANDSHAKE_TIMEOUT = 60.0  # asyncio's ssl_handshake_timeout, for connect(open_timeout=None)


async def _open_tls(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.BufferedProtocol,
    ssl_ctx: ssl_module.SSLContext,
    server_hostname: str,
    read_size: int,
    host: str,
    port: int,
    sock: socket.socket | None,
    handshake_timeout: float | None = _TLS_HANDSHAKE_TIMEOUT,
) -> None:
    """TLS over TCP (or over ``sock``) through :class:`~nhlink.transport.tlslayer.TLSTransport`:
    returns once the handshake, verification included, succeeded and ``protocol`` is connected.
    A handshake longer than ``handshake_timeout`` is :class:`ConnectTimeout`."""
    waiter: asyncio.Future[None] = loop.create_future()
    # A failure nobody awaits any more (the caller was cancelled) is not "never retrieved".
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        # Before any socket: an invalid server name fails here, with nothing to clean up.
        tls = TLSTransport(loop, protocol, ssl_ctx, server_hostname, waiter, read_size)
    except ValueError as exc:  # UnicodeError included (an IDNA label too long, ...)
        raise ConfigError(
            "server_hostname", f"{server_hostname!r} is not a valid TLS server name: {exc}"
        ) from exc
    if sock is not None:
        transport, _ = await loop.create_connection(lambda: tls, sock=sock)
    else:
        transport, _ = await loop.create_connection(lambda: tls, host, port)
    try:
        async with asyncio.timeout(handshake_timeout):
            await waiter
    except TimeoutError as exc:  # ours: an open_timeout surfaces here as cancellation
        transport.close()
        raise ConnectTimeout(
            f"the TLS handshake with {host}:{port} took longer than {handshake_timeout} s"
        ) from exc
    except BaseException:
        transport.close()
        raise


class WebSocket:
    """An open WebSocket connection. Create it with :func:`connect`."""

    __slots__ = (
        "_close_timeout",
        "_close_timer",
        "_closed",
        "_conn",
        "_drain_waiters",
        "_loop",
        "_lost_exc",
        "_messages",
        "_opened",
        "_pings",
        "_queued_bytes",
        "_read_limit",
        "_reading_paused",
        "_secure",
        "_transport",
        "_waiter",
        "_write_paused",
    )

    def __init__(
        self,
        conn: ClientConnection,
        *,
        close_timeout: float,
        read_limit: int,
        secure: bool = False,
    ) -> None:
        self._conn = conn
        self._secure = secure
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # Received messages not yet returned; None when there are none, so that an idle
        # connection does not keep an empty deque (760 B) for the time between messages.
        self._messages: deque[Message] | None = None
        self._queued_bytes = 0
        self._read_limit = read_limit
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Resolved by the 101 (or failed); dropped once connect() has seen it (None after).
        self._opened: asyncio.Future[None] | None = self._loop.create_future()
        # Mark a handshake failure as retrieved even if nobody awaits it any more (timeouts).
        self._opened.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._close_timeout = close_timeout
        self._close_timer: asyncio.TimerHandle | None = None
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self._lost_exc: BaseException | None = None

    # -- properties ------------------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's (host, port) of the TCP connection (the proxy's when tunnelled too)."""
        if self._transport is None:
            return None
        sockname = self._transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None

    @property
    def response_headers(self) -> dict[str, str]:
        """The server's 101 response headers (lower-case names); empty after
        :meth:`release_response_headers`."""
        return self._conn.response_headers

    def release_response_headers(self) -> None:
        """Forget the 101 response's headers once read: a connection kept open for days (and
        thousands of them in one process) need not carry them."""
        self._conn.release_response_headers()

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def close_code(self) -> int | None:
        """The close code received (or 1006 if the connection dropped), None while open."""
        return self._conn.close_code

    @property
    def close_reason(self) -> str:
        return self._conn.close_reason

    @property
    def compression(self) -> bool:
        """True when permessage-deflate was negotiated."""
        return self._conn.compression_negotiated

    # -- event loop callbacks ---------------------------------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._flush()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _data_received(self, data: bytes) -> None:
        conn = self._conn
        try:
            messages = conn.receive_data(data)
        except HandshakeError as exc:
            opened = self._opened
            if opened is not None and not opened.done():
                opened.set_exception(exc)
            self._abort()
            return
        opened = self._opened
        if opened is not None and not opened.done() and conn.state != CONNECTING:
            opened.set_result(None)
        self._received(messages)

    def _payload_received(self, nbytes: int) -> None:
        self._received(self._conn.receive_payload(nbytes))

    def _received(self, messages: list[Message]) -> None:
        conn = self._conn
        if messages:
            queue = self._messages
            if queue is None:
                queue = self._messages = deque()
            if len(messages) == 1:
                queue.append(messages[0])
                self._queued_bytes += len(messages[0])
            else:
                queue.extend(messages)
                self._queued_bytes += sum(map(len, messages))
            if self._queued_bytes > self._read_limit and self._transport is not None:
                self._transport.pause_reading()
                self._reading_paused = True
            self._wake()
        if conn.pongs:
            self._handle_pongs()
        if conn.failure_deferred and self._close_timer is None:
            # A protocol error follows the messages just queued: stop reading, let the
            # application take them (and answer), then fail — or fail after close_timeout.
            if self._transport is not None:
                self._transport.pause_reading()
            self._close_timer = self._loop.call_later(self._close_timeout, self._release_failure)
        self._after_receive()

    def _release_failure(self) -> None:
        conn = self._conn
        if not conn.failure_deferred:
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        conn.fail_deferred()
        if self._transport is not None and not self._reading_paused:
            self._transport.resume_reading()  # to see the server's close frame and EOF
        self._after_receive()

    def _after_receive(self) -> None:
        conn = self._conn
        data_out = conn.data_to_send()
        if data_out and self._transport is not None:
            self._transport.write(data_out)
        if conn.close_expected() and self._close_timer is None:
            if conn.failure is not None:
                logger.warning("WebSocket protocol error from server: %s", conn.failure)
            # RFC 6455 §7.1.1: the server closes TCP first; do it ourselves if it does not.
            self._close_timer = self._loop.call_later(self._close_timeout, self._abort)
            self._wake()

    def _eof_received(self) -> None:
        try:
            self._conn.receive_eof()
        except HandshakeError as exc:
            self._handshake_failed(exc)
        self._wake()

    def _handshake_failed(self, exc: Exception) -> None:
        opened = self._opened
        if opened is None or opened.done():
            return
        if (
            self._secure
            and not self._conn.response_started
            and not isinstance(exc, TLSVerificationError)
        ):
            # TLS 1.3 servers refuse a client certificate after the client's handshake is done:
            # the connection then ends before any HTTP response.
            exc = TLSVerificationError(
                "the server closed the TLS connection before answering the WebSocket upgrade "
                f"(with TLS 1.3 this is how a refused client certificate shows): {exc}"
            )
        opened.set_exception(exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ssl_module.SSLError):
            self._handshake_failed(TLSVerificationError(f"TLS: the server refused us: {exc}"))
        if self._conn.state != CLOSED:
            try:
                self._conn.receive_eof()
            except HandshakeError as hexc:
                self._handshake_failed(hexc)
        self._handshake_failed(
            HandshakeError(f"connection lost during the opening handshake: {exc or 'EOF'}")
        )
        self._lost_exc = exc
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._closed.done():
            self._closed.set_result(None)
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        self._pings.clear()
        self._write_paused = False
        self._release_drain_waiters()
        self._wake()

    def _pause_writing(self) -> None:
        self._write_paused = True

    def _resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiters()

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _handle_pongs(self) -> None:
        now = self._loop.time()
        pongs = self._conn.pongs
        while pongs:
            payload = pongs.pop(0)
            if payload not in self._pings:
                continue  # unsolicited pong (RFC 6455 §5.5.3): accepted, ignored
            # A pong answers its ping and every ping sent before it.
            for key in list(self._pings):
                fut = self._pings.pop(key)
                if not fut.done():
                    fut.set_result(now)
                if key == payload:
                    break

    def _closed_error(self) -> ConnectionClosed:
        conn = self._conn
        code = conn.close_code if conn.close_code is not None else 1006
        if conn.failure is not None:
            return ConnectionClosed(code, conn.close_reason, f"connection failed: {conn.failure}")
        return ConnectionClosed(code, conn.close_reason)

    # -- receiving -------------------------------------------------------------------------------

    async def recv(self) -> Message:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Raises :class:`~nhlink.errors.ConnectionClosed` once the connection is closing or closed
        and every message received before the close has been returned.
        """
        message = await self._receive(False)
        assert message is not None
        return message

    def next_message(self) -> Coroutine[Any, Any, Message | None]:
        """Like :meth:`recv`, but None instead of :class:`~nhlink.errors.ConnectionClosed` when the
        close handshake completed cleanly (``async for`` without an async generator: one
        coroutine frame less per idle connection)."""
        return self._receive(True)

    async def _receive(self, clean_none: bool) -> Message | None:
        while not self._messages:
            conn = self._conn
            if conn.state != OPEN or conn.failure is not None:
                exc = self._closed_error()
                if clean_none and exc.code != 1006 and conn.failure is None:
                    return None
                raise exc
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        messages = self._messages
        assert messages is not None
        message = messages.popleft()
        more = bool(messages)
        if not more:
            self._messages = None
            if self._conn.failure_deferred:
                # The last message before a protocol error: fail once the caller had its turn.
                self._loop.call_soon(self._release_failure)
        if self._reading_paused:
            self._queued_bytes -= len(message)
            if self._queued_bytes <= self._read_limit // 4 and self._transport is not None:
                self._reading_paused = False
                self._transport.resume_reading()
        elif more:
            self._queued_bytes -= len(message)
        else:
            self._queued_bytes = 0
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Messages until the close handshake. Ends quietly on a clean close (a close frame was
        exchanged); raises :class:`ConnectionClosed` if the connection failed or dropped."""
        while (message := await self._receive(True)) is not None:
            yield message

    # -- sending ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._write_paused:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self._conn.state == CLOSED:
            raise self._closed_error()

    def _send_checked(self) -> None:
        if self._conn.state != OPEN:
            raise self._closed_error()

    async def send_text(self, text: str | bytes) -> None:
        """Send a text message (``bytes`` must be UTF-8). Waits while the write buffer is full."""
        self._send_checked()
        self._conn.send_text(text)
        self._flush()
        if self._write_paused:
            await self._drain()

    def send_text_nowait(self, text: str | bytes) -> None:
        """Send a small text message without waiting for the write buffer (heartbeats). The
        message is queued in the transport even while it is over its high-water mark."""
        self._send_checked()
        self._conn.send_text(text)
        self._flush()

    def send_binary_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send a small binary message without waiting for the write buffer (heartbeats under
        MessagePack); queued in the transport even while it is over its high-water mark."""
        self._send_checked()
        self._conn.send_binary(data)
        self._flush()

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send a binary message. Waits while the write buffer is full."""
        self._send_checked()
        self._conn.send_binary(data)
        self._flush()
        if self._write_paused:
            await self._drain()

    async def send(self, message: str | bytes) -> None:
        """Send ``str`` as text and ``bytes`` as binary."""
        if isinstance(message, str):
            await self.send_text(message)
        else:
            await self.send_binary(message)

    async def ping(self, data: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; returns a future resolved (with the loop time) when its pong arrives."""
        self._send_checked()
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise LocalProtocolError("a ping with this payload is already waiting for its pong")
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[data] = fut
        self._conn.send_ping(data)
        self._flush()
        await self._drain()
        return fut

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake; returns when the TCP connection is closed.

        Waits up to ``close_timeout`` for the server's close frame and its TCP close, then drops
        the connection. Safe to call more than once and after the server closed.
        """
        if self._conn.state == OPEN:
            self._conn.send_close(code, reason)
            self._flush()
        if self._transport is None:
            return
        if not self._closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout)
            except TimeoutError:
                self._abort()
                await self._closed
            except BaseException:
                self._abort()  # cancelled while waiting: never leave the socket open
                raise

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._abort()

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _parse_url(url: str) -> tuple[bool, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError("url", f"scheme must be ws or wss, not {parts.scheme!r}")
    secure = parts.scheme == "wss"
    if not parts.hostname:
        raise ConfigError("url", f"no host in {url!r}")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ConfigError("url", str(exc)) from exc
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.username or parts.password:
        raise ConfigError("url", "credentials in the URL are not supported")
    return secure, parts.hostname, port, resource


class connect:
    """Open a WebSocket connection.

    ``await connect(url, ...)`` returns an open :class:`WebSocket`;
    ``async with connect(...) as ws`` also closes it. Options:

    * ``ssl``: an :class:`ssl.SSLContext` for ``wss://`` (default: system CAs, verification on).
    * ``extra_headers``: added to the upgrade request (e.g. NervesHub's ``x-nh-*`` headers).
    * ``open_timeout``: limit on TCP + TLS + handshake, in seconds (``None``: no overall limit;
      a TLS handshake still ends after 60 s, as asyncio's does, with :class:`ConnectTimeout`).
    * ``max_message_size``: larger incoming messages fail the connection with 1009.
    * ``compression``: ``"deflate"`` or :class:`DeflateOptions` to offer permessage-deflate.
    * ``read_limit``: bytes of received messages buffered before reading from the socket pauses.
    * ``proxy``: an HTTP proxy (:class:`~nhlink.transport.proxy.Proxy`) to tunnel through
      (``CONNECT``); choose one with :func:`~nhlink.transport.proxy.select_proxy`.
    * ``tls_read_size``: most ciphertext bytes taken from the socket per read (default 64 KiB),
      into a buffer the event loop's connections share: a TLS connection keeps no read buffer
      of its own. ``0`` uses the event loop's TLS as it is (asyncio's ``SSLProtocol``, a
      256 KiB buffer per connection).

    Errors: :class:`ConnectFailed` (DNS, refused), :class:`TLSVerificationError`,
    :class:`ConnectTimeout`, :class:`~nhlink.errors.InvalidStatus` (non-101, with the status,
    headers and body) and :class:`HandshakeError`.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        open_timeout: float | None = 10.0,
        close_timeout: float = 10.0,
        max_message_size: int = 16 * 1024 * 1024,
        compression: Literal["deflate"] | DeflateOptions | None = None,
        read_limit: int = 4 * 1024 * 1024,
        user_agent: str | None = None,
        server_hostname: str | None = None,
        proxy: Proxy | None = None,
        tls_read_size: int = DEFAULT_TLS_READ_SIZE,
    ) -> None:
        if tls_read_size < 0 or 0 < tls_read_size < 4096:
            raise ConfigError("tls_read_size", "must be 0 (asyncio's default) or >= 4096")
        self._tls_read_size = tls_read_size
        self._url = url
        self._proxy = proxy
        self._ssl = ssl
        self._extra_headers = extra_headers
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._compression = DeflateOptions() if compression == "deflate" else compression
        self._read_limit = read_limit
        self._user_agent = user_agent
        self._server_hostname = server_hostname
        self._ws: WebSocket | None = None

    def __await__(self) -> Generator[object, None, WebSocket]:
        return self._connect().__await__()

    async def __aenter__(self) -> WebSocket:
        self._ws = await self._connect()
        return self._ws

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _connect(self) -> WebSocket:
        if self._compression is not None and not isinstance(self._compression, DeflateOptions):
            raise ConfigError("compression", "must be None, 'deflate' or DeflateOptions")
        try:
            async with asyncio.timeout(self._open_timeout):
                return await self._open()
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"connecting to {self._url} took longer than {self._open_timeout} s"
            ) from exc

    async def _open(self) -> WebSocket:
        secure, host, port, resource = _parse_url(self._url)
        loop = asyncio.get_running_loop()
        conn = ClientConnection(
            host=host,
            port=port,
            resource=resource,
            secure=secure,
            key=os.urandom(16),
            mask_key=_mask_keys(loop),
            extra_headers=self._extra_headers,
            max_message_size=self._max_message_size,
            compression=self._compression,
            user_agent=self._user_agent,
        )
        ws = WebSocket(
            conn, close_timeout=self._close_timeout, read_limit=self._read_limit, secure=secure
        )
        ssl_ctx: ssl_module.SSLContext | None = None
        if secure:
            ssl_ctx = self._ssl or ssl_module.create_default_context()
        elif self._ssl is not None:
            raise ConfigError("ssl", "an SSL context was given for a ws:// (plain) URL")
        try:
            tunnel: socket.socket | None = None
            if self._proxy is not None:
                # TLS (and the device certificate) end to end through the tunnel.
                tunnel = await open_tunnel(self._proxy, host, port)
            try:
                if ssl_ctx is not None and self._tls_read_size:
                    await _open_tls(
                        loop,
                        _Protocol(ws),
                        ssl_ctx,
                        self._server_hostname or host,
                        self._tls_read_size,
                        host,
                        port,
                        tunnel,
                        # open_timeout bounds the handshake; without one, asyncio's 60 s do
                        None if self._open_timeout is not None else _TLS_HANDSHAKE_TIMEOUT,
                    )
                elif tunnel is not None:
                    await loop.create_connection(
                        lambda: _Protocol(ws),
                        sock=tunnel,
                        ssl=ssl_ctx,
                        server_hostname=(self._server_hostname or host) if secure else None,
                    )
                else:
                    await loop.create_connection(
                        lambda: _Protocol(ws),
                        host,
                        port,
                        ssl=ssl_ctx,
                        server_hostname=(self._server_hostname or host) if secure else None,
                    )
            except BaseException:
                if tunnel is not None:
                    tunnel.close()
                raise
        except ssl_module.SSLCertVerificationError as exc:
            raise TLSVerificationError(
                f"TLS: the certificate of {host}:{port} did not verify: {exc.verify_message}"
            ) from exc
        except ssl_module.SSLError as exc:
            raise TLSVerificationError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        except socket.gaierror as exc:
            raise ConnectFailed(f"cannot resolve host {host!r}: {exc.strerror}") from exc
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            if not secure:
                raise ConnectFailed(f"connection to {host}:{port} reset: {exc}") from exc
            # TLS 1.2 servers refuse a client certificate with an alert and a reset.
            raise TLSVerificationError(
                f"TLS handshake with {host}:{port} failed: the server dropped the connection "
                "(it may have refused the client certificate, or be shedding load)"
            ) from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        try:
            assert ws._opened is not None
            await ws._opened
            ws._opened = None  # not kept for the connection's life (a fleet holds thousands)
        except (HandshakeError, TLSVerificationError):
            ws._abort()
            raise
        except ConnectionError as exc:
            ws._abort()
            raise ConnectFailed(
                f"connection to {host}:{port} lost during handshake: {exc}"
            ) from exc
        except BaseException:
            ws._abort()
            raise
        # TLS 1.3: a server that refuses our client certificate says so only after the handshake;
        # the connection then drops before the 101, which the handshake error above reports.
        return ws
