"""UpdateManager: decide → download → verify → write → report (PROTOCOL.md §7, §11).

One update at a time per device. The download runs in its own task, independent of the
WebSocket: a socket reconnect does not interrupt it, and an ``update`` the server sends while it
runs — a re-send after a re-join, a duplicate, even a malformed one — is logged and dropped
(§7.1): the server hears nothing about it and the running update is unaffected. Status reports
are best-effort: while the socket is down they are logged and skipped.

The verification guarantee (an invariant of this module and of
:class:`~nhlink._core.StreamingDigest`, which gates every byte on its way to the writer):

* the writer never receives a byte that could still fail verification where verification is
  possible (a part after its part checksum matched; the last bytes after the whole-file
  checksum matched);
* ``completed`` is sent only when the SHA-256 of every byte the writer holds equals
  ``checksum`` (a resumed image's prefix is read back from the writer and re-hashed);
* a resume point is persisted only for bytes the writer has made durable (``fwup_sync``).

Any failure — checksum mismatch, HTTP error, too many disconnects, writer exception, disk full,
cancellation by ``stop()`` — calls the writer's ``fwup_abort``, reports ``failed`` with a
human-readable reason, calls ``Client.fwup_error`` and leaves the connection running. The one
exception is ``stop(suspend=True)`` with a writer that resumes: the written bytes are synced,
the resume point saved, the writer told ``fwup_suspend``, and nothing is reported; the next
start resumes the download (the join says ``currently_downloading_uuid``).

The manager talks to the connection through :class:`UpdateHost` only (NervesHubLink is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import ssl
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import _core
from ..callbacks import DEFAULT_CALLBACK_TIMEOUT, CallbackTimeout, call_callback, invoke
from ..errors import (
    DecodeError,
    DownloadError,
    LocalProtocolError,
    NHLinkError,
    UpdateError,
    WriterError,
    without_traceback,
)
from ..protocol import wire
from ..protocol.lifecycle import (
    Apply,
    Ignore,
    ProgressThrottle,
    Reschedule,
    UpdateInfo,
    normalize_decision,
)
from .options import DownloadOptions
from .stage import WriteStage
from .state import StateStore, run_in_thread
from .writer import FwupWriter, can_read_back

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["PART_SIZE", "UpdateHost", "UpdateManager", "UpdatePolicy", "call_writer"]

logger = logging.getLogger(__name__)

#: If update_available() itself fails or hangs, ask again after this long (and tell the server).
CALLBACK_FAILURE_RESCHEDULE_MS = 5 * 60 * 1000
#: NervesHub's ``partials_checksums`` part size (§7.1).
PART_SIZE = 1024 * 1024
#: How many part boundaries below the saved resume point are tried when the writer holds less.
RESUME_TRIES = 64


class UpdateHost(Protocol):
    """What the update pipeline needs from the connection: who it is, the application's
    callbacks and writer, the state file, TLS for the storage host, and a way to send."""

    @property
    def name(self) -> str: ...

    @property
    def client(self) -> Client: ...

    @property
    def writer(self) -> FwupWriter | None: ...

    @property
    def store(self) -> StateStore: ...

    @property
    def firmware_ssl_context(self) -> ssl.SSLContext | None: ...

    async def send(self, topic: str, event: str, payload: Any) -> str:
        """Push on a joined topic; returns its ref. Raises an
        :class:`~nhlink.errors.NHLinkError` when it can't."""
        ...

    def delivered(self, ref: str) -> bool:
        """Whether the server has processed the message sent with ``ref``."""
        ...


@dataclass(frozen=True)
class UpdatePolicy:
    """The update rules a device is configured with (from :class:`~nhlink.config.LinkConfig`)."""

    #: install updates that carry neither ``checksum`` nor ``partials_checksums``.
    allow_unverified_firmware: bool = False
    #: seconds an ``async def`` callback (``update_available``, ``fwup_progress``...) may take.
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
    #: the shortest reschedule honoured, in ms: ``Reschedule(0)`` would otherwise re-ask (and
    #: report ``rescheduled``) in a tight loop.
    min_reschedule_ms: int = 60_000


async def call_writer(name: str, method: Any, *args: Any) -> Any:
    """Run a writer method: ``async def`` on the loop, plain ones in a worker thread (slow flash
    must never stall heartbeats). Exceptions become :class:`WriterError` naming the method.

    Cancelled while a plain method runs, it waits for the thread first: the abort that follows
    must never overlap a chunk or finish still in progress.
    """
    try:
        if inspect.iscoroutinefunction(method):
            return await method(*args)
        return await run_in_thread(method, *args)
    except asyncio.CancelledError:
        raise
    except UpdateError:
        raise
    except Exception as exc:
        raise WriterError(f"{name} failed: {type(exc).__name__}: {exc}") from exc


def _new_digest(info: UpdateInfo) -> _core.StreamingDigest:
    """The digest (and verification gate) for ``info``'s image, from byte 0."""
    return _core.StreamingDigest(
        part_size=PART_SIZE,
        part_checksums=list(info.partials_checksums) or None,
        checksum=info.checksum,
    )


async def _downloader() -> Any:
    """:func:`nhlink.update.download.download`, imported on first use in a worker thread: a
    connected, idle device never loads aiohttp, and loading it (hundreds of ms on a small
    ARM core) never stalls the event loop's heartbeats."""
    module = sys.modules.get("nhlink.update.download")
    if module is None:
        module = await asyncio.to_thread(importlib.import_module, "nhlink.update.download")
    return module.download


class _Pipeline:
    """The download sink: hashes and gates, hands verified blocks to the writer (through a
    :class:`WriteStage` that overlaps both with the network), reports progress and, for a
    writer that can resume, durable resume points."""

    def __init__(
        self,
        manager: UpdateManager,
        info: UpdateInfo,
        writer: FwupWriter,
        digest: _core.StreamingDigest,
        resumable: bool,
    ):
        self.manager = manager
        self.info = info
        self.writer = writer
        self.resumable = resumable
        self.stage = WriteStage(writer, digest, on_progress=self._note, sync=resumable)
        self.throttle = ProgressThrottle(info.size)
        self.attempts = 0
        self.saved_offset = digest.released
        self.reported_downloading = False
        # Progress is reported as the write stage completes chunks, by its own task (sending a
        # status or saving the resume point must not wait for the next chunk to arrive).
        self._latest: tuple[int, int] | None = None
        self._progressed = asyncio.Event()
        self._reporter = asyncio.create_task(self._report_progress())

    def _note(self, progress: tuple[int, int]) -> None:
        self._latest = progress
        self._progressed.set()

    async def _report_progress(self) -> None:
        while True:
            await self._progressed.wait()
            self._progressed.clear()
            if self._latest is not None:
                await self._advance(*self._latest)

    async def _stop_reporter(self) -> None:
        self._reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reporter

    @property
    def digest(self) -> _core.StreamingDigest:
        return self.stage.digest

    async def attempt(self, number: int, offset: int) -> None:
        self.attempts += 1
        await self.manager.report(wire.STATUS_STARTED, downloader_network_interface=None)

    def total_size(self, size: int) -> None:
        # update.size was null: progress needs the size the server reported.
        if self.throttle.total is None:
            self.throttle.total = size

    async def restart(self) -> None:
        # The server ignored Range: everything so far is discarded and the image starts over.
        logger.info("%s: firmware server ignored Range; restarting from 0", self.manager.name)
        await self.stage.drain()
        await call_writer("fwup_abort", self.writer.fwup_abort)
        await self.manager.begin_fresh(self.writer, self.info)
        self._latest = None
        self.stage.replace_digest(_new_digest(self.info))
        self.throttle = ProgressThrottle(self.info.size or self.throttle.total)
        self.saved_offset = 0
        await self.manager.save_resume_point(self.info, 0)  # the partial image starts over too

    async def data(self, chunk: bytes) -> None:
        if not self.reported_downloading:
            self.reported_downloading = True
            await self.manager.report(wire.STATUS_DOWNLOADING)
        await self.stage.feed(chunk)  # raises a bad part or a writer error

    async def _advance(self, done: int, durable: int) -> None:
        now = asyncio.get_running_loop().time()
        pct = self.throttle.due(done, now)
        if pct is not None:
            if self.writer.streams_install:
                # §7.3: a writer that installs while the image streams in reports "updating"
                # only; 100 % means installed, which only fwup_finish can tell.
                await self.manager.progress(wire.PROGRESS_STAGE_UPDATING, min(pct, 99))
            else:
                await self.manager.progress(wire.PROGRESS_STAGE_DOWNLOADING, pct)
        if self.resumable and durable > self.saved_offset:
            # Verified parts, written and synced: a restarted process can resume here (§11.3).
            self.saved_offset = durable
            await self.manager.save_resume_point(self.info, durable)

    async def finish(self) -> None:
        """End of stream: check the size, verify (whole file and every part), and only then
        hand the bytes the gate held back to the writer."""
        await self.stage.drain()
        latest = self._latest
        await self._stop_reporter()
        if latest is not None:  # the last note may not have been reported yet
            await self._advance(*latest)
        info = self.info
        total = self.digest.total
        if info.size is not None and total != info.size:
            raise DownloadError(f"downloaded {total} bytes but the server announced {info.size}")
        rest = self.digest.flush()  # raises ChecksumMismatch: the held bytes are then dropped
        await self.stage.write_final(rest)
        self.stage.close()
        await self._advance(total, 0)

    async def settle(self) -> None:
        """No chunk in progress any more (before the writer is aborted)."""
        await self.stage.settle()
        await self._stop_reporter()
        self.stage.close()


class UpdateManager:
    """Runs firmware updates for one device connection (an :class:`UpdateHost`)."""

    # One per link, thousands in a fleet: slots instead of a per-instance dict.
    __slots__ = (
        "_client_percent",
        "_connection",
        "_reschedule",
        "_sent_percent",
        "_side_tasks",
        "_stopping",
        "_suspend",
        "_task",
        "_verdict",
        "completed",
        "completed_count",
        "current",
        "download_options",
        "failed_count",
        "host",
        "last_error",
        "name",
        "phase",
        "policy",
        "rescheduled",
        "taken",
    )

    def __init__(
        self,
        host: UpdateHost,
        download_options: DownloadOptions | None = None,
        policy: UpdatePolicy | None = None,
    ):
        self.host = host
        self.name = host.name
        self.download_options = download_options or DownloadOptions()
        self.policy = policy or UpdatePolicy()
        self._task: asyncio.Task[None] | None = None
        self._reschedule: asyncio.TimerHandle | None = None
        self.current: UpdateInfo | None = None
        self.last_error: BaseException | None = None
        #: the updates completed by this process, the most recent last (the last 16: a device
        #: that never reboots must not grow without bound)
        self.completed: list[UpdateInfo] = []
        self._client_percent = -1
        self._sent_percent: dict[str, int] = {}
        #: updates taken on (decided, downloaded...), completed and failed since the link was made
        self.taken = 0
        self.completed_count = 0
        self.failed_count = 0
        #: the last final status sent (payload, ref; None when it could not be sent)
        #: (payload, ref or None when it could not be sent, the connection it was sent on)
        self._verdict: tuple[dict[str, Any], str | None, int] | None = None
        self._connection = 0  # counts lost connections: which socket a message went out on
        self._stopping = False
        self._suspend = False
        self._side_tasks: dict[asyncio.Task[None], None] = {}  # an ordered set, 64 B empty
        #: what the running update is doing: "deciding", "downloading", "installing" (None: idle)
        self.phase: str | None = None
        #: a rescheduled update waiting to be asked again, and when (loop time)
        self.rescheduled: tuple[UpdateInfo, float] | None = None

    @property
    def percent(self) -> int | None:
        """The running update's progress as the application sees it (0–100), None if none."""
        return (
            self._client_percent if self.current is not None and self._client_percent >= 0 else None
        )

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- reporting (best effort) -----------------------------------------------------------------

    async def report(self, status: str, **fields: Any) -> None:
        # Only the server's statuses are ever sent (§7.4): anything else crashes its channel.
        if status not in wire.STATUSES:
            raise LocalProtocolError(f"not a NervesHub update status: {status!r}")
        payload = {"status": status, **fields}
        ref = await self._send(wire.EVENT_STATUS_UPDATE, payload)
        if status in (wire.STATUS_COMPLETED, wire.STATUS_FAILED):
            # The verdict matters to the server (success, penalty box, failure thresholds). It
            # counts as delivered once a later heartbeat was answered; until then the next join
            # sends it again (at least once: a socket can take a message and die).
            self._verdict = (payload, ref, self._connection)

    async def progress(self, stage: str, percent: int) -> None:
        # One non-decreasing sequence per stage and update: the download and a streaming
        # installer's own progress both report "updating".
        if percent < self._sent_percent.get(stage, -1):
            return
        self._sent_percent[stage] = percent
        await self._send(wire.EVENT_FWUP_PROGRESS, {"stage": stage, "value": percent})
        if percent > self._client_percent:  # the application sees one rising 0–100 sequence
            self._client_percent = percent
            await self._callback("fwup_progress", self.host.client.fwup_progress, percent)

    async def _callback(self, name: str, fn: Any, *args: Any) -> None:
        await call_callback(name, fn, *args, timeout=self.policy.callback_timeout)

    async def _send(self, event: str, payload: dict[str, Any]) -> str | None:
        """Send; the ref, or None when it could not be sent (logged)."""
        try:
            return await self.host.send(wire.TOPIC_DEVICE, event, payload)
        except NHLinkError as exc:
            logger.info("%s: could not report %s %s: %s", self.name, event, payload, exc)
            return None

    async def save_resume_point(self, info: UpdateInfo, verified_offset: int) -> None:
        store = self.host.store
        store.state.download = {
            "uuid": info.uuid,
            "checksum": info.checksum,
            "size": info.size,
            "verified_offset": verified_offset,
        }
        await store.asave()

    async def _clear_resume_point(self) -> None:
        store = self.host.store
        if store.state.download is not None:
            store.state.download = None
            await store.asave()

    # -- entry points from the link --------------------------------------------------------------

    async def on_update(self, payload: Any) -> None:
        """An ``update`` push (or legacy join reply) arrived."""
        if self.busy:
            # Checked before the payload: whatever arrives during an update (a re-send, a
            # duplicate, garbage) must neither reach the server nor disturb the update.
            logger.info("%s: ignoring an update message: an update is in progress", self.name)
            return
        try:
            info = UpdateInfo.parse(payload)
        except DecodeError as exc:
            logger.error("%s: unusable update message: %s", self.name, exc)
            await self.report(wire.STATUS_FAILED, reason=f"unusable update message: {exc}")
            return
        if info is None:
            logger.info("%s: server says no update is available", self.name)
            return
        if self._stopping:
            logger.info("%s: ignoring update %s: stopping", self.name, info.uuid)
            return
        self._cancel_reschedule()
        self.taken += 1
        self._task = asyncio.create_task(self._run(info), name=f"nhlink:{self.name}:update")

    async def wait_idle(self) -> None:
        """Return once no update is running (at once if none is)."""
        while (task := self._task) is not None and not task.done():
            await asyncio.wait({task})

    async def connection_lost(self) -> None:
        """The socket dropped: a running download carries on (it does not need the socket).
        A verdict sent on it and not confirmed is now in doubt (see :meth:`joined`)."""
        self._connection += 1

    async def joined(self) -> None:
        """The device channel is joined (again): send the last verdict again unless the
        server is known to have processed it."""
        verdict = self._verdict
        if verdict is None:
            return
        payload, ref, connection = verdict
        if ref is not None and self.host.delivered(ref):
            self._verdict = None
            return
        if ref is not None and connection == self._connection:
            # Sent on this very socket (while its join was on the way): it arrives after the
            # join, in order. Sending it again would make the server hear it twice; if this
            # socket dies before a heartbeat confirms it, the next join sends it again.
            return
        logger.info("%s: reporting %s again (its delivery is not confirmed)", self.name, payload)
        ref = await self._send(wire.EVENT_STATUS_UPDATE, payload)
        self._verdict = (payload, ref, self._connection)

    @property
    def verdict_pending(self) -> bool:
        """A final status whose delivery is not confirmed yet."""
        verdict = self._verdict
        return verdict is not None and (verdict[1] is None or not self.host.delivered(verdict[1]))

    def start(self) -> None:
        """Accept updates (again): called when the link starts."""
        self._stopping = False

    async def stop(self, *, suspend: bool = False) -> None:
        """Cancel a rescheduled ask and an update in progress (aborting the writer, reporting
        ``failed`` if the socket is still up). No update starts afterwards until :meth:`start`.

        ``suspend``: a download in flight into a writer that can resume is kept instead — the
        bytes written are synced, the resume point saved, ``fwup_suspend`` called, nothing
        reported — so the next start resumes it (other writers are aborted as above)."""
        self._stopping = True
        self._suspend = suspend
        self._cancel_reschedule()
        task = self._task
        try:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self._suspend = False
        self._task = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks[task] = None
        task.add_done_callback(self._forget_side_task)

    def _forget_side_task(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.pop(task, None)

    def _cancel_reschedule(self) -> None:
        self.rescheduled = None
        if self._reschedule is not None:
            self._reschedule.cancel()
            self._reschedule = None

    def _ask_again_later(self, info: UpdateInfo, ms: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._reschedule = None
            self.rescheduled = None
            if not self.busy and not self._stopping:
                self._task = loop.create_task(self._run(info), name=f"nhlink:{self.name}:update")

        self._reschedule = loop.call_later(ms / 1000, fire)
        self.rescheduled = (info, loop.time() + ms / 1000)

    # -- the pipeline ----------------------------------------------------------------------------

    async def _run(self, info: UpdateInfo) -> None:
        self.current = info
        self._client_percent = -1
        self._sent_percent = {}
        self._verdict = None  # a new update: the old verdict is history
        self.phase = "deciding"
        try:
            await self.report(wire.STATUS_RECEIVED)
            decision = await self._decide(info)
            if isinstance(decision, Ignore):
                logger.info("%s: update %s ignored: %s", self.name, info.uuid, decision.reason)
                await self.report(wire.STATUS_IGNORED, reason=decision.reason)
                return
            if isinstance(decision, Reschedule):
                ms = decision.ms
                if ms < self.policy.min_reschedule_ms:
                    logger.warning(
                        "%s: reschedule in %d ms raised to the %d ms minimum",
                        self.name,
                        ms,
                        self.policy.min_reschedule_ms,
                    )
                    ms = self.policy.min_reschedule_ms
                logger.info("%s: update %s rescheduled in %d ms", self.name, info.uuid, ms)
                await self.report(wire.STATUS_RESCHEDULED, delay_for=ms, reason=decision.reason)
                self._ask_again_later(info, ms)
                return
            await self._apply(info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything unexpected still ends as a reported failure
            logger.exception("%s: update pipeline error", self.name)
            self.last_error = without_traceback(exc)
            self.failed_count += 1
            await self.report(wire.STATUS_FAILED, reason=f"internal error: {exc}")
            await self._callback("fwup_error", self.host.client.fwup_error, exc)
        finally:
            self.current = None
            self.phase = None

    async def _decide(self, info: UpdateInfo) -> Apply | Ignore | Reschedule:
        client = self.host.client
        try:
            result = await invoke(
                "update_available",
                client.update_available,
                info.firmware_meta,
                timeout=self.policy.callback_timeout,
            )
            return normalize_decision(result)
        except asyncio.CancelledError:
            raise
        except CallbackTimeout as exc:
            logger.error("%s: %s; asking again later", self.name, exc)
            return Reschedule(
                CALLBACK_FAILURE_RESCHEDULE_MS, "update_available() did not answer on the device"
            )
        except Exception as exc:
            logger.exception("%s: update_available() failed; asking again later", self.name)
            return Reschedule(
                CALLBACK_FAILURE_RESCHEDULE_MS, f"update_available() failed on the device: {exc}"
            )

    # -- beginning (and resuming) the writer -------------------------------------------------

    def _resumable(self, info: UpdateInfo, writer: FwupWriter) -> bool:
        """Whether this image can be resumed after a restart: the writer can continue and read
        back, the server sent part checksums to re-verify with, and the state is persisted."""
        return (
            writer.supports_resume
            and can_read_back(writer)
            and bool(info.partials_checksums)
            and self.host.store.path is not None
        )

    def _saved_resume_point(self, info: UpdateInfo, writer: FwupWriter) -> int:
        saved = self.host.store.state.download
        if not saved or not self._resumable(info, writer):
            return 0
        if (saved.get("uuid"), saved.get("checksum"), saved.get("size")) != (
            info.uuid,
            info.checksum,
            info.size,
        ):
            return 0
        offset = saved.get("verified_offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset <= 0:
            return 0
        if offset % PART_SIZE:
            return 0
        # The last part is always fetched again (resuming at the very end would be a 416).
        return min(offset, (len(info.partials_checksums) - 1) * PART_SIZE)

    async def begin_fresh(self, writer: FwupWriter, info: UpdateInfo) -> None:
        """``fwup_begin(size, meta)``: no offset, so a writer with the seed's two-argument
        signature works."""
        await call_writer("fwup_begin", writer.fwup_begin, info.size or 0, info.firmware_meta)

    async def _abort_quietly(self, writer: FwupWriter) -> None:
        try:
            await call_writer("fwup_abort", writer.fwup_abort)
        except WriterError as exc:
            logger.warning("%s: %s", self.name, exc)

    async def _begin(self, info: UpdateInfo, writer: FwupWriter) -> _core.StreamingDigest:
        """Begin the writer, resuming a saved image where its re-verified prefix allows.

        Returns the digest positioned where the download starts (``digest.total``). If anything
        fails after a ``fwup_begin`` succeeded, the writer is aborted before this raises."""
        begun = False
        try:
            saved = self._saved_resume_point(info, writer)
            point = await self._begin_at_most(writer, info, saved) if saved else 0
            if point:
                begun = True
                digest = _new_digest(info)
                good = await self._verify_prefix(writer, digest, point)
                if good == point:
                    logger.info("%s: resuming update %s at byte %d", self.name, info.uuid, point)
                    return digest
                logger.warning(
                    "%s: the image held for update %s is damaged at byte %d (resume point %d); %s",
                    self.name,
                    info.uuid,
                    good,
                    point,
                    f"resuming at byte {good}" if good else "starting over",
                )
                if good:
                    size, meta = info.size or 0, info.firmware_meta
                    await call_writer("fwup_begin", writer.fwup_begin, size, meta, good)
                    return digest
                begun = False
                await self._abort_quietly(writer)
            await self.begin_fresh(writer, info)
            return _new_digest(info)
        except BaseException as exc:
            if begun:
                if isinstance(exc, asyncio.CancelledError) and self._suspending(info, writer):
                    # Stopping while a resumed prefix is re-verified: keep it for next time.
                    with contextlib.suppress(WriterError):
                        await asyncio.shield(call_writer("fwup_suspend", writer.fwup_suspend))
                else:
                    await asyncio.shield(self._abort_quietly(writer))
            raise

    def _suspending(self, info: UpdateInfo, writer: FwupWriter) -> bool:
        """``stop(suspend=True)`` is under way and this download can be resumed later."""
        return self._suspend and self._resumable(info, writer)

    async def _begin_at_most(self, writer: FwupWriter, info: UpdateInfo, saved: int) -> int:
        """``fwup_begin`` at the saved resume point or, when the writer holds less (a power cut
        lost its last writes), at the part boundary before it, and so on down (at most
        ``RESUME_TRIES`` tries). Returns where it began, or 0 when it could not (nothing
        begun: the caller starts over). A failed ``fwup_begin`` leaves nothing to abort."""
        size, meta = info.size or 0, info.firmware_meta
        point = saved
        for _ in range(RESUME_TRIES):
            if point <= 0:
                break
            try:
                await call_writer("fwup_begin", writer.fwup_begin, size, meta, point)
            except WriterError as exc:
                logger.info("%s: cannot resume at byte %d: %s", self.name, point, exc)
                point -= PART_SIZE
                continue
            if point < saved:
                logger.warning(
                    "%s: the image held is shorter than its resume point %d (lost writes?); "
                    "resuming at byte %d",
                    self.name,
                    saved,
                    point,
                )
            return point
        logger.warning("%s: cannot resume update %s; starting over", self.name, info.uuid)
        return 0

    async def _verify_prefix(
        self, writer: FwupWriter, digest: _core.StreamingDigest, point: int
    ) -> int:
        """Read the first ``point`` bytes back from the writer and re-hash them part by part
        into ``digest``; returns the end of the good prefix (``point`` when all matched)."""
        for start in range(0, point, PART_SIZE):
            try:
                data = await call_writer("fwup_read", writer.fwup_read, start, PART_SIZE)
            except WriterError as exc:
                logger.warning("%s: reading the held image back failed: %s", self.name, exc)
                return start
            if not isinstance(data, bytes | bytearray | memoryview) or len(data) != PART_SIZE:
                return start
            if not await run_in_thread(digest.absorb, data):  # hashlib releases the GIL
                return start
        return point

    async def _apply(self, info: UpdateInfo) -> None:
        writer = self.host.writer
        began = False
        pipeline: _Pipeline | None = None
        try:
            if writer is None:
                raise WriterError("no fwup_writer configured on this device")
            if (
                info.checksum is None
                and not info.partials_checksums
                and not self.policy.allow_unverified_firmware
            ):
                raise UpdateError(
                    "the server sent no checksum; refusing unverified firmware "
                    "(allow_unverified_firmware=True accepts it)"
                )
            digest = await self._begin(info, writer)
            began = True
            offset = digest.total
            await self.save_resume_point(info, offset)
            self.phase = "downloading"
            pipeline = _Pipeline(self, info, writer, digest, self._resumable(info, writer))
            download = await _downloader()
            await download(
                info.firmware_url,
                sink=pipeline,
                offset=offset,
                expected_size=info.size,
                options=self.download_options,
                ssl=self.host.firmware_ssl_context,
            )
            await pipeline.finish()
            self.phase = "installing"
            await self.report(wire.STATUS_UPDATING)
            await self._finish(writer)
            await self.progress(wire.PROGRESS_STAGE_UPDATING, 100)
            await self._clear_resume_point()
            await self.report(wire.STATUS_COMPLETED)
            self.completed.append(info)
            del self.completed[:-16]
            self.completed_count += 1
            logger.info("%s: firmware %s installed", self.name, info.uuid)
            await self._callback(
                "update_completed", self.host.client.update_completed, info.firmware_meta
            )
        except asyncio.CancelledError:
            if writer is not None and self._suspending(info, writer):
                if pipeline is None:
                    # Stopped while beginning: _begin kept the image (or had none). Begun but
                    # not streaming yet (saving the resume point): release the writer too.
                    if began:
                        with contextlib.suppress(WriterError):
                            await asyncio.shield(call_writer("fwup_suspend", writer.fwup_suspend))
                    raise
                if self.phase == "downloading":
                    await asyncio.shield(self._suspend_download(info, writer, pipeline))
                    raise
            if pipeline is not None:
                await pipeline.settle()
            await self._fail(writer if began else None, UpdateError("update cancelled (stopping)"))
            raise
        except Exception as exc:
            if pipeline is not None:
                await pipeline.settle()
            error = exc if isinstance(exc, UpdateError) else UpdateError(f"{exc}")
            await self._fail(writer if began else None, error)
            await self._callback("fwup_error", self.host.client.fwup_error, error)

    async def _suspend_download(
        self, info: UpdateInfo, writer: FwupWriter, pipeline: _Pipeline
    ) -> None:
        """Stopping with a download in flight into a writer that resumes: write and sync what
        was verified, save the resume point there, tell the writer. Nothing is reported: the
        update is not over (the next start resumes it). Falls back to aborting on any error."""
        try:
            await pipeline.stage.drain()
            await pipeline.settle()
            released = pipeline.digest.released
            point = released - released % PART_SIZE
            if point > pipeline.saved_offset:
                await call_writer("fwup_sync", writer.fwup_sync)
                await self.save_resume_point(info, point)
                pipeline.saved_offset = point
            await call_writer("fwup_suspend", writer.fwup_suspend)
        except Exception as exc:
            logger.warning("%s: could not keep the download for later: %s", self.name, exc)
            await self._fail(writer, UpdateError("update cancelled (stopping)"))
            return
        logger.info(
            "%s: update %s suspended at byte %d; the next start resumes it",
            self.name,
            info.uuid,
            pipeline.saved_offset,
        )

    async def _finish(self, writer: FwupWriter) -> None:
        """``fwup_finish`` (the image is complete and verified), with install progress."""
        install_progress = ProgressThrottle(100)
        loop = asyncio.get_running_loop()

        def report_install(percent: int) -> None:  # called on the loop by the writer
            pct = install_progress.due(percent, loop.time())
            if pct is not None and pct < 100:
                self._spawn(self.progress(wire.PROGRESS_STAGE_UPDATING, pct))

        writer.set_progress_reporter(report_install)
        try:
            await call_writer("fwup_finish", writer.fwup_finish)
        finally:
            writer.set_progress_reporter(None)

    async def _fail(self, writer: FwupWriter | None, error: BaseException) -> None:
        # The writer is aborted, so a resume point would point at nothing: forget it. (A crash
        # or power cut, which calls no abort, is what resume-after-restart is for.)
        self.last_error = without_traceback(error)
        self.failed_count += 1
        logger.error("%s: firmware update failed: %s", self.name, error)
        if writer is not None:
            try:
                await asyncio.shield(call_writer("fwup_abort", writer.fwup_abort))
            except Exception as exc:
                logger.error("%s: fwup_abort failed too: %s", self.name, exc)
        with contextlib.suppress(OSError):
            await self._clear_resume_point()
        await self.report(wire.STATUS_FAILED, reason=str(error) or type(error).__name__)
