"""Resumable, streaming firmware download over HTTP(S) (PROTOCOL.md §11).

:func:`download` GETs ``firmware_url`` and pushes the bytes, in order, into a
:class:`DownloadSink` that the update manager implements (it hashes and writes; this module
does neither). It resumes with ``Range`` after disconnects and idle timeouts, and tells the sink
when the byte stream starts over.

The sink contract, in the order calls happen::

    attempt(0, offset)  data(...)*          # the first request, resuming at ``offset``
    [restart()]                             # the server ignored Range: back to byte 0
    data(...)*
    attempt(1, N)  [restart()]  data(...)*  # after a disconnect: resume at N (or restart)
    ...

Invariant: the ``offset`` passed to :meth:`DownloadSink.attempt` always equals the number of
bytes of the file the sink holds (the starting ``offset`` plus every ``data`` chunk since,
reset to 0 by each :meth:`DownloadSink.restart`). So ``data`` chunks always continue exactly where
the sink is. Exceptions raised by the sink propagate unchanged and end the download at once.

Failure policy (§11.1 reference behaviour, §11.3 rules):

* retryable, counted toward ``max_disconnects``, then delayed by exponential backoff with jitter
  (§12, the :class:`~nhlink.protocol.backoff.Backoff` rule): network errors, a connection that
  closes early, ``idle_timeout`` without data, ``5xx``, ``408``, ``429`` (``Retry-After`` is
  honoured, capped at ``retry_delay_max``), a TLS handshake failure other than certificate
  verification, and a ``206`` whose ``Content-Range`` does not start where we asked (then the
  download restarts from byte 0 and ``Range`` is not sent again: that server's ranges cannot be
  trusted);
* permanent (:class:`~nhlink.errors.PermanentDownloadError` at once, no retry storm on an expired
  pre-signed URL): any other ``4xx``, a size that contradicts ``expected_size`` (more bytes than
  expected, or a ``Content-Length``/``Content-Range`` total that differs), a file larger than
  ``max_size`` when the server announced no size, too many redirects, an invalid redirect, an
  unverifiable TLS certificate, an unexpected status (``204``, ``3xx`` without ``Location``...),
  ``416`` unless we resumed at exactly the end of the file (then the download is complete), the
  ``max_total_time`` cap, and ``max_disconnects`` exhausted (chained to the last
  :class:`~nhlink.errors.RetryableDownloadError`).

Transport security: the firmware comes over ``https`` with the storage host's certificate
verified. A plain ``http://`` URL is refused unless ``allow_http`` is set, and a redirect from
``https`` to ``http`` is never followed (that would fetch the image in clear): redirects are
followed here, hop by hop, not by aiohttp, so every hop is checked.

Credentials: pre-signed query strings are credentials. Every log line and error message shows
the URL as ``scheme://host[:port]/path`` only, and aiohttp exceptions (whose text includes the
full URL) are never chained into the errors raised here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import aiohttp
from yarl import URL

from ..errors import PermanentDownloadError, RetryableDownloadError
from ..protocol.backoff import Backoff
from ..transport.proxy import select_proxy
from .options import DownloadOptions

__all__ = ["DownloadOptions", "DownloadSink", "download", "redact_url"]

logger = logging.getLogger(__name__)


class DownloadSink(Protocol):
    """Where :func:`download` puts the bytes. See the module docstring for the call order."""

    async def attempt(self, number: int, offset: int) -> None:
        """A new HTTP request (``number`` counts from 0) is about to be made for the bytes from
        ``offset`` on; ``offset`` equals the bytes the sink holds. A good moment to report
        ``started`` (§11.3)."""

    async def restart(self) -> None:
        """The stream starts over from byte 0: drop everything received (and reset the hash).

        Called when the server answered ``200`` to a ``Range`` request (the bytes of that very
        response follow), or before resuming from 0 when ranges are not usable."""

    async def data(self, chunk: bytes) -> None:
        """The next bytes, in order. The sink may take its time: the next chunk is not read
        from the network until this returns (that is the backpressure)."""

    def total_size(self, size: int) -> None:
        """The file's size as the server reported it (``Content-Length``/``Content-Range``),
        called once when learned; useful when ``expected_size`` was None (progress)."""


def redact_url(url: str | URL) -> str:
    """``scheme://host[:port]/path``: no user info, query or fragment (pre-signed query strings
    are credentials and must never be logged)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if not parsed.absolute:
            return parsed.path
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid URL>"


# ``Content-Range: bytes <first>-<last>/<total or *>`` (RFC 9110 §14.4).
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.ASCII | re.IGNORECASE)
# ``Content-Range: bytes */<total>`` in a 416 answer.
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.ASCII | re.IGNORECASE)

# Statuses worth retrying besides 5xx (§11.3): request timeout, too many requests.
_RETRY_STATUSES: Final = frozenset({408, 429})
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

# aiohttp errors that retrying cannot fix. Certificate verification is here: the storage host's
# certificate will not become valid in the next minute, and ten retries would take ~10 min.
_PERMANENT_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.InvalidURL,
    aiohttp.ClientConnectorCertificateError,
    *(
        cls
        for cls in (getattr(aiohttp, "NonHttpUrlClientError", None),)  # aiohttp >= 3.10
        if isinstance(cls, type)
    ),
)

# Every request disables aiohttp's own timeouts (its session default is 5 min in total, which
# would cut any large download): the idle timeout below, and the total cap, are ours.
_NO_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None)


class _Retry(RetryableDownloadError):
    """One attempt failed in a way worth retrying; ``delay`` overrides the backoff."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class _Done(Exception):
    """The server says the file is already complete (416 at exactly the end)."""


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>)]+")


def _describe(exc: BaseException, url: str) -> str:
    """A loggable description of a network error, without any URL query string."""
    if isinstance(exc, aiohttp.ClientResponseError):
        # Its str() embeds the full request URL; keep the status and message only.
        return f"{type(exc).__name__}: {exc.status} {exc.message}".rstrip()
    text = str(exc)
    query = URL(url).raw_query_string if "?" in url else ""
    if query:
        text = text.replace(query, "…")
    # Any other URL in the text (a redirect target, say) may carry its own signature.
    text = _QUERY_IN_TEXT.sub("?…", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_DEFAULT_OPTIONS: Final = DownloadOptions()  # frozen, so sharing one default is safe


async def download(
    url: str,
    *,
    sink: DownloadSink,
    offset: int = 0,
    expected_size: int | None,
    options: DownloadOptions = _DEFAULT_OPTIONS,
    session: aiohttp.ClientSession | None = None,
    ssl: _ssl.SSLContext | bool | None = None,
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Download ``url`` from byte ``offset`` into ``sink``; return the size of the file.

    ``expected_size`` is ``update.size`` (§7.1) or None; without it the size comes from the
    first response's ``Content-Length`` (or a ``Content-Range`` total), and a server that sends
    neither is read to the end. The returned size equals ``expected_size`` when it is given.

    A plain ``GET`` (never ``HEAD``), with ``User-Agent``, ``X-Retry-Number: <n>`` (n counts
    requests from 0, as NHL does) and, only when resuming past byte 0, ``Range: bytes=N-``;
    ``Accept-Encoding: identity`` so byte offsets mean file offsets. Redirects are followed
    (``max_redirects``) and carry the same headers, ``Range`` included. Each retry requests the
    original URL again (redirect targets, such as CDN nodes, are often temporary).

    ``http://`` URLs are refused unless ``options.allow_http``; redirects from ``https`` to
    ``http`` always (:class:`~nhlink.errors.PermanentDownloadError`).

    ``session``: an aiohttp session to use (not closed here). It must not carry NervesHub
    credentials, cookies or a client certificate: the storage host is a third party (§11).
    Without it a private session is made for this call, with no cookie jar, no client
    certificate and no proxy from the environment. ``ssl``: None or True verify the storage
    host against the system CA store (§11: do better than AVM's ``verify_none``); an
    :class:`ssl.SSLContext` to verify otherwise; False disables verification (tests only).

    ``rand`` (uniform in [0, 1)) and ``sleep`` are injected so tests can pin the jitter and
    skip the delays. Raises :class:`~nhlink.errors.PermanentDownloadError` (see the module
    docstring for when), or whatever the sink raises. Cancelling the task cancels the download
    at once and closes the connection.
    """
    if offset < 0 or (expected_size is not None and not 0 <= offset <= expected_size):
        raise ValueError(f"offset {offset} out of range for expected_size {expected_size}")
    display = redact_url(url)
    _check_scheme(URL(url), options, display)
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=_NO_TIMEOUT,
            auto_decompress=False,
            trust_env=False,
        )
    state = _Download(
        url=url,
        display=display,
        sink=sink,
        received=offset,
        total=expected_size,
        options=options,
        session=session,
        ssl=True if ssl is None else ssl,
    )
    cap = asyncio.timeout(options.max_total_time)
    try:
        async with cap:
            return await state.run(rand, sleep)
    except TimeoutError:
        if not cap.expired():
            raise
        raise PermanentDownloadError(
            f"firmware download from {display} took longer than {options.max_total_time:g} s "
            f"(received {state.received} bytes)"
        ) from None
    finally:
        if own_session:
            await session.close()


class _IdleWatch:
    """The idle timeout of a body read, at the cost of one timer per ``idle`` seconds.

    Each chunk only notes the time (:meth:`progress`). The timer fires ``idle`` seconds after
    the last note it knows of; if a chunk came meanwhile it re-arms for ``idle`` after that
    chunk, else it calls ``expire`` (which closes the response: the pending read then fails)
    and sets :attr:`expired`. It never cancels the reading task, so a sink is never interrupted
    in the middle of a chunk (the bytes it took and ``received`` stay equal). While the sink
    works or the pacer sleeps the watch is paused: backpressure is not an idle network."""

    __slots__ = ("_expire", "_handle", "_idle", "_last", "_loop", "_paused", "expired")

    def __init__(self, idle: float, expire: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._expire = expire
        self._last = self._loop.time()
        self._paused = False
        self.expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last + idle, self._check
        )

    def progress(self) -> None:
        self._last = self._loop.time()
        self._paused = False

    def pause(self) -> None:
        self._paused = True

    def _check(self) -> None:
        now = self._loop.time()
        if self._paused or now - self._last < self._idle:
            base = now if self._paused else self._last
            self._handle = self._loop.call_at(base + self._idle, self._check)
            return
        self._handle = None
        self.expired = True
        self._expire()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Pacer:
    """The download bandwidth cap: a byte budget that grows at ``rate`` per second. The reader
    spends each chunk from it and sleeps only once the budget is overdrawn by more than a
    quarter second's worth, until it is back to zero — so a capped download sleeps a few
    times a second, not once per chunk, and over any stretch of time takes at most ``rate`` ×
    time plus a quarter second's worth (the budget starts empty and saves no credit, so there
    is no burst, at the start or after a stall)."""

    __slots__ = ("_balance", "_clock", "_rate", "_slack", "_stamp")

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = float(rate)
        self._slack = rate / 4
        self._balance = 0.0
        self._clock = clock
        self._stamp = clock()

    def spend(self, size: int) -> float:
        """Account ``size`` bytes; the seconds to sleep now (0.0: carry on)."""
        now = self._clock()
        # No credit is saved up (an idle stretch allows no burst after it).
        self._balance = min(self._balance + (now - self._stamp) * self._rate, 0.0)
        self._stamp = now
        self._balance -= size
        if self._balance >= -self._slack:
            return 0.0
        return -self._balance / self._rate


class _Download:
    """The state of one :func:`download` call (a plain object: fewer closures, easier to read)."""

    def __init__(
        self,
        *,
        url: str,
        display: str,
        sink: DownloadSink,
        received: int,
        total: int | None,
        options: DownloadOptions,
        session: aiohttp.ClientSession,
        ssl: _ssl.SSLContext | bool,
    ) -> None:
        self.url = url
        self.display = display
        self.sink = sink
        #: bytes of the file the sink holds (its position in the file).
        self.received = received
        #: the file size when known: expected_size, else learned from the first response.
        self.total = total
        self.options = options
        self.session = session
        self.ssl = ssl
        #: False once a server sent a Content-Range we did not ask for: stop sending Range.
        self.ranges_ok = True
        #: the bandwidth cap, across attempts (None: none)
        self.pacer = (
            _Pacer(options.max_download_rate) if options.max_download_rate is not None else None
        )

    async def run(
        self, rand: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
    ) -> int:
        options = self.options
        backoff = Backoff(
            initial=options.retry_delay, maximum=options.retry_delay_max, jitter=options.jitter
        )
        failures = 0
        number = 0
        while True:
            if self.received and not self.ranges_ok:
                await self.sink.restart()
                self.received = 0
            start = self.received
            await self.sink.attempt(number, start)
            try:
                complete = await self._attempt(number)
            except _Done:
                return self.received
            except _Retry as exc:
                failures += 1
                if self.received > start:
                    backoff.reset()  # progress was made: the link works, start short again
                if failures > options.max_disconnects:
                    logger.warning(
                        "firmware download from %s failed %d times, giving up: %s",
                        self.display,
                        failures,
                        exc,
                    )
                    raise PermanentDownloadError(
                        f"firmware download from {self.display} failed after {failures} "
                        f"attempts (received {self.received} bytes); last error: {exc}"
                    ) from exc
                delay = exc.delay
                if delay is None:
                    delay = backoff.next_delay(rand())
                logger.warning(
                    "firmware download from %s: %s (failure %d of at most %d); "
                    "resuming at byte %d in %.1f s",
                    self.display,
                    exc,
                    failures,
                    options.max_disconnects,
                    self.received if self.ranges_ok else 0,
                    delay,
                )
                if delay > 0:
                    await sleep(delay)
            else:
                if complete:
                    return self.received
                # A 206 that delivered exactly the (shorter) range it announced: continue at
                # once, not a failure (some servers and CDNs cap the size of a range).
            number += 1

    def _headers(self, number: int) -> dict[str, str]:
        headers = {
            "User-Agent": self.options.user_agent,
            "X-Retry-Number": str(number),
            # Byte offsets must be file offsets: no content coding (aiohttp asks for gzip).
            "Accept-Encoding": "identity",
        }
        if self.received > 0:
            headers["Range"] = f"bytes={self.received}-"
        return headers

    async def _attempt(self, number: int) -> bool:
        """One request. True when the file is complete, False when the response ended as
        announced but short of the end (continue), :class:`_Retry` on a retryable failure."""
        headers = self._headers(number)
        logger.debug(
            "GET %s (attempt %d%s)",
            self.display,
            number,
            f", {headers['Range']}" if "Range" in headers else "",
        )
        response = await self._request(headers)
        clean = False
        try:
            limit = self._check_response(response)
            if response.status == 200 and self.received > 0:
                logger.info("%s ignored Range (answered 200): restarting from byte 0", self.display)
                await self.sink.restart()
                self.received = 0
            await self._read_body(response)
            clean = True
        finally:
            if clean:
                response.release()
            else:
                response.close()  # drop the connection: never reuse a half-read one
        total = self.total
        if total is not None and self.received < total:
            if limit is not None and self.received == limit:
                return False
            raise _Retry(f"the connection closed early at byte {self.received} of {total}")
        return True

    async def _request(self, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET the URL, following redirects ourselves so that each hop is checked (no
        ``https`` → ``http``, at most ``max_redirects``). Returns the final response."""
        options = self.options
        url = URL(self.url)
        for hop in range(options.max_redirects + 1):
            response = await self._get(url, headers)
            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUSES or location is None:
                return response
            if not options.max_redirects:
                return response  # redirects disabled: _check_response names the status
            response.release()
            try:
                target = url.join(URL(location))
            except ValueError:
                raise PermanentDownloadError(
                    f"firmware download from {self.display}: invalid redirect"
                ) from None
            if hop == options.max_redirects:
                break
            if url.scheme == "https" and target.scheme != "https":
                raise PermanentDownloadError(
                    f"firmware download from {self.display}: refusing a redirect from https to "
                    f"{redact_url(target)} (the image would travel unencrypted)"
                )
            _check_scheme(target, options, self.display)
            logger.debug("%s: HTTP %d to %s", self.display, response.status, redact_url(target))
            url = target
        raise PermanentDownloadError(
            f"firmware download from {self.display} failed: TooManyRedirects "
            f"(more than {options.max_redirects})"
        )

    async def _get(self, url: URL, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """One HTTP GET (no redirects); network failures as :class:`_Retry` or permanent."""
        idle = self.options.idle_timeout
        proxy = select_proxy(
            url.scheme,
            url.host or "",
            url.port or 443,
            proxy=self.options.proxy,
            no_proxy=self.options.no_proxy,
        )
        proxy_headers = None
        if proxy is not None and (auth := proxy.authorization()) is not None:
            if url.scheme == "https":
                proxy_headers = {"Proxy-Authorization": auth}  # on the CONNECT only
            else:  # plain http is sent to the proxy itself (absolute-form request)
                headers = {**headers, "Proxy-Authorization": auth}
        try:
            async with asyncio.timeout(idle) as connecting:
                return await self.session.request(
                    "GET",
                    url,
                    headers=headers,
                    allow_redirects=False,
                    ssl=self.ssl,
                    timeout=_NO_TIMEOUT,
                    read_bufsize=self.options.chunk_size,
                    auto_decompress=False,
                    proxy=proxy.display if proxy is not None else None,
                    proxy_headers=proxy_headers,
                )
        except aiohttp.ClientHttpProxyError as exc:
            # The proxy answered, and refused: credentials wanted or wrong (407), the target
            # forbidden (403). Retrying will not change its mind.
            raise PermanentDownloadError(
                f"firmware download from {self.display} failed: the proxy {proxy} refused it "
                f"(HTTP {exc.status}{' ' + exc.message if exc.message else ''})"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:  # OSError includes TimeoutError
            if connecting.expired():
                raise _Retry(f"no response within {idle:g} s") from None
            if isinstance(exc, _PERMANENT_CLIENT_ERRORS):
                raise PermanentDownloadError(
                    f"firmware download from {self.display} failed: {_describe(exc, self.url)}"
                ) from None
            raise _Retry(_describe(exc, self.url)) from None

    async def _read_body(self, response: aiohttp.ClientResponse) -> None:
        """The hot loop: take whatever aiohttp has buffered (one chunk, never joined: no copy),
        hand it to the sink, and only then read again; so memory stays flat and a slow sink
        slows the socket down (aiohttp pauses reading when its buffer is full).

        Nothing per chunk beyond that: the idle timeout is one timer per ``idle_timeout``
        (:class:`_IdleWatch`), not a timer armed and cancelled around every read, and the
        bandwidth cap sleeps only when its budget is overdrawn (:class:`_Pacer`)."""
        idle = self.options.idle_timeout
        content = response.content
        readany = content.readany
        sink_data = self.sink.data
        total = self.total
        cap = total if total is not None else self.options.max_size
        pacer = self.pacer
        received = self.received
        watch = _IdleWatch(idle, response.close)
        try:
            while True:
                try:
                    chunk = await readany()
                except (aiohttp.ClientError, OSError) as exc:  # not the sink's errors
                    if watch.expired:
                        raise _Retry(f"no data for {idle:g} s at byte {received}") from None
                    raise _Retry(
                        f"connection lost at byte {received}: {_describe(exc, self.url)}"
                    ) from None
                if not chunk:
                    if watch.expired:
                        raise _Retry(f"no data for {idle:g} s at byte {received}")
                    return
                end = received + len(chunk)
                if end > cap:
                    raise PermanentDownloadError(
                        f"firmware download from {self.display}: the server sent more than the "
                        + (
                            f"expected {total} bytes"
                            if total is not None
                            else f"{cap}-byte limit for an image of unannounced size (max_size)"
                        )
                    )
                watch.pause()  # a slow sink is backpressure, not an idle network
                await sink_data(chunk)
                self.received = received = end
                if pacer is not None and (pause := pacer.spend(len(chunk))):
                    await asyncio.sleep(pause)
                watch.progress()
        finally:
            watch.stop()

    def _check_response(self, response: aiohttp.ClientResponse) -> int | None:
        """Judge the status and size headers before any body byte is read.

        Returns the end offset the response announced (``last + 1`` of a ``206``) or None;
        updates ``self.total``; raises :class:`_Done`, :class:`_Retry` or
        :class:`PermanentDownloadError`."""
        status = response.status
        if status == 200:
            length = response.content_length
            if length is not None:
                self._learn_total(length, "Content-Length")
            return None
        if status == 206:
            return self._check_partial(response)
        if status == 416 and self.received > 0:
            match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            size = self.total if self.total is not None else (int(match[1]) if match else None)
            if size is not None and size == self.received:
                logger.info("%s: already complete (%d bytes)", self.display, size)
                raise _Done
            raise PermanentDownloadError(
                f"firmware download from {self.display}: HTTP 416 when resuming at byte "
                f"{self.received} (the file is "
                f"{'of unknown size' if size is None else f'{size} bytes'})"
            )
        if status >= 500 or status in _RETRY_STATUSES:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            delay = None
            if retry_after is not None:
                delay = min(retry_after, self.options.retry_delay_max)
            raise _Retry(f"HTTP {status} {response.reason or ''}".rstrip(), delay)
        raise PermanentDownloadError(
            f"firmware download from {self.display} failed: HTTP {status} "
            f"{response.reason or ''}".rstrip()
        )

    def _check_partial(self, response: aiohttp.ClientResponse) -> int:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        first = int(match[1]) if match else -1
        last = int(match[2]) if match else -1
        if match is None or first != self.received or last < first:
            # The server did not send what we asked for. Trusting its ranges could splice the
            # wrong bytes into the image (the checksum would catch it, after a full download),
            # so start over without Range; counted as a failure, so it cannot loop.
            self.ranges_ok = False
            found = response.headers.get("Content-Range", "none")
            raise _Retry(
                f"HTTP 206 with Content-Range {found!r} when asking for bytes "
                f"{self.received}-; restarting from byte 0 without Range",
                delay=0.0,
            )
        if match[3] != "*":
            self._learn_total(int(match[3]), "Content-Range")
        if self.total is not None and last >= self.total:
            raise PermanentDownloadError(
                f"firmware download from {self.display}: Content-Range ends at byte {last}, "
                f"beyond the {self.total}-byte file"
            )
        return last + 1

    def _learn_total(self, size: int, source: str) -> None:
        """Adopt the first size a server reports; refuse one that contradicts it (or, for an
        image of unannounced size, exceeds ``max_size``)."""
        if self.total is None:
            if size > self.options.max_size:
                raise PermanentDownloadError(
                    f"firmware download from {self.display}: the server reports a {size}-byte "
                    f"file ({source}), over the {self.options.max_size}-byte limit (max_size)"
                )
            self.total = size
            self.sink.total_size(size)
        elif size != self.total:
            raise PermanentDownloadError(
                f"firmware download from {self.display}: the server reports a {size}-byte "
                f"file ({source}), expected {self.total} bytes"
            )


def _check_scheme(url: URL, options: DownloadOptions, display: str) -> None:
    """``https``, or ``http`` when explicitly allowed; anything else is refused."""
    if url.scheme == "https" or (url.scheme == "http" and options.allow_http):
        return
    if url.scheme == "http":
        raise PermanentDownloadError(
            f"refusing to download firmware over plain http from {display} "
            f"(DownloadOptions(allow_http=True) accepts it)"
        )
    raise PermanentDownloadError(f"firmware URL {display}: unsupported scheme {url.scheme!r}")
