"""Seeded fault scenarios for the OTA path, and the invariants every run must keep.

A scenario is drawn from one integer seed (printed on failure, so a failure replays with
``NHLINK_SCENARIO_SEEDS=<seed>``): an image of 1–5 MiB, with or without part checksums, a right,
wrong or missing checksum, a writer (a spying FileWriter, or a command that installs on
end-of-input), and 1–5 faults on the device's connections to the firmware server and to the
hub, injected by :class:`~nhlink.testing.proxy.FaultProxy` (which also splits every write at
random sizes). :func:`run` plays it against FakeHub and FirmwareServer on 127.0.0.1 and returns
what happened; :func:`violations` checks it, by code:

* the server hears only the status vocabulary, in an order it accepts, and ``completed`` only
  when the bytes the writer finished with hash to ``checksum``;
* a writer never receives a byte that failed, or could still fail, verification where
  verification was possible; after ``failed``, ``fwup_abort`` ran once and the installed image
  is untouched;
* a resumed download re-fetches at most one part (1 MiB) plus the read buffer per interruption;
* the link is joined again within the backoff bound after the faults;
* an update that should succeed (a valid checksum, no corruption) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nhlink
from nhlink.protocol import wire
from nhlink.testing import FakeHub, Message
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.proxy import Direction, Fault, FaultProxy, Kind
from nhlink.update.download import DownloadOptions
from nhlink.update.writers import CommandWriter, FileWriter
from tests.support import NEW_META, MiB, device_options, new_hub, parts, sha

IDENT = "gw-0001"
OLD_IMAGE = b"the running firmware"
#: aiohttp's read buffer (DownloadOptions.chunk_size) may hold this much, lost on a cut.
READ_BUFFER = 2 * DownloadOptions().chunk_size + 256 * 1024
DOWNLOADS = DownloadOptions(
    retry_delay=0.01, retry_delay_max=0.05, idle_timeout=0.5, allow_http=True, max_disconnects=12
)
LINK = {
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "backoff_jitter": 0.5,
    "backoff_reset_after": 0.5,
    "heartbeat_interval": 0.5,
    "join_timeout": 2.0,
}
INSTALL_ON_EOF = 'cat > "$1.incoming" && mv "$1.incoming" "$1"'
FW_FAULTS: tuple[Kind, ...] = ("cut", "reset", "stall", "slow", "corrupt", "half_close")
LOSSES: tuple[Kind, ...] = ("cut", "reset")
DIRECTIONS: tuple[Direction, ...] = ("down", "up")


@dataclass(frozen=True)
class Scenario:
    seed: int
    size: int
    with_parts: bool
    checksum: str  # "right" | "wrong" | "none"
    writer: str  # "file" | "command"
    fw_faults: tuple[tuple[int, Fault], ...]  # (connection number, fault)
    hub_faults: tuple[tuple[int, Fault], ...]

    @classmethod
    def draw(cls, seed: int) -> Scenario:
        rng = random.Random(seed)
        size = rng.randint(1, 4) * MiB + rng.choice([0, rng.randint(1, MiB - 1)])
        with_parts = rng.random() < 0.75
        checksum = rng.choices(["right", "wrong", "none"], weights=[85, 10, 5])[0]
        writer = "command" if rng.random() < 0.2 else "file"
        fw_faults: list[tuple[int, Fault]] = []
        hub_faults: list[tuple[int, Fault]] = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.2:
                # The hub connection: dropped or reset (the device reconnects and re-joins).
                at = rng.randint(200, 4000)
                lost = Fault(rng.choice(LOSSES), at=at, direction=rng.choice(DIRECTIONS))
                hub_faults.append((rng.randint(0, 2), lost))
                continue
            kind = rng.choices(FW_FAULTS, weights=[30, 15, 15, 10, 10, 10])[0]
            at = rng.randint(0, size)
            if kind == "stall":
                fault = Fault("stall", at=at, seconds=rng.choice([0.1, 0.7]))
            elif kind == "slow":
                fault = Fault("slow", at=at, rate=rng.randint(4, 16) * MiB)
            else:
                fault = Fault(kind, at=at)
            fw_faults.append((rng.randint(0, 2), fault))
        return cls(seed, size, with_parts, checksum, writer, tuple(fw_faults), tuple(hub_faults))

    @property
    def corrupting(self) -> bool:
        return any(f.kind == "corrupt" for _, f in self.fw_faults)

    @property
    def should_complete(self) -> bool:
        verifiable = self.checksum == "right" or (self.checksum == "none" and self.with_parts)
        return verifiable and not self.corrupting


class SpyFileWriter(FileWriter):
    """A FileWriter that records every byte, sync, finish and abort (thread-safe)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lock = threading.Lock()
        self.received = bytearray()
        self.finished = 0
        self.aborted = 0
        self.begins = 0

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
        super().fwup_begin(size, firmware_meta, offset)
        with self.lock:
            self.begins += 1
            del self.received[offset:]

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        super().fwup_chunk(data)
        with self.lock:
            self.received += data

    def fwup_finish(self) -> None:
        self.finished += 1
        super().fwup_finish()

    def fwup_abort(self) -> None:
        self.aborted += 1
        super().fwup_abort()


@dataclass
class Outcome:
    scenario: Scenario
    data: bytes
    checksum_sent: str | None
    status: str  # the manager's own verdict: "completed" | "failed"
    reason: str
    heard: list[str]  # statuses the hub received, in order
    target: bytes | None  # what is installed afterwards
    received: bytes | None  # what a spying writer was given (None for a command)
    finished: int
    aborted: int
    began: bool
    served: int  # bytes the device was sent by the firmware server (headers included)
    interruptions: int
    rejoined_in: float | None  # seconds from the last fault until joined again
    rejoin_bound: float
    notes: list[str] = field(default_factory=list)


async def run(scenario: Scenario, tmp_path: Path) -> Outcome:
    """Play ``scenario``; see the module docstring."""
    rng = random.Random(scenario.seed ^ 0x5EED)
    data = rng.randbytes(scenario.size)
    target = tmp_path / "installed.img"
    target.write_bytes(OLD_IMAGE)
    writer: Any
    if scenario.writer == "file":
        writer = SpyFileWriter(target)
    else:
        writer = CommandWriter(["sh", "-c", INSTALL_ON_EOF, "sh", str(target)])
    checksum = {"right": sha(data).upper(), "wrong": sha(data + b"x").upper(), "none": None}[
        scenario.checksum
    ]
    async with (
        new_hub() as hub,
        FirmwareServer() as files,
        FaultProxy("127.0.0.1", files.port, seed=scenario.seed, split=True) as fw_proxy,
        FaultProxy("127.0.0.1", hub.port, seed=scenario.seed + 1, split=True) as hub_proxy,
    ):
        _plan(fw_proxy, scenario.fw_faults)
        _plan(hub_proxy, scenario.hub_faults)
        url = files.add("fw.bin", data).replace(f":{files.port}/", f":{fw_proxy.port}/")
        options = device_options(
            hub_proxy.port, IDENT, tmp_path, download_options=DOWNLOADS, **LINK
        )
        link = nhlink.NervesHubLink(fwup_writer=writer, **options)
        await link.start()
        try:
            await _push_when_joined(link, hub, url, data, checksum, scenario.with_parts)
            status, reason = await _outcome(link)
            last_fault = time.monotonic()
            await link.wait_joined(30)
            rejoined_in = time.monotonic() - last_fault
            verdict = wire.STATUS_COMPLETED if status == "completed" else wire.STATUS_FAILED
            with contextlib.suppress(TimeoutError):  # (the checker reports a missing verdict)
                await hub.wait_for_message(
                    IDENT,
                    topic="device",
                    event=wire.EVENT_STATUS_UPDATE,
                    predicate=lambda m: m.payload.get("status") == verdict,
                    timeout=10,
                )
        finally:
            await link.stop()
        heard = [
            m.payload.get("status")
            for m in hub.devices[IDENT].messages_for("device", wire.EVENT_STATUS_UPDATE)
        ]
        # What reached the device (the server may have sent more into a stalled proxy's socket).
        served = sum(c.down for c in fw_proxy.connections)
        interruptions = sum(1 for c in fw_proxy.connections if c.outcome in ("cut", "reset")) + sum(
            1 for r in files.requests_for("fw.bin") if r.outcome in ("cut", "disconnected")
        )
    spy = writer if isinstance(writer, SpyFileWriter) else None
    return Outcome(
        scenario=scenario,
        data=data,
        checksum_sent=checksum,
        status=status,
        reason=reason,
        heard=heard,
        target=target.read_bytes() if target.exists() else None,
        received=bytes(spy.received) if spy else None,
        finished=spy.finished if spy else 0,
        aborted=spy.aborted if spy else 0,
        began=bool(spy.begins) if spy else True,
        served=served,
        interruptions=interruptions,
        rejoined_in=rejoined_in,
        rejoin_bound=LINK["backoff_max"] * (1 + LINK["backoff_jitter"]) + 5.0,
    )


def _plan(proxy: FaultProxy, faults: tuple[tuple[int, Fault], ...]) -> None:
    """Schedule ``(connection, fault)`` pairs: connection k gets its faults, others none."""
    if not faults:
        return
    last = max(k for k, _ in faults)
    for k in range(last + 1):
        proxy.schedule(*(f for n, f in faults if n == k))


async def _push_when_joined(
    link: nhlink.NervesHubLink,
    hub: FakeHub,
    url: str,
    data: bytes,
    checksum: str | None,
    with_parts: bool,
) -> None:
    """Push the update once the device is joined; again if a fault ate the push (a cut
    socket): a ``scripts/run`` answered after the push proves the device processed it."""

    def taken() -> bool:
        return link.updates.taken > 0

    for attempt in range(20):
        await link.wait_joined(30)
        if taken():
            return
        await hub.push_update(
            IDENT,
            firmware_url=url,
            size=len(data),
            checksum=checksum,
            partials_checksums=parts(data) if with_parts else None,
            firmware_meta=dict(NEW_META),
        )
        ref = f"sync-{attempt}"
        if not await hub.run_script(IDENT, "sync", ref=ref):
            continue

        def answered(message: Message, ref: str = ref) -> bool:
            return isinstance(message.payload, dict) and message.payload.get("ref") == ref

        try:
            await hub.wait_for_message(
                IDENT, topic="device", event="scripts/run", predicate=answered, timeout=3
            )
        except TimeoutError:
            continue
        if taken():
            return
    raise AssertionError("the update never reached the device")


async def _outcome(link: nhlink.NervesHubLink, timeout: float = 60.0) -> tuple[str, str]:
    """Wait for the update to end; the manager's own verdict and reason."""
    await asyncio.wait_for(link.updates.wait_idle(), timeout)
    if link.updates.completed:
        return "completed", ""
    return "failed", str(link.updates.last_error)


_ORDER = {
    wire.STATUS_RECEIVED: 0,
    wire.STATUS_STARTED: 1,
    wire.STATUS_DOWNLOADING: 1,
    wire.STATUS_UPDATING: 2,
    wire.STATUS_COMPLETED: 3,
    wire.STATUS_FAILED: 3,
}


def violations(o: Outcome) -> list[str]:
    """Every invariant ``o`` breaks, in words (empty: the run was correct)."""
    found: list[str] = []
    s = o.scenario
    # -- what the server heard
    for status in o.heard:
        if status not in wire.STATUSES:
            found.append(f"status outside the server's vocabulary: {status!r}")
    ranks = [_ORDER.get(h, 9) for h in o.heard if isinstance(h, str)]
    if ranks != sorted(ranks):
        found.append(f"statuses out of order: {o.heard}")
    terminal = [h for h in o.heard if h in (wire.STATUS_COMPLETED, wire.STATUS_FAILED)]
    if len(terminal) > 1:
        found.append(f"more than one final status: {o.heard}")
    if wire.STATUS_COMPLETED in o.heard and o.status != "completed":
        found.append("the server heard completed but the update did not complete")
    if wire.STATUS_RECEIVED in o.heard and o.heard[0] != wire.STATUS_RECEIVED:
        found.append(f"received is not the first status: {o.heard}")
    # The verdict reaches the server, if need be after a reconnect.
    verdict = {"completed": wire.STATUS_COMPLETED, "failed": wire.STATUS_FAILED}[o.status]
    if verdict not in o.heard:
        found.append(f"the server never heard {verdict}: {o.heard}")
    # -- completed means the installed bytes are the vouched-for image
    if o.status == "completed":
        if o.target != o.data:
            found.append("completed, but the installed image is not the served image")
        if o.checksum_sent is not None and (
            o.target is None or hashlib.sha256(o.target).hexdigest().upper() != o.checksum_sent
        ):
            found.append("completed, but the installed image does not hash to checksum")
        if o.received is not None and (o.finished, o.aborted) != (1, 0):
            found.append(f"completed with finish x{o.finished}, abort x{o.aborted}")
    else:
        if o.target != OLD_IMAGE:
            found.append("failed, but the installed image changed")
        aborts = 1 if o.began else 0  # refused before fwup_begin: nothing to abort
        if o.received is not None and (o.finished, o.aborted) != (0, aborts):
            found.append(f"failed with finish x{o.finished}, abort x{o.aborted} (want 0, {aborts})")
    # -- the gate: nothing unverified reached the writer
    if o.received is not None:
        got = o.received
        if s.with_parts and s.checksum != "wrong":
            # Every byte was checked against its part before the writer got it.
            if got != o.data[: len(got)]:
                found.append("the writer received bytes that are not the image's")
            if o.status != "completed" and len(got) % MiB:
                found.append(f"the writer holds {len(got)} bytes: not whole verified parts")
        if o.status != "completed" and len(got) >= len(o.data):
            found.append("a failed update left the writer with a complete image")
    # -- liveness and resume cost
    if s.should_complete and o.status != "completed":
        found.append(f"a valid update failed: {o.reason}")
    budget = len(o.data) + (o.interruptions + 1) * (MiB + READ_BUFFER)
    if o.status == "completed" and o.served > budget:
        found.append(f"fetched {o.served} bytes for a {len(o.data)}-byte image")
    if o.rejoined_in is None or o.rejoined_in > o.rejoin_bound:
        found.append(f"not joined again within {o.rejoin_bound:.1f} s")
    return found
