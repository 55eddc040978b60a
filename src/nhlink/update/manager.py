"""UpdateManager: decide → download → verify → write → report (PROTOCOL.md §7, §11).

One update at a time per device. The download runs in its own task, independent of the
WebSocket: a socket reconnect does not interrupt it, and the ``update`` the server re-sends on
re-join is ignored while it runs (§7.1). Status reports are best-effort: while the socket is
down they are logged and skipped.

Any failure — checksum mismatch, HTTP error, too many disconnects, writer exception, disk full,
cancellation by ``stop()`` — calls the writer's ``fwup_abort``, reports ``failed`` with a
human-readable reason, calls ``Client.fwup_error`` and leaves the connection running.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .. import _core
from ..callbacks import call_callback
from ..errors import (
    ChecksumMismatch,
    DecodeError,
    DownloadError,
    NHLinkError,
    UpdateError,
    WriterError,
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
from .download import DownloadOptions, download
from .stage import WriteStage
from .state import run_in_thread

if TYPE_CHECKING:
    from ..link import NervesHubLink
    from .writer import FwupWriter

__all__ = ["UpdateManager"]

logger = logging.getLogger(__name__)

#: If update_available() itself fails, ask again after this long (and tell the server so).
CALLBACK_FAILURE_RESCHEDULE_MS = 5 * 60 * 1000


async def call_writer(name: str, method: Callable[..., Any], *args: Any) -> Any:
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


class _Pipeline:
    """The download sink: hashes, hands blocks to the writer (through a :class:`WriteStage`
    that overlaps both with the network), reports progress and resume points."""

    def __init__(self, manager: UpdateManager, info: UpdateInfo, writer: FwupWriter, offset: int):
        self.manager = manager
        self.info = info
        self.writer = writer
        self.offset = offset
        self.stage = WriteStage(writer, self._digest(offset), on_progress=self._note)
        self.throttle = ProgressThrottle(info.size)
        self.attempts = 0
        self.saved_offset = offset
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

    def _digest(self, offset: int) -> _core.StreamingDigest:
        return _core.StreamingDigest(
            part_checksums=list(self.info.partials_checksums) or None, offset=offset
        )

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
        await call_writer(
            "fwup_begin", self.writer.fwup_begin, self.info.size or 0, self.info.firmware_meta, 0
        )
        self.offset = 0
        self._latest = None
        self.stage.replace_digest(self._digest(0))
        self.throttle = ProgressThrottle(self.info.size or self.throttle.total)
        self.saved_offset = 0
        await self.manager.save_resume_point(self.info, 0)  # the partial image starts over too

    async def data(self, chunk: bytes) -> None:
        if not self.reported_downloading:
            self.reported_downloading = True
            await self.manager.report(wire.STATUS_DOWNLOADING)
        await self.stage.feed(chunk)  # raises a bad part or a writer error

    async def _advance(self, done: int, verified: int) -> None:
        now = asyncio.get_running_loop().time()
        pct = self.throttle.due(done, now)
        if pct is not None:
            # §7.3: a writer that installs while the image streams in reports "updating" only.
            stage = (
                wire.PROGRESS_STAGE_UPDATING
                if self.writer.streams_install
                else wire.PROGRESS_STAGE_DOWNLOADING
            )
            await self.manager.progress(stage, pct)
        if verified > self.saved_offset:
            # A verified part, written: a restarted process can resume from here (§11.3).
            self.saved_offset = verified
            await self.manager.save_resume_point(self.info, verified)

    async def finish(self) -> None:
        """End of stream: last block, verification (whole file and/or every part, and size)."""
        await self.stage.drain()
        await self._stop_reporter()
        self.stage.close()
        last = self.digest.flush()
        if last:
            await call_writer("fwup_chunk", self.writer.fwup_chunk, last)
        info = self.info
        total = self.digest.total
        if info.size is not None and total != info.size:
            raise DownloadError(f"downloaded {total} bytes but the server announced {info.size}")
        if info.checksum is not None:
            if self.digest.whole_available:
                self.digest.verify(info.checksum)
            elif not info.partials_checksums or len(self.digest.part_digests) + (
                self.offset // (1024 * 1024)
            ) != len(info.partials_checksums):
                raise ChecksumMismatch(info.checksum, "unknown", "resumed image (parts unverified)")
        await self._advance(total, self.digest.verified_offset)

    async def settle(self) -> None:
        """No chunk in progress any more (before the writer is aborted)."""
        await self.stage.settle()
        await self._stop_reporter()
        self.stage.close()


class UpdateManager:
    """Runs firmware updates for one :class:`~nhlink.NervesHubLink`."""

    def __init__(self, link: NervesHubLink, download_options: DownloadOptions | None = None):
        self.link = link
        self.name = link.name
        self.download_options = download_options or DownloadOptions()
        self._task: asyncio.Task[None] | None = None
        self._reschedule: asyncio.TimerHandle | None = None
        self.current: UpdateInfo | None = None
        self.last_error: BaseException | None = None
        self.completed: list[UpdateInfo] = []
        self._client_percent = -1
        self._stopping = False
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- reporting (best effort) -----------------------------------------------------------------

    async def report(self, status: str, **fields: Any) -> None:
        assert status in wire.STATUSES, status  # only the server's statuses are ever sent (§7.4)
        await self._send(wire.EVENT_STATUS_UPDATE, {"status": status, **fields})

    async def progress(self, stage: str, percent: int) -> None:
        await self._send(wire.EVENT_FWUP_PROGRESS, {"stage": stage, "value": percent})
        if percent > self._client_percent:  # the application sees one rising 0–100 sequence
            self._client_percent = percent
            await call_callback("fwup_progress", self.link.client.fwup_progress, percent)

    async def _send(self, event: str, payload: dict[str, Any]) -> None:
        try:
            await self.link.send(wire.TOPIC_DEVICE, event, payload)
        except NHLinkError as exc:
            logger.info("%s: could not report %s %s: %s", self.name, event, payload, exc)

    async def save_resume_point(self, info: UpdateInfo, verified_offset: int) -> None:
        store = self.link.store
        store.state.download = {
            "uuid": info.uuid,
            "checksum": info.checksum,
            "size": info.size,
            "verified_offset": verified_offset,
        }
        await store.asave()

    async def _clear_resume_point(self) -> None:
        store = self.link.store
        if store.state.download is not None:
            store.state.download = None
            await store.asave()

    # -- entry points from the link --------------------------------------------------------------

    async def on_update(self, payload: Any) -> None:
        """An ``update`` push (or legacy join reply) arrived."""
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
        if self.busy:
            logger.info(
                "%s: ignoring update %s: an update is already in progress", self.name, info.uuid
            )
            return
        self._cancel_reschedule()
        self._task = asyncio.create_task(self._run(info), name=f"nhlink:{self.name}:update")

    async def connection_lost(self) -> None:
        """The socket dropped: a running download carries on (it does not need the socket)."""

    def start(self) -> None:
        """Accept updates (again): called when the link starts."""
        self._stopping = False

    async def stop(self) -> None:
        """Cancel a rescheduled ask and an update in progress (aborting the writer, reporting
        ``failed`` if the socket is still up). No update starts afterwards until :meth:`start`."""
        self._stopping = True
        self._cancel_reschedule()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _cancel_reschedule(self) -> None:
        if self._reschedule is not None:
            self._reschedule.cancel()
            self._reschedule = None

    def _ask_again_later(self, info: UpdateInfo, ms: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._reschedule = None
            if not self.busy and not self._stopping:
                self._task = loop.create_task(self._run(info), name=f"nhlink:{self.name}:update")

        self._reschedule = loop.call_later(ms / 1000, fire)

    # -- the pipeline ----------------------------------------------------------------------------

    async def _run(self, info: UpdateInfo) -> None:
        self.current = info
        self._client_percent = -1
        try:
            await self.report(wire.STATUS_RECEIVED)
            decision = await self._decide(info)
            if isinstance(decision, Ignore):
                logger.info("%s: update %s ignored: %s", self.name, info.uuid, decision.reason)
                await self.report(wire.STATUS_IGNORED, reason=decision.reason)
                return
            if isinstance(decision, Reschedule):
                logger.info("%s: update %s rescheduled in %d ms", self.name, info.uuid, decision.ms)
                await self.report(
                    wire.STATUS_RESCHEDULED, delay_for=decision.ms, reason=decision.reason
                )
                self._ask_again_later(info, decision.ms)
                return
            await self._apply(info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything unexpected still ends as a reported failure
            logger.exception("%s: update pipeline error", self.name)
            self.last_error = exc
            await self.report(wire.STATUS_FAILED, reason=f"internal error: {exc}")
            await call_callback("fwup_error", self.link.client.fwup_error, exc)
        finally:
            self.current = None

    async def _decide(self, info: UpdateInfo) -> Apply | Ignore | Reschedule:
        client = self.link.client
        try:
            result = client.update_available(info.firmware_meta)
            if inspect.isawaitable(result):
                result = await result
            return normalize_decision(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s: update_available() failed; asking again later", self.name)
            return Reschedule(
                CALLBACK_FAILURE_RESCHEDULE_MS, f"update_available() failed on the device: {exc}"
            )

    def _resume_offset(self, info: UpdateInfo, writer: FwupWriter) -> int:
        saved = self.link.store.state.download
        if not saved or not writer.supports_resume or not info.partials_checksums:
            return 0
        if (saved.get("uuid"), saved.get("checksum"), saved.get("size")) != (
            info.uuid,
            info.checksum,
            info.size,
        ):
            return 0
        offset = saved.get("verified_offset", 0)
        if not isinstance(offset, int) or offset < 0 or offset % (1024 * 1024):
            return 0
        return offset

    async def _apply(self, info: UpdateInfo) -> None:
        writer = self.link.writer
        began = False
        pipeline: _Pipeline | None = None
        try:
            if writer is None:
                raise WriterError("no fwup_writer configured on this device")
            if info.checksum is None and not self.link.config.allow_unverified_firmware:
                raise UpdateError(
                    "the server sent no checksum; refusing unverified firmware "
                    "(allow_unverified_firmware=True accepts it)"
                )
            offset = self._resume_offset(info, writer)
            if offset:
                logger.info("%s: resuming update %s at byte %d", self.name, info.uuid, offset)
            await call_writer(
                "fwup_begin", writer.fwup_begin, info.size or 0, info.firmware_meta, offset
            )
            began = True
            await self.save_resume_point(info, offset)
            pipeline = _Pipeline(self, info, writer, offset)
            await download(
                info.firmware_url,
                sink=pipeline,
                offset=offset,
                expected_size=info.size,
                options=self.download_options,
                ssl=self.link.firmware_ssl_context,
            )
            await pipeline.finish()
            await self.report(wire.STATUS_UPDATING)
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
            await self.progress(wire.PROGRESS_STAGE_UPDATING, 100)
            await self._clear_resume_point()
            await self.report(wire.STATUS_COMPLETED)
            self.completed.append(info)
            logger.info("%s: firmware %s installed", self.name, info.uuid)
        except asyncio.CancelledError:
            if pipeline is not None:
                await pipeline.settle()
            await self._fail(writer if began else None, UpdateError("update cancelled (stopping)"))
            raise
        except Exception as exc:
            if pipeline is not None:
                await pipeline.settle()
            error = exc if isinstance(exc, UpdateError) else UpdateError(f"{exc}")
            await self._fail(writer if began else None, error)
            await call_callback("fwup_error", self.link.client.fwup_error, error)

    async def _fail(self, writer: FwupWriter | None, error: BaseException) -> None:
        # The writer is aborted, so a resume point would point at nothing: forget it. (A crash
        # or power cut, which calls no abort, is what resume-after-restart is for.)
        self.last_error = error
        logger.error("%s: firmware update failed: %s", self.name, error)
        if writer is not None:
            try:
                await asyncio.shield(call_writer("fwup_abort", writer.fwup_abort))
            except Exception as exc:
                logger.error("%s: fwup_abort failed too: %s", self.name, exc)
        with contextlib.suppress(OSError):
            await self._clear_resume_point()
        await self.report(wire.STATUS_FAILED, reason=str(error) or type(error).__name__)
