"""CommandWriter: stream the image into a command's stdin (fwup, rauc, swupdate, dd...)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import WriterError
from ..writer import FwupWriter
from . import _proc

__all__ = ["CommandWriter"]

logger = logging.getLogger(__name__)


class CommandWriter(FwupWriter):
    """Pipes the image into ``argv``'s standard input, e.g.
    ``["fwup", "-a", "-d", "/dev/mmcblk0", "-t", "upgrade"]`` or ``["swupdate", "-i", "-"]``.

    ``fwup_finish`` closes stdin and waits for the command; a non-zero exit (or a command that
    stopped reading early) fails the update with the exit status and the tail of its stderr.
    ``fwup_abort`` kills it — its whole process group, before its input is ever closed, so a
    command that acts on end-of-input never sees the end of an image that failed. The command
    runs without a shell, in a session of its own; ``{size}`` in an argument is replaced by
    the announced image size. ``env`` is added to nhlink's environment (not a replacement).

    The input never holds an image that failed verification: nhlink holds back the last bytes
    (or, with part checksums, each part) until they are verified (see :class:`FwupWriter`).

    Nothing is buffered here beyond the pipe: a slow command slows the download (backpressure).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        finish_timeout: float = 3600.0,
        public_keys: bool | None = None,
    ) -> None:
        if not argv:
            raise ValueError("CommandWriter needs a command")
        self.argv = list(argv)
        #: pass the firmware signing keys as ``--public-key KEY`` (fwup's option, one per
        #: Ed25519 key, as nerves_hub_link does); None: only when the command is fwup
        self.wants_public_keys = (
            os.path.basename(self.argv[0]) == "fwup" if public_keys is None else public_keys
        )
        self.public_keys: list[str] = []
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.finish_timeout = finish_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None

    async def fwup_begin(
        self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0
    ) -> None:
        if offset:  # never asked: supports_resume is False
            raise WriterError("CommandWriter cannot resume at an offset")
        argv = [a.replace("{size}", str(size)) for a in self.argv]
        if self.wants_public_keys:
            if not self.public_keys:
                logger.warning("%s: no firmware signing keys held: signatures unchecked", argv[0])
            for key in self.public_keys:
                argv += ["--public-key", key]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=_proc.merged_env(self.env),
                start_new_session=True,
            )
        except OSError as exc:
            raise WriterError(f"cannot start {argv[0]}: {exc}") from exc
        self._stderr.clear()
        self._stderr_task = asyncio.create_task(self._collect_stderr(self._proc))

    def set_public_keys(self, keys: Sequence[str]) -> None:
        """Keep the Ed25519 keys (fwup's form); PEM keys are not fwup's."""
        from ...remote.keys import ed25519_keys

        self.public_keys = ed25519_keys(keys)

    async def _collect_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            self._stderr += chunk
            del self._stderr[: -_proc.OUTPUT_TAIL]

    def _tail(self) -> str:
        return _proc.tail_text(self._stderr)

    async def _failed(self, what: str) -> WriterError:
        proc = self._proc
        assert proc is not None
        code: int | None
        try:
            code = await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            await _proc.kill_and_reap(proc, group=True)
            code = proc.returncode
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 5)
        return WriterError(f"{self.argv[0]} {what} (exit status {code}): {self._tail()}")

    async def fwup_chunk(self, data: bytes | memoryview) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise WriterError("fwup_chunk before fwup_begin")
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise await self._failed("stopped reading the image") from None

    async def fwup_finish(self) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise WriterError("fwup_finish before fwup_begin")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
            await proc.stdin.wait_closed()
        try:
            code = await asyncio.wait_for(proc.wait(), self.finish_timeout)
        except TimeoutError:
            await _proc.kill_and_reap(proc, group=True)
            raise WriterError(
                f"{self.argv[0]} did not finish within {self.finish_timeout} s"
            ) from None
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 5)
        self._proc = None
        if code != 0:
            raise WriterError(f"{self.argv[0]} failed (exit status {code}): {self._tail()}")
        logger.info("%s accepted the image", self.argv[0])

    async def fwup_abort(self) -> None:
        proc = self._proc
        self._proc = None
        if proc is None:
            return
        await _proc.kill_and_reap(proc, group=True)  # before its stdin is closed: no EOF
        if self._stderr_task is not None:
            self._stderr_task.cancel()
