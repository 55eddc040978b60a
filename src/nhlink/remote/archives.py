"""Archives (PROTOCOL.md §6.7): application data attached to a release, offered with
``archive`` after every join (and when the release changes). Nothing is reported back.

Off unless configured (``NervesHubLink(archives=ArchiveOptions(directory=...))``). Then, for an
archive not seen before (de-duplicated by ``uuid``, kept across restarts):

1. ``Client.archive_available(info)`` decides, if the client defines it: ``"download"``,
   ``"ignore"`` or ``("reschedule", ms)``; without it, configured archives are downloaded;
2. the file is fetched at once (a storage URL expires after an hour) through the firmware
   download path (retries, https only unless allowed, the storage host verified, no
   credentials) into ``<directory>/<uuid>.fw.download``;
3. no checksum is sent: integrity comes from the archive's signature. ``verify`` (default
   ``fwup -V -i {path}``, plus ``--public-key KEY`` per archive key — or the firmware keys when
   no archive key is held, as NHL does) must accept it; without a key the archive is refused.
   ``verify=None`` skips the check (say so explicitly; the file is then unverified);
4. renamed to ``<directory>/<uuid>.fw``; ``Client.archive_ready(info, path)`` is called; the
   oldest archives beyond ``keep`` are deleted.

A download that fails (an expired URL included) is not remembered: the next offer — the
server re-sends it with a fresh URL on the next join — tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..callbacks import call_callback
from ..errors import ConfigError, NHLinkError

if TYPE_CHECKING:
    from ..link import NervesHubLink
    from ..update.options import DownloadOptions

__all__ = ["ArchiveInfo", "ArchiveOptions", "Archives"]

logger = logging.getLogger(__name__)

_DONE_KEY: Final = "archives_done"
_DONE_MAX: Final = 32


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """An ``archive`` offer (§6.7)."""

    uuid: str
    url: str
    size: int | None
    version: str = ""
    description: str | None = None
    platform: str = ""
    architecture: str = ""
    uploaded_at: str = ""

    @classmethod
    def parse(cls, payload: Any) -> ArchiveInfo | None:
        if not isinstance(payload, dict):
            return None
        uuid, url, size = payload.get("uuid"), payload.get("url"), payload.get("size")
        if not isinstance(uuid, str) or not uuid or not isinstance(url, str) or not url:
            return None
        if "/" in uuid or uuid.startswith(".") or "\x00" in uuid or len(uuid) > 64:
            return None
        text = {k: payload.get(k) for k in ("version", "platform", "architecture", "uploaded_at")}
        description = payload.get("description")
        return cls(
            uuid=uuid,
            url=url,
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            description=description if isinstance(description, str) else None,
            **{k: v if isinstance(v, str) else "" for k, v in text.items()},
        )


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    """Where archives go and how they are checked (see the module doc)."""

    directory: Path | str
    verify: Sequence[str] | None = ("fwup", "-V", "-i", "{path}")
    keep: int = 3
    max_size: int = 1 << 30
    download: DownloadOptions | None = None
    verify_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not Path(self.directory).is_dir():
            raise ConfigError("archives.directory", f"no such directory: {self.directory}")
        if self.verify is not None and (
            isinstance(self.verify, str) or not self.verify or "{path}" not in self.verify
        ):
            raise ConfigError("archives.verify", "a list of arguments with a {path} argument")
        if self.keep < 1 or self.max_size < 1:
            raise ConfigError("archives", "keep and max_size must be positive")


class _FileSink:
    """Bytes into a file, restartable (a DownloadSink)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    async def attempt(self, number: int, offset: int) -> None:
        pass

    async def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    async def data(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ValueError(f"archive larger than {self.limit} bytes")
        await asyncio.to_thread(os.write, self.fd, chunk)

    def total_size(self, size: int) -> None:
        if size > self.limit:
            raise ValueError(f"archive of {size} bytes is larger than {self.limit}")

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class Archives:
    """``archive`` offers of one link (``link.remote.archives``)."""

    def __init__(self, link: NervesHubLink, options: ArchiveOptions) -> None:
        self.link = link
        self.options = options
        self._busy: set[str] = set()
        self._ignored: set[str] = set()
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def done(self) -> list[str]:
        """UUIDs of archives stored (most recent last; kept across restarts)."""
        value = self.link.store.state.extra.get(_DONE_KEY)
        return list(value) if isinstance(value, list) else []

    def path_for(self, uuid: str) -> Path:
        return Path(self.options.directory) / f"{uuid}.fw"

    def offered(self, payload: Any) -> None:
        info = ArchiveInfo.parse(payload)
        if info is None:
            logger.warning("%s: malformed archive offer ignored", self.link.name)
            return
        if info.uuid in self._busy or info.uuid in self._ignored or info.uuid in self.done:
            logger.debug("%s: archive %s already handled", self.link.name, info.uuid)
            return
        self._busy.add(info.uuid)
        self._spawn(self._handle(info))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = None
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def _handle(self, info: ArchiveInfo) -> None:
        try:
            decision = await self._decide(info)
            if decision == "ignore":
                self._ignored.add(info.uuid)
                logger.info("%s: archive %s ignored", self.link.name, info.uuid)
            elif isinstance(decision, float):
                logger.info("%s: archive %s: asked again in %g s", self.link.name, info.uuid,
                            decision)  # fmt: skip
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(decision, self._again, info))
                return  # still busy: a re-offer meanwhile is not a second download
            else:
                await self._fetch(info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("%s: archive %s not stored: %s", self.link.name, info.uuid, exc)
        self._busy.discard(info.uuid)

    def _again(self, info: ArchiveInfo) -> None:
        self._spawn(self._handle(info))

    async def _decide(self, info: ArchiveInfo) -> str | float:
        decide = getattr(self.link.client, "archive_available", None)
        if decide is None:
            return "download"
        answer = await call_callback(
            "archive_available", decide, info, timeout=self.link.config.callback_timeout
        )
        if answer in ("download", "apply"):
            return "download"
        if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "reschedule":
            ms = answer[1]
            if isinstance(ms, int | float) and not isinstance(ms, bool) and ms > 0:
                return max(0.05, float(ms) / 1000)
        if answer not in ("ignore", None):
            logger.warning("archive_available returned %r: ignoring the archive", answer)
        return "ignore"

    def _verify_keys(self) -> list[str]:
        keys = self.link.remote.keys
        return keys.keys("archive") or keys.keys("fwup")

    async def _fetch(self, info: ArchiveInfo) -> None:
        from ..update.download import download
        from ..update.options import DownloadOptions

        keys = self._verify_keys()
        if self.options.verify is not None and not keys:
            raise ConfigError("archives", "no archive or firmware signing key held: refused")
        final = self.path_for(info.uuid)
        partial = final.with_name(final.name + ".download")
        sink = _FileSink(partial, self.options.max_size)
        try:
            try:
                await download(
                    info.url,
                    sink=sink,
                    expected_size=info.size,
                    options=self.options.download or DownloadOptions(),
                    ssl=self.link.firmware_ssl_context,
                )
            finally:
                sink.close()
            if self.options.verify is not None:
                await self._verify(partial, keys)
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        done = [u for u in self.done if u != info.uuid] + [info.uuid]
        self.link.store.state.extra[_DONE_KEY] = done[-_DONE_MAX:]
        await self.link.store.asave()
        self._prune(done)
        logger.info("%s: archive %s stored: %s", self.link.name, info.uuid, final)
        ready = getattr(self.link.client, "archive_ready", None)
        if ready is not None:
            await call_callback(
                "archive_ready", ready, info, final, timeout=self.link.config.callback_timeout
            )

    async def _verify(self, path: Path, keys: list[str]) -> None:
        from .keys import ed25519_keys

        assert self.options.verify is not None
        argv = [a.replace("{path}", str(path)) for a in self.options.verify]
        for key in ed25519_keys(keys):
            argv += ["--public-key", key]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.options.verify_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NHLinkError(f"{argv[0]} did not verify the archive in time") from None
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-300:]
            raise NHLinkError(f"signature check failed ({argv[0]}: {tail})")

    def _prune(self, done: list[str]) -> None:
        for uuid in done[: -self.options.keep]:
            with contextlib.suppress(OSError):
                self.path_for(uuid).unlink()

    @property
    def busy(self) -> frozenset[str]:
        """UUIDs being decided, downloaded or checked (or waiting to be asked again)."""
        return frozenset(self._busy)

    async def wait_idle(self) -> None:
        """Return once no offer is being handled (a rescheduled one may still be waiting)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
