"""The fleet simulator: many :class:`~nhlink.NervesHubLink` devices in one process.

Each simulated device is a real link (the same code a gateway runs: NH1 or mTLS, Phoenix
channels, heartbeats, updates with SHA-256 verification), with an identity ``PREFIX-00001``...,
firmware metadata, and a writer that keeps nothing (``null``) or hashes what it is given
(``hash``) at a simulated link speed. What a load test needs on top:

* a ramp (devices started per second, evenly spread) and a shared :class:`Pacer` for every
  later connection attempt, so a hub restart is followed by a ramp, not a stampede;
* one shared TLS context for shared-secret devices (a context per device would cost its own CA
  store each), and NH1 keys derived once per second (:mod:`nhlink.protocol.auth`);
* scripted events: random disconnects and reboots at a rate, update failures with a probability;
* counts and a join-latency :class:`Histogram` for the JSON summary, which shards merge.

Sharding (``--shard INDEX/COUNT``): shard ``INDEX`` of ``COUNT`` simulates a disjoint slice of
the identities and takes ``1/COUNT`` of the ramp; ``nhlink fleet merge`` adds the summaries up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from ..client import Apply, Client
from ..errors import ConfigError, NHLinkError
from ..link import LinkState, LinkStatus, NervesHubLink
from ..protocol import wire
from ..protocol.backoff import Pacer
from ..transport.tls import client_ssl_context
from ..update.options import DownloadOptions
from ..update.writer import FwupWriter
from .histogram import Histogram

__all__ = [
    "DEFAULT_FIRMWARE",
    "Fleet",
    "FleetError",
    "FleetOptions",
    "check_fd_limit",
    "identities",
    "parse_shard",
    "shard_range",
]

logger = logging.getLogger(__name__)

DEFAULT_FIRMWARE: Mapping[str, str] = {
    "product": "nhlink-sim",
    "architecture": "x86_64",
    "platform": "nhlink-sim",
    "version": "1.0.0",
    "uuid": "00000000-0000-4000-8000-000000000001",
}

_USER_AGENT = f"nhlink-fleet/{__version__}"  # one string for every device

#: file descriptors kept free for the process itself (logs, DNS, a download's second socket...)
FD_RESERVE = 64


class FleetError(NHLinkError):
    """The fleet cannot run as asked (file descriptors, identities, credentials)."""


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetOptions:
    """What to simulate. See ``nhlink fleet --help`` for each option in words."""

    hub: str
    devices: int
    prefix: str = "nhlink-sim"
    product_key: str | None = None
    product_secret: str | None = field(default=None, repr=False)
    certs: Path | None = None  # DIR with <identifier>.crt / <identifier>.key (mTLS)
    ca_file: Path | None = None  # CA that signed the hub's certificate (wss)
    ramp: float = 200.0  # devices started per second (whole fleet; shards take their share)
    reconnect_rate: float | None = None  # connection attempts per second after the ramp
    duration: float | None = None  # seconds after the ramp began; None: until stop()
    heartbeat_interval: float = 30.0
    firmware: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FIRMWARE))
    writer: str = "null"  # "null" | "hash"
    link_speed: float | None = None  # bytes/s per device for firmware downloads
    update_failure_rate: float = 0.0  # probability that an update fails in the writer
    disconnect_rate: float = 0.0  # random disconnects per second across this shard
    reboot_rate: float = 0.0  # random reboots per second across this shard
    shard: tuple[int, int] = (0, 1)
    seed: int | None = None
    connect_timeout: float = 30.0
    join_timeout: float = 30.0
    http_firmware: bool = False  # accept http:// firmware URLs (a local test hub)

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError("devices", "must be at least 1")
        if not self.ramp > 0:
            raise ConfigError("ramp", "must be > 0 devices per second")
        if self.reconnect_rate is not None and not self.reconnect_rate > 0:
            raise ConfigError("reconnect_rate", "must be > 0 attempts per second")
        if self.writer not in ("null", "hash"):
            raise ConfigError("writer", "must be 'null' or 'hash'")
        if not 0 <= self.update_failure_rate <= 1:
            raise ConfigError("update_failure_rate", "must be within [0, 1]")
        if self.disconnect_rate < 0 or self.reboot_rate < 0:
            raise ConfigError("disconnect_rate", "event rates must be >= 0")
        index, count = self.shard
        if not 0 <= index < count:
            raise ConfigError("shard", f"index {index} is not in 0..{count - 1}")
        if count > self.devices:
            raise ConfigError("shard", f"{count} shards for {self.devices} devices")
        if self.certs is None and not (self.product_key and self.product_secret):
            raise ConfigError(
                "product_key", "give --product-key and --product-secret, or --certs DIR (mTLS)"
            )
        if self.certs is not None and self.product_key:
            raise ConfigError("certs", "give --certs or a product key, not both")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("duration", "must be > 0 seconds")


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``"INDEX/COUNT"`` (0-based INDEX); ``"/COUNT"`` or no INDEX takes Kubernetes'
    ``JOB_COMPLETION_INDEX``. ``None`` is the whole fleet, ``(0, 1)``."""
    if not text:
        return (0, 1)
    index_text, sep, count_text = text.partition("/")
    if not sep:
        raise ConfigError("shard", f"expected INDEX/COUNT, got {text!r}")
    if not index_text:
        index_text = environ.get("JOB_COMPLETION_INDEX", "")
        if not index_text:
            raise ConfigError("shard", "no INDEX given and JOB_COMPLETION_INDEX is not set")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError("shard", f"expected INDEX/COUNT integers, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError("shard", f"index {index} is not in 0..{count - 1}")
    return (index, count)


def shard_range(devices: int, index: int, count: int) -> range:
    """The device numbers (0-based) of shard ``index`` of ``count``: disjoint, covering all."""
    return range(devices * index // count, devices * (index + 1) // count)


def identities(prefix: str, devices: int, numbers: range) -> list[str]:
    """``prefix-00001`` ... (1-based, at least 5 digits, as wide as the fleet needs)."""
    width = max(5, len(str(devices)))
    return [f"{prefix}-{n + 1:0{width}d}" for n in numbers]


def check_fd_limit(devices: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit if needed; return how many devices
    fit. Raises :class:`FleetError` when ``devices`` do not (one socket each, plus a reserve)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < max(
        need, hard if hard != resource.RLIM_INFINITY else 0
    ):
        # Up to the hard limit, not just to `need`: a device that downloads an update holds a
        # second socket, and an update campaign across the fleet needs that headroom.
        target = need if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fit = devices if soft == resource.RLIM_INFINITY else max(0, soft - FD_RESERVE)
    if fit < devices:
        raise FleetError(
            f"{devices} devices need about {need} file descriptors; RLIMIT_NOFILE allows {soft} "
            f"(hard limit {hard}), so at most {fit} devices fit in this process. Raise the "
            "limit (ulimit -n, LimitNOFILE= in systemd) or shard the fleet (--shard)."
        )
    return fit


# -- the simulated parts ----------------------------------------------------------------------


class SimWriter(FwupWriter):
    """A writer that keeps nothing (``null``) or hashes every byte (``hash``), on the loop.

    With ``fail`` it raises in :meth:`fwup_finish` after taking the whole image: the device
    then reports ``failed`` and keeps running its old firmware, as a real one would.
    """

    __slots__ = ("_fail", "_hash", "_mode", "received")

    def __init__(self, mode: str, fail: Callable[[], bool]) -> None:
        self._mode = mode
        self._fail = fail
        self._hash: Any = None
        self.received = 0

    async def fwup_begin(
        self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0
    ) -> None:
        self._hash = hashlib.sha256() if self._mode == "hash" else None
        self.received = 0

    async def fwup_chunk(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self.received += len(data)

    async def fwup_finish(self) -> None:
        if self._fail():
            raise RuntimeError("simulated update failure (--update-failure-rate)")

    async def fwup_abort(self) -> None:
        self._hash = None


class _SimClient(Client):
    """Applies every update; ``reboot`` reboots the simulated device (into the new firmware)."""

    __slots__ = ("device",)

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def update_available(self, firmware_meta: Mapping[str, Any]) -> Apply:
        self.device.fleet.count("updates_offered")
        return Apply()

    def update_completed(self, firmware_meta: Mapping[str, Any]) -> None:
        self.device.fleet.count("updates_completed")
        self.device.next_firmware = {
            key: str(firmware_meta[key])
            for key in wire.REQUIRED_FIRMWARE_META
            if key in firmware_meta
        }
        # As a Nerves device does once fwup is done: reboot into the new firmware.
        self.device.fleet.schedule_reboot(self.device, "update", after_verdict=True)

    def fwup_error(self, error: BaseException) -> None:
        self.device.fleet.count("updates_failed")

    def reboot(self) -> None:
        self.device.fleet.schedule_reboot(self.device, "requested")

    def firmware_validated(self) -> bool:
        return True  # a simulated device boots validated


class SimDevice:
    """One simulated device: its link, firmware and the transitions the fleet counts."""

    __slots__ = (
        "_attempt_at",
        "_last_error",
        "_paced",
        "_previous",
        "firmware",
        "fleet",
        "identifier",
        "link",
        "next_firmware",
        "rebooting",
    )

    def __init__(self, fleet: Fleet, identifier: str) -> None:
        self.fleet = fleet
        self.identifier = identifier
        self.firmware: Mapping[str, str] = fleet.options.firmware
        self.next_firmware: Mapping[str, str] | None = None
        self.link: NervesHubLink | None = None
        self.rebooting = False
        self._previous = LinkState.STOPPED
        self._attempt_at = 0.0
        self._paced = False
        self._last_error: BaseException | None = None

    async def gate(self) -> None:
        """Before each connection attempt: the first one is paced by the ramp, every later one
        (reconnects, reboots) by the fleet's pacer."""
        if self._paced:
            await self.fleet.pacer()
        self._paced = True

    def on_status(self, status: LinkStatus) -> None:
        state = status.state
        previous = self._previous
        if state is not previous:
            fleet = self.fleet
            if state is LinkState.CONNECTING:
                self._attempt_at = fleet.clock()
                fleet.count("connect_attempts")
            elif state is LinkState.JOINED:
                fleet.join_latency.add(fleet.clock() - self._attempt_at)
                fleet.last_join_at = fleet.clock()
                fleet.joined_now += 1
                if fleet.joined_now == len(fleet.devices) and fleet.all_joined is None:
                    fleet.all_joined = _Sample.now(fleet.clock())
                    fleet.mark_steady_later()
                fleet.count("joins")
            if previous is LinkState.JOINED:
                fleet.joined_now -= 1
                if not self.rebooting and not fleet.stopping:
                    fleet.count("disconnects")
            self._previous = state
        error = status.last_error
        if error is not None and error is not self._last_error:
            self._last_error = error
            if not self.fleet.stopping:
                self.fleet.count(f"error:{type(error).__name__}")


# -- the fleet --------------------------------------------------------------------------------


class Fleet:
    """Runs :class:`FleetOptions`; :meth:`run` returns the JSON summary (a dict)."""

    def __init__(self, options: FleetOptions, *, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.clock = clock
        self.rng = random.Random(options.seed)
        self._rand = self.rng.random  # one bound method for every link's backoff jitter
        self.counters: Counter[str] = Counter()
        self.join_latency = Histogram()
        self.stopping = False
        self.last_join_at: float | None = None
        self.joined_now = 0  # devices joined at this moment
        self.all_joined: _Sample | None = None  # when every device was first joined at once
        #: ``STEADY_AFTER`` s later, if every device was still joined: the one-time work after
        #: a join (the backoff-reset timer, the first status changes) is over by then
        self.steady: _Sample | None = None
        index, count = options.shard
        self.numbers = shard_range(options.devices, index, count)
        self.devices = [
            SimDevice(self, ident)
            for ident in identities(options.prefix, options.devices, self.numbers)
        ]
        self.ramp = options.ramp / count
        self.pacer = Pacer(options.reconnect_rate / count if options.reconnect_rate else self.ramp)
        parts = urlsplit(options.hub)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(
                "hub", f"expected ws://HOST[:PORT][/PATH] or wss://..., got {options.hub!r}"
            )
        self._secure = parts.scheme == "wss"
        self._endpoint: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port or (443 if self._secure else 80),
            "ssl": self._secure,
            "path": parts.path or wire.DEVICE_SOCKET_PATH,
        }
        if options.certs is not None:
            missing = [
                f"{options.certs / d.identifier}.{ext}"
                for d in self.devices
                for ext in ("crt", "key")
                if not (options.certs / f"{d.identifier}.{ext}").is_file()
            ]
            if missing:
                raise FleetError(
                    f"--certs: {len(missing)} certificate files missing, e.g. {missing[0]} "
                    "(nhlink fleet make-certs writes them)"
                )
        self._shared_tls: ssl.SSLContext | None = None
        if self._secure and options.certs is None:
            self._shared_tls = client_ssl_context(cafile=options.ca_file)
        self._downloads = DownloadOptions(
            max_download_rate=int(options.link_speed) if options.link_speed else None,
            allow_http=options.http_firmware,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._stop = asyncio.Event()
        self.started_at = 0.0
        self.ramp_done_at: float | None = None

    # -- devices --------------------------------------------------------------------------------

    def _make_link(self, device: SimDevice) -> NervesHubLink:
        options = self.options
        credentials: dict[str, Any]
        ssl_context = self._shared_tls
        if options.certs is not None:
            credentials = {
                "device_cert": options.certs / f"{device.identifier}.crt",
                "device_key": options.certs / f"{device.identifier}.key",
            }
            if self._secure:
                credentials["ca_file"] = options.ca_file
        else:
            credentials = {
                "product_key": options.product_key,
                "product_secret": options.product_secret,
                "identifier": device.identifier,
            }
        return NervesHubLink(
            client=_SimClient(device),
            fwup_writer=SimWriter(options.writer, self._update_fails),
            download_options=self._downloads,
            ssl_context=ssl_context,
            connect_gate=device.gate,
            status_listener=device.on_status,
            rand=self._rand,
            name=device.identifier,
            firmware_meta=device.firmware,  # LinkConfig keeps its own copy
            heartbeat_interval=options.heartbeat_interval,
            connect_timeout=options.connect_timeout,
            join_timeout=options.join_timeout,
            user_agent=_USER_AGENT,
            **self._endpoint,
            **credentials,
        )

    def _update_fails(self) -> bool:
        """Whether the update a writer is finishing fails (``--update-failure-rate``)."""
        rate = self.options.update_failure_rate
        return rate > 0 and self.rng.random() < rate

    async def _boot(self, device: SimDevice) -> None:
        device.link = self._make_link(device)
        await device.link.start()

    def schedule_reboot(self, device: SimDevice, why: str, *, after_verdict: bool = False) -> bool:
        """Reboot ``device`` (stop its link, start a new one with its next firmware). With
        ``after_verdict``, first wait until the server has the update's final status (learnt
        from the next heartbeat reply; at most two heartbeat intervals), as ``nhlink run``
        does: a reboot that swallowed ``completed`` would leave the update open on the hub."""
        if device.rebooting or self.stopping:
            return False
        device.rebooting = True
        self.count(f"reboots_{why}")
        self._spawn(self._reboot(device, after_verdict))
        return True

    async def _reboot(self, device: SimDevice, after_verdict: bool = False) -> None:
        try:
            link = device.link
            if after_verdict and link is not None:
                deadline = self.clock() + max(2 * self.options.heartbeat_interval, 1.0)
                # No event to wait on: delivery is learnt from a heartbeat reply (as nhlink run).
                while link.updates.verdict_pending and self.clock() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            if device.link is not None:
                await device.link.stop()
            if device.next_firmware:
                device.firmware = {**device.firmware, **device.next_firmware}
                device.next_firmware = None
            if not self.stopping:
                await self._boot_counted(device)
        finally:
            device.rebooting = False

    def mark_steady_later(self) -> None:
        asyncio.get_running_loop().call_later(STEADY_AFTER, self._mark_steady)

    def _mark_steady(self) -> None:
        if self.joined_now == len(self.devices) and not self.stopping:
            self.steady = _Sample.now(self.clock())

    def count(self, name: str) -> None:
        """Add one to counter ``name`` and wake :meth:`wait_until` callers."""
        self.counters[name] += 1
        for predicate, future in list(self._watchers):
            if not future.done() and predicate():
                future.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds, re-checked whenever a counter changes."""
        if predicate():
            return
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._watchers.append(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
        finally:
            self._watchers.remove(entry)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counts by state now, plus the cumulative counters."""
        states: Counter[str] = Counter()
        updating = 0
        for device in self.devices:
            link = device.link
            if link is None:
                states["not_started"] += 1
                continue
            states[link.status.state.value] += 1
            if link.updates.phase is not None:
                updating += 1
        now = self.clock()
        elapsed = max(1e-9, (self.last_join_at or now) - self.started_at) if self.started_at else 0
        return {
            "devices": len(self.devices),
            "joined": states["joined"],
            "connected": states["connected"] + states["joined"],
            "connecting": states["connecting"],
            "waiting": states["waiting"],
            "not_started": states["not_started"],
            "updating": updating,
            "failed": self.counters["updates_failed"],
            "joins": self.counters["joins"],
            "join_rate": self.counters["joins"] / elapsed if elapsed else 0.0,
            "p50_ms": _ms(self.join_latency.percentile(50)),
            "p99_ms": _ms(self.join_latency.percentile(99)),
        }

    def stop(self) -> None:
        """Ask :meth:`run` to finish (stops every device, then returns the summary)."""
        self._stop.set()

    async def run(
        self,
        progress: Callable[[dict[str, Any]], None] | None = None,
        progress_interval: float = 1.0,
    ) -> dict[str, Any]:
        self.started_at = self.clock()
        start = _Sample.now(self.started_at)
        cpu0 = start.cpu
        runners = [asyncio.create_task(self._ramp())]
        if self.options.disconnect_rate > 0:
            runners.append(
                asyncio.create_task(self._inject(self.options.disconnect_rate, "disconnect"))
            )
        if self.options.reboot_rate > 0:
            runners.append(asyncio.create_task(self._inject(self.options.reboot_rate, "reboot")))
        if progress is not None:
            runners.append(asyncio.create_task(self._progress(progress, progress_interval)))
        try:
            if self.options.duration is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.options.duration)
        finally:
            final = self.snapshot()
            end = _Sample.now(self.clock())
            self.stopping = True
            for task in runners:
                task.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            await self._stop_all()
        return self.summary(final, time.process_time() - cpu0, start, end)

    async def _ramp(self) -> None:
        start = self.clock()
        for i, device in enumerate(self.devices):
            delay = start + i / self.ramp - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            await self._boot_counted(device)
        self.ramp_done_at = self.clock()

    async def _boot_counted(self, device: SimDevice) -> None:
        """Boot ``device``; a failure is counted (``errors``) and logged, not fatal to the
        fleet: the other devices go on."""
        try:
            await self._boot(device)
        except Exception as exc:
            device.link = None
            self.count(f"error:boot:{type(exc).__name__}")
            logger.error("%s: cannot start: %s", device.identifier, exc)

    async def _inject(self, rate: float, kind: str) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            joined = [
                d
                for d in self.devices
                if d.link is not None and d.link.status.joined and not d.rebooting
            ]
            if not joined:
                continue
            device = self.rng.choice(joined)
            if kind == "disconnect":
                assert device.link is not None
                device.link.reconnect()
                self.count("injected_disconnects")
            elif self.schedule_reboot(device, "injected"):
                self.count("injected_reboots")

    async def _progress(self, report: Callable[[dict[str, Any]], None], interval: float) -> None:
        while True:
            report(self.snapshot())
            await asyncio.sleep(interval)

    async def _stop_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        links = [d.link for d in self.devices if d.link is not None]
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)

    def summary(
        self,
        final: Mapping[str, Any],
        cpu_s: float,
        start: _Sample | None = None,
        end: _Sample | None = None,
    ) -> dict[str, Any]:
        options = self.options
        wall = self.clock() - self.started_at
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        counters = {k: v for k, v in sorted(self.counters.items()) if not k.startswith("error:")}
        errors = {k[6:]: v for k, v in sorted(self.counters.items()) if k.startswith("error:")}
        first = self.devices[0].identifier if self.devices else None
        last = self.devices[-1].identifier if self.devices else None
        return {
            "nhlink_fleet": 1,
            "version": __version__,
            "hub": options.hub,
            "shards": [list(options.shard)],
            "devices": len(self.devices),
            "identities": [first, last],
            "auth": "certificate" if options.certs is not None else "shared_secret",
            "ramp_per_s": self.ramp,
            "wall_s": round(wall, 3),
            "ramp_s": round(self.ramp_done_at - self.started_at, 3) if self.ramp_done_at else None,
            "final": {
                k: final[k] for k in ("joined", "connected", "waiting", "connecting", "updating")
            },
            "counters": counters,
            "errors": errors,
            "join_latency": self.join_latency.to_json(),
            "process": {
                "cpu_s": round(cpu_s, 3),
                "max_rss_kib": rss_kib,
                **_footprint(len(self.devices), start, self.all_joined, end, self.steady),
            },
        }


#: seconds after every device joined when the steady (heartbeats only) window begins: past
#: the links' backoff-reset timer (30 s after a join) with a margin
STEADY_AFTER = 35.0


@dataclass(frozen=True)
class _Sample:
    """The process at one moment: the fleet's clock, CPU seconds, resident KiB."""

    time: float
    cpu: float
    rss_kib: int

    @classmethod
    def now(cls, at: float) -> _Sample:
        return cls(at, time.process_time(), _rss_kib())


def _rss_kib() -> int:
    """Resident set size now (Linux: /proc/self/statm), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _footprint(
    devices: int,
    start: _Sample | None,
    joined: _Sample | None,
    end: _Sample | None,
    steady: _Sample | None = None,
) -> dict[str, Any]:
    """Memory per device (resident growth from the start to the end, all devices up), the
    idle CPU between "all joined" and the end (heartbeats only, when no events were injected,
    plus the one-time work after the last joins), and the steady CPU from ``STEADY_AFTER`` s
    after "all joined" to the end (heartbeats only)."""
    if start is None or end is None:
        return {}
    out: dict[str, Any] = {
        "rss_start_kib": start.rss_kib,
        "rss_end_kib": end.rss_kib,
        "kib_per_device": round((end.rss_kib - start.rss_kib) / devices, 2),
    }
    if joined is not None:
        out["all_joined_after_s"] = round(joined.time - start.time, 3)
        # CPU per device from the start to "all joined": what a join costs this side (TCP,
        # upgrade, NH1, the join; heartbeats of the devices already up are included).
        out["join_cpu_ms"] = round(1000 * (joined.cpu - start.cpu) / devices, 4)
        window = end.time - joined.time
        if window > 0:
            out["idle_window_s"] = round(window, 3)
            out["idle_cpu_percent"] = round(100 * (end.cpu - joined.cpu) / window, 3)
    if steady is not None and end.time > steady.time:
        window = end.time - steady.time
        out["steady_window_s"] = round(window, 3)
        out["steady_cpu_percent"] = round(100 * (end.cpu - steady.cpu) / window, 3)
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# -- merging shard summaries ------------------------------------------------------------------


def merge(summaries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine shard summaries: counts add up, latencies come from the merged histograms."""
    if not summaries:
        raise FleetError("nothing to merge")
    for s in summaries:
        if s.get("nhlink_fleet") != 1:
            raise FleetError("not an nhlink fleet summary (no nhlink_fleet: 1)")
    hubs = {s["hub"] for s in summaries}
    if len(hubs) > 1:
        raise FleetError(f"summaries of different hubs: {', '.join(sorted(hubs))}")
    shards = sorted(tuple(x) for s in summaries for x in s["shards"])
    if len(set(shards)) != len(shards):
        raise FleetError(f"a shard appears twice: {shards}")
    counters: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    final: Counter[str] = Counter()
    for s in summaries:
        counters.update(s["counters"])
        errors.update(s["errors"])
        final.update(s["final"])
    hist = Histogram.merged(Histogram.from_json(s["join_latency"]) for s in summaries)
    ids = sorted(x for s in summaries for x in s["identities"] if x)
    return {
        "nhlink_fleet": 1,
        "version": summaries[0]["version"],
        "hub": summaries[0]["hub"],
        "shards": [list(x) for x in shards],
        "devices": sum(s["devices"] for s in summaries),
        "identities": [ids[0], ids[-1]] if ids else [None, None],
        "auth": summaries[0]["auth"],
        "ramp_per_s": sum(s["ramp_per_s"] for s in summaries),
        "wall_s": max(s["wall_s"] for s in summaries),
        "ramp_s": max((s["ramp_s"] for s in summaries if s["ramp_s"] is not None), default=None),
        "final": dict(final),
        "counters": dict(sorted(counters.items())),
        "errors": dict(sorted(errors.items())),
        "join_latency": hist.to_json(),
        "process": _merged_process(
            [s["process"] for s in summaries], [s["devices"] for s in summaries]
        ),
    }


def _merged_process(parts: list[Mapping[str, Any]], devices: list[int]) -> dict[str, Any]:
    """CPU adds up, peaks take the maximum, memory and join CPU per device are weighted by
    devices."""
    out: dict[str, Any] = {
        "cpu_s": round(sum(p["cpu_s"] for p in parts), 3),
        "max_rss_kib": max(p["max_rss_kib"] for p in parts),
    }
    for key, digits in (("kib_per_device", 2), ("join_cpu_ms", 4)):
        if all(key in p for p in parts):
            total = sum(p[key] * n for p, n in zip(parts, devices, strict=True))
            out[key] = round(total / sum(devices), digits)
    for key in ("idle_cpu_percent", "steady_cpu_percent"):
        if all(key in p for p in parts):
            out[f"{key}_sum"] = round(sum(p[key] for p in parts), 3)
    return out
