"""Reconnect schedule: exponential, capped, jittered, reset."""

from __future__ import annotations

from typing import Any

import pytest

from nhlink.errors import ConfigError
from nhlink.protocol.backoff import Backoff


def test_schedule_without_jitter() -> None:
    b = Backoff()
    assert [b.next_delay(0.0) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stretches_up_to_half() -> None:
    b = Backoff()
    assert b.next_delay(1.0) == pytest.approx(1.5)
    assert b.next_delay(0.5) == pytest.approx(2.5)
    b.attempt = 100
    assert b.next_delay(0.999) == pytest.approx(60 * 1.4995)


def test_reset() -> None:
    b = Backoff(initial=0.5, maximum=4)
    for _ in range(5):
        b.next_delay(0)
    assert b.next_delay(0) == 4
    b.reset()
    assert b.next_delay(0) == 0.5


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 2}]
)
def test_invalid(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


def test_rand_out_of_range() -> None:
    with pytest.raises(ValueError):
        Backoff().next_delay(1.5)


def test_draws_from_its_rand_when_given_none() -> None:
    draws = iter([0.0, 1.0, 0.5])
    b = Backoff(initial=1, maximum=60, jitter=0.5, rand=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == [1.0, 3.0, 5.0]
