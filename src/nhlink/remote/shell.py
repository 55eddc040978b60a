"""The ``local_shell`` extension (PROTOCOL.md §8.6): the "System Shell" tab of the web UI.

Off unless configured (``extensions={"local_shell": True}`` or a :class:`ShellOptions`); the
server also needs the product's ``local_shell`` setting on. Sequence::

    → local_shell:attached
    ← local_shell:request_shell          (once per attach; ignored while a shell runs)
    → local_shell:request_status {"status": "started"} | {"status": "failed", "reason": ...}
    ← local_shell:window_size {"rows", "cols"}      → the PTY's size (kept for the next shell)
    ← local_shell:shell_input {"data"}              → typed into the PTY (ignored without one)
    → local_shell:shell_output {"data"}             batched, bounded (see nhlink.remote.pty)
    → local_shell:shell_exited {"exit_code"}        the shell stays down until the next attach
    ← local_shell:kill_shell {"signal"?}            (NHL's; the server never sends it)

The shell ends when the extension is detached, the connection goes, the link stops, or after
``idle_timeout`` without input or output. Every session is logged (start, end, duration, exit
status, byte counts), never its keystrokes or output.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..extensions.extension import Extension, ExtensionContext
from .pty import PtyShell, ShellOptions
from .sessions import SessionLimit, log_session_end, log_session_start

__all__ = ["LocalShellExtension"]

logger = logging.getLogger(__name__)


class LocalShellExtension(Extension):
    """An OS shell on a PTY for the web UI's System Shell tab (§8.6). One shell per attach."""

    name = "local_shell"
    version = "0.0.1"

    def __init__(self, options: ShellOptions | None = None) -> None:
        self.options = options or ShellOptions()
        self._shell: PtyShell | None = None
        self._size = (24, 80)
        self._limit: SessionLimit | None = None

    @property
    def shell(self) -> PtyShell | None:
        """The running shell, if any."""
        return self._shell

    async def start(self, context: ExtensionContext) -> None:
        self._limit = SessionLimit.of(context.link, self.options.max_sessions)

    async def stop(self) -> None:
        await self._end("detached")

    async def handle_event(self, event: str, payload: Any) -> None:
        data = payload if isinstance(payload, dict) else {}
        if event == "request_shell":
            await self._request_shell()
        elif event == "shell_input":
            text = data.get("data")
            if self._shell is not None and self._shell.running and isinstance(text, str):
                self._shell.write(text)
        elif event == "window_size":
            rows, cols = data.get("rows"), data.get("cols")
            if _dimension(rows) and _dimension(cols):
                assert isinstance(rows, int) and isinstance(cols, int)
                self._size = (rows, cols)
                if self._shell is not None:
                    self._shell.resize(rows, cols)
        elif event == "kill_shell":
            signum = data.get("signal", signal.SIGTERM)
            if self._shell is not None and isinstance(signum, int) and 0 < signum < 65:
                self._shell.signal(signum)
        else:
            logger.debug("local_shell: ignoring event %r", event)

    async def _request_shell(self) -> None:
        if self._shell is not None and self._shell.running:
            logger.info("local_shell: a shell is already running; request ignored")
            return
        assert self.context is not None and self._limit is not None
        link_name = self.context.link.name
        shell = PtyShell(
            self.options,
            self._output,
            self._exited,
            rows=self._size[0],
            cols=self._size[1],
            on_idle=self._idle_notice,
        )
        reason = await self._limit.start(self, shell)
        if reason is not None:
            logger.warning("%s: local shell not started: %s", link_name, reason)
            await self.send("request_status", {"status": "failed", "reason": reason})
            return
        self._shell = shell
        log_session_start(link_name, "local_shell", shell, "the server (request_shell)")
        await self.send("request_status", {"status": "started"})

    async def _output(self, text: str) -> None:
        await self.send("shell_output", {"data": text})

    async def _exited(self, status: int) -> None:
        shell = self._shell
        if shell is None:
            return
        await self.send("shell_exited", {"exit_code": status})
        self._forget(shell, "exited")

    def _forget(self, shell: PtyShell, why: str) -> None:
        if self._shell is shell:
            self._shell = None
            if self._limit is not None:
                self._limit.release(self)
            assert self.context is not None
            log_session_end(self.context.link.name, "local_shell", shell, why)

    async def _end(self, why: str) -> None:
        shell = self._shell
        if shell is None:
            return
        await shell.terminate()
        self._forget(shell, why)

    async def _idle_notice(self) -> None:
        await self.send("shell_output", {"data": "\r\n*** idle timeout: shell ended ***\r\n"})


def _dimension(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 10000
