"""Reconnect delays: exponential with random jitter (PROTOCOL.md §12). Sans-I/O: the random
number comes in, so schedules are reproducible in tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["Backoff"]


@dataclass
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

    def next_delay(self, rand: float) -> float:
        """The next delay, with ``rand`` uniform in [0, 1). Advances the schedule."""
        if not 0 <= rand <= 1:
            raise ValueError("rand must be within [0, 1]")
        delay = self.base_delay(self.attempt) * (1 + self.jitter * rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
