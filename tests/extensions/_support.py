"""Shared helpers for the extensions tests: FakeHub/link setup, a controllable clock, spies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, TypeVar

from nhlink import NervesHubLink
from nhlink.extensions import Extension, ExtensionContext, ExtensionReply
from nhlink.testing import FakeHub, Message
from tests.support import KEY, META, SECRET, device_options

__all__ = ["KEY", "META", "SECRET"]

T = TypeVar("T")

DEVICE = "gw-ext-0001"
#: Extension re-joins after 10 ms instead of 1 s.
REJOIN_DELAYS = (0.01,)


def link_options(port: int = 443, identifier: str = DEVICE, **extra: Any) -> dict[str, Any]:
    return device_options(port, identifier, **extra)


def make_hub(extensions: Collection[str] = (), **options: Any) -> FakeHub:
    return FakeHub(shared_secrets={KEY: SECRET}, extensions=extensions, **options)


@contextlib.asynccontextmanager
async def running_link(
    hub: FakeHub, extensions: dict[str, Any], **options: Any
) -> AsyncIterator[NervesHubLink]:
    """A started link to ``hub`` with fast extension re-joins; stopped on exit."""
    link = NervesHubLink(extensions=extensions, **link_options(hub.port, **options))
    link.extensions.rejoin_delays = REJOIN_DELAYS
    await link.start()
    try:
        yield link
    finally:
        await link.stop()


@contextlib.asynccontextmanager
async def hub_and_link(
    hub_extensions: Collection[str], extensions: dict[str, Any], **options: Any
) -> AsyncIterator[tuple[FakeHub, NervesHubLink]]:
    """A FakeHub whose "product" enables ``hub_extensions`` and a link to it (see running_link)."""
    async with make_hub(hub_extensions) as hub, running_link(hub, extensions, **options) as link:
        yield hub, link


async def wait_ext(
    hub: FakeHub,
    event: str,
    *,
    predicate: Callable[[Message], bool] | None = None,
    new_only: bool = False,
    timeout: float = 5.0,
) -> Message:
    """The first ``extensions`` message ``event`` from the test device."""
    return await hub.wait_for_message(
        DEVICE,
        topic="extensions",
        event=event,
        predicate=predicate,
        new_only=new_only,
        timeout=timeout,
    )


async def wait_count(hub: FakeHub, event: str, count: int, timeout: float = 5.0) -> list[Message]:
    """Wait until the device has sent ``event`` on ``extensions`` at least ``count`` times."""

    def enough() -> list[Message] | None:
        record = hub.devices.get(DEVICE)
        found = record.messages_for("extensions", event) if record is not None else []
        return found if len(found) >= count else None

    return await hub.wait_for(enough, timeout=timeout, what=f"{count} x {event}")


async def sync_point(hub: FakeHub, ref: str) -> None:
    """Make the device answer a ``scripts/run`` and wait for the answer.

    The link dispatches server messages in order, so every push the hub sent before is
    processed by the time this returns (work they queued for extensions may still be running).
    """
    assert await hub.run_script(DEVICE, "sync", ref=ref)
    await hub.wait_for_message(
        DEVICE,
        topic="device",
        event="scripts/run",
        predicate=lambda m: isinstance(m.payload, dict) and m.payload.get("ref") == ref,
    )


async def wait_event(event: asyncio.Event, timeout: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


class Spy(Extension):
    """An extension that records its calls and can be made to fail or block."""

    def __init__(
        self,
        *,
        version: str = "0.0.1",
        fail_start: BaseException | None = None,
        fail_event: BaseException | None = None,
        reply: ExtensionReply | None = None,
    ) -> None:
        self.version = version
        self.fail_start = fail_start
        self.fail_event = fail_event
        self.reply = reply
        self.starts = 0
        self.stops = 0
        self.events: list[tuple[str, Any]] = []
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.got_event = asyncio.Event()
        self.block: asyncio.Event | None = None  # handle_event waits for it when set
        self.contexts: list[ExtensionContext] = []

    async def start(self, context: ExtensionContext) -> None:
        self.contexts.append(context)
        if self.fail_start is not None:
            raise self.fail_start
        self.starts += 1
        self.started.set()

    async def stop(self) -> None:
        self.stops += 1
        self.stopped.set()

    async def handle_event(self, event: str, payload: Any) -> ExtensionReply | None:
        self.events.append((event, payload))
        self.got_event.set()
        if self.block is not None:
            await self.block.wait()
        if self.fail_event is not None:
            raise self.fail_event
        return self.reply


class FakeClock:
    """A clock that moves only when told, and a ``sleep`` that wakes when it has moved enough.

    Pass ``clock`` as the clock and ``clock.sleep`` as the sleep function; ``advance`` moves
    time and wakes due sleepers; ``wait_sleeping`` returns once someone sleeps on it.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + delay, fut)
        self._sleepers.append(entry)
        self._notify()
        try:
            await fut
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, fut in self._sleepers:
            if deadline <= self.now + 1e-9 and not fut.done():
                fut.set_result(None)
        self._notify()

    @property
    def sleeping(self) -> int:
        return sum(1 for _, fut in self._sleepers if not fut.done())

    async def wait_sleeping(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.sleeping:
                changed = self._changed
                await changed.wait()
