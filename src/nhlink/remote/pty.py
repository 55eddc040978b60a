"""A shell on a pseudo-terminal, driven from the event loop (PROTOCOL.md §8.6, §9).

:class:`PtyShell` is the machinery behind the local shell extension and the console channel:
it starts a command on a new PTY (its own session, the PTY as its controlling terminal), hands
its output to an ``async`` callback as text, takes input and window sizes, and reports the
exit status. It never buffers more than a bound:

* output is read only while the previous batch has been handed over: the callback awaits the
  WebSocket's write buffer, so a shell that prints 100 MiB to a slow server is held back by
  the kernel's PTY buffer (the shell blocks in ``write``), not by our memory;
* output is batched: after a read, up to ``batch_delay`` seconds for more, at most
  ``batch_size`` bytes per message, so a busy shell sends a few large messages, not many tiny
  ones, and heartbeats go out in between;
* the text is UTF-8 decoded incrementally: a multi-byte character split between two reads is
  held back until its end arrives (invalid bytes become U+FFFD: JSON strings must be valid);
* input waiting for the PTY is capped (``max_input``); beyond it input is dropped and logged.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import logging
import os
import pty
import signal
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["PtyShell", "ShellOptions", "exit_status"]

logger = logging.getLogger(__name__)

#: the environment a shell gets when ``inherit_env`` is off (plus ``env`` and TERM)
_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL")


@dataclass(frozen=True, slots=True)
class ShellOptions:
    """How a remote shell is started and bounded.

    ``command``: argv (default ``$SHELL -i``, else ``/bin/sh -i``). ``user``/``group``: run as
    this user/group (needs root). ``cwd``: working directory (default the user's home or
    ``/``). ``env``: variables added to the environment, which is the process's own
    (``inherit_env=True``) or only PATH, HOME, LANG, ... from it (the default, so that a
    secret in the agent's environment does not reach a remote user). ``term``: TERM.
    ``idle_timeout``: seconds without input or output after which the shell is ended (None:
    never). ``max_sessions``: shells at once per device. ``batch_delay``/``batch_size``:
    output batching; ``max_input``: bytes of input waiting for the PTY.
    """

    command: Sequence[str] = ()
    user: str | int | None = None
    group: str | int | None = None
    cwd: Path | str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: bool = False
    term: str = "xterm-256color"
    idle_timeout: float | None = 900.0
    max_sessions: int = 1
    batch_delay: float = 0.02
    batch_size: int = 16384
    max_input: int = 1 << 20

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise ConfigError("shell.command", "give a list of arguments, not one string")
        if any(not isinstance(a, str) or "\x00" in a for a in self.command):
            raise ConfigError("shell.command", "arguments must be strings without NUL")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ConfigError("shell.idle_timeout", "must be > 0 seconds or None")
        if self.max_sessions < 1:
            raise ConfigError("shell.max_sessions", "must be at least 1")
        if not 0 <= self.batch_delay <= 1:
            raise ConfigError("shell.batch_delay", "must be within [0, 1] seconds")
        if not 1024 <= self.batch_size <= 1 << 20:
            raise ConfigError("shell.batch_size", "must be within 1 KiB..1 MiB")
        if self.max_input < 4096:
            raise ConfigError("shell.max_input", "must be at least 4096 bytes")
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
                raise ConfigError("shell.env", f"bad variable {key!r}")

    def argv(self) -> list[str]:
        if self.command:
            return list(self.command)
        return [os.environ.get("SHELL") or "/bin/sh", "-i"]

    def environment(self) -> dict[str, str]:
        if self.inherit_env:
            env = dict(os.environ)
        else:
            env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
            env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(self.env)
        env["TERM"] = self.term
        return env


def exit_status(returncode: int) -> int:
    """A process's return code as a shell reports it: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    """One command on its own PTY. ``on_output(text)`` is awaited for every batch of output;
    ``on_exit(status)`` once the command has ended and its output has been handed over."""

    def __init__(
        self,
        options: ShellOptions,
        on_output: Callable[[str], Awaitable[Any]],
        on_exit: Callable[[int], Awaitable[Any]] | None = None,
        *,
        rows: int = 24,
        cols: int = 80,
        on_idle: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.options = options
        self._on_output = on_output
        self._on_exit = on_exit
        self._on_idle = on_idle  # awaited before an idle shell is ended (a notice)
        self._idle: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None
        self._size = (rows, cols)
        self._master = -1
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pending = bytearray()  # output read, not yet handed over
        self._readable: asyncio.Future[None] | None = None
        self._reading = False
        self._waiting_for_any = True  # _readable: any data (else: a full batch or EOF)
        self._eof = False
        self._input = bytearray()  # input not yet taken by the PTY
        self._writing = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.started_at = 0.0
        self.last_activity = 0.0
        self.bytes_out = 0
        self.bytes_in = 0
        self.returncode: int | None = None
        self.exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None

    async def start(self) -> None:
        """Start the command; raises OSError (e.g. no such program, user unknown)."""
        options = self.options
        master, slave = pty.openpty()
        try:
            self._set_size(master, *self._size)
            cwd = options.cwd
            if cwd is None:
                cwd = os.environ.get("HOME", "/") if options.user is None else "/"
            self._proc = await asyncio.create_subprocess_exec(
                *options.argv(),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=options.environment(),
                start_new_session=True,
                preexec_fn=_make_controlling_tty,
                user=options.user,
                group=options.group,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self.started_at = self.last_activity = time.monotonic()
        loop = asyncio.get_running_loop()
        self._resume_reading(loop)
        self._pump = loop.create_task(self._run(), name=f"nhlink:pty:{self._proc.pid}")
        self._arm_idle()

    def _arm_idle(self) -> None:
        """End the shell after ``idle_timeout`` s without input or output."""
        self._idle = None
        timeout = self.options.idle_timeout
        if timeout is None or self.returncode is not None or self._master < 0:
            return
        remaining = self.last_activity + timeout - time.monotonic()
        loop = asyncio.get_running_loop()
        if remaining > 0:
            self._idle = loop.call_later(remaining, self._arm_idle)
        else:
            self._ending = loop.create_task(self._idle_expired(timeout))

    async def _idle_expired(self, timeout: float) -> None:
        logger.info("shell %s: no input or output for %g s: ending it", self.pid, timeout)
        if self._on_idle is not None:
            with contextlib.suppress(Exception):
                await self._on_idle()
        await self.terminate()

    # -- input ------------------------------------------------------------------------------------

    def write(self, data: str | bytes) -> None:
        """Type ``data`` into the terminal. Dropped (and logged) beyond ``max_input`` waiting."""
        if not self.running or self._master < 0:
            return
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
        if len(self._input) + len(raw) > self.options.max_input:
            logger.warning("shell %s: input dropped, %d bytes already waiting", self.pid, len(raw))
            return
        self.bytes_in += len(raw)
        self.last_activity = time.monotonic()
        self._input += raw
        self._flush_input()

    def _flush_input(self) -> None:
        while self._input and self._master >= 0:
            try:
                n = os.write(self._master, self._input[:65536])
            except BlockingIOError:
                break
            except OSError as exc:
                logger.debug("shell %s: input lost: %s", self.pid, exc)
                self._input.clear()
                break
            del self._input[:n]
        loop = asyncio.get_running_loop()
        if self._input and not self._writing and self._master >= 0:
            loop.add_writer(self._master, self._flush_input)
            self._writing = True
        elif not self._input and self._writing:
            loop.remove_writer(self._master)
            self._writing = False

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's size (the shell gets SIGWINCH). Out-of-range sizes are ignored."""
        if not (0 < rows <= 10000 and 0 < cols <= 10000):
            return
        self._size = (rows, cols)
        if self._master >= 0:
            self._set_size(self._master, rows, cols)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @staticmethod
    def _set_size(fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- output -----------------------------------------------------------------------------------

    def _resume_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._reading and not self._eof and self._master >= 0:
            loop.add_reader(self._master, self._read_ready)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._master)
            self._reading = False

    def _read_ready(self) -> None:
        try:
            data = os.read(self._master, self.options.batch_size - len(self._pending))
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: every slave descriptor is closed (Linux)
            if exc.errno not in (errno.EIO, errno.EBADF):
                logger.debug("shell %s: read failed: %s", self.pid, exc)
            data = b""
        if data:
            self._pending += data
            self.bytes_out += len(data)
            self.last_activity = time.monotonic()
        else:
            self._eof = True
        if self._eof or len(self._pending) >= self.options.batch_size:
            self._pause_reading()  # until the batch is handed over: bounded memory
        if (
            self._readable is not None
            and not self._readable.done()
            and (self._waiting_for_any or self._eof or not self._reading)
        ):
            self._readable.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._proc is not None
        waiter = loop.create_task(self._proc.wait())
        try:
            while True:
                if not self._pending and not self._eof:
                    self._waiting_for_any = True
                    self._readable = loop.create_future()
                    readable: asyncio.Future[Any] = self._readable
                    await asyncio.wait({readable, waiter}, return_when="FIRST_COMPLETED")
                    self._readable = None
                    if waiter.done() and not self._pending and not self._eof:
                        # The command ended; output may still sit in the PTY (or another
                        # process holds it open): read what is there, briefly.
                        self._waiting_for_any = True
                        self._readable = loop.create_future()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._readable, 0.2)
                        self._readable = None
                        if not self._pending:
                            self._eof = True
                if (
                    self._pending
                    and not self._eof
                    and self.options.batch_delay
                    and len(self._pending) < self.options.batch_size
                ):
                    # Batch what follows: until the batch is full (a busy shell: no delay)
                    # or batch_delay passed (interactive typing: a short one).
                    self._waiting_for_any = False
                    full = self._readable = loop.create_future()
                    await asyncio.wait({full}, timeout=self.options.batch_delay)
                    self._readable = None
                if self._pending:
                    text = self._decoder.decode(bytes(self._pending), final=self._eof)
                    self._pending.clear()
                    if text:
                        await self._on_output(text)
                    self._resume_reading(loop)
                elif self._eof:
                    tail = self._decoder.decode(b"", final=True)
                    if tail:
                        await self._on_output(tail)
                    break
            self.returncode = await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            self._close_master()
            if self.returncode is None and self._proc is not None:
                self.returncode = self._proc.returncode
            self.exited.set()
        if self._on_exit is not None:
            await self._on_exit(exit_status(self.returncode if self.returncode is not None else 0))

    def _close_master(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._master < 0:
            return
        self._pause_reading()
        if self._writing:
            asyncio.get_running_loop().remove_writer(self._master)
            self._writing = False
        os.close(self._master)
        self._master = -1
        self._eof = True
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    # -- ending -----------------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the shell's process group (its jobs too)."""
        if self._proc is None or self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    async def terminate(self, grace: float = 2.0) -> int | None:
        """End the shell: SIGHUP (as a closing terminal does), SIGKILL after ``grace`` s.
        Returns its exit status once its output has been handed over."""
        if self._proc is None:
            return None
        if self.returncode is None:
            self.signal(signal.SIGHUP)
            self.signal(signal.SIGCONT)  # a stopped job must see the hangup
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace)
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await self._proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._pump), grace)
            if not self._pump.done():
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._pump
        self._close_master()
        rc = self._proc.returncode
        return exit_status(rc) if rc is not None else None
