"""TLS for the WebSocket transport: one :class:`ssl.SSLObject` over memory BIOs, driven directly.

``loop.create_connection(..., ssl=context)`` runs TLS through asyncio's ``SSLProtocol`` and its app
transport: a general state machine (write backlogs, two layers of flow control, shutdown timers)
with a 256 KiB read buffer per connection. A heartbeat then costs a dozen Python calls each way
around the two C calls that do the work. :class:`TLSTransport` is both the TCP socket's protocol and
the WebSocket's transport, and does only what a client stream needs:

* the handshake and verification are the context's own (``context.wrap_bio(..., server_hostname)``,
  exactly what asyncio calls): a context that verifies the peer still verifies it here;
* ciphertext is read into one buffer shared by the event loop's connections and copied at once
  into the connection's incoming BIO, so an idle connection holds no read buffer of its own;
* plaintext is decrypted straight into the application protocol's buffer
  (:meth:`asyncio.BufferedProtocol.get_buffer`), records batched into one ``buffer_updated``;
* a write encrypts and hands the records to the TCP transport in the same call (large writes in
  256 KiB pieces); the TCP transport's buffer limits and pause/resume are the application's;
* ``close()`` sends ``close_notify`` and closes TCP without waiting for the peer's (the WebSocket
  closing handshake has already ended the conversation); a ``close_notify`` received is an EOF.

TLS errors after the handshake (a bad record, an alert) end the connection with the
:class:`ssl.SSLError` passed to ``connection_lost``; handshake errors fail the waiter given to the
constructor, after sending the alert OpenSSL produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections.abc import Callable
from typing import Any, cast

from ..errors import without_traceback

__all__ = ["TLSTransport"]

logger = logging.getLogger(__name__)

# asyncio treats SSLSyscallError like "want read" on memory BIOs; so do we.
_AGAIN = (ssl.SSLWantReadError, ssl.SSLSyscallError)
_WRITE_CHUNK = 256 * 1024  # plaintext encrypted per step of a large write

_HANDSHAKE, _OPEN, _CLOSING, _FAILED, _CLOSED = range(5)

# Ciphertext read buffers, one per event loop (and read size): the TCP transport fills it and
# buffer_updated copies it into the connection's incoming BIO before anything else runs.
_cipher_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, memoryview]] = (
    weakref.WeakKeyDictionary()
)


def _cipher_buffer(loop: asyncio.AbstractEventLoop, size: int) -> memoryview:
    views = _cipher_buffers.get(loop)
    if views is None:
        views = _cipher_buffers[loop] = {}
    view = views.get(size)
    if view is None:
        view = views[size] = memoryview(bytearray(size))
    return view


class _Gone(asyncio.BufferedProtocol):
    """Stands in for the application protocol once the connection is lost (drops the cycle
    transport -> protocol -> WebSocket -> transport without an Optional on every path)."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:  # pragma: no cover - never read into
        return memoryview(bytearray(1))

    def buffer_updated(self, nbytes: int) -> None:  # pragma: no cover
        pass


_GONE = _Gone()


class TLSTransport(asyncio.Transport, asyncio.BufferedProtocol):
    """A TLS client stream over a TCP transport. Create it in ``loop.create_connection``'s protocol
    factory; ``waiter`` resolves when the handshake (verification included) succeeded, with
    ``app.connection_made(self)`` already called, or fails with the handshake's error."""

    __slots__ = (
        "_app",
        "_backlog",
        "_eof_pending",
        "_exc",
        "_incoming",
        "_loop",
        "_outgoing",
        "_paused",
        "_read_view",
        "_sslobj",
        "_state",
        "_tcp",
        "_waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: asyncio.BufferedProtocol,
        context: ssl.SSLContext,
        server_hostname: str,
        waiter: asyncio.Future[None],
        read_size: int,
    ) -> None:
        self._loop = loop
        self._app: asyncio.BufferedProtocol = app
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._waiter: asyncio.Future[None] | None = waiter
        self._state = _HANDSHAKE
        self._tcp: asyncio.Transport | None = None
        self._paused = False
        # Application data held back while a renegotiation wants to read first (TLS 1.2).
        self._backlog: list[bytes] | None = None
        self._exc: BaseException | None = None
        self._eof_pending = False  # TCP ended while reading was paused with records left
        self._read_view = _cipher_buffer(loop, read_size)

    # -- protocol side (called by the TCP transport) ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._tcp = transport
        if self._state != _HANDSHAKE:  # closed or aborted before TCP was up
            transport.close()
            return
        self._handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self._incoming.write(self._read_view[:nbytes])
        state = self._state
        if state == _OPEN:
            if not self._paused:
                self._read()
        elif state == _HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool:
        if self._state == _HANDSHAKE:
            self._handshake_failed(
                ConnectionResetError("the server closed the connection during the TLS handshake")
            )
        elif self._state == _OPEN:
            if self._paused and (self._incoming.pending or self._sslobj.pending()):
                # Records wait for resume_reading (a proactor loop reports EOF while the
                # application has reading paused): keep TCP, deliver the EOF after them.
                self._eof_pending = True
                return True
            # TCP ended without close_notify. Everything decrypted so far was delivered; a
            # WebSocket tells a truncated stream from a finished one by its closing handshake.
            self._end_of_stream()
        return False  # the TCP transport closes itself

    def _end_of_stream(self) -> None:
        self._state = _CLOSING
        self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._state = _CLOSED
        self._tcp = None
        lost = self._exc if self._exc is not None else exc  # the TLS error, not what followed
        self._exc = None
        if state == _HANDSHAKE:
            self._handshake_failed(
                lost or ConnectionResetError("connection closed during the TLS handshake")
            )
        elif state in (_OPEN, _CLOSING):
            app, self._app = self._app, _GONE
            app.connection_lost(lost if isinstance(lost, Exception) else None)
        self._app = _GONE

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # -- TLS ---------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the records OpenSSL produced to TCP."""
        if self._outgoing.pending and self._tcp is not None:
            self._tcp.write(self._outgoing.read())

    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except _AGAIN:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert, so the server logs why
            self._handshake_failed(exc)
            return
        self._flush()
        self._state = _OPEN
        waiter, self._waiter = self._waiter, None
        try:
            self._app.connection_made(self)
        except Exception as exc:  # the application's failure ends the attempt, not the loop
            self._state = _FAILED
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            if self._tcp is not None:
                self._tcp.close()
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        pending = self._incoming.pending or self._sslobj.pending()
        if pending and self._state == _OPEN and not self._paused:
            self._read()  # records that came with the server's last flight

    def _handshake_failed(self, exc: BaseException) -> None:
        if self._state == _HANDSHAKE:
            self._state = _FAILED
            if self._tcp is not None:
                self._tcp.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _read(self) -> None:
        """Decrypt what the incoming BIO holds into the application's buffers."""
        app = self._app
        # SSLObject.read(n, buffer) returns the count (typeshed says bytes).
        read = cast("Callable[[int, memoryview], int]", self._sslobj.read)
        eof = False
        error: ssl.SSLError | None = None
        while True:
            buf = cast(memoryview, app.get_buffer(-1))
            want = len(buf)
            if not want:  # read(0) returns 0, which means close_notify: never ask for it
                raise RuntimeError(f"{type(app).__name__}.get_buffer() returned no room")
            got = 0
            more = True
            try:
                n = read(want, buf)
                while n:
                    got += n
                    if got >= want:
                        break
                    n = read(want - got, buf[got:])
                else:
                    eof = True  # read 0 bytes: close_notify
            except _AGAIN:
                more = False
            except ssl.SSLError as exc:
                error = exc
            if got:
                app.buffer_updated(got)
            if eof or error is not None or not more or self._paused or self._state != _OPEN:
                break
        if error is not None:
            self._fatal(error)  # strips its traceback: no frame -> traceback -> frame cycle
            return
        if self._backlog is not None and self._state == _OPEN:
            self._write_backlog()
        self._flush()  # what reading produced: key updates, renegotiation
        if eof and self._state == _OPEN:
            self._end_of_stream()
            self._shutdown()

    def _resume(self) -> None:
        if self._state != _OPEN or self._paused:
            return
        if self._incoming.pending or self._sslobj.pending():
            self._read()
        if self._eof_pending and self._state == _OPEN and not self._paused:
            self._eof_pending = False
            self._end_of_stream()
            if self._tcp is not None:
                self._tcp.close()

    def _encrypt(self, data: bytes | bytearray | memoryview) -> list[bytes] | None:
        """Encrypt and send ``data``; returns the backlog when a renegotiation held it back."""
        sslobj = self._sslobj
        view: memoryview | None = None  # what is left of data once a write took part of it
        try:
            if len(data) <= _WRITE_CHUNK:
                n = sslobj.write(data)
                if n == len(data):
                    self._flush()
                    return None
                view = memoryview(data)[n:]
            else:
                view = memoryview(data)
            while view:
                n = sslobj.write(view[:_WRITE_CHUNK])
                view = view[n:]
                self._flush()
        except ssl.SSLWantReadError:
            # A renegotiation must read first: keep the rest for after the next read.
            backlog = self._backlog = [bytes(data if view is None else view)]
            self._flush()
            return backlog
        except ssl.SSLError as exc:
            self._fatal(exc)
        return None

    def _write_backlog(self) -> None:
        pending, self._backlog = self._backlog or [], None
        for i, data in enumerate(pending):
            if self._state != _OPEN:
                return  # failed meanwhile (_fatal): the rest cannot be sent
            held = self._encrypt(data)
            if held is not None:  # still renegotiating: the rest keeps its order
                held.extend(pending[i + 1 :])
                return

    def _shutdown(self) -> None:
        """Send close_notify (not waiting for the peer's) and close TCP once it is written."""
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._sslobj.unwrap()  # SSLWantReadError: ours is sent, the peer's is not awaited
        self._flush()
        if self._tcp is not None:
            self._tcp.close()

    def _fatal(self, exc: BaseException) -> None:
        logger.debug("TLS error, dropping the connection: %s", exc)
        # Kept until connection_lost hands it on; without its traceback, which would pin the
        # frames that read (and the buffers they held).
        self._exc = without_traceback(exc)
        self._state = _CLOSING
        self._flush()  # an alert, if OpenSSL wrote one (sent now if the socket takes it)
        if self._tcp is not None:
            self._tcp.abort()  # not close(): a peer that stopped reading would keep it open

    # -- transport side (called by the application protocol) ------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN:
            if self._state == _HANDSHAKE:
                raise RuntimeError("write before the TLS handshake completed")
            return  # closing or closed: dropped, as asyncio's transports do
        if not data:
            return
        if isinstance(data, memoryview) and data.itemsize != 1:
            data = data.cast("B")  # lengths below count bytes
        if self._backlog is not None:
            self._backlog.append(bytes(data))
            return
        self._encrypt(data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def close(self) -> None:
        state = self._state
        if state == _OPEN:
            self._state = _CLOSING
            if self._backlog is not None:
                self._backlog = None  # a renegotiation that never finished: cannot be sent
            self._shutdown()
        elif state == _HANDSHAKE:
            self._handshake_failed(ConnectionAbortedError("closed during the TLS handshake"))

    def abort(self) -> None:
        if self._state == _HANDSHAKE:
            self._handshake_failed(ConnectionAbortedError("aborted during the TLS handshake"))
        elif self._state == _OPEN:
            self._state = _CLOSING
        if self._tcp is not None:
            self._tcp.abort()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._tcp is not None:
                self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._tcp is not None:
                self._tcp.resume_reading()
            # Records already in the BIO (or decrypted in OpenSSL) would wait for the next
            # packet otherwise.
            self._loop.call_soon(self._resume)

    def is_reading(self) -> bool:
        return not self._paused and self._state == _OPEN

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tcp.get_write_buffer_limits() if self._tcp is not None else (0, 0)

    def get_write_buffer_size(self) -> int:
        size = self._outgoing.pending + sum(map(len, self._backlog or ()))
        return size + (self._tcp.get_write_buffer_size() if self._tcp is not None else 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return sslobj.context
        if name in ("peercert", "cipher", "compression"):
            if self._state == _HANDSHAKE or self._state == _FAILED:
                return default
            if name == "peercert":
                return sslobj.getpeercert()
            return sslobj.cipher() if name == "cipher" else sslobj.compression()
        if self._tcp is not None:
            return self._tcp.get_extra_info(name, default)
        return default
