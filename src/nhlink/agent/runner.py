"""``nhlink run``: the agent. One process, one :class:`~nhlink.NervesHubLink` per ``[[device]]``,
driven by the configuration file, supervised by systemd, inspected over the control socket.

A thin layer over the library: the agent's policy lives in :class:`AgentClient` (a
:class:`~nhlink.Client`: maintenance windows, the update lock, hook commands) and
:class:`LockedWriter` (the configured writer behind the machine-wide update lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..client import Apply, Client, Ignore, Reschedule
from ..errors import NHLinkError, WriterError
from ..extensions.linux import LinuxHealthProvider
from ..link import NervesHubLink
from ..protocol.lifecycle import Decision
from ..update.state import run_in_thread
from ..update.writer import FwupWriter, as_writer
from ..update.writers import _proc
from .config import AgentConfig, DeviceSpec, load
from .control import ControlServer
from .lock import LockBusy, UpdateLock
from .notify import Notifier

__all__ = ["Agent", "AgentBusy", "AgentClient", "LockedWriter", "run_hook"]

logger = logging.getLogger("nhlink.agent")

#: seconds to wait for the server to confirm a ``completed`` before rebooting anyway
VERDICT_WAIT = 60.0
VERDICT_POLL = 0.2
#: when ``update_available`` cannot decide (its command failed), ask again after this long
POLICY_FAILURE_RESCHEDULE_MS = 5 * 60 * 1000


class AgentBusy(RuntimeError):
    """Another agent runs with the same control socket."""


async def _call(method: Any, *args: Any) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    return await run_in_thread(method, *args)


async def run_hook(
    device: str,
    hook: str,
    argv: list[str],
    *,
    timeout: float,
    env: Mapping[str, str],
    ship: Callable[[str], None] | None = None,
) -> _proc.Result:
    """Run a hook command; its output goes to the log, line by line (and to ``ship``: the
    device's NervesHub log). Raises WriterError when it cannot start or outlives ``timeout``
    (it is killed)."""

    def log_line(text: str) -> None:
        logger.info("%s: %s: %s", device, hook, text)
        if ship is not None:
            ship(f"{hook}: {text}")

    logger.info("%s: running the %s hook: %s", device, hook, " ".join(argv))
    result = await _proc.run(
        argv, env=env, timeout=timeout, on_stdout_line=log_line, on_stderr_line=log_line
    )
    if result.returncode:
        logger.warning("%s: the %s hook exited with status %d", device, hook, result.returncode)
    return result


class LockedWriter(FwupWriter):
    """The configured writer behind the machine-wide update lock: taken at ``fwup_begin``
    (refused at once when another updater holds it), released at finish, abort or suspend."""

    def __init__(self, inner: FwupWriter, lock: UpdateLock) -> None:
        self.inner = inner
        self.lock = lock
        self.supports_resume = inner.supports_resume
        self.streams_install = inner.streams_install
        self.wants_public_keys = inner.wants_public_keys
        for name in (
            "set_public_keys",
            "fwup_chunk",
            "fwup_sync",
            "fwup_read",
            "fwup_confirm",
            "is_confirmed",
            "auto_revert_detected",
            "set_progress_reporter",
        ):
            setattr(self, name, getattr(inner, name))  # as they are: plain stays plain

    def __repr__(self) -> str:
        return f"<locked {self.inner!r}>"

    async def fwup_begin(
        self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0
    ) -> None:
        try:
            self.lock.acquire()
        except LockBusy as exc:
            raise WriterError(str(exc)) from None
        try:
            if offset:
                await _call(self.inner.fwup_begin, size, firmware_meta, offset)
            else:  # the seed's two-argument signature
                await _call(self.inner.fwup_begin, size, firmware_meta)
        except BaseException:
            self.lock.release()
            raise

    async def _then_release(self, method: Any) -> Any:
        try:
            return await _call(method)
        finally:
            self.lock.release()

    async def fwup_finish(self) -> Any:
        return await self._then_release(self.inner.fwup_finish)

    async def fwup_abort(self) -> Any:
        return await self._then_release(self.inner.fwup_abort)

    async def fwup_suspend(self) -> Any:
        return await self._then_release(self.inner.fwup_suspend)


class CommandHealth(LinuxHealthProvider):
    """This machine's health metrics plus what ``hooks.health`` prints: ``name=value`` lines
    or one JSON object of numbers."""

    def __init__(self, device: str, argv: list[str], timeout: float) -> None:
        super().__init__()
        self.device = device
        self.argv = argv
        self.timeout = timeout

    async def metrics(self) -> dict[str, float]:  # type: ignore[override]
        metrics = dict(await run_in_thread(super().metrics))
        try:
            result = await _proc.run(self.argv, timeout=self.timeout)
        except WriterError as exc:
            logger.warning("%s: health hook: %s", self.device, exc)
            return metrics
        if result.returncode:
            logger.warning("%s: health hook failed: %s", self.device, result.describe())
            return metrics
        metrics.update(parse_metrics(result.stdout.decode("utf-8", "replace")))
        return metrics


def parse_metrics(text: str) -> dict[str, float]:
    """``name=value`` lines (``#`` comments), or a JSON object; non-numbers are dropped."""
    text = text.strip()
    pairs: dict[str, Any] = {}
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            loaded = json.loads(text)
            if isinstance(loaded, dict):
                pairs = loaded
    else:
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                pairs[name.strip()] = value.strip()
    out: dict[str, float] = {}
    for name, value in pairs.items():
        if isinstance(value, bool):
            continue
        with contextlib.suppress(TypeError, ValueError):
            out[str(name)] = float(value)
    return out


def _parse_decision(text: str) -> Decision:
    words = text.split(None, 2)
    verb = words[0].lower()
    if verb == "apply":
        return Apply()
    if verb == "ignore":
        return Ignore(" ".join(words[1:]) or "ignored by hooks.update_available")
    if verb == "reschedule" and len(words) >= 2:
        seconds = float(words[1])
        if not seconds >= 0:
            raise ValueError("negative delay")
        reason = words[2] if len(words) > 2 else "rescheduled by hooks.update_available"
        return Reschedule(round(seconds * 1000), reason)
    raise ValueError(f"not apply / ignore [REASON] / reschedule SECONDS [REASON]: {text!r}")


class AgentClient(Client):
    """The agent's policy, as library callbacks."""

    def __init__(self, device: Device) -> None:
        self.device = device

    @property
    def spec(self) -> DeviceSpec:
        return self.device.spec

    def _env(self, meta: Mapping[str, Any] | None = None) -> dict[str, str]:
        current = self.spec.link_options["firmware_meta"]
        env = {
            "NHLINK_DEVICE": self.spec.name,
            "NHLINK_IDENTITY": self.spec.identity,
            "NHLINK_CURRENT_VERSION": str(current.get("version", "")),
            "NHLINK_CURRENT_UUID": str(current.get("uuid", "")),
        }
        if meta is not None:
            env.update(
                NHLINK_FIRMWARE_UUID=str(meta.get("uuid", "")),
                NHLINK_FIRMWARE_VERSION=str(meta.get("version", "")),
                NHLINK_FIRMWARE_PRODUCT=str(meta.get("product", "")),
                NHLINK_FIRMWARE_META=json.dumps(dict(meta), default=str),
            )
        return env

    async def update_available(self, firmware_meta: Mapping[str, Any]) -> Decision:
        version = firmware_meta.get("version")
        now = self.device.agent.clock()
        delay = self.spec.update.schedule.delay(now, self.device.agent.rand)
        if delay > 0:
            at = dt.datetime.fromtimestamp(now + delay).astimezone().isoformat(timespec="seconds")
            logger.info(
                "%s: update %s offered outside the maintenance windows", self.spec.name, version
            )
            return Reschedule(
                max(1, round(delay * 1000)), f"outside the maintenance windows; next start {at}"
            )
        busy = self.device.lock.busy()
        if busy:
            logger.info("%s: update %s waits: %s", self.spec.name, version, busy)
            return Reschedule(max(1, round(self.spec.update.busy_retry * 1000)), busy)
        policy = self.spec.hooks.update_available
        if policy == "apply":
            return Apply()
        if policy == "ignore":
            return Ignore('this device ignores updates (hooks.update_available = "ignore")')
        assert isinstance(policy, list)
        try:
            result = await run_hook(
                self.spec.name,
                "update_available",
                policy,
                timeout=self.spec.hooks.timeout,
                env=self._env(firmware_meta),
                ship=self.device.ship,
            )
        except WriterError as exc:
            return Reschedule(POLICY_FAILURE_RESCHEDULE_MS, f"hooks.update_available: {exc}")
        out = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode == 0:
            if not out:
                return Apply()
            try:
                return _parse_decision(out.splitlines()[0])
            except ValueError as exc:
                return Reschedule(POLICY_FAILURE_RESCHEDULE_MS, f"hooks.update_available: {exc}")
        if result.returncode == 1:
            return Ignore(out.splitlines()[0] if out else "ignored by hooks.update_available")
        return Reschedule(
            POLICY_FAILURE_RESCHEDULE_MS,
            f"hooks.update_available failed: {result.describe()}",
        )

    async def reboot(self) -> None:
        await self.device.reboot("the server asked for a reboot")

    async def identify(self) -> None:
        argv = self.spec.hooks.identify
        if argv is None:
            logger.info("%s: the server asked this device to identify itself", self.spec.name)
            return
        await self.device.hook("identify", argv)

    def update_completed(self, firmware_meta: Mapping[str, Any]) -> None:
        logger.info("%s: firmware %s installed", self.spec.name, firmware_meta.get("version"))
        if self.spec.update.reboot_after_update:
            self.device.spawn(self.device.reboot_after_update(), "reboot")

    def fwup_error(self, error: BaseException) -> None:
        logger.error("%s: firmware update failed: %s", self.spec.name, error)

    def handle_connected(self) -> None:
        logger.debug("%s: connected", self.spec.name)


class Device:
    """One running ``[[device]]``: its link, client and writer."""

    def __init__(self, agent: Agent, spec: DeviceSpec) -> None:
        self.agent = agent
        self.spec = spec
        self.lock = UpdateLock(agent.config.agent.lock_file, f"nhlink run (device {spec.name})")
        writer = None
        if spec.writer is not None:
            writer = LockedWriter(as_writer(spec.writer.build()), self.lock)
        extensions: dict[str, Any] = {}
        if spec.extensions.get("health"):
            if spec.hooks.health:
                extensions["health"] = CommandHealth(
                    spec.name, spec.hooks.health, spec.hooks.timeout
                )
            else:
                extensions["health"] = True
        if spec.extensions.get("logging"):
            extensions["logging"] = True
        remote = spec.remote_options()
        extensions.update(remote.pop("extensions"))
        self.client = AgentClient(self)
        options = dict(spec.link_options)
        Path(options["state_dir"]).mkdir(parents=True, exist_ok=True)
        self.link = NervesHubLink(
            client=self.client,
            fwup_writer=writer,
            extensions=extensions,
            download_options=spec.download_options(),
            **remote,
            **options,
        )
        self.tasks: set[asyncio.Task[Any]] = set()
        self.started_at = time.time()

    @property
    def name(self) -> str:
        return self.spec.name

    def spawn(self, coro: Any, what: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"nhlink-agent:{self.name}:{what}")
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: %s failed: %r", self.name, task.get_name(), task.exception())

    async def start(self) -> None:
        await self.link.start()
        self.spawn(self._confirm_when_joined(), "confirm")

    async def stop(self, *, suspend: bool = True) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.link.stop(suspend_update=suspend)

    async def hook(self, name: str, argv: list[str], meta: Mapping[str, Any] | None = None) -> int:
        """Run a hook; its exit status (-1 when it could not run or timed out)."""
        try:
            result = await run_hook(
                self.name,
                name,
                argv,
                timeout=self.spec.hooks.timeout,
                env=self.client._env(meta),
                ship=self.ship,
            )
        except WriterError as exc:
            logger.error("%s: %s hook: %s", self.name, name, exc)
            return -1
        return result.returncode

    def ship(self, line: str, level: str = "info") -> None:
        """A line for NervesHub's device log (the ``logging`` extension, when attached).
        nhlink's own log records are never shipped (they could feed back), so the agent
        sends what an operator looking at the device page wants: hook output, reboots,
        confirmations."""
        self.link.log(level, line)

    async def reboot(self, why: str) -> None:
        argv = self.spec.hooks.reboot
        if argv is None:
            logger.warning("%s: %s; no reboot hook configured", self.name, why)
            return
        logger.warning("%s: rebooting: %s", self.name, why)
        self.ship(f"rebooting: {why}", "warning")
        await self.hook("reboot", argv)

    async def reboot_after_update(self) -> None:
        # Reboot only once the server has the verdict (or after VERDICT_WAIT): a reboot that
        # swallowed ``completed`` would leave the update "in progress" on the server.
        for _ in range(round(VERDICT_WAIT / VERDICT_POLL)):
            if not self.link.updates.verdict_pending:
                break
            await asyncio.sleep(VERDICT_POLL)  # delivery is learnt from heartbeat replies
        await self.reboot("a new firmware was installed")

    async def _confirm_when_joined(self) -> None:
        """``[update] confirm``: validate the running firmware once it proved it can reach
        NervesHub (``on-join``), when a check command succeeds, or never (``manual``)."""
        rule = self.spec.update.confirm
        if rule == "manual":
            return
        await self.link.wait_joined()
        if await run_in_thread(self.link.firmware_validated):
            return
        if isinstance(rule, list):
            status = await self.hook("confirm", rule)
            if status != 0:
                logger.warning(
                    "%s: the confirm check failed (status %d): the firmware stays unvalidated",
                    self.name,
                    status,
                )
                return
        try:
            await self.link.confirm_update()
            logger.info("%s: the running firmware is confirmed", self.name)
            self.ship(
                f"firmware {self.spec.link_options['firmware_meta'].get('version')} confirmed"
            )
        except NHLinkError as exc:
            logger.error("%s: confirming the running firmware failed: %s", self.name, exc)

    def snapshot(self) -> dict[str, Any]:
        """What ``nhlink status`` shows for this device."""
        link = self.link
        status = link.status
        updates = link.updates
        meta = link.config.firmware_meta
        current = updates.current
        update = None
        if current is not None:
            update = {
                "uuid": current.uuid,
                "version": current.firmware_meta.get("version"),
                "phase": updates.phase,
                "percent": updates.percent,
            }
        rescheduled = None
        if updates.rescheduled is not None:
            info, at = updates.rescheduled
            in_s = max(0.0, at - asyncio.get_running_loop().time())
            rescheduled = {
                "uuid": info.uuid,
                "version": info.firmware_meta.get("version"),
                "at": _iso(time.time() + in_s),
            }
        try:
            validated: bool | None = link.firmware_validated()
        except Exception:
            validated = None
        return {
            "name": self.name,
            "identity": self.spec.identity,
            "url": self.spec.url,
            "state": status.state.value,
            "joins": status.joins,
            "connect_attempts": status.connect_attempts,
            "last_joined_at": _iso(status.last_joined_at),
            "next_retry_in": status.next_retry_in,
            "firmware": {k: meta.get(k) for k in ("product", "version", "uuid")},
            "validated": validated,
            "update": update,
            "rescheduled": rescheduled,
            "updates_completed": updates.completed_count,
            "updates_failed": updates.failed_count,
            "last_update_error": str(updates.last_error) if updates.last_error else None,
            "last_error": str(status.last_error) if status.last_error else None,
        }

    def status_line(self) -> str:
        updates = self.link.updates
        if updates.current is not None:
            version = updates.current.firmware_meta.get("version")
            percent = updates.percent
            phase = updates.phase or "updating"
            return f"{self.name}: {phase} {version}" + (
                f" {percent} %" if percent is not None else ""
            )
        return f"{self.name}: {self.link.status.state.value}"


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return dt.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


class Agent:
    """Runs the devices of a configuration file until SIGTERM/SIGINT; SIGHUP reloads."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.devices: dict[str, Device] = {}
        self.notifier = Notifier.from_env()
        self.clock = time.time
        self.rand = random.random
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._instance = UpdateLock(
            config.agent.control_socket.with_name(config.agent.control_socket.name + ".lock"),
            "nhlink run",
        )
        self.control = ControlServer(config.agent.control_socket, self.handle)
        # Hooks and command writers inherit the environment: never a secret from it. The
        # agent keeps its own copy to read the secret again on reload.
        self._environ = dict(os.environ)
        for name in config.secret_env:
            os.environ.pop(name, None)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> int:
        # The control socket's directory is private (the lock file lives there too).
        self.config.agent.control_socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._instance.acquire()
        except LockBusy:
            raise AgentBusy(
                f"another nhlink agent is running (pid {self._instance.holder() or '?'}): it "
                f"holds {self._instance.path}"
            ) from None
        loop = asyncio.get_running_loop()
        try:
            await self.control.start()
            for spec in self.config.devices:
                await self._start(spec)  # one that cannot start stops the others (finally)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
            self.notifier.ready(self.status_line())
            logger.info(
                "nhlink %s agent running %d device(s) from %s; control socket %s",
                __version__,
                len(self.devices),
                self.config.path,
                self.config.agent.control_socket,
            )
            background = [
                asyncio.create_task(self._report_status(), name="nhlink-agent:status"),
            ]
            if self.notifier.watchdog_interval:
                background.append(
                    asyncio.create_task(self._watchdog(), name="nhlink-agent:watchdog")
                )
            await self._stop.wait()
            logger.info("stopping")
            self.notifier.stopping()
            for task in background:
                task.cancel()
        finally:
            self._stop.set()  # a reload still running must not start devices any more
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            async with self._reload_lock:
                leftover = list(self.devices.values())
                self.devices.clear()
                await asyncio.gather(*(d.stop(suspend=True) for d in leftover))
            await self.control.close()
            self.notifier.close()
            self._instance.release()
        logger.info("stopped")
        return 0

    def stop(self) -> None:
        self._stop.set()

    async def _start(self, spec: DeviceSpec) -> None:
        device = Device(self, spec)
        await device.start()
        self.devices[spec.name] = device

    async def reload(self) -> None:
        """SIGHUP: re-read the file; restart only the devices whose settings changed. A bad
        file changes nothing (the error is logged)."""
        async with self._reload_lock:
            if self._stop.is_set():
                return
            self.notifier.reloading()
            try:
                new = await run_in_thread(load, self.config.path, self._environ)
            except Exception as exc:  # AgentConfigError, or anything unexpected
                logger.error("reload refused, the running configuration stays: %s", exc)
                self.notifier.ready(self.status_line())
                return
            for name in new.secret_env:
                os.environ.pop(name, None)
            if new.agent != self.config.agent:
                logger.warning("reload: changes to [agent] take effect at the next start")
            wanted = {spec.name: spec for spec in new.devices}
            kept, restarted, added, removed = [], [], [], []
            for name in list(self.devices):
                if name not in wanted:
                    await self.devices.pop(name).stop(suspend=True)
                    removed.append(name)
            for name, spec in wanted.items():
                device = self.devices.get(name)
                if device is not None and replace(device.spec, index=0) == replace(spec, index=0):
                    device.spec = spec
                    kept.append(name)
                    continue
                if device is not None:
                    await self.devices.pop(name).stop(suspend=True)
                    restarted.append(name)
                else:
                    added.append(name)
                if self._stop.is_set():
                    break
                try:
                    await self._start(spec)
                except Exception as exc:
                    logger.error("reload: device %s cannot start: %s", name, exc)
            self.config = replace(new, agent=self.config.agent)
            logger.info(
                "reloaded: %d unchanged, restarted %s, added %s, removed %s",
                len(kept),
                restarted or "none",
                added or "none",
                removed or "none",
            )
            self.notifier.ready(self.status_line())

    # -- systemd ------------------------------------------------------------------------------

    def status_line(self) -> str:
        if not self.devices:
            return "no devices"
        return "; ".join(d.status_line() for d in self.devices.values())

    async def _report_status(self) -> None:
        while True:
            self.notifier.status(self.status_line())
            await asyncio.sleep(1.0)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while True:  # from the event loop: a blocked loop stops the pings, systemd restarts us
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- the control socket -------------------------------------------------------------------

    def _select(self, name: Any) -> list[Device]:
        if name is None:
            return list(self.devices.values())
        if name not in self.devices:
            raise KeyError(f"no device named {name!r} (running: {', '.join(self.devices)})")
        return [self.devices[name]]

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        try:
            devices = self._select(request.get("device"))
        except KeyError as exc:
            return {"ok": False, "error": exc.args[0]}
        if command == "status":
            return {
                "ok": True,
                "agent": {
                    "pid": os.getpid(),
                    "version": __version__,
                    "config": str(self.config.path),
                    "started_at": _iso(self.started_at),
                },
                "devices": [d.snapshot() for d in devices],
            }
        if command == "confirm":
            confirmed: list[str] = []
            for device in devices:
                try:
                    await device.link.confirm_update()
                except NHLinkError as exc:
                    return {"ok": False, "error": f"{device.name}: {exc}", "confirmed": confirmed}
                confirmed.append(device.name)
            return {"ok": True, "confirmed": confirmed}
        if command == "reconnect":
            for device in devices:
                device.link.reconnect()
            return {"ok": True, "reconnected": [d.name for d in devices]}
        if command == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}
