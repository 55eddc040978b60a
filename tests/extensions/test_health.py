"""The health extension (PROTOCOL.md §8.3): reports over FakeHub, provider failures, metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from nhlink.extensions import (
    HealthExtension,
    HealthProvider,
    LinuxHealthProvider,
    build_report,
    sanitize_metrics,
)
from nhlink.extensions.health import ALARM_CHECK_FAILED, CHECK_PROVIDER

from ._support import DEVICE, make_hub, running_link, wait_count, wait_ext

REPORT_KEYS = {"timestamp", "metrics", "metadata", "alarms", "checks", "connectivity"}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_timestamp(text: str) -> None:
    assert text.endswith("Z")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


async def test_default_provider_report_has_real_numbers() -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": True}):
        await wait_ext(hub, "health:report")
        report = hub.devices[DEVICE].health_reports[0]
        assert set(report) == REPORT_KEYS
        check_timestamp(report["timestamp"])
        metrics = report["metrics"]
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
            assert is_number(metrics[name]), name
        assert all(is_number(v) for v in metrics.values())
        assert 0 <= metrics["cpu_usage_percent"] <= 100
        assert 0 < metrics["mem_used_percent"] < 100
        assert report["alarms"] == {} and report["checks"] == {}
        # The UI button (§8.3) asks again: a second report, from a second /proc/stat sample.
        assert await hub.request_health_check(DEVICE)
        await wait_count(hub, "health:report", 2)
        assert hub.devices[DEVICE].warnings == []


class Broken(HealthProvider):
    def metrics(self) -> Mapping[str, float]:
        raise RuntimeError("sensor bus down")

    def metadata(self) -> Mapping[str, str]:
        return {"site": "lab"}


async def test_raising_provider_still_reports(caplog: pytest.LogCaptureFixture) -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": Broken()}) as link:
        await wait_ext(hub, "health:report")
        report = hub.devices[DEVICE].health_reports[0]
        assert set(report) == REPORT_KEYS
        assert report["metrics"] == {}
        assert report["metadata"] == {"site": "lab"}
        assert report["alarms"] == {ALARM_CHECK_FAILED: "metrics: RuntimeError: sensor bus down"}
        assert report["checks"] == {
            CHECK_PROVIDER: {"pass": False, "note": "metrics: RuntimeError: sensor bus down"}
        }
        assert link.extensions.attached == {"health"}
    assert any("health provider metrics() failed" in r.getMessage() for r in caplog.records)


class Mixed(HealthProvider):
    """Async metrics (on the loop), plain sections (in a worker thread)."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    async def metrics(self) -> Mapping[Any, Any]:
        return {
            "ok": 1,
            "flag": True,
            "text": "2.5",
            "nan": float("nan"),
            "junk": "high",
            "dec": Decimal("1.5"),
            "frac": Fraction(1, 4),
            7: 3.0,
        }

    def metadata(self) -> Mapping[str, Any]:
        self.threads.append(threading.get_ident())
        return {"fw": "1.0.0", "boots": 3}

    def alarms(self) -> Mapping[str, str]:
        self.threads.append(threading.get_ident())
        return {"disk": "almost full"}

    def checks(self) -> Mapping[str, Mapping[str, Any]]:
        return {"db": {"pass": True, "note": "ok"}}

    def connectivity(self) -> Mapping[str, Mapping[str, Any]]:
        return {
            "eth0": {
                "type": "ethernet",
                "present": True,
                "state": "configured",
                "connection_status": "internet",
                "metrics": {},
                "metadata": {},
            }
        }


async def test_sections_async_and_threaded(caplog: pytest.LogCaptureFixture) -> None:
    provider = Mixed()
    async with make_hub({"health"}) as hub, running_link(hub, {"health": provider}):
        await wait_ext(hub, "health:report")
        report = hub.devices[DEVICE].health_reports[0]
    assert report["metrics"] == {
        "ok": 1,
        "flag": 1.0,
        "text": 2.5,
        "dec": 1.5,
        "frac": 0.25,
        "7": 3.0,
    }
    assert report["metadata"] == {"fw": "1.0.0", "boots": "3"}
    assert report["alarms"] == {"disk": "almost full"}
    assert report["checks"] == {"db": {"pass": True, "note": "ok"}}
    assert report["connectivity"]["eth0"]["type"] == "ethernet"
    main = threading.get_ident()
    assert provider.threads and all(t != main for t in provider.threads)
    assert len(set(provider.threads)) == 1  # one worker thread per check
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'nan'" in warnings and "'junk'" in warnings and "'flag'" in warnings


async def test_callable_provider() -> None:
    calls: list[int] = []

    def metrics() -> dict[str, float]:
        calls.append(threading.get_ident())
        return {"queue_depth": 4}

    async with make_hub({"health"}) as hub, running_link(hub, {"health": metrics}):
        await wait_ext(hub, "health:report")
        assert hub.devices[DEVICE].health_reports[0]["metrics"] == {"queue_depth": 4}
    assert calls and calls[0] != threading.get_ident()


class SeedProvider:
    """Shaped like the Elixir client's HealthProvider behaviour: only ``health_check()``."""

    def health_check(self) -> dict[str, float]:
        return {"cpu_temp": 41.5, "mem_used_percent": 12}


class SeedSubclass(HealthProvider):
    def health_check(self) -> dict[str, float]:
        return {"load_1min": 0.5}

    def metadata(self) -> dict[str, str]:
        return {"site": "north"}


@pytest.mark.parametrize(
    ("provider", "metrics", "metadata"),
    [
        (SeedProvider(), {"cpu_temp": 41.5, "mem_used_percent": 12}, {}),
        (SeedSubclass(), {"load_1min": 0.5}, {"site": "north"}),
    ],
)
async def test_seed_health_check_provider(
    provider: Any, metrics: dict[str, float], metadata: dict[str, str]
) -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": provider}):
        await wait_ext(hub, "health:report")
        report = hub.devices[DEVICE].health_reports[0]
        assert report["metrics"] == metrics
        assert report["metadata"] == metadata


async def test_async_callable_provider() -> None:
    async def metrics() -> dict[str, float]:
        return {"x": 1.25}

    extension = HealthExtension(metrics, clock=lambda: 0.0)
    report = await extension.collect()
    assert report["metrics"] == {"x": 1.25}
    assert report["timestamp"] == "1970-01-01T00:00:00.000000Z"


class Hangs(HealthProvider):
    async def metrics(self) -> Mapping[str, float]:
        await asyncio.Event().wait()
        return {}


class SlowThread(HealthProvider):
    def __init__(self) -> None:
        self.release = threading.Event()

    def metrics(self) -> Mapping[str, float]:
        self.release.wait(10)
        return {}

    async def metadata(self) -> Mapping[str, str]:
        return {"still": "here"}


async def test_timeouts_are_reported() -> None:
    report = await HealthExtension(Hangs(), timeout=0.01).collect()
    assert report["alarms"] == {ALARM_CHECK_FAILED: "metrics: timed out after 0.01 s"}
    slow = SlowThread()
    try:
        report = await HealthExtension(slow, timeout=0.01).collect()
    finally:
        slow.release.set()
    assert report["metadata"] == {"still": "here"}
    assert report["checks"][CHECK_PROVIDER]["pass"] is False
    assert "metrics: timed out" in report["checks"][CHECK_PROVIDER]["note"]


async def test_section_that_is_not_a_mapping() -> None:
    class Odd(HealthProvider):
        def metrics(self) -> Any:
            return [1, 2]

        def metadata(self) -> Any:
            return None  # treated as "nothing"

    report = await HealthExtension(Odd()).collect()
    assert report["metrics"] == {} and report["metadata"] == {}
    assert report["alarms"][ALARM_CHECK_FAILED] == "metrics: returned list, not a mapping"


async def test_send_report_and_other_events() -> None:
    extension = HealthExtension(lambda: {"a": 1})
    assert not await extension.send_report()  # not started, not attached
    assert await extension.handle_event("unknown", {}) is None
    reply = await extension.handle_event("check", {})
    assert reply is not None and reply[0] == "report" and set(reply[1]["value"]) == REPORT_KEYS
    with pytest.raises(TypeError):
        HealthExtension(42)


async def test_send_report_unasked() -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": lambda: {"a": 1}}) as link:
        await wait_ext(hub, "health:report")
        extension = link.extensions.get("health")
        assert isinstance(extension, HealthExtension)
        assert await extension.send_report()
        await wait_count(hub, "health:report", 2)


def test_sanitize_metrics_and_build_report() -> None:
    class Floaty:
        def __float__(self) -> float:
            return 2.0

    class Broken:
        def __float__(self) -> float:
            raise ValueError("no")

    assert sanitize_metrics(
        {"a": 1, "b": -2.5, "c": float("inf"), "d": None, "e": Floaty(), "f": Broken(), "g": "1e3"}
    ) == {"a": 1, "b": -2.5, "e": 2.0, "g": 1000.0}
    report = build_report({}, now=1_700_000_000.5)
    assert report == {
        "timestamp": "2023-11-14T22:13:20.500000Z",
        "metrics": {},
        "metadata": {},
        "alarms": {},
        "checks": {},
        "connectivity": {},
    }


async def test_the_hub_interface_is_reported_connected_to_the_internet(tmp_path: Path) -> None:
    """connectivity (§8.3) from sysfs, and the interface of the hub connection (the link's
    interface report, §6.9) marked ``internet`` as nerves_hub_link does."""
    sysfs = tmp_path / "sys"
    for name, state in (("eth0", "up"), ("wlan0", "up")):
        iface = sysfs / "class" / "net" / name
        iface.mkdir(parents=True)
        (iface / "operstate").write_text(state + "\n")
        (iface / "carrier").write_text("1\n")
    provider = LinuxHealthProvider(sys=sysfs)
    async with (
        make_hub({"health"}) as hub,
        running_link(hub, {"health": provider}, network_interface="wlan0"),
    ):
        await wait_ext(hub, "health:report")
        connectivity = hub.devices[DEVICE].health_reports[0]["connectivity"]
        assert connectivity["wlan0"]["connection_status"] == "internet"
        assert connectivity["wlan0"]["type"] == "wifi"
        assert connectivity["eth0"]["connection_status"] == "lan"
