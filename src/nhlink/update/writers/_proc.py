"""Subprocess helpers shared by the writers that drive external updaters (RAUC, SWUpdate).

Private: the API may change with the writers. Everything here runs commands without a shell,
keeps only the tail of their output (a misbehaving tool cannot fill memory) and always reaps
what it started, also when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from ...errors import WriterError

logger = logging.getLogger(__name__)

#: Bytes of a command's output kept for error messages.
OUTPUT_TAIL = 4096


def merged_env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """The current environment plus ``extra`` (None if there is nothing to add)."""
    if not extra:
        return None
    return {**os.environ, **extra}


def tail_text(data: bytes | bytearray, limit: int = 500) -> str:
    """The last ``limit`` characters of a command's output, decoded and stripped."""
    text = bytes(data).decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no output)"


@dataclass(frozen=True)
class Result:
    """A finished command: exit status and the tails of its stdout and stderr."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """``"<argv0> ... (exit status N): <stderr tail or stdout tail>"`` for error messages."""
        out = self.stderr.strip() or self.stdout.strip()
        return f"{self.argv[0]} exited with status {self.returncode}: {tail_text(out)}"


async def _pump(
    stream: asyncio.StreamReader,
    keep: bytearray,
    on_line: Callable[[str], Awaitable[None] | None] | None,
) -> None:
    while True:
        line = await stream.readline()
        if not line:
            return
        keep += line
        del keep[:-OUTPUT_TAIL]
        if on_line is not None:
            result = on_line(line.decode("utf-8", "replace").rstrip("\r\n"))
            if result is not None:
                await result


async def kill_and_reap(
    proc: asyncio.subprocess.Process, grace: float = 5.0, *, group: bool = False
) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``grace`` seconds) and wait for it.

    ``group``: ``proc`` leads its own process group (``start_new_session=True``): signal the
    whole group, so a pipeline or a helper it started cannot carry on (and, say, act on the
    end of its input once nhlink's pipe closes)."""

    def signal_it(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.returncode is None:
        signal_it(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            signal_it(signal.SIGKILL)
    if group:
        signal_it(signal.SIGKILL)  # whatever of the group outlived its leader
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), grace)


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
    on_stdout_line: Callable[[str], Awaitable[None] | None] | None = None,
    on_stderr_line: Callable[[str], Awaitable[None] | None] | None = None,
) -> Result:
    """Run ``argv`` to completion (stdin from /dev/null) and return its :class:`Result`.

    ``on_*_line`` see every output line as it arrives (progress parsing). A command that cannot
    be started, or outlives ``timeout`` (it is killed), raises :class:`WriterError`;
    cancellation kills it too.
    """
    argv = list(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=merged_env(env),
        )
    except OSError as exc:
        raise WriterError(f"cannot start {argv[0]}: {exc}") from exc
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None and proc.stderr is not None
    pumps = asyncio.gather(
        _pump(proc.stdout, out, on_stdout_line), _pump(proc.stderr, err, on_stderr_line)
    )
    try:
        await asyncio.wait_for(asyncio.shield(pumps), timeout)
        code = await proc.wait()
    except TimeoutError:
        await kill_and_reap(proc)
        raise WriterError(f"{argv[0]} did not finish within {timeout} s") from None
    except BaseException:
        await kill_and_reap(proc)
        raise
    finally:
        if not pumps.done():
            pumps.cancel()
        with contextlib.suppress(BaseException):
            await pumps
    logger.debug("%s exited with %d", argv, code)
    return Result(tuple(argv), code, bytes(out), bytes(err))


def run_sync(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 10.0
) -> Result:
    """Blocking :func:`run` for the few writer hooks nhlink calls synchronously (join metadata)."""
    argv = list(argv)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=merged_env(env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WriterError(f"{argv[0]} did not finish within {timeout} s") from None
    except OSError as exc:
        raise WriterError(f"cannot start {argv[0]}: {exc}") from exc
    return Result(
        tuple(argv), done.returncode, done.stdout[-OUTPUT_TAIL:], done.stderr[-OUTPUT_TAIL:]
    )
