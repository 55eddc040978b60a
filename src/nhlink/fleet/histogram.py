"""A mergeable latency histogram: log-linear buckets, 16 per power of two (~4.4 % wide).

Shards of a load test each keep one and write it into their JSON summary; ``nhlink fleet merge``
adds the bucket counts and recomputes the percentiles from the merged buckets (percentiles of
shards cannot be averaged). Values are seconds; buckets are kept in microseconds, from 1 µs to
about 1,000 s, sparse (only the buckets that were hit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Histogram"]

_SUB = 16  # buckets per power of two
_MAX_INDEX = 30 * _SUB  # 2**30 µs ≈ 1,074 s: anything longer lands in the last bucket


def _index(seconds: float) -> int:
    micros = seconds * 1e6
    if micros <= 1.0:
        return 0
    return min(_MAX_INDEX, int(math.log2(micros) * _SUB))


def _upper(index: int) -> float:
    """The upper edge of bucket ``index``, in seconds."""
    return float(2.0 ** ((index + 1) / _SUB) / 1e6)


class Histogram:
    """Counts of values (seconds) in log-linear buckets, with exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        index = _index(seconds)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        self.minimum = min(self.minimum, seconds)
        self.maximum = max(self.maximum, seconds)

    def merge(self, other: Histogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, q: float) -> float | None:
        """The value (seconds) below which ``q`` percent of the values fall, to a bucket's width
        (the bucket's upper edge, never above the maximum seen); None when empty."""
        if not 0 <= q <= 100:
            raise ValueError("q must be within [0, 100]")
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_upper(index), self.maximum)
        return self.maximum  # pragma: no cover - the counts add up to count

    def to_json(self) -> dict[str, Any]:
        """Summary in milliseconds plus the raw buckets (for merging)."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "count": self.count,
            "mean_ms": ms(self.total / self.count) if self.count else None,
            "min_ms": ms(self.minimum) if self.count else None,
            "p50_ms": ms(self.percentile(50)),
            "p90_ms": ms(self.percentile(90)),
            "p99_ms": ms(self.percentile(99)),
            "max_ms": ms(self.maximum) if self.count else None,
            "sum_s": self.total,
            "buckets": {str(i): n for i, n in sorted(self.buckets.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        hist = cls()
        hist.buckets = {int(i): int(n) for i, n in dict(data.get("buckets") or {}).items()}
        hist.count = int(data.get("count") or 0)
        if hist.count != sum(hist.buckets.values()):
            raise ValueError("histogram: count does not match its buckets")
        hist.total = float(data.get("sum_s") or 0.0)
        if hist.count:
            hist.minimum = float(data["min_ms"]) / 1000
            hist.maximum = float(data["max_ms"]) / 1000
        return hist

    @classmethod
    def merged(cls, parts: Iterable[Histogram]) -> Histogram:
        out = cls()
        for part in parts:
            out.merge(part)
        return out
