"""Reconnect delays: exponential with random jitter (PROTOCOL.md §12), and a pacer that caps the
rate of connection attempts of many links in one process. The schedules are sans-I/O (the random
number and the time come in), so they are reproducible in tests."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["Backoff", "Pacer"]


@dataclass(slots=True)
class Backoff:
    """``initial`` doubling up to ``maximum`` seconds, each delay times ``1 + jitter * rand``.

    With the defaults the delays are 1, 2, 4, 8, 16, 32, 60, 60, ... seconds, each stretched by
    0–50 % so a fleet knocked off by a server restart (close 1012) does not return in lockstep.
    :meth:`reset` after a successful join; :meth:`next_delay` before every reconnect attempt.
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5
    #: where :meth:`next_delay` draws its random number when given none (uniform in [0, 1))
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError("backoff", "need 0 < initial <= maximum")
        if self.multiplier < 1:
            raise ConfigError("backoff", "multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("backoff", "jitter must be within [0, 1]")

    def base_delay(self, attempt: int) -> float:
        """The delay before jitter for the ``attempt``-th retry (0-based)."""
        if attempt > 64:  # avoid float overflow; long since capped
            return self.maximum
        return float(min(self.maximum, self.initial * self.multiplier**attempt))

    def next_delay(self, rand: float | None = None) -> float:
        """The next delay, with ``rand`` uniform in [0, 1) (default: drawn from :attr:`rand`).
        Advances the schedule."""
        if rand is None:
            rand = self.rand()
        if not 0 <= rand <= 1:
            raise ValueError("rand must be within [0, 1]")
        delay = self.base_delay(self.attempt) * (1 + self.jitter * rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Pacer:
    """At most ``rate`` connection attempts per second among all who await it, ``burst`` at once.

    Pass one pacer as ``connect_gate`` to every :class:`~nhlink.NervesHubLink` of a process:
    when a hub restart drops 10,000 links, their jittered backoff spreads the retries and the
    pacer caps what still coincides, so the hub sees a ramp instead of a stampede. A generic
    cell rate algorithm (no timer, no task): each caller gets the next free slot, in the order
    of calling, plus up to ``jitter`` of one slot's length at random, so that paced attempts are
    not spaced exactly evenly either.
    """

    __slots__ = ("_clock", "_interval", "_jitter", "_rand", "_tat", "_tolerance", "rate")

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        jitter: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not rate > 0:
            raise ConfigError("rate", "must be > 0 attempts per second")
        if burst < 1:
            raise ConfigError("burst", "must be >= 1")
        if not 0 <= jitter <= 1:
            raise ConfigError("jitter", "must be within [0, 1]")
        self.rate = rate
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._jitter = jitter
        self._clock = clock
        self._rand = rand
        self._tat = -float("inf")  # theoretical arrival time of the next attempt

    def reserve(self) -> float:
        """Take the next slot; return the seconds to wait for it (0 when one is free now)."""
        now = self._clock()
        tat = max(self._tat, now)
        self._tat = tat + self._interval
        start = max(tat - self._tolerance, now)
        if start > now and self._jitter:
            start += self._jitter * self._rand() * self._interval
        return start - now

    async def __call__(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
