"""Calling application callbacks: plain or ``async def``, never allowed to break nhlink.

A callback must not be able to stop heartbeats, reconnection or updates (a hung ``async def``
would otherwise stall whatever awaits it). So:

* ``async def`` callbacks run with a time limit (``callback_timeout``, 30 s by default); one that
  overruns is abandoned (cancelled) and logged, and nhlink carries on as if it had raised;
* plain callbacks run on the event loop, as the Elixir client's do, and cannot be interrupted:
  one that takes longer than the limit is logged, so the culprit is named. Do slow or blocking
  work in ``async def`` callbacks (``await asyncio.to_thread(...)``).

The connection callbacks (``handle_connected``, ``handle_disconnected``) run off the connection's
critical path, in order, on their own task (see :class:`CallbackQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFAULT_CALLBACK_TIMEOUT",
    "CallbackQueue",
    "CallbackTimeout",
    "call_callback",
    "invoke",
]

logger = logging.getLogger("nhlink.link")  # where callback failures have always been logged

#: Seconds an ``async def`` callback may take before it is abandoned.
DEFAULT_CALLBACK_TIMEOUT = 30.0


class CallbackTimeout(TimeoutError):
    """An ``async def`` callback did not return within its time limit (it was cancelled)."""


async def invoke(name: str, fn: Callable[..., Any], *args: Any, timeout: float | None) -> Any:
    """Call ``fn(*args)``, plain or async; an async one is cancelled after ``timeout`` seconds
    (:class:`CallbackTimeout`). Exceptions propagate. A plain one that overran is logged."""
    started = time.monotonic()
    result = fn(*args)
    if inspect.isawaitable(result):
        try:
            return await asyncio.wait_for(result, timeout)
        except TimeoutError:
            raise CallbackTimeout(
                f"callback {name} did not return within {timeout:g} s; abandoned"
            ) from None
    elapsed = time.monotonic() - started
    if timeout is not None and elapsed > timeout:
        logger.error(
            "callback %s blocked the event loop for %.1f s (limit %g s): heartbeats and "
            "updates stalled meanwhile; make it async def and move the blocking work to a thread",
            name,
            elapsed,
            timeout,
        )
    return result


async def call_callback(
    name: str, fn: Callable[..., Any] | None, *args: Any, timeout: float | None = None
) -> Any:
    """Call a user callback, plain or async; log and swallow its exceptions and overruns
    (then return None)."""
    if fn is None:
        return None
    try:
        return await invoke(name, fn, *args, timeout=timeout)
    except asyncio.CancelledError:
        raise
    except CallbackTimeout as exc:
        logger.error("%s", exc)
        return None
    except Exception:
        logger.exception("callback %s raised; ignored", name)
        return None


class CallbackQueue:
    """Runs callbacks one after another on a task of its own, each with the time limit, so the
    caller never waits for them (and they still see events in order)."""

    __slots__ = ("_queue", "_task", "name", "timeout")

    def __init__(self, name: str, timeout: float | None) -> None:
        self.name = name
        self.timeout = timeout
        # A plain deque, made when needed: an idle link holds neither it nor a task.
        self._queue: deque[tuple[str, Callable[..., Any], tuple[Any, ...]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, name: str, fn: Callable[..., Any] | None, *args: Any) -> None:
        """Queue ``fn(*args)``; returns at once."""
        if fn is None:
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append((name, fn, args))
        if self._task is None or self._task.done():
            task = asyncio.create_task(self._run(), name=f"nhlink:{self.name}:callbacks")
            self._task = task
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        while queue:
            name, fn, args = queue.popleft()
            await call_callback(name, fn, *args, timeout=self.timeout)
        self._queue = None  # nothing was added since the check above (no await in between)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` s) until every queued callback has run; then cancel."""
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
