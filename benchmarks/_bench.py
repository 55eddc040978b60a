"""Helpers shared by the pytest-benchmark suites."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any


def optional(name: str) -> ModuleType | None:
    """Import ``name`` if it is installed (rivals are optional), else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def run(
    benchmark: Any,
    fn: Callable[[], object],
    *,
    group: str,
    impl: str,
    items: int,
    unit: str,
    batch: bool = True,
) -> None:
    """Benchmark ``fn`` for ~0.3 s (at least 5 rounds) and label it for compare.py.

    With ``batch`` tiny calls are repeated per round so timer resolution does not matter.
    """
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["items"] = items
    benchmark.extra_info["unit"] = unit
    fn()
    started = time.perf_counter()
    for _ in range(3):
        fn()
    once = max((time.perf_counter() - started) / 3, 1e-8)
    iterations = max(1, int(2e-4 / once)) if batch else 1
    rounds = max(5, min(2000, int(0.3 / (once * iterations))))
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
