"""``nhlink fleet`` at small N: real links against a real FakeHub on 127.0.0.1.

The simulator's scenarios (ramp, updates into null/hash writers, update failures, injected
disconnects and reboots, mTLS with certificates from ``make-certs``, shared TLS context) run in
process; the command line (JSON summary, shards in separate processes, merge) runs as
subprocesses against a FakeHub in its own process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nhlink.errors import ConfigError
from nhlink.fleet.sim import Fleet, FleetError, FleetOptions, check_fd_limit
from nhlink.testing import FakeHub
from nhlink.testing.certs import create_pki
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.process import HubProcess
from tests.support import KEY, SECRET, new_hub

FIRMWARE = {
    "product": "sim",
    "architecture": "x86_64",
    "platform": "sim",
    "version": "1.0.0",
    "uuid": "11111111-1111-4111-8111-111111111111",
}


def options(fake: FakeHub, devices: int, **extra: Any) -> FleetOptions:
    values: dict[str, Any] = {
        "hub": f"ws://127.0.0.1:{fake.port}/socket/websocket",
        "devices": devices,
        "prefix": "sim",
        "product_key": KEY,
        "product_secret": SECRET,
        "ramp": 500.0,
        "firmware": FIRMWARE,
        "seed": 7,
        "http_firmware": True,
        **extra,
    }
    return FleetOptions(**values)


async def test_devices_join_with_their_identities_and_firmware() -> None:
    async with new_hub() as hub:
        fleet = Fleet(options(hub, 25))
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 25, timeout=20)
        link = fleet.devices[0].link
        assert link is not None
        # The simulator's own per-device parts carry no instance dict (x 10,000 devices).
        for part in (fleet.devices[0], link.client, link.writer):
            assert not hasattr(part, "__dict__"), type(part).__name__
        fleet.stop()
        summary = await run
    assert sorted(hub.devices) == [f"sim-{n:05d}" for n in range(1, 26)]
    for record in hub.devices.values():
        assert record.join_params is not None
        assert record.join_params["nerves_fw_uuid"] == FIRMWARE["uuid"]
        assert record.auth == "product_key"
    assert summary["devices"] == 25
    assert summary["identities"] == ["sim-00001", "sim-00025"]
    assert summary["counters"]["joins"] == 25
    assert summary["final"]["joined"] == 25
    assert summary["join_latency"]["count"] == 25
    assert 0 < summary["join_latency"]["p50_ms"] <= summary["join_latency"]["p99_ms"]
    assert summary["errors"] == {}
    process = summary["process"]
    # Resident growth, start to end, per device. In a shared test process the figure can be
    # negative (memory freed by earlier tests goes back to the OS meanwhile), so only its
    # presence and type are checked here; benchmarks/fleet.py measures it in fresh processes.
    assert process["rss_end_kib"] > 0 and isinstance(process["kib_per_device"], float)
    assert 0 < process["all_joined_after_s"] <= summary["wall_s"]
    # Stopping the fleet left no device connected.
    await hub.wait_for(lambda: not any(r.connected for r in hub.devices.values()), timeout=10)


@pytest.mark.parametrize("writer", ["null", "hash"])
async def test_updates_complete_and_devices_reboot_into_the_new_firmware(writer: str) -> None:
    image = os.urandom(300_000)
    new = {**FIRMWARE, "uuid": "22222222-2222-4222-8222-222222222222", "version": "2.0.0"}
    async with new_hub() as hub, FirmwareServer() as files:
        url = files.add("fw.bin", image)
        # Quick heartbeats: a device reboots once a heartbeat reply confirmed `completed`.
        fleet = Fleet(options(hub, 6, writer=writer, link_speed=2_000_000, heartbeat_interval=0.3))
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 6, timeout=20)
        for ident in ("sim-00002", "sim-00005"):
            await hub.push_update(
                ident,
                url,
                size=len(image),
                checksum=hashlib.sha256(image).hexdigest(),
                firmware_meta=new,
            )
        # Rebooted: joined again, announcing the new firmware.
        await hub.wait_for(
            lambda: all(
                (hub.devices[i].join_params or {}).get("nerves_fw_uuid") == new["uuid"]
                for i in ("sim-00002", "sim-00005")
            ),
            timeout=30,
        )
        fleet.stop()
        summary = await run
    assert summary["counters"]["updates_completed"] == 2
    assert summary["counters"]["reboots_update"] == 2
    assert "updates_failed" not in summary["counters"]
    for ident in ("sim-00002", "sim-00005"):
        assert "completed" in hub.devices[ident].statuses
    assert (hub.devices["sim-00001"].join_params or {})["nerves_fw_uuid"] == FIRMWARE["uuid"]


async def test_update_failures_at_a_rate_are_reported_failed() -> None:
    image = os.urandom(100_000)
    async with new_hub() as hub, FirmwareServer() as files:
        url = files.add("fw.bin", image)
        fleet = Fleet(options(hub, 3, update_failure_rate=1.0))
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 3, timeout=20)
        await hub.push_update(
            "sim-00001", url, size=len(image), checksum=hashlib.sha256(image).hexdigest()
        )
        await hub.wait_for(lambda: "failed" in hub.devices["sim-00001"].statuses, timeout=20)
        fleet.stop()
        summary = await run
    assert summary["counters"]["updates_failed"] == 1
    assert "updates_completed" not in summary["counters"]
    assert "completed" not in hub.devices["sim-00001"].statuses
    assert summary["final"]["joined"] == 3  # a failed update does not take a device down


async def test_injected_disconnects_and_reboots_come_back() -> None:
    async with new_hub() as hub:
        fleet = Fleet(options(hub, 8, disconnect_rate=40.0, reboot_rate=20.0))
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(
            lambda: (
                fleet.counters["injected_disconnects"] >= 5
                and fleet.counters["injected_reboots"] >= 3
            ),
            timeout=20,
        )
        await hub.wait_for(
            lambda: sum(r.connections for r in hub.devices.values()) >= 8 + 6, timeout=20
        )
        fleet.stop()
        summary = await run
    counters = summary["counters"]
    assert counters["joins"] > 8  # devices rejoined after being knocked off
    assert counters["disconnects"] >= 1
    assert counters["reboots_injected"] >= 3
    assert counters["connect_attempts"] >= counters["joins"]


async def test_mtls_devices_with_certificates_from_make_certs(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    certs = tmp_path / "certs"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "nhlink",
            "fleet",
            "make-certs",
            "--ca-cert",
            str(pki.ca.cert),
            "--ca-key",
            str(pki.ca.key),
            "--devices",
            "4",
            "--prefix",
            "sim",
            "--out",
            str(certs),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        f"sim-{n:05d}.{ext}" for n in range(1, 5) for ext in ("crt", "key")
    )
    assert (certs / "sim-00001.key").stat().st_mode & 0o077 == 0
    async with FakeHub(tls=pki.server_context()) as hub:
        fleet = Fleet(
            options(
                hub,
                4,
                hub=f"wss://127.0.0.1:{hub.port}/socket/websocket",
                product_key=None,
                product_secret=None,
                certs=certs,
                ca_file=pki.ca.cert,
            )
        )
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 4, timeout=30)
        fleet.stop()
        summary = await run
    assert {r.auth for r in hub.devices.values()} == {"certificate"}
    assert sorted(hub.devices) == [f"sim-{n:05d}" for n in range(1, 5)]
    assert summary["auth"] == "certificate"


async def test_shared_secret_devices_over_wss_share_one_tls_context(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    async with new_hub(tls=pki.server_context(mtls=False)) as hub:
        fleet = Fleet(
            options(hub, 5, hub=f"wss://127.0.0.1:{hub.port}/socket/websocket", ca_file=pki.ca.cert)
        )
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 5, timeout=30)
        contexts = {id(d.link._ssl_context) for d in fleet.devices if d.link is not None}
        fleet.stop()
        await run
    assert len(contexts) == 1


def test_options_are_checked() -> None:
    base: dict[str, Any] = {"hub": "ws://127.0.0.1:1/x", "devices": 10, "product_key": "k"}
    with pytest.raises(ConfigError, match="product_key"):
        FleetOptions(**base)
    base["product_secret"] = "s"
    FleetOptions(**base)
    with pytest.raises(ConfigError, match="shard"):
        FleetOptions(**base, shard=(3, 3))
    with pytest.raises(ConfigError, match="writer"):
        FleetOptions(**base, writer="flash")
    with pytest.raises(ConfigError, match="update_failure_rate"):
        FleetOptions(**base, update_failure_rate=1.5)
    with pytest.raises(ConfigError, match="hub"):
        Fleet(FleetOptions(**{**base, "hub": "http://127.0.0.1/"}))


def test_file_descriptor_limit_is_checked_up_front() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert check_fd_limit(10) >= 10
    too_many = (hard if hard != resource.RLIM_INFINITY else 1 << 30) + 1
    with pytest.raises(FleetError, match="file descriptors") as caught:
        check_fd_limit(too_many)
    assert "--shard" in str(caught.value)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] == hard


# -- the command line, in separate processes ----------------------------------------------------


def fleet_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nhlink", "fleet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def hub_process() -> Any:
    hub = HubProcess(KEY, SECRET).start()
    try:
        yield hub
    finally:
        hub.stop()


def test_cli_shards_cover_the_fleet_and_merge(hub_process: HubProcess, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    common = [
        "--hub",
        f"ws://127.0.0.1:{hub_process.port}/socket/websocket",
        "--devices",
        "10",
        "--prefix",
        "cli",
        "--product-key",
        KEY,
        "--product-secret-file",
        str(secret),
        "--ramp",
        "200/s",
        "--duration",
        "3s",
        "--min-joined",
        "1",
    ]
    env = {**os.environ, "JOB_COMPLETION_INDEX": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nhlink", "fleet", *common, "--shard", shard, "--json", out],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for shard, out in (
            ("0/3", str(tmp_path / "a.json")),
            ("1/3", str(tmp_path / "b.json")),
            ("/3", str(tmp_path / "c.json")),  # index from JOB_COMPLETION_INDEX
        )
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    parts = [json.loads((tmp_path / f"{x}.json").read_text()) for x in "abc"]
    assert [p["shards"] for p in parts] == [[[0, 3]], [[1, 3]], [[2, 3]]]
    assert [p["devices"] for p in parts] == [3, 3, 4]
    assert [p["identities"] for p in parts] == [
        ["cli-00001", "cli-00003"],
        ["cli-00004", "cli-00006"],
        ["cli-00007", "cli-00010"],
    ]
    assert [p["ramp_per_s"] for p in parts] == pytest.approx([200 / 3] * 3)
    for p in parts:  # 3 s runs: all joined within the first second, then idle
        assert p["process"]["idle_window_s"] > 1
        assert 0 <= p["process"]["idle_cpu_percent"] < 100
    merged_path = tmp_path / "all.json"
    done = fleet_cmd(
        "merge", *(str(tmp_path / f"{x}.json") for x in "abc"), "--json", str(merged_path)
    )
    assert done.returncode == 0, done.stderr
    merged = json.loads(merged_path.read_text())
    assert merged["devices"] == 10
    assert merged["identities"] == ["cli-00001", "cli-00010"]
    assert merged["counters"]["joins"] == sum(p["counters"]["joins"] for p in parts) == 10
    assert merged["final"]["joined"] == 10
    assert merged["join_latency"]["count"] == 10
    buckets: dict[str, int] = {}
    for p in parts:
        for k, v in p["join_latency"]["buckets"].items():
            buckets[k] = buckets.get(k, 0) + v
    assert merged["join_latency"]["buckets"] == dict(
        sorted(buckets.items(), key=lambda kv: int(kv[0]))
    )
    assert merged["join_latency"]["max_ms"] == max(p["join_latency"]["max_ms"] for p in parts)
    # Join CPU per device: each shard's own (> 0), merged weighted by devices.
    weighted = sum(p["process"]["join_cpu_ms"] * p["devices"] for p in parts) / 10
    assert all(p["process"]["join_cpu_ms"] > 0 for p in parts)
    assert merged["process"]["join_cpu_ms"] == pytest.approx(weighted, abs=1e-4)
    # The same shard twice is refused.
    again = fleet_cmd("merge", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert again.returncode == 1 and "twice" in again.stderr


def test_cli_refuses_bad_input_before_starting(tmp_path: Path) -> None:
    base = ["--hub", "ws://127.0.0.1:9/x", "--devices", "5", "--product-key", "k"]
    done = fleet_cmd(*base)
    assert done.returncode == 2 and "product-secret" in done.stderr
    done = fleet_cmd(*base, "--product-secret-env", "NHLINK_TEST_NO_SUCH_VAR", "--ramp", "fast")
    assert done.returncode == 2 and "rate" in done.stderr
    scenario = tmp_path / "s.toml"
    scenario.write_text('disconnect_rate = "1/min"\nbogus = 1\n')
    done = fleet_cmd(*base, "--product-secret-file", str(scenario), "--scenario", str(scenario))
    assert done.returncode == 2 and "bogus" in done.stderr


def test_the_kubernetes_manifest_runs_shards_our_cli_accepts() -> None:
    from nhlink.fleet.cli import build_parser, options_from

    printed = fleet_cmd("manifest")
    assert printed.returncode == 0, printed.stderr
    manifest = printed.stdout
    assert "completionMode: Indexed" in manifest
    lines = manifest[manifest.index("command:") : manifest.index("env:")].splitlines()[1:]
    argv = [line.strip()[2:] for line in lines if line.strip().startswith("- ")]
    assert argv[:2] == ["nhlink", "fleet"]
    args = build_parser().parse_args(argv[2:])
    completions = int(manifest.split("completions: ")[1].split()[0])
    for index in (0, completions - 1):
        env = {"JOB_COMPLETION_INDEX": str(index), "NHLINK_PRODUCT_SECRET": "s"}
        old = dict(os.environ)
        os.environ.update(env)
        try:
            opts = options_from(args)
        finally:
            os.environ.clear()
            os.environ.update(old)
        assert opts.shard == (index, completions)
        assert opts.product_secret == "s"


def test_json_on_standard_output_is_one_line_that_merge_finds_in_a_log(
    hub_process: HubProcess, tmp_path: Path
) -> None:
    env = {**os.environ, "NHLINK_FLEET_SECRET": SECRET}
    done = fleet_cmd(
        "--hub",
        f"ws://127.0.0.1:{hub_process.port}/socket/websocket",
        "--devices",
        "3",
        "--product-key",
        KEY,
        "--product-secret-env",
        "NHLINK_FLEET_SECRET",
        "--duration",
        "1s",
        "--quiet",
        "--json",
        "-",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    log = tmp_path / "pod.log"
    log.write_text(done.stderr + done.stdout)  # what kubectl logs shows: both streams
    merged = fleet_cmd("merge", str(log))
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["devices"] == 3


def test_missing_device_certificates_are_named_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "sim-00001.crt").write_text("")
    (tmp_path / "sim-00001.key").write_text("")
    opts = FleetOptions(
        hub="wss://127.0.0.1:9/socket/websocket", devices=2, prefix="sim", certs=tmp_path
    )
    with pytest.raises(FleetError, match=r"2 certificate files missing, e\.g\. .*sim-00002\.crt"):
        Fleet(opts)


async def test_steady_cpu_is_measured_after_the_one_time_work_of_the_joins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The steady window starts STEADY_AFTER s after every device joined (past the links'
    backoff-reset timers) and is only reported when the fleet ran that long."""
    import nhlink.fleet.sim as sim

    monkeypatch.setattr(sim, "STEADY_AFTER", 0.2)
    async with new_hub() as hub:
        fleet = Fleet(options(hub, 4, heartbeat_interval=0.1))
        run = asyncio.create_task(fleet.run())
        await fleet.wait_until(lambda: fleet.counters["joins"] >= 4, timeout=20)
        await hub.wait_for(lambda: fleet.steady is not None, timeout=10)  # heartbeats wake it
        await hub.wait_for(lambda: all(r.heartbeats >= 3 for r in hub.devices.values()))
        fleet.stop()
        summary = await run
    process = summary["process"]
    assert 0 < process["steady_window_s"] < process["idle_window_s"]
    assert 0 <= process["steady_cpu_percent"] < 100
