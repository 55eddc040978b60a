"""Nothing leaks across many reconnects: tasks, file descriptors, memory.

The hub runs in its own process (``python -m nhlink.testing``), so this process holds only the
device. 1,000 times the connection is dropped (by a FaultProxy in front of the hub) and the
device reconnects and re-joins; afterwards it has the same number of tasks and open file
descriptors as before, and its RSS grew less than a bound. The numbers are printed
(``pytest -s``) for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import nhlink
from nhlink import NervesHubLink
from nhlink.testing.process import HubProcess
from nhlink.testing.proxy import FaultProxy
from tests.support import KEY, SECRET, device_options

RECONNECTS = int(os.environ.get("NHLINK_LEAK_RECONNECTS", "1000"))

#: Child processes import the same nhlink as this one (a checkout's or an installed wheel's).
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(next(iter(nhlink.__path__))).parent), os.environ.get("PYTHONPATH", "")]
    ),
}


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.fixture
def hub_port() -> Iterator[int]:
    """A FakeHub in a process of its own (its CPU and memory are not this process's); its port."""
    hub = HubProcess(KEY, SECRET, env=CHILD_ENV).start()
    try:
        yield hub.port
    finally:
        hub.stop()


async def cycle(link: NervesHubLink, proxy: FaultProxy) -> None:
    joins = link.status.joins
    proxy.drop_all()
    await link.wait_for(lambda s: s.joined and s.joins > joins, 10)


async def test_no_leaks_across_reconnects(hub_port: int) -> None:
    async with FaultProxy("127.0.0.1", hub_port) as proxy:
        options = device_options(
            proxy.port, backoff_initial=0.001, backoff_max=0.002, backoff_reset_after=30.0
        )
        async with NervesHubLink(**options) as link:
            await link.wait_joined(10)
            for _ in range(20):  # warm up: first-time imports, caches, allocator pools
                await cycle(link, proxy)
            gc.collect()
            tasks0, fds0, rss0 = len(asyncio.all_tasks()), fds(), rss_kib()
            for _ in range(RECONNECTS):
                await cycle(link, proxy)
            proxy.connections.clear()  # the proxy's own records are not the device's
            gc.collect()
            tasks1, fds1, rss1 = len(asyncio.all_tasks()), fds(), rss_kib()
            print(
                f"\n{RECONNECTS} reconnects: tasks {tasks0} -> {tasks1}, fds {fds0} -> {fds1}, "
                f"RSS {rss0} -> {rss1} KiB ({(rss1 - rss0) / 1024:+.1f} MiB)"
            )
            assert link.pending_replies == 0
            assert link.session.tracked_replies == 0
    assert tasks1 == tasks0
    assert fds1 == fds0
    assert rss1 - rss0 < 4 * 1024, f"RSS grew by {rss1 - rss0} KiB over {RECONNECTS} reconnects"
