"""Maintenance windows: ``"Mon-Fri 02:00-04:00"``, ``"Sat,Sun 00:00-06:00 UTC"``, ``"22:00-02:00"``.

A window is a set of week days, a start and an end time of day and a time zone. The days name
the day a window *starts*: ``"Fri 22:00-02:00"`` runs from Friday 22:00 to Saturday 02:00. An
end before the start crosses midnight; ``24:00`` is the end of the day. Without days a window
is daily. The zone is the one given after the times (``UTC`` or an IANA name such as
``Europe/Berlin``), else the schedule's (``[update] timezone``), else the machine's local
time. Wall-clock times follow daylight saving time: a ``02:00`` start stays at 02:00 local.

Only the start of an update is gated: one accepted inside a window runs to its end.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Schedule", "Window", "parse_timezone", "parse_window"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_DAY_SPECS = {"daily": range(7), "*": range(7), "weekdays": range(5), "weekends": range(5, 7)}


def parse_timezone(name: str) -> dt.tzinfo | None:
    """``"local"`` → None (the machine's local time), ``"UTC"``, or an IANA zone name."""
    if name.lower() == "local":
        return None
    if name.upper() in ("UTC", "Z"):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use local, UTC or an IANA name)") from exc


_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str) -> int:
    """``Mon`` or ``Monday`` (any case) → 0."""
    key = name.strip().lower()
    for index, (short, full) in enumerate(zip(_DAYS, _FULL, strict=True)):
        if key in (short, full):
            return index
    raise ValueError(f"unknown day {name.strip()!r} (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")


def _days(spec: str) -> frozenset[int]:
    lowered = spec.lower()
    if lowered in _DAY_SPECS:
        return frozenset(_DAY_SPECS[lowered])
    days: set[int] = set()
    for item in spec.split(","):
        if not item.strip():
            raise ValueError(f"empty day in {spec!r}")
        first, sep, last = item.partition("-")
        a = _day(first)
        if not sep:
            days.add(a)
            continue
        b = _day(last)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # Fri-Mon wraps the week
    return frozenset(days)


def _minutes(text: str, *, end: bool) -> int:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"bad time {text!r} (HH:MM)")
    hours, minutes = int(match[1]), int(match[2])
    if end and (hours, minutes) == (24, 0):
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise ValueError(f"bad time {text!r} (00:00 to 23:59)")
    return hours * 60 + minutes


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, up to 1440; <= start: ends the next day
    tz: dt.tzinfo | None  # None: local time

    @property
    def length(self) -> int:
        """Minutes the window lasts."""
        return self.end - self.start if self.end > self.start else self.end + 1440 - self.start

    def _start_at(self, day: dt.date) -> float:
        wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=self.start)
        return _timestamp(wall, self.tz)

    def _end_at(self, day: dt.date) -> float:
        wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=self.start + self.length)
        return _timestamp(wall, self.tz)

    def open_at(self, now: float) -> bool:
        today = _wall(now, self.tz).date()
        for back in (1, 0):  # a window that began yesterday may still be open
            day = today - dt.timedelta(days=back)
            if day.weekday() in self.days and self._start_at(day) <= now < self._end_at(day):
                return True
        return False

    def next_start(self, now: float) -> float:
        """The first start strictly after ``now`` (Unix time)."""
        today = _wall(now, self.tz).date()
        for ahead in range(9):
            day = today + dt.timedelta(days=ahead)
            if day.weekday() in self.days:
                start = self._start_at(day)
                if start > now:
                    return start
        raise AssertionError("a window with days starts within 8 days")  # pragma: no cover


def _wall(now: float, tz: dt.tzinfo | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, tz) if tz is not None else dt.datetime.fromtimestamp(now)


def _timestamp(wall: dt.datetime, tz: dt.tzinfo | None) -> float:
    # Naive wall time: local (mktime). In a DST gap the time is moved on by the gap.
    return wall.replace(tzinfo=tz).timestamp() if tz is not None else wall.timestamp()


def parse_window(text: str, default_tz: dt.tzinfo | None = None) -> Window:
    """``"[DAYS] HH:MM-HH:MM [ZONE]"``; raises ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a window is a string such as 'Mon-Fri 02:00-04:00', not {text!r}")
    words = text.split()
    if not 1 <= len(words) <= 3:
        raise ValueError(f"{text!r} is not '[DAYS] HH:MM-HH:MM [ZONE]'")
    times_at = next((i for i, w in enumerate(words) if "-" in w and ":" in w), None)
    if times_at is None or times_at > 1:
        raise ValueError(f"{text!r} has no HH:MM-HH:MM time range")
    days = _days(words[0]) if times_at == 1 else frozenset(range(7))
    rest = words[times_at + 1 :]
    tz = parse_timezone(rest[0]) if rest else default_tz
    first, _, last = words[times_at].partition("-")
    start, end = _minutes(first, end=False), _minutes(last, end=True)
    if start == end:
        raise ValueError(f"{text!r} is empty (start and end are equal)")
    return Window(days, start, end, tz)


@dataclass(frozen=True)
class Schedule:
    """When updates may start. No windows: always."""

    windows: tuple[Window, ...] = ()
    #: at most this many seconds are added to a window's start (capped at half the window),
    #: so a fleet does not start at the same second
    jitter: float = 300.0

    @classmethod
    def parse(
        cls, windows: Sequence[str], timezone: str = "local", jitter: float = 300.0
    ) -> Schedule:
        tz = parse_timezone(timezone)
        return cls(tuple(parse_window(w, tz) for w in windows), jitter)

    def open_at(self, now: float) -> bool:
        return not self.windows or any(w.open_at(now) for w in self.windows)

    def delay(self, now: float, rand: Callable[[], float]) -> float:
        """Seconds from ``now`` until an update may start (0: now), jitter included."""
        if self.open_at(now):
            return 0.0
        start, index = min((w.next_start(now), i) for i, w in enumerate(self.windows))
        window = self.windows[index]
        spread = min(self.jitter, window.length * 60 / 2)
        return start - now + spread * rand()
