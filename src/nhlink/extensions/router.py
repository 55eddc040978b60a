"""ExtensionRouter: the ``extensions`` channel (PROTOCOL.md §8.1–§8.2) for one link.

Sequence, renegotiated from scratch on every connection::

    device ← extensions:get            (after the device join; §5)
    → phx_join "extensions" {name: version, ...}       (nothing if no extension is configured)
    ← phx_reply ok ["health", ...]     (a JSON array: what the server wants attached)
    start each listed extension, then → "<name>:attached" {}   (or "<name>:error" {"reason"})
    ← "<name>:<event>"  → extension.handle_event(event, payload) → "<name>:<reply event>"
    ← "attach"/"detach" {"extensions": [...] | "all" | name}   → start / stop (+ "<name>:detached")
    ← phx_reply error "detach" to any push of an extension (":attached" or an event)
                                                  → stop that extension
    ← phx_error / phx_close on "extensions"      → stop all, re-join after a short delay

Invariants (everything that changes them lives in this file):

* ``_epoch`` numbers the channel instance. It changes on every join, on channel loss, on
  connection loss and on :meth:`ExtensionRouter.stop`. An extension is attached iff its
  ``attached_epoch`` equals ``_epoch``; server events for others are dropped, and
  ``context.send`` refuses.
* Each extension has its own FIFO of jobs (start, event, stop) run by its own worker task, so
  calls into one extension are serialised in arrival order and one slow or failing extension
  never delays another, or the link's read loop. A worker exists only while it has jobs.
* Every ``start`` that succeeded is followed by exactly one ``stop``: each loss of attachment
  queues a stop job; a stop job for an extension that is not started does nothing.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, ConnectionClosed
from ..protocol import wire
from ..protocol.channel import ChannelClosed, Joined, JoinRefused, Push, Reply
from .extension import Extension, ExtensionContext

if TYPE_CHECKING:
    from .logs import NHLinkLogHandler

if TYPE_CHECKING:
    from ..link import NervesHubLink

__all__ = ["ExtensionRouter"]

logger = logging.getLogger(__name__)

# §8.2 — short local names for the wire strings (spelled in protocol/wire.py).
ATTACH_KEY: Final = wire.EXTENSIONS_ATTACH_KEY
ATTACH_ALL: Final = wire.EXTENSIONS_ATTACH_ALL
ERROR_REASON: Final = wire.EXTENSIONS_ERROR_REASON
REASON_START_FAILURE: Final = wire.EXTENSIONS_REASON_START_FAILURE
MAX_REASON_LENGTH: Final = 200

#: Delays before re-joining after the channel closed, crashed or the join was refused; the
#: last one repeats. Phoenix.js uses 1, 2, 5, 10 s; NHL a flat 5 s (§4.2, §12).
REJOIN_DELAYS: Final = (1.0, 2.0, 5.0, 10.0)


@dataclass
class _Job:
    kind: str  # "start" | "event" | "stop"
    epoch: int
    event: str = ""
    payload: Any = None
    send_detached: bool = False


@dataclass(eq=False)
class _Slot:
    """Router-side state of one configured extension."""

    name: str
    extension: Extension
    context: ExtensionContext
    started: bool = False  # start() succeeded and stop() has not been called since
    attached_epoch: int | None = None
    starting_epoch: int | None = None  # a start job is queued or running for this epoch
    #: identifies the current attachment; a "detach" reply to a push of an older one is stale
    attach_token: object | None = None
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    worker: asyncio.Task[None] | None = None


def _build_extension(name: str, value: Any) -> Extension | None:
    """One ``extensions=`` entry → an Extension (None: disabled). Raises ConfigError."""
    option = f"extensions.{name}"
    if value is None or value is False:
        return None
    if isinstance(value, type):
        raise ConfigError(option, f"give an instance, not the class {value.__name__}")
    if isinstance(value, Extension):
        extension = value
    elif name == "health":
        # The built-in extensions load when configured: a device without them never does.
        from .health import HealthExtension, is_provider
        from .linux import LinuxHealthProvider

        if value is True:
            extension = HealthExtension(LinuxHealthProvider())
        elif is_provider(value) or callable(value):
            extension = HealthExtension(value)
        else:
            raise ConfigError(
                option, f"expected True, a HealthProvider or a callable, not {value!r}"
            )
    elif name == "logging":
        from .logs import LoggingExtension, LoggingOptions

        if value is True:
            extension = LoggingExtension()
        elif isinstance(value, LoggingOptions):
            extension = LoggingExtension(value)
        else:
            raise ConfigError(option, f"expected True or LoggingOptions, not {value!r}")
    elif name == "geo":
        if value is True:
            raise ConfigError(option, "geo has no default resolver; give a resolver callable")
        if not callable(value):
            raise ConfigError(option, f"expected a resolver callable, not {value!r}")
        from .geo import GeoExtension

        extension = GeoExtension(value)
    elif name == "network_identity":
        from .network_identity import NetworkIdentityExtension

        extension = NetworkIdentityExtension.from_config(value)
    elif name == "local_shell":
        from ..remote.pty import ShellOptions
        from ..remote.shell import LocalShellExtension

        if value is True:
            extension = LocalShellExtension()
        elif isinstance(value, ShellOptions):
            extension = LocalShellExtension(value)
        else:
            raise ConfigError(option, f"expected True or ShellOptions, not {value!r}")
    else:
        raise ConfigError(
            option,
            f"{name!r} is not a built-in extension (health, logging, geo, local_shell, "
            f"network_identity); "
            f"give an Extension instance, not {value!r}",
        )
    if not extension.name:
        extension.name = name
    elif extension.name != name:
        raise ConfigError(option, f"the extension calls itself {extension.name!r}")
    if not isinstance(extension.version, str) or not extension.version:
        raise ConfigError(option, f"version must be a non-empty string: {extension.version!r}")
    return extension


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _names(value: object) -> list[str] | None:
    """The names an attach/detach payload designates; None for "all" (§8.2, NHL's forms)."""
    if value == ATTACH_ALL:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [name for name in value if isinstance(name, str)]
    logger.warning("ignoring attach/detach without usable extension names: %r", value)
    return []


class ExtensionRouter:
    """The ``extensions`` channel of one :class:`~nhlink.link.NervesHubLink` (``link.extensions``).

    ``config`` is the link's ``extensions=`` mapping, validated here: raises
    :class:`~nhlink.errors.ConfigError` (option ``"extensions.<name>"``) for an unknown shape.
    See the module docstring for the protocol and the invariants.

    ``rejoin_delays`` and ``stop_timeout`` may be changed before the link starts.
    """

    __slots__ = (
        "_epoch",
        "_joined",
        "_rejoin_attempts",
        "_rejoin_task",
        "_slots",
        "_stopped",
        "config",
        "link",
        "rejoin_delays",
        "stop_timeout",
    )

    def __init__(self, link: NervesHubLink, config: Mapping[str, Any]) -> None:
        self.link = link
        self.config = dict(config)
        self.rejoin_delays: tuple[float, ...] = REJOIN_DELAYS
        self.stop_timeout = 5.0
        self._slots: dict[str, _Slot] = {}
        seen: set[int] = set()
        for name, value in self.config.items():
            if not isinstance(name, str) or not name or ":" in name:
                raise ConfigError(
                    f"extensions.{name}", "extension names are non-empty strings without ':'"
                )
            extension = _build_extension(name, value)
            if extension is None:
                continue
            if id(extension) in seen:
                raise ConfigError(f"extensions.{name}", "the same instance is configured twice")
            seen.add(id(extension))
            context = ExtensionContext(self, name)
            extension.context = context
            self._slots[name] = _Slot(name, extension, context)
        self._epoch = 0
        self._joined = False
        self._rejoin_attempts = 0
        self._rejoin_task: asyncio.Task[None] | None = None
        self._stopped = False  # stop() was called; cleared by the next extensions:get
        link.on_topic(
            wire.TOPIC_EXTENSIONS,
            self._on_push,
            self._on_channel_closed,
            joined=self._on_joined,
            join_refused=self._on_join_refused,
        )

    # -- public API ------------------------------------------------------------------------------

    @property
    def configured(self) -> tuple[str, ...]:
        """Names of the configured (enabled) extensions, in configuration order."""
        return tuple(self._slots)

    @property
    def attached(self) -> frozenset[str]:
        """Names of the extensions attached on the current connection."""
        return frozenset(name for name in self._slots if self.is_attached(name))

    def is_attached(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and self._joined and slot.attached_epoch == self._epoch

    def get(self, name: str) -> Extension | None:
        """The configured extension called ``name``, or None."""
        slot = self._slots.get(name)
        return slot.extension if slot is not None else None

    def join_payload(self) -> dict[str, str]:
        """``{name: version}`` of every configured extension (§8.1)."""
        return {name: slot.extension.version for name, slot in self._slots.items()}

    def log_handler(self, level: int | None = None) -> NHLinkLogHandler:
        """A logging handler shipping records through the ``logging`` extension.

        ``level`` defaults to ``LoggingOptions.level``. Raises ConfigError when ``logging`` is
        not configured. Add it yourself, e.g.
        ``logging.getLogger().addHandler(link.extensions.log_handler())``.
        """
        extension = self.get("logging")
        from .logs import LoggingExtension, NHLinkLogHandler

        if not isinstance(extension, LoggingExtension):
            raise ConfigError("extensions.logging", "the logging extension is not configured")
        return NHLinkLogHandler(extension, extension.options.level if level is None else level)

    def log(self, level: str | int, message: str, **meta: str) -> None:
        """Ship one line through ``logging`` when it is attached; otherwise drop it silently.
        Never blocks; callable from any thread."""
        extension = self.get("logging")
        if extension is not None and hasattr(extension, "submit"):  # a LoggingExtension
            extension.submit(level, message, meta)

    async def send_for(self, name: str, event: str, payload: Any) -> bool:
        """Push ``"<name>:<event>"`` if ``name`` is attached (see ExtensionContext.send)."""
        slot = self._slots.get(name)
        if slot is None or not self.is_attached(name):
            return False
        return await self._push(
            f"{name}:{event}", payload, on_reply=self._detach_on_refusal(slot, slot.attach_token)
        )

    # -- hooks called by the link --------------------------------------------------------------

    async def on_extensions_get(self, payload: Any) -> None:
        """``extensions:get`` on ``device`` (§8.1): (re)negotiate from scratch."""
        if not self._slots:
            logger.debug("%s: extensions:get: no extension configured; not joining", self._name)
            return
        self._stopped = False
        self._cancel_rejoin()
        self._rejoin_attempts = 0
        self._lose_channel()
        await self._join()

    async def connection_lost(self) -> None:
        """The socket is gone: forget every attachment and stop the extensions."""
        self._cancel_rejoin()
        self._rejoin_attempts = 0
        self._lose_channel()

    async def stop(self) -> None:
        """Stop every extension (waiting up to ``stop_timeout``), cancel pending work.

        Until the next ``extensions:get`` (a new connection), late replies and server events
        start nothing.
        """
        self._stopped = True
        self._cancel_rejoin()
        self._lose_channel()
        workers = [slot.worker for slot in self._slots.values() if slot.worker is not None]
        if not workers:
            return
        _, pending = await asyncio.wait(workers, timeout=self.stop_timeout)
        if not pending:
            return
        # A handler is stuck: cancel its worker, then still give a started extension its stop().
        for task in pending:
            logger.warning("%s: extension worker %s did not finish in time", self._name, task)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for slot in self._slots.values():
            slot.jobs.clear()
            if slot.started:
                slot.started = False
                try:
                    await asyncio.wait_for(_maybe_await(slot.extension.stop()), self.stop_timeout)
                except Exception:
                    logger.exception("%s: extension %s failed to stop", self._name, slot.name)

    # -- channel ---------------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return self.link.name

    def _lose_channel(self) -> None:
        """The channel instance is gone (or being replaced): detach everything, stop all."""
        self._epoch += 1
        self._joined = False
        for slot in self._slots.values():
            slot.attached_epoch = None
            slot.starting_epoch = None
            slot.attach_token = None
            self._enqueue(slot, _Job("stop", self._epoch))

    async def _join(self) -> None:
        self._epoch += 1
        self._joined = False
        try:
            await self.link.join(wire.TOPIC_EXTENSIONS, self.join_payload())
        except ConnectionClosed:
            logger.debug("%s: cannot join extensions: not connected", self._name)

    async def _on_joined(self, event: Joined) -> None:
        if self._stopped:
            return
        self._joined = True
        self._rejoin_attempts = 0
        response = event.response
        if not isinstance(response, list):
            # §8.1: the reply is a JSON array; anything else names nothing to attach.
            logger.warning("%s: extensions join reply is not a list: %r", self._name, response)
            response = []
        logger.info("%s: extensions joined; server wants %s", self._name, response)
        for name in response:
            if isinstance(name, str) and name in self._slots:
                self._attach(self._slots[name])
            else:
                logger.debug("%s: server offers extension %r; not configured", self._name, name)

    async def _on_join_refused(self, event: JoinRefused) -> None:
        logger.warning("%s: extensions join refused: %r", self._name, event.response)
        if not self._stopped:
            self._schedule_rejoin()

    async def _on_channel_closed(self, event: ChannelClosed) -> None:
        # §4.2: the channel is gone. AVM drops these events and loses its extensions until the
        # next reconnect; we stop them and re-join, as NHL does.
        kind = "crashed (phx_error)" if event.crashed else "closed (phx_close)"
        logger.warning("%s: extensions channel %s; re-joining", self._name, kind)
        self._lose_channel()
        if not self._stopped:
            self._schedule_rejoin()

    def _schedule_rejoin(self) -> None:
        self._cancel_rejoin()
        delays = self.rejoin_delays or REJOIN_DELAYS
        delay = delays[min(self._rejoin_attempts, len(delays) - 1)]
        self._rejoin_attempts += 1
        self._rejoin_task = asyncio.get_running_loop().create_task(
            self._rejoin_after(delay), name=f"nhlink:{self._name}:extensions-rejoin"
        )

    def _cancel_rejoin(self) -> None:
        task, self._rejoin_task = self._rejoin_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _rejoin_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._rejoin_task = None
        if not self.link.session.is_joined(wire.TOPIC_DEVICE):
            return  # the reconnect's extensions:get will negotiate
        await self._join()

    # -- server events ---------------------------------------------------------------------------

    async def _on_push(self, push: Push) -> None:
        event, payload = push.event, push.payload
        if event in (wire.EXTENSION_ATTACH, wire.EXTENSION_DETACH):
            value = payload.get(ATTACH_KEY) if isinstance(payload, dict) else None
            names = _names(value)
            if event == wire.EXTENSION_ATTACH:
                self._on_attach_request(names)
            else:
                self._on_detach_request(names)
            return
        name, sep, sub = event.partition(":")
        slot = self._slots.get(name) if sep else None
        if slot is None:
            logger.info("%s: ignoring extensions event %r", self._name, event)
            return
        if not self.is_attached(name):
            logger.debug("%s: dropping %r: %s is not attached", self._name, event, name)
            return
        self._enqueue(slot, _Job("event", self._epoch, sub, payload))

    def _on_attach_request(self, names: list[str] | None) -> None:
        if not self._joined:
            return
        for name in self._slots if names is None else names:
            slot = self._slots.get(name)
            if slot is None:
                logger.info("%s: server asks to attach %r; not configured", self._name, name)
                continue
            self._attach(slot)

    def _on_detach_request(self, names: list[str] | None) -> None:
        for name in self._slots if names is None else names:
            slot = self._slots.get(name)
            if slot is not None:
                self._detach(slot, send_detached=True)

    def _attach(self, slot: _Slot) -> None:
        epoch = self._epoch
        if slot.attached_epoch == epoch or slot.starting_epoch == epoch:
            return
        slot.starting_epoch = epoch
        self._enqueue(slot, _Job("start", epoch))

    def _detach(self, slot: _Slot, *, send_detached: bool) -> None:
        if slot.attached_epoch != self._epoch and slot.starting_epoch != self._epoch:
            return
        logger.info("%s: detaching extension %s", self._name, slot.name)
        slot.attached_epoch = None
        slot.starting_epoch = None
        slot.attach_token = None
        self._enqueue(slot, _Job("stop", self._epoch, send_detached=send_detached))

    def _detach_on_refusal(
        self, slot: _Slot, token: object | None
    ) -> Callable[[Reply], Awaitable[None]]:
        """A reply handler for one push of ``slot``: the bare ``"detach"`` error reply (§8.2)
        means the server does not consider the extension attached: stop it."""
        epoch = self._epoch

        async def on_reply(reply: Reply) -> None:
            if reply.status != wire.REPLY_ERROR:
                return
            if reply.response == wire.EXTENSION_DETACH_REPLY:
                if token is not None and slot.attach_token is token and epoch == self._epoch:
                    logger.warning("%s: server refused extension %s", self._name, slot.name)
                    self._detach(slot, send_detached=False)
            else:
                logger.warning(
                    "%s: the server answered a %s push with %r",
                    self._name,
                    slot.name,
                    reply.response,
                )

        return on_reply

    # -- sending ---------------------------------------------------------------------------------

    async def _push(
        self,
        event: str,
        payload: Any,
        on_reply: Callable[[Reply], Awaitable[None]] | None = None,
    ) -> bool:
        if not self.link.session.is_joined(wire.TOPIC_EXTENSIONS):
            return False
        try:
            await self.link.send(wire.TOPIC_EXTENSIONS, event, payload, on_reply=on_reply)
        except ConnectionClosed:
            return False
        return True

    async def _push_attached(self, slot: _Slot, epoch: int) -> bool:
        """Send ``"<name>:attached"``, watching for the bare ``"detach"`` error reply (§8.2).

        The reply handler is registered for the message's ref before the write
        (``send(on_reply=...)``), so the reply cannot race past it; the token ties it to this
        attachment, so a late reply to an earlier one cannot detach a newer one."""
        if not self.link.session.is_joined(wire.TOPIC_EXTENSIONS):
            return False
        token = object()
        slot.attach_token = token
        sent = await self._push(
            slot.name + wire.EXTENSION_ATTACHED_SUFFIX, {}, self._detach_on_refusal(slot, token)
        )
        if not sent:
            slot.attach_token = None
        return sent

    # -- per-extension workers -------------------------------------------------------------------

    def _enqueue(self, slot: _Slot, job: _Job) -> None:
        if job.kind == "stop" and not slot.started and not slot.jobs and slot.worker is None:
            return  # nothing to stop, nothing queued that could start it
        slot.jobs.append(job)
        if slot.worker is None:
            slot.worker = asyncio.get_running_loop().create_task(
                self._work(slot), name=f"nhlink:{self._name}:extension:{slot.name}"
            )

    async def _work(self, slot: _Slot) -> None:
        try:
            while slot.jobs:
                job = slot.jobs.popleft()
                try:
                    await self._run(slot, job)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception(
                        "%s: extension %s failed (%s %s)",
                        self._name,
                        slot.name,
                        job.kind,
                        job.event,
                    )
        finally:
            slot.worker = None

    async def _run(self, slot: _Slot, job: _Job) -> None:
        if job.kind == "start":
            await self._run_start(slot, job.epoch)
        elif job.kind == "event":
            await self._run_event(slot, job)
        else:
            await self._run_stop(slot, job)

    async def _run_start(self, slot: _Slot, epoch: int) -> None:
        if slot.starting_epoch != epoch:
            return  # detached or channel lost while queued
        if not slot.started:
            try:
                await _maybe_await(slot.extension.start(slot.context))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("%s: extension %s failed to start", self._name, slot.name)
                if slot.starting_epoch == epoch:
                    slot.starting_epoch = None
                    reason = f"{REASON_START_FAILURE}: {type(exc).__name__}: {exc}"
                    await self._push(
                        slot.name + wire.EXTENSION_ERROR_SUFFIX,
                        {ERROR_REASON: reason[:MAX_REASON_LENGTH]},
                    )
                return
            slot.started = True
        if slot.starting_epoch != epoch or epoch != self._epoch:
            return  # lost meanwhile; the stop job queued then will stop it
        slot.starting_epoch = None
        slot.attached_epoch = epoch
        if not await self._push_attached(slot, epoch):
            slot.attached_epoch = None
            return
        logger.info("%s: extension %s attached", self._name, slot.name)

    async def _run_event(self, slot: _Slot, job: _Job) -> None:
        if slot.attached_epoch != job.epoch:
            return
        reply = await _maybe_await(slot.extension.handle_event(job.event, job.payload))
        if reply is None:
            return
        if not isinstance(reply, tuple | list) or len(reply) != 2 or not isinstance(reply[0], str):
            logger.error(
                "%s: extension %s answered %r: expected (event, payload) or None",
                self._name,
                slot.name,
                reply,
            )
            return
        if not await slot.context.send(reply[0], reply[1]):
            logger.debug("%s: %s reply %r not sent: detached", self._name, slot.name, reply[0])

    async def _run_stop(self, slot: _Slot, job: _Job) -> None:
        if slot.started:
            slot.started = False
            try:
                await _maybe_await(slot.extension.stop())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: extension %s failed to stop", self._name, slot.name)
        if job.send_detached and job.epoch == self._epoch and self._joined:
            await self._push(slot.name + wire.EXTENSION_DETACHED_SUFFIX, {})
            logger.info("%s: extension %s detached", self._name, slot.name)
