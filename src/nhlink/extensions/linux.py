"""LinuxHealthProvider: the default health metrics, read from ``/proc``, ``/sys`` and statvfs.

No third-party dependency. Metric names are those nerves_hub_link reports (its ``MetricSet``
modules CPU, Memory and Disk), which the NervesHub dashboard understands (PROTOCOL.md §8.3),
plus ``uptime``. Each group is read on its own: a missing or unreadable file leaves that group
out of the report (logged at debug level) instead of failing the check.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from ..protocol import wire
from .health import HealthProvider

__all__ = ["LinuxHealthProvider"]

logger = logging.getLogger(__name__)

# §8.3 metric names (nerves_hub_link's MetricSet.CPU/Memory/Disk). The server's default
# warning/unhealthy thresholds apply to cpu_usage_percent, mem_used_percent and
# disk_used_percentage.
METRIC_LOAD_1: Final = wire.HEALTH_METRIC_LOAD_1
METRIC_LOAD_5: Final = wire.HEALTH_METRIC_LOAD_5
METRIC_LOAD_15: Final = wire.HEALTH_METRIC_LOAD_15
METRIC_CPU_USAGE: Final = wire.HEALTH_METRIC_CPU_USAGE
METRIC_CPU_TEMP: Final = wire.HEALTH_METRIC_CPU_TEMP
METRIC_MEM_SIZE: Final = wire.HEALTH_METRIC_MEM_SIZE
METRIC_MEM_USED: Final = wire.HEALTH_METRIC_MEM_USED
METRIC_MEM_USED_PERCENT: Final = wire.HEALTH_METRIC_MEM_USED_PERCENT
METRIC_DISK_TOTAL: Final = wire.HEALTH_METRIC_DISK_TOTAL
METRIC_DISK_AVAILABLE: Final = wire.HEALTH_METRIC_DISK_AVAILABLE
METRIC_DISK_USED_PERCENT: Final = wire.HEALTH_METRIC_DISK_USED_PERCENT
METRIC_UPTIME: Final = wire.HEALTH_METRIC_UPTIME

#: Thermal zone types that name the CPU/SoC sensor, preferred over zone order.
_CPU_ZONE_TYPES: Final = ("cpu", "x86_pkg_temp", "soc", "coretemp", "package")
_ZONE_NUMBER = re.compile(r"thermal_zone(\d+)$")


def _read(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class LinuxHealthProvider(HealthProvider):
    """CPU load and usage, memory, disk, CPU temperature and uptime of this Linux machine.

    ``proc`` and ``sys`` are the procfs and sysfs roots (tests point them at fixture trees);
    ``mounts`` are the file systems whose usage is reported. The first mount gets the plain
    ``disk_*`` names; each further one gets them suffixed with its path, e.g. ``/data`` →
    ``disk_used_percentage_data``.

    ``cpu_usage_percent`` is the busy share of CPU time since the previous check (since boot on
    the first one): the provider keeps the previous ``/proc/stat`` sample, so nothing sleeps.
    All methods are plain, so the health extension calls them in a worker thread.
    """

    def __init__(
        self,
        *,
        proc: str | os.PathLike[str] = "/proc",
        sys: str | os.PathLike[str] = "/sys",
        mounts: Iterable[str | os.PathLike[str]] = ("/",),
    ) -> None:
        self.proc = Path(proc)
        self.sys = Path(sys)
        self.mounts = tuple(os.fspath(m) for m in mounts)
        self._lock = threading.Lock()
        self._previous_cpu: tuple[int, int] = (0, 0)  # (busy, total) jiffies

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for group in (
            self.load,
            self.cpu_usage,
            self.memory,
            self.disk,
            self.cpu_temp,
            self.uptime,
        ):
            try:
                metrics.update(group())
            except (OSError, ValueError, IndexError, ZeroDivisionError) as exc:
                logger.debug("health: %s unavailable: %s", group.__name__, exc)
        return metrics

    # -- groups (each raises OSError/ValueError when its source is missing or malformed) -------

    def load(self) -> dict[str, float]:
        """``/proc/loadavg``: the 1, 5 and 15 minute load averages."""
        fields = _read(self.proc / "loadavg").split()
        return {
            METRIC_LOAD_1: float(fields[0]),
            METRIC_LOAD_5: float(fields[1]),
            METRIC_LOAD_15: float(fields[2]),
        }

    def cpu_usage(self) -> dict[str, float]:
        """``/proc/stat`` aggregate ``cpu`` line, against the previous sample."""
        for line in _read(self.proc / "stat").splitlines():
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:]]
                break
        else:
            raise ValueError("no aggregate cpu line in stat")
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        # already counted in user/nice, so only the first eight fields make the total.
        values = (values + [0] * 8)[:8]
        total = sum(values)
        idle = values[3] + values[4]
        busy = total - idle
        with self._lock:
            previous_busy, previous_total = self._previous_cpu
            self._previous_cpu = (busy, total)
        delta_total = total - previous_total
        if delta_total <= 0:  # no tick since the last check (or a counter reset)
            delta_total, previous_busy = total, 0
        usage = 100.0 * (busy - previous_busy) / delta_total
        return {METRIC_CPU_USAGE: round(min(max(usage, 0.0), 100.0), 2)}

    def memory(self) -> dict[str, float]:
        """``/proc/meminfo`` MemTotal and MemAvailable (older kernels: free + buffers + cache)."""
        info: dict[str, int] = {}
        for line in _read(self.proc / "meminfo").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                info[key.strip()] = int(parts[0])  # kB (KiB)
        total = info["MemTotal"]
        available = info.get("MemAvailable")
        if available is None:
            available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
        used = max(total - available, 0)
        return {
            METRIC_MEM_SIZE: round(total / 1024),
            METRIC_MEM_USED: round(used / 1024),
            METRIC_MEM_USED_PERCENT: round(100.0 * used / total, 2),
        }

    def disk(self) -> dict[str, float]:
        """``statvfs`` of each mount: size, space available to users, used share (as df)."""
        metrics: dict[str, float] = {}
        for index, mount in enumerate(self.mounts):
            try:
                stat = os.statvfs(mount)
            except OSError as exc:
                logger.debug("health: statvfs(%r) failed: %s", mount, exc)
                continue
            suffix = "" if index == 0 else _mount_suffix(mount)
            used = stat.f_blocks - stat.f_bfree
            usable = used + stat.f_bavail
            metrics[METRIC_DISK_TOTAL + suffix] = stat.f_blocks * stat.f_frsize // 1024
            metrics[METRIC_DISK_AVAILABLE + suffix] = stat.f_bavail * stat.f_frsize // 1024
            metrics[METRIC_DISK_USED_PERCENT + suffix] = (
                round(100.0 * used / usable, 2) if usable > 0 else 0.0
            )
        return metrics

    def cpu_temp(self) -> dict[str, float]:
        """``/sys/class/thermal/thermal_zone*/temp`` (millidegrees): a CPU/SoC zone if one is
        named so, else the lowest-numbered zone. Absent on most VMs: then nothing."""
        zones: list[tuple[int, Path]] = []
        base = self.sys / "class" / "thermal"
        try:
            entries = list(base.iterdir())
        except OSError:
            return {}
        for entry in entries:
            match = _ZONE_NUMBER.search(entry.name)
            if match is not None and (entry / "temp").exists():
                zones.append((int(match[1]), entry))
        zones.sort()
        preferred = [zone for zone in zones if _is_cpu_zone(zone[1])]
        for _, zone in preferred + zones:
            try:
                millidegrees = int(_read(zone / "temp").strip())
            except (OSError, ValueError):
                continue
            return {METRIC_CPU_TEMP: millidegrees / 1000}
        return {}

    def connectivity(self) -> dict[str, dict[str, object]]:
        """``/sys/class/net``: every interface but loopback (§8.3's connectivity section, as
        nerves_hub_link reports it): ``type`` (wifi, ethernet, cellular or unknown, as the
        server names interface categories, §6.9), ``present``, ``state`` (the kernel's
        operstate), ``connection_status`` (``lan`` when up with a carrier, else
        ``disconnected``; the health extension marks the hub's interface ``internet``), byte and
        error counters as ``metrics`` and the MAC address as ``metadata``."""
        base = self.sys / "class" / "net"
        try:
            names = sorted(entry.name for entry in base.iterdir())
        except OSError:
            return {}
        out: dict[str, dict[str, object]] = {}
        for name in names:
            if name == "lo":
                continue
            path = base / name
            state = _read_or(path / "operstate", "unknown")
            carrier = _read_or(path / "carrier", "0") == "1"
            metrics: dict[str, float] = {}
            for counter in ("rx_bytes", "tx_bytes", "rx_errors", "tx_errors"):
                value = _read_or(path / "statistics" / counter, "")
                if value.isdigit():
                    metrics[counter] = float(value)
            metadata = {}
            mac = _read_or(path / "address", "")
            if mac:
                metadata["mac"] = mac
            out[name] = {
                "type": interface_type(name, (path / "wireless").exists()),
                "present": True,
                "state": state,
                "connection_status": "lan" if state == "up" and carrier else "disconnected",
                "metrics": metrics,
                "metadata": metadata,
            }
        return out

    def uptime(self) -> dict[str, float]:
        """``/proc/uptime``: seconds since boot."""
        return {METRIC_UPTIME: float(_read(self.proc / "uptime").split()[0])}


def _read_or(path: Path, default: str) -> str:
    try:
        return _read(path).strip()
    except OSError:
        return default


def interface_type(name: str, wireless: bool = False) -> str:
    """The server's category of an interface name (PROTOCOL.md §6.9); ``wireless``: sysfs
    says so whatever the name."""
    if wireless or name.startswith("wlan"):
        return "wifi"
    if name.startswith(("eth", "en")):
        return "ethernet"
    if name.startswith("wwan"):
        return "cellular"
    return "unknown"


def _is_cpu_zone(zone: Path) -> bool:
    try:
        kind = _read(zone / "type").strip().lower()
    except OSError:
        return False
    return any(name in kind for name in _CPU_ZONE_TYPES)


def _mount_suffix(mount: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", mount).strip("_")
    return f"_{cleaned}" if cleaned else "_root"
