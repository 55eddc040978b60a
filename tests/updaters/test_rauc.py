"""RaucWriter against the real RAUC 1.8 service: plain bundles, file-backed A/B slots, a custom
bootloader backend that records every call. End to end from an ``update`` pushed by FakeHub."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nhlink import NervesHubLink, WriterError
from nhlink.testing import FakeHub
from nhlink.testing.firmware import Faults, FirmwareServer
from nhlink.update.writers import RaucWriter
from nhlink.update.writers.rauc import RaucSlotState

from .conftest import (
    NEW_META,
    MiB,
    RaucSystem,
    image,
    in_thread,
    link_options,
    progress_values,
    push,
    statuses,
    tamper,
    wait_status,
)


def writer_for(system: RaucSystem, **extra: Any) -> RaucWriter:
    return RaucWriter(
        spool_dir=system.spool,
        config=system.config,
        bus_address=system.bus_address,
        **extra,
    )


def slot_b_holds(system: RaucSystem, payload: bytes) -> bool:
    return system.slots["B"].read_bytes()[: len(payload)] == payload


async def test_good_install_then_reboot_and_confirm(
    rauc_system: RaucSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    payload = image(2 * MiB + 4321)
    bundle = await in_thread(rauc_system.bundle, payload)
    writer = writer_for(rauc_system)
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        params = hub.devices["gw-0001"].join_params
        assert params is not None and params["meta"]["firmware_auto_revert_detected"] is False
        await push(hub, fw.add("update.raucb", bundle), bundle)
        await wait_status(hub, "completed")
        # RAUC now names B as last activated while A runs: a pending reboot, not a fallback,
        # also when the socket reconnects before the reboot.
        record = hub.devices["gw-0001"]
        await hub.disconnect("gw-0001", code=1012)
        await hub.wait_for(lambda: record.joins >= 2)
        assert record.join_params is not None
        assert record.join_params["meta"]["firmware_auto_revert_detected"] is False
    assert statuses(hub) == ["received", "started", "downloading", "updating", "completed"]
    # Slot B holds the image, A is untouched, B is primary; RAUC marked B bad while writing.
    assert slot_b_holds(rauc_system, payload)
    assert rauc_system.slots["A"].read_bytes() == rauc_system.slot_a_content
    assert rauc_system.changes() == ["set-state B bad", "set-primary B"]
    status = await in_thread(rauc_system.status)
    assert status["boot_primary"] == "rootfs.1"
    # RAUC's own install progress reaches the server as "updating" progress.
    updating = progress_values(hub, "updating")
    assert updating == sorted(updating) and updating[-1] == 100
    assert len(updating) >= 2 and updating[0] < 100  # throttled to one report per 0.5 s
    assert not writer.spool_path.exists()

    # Reboot into B: the new firmware starts unvalidated, then confirm_update() marks B good.
    await in_thread(rauc_system.reboot, "B")
    writer = writer_for(rauc_system)
    async with NervesHubLink(
        fwup_writer=writer, **link_options(hub, tmp_path, firmware_meta=NEW_META)
    ) as link:
        await hub.wait_for(lambda: record.joins >= 3)
        assert record.join_params is not None
        meta = record.join_params["meta"]
        assert meta["firmware_validated"] is False
        assert meta["firmware_auto_revert_detected"] is False
        await link.confirm_update()
        await hub.wait_for_message(
            "gw-0001", topic="device", event="firmware_validated", new_only=False
        )
    assert rauc_system.changes()[-1] == "set-state B good"
    writer = writer_for(rauc_system)
    assert writer.is_confirmed() is None  # RAUC says "good"; nhlink's own record decides
    async with NervesHubLink(
        fwup_writer=writer, **link_options(hub, tmp_path, firmware_meta=NEW_META)
    ):
        await hub.wait_for(lambda: record.joins >= 4)
        assert record.join_params["meta"]["firmware_validated"] is True


async def test_fallback_after_reboot_is_reported(
    rauc_system: RaucSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    payload = image(MiB)
    bundle = await in_thread(rauc_system.bundle, payload)
    async with NervesHubLink(
        fwup_writer=writer_for(rauc_system), **link_options(hub, tmp_path)
    ) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("update.raucb", bundle), bundle)
        await wait_status(hub, "completed")
    # The bootloader gave up on B and booted A again.
    await in_thread(rauc_system.reboot, "A")
    writer = writer_for(rauc_system)
    state = await writer.refresh_slot_state()
    assert state is not None
    assert (state.booted, state.last_activated, state.fell_back) == ("rootfs.0", "rootfs.1", True)
    record = hub.devices["gw-0001"]
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)):
        await hub.wait_for(lambda: record.joins >= 2)
        assert record.join_params is not None
        assert record.join_params["meta"]["firmware_auto_revert_detected"] is True


REJECTIONS = {
    # case: (how the bundle is made, precheck with `rauc info`, words from RAUC's reason)
    "tampered": ("tampered", True, "signature verification failed"),
    "tampered-service-only": ("tampered", False, "signature verification failed"),
    "other-ca": ("other-ca", True, "unable to get local issuer certificate"),
    "incompatible": ("incompatible", True, "Compatible mismatch"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejected_bundles_fail_with_raucs_reason(
    rauc_system: RaucSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path, case: str
) -> None:
    kind, precheck, words = REJECTIONS[case]
    payload = image(MiB + 17)
    if kind == "other-ca":
        bundle = await in_thread(lambda: rauc_system.bundle(payload, signer=rauc_system.pki.other))
    elif kind == "incompatible":
        bundle = await in_thread(lambda: rauc_system.bundle(payload, compatible="other-board"))
    else:
        good = await in_thread(rauc_system.bundle, payload)
        bundle = tamper(good, len(good) // 2)
    writer = writer_for(rauc_system, check_bundle=precheck)
    async with NervesHubLink(fwup_writer=writer, **link_options(hub, tmp_path)) as link:
        await link.wait_joined(5)
        await push(hub, fw.add("update.raucb", bundle), bundle)
        payload_failed = await wait_status(hub, "failed")
        assert link.status.joined
    assert words in payload_failed["reason"], payload_failed["reason"]
    assert "RAUC" in payload_failed["reason"]
    # Boot state untouched: nothing set, B still empty, A intact, spool gone.
    assert rauc_system.changes() == []
    assert rauc_system.slots["B"].read_bytes() == b"\0" * len(rauc_system.slots["B"].read_bytes())
    assert rauc_system.slots["A"].read_bytes() == rauc_system.slot_a_content
    assert not writer.spool_path.exists()
    status = await in_thread(rauc_system.status)
    assert status["boot_primary"] == "rootfs.0"


async def test_download_cut_and_resumed_installs_once(
    rauc_system: RaucSystem, hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    payload = image(3 * MiB)
    bundle = await in_thread(rauc_system.bundle, payload)
    url = fw.add("update.raucb", bundle, faults=Faults(cut_after=MiB + 100, cut_times=1))
    async with NervesHubLink(
        fwup_writer=writer_for(rauc_system),
        **link_options(hub, tmp_path),
    ) as link:
        await link.wait_joined(5)
        await push(hub, url, bundle)
        await wait_status(hub, "completed")
    requests = fw.requests_for("update.raucb")
    assert len(requests) == 2 and requests[1].range is not None
    assert slot_b_holds(rauc_system, payload)
    assert rauc_system.changes() == ["set-state B bad", "set-primary B"]  # one install
    assert statuses(hub).count("completed") == 1


async def test_spool_space_checked_up_front(tmp_path: Path) -> None:
    writer = RaucWriter(spool_dir=tmp_path / "spool", rauc="/nonexistent/rauc")
    with pytest.raises(WriterError, match=r"not enough space .* to spool the RAUC bundle"):
        writer.fwup_begin(1 << 60, {})
    assert not writer.spool_path.exists()


async def test_resume_needs_the_spooled_prefix(tmp_path: Path) -> None:
    writer = RaucWriter(spool_dir=tmp_path, rauc="/nonexistent/rauc")
    writer.fwup_begin(10, {})
    writer.fwup_chunk(b"12345")
    writer.fwup_abort()
    with pytest.raises(WriterError, match="cannot resume"):
        writer.fwup_begin(10, {}, offset=5)
    writer.fwup_begin(10, {})
    writer.fwup_chunk(b"123456")
    writer._close()  # a crash: the spool file stays
    writer.fwup_begin(10, {}, offset=5)
    writer.fwup_chunk(b"ABCDE")
    writer._close()
    assert writer.spool_path.read_bytes() == b"12345ABCDE"


async def test_unreachable_rauc_reports_nothing(tmp_path: Path) -> None:
    writer = RaucWriter(spool_dir=tmp_path, rauc="/nonexistent/rauc")
    assert writer.is_confirmed() is None
    assert writer.auto_revert_detected() is False
    with pytest.raises(WriterError, match="cannot start"):
        await writer.fwup_confirm()


def _status(booted: str, activated: dict[str, str], boot_status: str = "good") -> dict[str, Any]:
    slots = []
    for name, bootname in (("rootfs.0", "A"), ("rootfs.1", "B")):
        info: dict[str, Any] = {
            "class": "rootfs",
            "bootname": bootname,
            "state": "booted" if bootname == booted else "inactive",
            "boot_status": boot_status if bootname == booted else "good",
            "slot_status": {"bundle": {"compatible": None}},
        }
        if name in activated:
            info["slot_status"]["activated"] = {"timestamp": activated[name], "count": 1}
        slots.append({name: info})
    slots.append(
        {
            "appfs.0": {
                "class": "appfs",
                "state": "inactive",
                "slot_status": {"activated": {"timestamp": "2099-01-01T00:00:00Z", "count": 9}},
            }
        }
    )
    return {"booted": booted, "boot_primary": "rootfs.1", "slots": slots}


@pytest.mark.parametrize(
    ("booted", "activated", "fell_back"),
    [
        ("A", {}, False),  # never installed by RAUC
        ("B", {"rootfs.1": "2026-01-02T00:00:00Z"}, False),  # booted what was installed
        ("A", {"rootfs.1": "2026-01-02T00:00:00Z"}, True),  # installed B, running A
        (
            "A",
            {"rootfs.0": "2026-01-03T00:00:00Z", "rootfs.1": "2026-01-02T00:00:00Z"},
            False,
        ),  # installed B, then A again
    ],
)
def test_slot_state_parse(booted: str, activated: dict[str, str], fell_back: bool) -> None:
    state = RaucSlotState.parse(_status(booted, activated))
    assert state.booted == ("rootfs.0" if booted == "A" else "rootfs.1")
    assert state.fell_back is fell_back
    assert RaucSlotState.parse(_status("B", {}, boot_status="bad")).booted_boot_status == "bad"


def test_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from .conftest import rauc_unavailable, swupdate_unavailable

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (rauc_unavailable() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os.path, "exists", lambda path: path != "/dev/loop-control")
    assert "no loop devices" in (rauc_unavailable() or "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "missing rauc" in (rauc_unavailable() or "")
    assert "missing swupdate" in (swupdate_unavailable() or "")


# -- the spool file: private, exclusive, never through a link, the bytes that were verified ------


def test_spool_lives_in_a_private_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o1777)  # a world-writable spool_dir such as /var/tmp
    writer = RaucWriter(spool_dir=tmp_path, rauc="/nonexistent/rauc")
    writer.fwup_begin(10, {})
    private = writer.spool_path.parent
    assert private.parent == tmp_path
    st = os.lstat(private)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(writer.spool_path).st_mode) == 0o600
    writer.fwup_abort()
    assert not writer.spool_path.exists()


def test_planted_links_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    # Another user's "private" directory, or a link to somewhere else: not used.
    wanted = spool_dir / f"nhlink-rauc-{os.geteuid()}"
    wanted.symlink_to(tmp_path)
    writer = RaucWriter(spool_dir=spool_dir, rauc="/nonexistent/rauc")
    writer.fwup_begin(10, {})
    writer.fwup_chunk(b"bundle")
    assert writer.spool_path.parent != wanted
    assert writer.spool_path.parent.parent == spool_dir
    assert stat.S_IMODE(os.lstat(writer.spool_path.parent).st_mode) == 0o700
    writer.fwup_abort()
    # A link planted as the spool file itself: a fresh spool replaces the link (the target
    # is never opened), a resume refuses it.
    writer = RaucWriter(spool_dir=tmp_path / "spool2", rauc="/nonexistent/rauc")
    writer.fwup_begin(10, {})
    writer._close()
    writer.spool_path.unlink()
    writer.spool_path.symlink_to(victim)
    with pytest.raises(WriterError, match="spool file"):
        writer.fwup_begin(10, {}, offset=4)
    writer.fwup_begin(10, {})
    writer.fwup_chunk(b"bundle")
    writer._close()
    assert not writer.spool_path.is_symlink()
    assert victim.read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_someone_elses_directory_is_not_used(tmp_path: Path) -> None:
    wanted = tmp_path / f"nhlink-rauc-{os.geteuid()}"
    wanted.mkdir(mode=0o700)
    os.chown(wanted, 65534, 65534)  # nobody's
    writer = RaucWriter(spool_dir=tmp_path, rauc="/nonexistent/rauc")
    writer.fwup_begin(10, {})
    assert writer.spool_path.parent != wanted
    writer.fwup_abort()


async def test_a_swapped_spool_file_is_not_installed(tmp_path: Path) -> None:
    writer = RaucWriter(spool_dir=tmp_path, rauc="/nonexistent/rauc", check_bundle=False)
    writer.fwup_begin(6, {})
    writer.fwup_chunk(b"bundle")
    path = writer.spool_path
    replacement = path.with_name("other")
    replacement.write_bytes(b"evil!!")
    os.replace(replacement, path)  # after the verified bytes were written
    with pytest.raises(WriterError, match="replaced or changed"):
        await writer.fwup_finish()
    assert not path.exists()
