"""SwupdateWriter: stream a .swu image into the SWUpdate daemon over its IPC socket.

SWUpdate (https://swupdate.org) verifies the signed ``sw-description``, checks hardware
compatibility and installs each image with its handler. The image is streamed to the daemon
*while it downloads* — no spool space — over the daemon's control socket (``sockinstctrl``),
the same protocol ``swupdate-client`` speaks; progress comes from the progress socket
(``swupdateprog``). The message layout is SWUpdate's IPC API 1 as shipped with SWUpdate
2022.12 (Debian 12); a daemon that speaks another layout is detected and reported.

Trade-off: with ``installed-directly = true`` images, SWUpdate writes the *inactive* slot while
the bytes arrive, so a failed update (bad hash, cut stream) has already overwritten that slot.
The running slot is never touched and the bootloader is switched only after success, but the
previous contents of the inactive slot are gone. Images without ``installed-directly`` are
buffered by SWUpdate in its ``TMPDIR`` first (then SWUpdate, not nhlink, needs the space).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import WriterError
from ..writer import FwupWriter
from . import _proc

__all__ = ["SwupdateWriter"]

logger = logging.getLogger(__name__)

# -- SWUpdate's IPC (network_ipc.h / progress_ipc.h, API 1, SWUpdate 2022.12) --------------------

IPC_MAGIC = 0x14052001
SWUPDATE_API_VERSION = 1
# msgtype
REQ_INSTALL, ACK, NACK, GET_STATUS = 0, 1, 2, 3
# RECOVERY_STATUS
IDLE, START, RUN, SUCCESS, FAILURE, DOWNLOAD, DONE, SUBPROCESS, PROGRESS = range(9)
# enum run_type
RUN_DEFAULT, RUN_DRYRUN, RUN_INSTALL = 0, 1, 2
SOURCE_UNKNOWN = 0


class _Request(ctypes.Structure):
    _fields_ = (
        ("apiversion", ctypes.c_uint),
        ("source", ctypes.c_int),
        ("dry_run", ctypes.c_int),
        ("len", ctypes.c_size_t),
        ("info", ctypes.c_char * 512),
        ("software_set", ctypes.c_char * 256),
        ("running_mode", ctypes.c_char * 256),
        ("disable_store_swu", ctypes.c_bool),
    )


class _Status(ctypes.Structure):
    _fields_ = (
        ("current", ctypes.c_int),
        ("last_result", ctypes.c_int),
        ("error", ctypes.c_int),
        ("desc", ctypes.c_char * 2048),
    )


class _Notify(ctypes.Structure):
    _fields_ = (
        ("status", ctypes.c_int),
        ("error", ctypes.c_int),
        ("level", ctypes.c_int),
        ("msg", ctypes.c_char * 2048),
    )


class _InstMsg(ctypes.Structure):
    _fields_ = (("req", _Request), ("len", ctypes.c_uint), ("buf", ctypes.c_char * 2048))


class _ProcMsg(ctypes.Structure):
    _fields_ = (
        ("source", ctypes.c_int),
        ("cmd", ctypes.c_int),
        ("timeout", ctypes.c_int),
        ("len", ctypes.c_uint),
        ("buf", ctypes.c_char * 2048),
    )


class _AesKeyMsg(ctypes.Structure):
    _fields_ = (("key_ascii", ctypes.c_char * 65), ("ivt_ascii", ctypes.c_char * 33))


class _Versions(ctypes.Structure):
    _fields_ = (
        ("minimum_version", ctypes.c_char * 256),
        ("maximum_version", ctypes.c_char * 256),
        ("current_version", ctypes.c_char * 256),
    )


class _Revisions(ctypes.Structure):
    _fields_ = (("boardname", ctypes.c_char * 256), ("revision", ctypes.c_char * 256))


class _MsgData(ctypes.Union):
    _fields_ = (
        ("msg", ctypes.c_char * 128),
        ("status", _Status),
        ("notify", _Notify),
        ("instmsg", _InstMsg),
        ("procmsg", _ProcMsg),
        ("aeskeymsg", _AesKeyMsg),
        ("versions", _Versions),
        ("revisions", _Revisions),
    )


class _IpcMessage(ctypes.Structure):
    _fields_ = (("magic", ctypes.c_int), ("type", ctypes.c_int), ("data", _MsgData))


class _ProgressMsg(ctypes.Structure):
    _fields_ = (
        ("magic", ctypes.c_uint),
        ("status", ctypes.c_int),
        ("dwl_percent", ctypes.c_uint),
        ("dwl_bytes", ctypes.c_ulonglong),
        ("nsteps", ctypes.c_uint),
        ("cur_step", ctypes.c_uint),
        ("cur_percent", ctypes.c_uint),
        ("cur_image", ctypes.c_char * 256),
        ("hnd_name", ctypes.c_char * 64),
        ("source", ctypes.c_int),
        ("infolen", ctypes.c_uint),
        ("info", ctypes.c_char * 2048),
    )


#: Seconds between two GET_STATUS polls while nothing new is queued.
STATUS_POLL_INTERVAL = 0.2

IPC_MESSAGE_SIZE = ctypes.sizeof(_IpcMessage)
PROGRESS_MESSAGE_SIZE = ctypes.sizeof(_ProgressMsg)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()


def default_socket_dir() -> Path:
    """Where SWUpdate 2022.12 puts its sockets unless built otherwise: ``$TMPDIR`` or /tmp."""
    return Path(os.environ.get("TMPDIR") or "/tmp")


class SwupdateWriter(FwupWriter):
    """Streams the image into a running SWUpdate daemon (``swupdate -k ca.pem ...``).

    * ``socket_dir``: the directory holding the daemon's ``sockinstctrl`` and ``swupdateprog``
      sockets (the daemon's ``$TMPDIR``, default ``$TMPDIR`` or ``/tmp``); ``ctrl_socket`` /
      ``progress_socket`` name them one by one instead.
    * ``selection``: ``"collection,mode"`` (SWUpdate's ``-e``), e.g. ``"stable,copy2"`` to
      install the set for slot B. The daemon must accept it (``-q stable,copy2``) or it refuses
      the request.
    * ``dry_run``: ask SWUpdate to verify and parse without installing.
    * ``progress``: called with SWUpdate's progress (0–100, rising) on the event loop.
    * ``confirm_command``: argv run by :meth:`fwup_confirm` (e.g. ``["fw_setenv", "ustate",
      "0"]``); SWUpdate itself has no "mark good" for the running system.

    A rejected image (bad signature, wrong hardware, bad hash) ends the update with SWUpdate's
    own error messages as the reason. SWUpdate closes its input early then; that is handled.
    """

    supports_resume = False
    streams_install = True  # the image goes into the inactive slot as it downloads

    def __init__(
        self,
        *,
        socket_dir: str | os.PathLike[str] | None = None,
        ctrl_socket: str | os.PathLike[str] | None = None,
        progress_socket: str | os.PathLike[str] | None = None,
        selection: str | None = None,
        dry_run: bool = False,
        info: str = "",
        confirm_command: Sequence[str] | None = None,
        finish_timeout: float = 3600.0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        base = Path(socket_dir) if socket_dir is not None else default_socket_dir()
        self.ctrl_socket = Path(ctrl_socket) if ctrl_socket is not None else base / "sockinstctrl"
        self.progress_socket = (
            Path(progress_socket) if progress_socket is not None else base / "swupdateprog"
        )
        if selection is not None:
            software_set, sep, mode = selection.partition(",")
            if not sep or not software_set or not mode:
                raise ValueError(f"selection must be 'collection,mode', not {selection!r}")
        self.selection = selection
        self.dry_run = dry_run
        self.info = info
        self.confirm_command = list(confirm_command) if confirm_command else None
        self.finish_timeout = finish_timeout
        self.progress = progress
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._poller: asyncio.Task[int] | None = None
        self._progress_task: asyncio.Task[None] | None = None
        self._messages: list[tuple[int, str]] = []
        self._best = -1
        #: SWUpdate's messages of the last update (status code, text), for diagnostics.
        self.last_messages: list[tuple[int, str]] = []

    def set_progress_reporter(self, progress: Callable[[int], None] | None) -> None:
        """Set (or clear) the install progress callback; see ``progress``."""
        self.progress = progress

    # -- IPC -----------------------------------------------------------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.ctrl_socket))
        except OSError as exc:
            raise WriterError(
                f"cannot reach the SWUpdate daemon at {self.ctrl_socket}: {exc}"
            ) from exc

    async def _exchange(
        self, msg: _IpcMessage
    ) -> tuple[_IpcMessage, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._connect()
        try:
            writer.write(bytes(msg))
            await writer.drain()
            raw = await asyncio.wait_for(reader.readexactly(IPC_MESSAGE_SIZE), 30)
        except asyncio.IncompleteReadError:
            writer.close()
            raise WriterError(
                "the SWUpdate daemon closed the IPC connection without an answer: it does not "
                "speak SWUpdate 2022.12's IPC layout (use CommandWriter(['swupdate-client', "
                "'-']) for other versions)"
            ) from None
        except BaseException:
            writer.close()
            raise
        reply = _IpcMessage.from_buffer_copy(raw)
        if reply.magic != IPC_MAGIC:
            writer.close()
            raise WriterError(f"unexpected SWUpdate IPC reply (magic {reply.magic:#x})")
        return reply, reader, writer

    async def _get_status(self) -> _Status:
        msg = _IpcMessage(magic=IPC_MAGIC, type=GET_STATUS)
        reply, _, writer = await self._exchange(msg)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        status: _Status = reply.data.status
        return status

    async def _poll_until_idle(self, *, started: bool = False) -> int:
        """Collect SWUpdate's messages until the daemon is idle again; its last result."""
        while True:
            status = await self._get_status()
            desc = _text(status.desc)
            if desc:
                self._messages.append((status.current, desc))
                log = logger.warning if status.current == FAILURE else logger.debug
                log("SWUpdate: %s", desc)
            if status.current != IDLE:
                started = True
            elif started:
                return int(status.last_result)
            if not desc:
                await asyncio.sleep(STATUS_POLL_INTERVAL)

    def _reason(self) -> str:
        errors: list[str] = []
        for code, text in self._messages:
            if code == FAILURE and text not in errors:
                errors.append(text)
        if not errors:
            errors = [text for _, text in self._messages[-3:]]
        return "; ".join(errors)[-800:] if errors else "no message from SWUpdate"

    async def _read_progress(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.progress_socket))
        except OSError as exc:
            logger.info("no SWUpdate progress at %s: %s", self.progress_socket, exc)
            return
        try:
            while True:
                raw = await reader.readexactly(PROGRESS_MESSAGE_SIZE)
                msg = _ProgressMsg.from_buffer_copy(raw)
                if msg.status not in (RUN, PROGRESS, SUCCESS) or not msg.nsteps:
                    continue
                step = max(1, min(msg.cur_step, msg.nsteps))
                percent = ((step - 1) * 100 + min(msg.cur_percent, 100)) // msg.nsteps
                if msg.status == SUCCESS:
                    percent = 100
                self._report(percent)
        except (asyncio.IncompleteReadError, OSError):
            return
        finally:
            writer.close()

    def _report(self, percent: int) -> None:
        if percent > self._best:
            self._best = percent
            if self.progress is not None:
                try:
                    self.progress(percent)
                except Exception:
                    logger.exception("progress callback failed")

    # -- FwupWriter ----------------------------------------------------------------------------

    async def fwup_begin(
        self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0
    ) -> None:
        if offset:
            raise WriterError("SwupdateWriter cannot resume at an offset")
        await self._close()
        self._messages = []
        self._best = -1
        req = _Request(
            apiversion=SWUPDATE_API_VERSION,
            source=SOURCE_UNKNOWN,
            dry_run=RUN_DRYRUN if self.dry_run else RUN_DEFAULT,
        )
        info = self.info.encode()[:511]
        req.info = info
        req.len = len(info)
        if self.selection is not None:
            software_set, _, mode = self.selection.partition(",")
            req.software_set = software_set.encode()[:255]
            req.running_mode = mode.encode()[:255]
        msg = _IpcMessage(magic=IPC_MAGIC, type=REQ_INSTALL)
        msg.data.instmsg.req = req
        self._progress_task = asyncio.create_task(self._read_progress())
        await asyncio.sleep(0)  # let the progress subscription connect before the install starts
        try:
            reply, reader, writer = await self._exchange(msg)
        except BaseException:
            await self._close()
            raise
        if reply.type != ACK:
            writer.close()
            await self._close()
            detail = _text(reply.data.msg) or (
                f"selection {self.selection!r} not accepted (start swupdate with "
                f"-q {self.selection})"
                if self.selection
                else "request refused"
            )
            raise WriterError(f"SWUpdate refused the update: {detail}")
        self._reader, self._writer = reader, writer
        self._poller = asyncio.create_task(self._poll_until_idle())
        logger.info("SWUpdate accepted the install request; streaming the image")

    async def fwup_chunk(self, data: bytes | memoryview) -> None:
        writer = self._writer
        if writer is None:
            raise WriterError("fwup_chunk before fwup_begin")
        if self._poller is not None and self._poller.done():
            # SWUpdate finished while bytes were still coming: it rejected the image.
            raise await self._failed()
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise await self._failed() from None

    async def _failed(self) -> WriterError:
        """SWUpdate stopped reading: wait for its verdict and turn its messages into an error."""
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None
        try:
            result = await self._wait_result(60.0)
        except WriterError as exc:
            return exc
        if result == SUCCESS:
            return WriterError("SWUpdate finished before the whole image was sent")
        return WriterError(f"SWUpdate rejected the image: {self._reason()}")

    async def _wait_result(self, timeout: float) -> int:
        poller = self._poller
        if poller is None:
            raise WriterError("no SWUpdate install in progress")
        try:
            return await asyncio.wait_for(asyncio.shield(poller), timeout)
        except TimeoutError:
            raise WriterError(f"SWUpdate did not finish within {timeout} s") from None
        except WriterError:
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise WriterError(f"lost the SWUpdate IPC connection: {exc}") from exc
        finally:
            self.last_messages = list(self._messages)

    async def fwup_finish(self) -> None:
        writer = self._writer
        if writer is None:
            raise WriterError("fwup_finish before fwup_begin")
        try:
            if self._poller is not None and self._poller.done():
                raise await self._failed()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await writer.drain()
            writer.close()  # end of image: SWUpdate finishes the install
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writer = None
            result = await self._wait_result(self.finish_timeout)
            if result != SUCCESS:
                raise WriterError(f"SWUpdate failed: {self._reason()}")
            self._report(100)
        finally:
            await self._close()
        logger.info("SWUpdate installed the image")

    async def fwup_abort(self) -> None:
        had_install = self._poller is not None
        if self._writer is not None:
            self._writer.transport.abort()  # a cut stream makes SWUpdate fail the install
            self._writer = None
        if had_install:
            # Wait until the daemon is idle again, so the next attempt is not refused.
            with contextlib.suppress(Exception):
                await self._wait_result(60.0)
        await self._close()

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None
        self._reader = None
        for task in (self._poller, self._progress_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._poller = None
        self._progress_task = None

    async def fwup_confirm(self) -> None:
        if self.confirm_command is None:
            logger.info("SwupdateWriter: no confirm_command configured; nothing to mark")
            return
        result = await _proc.run(self.confirm_command, timeout=60.0)
        if not result.ok:
            raise WriterError(f"confirm command failed: {result.describe()}")
