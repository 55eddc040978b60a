"""Random faults between the device and the firmware server, with the real updaters.

A smaller number of seeded runs than tests/reliability (each starts a daemon): the download of a
signed .swu or RAUC bundle is cut, reset, stalled, slowed, corrupted or half-closed at random
points (FaultProxy), with or without part checksums, sometimes with a wrong checksum. Whatever
happens: a completed update installed exactly the image and switched the bootloader once; a
failed one switched nothing and left the running slot intact; an update that should succeed
does. NHLINK_UPDATER_SCENARIOS (default 6 per updater) sets the count.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from nhlink import NervesHubLink
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.proxy import Fault, FaultProxy, Kind
from nhlink.update.writers import RaucWriter, SwupdateWriter
from tests.support import NEW_META, parts, sha

from .conftest import MiB, RaucSystem, SwupdateSystem, image, in_thread, link_options, statuses

COUNT = int(os.environ.get("NHLINK_UPDATER_SCENARIOS", "6"))
KINDS: tuple[Kind, ...] = ("cut", "reset", "stall", "slow", "corrupt", "half_close")


def faults_for(rng: random.Random, size: int) -> list[tuple[int, Fault]]:
    chosen: list[tuple[int, Fault]] = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(KINDS)
        at = rng.randint(0, size)
        if kind == "stall":
            fault = Fault("stall", at=at, seconds=0.2)
        elif kind == "slow":
            fault = Fault("slow", at=at, rate=8 * MiB)
        else:
            fault = Fault(kind, at=at)
        chosen.append((rng.randint(0, 1), fault))
    return chosen


async def deliver_with_faults(
    seed: int,
    writer: RaucWriter | SwupdateWriter,
    name: str,
    blob: bytes,
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
) -> tuple[str, bool]:
    """Run one update of ``blob`` through a faulty proxy; the final status and whether it
    should have completed."""
    rng = random.Random(seed)
    with_parts = rng.random() < 0.7
    wrong = rng.random() < 0.15
    plan = faults_for(rng, len(blob))
    should_complete = not wrong and not any(f.kind == "corrupt" for _, f in plan)
    async with FaultProxy("127.0.0.1", fw.port, seed=seed, split=True) as proxy:
        for k in range(2):
            proxy.schedule(*(f for n, f in plan if n == k))
        url = fw.add(name, blob).replace(f":{fw.port}/", f":{proxy.port}/")
        async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
            await link.wait_joined(5)
            await hub.push_update(
                "gw-0001",
                firmware_url=url,
                size=len(blob),
                checksum=sha(blob + b"x") if wrong else sha(blob),
                partials_checksums=parts(blob) if with_parts else None,
                firmware_meta=dict(NEW_META),
            )
            await hub.wait_for(
                lambda: any(s in ("completed", "failed") for s in statuses(hub)), timeout=60
            )
    final = next(s for s in statuses(hub) if s in ("completed", "failed"))
    return final, should_complete


@pytest.mark.parametrize("seed", range(COUNT))
async def test_swupdate_under_faults(
    seed: int,
    swupdate_system: SwupdateSystem,
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
) -> None:
    payload = image(2 * MiB + 999, seed=100 + seed)
    swu = await in_thread(swupdate_system.swu, payload)
    writer = SwupdateWriter(socket_dir=swupdate_system.run_dir, selection="stable,copy2")
    final, should = await deliver_with_faults(seed, writer, "u.swu", swu, hub, fw, tmp_path)
    assert swupdate_system.slots["A"].read_bytes() == swupdate_system.slot_a_content
    if final == "completed":
        assert swupdate_system.slots["B"].read_bytes()[: len(payload)] == payload
        assert swupdate_system.boot_changes() == ["set-primary B"]
    else:
        assert swupdate_system.boot_changes() == []
        assert not should, f"seed {seed}: a valid update failed"


@pytest.mark.parametrize("seed", range(COUNT))
async def test_rauc_under_faults(
    seed: int,
    rauc_system: RaucSystem,
    hub: FakeHub,
    fw: FirmwareServer,
    tmp_path: Path,
) -> None:
    payload = image(2 * MiB + 999, seed=200 + seed)
    bundle = await in_thread(rauc_system.bundle, payload)
    writer = RaucWriter(
        spool_dir=rauc_system.spool, config=rauc_system.config, bus_address=rauc_system.bus_address
    )
    final, should = await deliver_with_faults(seed, writer, "u.raucb", bundle, hub, fw, tmp_path)
    if final == "completed":
        assert rauc_system.slots["B"].read_bytes()[: len(payload)] == payload
        assert rauc_system.changes() == ["set-state B bad", "set-primary B"]
    else:
        assert rauc_system.changes() == []
        assert not should, f"seed {seed}: a valid update failed"
    assert not writer.spool_path.exists()
