"""What the remote-access features share: a per-device limit on shells, and the session log.

Every remote shell session is logged at INFO through ``logging.getLogger("nhlink.remote")``:
who asked (as far as the server says), when, how long, the exit status and the byte counts —
never the keystrokes or the output.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .pty import PtyShell

__all__ = ["SessionLimit", "log_session_end", "log_session_start"]

logger = logging.getLogger("nhlink.remote")


class SessionLimit:
    """How many remote shells one device (link) runs at once, across the console and the
    local shell: the lowest ``max_sessions`` configured for it wins."""

    _of: ClassVar[weakref.WeakKeyDictionary[Any, SessionLimit]] = weakref.WeakKeyDictionary()

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._holders: set[int] = set()

    @classmethod
    def of(cls, link: Any, maximum: int) -> SessionLimit:
        limit = cls._of.get(link)
        if limit is None:
            limit = cls._of[link] = cls(maximum)
        else:
            limit.maximum = min(limit.maximum, maximum)
        return limit

    @property
    def in_use(self) -> int:
        return len(self._holders)

    def acquire(self, holder: object) -> bool:
        if id(holder) in self._holders:
            return True
        if len(self._holders) >= self.maximum:
            return False
        self._holders.add(id(holder))
        return True

    def release(self, holder: object) -> None:
        self._holders.discard(id(holder))

    async def start(self, holder: object, shell: PtyShell) -> str | None:
        """Start ``shell`` for ``holder`` within the limit: None when it runs, else why not
        (the limit, or the command could not start; the slot is then given back)."""
        if not self.acquire(holder):
            return f"at most {self.maximum} remote shell(s) at once on this device"
        try:
            await shell.start()
        except OSError as exc:
            self.release(holder)
            return f"could not start {shell.options.argv()[0]}: {exc.strerror or exc}"
        return None


def log_session_start(link: str, via: str, shell: PtyShell, asked_by: str) -> None:
    logger.info(
        "%s: remote shell started via %s, asked by %s: pid %s, %s",
        link,
        via,
        asked_by,
        shell.pid,
        " ".join(shell.options.argv()),
    )


def log_session_end(link: str, via: str, shell: PtyShell, why: str) -> None:
    rc = shell.returncode
    logger.info(
        "%s: remote shell via %s ended (%s) after %.1f s: exit status %s, %d bytes out, "
        "%d bytes in",
        link,
        via,
        why,
        time.monotonic() - shell.started_at,
        "?" if rc is None else (128 - rc if rc < 0 else rc),
        shell.bytes_out,
        shell.bytes_in,
    )
