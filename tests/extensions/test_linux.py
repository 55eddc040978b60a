"""LinuxHealthProvider against fixture /proc and /sys trees, and once against this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nhlink.extensions import LinuxHealthProvider

STAT_1 = "cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 100 0 100 700 100 0 0 0 50 0\nintr 1 2 3\n"
STAT_2 = "cpu  300 0 300 1300 100 0 0 0 50 0\ncpu0 300 0 300 1300 100 0 0 0 50 0\n"
MEMINFO = "MemTotal:        2048000 kB\nMemFree:          512000 kB\nMemAvailable:    1024000 kB\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def thermal_zone(root: Path, number: int, kind: str, millidegrees: str) -> None:
    zone = root / "class" / "thermal" / f"thermal_zone{number}"
    write(zone / "type", kind + "\n")
    write(zone / "temp", millidegrees + "\n")


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    write(proc / "loadavg", "0.50 0.25 0.10 1/123 4567\n")
    write(proc / "stat", STAT_1)
    write(proc / "meminfo", MEMINFO)
    write(proc / "uptime", "12345.67 54321.00\n")
    thermal_zone(sysfs, 0, "acpitz", "40000")
    thermal_zone(sysfs, 1, "x86_pkg_temp", "52500")
    (sysfs / "class" / "thermal" / "cooling_device0").mkdir()
    return proc, sysfs


def fake_statvfs(path: str | os.PathLike[str]) -> os.statvfs_result:
    """4 KiB fragments: 1000 in all, 300 free, 250 of them available to users."""
    if "missing" in os.fspath(path):
        raise FileNotFoundError(path)
    return os.statvfs_result((4096, 4096, 1000, 300, 250, 100, 50, 40, 0, 255))


def test_fixture_tree(roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    proc, sysfs = roots
    provider = LinuxHealthProvider(proc=proc, sys=sysfs, mounts=["/", "/data", "/missing"])
    assert provider.metrics() == {
        "load_1min": 0.5,
        "load_5min": 0.25,
        "load_15min": 0.1,
        "cpu_usage_percent": 20.0,  # first sample: since boot (busy 200 of 1000 jiffies)
        "mem_size_mb": 2000,
        "mem_used_mb": 1000,
        "mem_used_percent": 50.0,
        "disk_total_kb": 4000,
        "disk_available_kb": 1000,
        "disk_used_percentage": 73.68,  # as df: used / (used + available) = 700 / 950
        "disk_total_kb_data": 4000,
        "disk_available_kb_data": 1000,
        "disk_used_percentage_data": 73.68,
        "cpu_temp": 52.5,  # the x86_pkg_temp zone is preferred over zone 0
        "uptime": 12345.67,
    }
    # Second check: the delta since the kept sample (busy 400 of 1000 more jiffies), no sleep.
    write(proc / "stat", STAT_2)
    assert provider.metrics()["cpu_usage_percent"] == 40.0
    # No tick since the last sample: fall back to the since-boot figure rather than divide by 0.
    assert provider.metrics()["cpu_usage_percent"] == 30.0


def test_real_statvfs(tmp_path: Path) -> None:
    metrics = LinuxHealthProvider(proc=tmp_path, sys=tmp_path, mounts=[tmp_path]).disk()
    assert set(metrics) == {"disk_total_kb", "disk_available_kb", "disk_used_percentage"}
    assert metrics["disk_total_kb"] >= metrics["disk_available_kb"] >= 0
    assert 0 <= metrics["disk_used_percentage"] <= 100


def test_second_mount_is_suffixed(tmp_path: Path) -> None:
    data = tmp_path / "my-data"
    data.mkdir()
    metrics = LinuxHealthProvider(proc=tmp_path, sys=tmp_path, mounts=["/", data]).disk()
    assert {"disk_total_kb", "disk_available_kb", "disk_used_percentage"} <= set(metrics)
    suffixed = [name for name in metrics if name.startswith("disk_used_percentage_")]
    assert len(suffixed) == 1 and suffixed[0].endswith("_my_data")
    assert all(isinstance(v, int | float) for v in metrics.values())


def test_first_zone_without_a_cpu_name(tmp_path: Path) -> None:
    thermal_zone(tmp_path, 2, "battery", "30000")
    thermal_zone(tmp_path, 10, "acpitz", "41000")
    thermal_zone(tmp_path, 3, "acpitz", "bogus")
    assert LinuxHealthProvider(proc=tmp_path, sys=tmp_path).cpu_temp() == {"cpu_temp": 30.0}


def test_meminfo_without_memavailable(tmp_path: Path) -> None:
    write(
        tmp_path / "meminfo",
        "MemTotal: 1024000 kB\nMemFree: 256000 kB\nBuffers: 0 kB\nCached: 256000 kB\n",
    )
    assert LinuxHealthProvider(proc=tmp_path).memory() == {
        "mem_size_mb": 1000,
        "mem_used_mb": 500,
        "mem_used_percent": 50.0,
    }


def test_missing_sources_give_no_metrics(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    provider = LinuxHealthProvider(proc=missing, sys=missing, mounts=[missing])
    assert provider.metrics() == {}
    write(tmp_path / "stat", "intr 1 2 3\n")
    write(tmp_path / "loadavg", "garbage\n")
    assert LinuxHealthProvider(proc=tmp_path, sys=missing, mounts=[]).metrics() == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads this machine's /proc")
def test_real_proc_and_sys() -> None:
    provider = LinuxHealthProvider()
    first = provider.metrics()
    second = provider.metrics()
    for metrics in (first, second):
        for name in (
            "load_1min",
            "load_5min",
            "load_15min",
            "cpu_usage_percent",
            "mem_size_mb",
            "mem_used_mb",
            "mem_used_percent",
            "disk_total_kb",
            "disk_available_kb",
            "disk_used_percentage",
            "uptime",
        ):
            value = metrics[name]
            assert isinstance(value, int | float) and not isinstance(value, bool), name
        assert 0 <= metrics["cpu_usage_percent"] <= 100
        assert 0 < metrics["mem_used_percent"] < 100
        assert metrics["mem_size_mb"] >= metrics["mem_used_mb"] > 0
        assert 0 <= metrics["disk_used_percentage"] <= 100
        assert metrics["disk_total_kb"] >= metrics["disk_available_kb"] >= 0
        assert metrics["uptime"] > 0
        if "cpu_temp" in metrics:  # absent on most VMs and containers
            assert -50 < metrics["cpu_temp"] < 150
    assert second["uptime"] >= first["uptime"]


def net_interface(root: Path, name: str, state: str, carrier: str, wireless: bool = False) -> None:
    iface = root / "class" / "net" / name
    write(iface / "operstate", state + "\n")
    write(iface / "carrier", carrier + "\n")
    write(iface / "address", "02:00:00:00:00:0" + str(len(name)) + "\n")
    for counter, value in (("rx_bytes", "1000"), ("tx_bytes", "2000"), ("rx_errors", "1")):
        write(iface / "statistics" / counter, value + "\n")
    if wireless:
        (iface / "wireless").mkdir()


def test_connectivity_from_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    net_interface(sysfs, "lo", "unknown", "1")
    net_interface(sysfs, "eth0", "up", "1")
    net_interface(sysfs, "wlp2s0", "down", "0", wireless=True)
    net_interface(sysfs, "wwan0", "up", "0")
    net_interface(sysfs, "tun0", "unknown", "1")
    found = LinuxHealthProvider(proc=tmp_path / "proc", sys=sysfs).connectivity()
    assert sorted(found) == ["eth0", "tun0", "wlp2s0", "wwan0"]  # never loopback
    assert found["eth0"] == {
        "type": "ethernet",
        "present": True,
        "state": "up",
        "connection_status": "lan",
        "metrics": {"rx_bytes": 1000.0, "tx_bytes": 2000.0, "rx_errors": 1.0},
        "metadata": {"mac": "02:00:00:00:00:04"},
    }
    assert (
        found["wlp2s0"]["type"] == "wifi" and found["wlp2s0"]["connection_status"] == "disconnected"
    )
    assert (
        found["wwan0"]["type"] == "cellular"
        and found["wwan0"]["connection_status"] == "disconnected"
    )
    assert found["tun0"]["type"] == "unknown"
    assert LinuxHealthProvider(sys=tmp_path / "missing").connectivity() == {}
