"""Fixtures for the firmware download tests: a loopback FirmwareServer, a collecting sink and a
recording ``sleep`` (retries take no wall time)."""

from __future__ import annotations

import asyncio

import pytest


class CollectingSink:
    """A :class:`~nhlink.update.download.DownloadSink` that keeps the bytes and every call.

    It checks the contract as it goes: ``attempt``'s offset equals the bytes held.
    """

    def __init__(self, initial: bytes = b"") -> None:
        self.buffer = bytearray(initial)
        #: ("attempt", number, offset) and ("restart",) in call order.
        self.events: list[tuple[object, ...]] = []
        #: every chunk length handed over, in order.
        self.chunks: list[int] = []
        self.first_data = asyncio.Event()

    async def attempt(self, number: int, offset: int) -> None:
        assert offset == len(self.buffer), (offset, len(self.buffer))
        self.events.append(("attempt", number, offset))

    async def restart(self) -> None:
        self.events.append(("restart",))
        self.buffer.clear()

    def total_size(self, size: int) -> None:
        self.events.append(("total_size", size))

    async def data(self, chunk: bytes) -> None:
        assert isinstance(chunk, bytes | bytearray | memoryview)
        self.buffer += chunk
        self.chunks.append(len(chunk))
        self.first_data.set()

    @property
    def received(self) -> int:
        """Bytes handed to the sink over the whole download (restarts included)."""
        return sum(self.chunks)

    @property
    def restarts(self) -> int:
        return sum(1 for event in self.events if event[0] == "restart")


class Sleeps:
    """An injected ``sleep`` that records the requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sink() -> CollectingSink:
    return CollectingSink()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
