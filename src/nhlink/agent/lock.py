"""The machine-wide update lock: one updater at a time.

Every nhlink process — each device of ``nhlink run``, ``nhlink install`` — takes an exclusive
``flock(2)`` on one file (default ``/run/lock/nhlink.lock``) before it begins writing an image
and keeps it until the image is finished or aborted. Another tool that writes the same slots
can join in from a shell::

    flock --nonblock /run/lock/nhlink.lock my-updater ...

The holder writes ``<pid> <what>`` into the file, so a refusal can say who holds it. The
kernel drops the lock with the process: a crashed holder never blocks the next update.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["DEFAULT_LOCK_FILE", "LockBusy", "UpdateLock"]

DEFAULT_LOCK_FILE = Path("/run/lock/nhlink.lock")


class LockBusy(RuntimeError):
    """Another process holds the lock; the message names it."""


class UpdateLock:
    """An exclusive, non-blocking ``flock`` on ``path``. Not re-entrant across instances:
    two :class:`UpdateLock` objects on one path exclude each other even in one process."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds the lock, as written in the file ('' if unknown)."""
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockBusy` (at once: never waits). Idempotent."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            owner = os.fstat(fd).st_uid
            if owner not in (os.geteuid(), 0):
                # In a world-writable directory (/run/lock) another user could plant the file
                # and hold its lock forever: only ours, or root's, counts.
                raise LockBusy(
                    f"refusing the update lock {self.path}: it belongs to uid {owner}, not to "
                    "this user or root (remove it)"
                )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            raise LockBusy(
                f"another update is in progress: {self.path} is locked"
                + (f" by pid {holder}" if holder else "")
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.what}\n".encode(), 0)
        self._fd = fd

    def busy(self) -> str | None:
        """If another process holds the lock, who (a non-empty text); else None. Does not
        take it."""
        if self._fd is not None:
            return None
        try:
            self.acquire()
        except LockBusy as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot open the update lock {self.path}: {exc}"
        self.release()
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor drops the flock
