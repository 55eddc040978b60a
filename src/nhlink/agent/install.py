"""``nhlink install FILE|URL --sha256 HEX``: a local install through the agent's writer and the
library's verification gate (what ``mender-update install`` does).

The bytes go through the same :class:`~nhlink._core.StreamingDigest` as an OTA update: with
``--sha256`` the writer never receives the last bytes of an image whose SHA-256 does not
match, and ``fwup_finish`` runs only for a matching one. The machine-wide update lock is held
from ``fwup_begin`` to the end, so an agent never writes the same slot meanwhile. URLs are
fetched with the OTA downloader (retries, resume with ``Range``, https only unless
``allow_http`` in ``[download]``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .. import _core
from ..errors import UpdateError
from ..update.download import DownloadOptions, download
from ..update.manager import PART_SIZE, call_writer
from ..update.writer import FwupWriter, as_writer
from .config import DeviceSpec
from .lock import UpdateLock
from .runner import LockedWriter

__all__ = ["Progress", "install"]

READ_SIZE = 256 * 1024


class Progress:
    """A progress bar on a terminal (redrawn in place), plain lines every 10 % otherwise."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.total: int | None = None
        self.done = 0
        self.stage = "writing"
        self._last_step = -1
        self._last_draw = 0.0
        self._started = time.monotonic()

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or (self.total and done >= self.total):
                self._last_draw = now
                self._draw()
        elif self.total:
            step = done * 10 // self.total
            if step > self._last_step:
                self._last_step = step
                print(
                    f"{self.stage}: {step * 10} % ({_mib(done)} of {_mib(self.total)})",
                    file=self.out,
                )

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = f"{self.done / elapsed / 2**20:.1f} MiB/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            amount = f"{_mib(self.done)} of {_mib(self.total)}"
            line = f"\r{self.stage} [{bar:<30}] {frac * 100:3.0f} %  {amount}  {rate}"
        else:
            line = f"\r{self.stage} {_mib(self.done)}  {rate}"
        self.out.write(line + "\x1b[K")
        self.out.flush()

    def clear(self) -> None:
        """End the bar's line (on a terminal) before something else is printed."""
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()

    def message(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
        print(text, file=self.out, flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class _Install:
    """The download sink (for URLs) and the write path (for both)."""

    def __init__(self, writer: FwupWriter, checksum: str | None, progress: Progress) -> None:
        self.writer = writer
        self.checksum = checksum
        self.progress = progress
        self.digest = self._digest()
        self.meta: dict[str, Any] = {}
        self.size = 0

    def _digest(self) -> Any:
        return _core.StreamingDigest(part_size=PART_SIZE, checksum=self.checksum)

    async def begin(self, size: int, meta: dict[str, Any]) -> None:
        self.size, self.meta = size, meta
        self.progress.total = size or None
        await call_writer("fwup_begin", self.writer.fwup_begin, size, meta)

    async def attempt(self, number: int, offset: int) -> None:
        if number:
            self.progress.message(f"retrying the download at byte {offset}")

    async def restart(self) -> None:
        await call_writer("fwup_abort", self.writer.fwup_abort)
        self.digest = self._digest()
        await self.begin(self.size, self.meta)

    def total_size(self, size: int) -> None:
        self.progress.total = size

    async def data(self, chunk: bytes) -> None:
        for block in self.digest.feed(chunk):
            await call_writer("fwup_chunk", self.writer.fwup_chunk, block)
        self.progress.update(self.digest.total)

    async def finish(self) -> None:
        for block in self.digest.flush():  # raises ChecksumMismatch: the held bytes are dropped
            await call_writer("fwup_chunk", self.writer.fwup_chunk, block)
        self.progress.update(self.digest.total)
        self.progress.message(
            f"verified {_mib(self.digest.total)}"
            + (
                f", SHA-256 {self.checksum.lower()}"
                if self.checksum
                else " (not verified: no --sha256)"
            )
        )
        self.progress.stage = "installing"
        self.progress.total = 100
        loop = asyncio.get_running_loop()

        def installing(percent: int) -> None:
            loop.call_soon_threadsafe(self.progress.update, percent)

        self.writer.set_progress_reporter(installing)
        try:
            await call_writer("fwup_finish", self.writer.fwup_finish)
        finally:
            self.writer.set_progress_reporter(None)


async def install(
    spec: DeviceSpec,
    lock_file: Path,
    source: str,
    checksum: str | None,
    *,
    progress: Progress,
    options: DownloadOptions | None = None,
) -> None:
    """Install ``source`` (a path or an http(s) URL) with ``spec``'s writer. Raises
    :class:`~nhlink.errors.UpdateError` (a :class:`~nhlink.errors.ChecksumMismatch`, a
    writer or download error); the writer is aborted first."""
    if spec.writer is None:
        raise UpdateError(f"device {spec.name} has no [writer] configured")
    writer = LockedWriter(as_writer(spec.writer.build()), UpdateLock(lock_file, "nhlink install"))
    job = _Install(writer, checksum, progress)
    is_url = source.startswith(("http://", "https://"))
    size = 0 if is_url else os.stat(source).st_size
    meta = {"uuid": (checksum or "").lower(), "source": source, "version": "local install"}
    await job.begin(size, meta)
    try:
        if is_url:
            ca = spec.link_options.get("firmware_ca_file")
            await download(
                source,
                sink=job,
                offset=0,
                expected_size=None,
                options=options or spec.download_options(),  # the device's proxy included
                ssl=ssl.create_default_context(cafile=str(ca)) if ca else None,
            )
        else:
            with open(source, "rb") as f:  # noqa: ASYNC230 - local reads, chunk by chunk
                while chunk := f.read(READ_SIZE):
                    await job.data(chunk)
        await job.finish()
    except BaseException:
        await asyncio.shield(call_writer("fwup_abort", writer.fwup_abort))
        raise
    progress.message("installed")
