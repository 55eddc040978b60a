"""systemd's notify protocol (``sd_notify``), in a few lines and without a dependency.

``Type=notify`` services get ``NOTIFY_SOCKET``: a ``AF_UNIX`` datagram socket (a path, or an
abstract name written ``@name``) that takes newline-separated ``KEY=value`` assignments:
``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1``. With
``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the service must
send ``WATCHDOG=1`` more often than that, or it is killed and restarted. Outside systemd every
call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to ``address`` (None: nowhere)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._last_status: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "")) or None
        except ValueError:
            usec = None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process (a wrapper started us)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half the watchdog timeout (as systemd advises)."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (keyword names are upper-cased); True if sent."""
        if self.address is None:
            return False
        # One line per field: a value with a newline (a firmware version from the server in
        # STATUS=) must not smuggle in another assignment such as STOPPING=1.
        text = "\n".join(
            f"{key.upper()}={''.join(c if c.isprintable() else ' ' for c in value)}"
            for key, value in fields.items()
        )
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), target)
        except OSError as exc:
            logger.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(ready="1", status=status)

    def status(self, text: str) -> None:
        """``STATUS=text``, only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(status=text)

    def watchdog(self) -> None:
        self.send(watchdog="1")

    def reloading(self) -> None:
        self.send(reloading="1", monotonic_usec=str(time.monotonic_ns() // 1000))

    def stopping(self, status: str = "stopping") -> None:
        self._last_status = status
        self.send(stopping="1", status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
