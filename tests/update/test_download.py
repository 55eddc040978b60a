"""The resumable firmware downloader (PROTOCOL.md §11) against a real loopback HTTP server.

Every test runs ``download()`` against :class:`~nhlink.testing.firmware.FirmwareServer` with
injected faults. Retry delays go to a recording ``sleep`` that returns at once, and ``rand`` is
pinned, so the delays are exact and no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import pytest

from nhlink.errors import ConfigError, DownloadError, PermanentDownloadError
from nhlink.testing.certs import create_pki
from nhlink.testing.firmware import Faults, FirmwareServer
from nhlink.update.download import DownloadOptions, download, redact_url
from tests.update.conftest import CollectingSink, Sleeps

SIZE = 1024 * 1024 + 4321  # not a multiple of any buffer size
DATA = os.urandom(SIZE)
SECRET = "X-Amz-Signature=0123456789abcdefSECRET&X-Amz-Credential=AKIAEXAMPLE%2Fs3"


def opts(**changes: object) -> DownloadOptions:
    """Options for the plain-http loopback server (https is the default requirement)."""
    return DownloadOptions(**{"allow_http": True, **changes})  # type: ignore[arg-type]


FAST = opts(idle_timeout=5.0)


def zero() -> float:
    return 0.0


async def fetch(
    url: str,
    sink: CollectingSink,
    sleeps: Sleeps,
    *,
    expected_size: int | None = SIZE,
    offset: int = 0,
    options: DownloadOptions = FAST,
    ssl_context: ssl.SSLContext | bool | None = None,
) -> int:
    return await download(
        url,
        sink=sink,
        offset=offset,
        expected_size=expected_size,
        options=options,
        ssl=ssl_context,
        rand=zero,
        sleep=sleeps,
    )


# -- the happy path --------------------------------------------------------------------------


@pytest.mark.parametrize("expected_size", [SIZE, None])
async def test_happy_path_one_plain_get(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, expected_size: int | None
) -> None:
    url = fw.add("fw.bin", DATA)
    assert await fetch(url, sink, sleeps, expected_size=expected_size) == SIZE
    assert bytes(sink.buffer) == DATA
    # Without update.size the server's Content-Length is passed on (progress needs a total).
    sizes = [] if expected_size is not None else [("total_size", SIZE)]
    assert sink.events == [("attempt", 0, 0), *sizes]
    assert sleeps.delays == []
    [request] = fw.requests
    assert request.method == "GET"  # never HEAD (§11.3)
    assert request.status == 200
    assert request.range is None
    assert request.retry_number == 0
    assert request.headers["User-Agent"] == "nhlink"
    assert request.headers["Accept-Encoding"] == "identity"
    for credential in ("Cookie", "Authorization", "x-nh-signature", "x-nh-key"):
        assert credential not in request.headers


async def test_memory_stays_flat_chunks_bounded(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA)
    options = opts(chunk_size=16 * 1024)
    await fetch(url, sink, sleeps, options=options)
    assert bytes(sink.buffer) == DATA
    # Chunks are whatever aiohttp had buffered: bounded by its high-water mark (2 x the read
    # buffer) plus one socket read (asyncio reads up to 256 KiB at a time), never the body.
    assert max(sink.chunks) <= 2 * options.chunk_size + 256 * 1024
    assert len(sink.chunks) >= 4


async def test_user_agent_option(fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps) -> None:
    url = fw.add("fw.bin", b"x" * 100)
    options = opts(user_agent="my-gateway/1.2 nhlink/0.1")
    assert await fetch(url, sink, sleeps, expected_size=100, options=options) == 100
    assert fw.requests[0].headers["User-Agent"] == "my-gateway/1.2 nhlink/0.1"


async def test_empty_file(fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps) -> None:
    url = fw.add("empty.bin", b"")
    assert await fetch(url, sink, sleeps, expected_size=0) == 0
    assert sink.buffer == b""


async def test_file_streamed_from_disk(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, tmp_path: Path
) -> None:
    path = tmp_path / "fw.bin"
    path.write_bytes(DATA)
    url = fw.add("fw.bin", path, faults=Faults(cut_after=500_000))
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    assert len(fw.requests) == 2


# -- resume ------------------------------------------------------------------------------------


async def test_cut_mid_download_resumes_with_range(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=300_000))
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    first, second = fw.requests
    assert first.outcome == "cut" and first.bytes_sent == 300_000
    # Resumed where the sink is (bytes still in aiohttp's buffer when the error surfaced are
    # fetched again, never delivered twice).
    [(_, _, resumed_at)] = [e for e in sink.events if e[0] == "attempt" and e[1] == 1]
    assert isinstance(resumed_at, int) and 0 < resumed_at <= 300_000
    assert second.range == f"bytes={resumed_at}-"
    assert second.status == 206
    assert (first.retry_number, second.retry_number) == (0, 1)
    assert sink.received == SIZE  # not twice
    assert sink.restarts == 0
    assert sleeps.delays == [15.0]


async def test_resume_from_caller_offset(fw: FirmwareServer, sleeps: Sleeps) -> None:
    sink = CollectingSink(DATA[:524_288])
    url = fw.add("fw.bin", DATA)
    assert await fetch(url, sink, sleeps, offset=524_288) == SIZE
    assert bytes(sink.buffer) == DATA
    assert sink.events == [("attempt", 0, 524_288)]
    assert fw.requests[0].range == "bytes=524288-"
    assert fw.requests[0].retry_number == 0


async def test_server_ignoring_range_restarts(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    # The early close without resume support: the retry gets 200 and the whole file again.
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=300_000, ignore_range=True))
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    assert sink.restarts == 1
    assert sink.events[-1] == ("restart",)
    _, second = fw.requests
    assert second.range is not None and second.status == 200
    assert sink.received > SIZE  # the first part was downloaded twice, and dropped once


async def test_ranges_capped_by_server_continue_without_counting_failures(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=100_000, range_limit=300_000))
    options = opts(max_disconnects=1)
    assert await fetch(url, sink, sleeps, options=options) == SIZE
    assert bytes(sink.buffer) == DATA
    assert sleeps.delays == [15.0]  # only the cut was a failure
    assert all(r.status == 206 for r in fw.requests[1:])
    assert len(fw.requests) >= 5


async def test_416_at_exactly_the_end_is_done(fw: FirmwareServer, sleeps: Sleeps) -> None:
    url = fw.add("fw.bin", DATA)
    for expected in (SIZE, None):
        sink = CollectingSink(DATA)
        assert await fetch(url, sink, sleeps, offset=SIZE, expected_size=expected) == SIZE
        assert bytes(sink.buffer) == DATA
    assert [r.status for r in fw.requests] == [416, 416]


async def test_416_past_the_end_is_permanent(fw: FirmwareServer, sleeps: Sleeps) -> None:
    url = fw.add("fw.bin", DATA)
    sink = CollectingSink(DATA + b"extra")
    with pytest.raises(PermanentDownloadError, match="416"):
        await fetch(url, sink, sleeps, offset=SIZE + 5, expected_size=None)
    assert len(fw.requests) == 1


# -- Content-Range handling ---------------------------------------------------------------------


@pytest.mark.parametrize("lie", ["start", "missing"])
async def test_content_range_mismatch_restarts_without_range(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, lie: str
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=300_000, content_range=lie))  # type: ignore[arg-type]
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    _, lied, fresh = fw.requests
    assert lied.status == 206 and lied.range is not None
    assert fresh.range is None and fresh.status == 200  # ranges no longer trusted
    assert sink.restarts == 1
    assert sleeps.delays == [15.0]  # the restart itself is immediate


async def test_content_range_total_mismatch_is_permanent(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=300_000, content_range="total"))
    with pytest.raises(PermanentDownloadError, match="expected 1052897 bytes"):
        await fetch(url, sink, sleeps)
    assert len(fw.requests) == 2


# -- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 400, 410])
async def test_client_errors_fail_fast(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, status: int
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(status=status, status_times=None), query=SECRET)
    with pytest.raises(PermanentDownloadError) as caught:
        await fetch(url, sink, sleeps)
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert f"{fw.base_url}/fw/fw.bin" in message
    assert "SECRET" not in message and "?" not in message
    assert len(fw.requests) == 1
    assert sleeps.delays == []
    assert sink.buffer == b""


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_retryable_status_then_success(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, status: int
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(status=status))
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    assert [r.retry_number for r in fw.requests] == [0, 1]
    assert [r.status for r in fw.requests] == [status, 200]
    assert all(r.range is None for r in fw.requests)
    assert sleeps.delays == [15.0]
    assert sink.events == [("attempt", 0, 0), ("attempt", 1, 0)]


@pytest.mark.parametrize(("retry_after", "delay"), [("7", 7.0), ("3600", 60.0), ("junk", 15.0)])
async def test_429_honours_retry_after_capped(
    fw: FirmwareServer,
    sink: CollectingSink,
    sleeps: Sleeps,
    retry_after: str,
    delay: float,
) -> None:
    faults = Faults(status=429, status_times=2, retry_after=retry_after)
    url = fw.add("fw.bin", DATA, faults=faults)
    assert await fetch(url, sink, sleeps) == SIZE
    second = 30.0 if retry_after == "junk" else delay  # no Retry-After: backoff doubles
    assert sleeps.delays == [delay, second]
    assert [r.status for r in fw.requests] == [429, 429, 200]


async def test_too_many_disconnects(fw: FirmwareServer, sink: CollectingSink) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=0, cut_times=None))
    sleeps = Sleeps()
    options = opts(max_disconnects=3, retry_delay=10, retry_delay_max=35, jitter=0.5)
    with pytest.raises(PermanentDownloadError, match="failed after 4 attempts") as caught:
        await download(
            url,
            sink=sink,
            expected_size=SIZE,
            options=options,
            rand=lambda: 0.5,
            sleep=sleeps,
        )
    assert len(fw.requests) == 4  # max_disconnects + 1
    assert [r.retry_number for r in fw.requests] == [0, 1, 2, 3]
    # exponential, capped, each stretched by 1 + 0.5 * 0.5
    assert sleeps.delays == [12.5, 25.0, 43.75]
    assert isinstance(caught.value.__cause__, DownloadError)


async def test_zero_max_disconnects_fails_on_first_failure(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(status=503))
    with pytest.raises(PermanentDownloadError, match="HTTP 503"):
        await fetch(url, sink, sleeps, options=opts(max_disconnects=0))
    assert len(fw.requests) == 1
    assert sleeps.delays == []


async def test_backoff_resets_after_progress(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(cut_after=200_000, cut_times=3))
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    assert sleeps.delays == [15.0, 15.0, 15.0]


async def test_connection_refused_is_retried(sink: CollectingSink, sleeps: Sleeps) -> None:
    async with FirmwareServer() as server:
        url = server.add("fw.bin", DATA)
    # The server is gone: nothing listens on its port any more.
    with pytest.raises(PermanentDownloadError, match="ClientConnectorError"):
        await fetch(url, sink, sleeps, options=opts(max_disconnects=2))
    assert sleeps.delays == [15.0, 30.0]


# -- timeouts ----------------------------------------------------------------------------------


async def test_idle_timeout_resumes(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(stall_after=100_000, stall_for=60.0))
    options = opts(idle_timeout=0.2)
    assert await fetch(url, sink, sleeps, options=options) == SIZE
    assert bytes(sink.buffer) == DATA
    stalled, resumed = fw.requests
    assert resumed.range == "bytes=100000-"
    assert sleeps.delays == [15.0]
    await asyncio.wait_for(stalled.done.wait(), 5)
    assert stalled.outcome == "disconnected"  # the stalled connection was closed


async def test_slow_sink_is_not_an_idle_timeout(fw: FirmwareServer, sleeps: Sleeps) -> None:
    class SlowSink(CollectingSink):
        async def data(self, chunk: bytes) -> None:
            if not self.chunks:
                await asyncio.sleep(0.3)  # longer than idle_timeout, while data is waiting
            await super().data(chunk)

    sink = SlowSink()
    url = fw.add("fw.bin", DATA)
    assert await fetch(url, sink, sleeps, options=opts(idle_timeout=0.1)) == SIZE
    assert len(fw.requests) == 1


async def test_max_total_time(fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(stall_after=1000, stall_for=60.0))
    options = opts(idle_timeout=30, max_total_time=0.2)
    with pytest.raises(PermanentDownloadError, match=r"took longer than 0\.2 s"):
        await fetch(url, sink, sleeps, options=options)
    assert len(fw.requests) == 1


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_followed_and_range_kept(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, status: int
) -> None:
    faults = Faults(redirects=2, redirect_status=status, cut_after=300_000)
    url = fw.add("fw.bin", DATA, faults=faults, query=SECRET)
    assert await fetch(url, sink, sleeps) == SIZE
    assert bytes(sink.buffer) == DATA
    assert [r.status for r in fw.requests] == [status, status, 200, status, status, 206]
    assert [r.path for r in fw.requests[:3]] == ["/fw/fw.bin", "/r/1/fw.bin", "/r/0/fw.bin"]
    first, resumed = fw.requests[:3], fw.requests[3:]
    assert all(r.range is None for r in first)
    assert len({r.range for r in resumed}) == 1 and resumed[0].range is not None
    assert all(r.retry_number == 1 for r in resumed)
    assert all(r.method == "GET" for r in fw.requests)


async def test_too_many_redirects_is_permanent(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(redirects=5), query=SECRET)
    options = opts(max_redirects=5)
    assert await fetch(url, sink, sleeps, options=options) == SIZE  # 5 hops are allowed
    assert len(fw.requests) == 6
    fw.faults("fw.bin").redirects = 6
    with pytest.raises(PermanentDownloadError, match="TooManyRedirects") as caught:
        await fetch(url, CollectingSink(), sleeps, options=options)
    assert "SECRET" not in str(caught.value)
    assert sleeps.delays == []
    assert len(fw.requests) == 6 + 6


async def test_redirects_disabled(fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(redirects=1, redirect_status=307))
    with pytest.raises(PermanentDownloadError, match="HTTP 307"):
        await fetch(url, sink, sleeps, options=opts(max_redirects=0))
    assert len(fw.requests) == 1


# -- sizes -------------------------------------------------------------------------------------


async def test_content_length_contradicting_expected_size(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA)
    with pytest.raises(PermanentDownloadError, match="1052897-byte file"):
        await fetch(url, sink, sleeps, expected_size=SIZE - 10)
    with pytest.raises(PermanentDownloadError, match="1052897-byte file"):
        await fetch(url, sink, sleeps, expected_size=SIZE + 10)
    assert len(fw.requests) == 2
    assert sink.buffer == b""


async def test_over_long_body_without_content_length(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(chunked=True))
    with pytest.raises(PermanentDownloadError, match="more than the expected"):
        await fetch(url, sink, sleeps, expected_size=SIZE - 10)
    assert len(sink.buffer) <= SIZE - 10
    assert len(fw.requests) == 1


async def test_chunked_early_close_resumes(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(chunked=True, cut_after=400_000))
    assert await fetch(url, sink, sleeps, expected_size=None) == SIZE
    assert bytes(sink.buffer) == DATA
    assert len(fw.requests) == 2


async def test_corrupt_bytes_are_passed_through(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    # Integrity is the sink's job (the manager hashes); the downloader delivers what it gets.
    url = fw.add("fw.bin", DATA, faults=Faults(corrupt_at=1000))
    await fetch(url, sink, sleeps)
    assert sink.buffer[1000] == DATA[1000] ^ 0xFF
    assert sink.buffer[:1000] == DATA[:1000] and sink.buffer[1001:] == DATA[1001:]


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_verified_with_the_given_ca(
    tmp_path: Path, sink: CollectingSink, sleeps: Sleeps
) -> None:
    pki = create_pki(tmp_path)
    # CERT_OPTIONAL: the server would accept a client certificate, so we can see none is sent.
    async with FirmwareServer(ssl=pki.server_context(mtls=True, tls13=True)) as server:
        url = server.add("fw.bin", DATA, faults=Faults(cut_after=300_000))
        assert url.startswith("https://")
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        assert await fetch(url, sink, sleeps, ssl_context=context) == SIZE
        assert bytes(sink.buffer) == DATA
        assert len(server.requests) == 2
        assert all(r.client_certificate is None for r in server.requests)


@pytest.mark.parametrize("verify", [None, True])
async def test_tls_unknown_ca_rejected(
    tmp_path: Path, sink: CollectingSink, sleeps: Sleeps, verify: bool | None
) -> None:
    pki = create_pki(tmp_path)
    async with FirmwareServer(ssl=pki.server_context(mtls=False)) as server:
        url = server.add("fw.bin", DATA)
        with pytest.raises(PermanentDownloadError, match="certificate"):
            await fetch(url, sink, sleeps, ssl_context=verify)
        assert server.requests == []  # no HTTP request reached the server
    assert sleeps.delays == []  # a bad certificate is not retried


async def test_plain_http_refused_by_default(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA)
    with pytest.raises(PermanentDownloadError, match=r"plain http.*allow_http"):
        await fetch(url, sink, sleeps, options=DownloadOptions())
    assert fw.requests == []  # not a single byte fetched in clear
    with pytest.raises(PermanentDownloadError, match="unsupported scheme 'ftp'"):
        await fetch("ftp://127.0.0.1/fw.bin", sink, sleeps, options=opts())


@pytest.mark.parametrize("allow_http", [False, True])
async def test_https_to_http_redirect_never_followed(
    tmp_path: Path, fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, allow_http: bool
) -> None:
    pki = create_pki(tmp_path)
    clear = fw.add("fw.bin", DATA)
    async with FirmwareServer(ssl=pki.server_context(mtls=False)) as server:
        url = server.add(
            "fw.bin", DATA, faults=Faults(redirects=1, redirect_to=clear), query=SECRET
        )
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        with pytest.raises(PermanentDownloadError, match="from https to http") as caught:
            await fetch(url, sink, sleeps, ssl_context=context, options=opts(allow_http=allow_http))
        assert [r.status for r in server.requests] == [302]
    assert fw.requests == []  # the http server never saw a request
    assert sink.buffer == b""
    assert "SECRET" not in str(caught.value)
    assert sleeps.delays == []


async def test_unannounced_size_is_capped(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    # Content-Length over the cap: refused before the body.
    url = fw.add("fw.bin", DATA)
    with pytest.raises(PermanentDownloadError, match="over the 100000-byte limit"):
        await fetch(url, sink, sleeps, expected_size=None, options=opts(max_size=100_000))
    assert sink.buffer == b""
    # No Content-Length at all (chunked): cut off at the cap.
    fw.faults("fw.bin").chunked = True
    with pytest.raises(PermanentDownloadError, match=r"100000-byte limit .*unannounced size"):
        await fetch(url, sink, sleeps, expected_size=None, options=opts(max_size=100_000))
    assert len(sink.buffer) <= 100_000
    # An announced size is trusted (the writer checks the space it needs).
    fw.faults("fw.bin").chunked = False
    fresh = CollectingSink()
    assert await fetch(url, fresh, sleeps, options=opts(max_size=100_000)) == SIZE


# -- cancellation, sink errors, logging ---------------------------------------------------------


async def test_cancellation_is_prompt_and_closes_the_connection(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps
) -> None:
    url = fw.add("fw.bin", DATA, faults=Faults(stall_after=200_000, stall_for=60.0))
    task = asyncio.create_task(fetch(url, sink, sleeps, options=opts()))
    await sink.first_data.wait()
    task.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await task
    [request] = fw.requests
    await asyncio.wait_for(request.done.wait(), 5)  # the server saw the connection go
    assert request.outcome == "disconnected"
    assert sleeps.delays == []


async def test_sink_errors_propagate_without_retry(fw: FirmwareServer, sleeps: Sleeps) -> None:
    class FullDisk(CollectingSink):
        async def data(self, chunk: bytes) -> None:
            raise OSError(28, "No space left on device")

    url = fw.add("fw.bin", DATA)
    with pytest.raises(OSError, match="No space left"):
        await fetch(url, FullDisk(), sleeps)
    assert len(fw.requests) == 1
    assert sleeps.delays == []


async def test_query_string_never_logged(
    fw: FirmwareServer, sink: CollectingSink, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    faults = Faults(status=503, redirects=1, cut_after=300_000, retry_after="1")
    url = fw.add("fw.bin", DATA, faults=faults, query=SECRET)
    caplog.set_level(logging.DEBUG)
    assert await fetch(url, sink, sleeps, options=opts(idle_timeout=5)) == SIZE
    fw.set_faults("fw.bin", Faults(status=404, status_times=None))
    with pytest.raises(PermanentDownloadError) as caught:
        await fetch(url, CollectingSink(), sleeps)
    assert "/fw/fw.bin" in caplog.text  # the URL is logged, redacted
    assert "resuming at byte" in caplog.text
    assert "SECRET" not in caplog.text and "AKIAEXAMPLE" not in caplog.text
    error: BaseException | None = caught.value
    while error is not None:
        assert "SECRET" not in str(error) and "SECRET" not in repr(error)
        error = error.__cause__ or error.__context__


def test_redact_url() -> None:
    assert (
        redact_url("https://user:pw@bucket.s3.amazonaws.com:8443/a/b.fw?X-Amz-Signature=1#f")
        == "https://bucket.s3.amazonaws.com:8443/a/b.fw"
    )
    assert redact_url("http://h/p") == "http://h/p"


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_disconnects": -1},
        {"idle_timeout": 0},
        {"retry_delay": 0},
        {"retry_delay": 10, "retry_delay_max": 5},
        {"jitter": 2},
        {"max_redirects": -1},
        {"max_total_time": 0},
        {"chunk_size": 10},
        {"allow_http": "yes"},
        {"max_size": 0},
        {"max_size": True},
    ],
)
def test_bad_options(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DownloadOptions(**bad)  # type: ignore[arg-type]


async def test_bad_offset(sink: CollectingSink, sleeps: Sleeps) -> None:
    with pytest.raises(ValueError):
        await fetch("http://127.0.0.1:9/x", sink, sleeps, offset=SIZE + 1)
    with pytest.raises(ValueError):
        await fetch("http://127.0.0.1:9/x", sink, sleeps, offset=-1, expected_size=None)
