"""Maintenance windows: the syntax, open/next start across midnight, weeks and DST, jitter."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhlink.agent.windows import Schedule, parse_window

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def at(year: int, month: int, day: int, hour: int, minute: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def test_syntax() -> None:
    w = parse_window("Mon-Fri 02:00-04:00", UTC)
    assert (w.days, w.start, w.end, w.tz) == (frozenset(range(5)), 120, 240, UTC)
    assert parse_window("Sat,Sun 00:00-24:00").days == frozenset({5, 6})
    assert parse_window("fri-mon 22:00-02:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("Tuesday 1:30-2:00").days == frozenset({1})
    assert parse_window("22:00-02:00").days == frozenset(range(7))
    assert parse_window("daily 00:00-01:00 Europe/Berlin").tz == BERLIN
    assert parse_window("weekends 00:00-01:00 UTC").days == frozenset({5, 6})
    assert parse_window("22:00-02:00").length == 240


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Mon-Fry 02:00-04:00", "unknown day 'Fry'"),
        ("Mon 02:00", "no HH:MM-HH:MM"),
        ("Mon 02:00-02:00", "empty"),
        ("Mon 24:00-02:00", "bad time"),
        ("Mon 02:60-03:00", "bad time"),
        ("Mon 2-3", "no HH:MM-HH:MM"),
        ("Mon 02:00-03:00 Mars/Base", "unknown time zone"),
        ("Mon,,Tue 02:00-03:00", "empty day"),
        ("", "is not"),
        ("a b c d", "is not"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_open_and_next_start_across_midnight_and_the_week() -> None:
    s = Schedule.parse(["Fri 22:00-02:00"], "UTC", jitter=0)
    assert not s.open_at(at(2026, 12, 4, 21, 59))  # Friday
    assert s.open_at(at(2026, 12, 4, 22, 0))
    assert s.open_at(at(2026, 12, 5, 1, 59))  # Saturday, still Friday's window
    assert not s.open_at(at(2026, 12, 5, 2, 0))
    assert s.delay(at(2026, 12, 4, 21, 0), lambda: 0.0) == 3600
    # Saturday 02:00: the next start is a week later.
    assert s.delay(at(2026, 12, 5, 2, 0), lambda: 0.0) == (6 * 24 + 20) * 3600


def test_the_nearest_of_several_windows() -> None:
    s = Schedule.parse(["Mon-Fri 02:00-04:00", "Sat,Sun 10:00-12:00"], "UTC", jitter=0)
    assert s.delay(at(2026, 12, 4, 20, 0), lambda: 0.0) == 14 * 3600  # Fri 20:00 → Sat 10:00
    assert s.delay(at(2026, 12, 6, 12, 0), lambda: 0.0) == 14 * 3600  # Sun 12:00 → Mon 02:00


def test_wall_clock_across_daylight_saving_time() -> None:
    # Europe/Berlin leaves DST on 2026-10-25 (03:00 CEST → 02:00 CET): 01:00-02:00 local
    # stays 01:00 local, which is 23:00 UTC before and 00:00 UTC after.
    s = Schedule.parse(["daily 01:00-02:00"], "Europe/Berlin", jitter=0)
    before = at(2026, 10, 24, 12, 0, tz=BERLIN)
    assert before + s.delay(before, lambda: 0.0) == at(2026, 10, 24, 23, 0)
    after = at(2026, 10, 25, 12, 0, tz=BERLIN)
    assert after + s.delay(after, lambda: 0.0) == at(2026, 10, 26, 0, 0)


def test_no_windows_means_always() -> None:
    assert Schedule().delay(at(2026, 1, 1, 0, 0), lambda: 0.9) == 0


def test_jitter_is_capped_at_half_the_window() -> None:
    s = Schedule.parse(["Mon 02:00-02:10"], "UTC", jitter=3600)
    now = at(2026, 12, 7, 1, 0)  # a Monday
    assert s.delay(now, lambda: 0.0) == 3600
    assert s.delay(now, lambda: 0.999) == pytest.approx(3600 + 0.999 * 300)


days = st.frozensets(st.integers(0, 6), min_size=1)
minutes = st.integers(0, 24 * 60 - 1)


@settings(max_examples=300, deadline=None)
@given(
    windows=st.lists(st.tuples(days, minutes, st.integers(1, 24 * 60 - 1)), min_size=1, max_size=3),
    now=st.integers(int(at(2026, 1, 1, 0, 0)), int(at(2027, 12, 31, 0, 0))),
    jitter=st.floats(0, 1),
)
def test_the_delay_lands_in_a_window_and_none_opens_before(
    windows: list[tuple[frozenset[int], int, int]], now: int, jitter: float
) -> None:
    texts = []
    for day_set, start, length in windows:
        end = (start + length) % (24 * 60)
        names = ",".join(
            ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[d] for d in sorted(day_set)
        )
        texts.append(f"{names} {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}")
    schedule = Schedule.parse(texts, "UTC", jitter=0)
    delay = schedule.delay(now, lambda: 0.0)
    assert 0 <= delay <= 8 * 24 * 3600
    assert schedule.open_at(now + delay + 0.001)
    if delay >= 1:
        assert not schedule.open_at(now + delay - 0.5)
    jittered = Schedule.parse(texts, "UTC", jitter=600).delay(now, lambda: jitter)
    assert schedule.open_at(now + jittered)  # jitter never leaves the window
