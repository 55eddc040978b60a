"""The ``logging`` extension (PROTOCOL.md §8.4): ship log lines as ``logging:send``.

Pipeline: producers (:class:`NHLinkLogHandler` on any thread, ``link.log()``) format a line at
once and append it to a bounded queue under a lock — they never block and never await. A
drainer task on the link's event loop sends the queue at the server's rate (token bucket: 5 per
second, bursts of 10 — the server silently drops anything faster), so bursts are delayed rather
than lost. When the queue is full, new lines are dropped and counted, and a ``"dropped N log
lines"`` line (itself rate-limited, at most once per ``dropped_report_interval``) says so.

While the extension is not attached, lines are dropped silently, as AVM does (§14.2).

No recursion: records of nhlink's own loggers and of ``asyncio``/``aiohttp`` (which the drainer
itself may cause) are never shipped, and a per-thread guard drops any record emitted while the
handler is already emitting (e.g. by a formatter that logs).

The library never installs a handler; the application does, e.g.
``logging.getLogger().addHandler(link.extensions.log_handler())``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ConfigError
from ..protocol import wire
from .extension import DEFAULT_VERSION, Extension, ExtensionContext

__all__ = [
    "OWN_LOGGERS",
    "LoggingExtension",
    "LoggingOptions",
    "NHLinkLogHandler",
    "TokenBucket",
]

logger = logging.getLogger(__name__)

# §8.4 — wire strings (the event is relative to the "logging:" prefix).
NAME: Final = wire.LOGGING_NAME
EVENT_SEND: Final = wire.LOGGING_EVENT_SEND
KEY_LEVEL: Final = wire.LOGGING_KEY_LEVEL
KEY_MESSAGE: Final = wire.LOGGING_KEY_MESSAGE
KEY_META: Final = wire.LOGGING_KEY_META
META_TIME: Final = wire.LOGGING_META_TIME
# §8.4 — the server's per-device limit.
SERVER_RATE: Final = 5.0
SERVER_BURST: Final = 10

#: Loggers whose records are never shipped: ours, and what shipping itself may log.
OWN_LOGGERS: Final = ("nhlink", "asyncio", "aiohttp")

_TRUNCATED: Final = "… [truncated]"
# Attributes every LogRecord has; anything else came from ``extra=`` and is sent as meta.
_RECORD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_guard = threading.local()


def _option_error(message: str) -> ConfigError:
    return ConfigError(f"extensions.{NAME}", message)


@dataclass(frozen=True)
class LoggingOptions:
    """Options of the ``logging`` extension (``extensions={"logging": LoggingOptions(...)}``).

    ``level`` is the default level of handlers from ``link.extensions.log_handler()``;
    ``rate``/``burst`` the token bucket (keep them at or under the server's 5/s, 10);
    ``queue_size`` how many lines may wait; ``max_message_length`` truncates longer messages.
    ``clock`` (monotonic seconds) and ``sleep`` drive the token bucket; tests replace them.
    """

    level: int = logging.INFO
    queue_size: int = 256
    rate: float = SERVER_RATE
    burst: int = SERVER_BURST
    dropped_report_interval: float = 60.0
    max_message_length: int = 8192
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise _option_error(f"level must be a logging level number, not {self.level!r}")
        for name in ("queue_size", "burst", "max_message_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _option_error(f"{name} must be a positive integer, not {value!r}")
        for name in ("rate", "dropped_report_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise _option_error(f"{name} must be a positive number, not {value!r}")
        if not callable(self.clock) or not callable(self.sleep):
            raise _option_error("clock and sleep must be callables")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    Not thread-safe: the drainer task is its only user.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # tolerate float error in rate * elapsed
            self._tokens = max(self._tokens - 1.0, 0.0)
            return True
        return False

    def delay(self) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill()
        return max((1.0 - self._tokens) / self.rate, 0.0)


def level_name(level: str | int) -> str:
    """A level for the wire: ``"info"``, ``"warning"``, ... (free text, §8.4)."""
    if isinstance(level, int) and not isinstance(level, bool):
        name = logging.getLevelName(level)
        return name.lower() if not name.startswith("Level ") else str(level)
    return str(level).lower()


def unix_micros(unix: float) -> str:
    """``meta.time``: Unix microseconds as a decimal string (§8.4)."""
    return str(round(unix * 1_000_000))


class LoggingExtension(Extension):
    """``logging``: a rate-limited, bounded queue of lines sent as ``logging:send``.

    :meth:`submit` is the thread-safe entry point; :class:`NHLinkLogHandler` and
    ``link.log()`` use it.
    """

    name = NAME
    version = DEFAULT_VERSION

    def __init__(self, options: LoggingOptions | None = None) -> None:
        self.options = options if options is not None else LoggingOptions()
        self._bucket = TokenBucket(self.options.rate, self.options.burst, self.options.clock)
        self._lock = threading.Lock()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._accepting = False
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._holding = False  # the drainer holds a popped line while it waits for a token
        self._unreported = 0  # dropped since the last "dropped N" line
        self._last_report: float | None = None
        #: Lines sent, and lines dropped (queue full, or lost to a detach or disconnect).
        self.sent = 0
        self.dropped = 0

    @property
    def accepting(self) -> bool:
        """True while started: lines are queued. Otherwise :meth:`submit` drops them."""
        return self._accepting

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- producers (any thread) ----------------------------------------------------------------

    def submit(
        self,
        level: str | int,
        message: str,
        meta: Mapping[str, Any] | None = None,
        *,
        created: float | None = None,
    ) -> bool:
        """Queue one line; returns whether it was queued. Never blocks; callable from any
        thread. ``created`` is the line's Unix time (default: now); ``meta`` values are sent as
        strings."""
        if not self._accepting:
            return False
        limit = self.options.max_message_length
        if len(message) > limit:
            message = message[: max(limit - len(_TRUNCATED), 0)] + _TRUNCATED
        body: dict[str, str] = {
            str(k): v if isinstance(v, str) else str(v) for k, v in (meta or {}).items()
        }
        body[META_TIME] = unix_micros(time.time() if created is None else created)
        payload = {KEY_LEVEL: level_name(level), KEY_MESSAGE: message, KEY_META: body}
        with self._lock:
            loop = self._loop
            if not self._accepting or loop is None:
                return False
            if len(self._queue) >= self.options.queue_size:
                self._unreported += 1
                self.dropped += 1
                return False
            self._queue.append(payload)
            if self._wake_pending:
                return True
            self._wake_pending = True
        # RuntimeError: the loop is closed, so nobody would send the line anyway.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake)
        return True

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- extension lifecycle (event loop) ------------------------------------------------------

    async def start(self, context: ExtensionContext) -> None:
        # The drainer is created last and this method does not await after it: the router sends
        # "logging:attached" before the drainer's first step, so no line precedes it (§8.2).
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        with self._lock:
            self._loop = loop
            self._accepting = True
            self._wake_pending = False
        self._drainer = loop.create_task(self._drain(self._wakeup), name="nhlink:logging")

    async def stop(self) -> None:
        with self._lock:
            self._accepting = False
            lost = len(self._queue) + self._holding
            self._queue.clear()
            self._holding = False
            self._unreported += lost
            self.dropped += lost
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.cancel()
            try:
                await drainer
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    def _next(self) -> dict[str, Any] | None:
        with self._lock:
            if self._unreported:
                now = self.options.clock()
                last = self._last_report
                if last is None or now - last >= self.options.dropped_report_interval:
                    count, self._unreported = self._unreported, 0
                    self._last_report = now
                    return self._dropped_line(count)
            return self._queue.popleft() if self._queue else None

    def _dropped_line(self, count: int) -> dict[str, Any]:
        message = (
            f"nhlink: dropped {count} log line{'s' if count != 1 else ''} "
            f"(queue of {self.options.queue_size} full, or lost on detach/disconnect)"
        )
        meta = {"logger": __name__, META_TIME: unix_micros(time.time())}
        return {KEY_LEVEL: "warning", KEY_MESSAGE: message, KEY_META: meta}

    async def _drain(self, wakeup: asyncio.Event) -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            with self._lock:
                self._wake_pending = False
            while (payload := self._next()) is not None:
                self._holding = True
                while not self._bucket.try_take():
                    await self.options.sleep(self._bucket.delay())
                self._holding = False
                if await self.send(EVENT_SEND, payload):
                    self.sent += 1
                else:  # detached or disconnected meanwhile
                    with self._lock:
                        self._unreported += 1
                        self.dropped += 1


def is_own_logger(name: str) -> bool:
    """Whether records of logger ``name`` must never be shipped (see :data:`OWN_LOGGERS`)."""
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class NHLinkLogHandler(logging.Handler):
    """A :class:`logging.Handler` that ships records through the ``logging`` extension.

    Get one from ``link.extensions.log_handler()`` and add it where you want (root logger,
    an application logger). ``emit`` never blocks and never raises; records are dropped while
    the extension is not attached. The message is ``self.format(record)`` (add a formatter to
    change it); ``meta`` carries the logger, module, function, line and thread, plus any
    ``extra=`` fields, as strings, and ``time``.
    """

    def __init__(self, extension: LoggingExtension, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.extension = extension

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_guard, "active", False) or is_own_logger(record.name):
            return
        if not self.extension.accepting:
            return
        _guard.active = True
        try:
            meta: dict[str, Any] = {
                key: value
                for key, value in record.__dict__.items()
                if key not in _RECORD_FIELDS and not key.startswith("_")
            }
            meta.update(
                logger=record.name,
                module=record.module,
                function=record.funcName,
                line=record.lineno,
                thread=record.threadName,
            )
            self.extension.submit(
                record.levelname, self.format(record), meta, created=record.created
            )
        except Exception:
            self.handleError(record)
        finally:
            _guard.active = False
