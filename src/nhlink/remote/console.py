"""The ``console`` channel (PROTOCOL.md §9): the web UI's console tab and file transfer.

Joined only when configured (``NervesHubLink(console=ConsoleOptions(...))``), right after the
device channel, with ``{"console_version": "2.0.0", "device_api_version": ...}``; re-joined 5 s
after the server closes or crashes it.

* ``dn`` {"data"} — typed into a shell on a PTY, started on the first input (there is no IEx
  on a gateway); its output goes back as ``up`` {"data"}. ``window_size`` {"height",
  "width"} sizes the PTY. When the shell exits the console says so and the next input starts a
  new one; after ``idle_timeout`` without traffic the shell is ended with a notice.
* Uploads (``file-data/start``, ``file-data``, ``file-data/stop``; §9.4): only into
  ``upload_dir``, only when it is set. The name is the browser's, unchecked by the server: it
  must be a plain file name (no separators, no ``..``, no NUL, no leading dot, at most 255
  bytes). Pieces are base64 (checked strictly) appended in arrival order (``chunk`` is not an
  ordering key) to a temporary file in ``upload_dir``, renamed into place by ``stop`` — never
  over an existing file unless ``overwrite``; a file over ``max_upload`` bytes, bad base64 or
  a lost connection discards it. Each upload is logged with the uploading user's id.
* :meth:`Console.send_file` — a file to every open console tab (``file-data/*`` from the
  device), one at a time, at most ``max_download`` bytes.

The device sends nothing but ``up`` and ``file-data/*`` here: any other event crashes the
server's console channel (§9.3).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, NHLinkError
from ..protocol.channel import ChannelClosed, Joined, JoinRefused, Push
from .pty import PtyShell, ShellOptions
from .sessions import SessionLimit, log_session_end, log_session_start

if TYPE_CHECKING:
    from ..link import NervesHubLink

__all__ = ["Console", "ConsoleOptions", "safe_upload_name"]

logger = logging.getLogger(__name__)

TOPIC: Final = "console"
CONSOLE_VERSION: Final = "2.0.0"
REJOIN_DELAY: Final = 5.0
PIECE: Final = 1024  # bytes per file-data piece (what the browser and NHL use)


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """The console channel: its shell, and where uploads may go (None: uploads refused)."""

    shell: ShellOptions = field(default_factory=lambda: ShellOptions(idle_timeout=300.0))
    upload_dir: Path | str | None = None
    max_upload: int = 100 * 1024 * 1024
    overwrite: bool = False
    max_download: int = 10 * 1024 * 1024
    rejoin_delay: float = REJOIN_DELAY

    def __post_init__(self) -> None:
        if self.max_upload < 1 or self.max_download < 1:
            raise ConfigError("console", "max_upload and max_download must be positive")
        if not self.rejoin_delay > 0:
            raise ConfigError("console.rejoin_delay", "must be > 0 seconds")
        if self.upload_dir is not None and not Path(self.upload_dir).is_dir():
            raise ConfigError("console.upload_dir", f"no such directory: {self.upload_dir}")


def safe_upload_name(name: object) -> str | None:
    """``name`` if it is a plain file name safe to create in the upload directory, else None."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return None
    if "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        return None
    if len(name.encode("utf-8", "surrogatepass")) > 255 or name != name.strip():
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


@dataclass(eq=False)
class _Upload:
    name: str
    user: Any
    fd: int
    temp: str
    size: int = 0
    started: float = field(default_factory=time.monotonic)


class Console:
    """The console channel of one link (``link.remote.console``)."""

    def __init__(self, link: NervesHubLink, options: ConsoleOptions) -> None:
        self.link = link
        self.options = options
        self._shell: PtyShell | None = None
        self._size = (24, 80)
        self._uploads: dict[str, _Upload] = {}
        self._rejoin: asyncio.TimerHandle | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self.joined = False
        link.on_topic(TOPIC, self._on_push, self._on_closed, joined=self._on_joined,
                      join_refused=self._on_refused)  # fmt: skip

    # -- channel --------------------------------------------------------------------------------

    async def join(self) -> None:
        """Join ``console`` (after the device join)."""
        from ..protocol import wire

        with contextlib.suppress(NHLinkError):
            await self.link.join(
                TOPIC,
                {"console_version": CONSOLE_VERSION, "device_api_version": wire.DEVICE_API_VERSION},
            )

    async def _on_joined(self, event: Joined) -> None:
        self.joined = True
        logger.info("%s: console joined", self.link.name)

    async def _on_refused(self, event: JoinRefused) -> None:
        logger.warning("%s: console join refused: %r", self.link.name, event.response)
        self._schedule_rejoin()

    async def _on_closed(self, event: ChannelClosed) -> None:
        self.joined = False
        self._discard_uploads("console channel closed")
        self._schedule_rejoin()

    def _schedule_rejoin(self) -> None:
        if self._rejoin is None:
            loop = asyncio.get_running_loop()
            self._rejoin = loop.call_later(self.options.rejoin_delay, self._rejoin_now)

    def _rejoin_now(self) -> None:
        self._rejoin = None
        from ..link import LinkState

        if self.link.status.state is LinkState.JOINED:
            self._spawn(self.join())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = None
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def connection_lost(self) -> None:
        self.joined = False
        if self._rejoin is not None:
            self._rejoin.cancel()
            self._rejoin = None
        self._discard_uploads("connection lost")
        await self._end_shell("connection lost")

    async def stop(self) -> None:
        await self.connection_lost()
        for task in list(self._tasks):
            task.cancel()

    async def _up(self, text: str) -> bool:
        try:
            await self.link.send(TOPIC, "up", {"data": text})
        except NHLinkError:
            return False
        return True

    # -- server pushes --------------------------------------------------------------------------

    async def _on_push(self, push: Push) -> None:
        payload = push.payload if isinstance(push.payload, dict) else {}
        event = push.event
        if event == "dn":
            data = payload.get("data")
            if isinstance(data, str):
                await self._input(data)
        elif event == "window_size":
            rows, cols = payload.get("height"), payload.get("width")
            if isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0:
                self._size = (rows, cols)
                if self._shell is not None:
                    self._shell.resize(rows, cols)
        elif event == "file-data/start":
            await self._upload_start(payload)
        elif event == "file-data":
            await self._upload_piece(payload)
        elif event == "file-data/stop":
            await self._upload_stop(payload)
        else:
            logger.debug("%s: console event %r ignored", self.link.name, event)

    # -- the shell ------------------------------------------------------------------------------

    async def _input(self, data: str) -> None:
        shell = self._shell
        if shell is None or not shell.running:
            shell = await self._start_shell()
            if shell is None:
                return
        shell.write(data)

    async def _start_shell(self) -> PtyShell | None:
        options = self.options.shell
        shell = PtyShell(
            options,
            self._up,
            self._exited,
            rows=self._size[0],
            cols=self._size[1],
            on_idle=self._idle_notice,
        )
        reason = await SessionLimit.of(self.link, options.max_sessions).start(self, shell)
        if reason is not None:
            await self._up(f"\r\n*** shell not started: {reason} ***\r\n")
            return None
        self._shell = shell
        log_session_start(self.link.name, "console", shell, "a console user")
        return shell

    async def _exited(self, status: int) -> None:
        shell = self._shell
        if shell is not None:
            self._forget(shell, "exited")
            await self._up(f"\r\n*** shell exited with status {status} ***\r\n")

    def _forget(self, shell: PtyShell, why: str) -> None:
        if self._shell is shell:
            self._shell = None
            SessionLimit.of(self.link, self.options.shell.max_sessions).release(self)
            log_session_end(self.link.name, "console", shell, why)

    async def _end_shell(self, why: str) -> None:
        shell = self._shell
        if shell is not None:
            self._forget(shell, why)
            await shell.terminate()

    async def _idle_notice(self) -> None:
        await self._up("\r\n*** Session timeout: shell ended; type to start a new one ***\r\n")

    # -- uploads --------------------------------------------------------------------------------

    async def _refuse(self, name: Any, why: str) -> None:
        logger.warning("%s: console upload %r refused: %s", self.link.name, name, why)
        await self._up(f"\r\n*** upload of {str(name)[:100]!r} refused: {why} ***\r\n")

    async def _upload_start(self, payload: dict[str, Any]) -> None:
        raw_name, user = payload.get("filename"), payload.get("uploaded_by")
        if self.options.upload_dir is None:
            await self._refuse(raw_name, "uploads are not enabled on this device")
            return
        name = safe_upload_name(raw_name)
        if name is None:
            await self._refuse(raw_name, "not a plain file name")
            return
        if name in self._uploads:
            self._discard(self._uploads.pop(name), "restarted")
        directory = Path(self.options.upload_dir)
        if not self.options.overwrite and (directory / name).exists():
            await self._refuse(name, "a file with that name exists")
            return
        import tempfile

        fd, temp = tempfile.mkstemp(prefix=".nhlink-upload-", suffix=".part", dir=directory)
        self._uploads[name] = _Upload(name, user, fd, temp)
        logger.info("%s: console upload of %r started by user %r", self.link.name, name, user)

    async def _upload_piece(self, payload: dict[str, Any]) -> None:
        upload = self._uploads.get(payload.get("filename"))  # type: ignore[arg-type]
        if upload is None:
            return
        data = payload.get("data")
        try:
            if not isinstance(data, str):
                raise ValueError("data is not a string")
            piece = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error) as exc:
            self._discard(self._uploads.pop(upload.name), f"bad base64: {exc}")
            await self._refuse(upload.name, "a piece is not valid base64")
            return
        if upload.size + len(piece) > self.options.max_upload:
            self._discard(self._uploads.pop(upload.name), "too large")
            await self._refuse(upload.name, f"larger than {self.options.max_upload} bytes")
            return
        try:
            os.write(upload.fd, piece)  # a regular file: written whole
        except OSError as exc:
            self._discard(self._uploads.pop(upload.name), str(exc))
            await self._refuse(upload.name, f"cannot write: {exc.strerror}")
            return
        upload.size += len(piece)

    async def _upload_stop(self, payload: dict[str, Any]) -> None:
        upload = self._uploads.pop(payload.get("filename"), None)  # type: ignore[arg-type]
        if upload is None:
            return
        assert self.options.upload_dir is not None
        final = Path(self.options.upload_dir) / upload.name
        try:
            os.fsync(upload.fd)
            os.close(upload.fd)
            upload.fd = -1
            if self.options.overwrite:
                os.replace(upload.temp, final)
            else:
                os.link(upload.temp, final)  # fails if the name was taken meanwhile
                os.unlink(upload.temp)
        except OSError as exc:
            self._discard(upload, str(exc))
            await self._refuse(upload.name, f"cannot store it: {exc.strerror}")
            return
        logger.info(
            "%s: console upload of %r by user %r complete: %d bytes in %.1f s",
            self.link.name,
            upload.name,
            upload.user,
            upload.size,
            time.monotonic() - upload.started,
        )

    def _discard(self, upload: _Upload, why: str) -> None:
        if upload.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(upload.fd)
            upload.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(upload.temp)
        logger.warning("%s: console upload of %r discarded: %s", self.link.name, upload.name, why)

    def _discard_uploads(self, why: str) -> None:
        for upload in self._uploads.values():
            self._discard(upload, why)
        self._uploads.clear()

    # -- downloads ------------------------------------------------------------------------------

    async def send_file(self, path: Path | str) -> None:
        """Send ``path`` to every open console tab (§9.4); one transfer at a time. Raises
        ValueError (too large), OSError (unreadable) or ConnectionClosed (not connected)."""
        path = Path(path)
        size = path.stat().st_size
        if size > self.options.max_download:
            raise ValueError(f"{path} is larger than {self.options.max_download} bytes")
        name = path.name
        async with self._send_lock:
            fd = os.open(path, os.O_RDONLY)
            try:
                await self.link.send(TOPIC, "file-data/start", {"filename": name})
                chunk = 0
                while piece := os.read(fd, PIECE):
                    data = base64.b64encode(piece).decode("ascii")
                    await self.link.send(
                        TOPIC, "file-data", {"filename": name, "chunk": chunk, "data": data}
                    )
                    chunk += 1
                await self.link.send(TOPIC, "file-data/stop", {"filename": name})
            finally:
                os.close(fd)
        logger.info("%s: sent %s (%d bytes) to the console", self.link.name, name, size)
