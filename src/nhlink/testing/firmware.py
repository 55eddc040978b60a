"""A fault-injecting firmware file server, for download tests and benchmarks (loopback only).

It plays the storage host of PROTOCOL.md §11 (S3, a CDN, NervesHub's local storage)::

    async with FirmwareServer() as fw:
        url = fw.add("fw.bin", data, faults=Faults(cut_after=100_000))
        ...                                   # download url
        assert fw.requests[1].range == "bytes=100000-"

Files (``bytes`` in memory, or a path streamed from disk, never loaded whole) are served at
``/fw/<name>`` to ``GET`` with ``Content-Length``, ``Accept-Ranges: bytes`` and single-range
``Range`` support (``206`` + ``Content-Range``, ``416`` + ``Content-Range: bytes */size``).
``HEAD`` gets ``403`` as an S3 pre-signed GET URL does; other methods ``405``.

Faults are per file, in a mutable :class:`Faults` (:meth:`FirmwareServer.faults`); changes apply
from the next request. Per request, in this order: an injected ``status``; the ``redirects``
chain (``/fw/<name>`` → ``/r/<k-1>/<name>`` → ... → ``/r/0/<name>``, which serves); then the
body with ``ignore_range``, ``range_limit``, ``content_range`` lies, ``chunked``, ``corrupt_at``,
``stall_after`` and ``cut_after``. The query string of the URL is kept across redirects and
otherwise ignored (put a fake pre-signature there to test redaction).

Every request is recorded (:class:`FileRequest`, in :attr:`FirmwareServer.requests`) as soon as
it arrives and updated as it is answered; :meth:`FirmwareServer.wait_for_requests` awaits a
count. A client that disconnects cancels its handler at once (``handler_cancellation``), so a
stalled response ends when the client goes away, and the record says ``"disconnected"``.

Optional TLS: ``FirmwareServer(ssl=context)`` serves ``https`` (e.g.
``nhlink.testing.certs.create_pki(tmp).server_context(mtls=False)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl as _ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

__all__ = ["Faults", "FileRequest", "FirmwareServer", "ServedFile"]

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII | re.IGNORECASE)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Larger writes amortise per-call costs; aiohttp drains the transport after each.
_WRITE_SIZE = 256 * 1024


@dataclass
class Faults:
    """Faults injected when serving one file. Mutable: change fields between requests.

    ``*_times`` count the responses still to affect: an int is decremented per use (0 = off),
    None means every response.
    """

    #: close the connection after this many body bytes of a response (0: right after headers).
    cut_after: int | None = None
    cut_times: int | None = 1
    #: stop sending after this many body bytes of a response, for ``stall_for`` seconds.
    stall_after: int | None = None
    stall_for: float = 0.0
    stall_times: int | None = 1
    #: answer every GET with 200 and the whole file, whatever its Range (no Accept-Ranges).
    ignore_range: bool = False
    #: answer this status (404, 403, 503, 500, 429, 408...) to the next ``status_times`` GETs.
    status: int | None = None
    status_times: int | None = 1
    #: a Retry-After header value sent with ``status``.
    retry_after: str | None = None
    #: a redirect chain of this many hops in front of the file, answered with redirect_status.
    redirects: int = 0
    redirect_status: int = 302
    #: the Location of those redirects instead of the next hop of the chain: an absolute URL,
    #: e.g. another server's (an https server sending the client to plain http).
    redirect_to: str | None = None
    #: lie in the Content-Range of 206 answers: "start" (first byte off by one), "total"
    #: (size off by one), "missing" (no Content-Range at all). The body is the right one.
    content_range: Literal["start", "total", "missing"] | None = None
    #: flip (XOR 0xFF) the byte at this file offset in every response that covers it.
    corrupt_at: int | None = None
    #: send no Content-Length (chunked transfer encoding).
    chunked: bool = False
    #: answer a Range request with at most this many bytes (a shorter, honest 206, as some
    #: CDNs do); the client must ask again for the rest.
    range_limit: int | None = None

    def __post_init__(self) -> None:
        if self.redirect_status not in _REDIRECT_STATUSES:
            raise ValueError(f"redirect_status must be one of {sorted(_REDIRECT_STATUSES)}")

    @staticmethod
    def _take(times: int | None) -> tuple[bool, int | None]:
        """(applies now, remaining count) for a ``*_times`` counter."""
        if times is None:
            return True, None
        if times > 0:
            return True, times - 1
        return False, 0


@dataclass
class FileRequest:
    """One HTTP request to the server and how it was answered (updated while it is served).

    ``outcome``: ``""`` while in progress, then ``"complete"``, ``"cut"`` (connection closed on
    purpose), ``"disconnected"`` (the client went away), ``"status"`` (an error status),
    ``"redirect"``.
    """

    number: int
    method: str
    path: str
    query: str
    name: str | None
    headers: CIMultiDict[str]
    #: the TLS client certificate presented (decoded, see ``SSLSocket.getpeercert``), or None.
    client_certificate: dict[str, Any] | None = None
    status: int = 0
    bytes_sent: int = 0
    outcome: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def range(self) -> str | None:
        """The Range header as sent, or None."""
        return self.headers.get("Range")

    @property
    def retry_number(self) -> int | None:
        """The ``X-Retry-Number`` header as an int, or None when absent or not a number."""
        value = self.headers.get("X-Retry-Number")
        return int(value) if value is not None and value.isdigit() else None


@dataclass
class ServedFile:
    """A file the server knows: bytes in memory, or a path read on demand."""

    name: str
    size: int
    data: bytes | None
    path: Path | None
    faults: Faults


class FirmwareServer:
    """An aiohttp file server on 127.0.0.1 with Range support and fault injection.

    Use as ``async with FirmwareServer() as fw:`` (or :meth:`start`/:meth:`stop`). ``sendfile``:
    serve fault-free file-backed plain-HTTP responses with ``loop.sendfile`` (zero-copy; what a
    real storage host does), so a benchmark measures the client, not this server.
    """

    def __init__(
        self,
        *,
        ssl: _ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        sendfile: bool = True,
    ) -> None:
        self.ssl = ssl
        self.host = host
        self.sendfile = sendfile
        self._port = port
        self.files: dict[str, ServedFile] = {}
        #: every request received, in order of arrival.
        self.requests: list[FileRequest] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind and start serving. Call :meth:`stop` afterwards."""
        if self._runner is not None:
            raise RuntimeError("FirmwareServer already started")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            # Cancel a handler when its client goes away, so stalls end with the connection.
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, ssl_context=self.ssl)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FirmwareServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("FirmwareServer is not started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` with TLS)."""
        return f"{'https' if self.ssl is not None else 'http'}://{self.host}:{self.port}"

    # --------------------------------------------------------------------------------- files

    def add(
        self,
        name: str,
        data_or_path: bytes | str | os.PathLike[str],
        *,
        faults: Faults | None = None,
        query: str | None = None,
    ) -> str:
        """Serve ``data_or_path`` as ``name``; return its URL (with ``?query`` if given).

        A path is opened per request and read as it is sent, so any size works.
        """
        if not name or "/" in name:
            raise ValueError(f"file name must be non-empty without '/': {name!r}")
        if isinstance(data_or_path, bytes | bytearray | memoryview):
            data = bytes(data_or_path)
            self.files[name] = ServedFile(name, len(data), data, None, faults or Faults())
        else:
            path = Path(data_or_path)
            size = path.stat().st_size
            self.files[name] = ServedFile(name, size, None, path, faults or Faults())
        return self.url(name, query)

    def url(self, name: str, query: str | None = None) -> str:
        return f"{self.base_url}/fw/{name}" + (f"?{query}" if query else "")

    def faults(self, name: str) -> Faults:
        """The live :class:`Faults` of ``name``: mutate it to change what the next request gets."""
        return self.files[name].faults

    def set_faults(self, name: str, faults: Faults | None = None) -> Faults:
        """Replace the faults of ``name`` (None: no faults). Returns the new object."""
        self.files[name].faults = faults or Faults()
        return self.files[name].faults

    # ------------------------------------------------------------------------------ records

    def requests_for(self, name: str) -> list[FileRequest]:
        return [r for r in self.requests if r.name == name]

    async def wait_for_requests(
        self, count: int, *, name: str | None = None, timeout: float = 10.0
    ) -> list[FileRequest]:
        """Wait until ``count`` requests (for ``name``, if given) have arrived; return them."""
        async with asyncio.timeout(timeout):
            while True:
                matching = self.requests if name is None else self.requests_for(name)
                if len(matching) >= count:
                    return list(matching)
                await self._changed.wait()

    def _record(self, request: web.BaseRequest, name: str | None) -> FileRequest:
        record = FileRequest(
            number=len(self.requests),
            method=request.method,
            path=request.path,
            query=request.query_string,
            name=name,
            headers=CIMultiDict(request.headers),
            client_certificate=(
                request.transport.get_extra_info("peercert") or None
                if request.transport is not None
                else None
            ),
        )
        self.requests.append(record)
        # Wake every waiter, then give later waiters a fresh event (no clear() races).
        self._changed.set()
        self._changed = asyncio.Event()
        return record

    # ------------------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        hops: int | None = None
        name: str | None = None
        if len(parts) == 3 and parts[1] == "fw":
            name = parts[2]
        elif len(parts) == 4 and parts[1] == "r" and parts[2].isdigit():
            name, hops = parts[3], int(parts[2])
        served = self.files.get(name) if name is not None else None
        record = self._record(request, name)
        try:
            response = await self._answer(request, record, served, hops)
            if not record.outcome:
                record.outcome = "complete"
            return response
        except (asyncio.CancelledError, ConnectionError):
            if record.outcome in ("", "complete"):
                record.outcome = "disconnected"
            raise
        finally:
            record.done.set()

    def _simple(
        self, record: FileRequest, status: int, outcome: str, **headers: str
    ) -> web.Response:
        record.status = status
        record.outcome = outcome
        return web.Response(status=status, text=f"{status}\n", headers=headers)

    async def _answer(
        self,
        request: web.Request,
        record: FileRequest,
        served: ServedFile | None,
        hops: int | None,
    ) -> web.StreamResponse:
        if served is None:
            return self._simple(record, 404, "status")
        if request.method == "HEAD":
            # An S3 pre-signed GET URL signs the method: HEAD is refused (PROTOCOL.md §11.2).
            return self._simple(record, 403, "status")
        if request.method != "GET":
            return self._simple(record, 405, "status", Allow="GET")
        faults = served.faults

        if faults.status is not None:
            applies, faults.status_times = Faults._take(faults.status_times)
            if applies:
                extra = {"Retry-After": faults.retry_after} if faults.retry_after else {}
                return self._simple(record, faults.status, "status", **extra)

        remaining = faults.redirects if hops is None else hops
        if remaining > 0:
            location = faults.redirect_to or f"{self.base_url}/r/{remaining - 1}/{served.name}"
            if request.query_string and faults.redirect_to is None:
                location += f"?{request.query_string}"
            return self._simple(record, faults.redirect_status, "redirect", Location=location)

        return await self._serve(request, record, served, faults)

    async def _serve(
        self, request: web.Request, record: FileRequest, served: ServedFile, faults: Faults
    ) -> web.StreamResponse:
        size = served.size
        start, end, status = 0, size, 200
        header = request.headers.get("Range")
        if header is not None and not faults.ignore_range:
            match = _RANGE.fullmatch(header)
            if match and (match[1] or match[2]):
                if not match[1]:  # suffix: the last N bytes
                    start, end = max(0, size - int(match[2])), size
                else:
                    start = int(match[1])
                    end = min(size, int(match[2]) + 1) if match[2] else size
                if start >= size or end <= start:
                    return self._simple(
                        record, 416, "status", **{"Content-Range": f"bytes */{size}"}
                    )
                if faults.range_limit is not None:
                    end = min(end, start + max(1, faults.range_limit))
                status = 206

        response = web.StreamResponse(status=status)
        response.content_type = "application/octet-stream"
        if not faults.ignore_range:
            response.headers["Accept-Ranges"] = "bytes"
        if status == 206 and faults.content_range != "missing":
            first, last, total = start, end - 1, size
            if faults.content_range == "start":
                first, last = first + 1, last + 1
            elif faults.content_range == "total":
                total += 1
            response.headers["Content-Range"] = f"bytes {first}-{last}/{total}"
        if faults.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = end - start

        cut_at: int | None = None
        if faults.cut_after is not None:
            applies, faults.cut_times = Faults._take(faults.cut_times)
            if applies:
                cut_at = min(faults.cut_after, end - start)
        stall_at: int | None = None
        if faults.stall_after is not None:
            applies, faults.stall_times = Faults._take(faults.stall_times)
            if applies:
                stall_at = min(faults.stall_after, end - start)
        corrupt_at = faults.corrupt_at
        stall_for = faults.stall_for

        record.status = status
        await response.prepare(request)
        if (
            served.path is not None
            and self.sendfile
            and self.ssl is None
            and cut_at is None
            and stall_at is None
            and (corrupt_at is None or not start <= corrupt_at < end)
            and not faults.chunked
            and request.transport is not None
        ):
            with open(served.path, "rb") as file:  # noqa: ASYNC230  # a local open is instant
                await asyncio.get_running_loop().sendfile(
                    request.transport, file, start, end - start
                )
            record.bytes_sent = end - start
            await response.write_eof()
            return response

        with contextlib.ExitStack() as stack:
            fd = -1
            if served.path is not None:
                fd = os.open(served.path, os.O_RDONLY)
                stack.callback(os.close, fd)
            position, sent = start, 0
            while True:
                if stall_at is not None and sent == stall_at:
                    stall_at = None
                    await asyncio.sleep(stall_for)
                if cut_at is not None and sent == cut_at:
                    # Promise the rest (Content-Length or chunks), then close: the client
                    # sees the connection end early, as when a link drops. close() sends what
                    # is buffered first; aiohttp's own write_eof() then meets a closed
                    # transport, which it takes quietly.
                    record.outcome = "cut"
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if position >= end:
                    break
                count = min(_WRITE_SIZE, end - position)
                for limit in (stall_at, cut_at):
                    if limit is not None:
                        count = min(count, limit - sent)
                chunk: bytes | bytearray
                if served.data is not None:
                    chunk = served.data[position : position + count]
                else:
                    chunk = os.pread(fd, count, position)  # page cache: fast enough here
                if corrupt_at is not None and position <= corrupt_at < position + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[corrupt_at - position] ^= 0xFF
                try:
                    await response.write(chunk)
                except ConnectionError:  # (aiohttp's ClientConnectionResetError is one)
                    # The client went away mid-body (a cut link, a proxy that dropped it):
                    # recorded, not an error of the server.
                    record.outcome = "disconnected"
                    return response
                position += len(chunk)
                sent += len(chunk)
                record.bytes_sent = sent
        await response.write_eof()
        return response
