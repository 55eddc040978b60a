"""The download bandwidth cap (``DownloadOptions.max_download_rate``): the pacer's promise on a
simulated clock (any arrival pattern), and a real capped download over loopback."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhlink.errors import ConfigError
from nhlink.testing.firmware import FirmwareServer
from nhlink.update.download import DownloadOptions, _Pacer, download
from tests.support import image, sha

from .conftest import CollectingSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1024, 50 * 1024 * 1024),
    chunks=st.lists(
        st.tuples(st.integers(1, 512 * 1024), st.floats(0, 0.05)), min_size=1, max_size=400
    ),
)
def test_the_pacer_never_runs_ahead_of_the_rate(rate: int, chunks: list[tuple[int, float]]) -> None:
    """Over any stretch from the start, bytes ≤ rate × elapsed + a quarter second's worth
    (checked after each chunk's sleep, when the reader goes on reading)."""
    clock = Clock()
    pacer = _Pacer(rate, clock)
    start = clock.now
    total = 0
    sleeps = 0
    for size, gap in chunks:
        clock.now += gap  # the network delivers the next chunk this much later
        total += size
        pause = pacer.spend(size)
        if pause:
            sleeps += 1
            clock.now += pause
        assert total <= rate * (clock.now - start) + rate / 4 + 1, (total, clock.now - start)
    assert sleeps <= len(chunks)


def test_the_pacer_holds_the_average_within_5_percent_over_10_s() -> None:
    """A fast network (64 KiB chunks arriving back to back): the 10 s average is the rate,
    ±5 %, and the reader sleeps a few times a second, not once per chunk."""
    rate = 4 * 1024 * 1024
    clock = Clock()
    pacer = _Pacer(rate, clock)
    total = sleeps = chunks = 0
    while clock.now < 1010.0:
        clock.now += 0.0001  # 64 KiB per 100 µs: ~640 MiB/s available
        total += 65536
        chunks += 1
        pause = pacer.spend(65536)
        if pause:
            sleeps += 1
            clock.now += pause
    average = total / (clock.now - 1000.0)
    assert 0.95 * rate <= average <= 1.05 * rate, average / rate
    assert sleeps <= 10 * 5  # about 4 a second
    assert chunks > 10 * sleeps


def test_the_cap_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_download_rate"):
        DownloadOptions(max_download_rate=10)
    with pytest.raises(ConfigError, match="max_download_rate"):
        DownloadOptions(max_download_rate=True)


async def test_a_capped_download_over_loopback(fw: FirmwareServer) -> None:
    """1.5 MiB at 1 MiB/s cannot take less than ~1.25 s (rate × time + a quarter second);
    only the lower bound is asserted (a slow machine only makes it longer)."""
    data = image(1536 * 1024, seed=21)
    url = fw.add("fw.bin", data)
    sink = CollectingSink()
    options = DownloadOptions(allow_http=True, max_download_rate=1024 * 1024)
    started = time.monotonic()
    await download(url, sink=sink, expected_size=len(data), options=options)
    elapsed = time.monotonic() - started
    assert sha(bytes(sink.buffer)) == sha(data)
    assert elapsed >= 1.2, elapsed
