"""NervesHubLink: connect → join → dispatch → heartbeat → backoff, as one asyncio task.

The Python counterpart of NervesHubLinkAVM's connection GenServer. One instance is one device
identity; several can run in one process (see :mod:`nhlink.instances`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import instances
from .callbacks import CallbackQueue, call_callback
from .client import Client, DefaultClient
from .config import LinkConfig
from .errors import (
    AuthRejected,
    ConfigError,
    ConnectionClosed,
    DecodeError,
    HeartbeatTimeout,
    InvalidStatus,
    JoinTimeout,
    LocalProtocolError,
    NHLinkError,
    WriterError,
    without_traceback,
)
from .protocol import wire
from .protocol.auth import SharedSecretSigner
from .protocol.backoff import Backoff
from .protocol.channel import ChannelClosed, Joined, JoinRefused, PhoenixSession, Push, Reply
from .remote.features import RemoteFeatures
from .transport.proxy import select_proxy
from .transport.tls import client_ssl_context
from .transport.ws import WebSocket, connect
from .update.manager import UpdateManager, UpdatePolicy
from .update.options import DownloadOptions
from .update.state import StateStore
from .update.writer import FwupWriter, as_writer

if TYPE_CHECKING:
    from .remote.archives import ArchiveOptions
    from .remote.console import ConsoleOptions
    from .remote.keys import SigningKeys
    from .remote.scripts import ScriptOptions

__all__ = ["LinkState", "LinkStatus", "NervesHubLink"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0  # seconds for the server to answer our close frame before we drop TCP
_STOP_GRACE = 10.0  # seconds stop() lets the connection loop finish its callbacks
_HEARTBEAT_SLOT = 0.1  # seconds: heartbeats are due at slot ends, so many links beat together
#: Seconds a push's reply handler waits for a reply that may never come (send(on_reply=...)).
REPLY_TIMEOUT = 30.0

# Why the server closed the socket (PROTOCOL.md §4.4); every one of them means "reconnect with
# backoff", and none of them resets the backoff by itself.
_CLOSE_CAUSES: dict[int, str] = {
    wire.CLOSE_GOING_AWAY: (
        "the same device identity connected elsewhere (or the device moved to another product)"
    ),
    wire.CLOSE_SERVICE_RESTART: "the server is restarting (draining its connections)",
    wire.CLOSE_PROTOCOL_ERROR: "the server's idle timeout or a protocol error",
}

# Socket endpoints (scheme://host:port/path) that refused vsn 3.0.0 with 403 in this process: a
# server older than its MessagePack serializer (§4.6). Links to them speak JSON from then on.
_MSGPACK_REFUSED: set[str] = set()


async def send_frame(ws: WebSocket, session: PhoenixSession, frame: bytes) -> None:
    """Send one encoded Phoenix frame the way the socket's serializer wants it (§4.6)."""
    if session.binary:
        await ws.send_binary(frame)
    else:
        await ws.send_text(frame)


class LinkState(enum.Enum):
    """Where the connection is in its lifecycle."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"  # WebSocket open, device channel not joined yet
    JOINED = "joined"  # device channel joined: the device is online in NervesHub
    WAITING = "waiting"  # backing off before the next attempt


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """A snapshot of the connection, for health checks and tests."""

    state: LinkState = LinkState.STOPPED
    last_error: BaseException | None = None
    last_close_code: int | None = None
    connect_attempts: int = 0
    joins: int = 0
    next_retry_in: float | None = None  # while WAITING: the delay before the next attempt
    last_retry_delay: float | None = None  # the most recent backoff delay (kept afterwards)
    #: joined for ``backoff_reset_after`` seconds on this connection (the backoff was reset)
    stable: bool = False
    #: when the device channel was last joined (the link's clock, Unix time)
    last_joined_at: float | None = None

    @property
    def joined(self) -> bool:
        return self.state is LinkState.JOINED


class _Wake:
    """``asyncio.Event`` for one waiter, without the deque an Event keeps (760 B per link)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


async def _close_soon(ws: WebSocket, reason: str, timeout: float = 1.0) -> None:
    with contextlib.suppress(TimeoutError, NHLinkError, OSError):
        await asyncio.wait_for(ws.close(1000, reason), timeout)  # aborts TCP when cancelled


# The device channel's pushes (PROTOCOL.md §6.4) and the methods that handle them.
_DEVICE_PUSHES: dict[str, str] = {
    wire.EVENT_REBOOT: "_on_reboot",
    wire.EVENT_IDENTIFY: "_on_identify",
    wire.EVENT_UPDATE: "_on_update",
    wire.EVENT_EXTENSIONS_GET: "_on_extensions_get",
    wire.EVENT_SCRIPTS_RUN: "_on_scripts_run",
    wire.EVENT_FWUP_PUBLIC_KEYS: "_on_fwup_public_keys",
    wire.EVENT_ARCHIVE_PUBLIC_KEYS: "_on_archive_public_keys",
    wire.EVENT_ARCHIVE: "_on_archive",
}


class _Heartbeat:
    """The Phoenix heartbeat of one socket (PROTOCOL.md §4.3), on a timer of the event loop.

    Every ``heartbeat_interval``: fail the socket if the previous heartbeat was not answered
    (``HeartbeatTimeout``), else send the next one. A heartbeat is a few dozen bytes and is
    written without waiting for the write buffer to drain.
    """

    __slots__ = ("_handle", "_link", "_ws")

    def __init__(self, link: NervesHubLink, ws: WebSocket) -> None:
        self._link = link
        self._ws = ws
        self._handle: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._link.config.heartbeat_interval
        # Due at the end of a short slot (0.1 s, or 1 % of a short interval), not at an
        # arbitrary instant: the links of one process then beat together, in one turn of the
        # event loop, and their replies come back together — a fleet of 10,000 wakes the loop
        # a few times per slot instead of twice per heartbeat. The interval only grows.
        slot = min(_HEARTBEAT_SLOT, interval / 100)
        when = math.ceil((loop.time() + interval) / slot) * slot
        self._handle = loop.call_at(when, self._beat)

    def _beat(self) -> None:
        self._handle = None
        link = self._link
        try:
            frame = link.session.heartbeat()
        except HeartbeatTimeout as exc:
            link._drop(self._ws, exc)
            return
        try:
            if link.session.binary:
                self._ws.send_binary_nowait(frame)
            else:
                self._ws.send_text_nowait(frame)
        except ConnectionClosed:
            return
        self._schedule()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _TopicHandlers:
    """What a component registered for one topic with :meth:`NervesHubLink.on_topic`."""

    __slots__ = ("closed", "join_refused", "joined", "push")

    def __init__(self, push: Callable[[Push], Awaitable[None]]) -> None:
        self.push = push
        self.closed: Callable[[ChannelClosed], Awaitable[None]] | None = None
        self.joined: Callable[[Joined], Awaitable[None]] | None = None
        self.join_refused: Callable[[JoinRefused], Awaitable[None]] | None = None


class NervesHubLink:
    """A NervesHub device connection.

    ``NervesHubLink(**options)`` validates the options (:class:`~nhlink.config.LinkConfig`) at
    once; :meth:`start` returns immediately and connects, joins and reconnects in the background;
    :meth:`stop` closes cleanly. Also usable as ``async with NervesHubLink(...) as link``.

    ``download_options`` tunes firmware downloads (retries, idle timeout, redirects, plain
    ``http://``). ``fwup_writer`` (or ``firmware_writer``) is a :class:`~nhlink.FwupWriter` or
    any object with its methods (``fwup_*`` or the Elixir client's ``firmware_*`` names).
    ``clock`` (Unix time, default :func:`time.time`) and ``rand`` (uniform in [0, 1), default
    :func:`random.random`) exist for tests and simulations.

    For many links in one process (a gateway fronting many devices, ``nhlink fleet``):
    ``ssl_context`` shares one verifying :class:`ssl.SSLContext` between links instead of one per
    link (it must verify the hub: ``CERT_REQUIRED`` and ``check_hostname``, unless
    ``dangerously_disable_verification``); ``connect_gate`` is awaited before every connection
    attempt (e.g. :class:`nhlink.protocol.backoff.Pacer`, so that 10,000 links reconnecting
    after a hub restart do not stampede); ``status_listener`` is called with every new
    :class:`LinkStatus`.

    Reliability rules (PROTOCOL.md §4.4, §12): a join the server does not answer within
    ``join_timeout`` closes the socket; the reconnect backoff resets only after a connection
    stayed joined for ``backoff_reset_after`` seconds (two processes with one identity evicting
    each other back off instead of looping); application callbacks run with a time limit
    (``callback_timeout``) and the connection callbacks off the connection's critical path.
    """

    #: seconds a reply handler of ``send(on_reply=...)`` waits before it is forgotten
    reply_timeout: float = REPLY_TIMEOUT

    def __init__(
        self,
        *,
        client: Client | None = None,
        fwup_writer: FwupWriter | Any = None,
        firmware_writer: FwupWriter | Any = None,
        extensions: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        download_options: DownloadOptions | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_gate: Callable[[], Awaitable[None]] | None = None,
        status_listener: Callable[[LinkStatus], None] | None = None,
        console: ConsoleOptions | bool | None = None,
        scripts: ScriptOptions | None = None,
        network_interface: bool | str | Callable[[], str | None] = True,
        signing_keys: SigningKeys | None = None,
        archives: ArchiveOptions | None = None,
        **options: Any,
    ) -> None:
        if fwup_writer is not None and firmware_writer is not None:
            raise ConfigError("fwup_writer", "give fwup_writer or firmware_writer, not both")
        self.config = LinkConfig.build(**options)
        self.client: Client = client if client is not None else DefaultClient()
        writer = fwup_writer if fwup_writer is not None else firmware_writer
        try:
            self.writer: FwupWriter | None = as_writer(writer) if writer is not None else None
        except TypeError as exc:
            raise ConfigError("fwup_writer", str(exc)) from None
        self._clock = clock
        state_dir = self.config.state_dir
        self.store = StateStore(state_dir / f"{self.config.name}.json" if state_dir else None)
        self._signer = (
            SharedSecretSigner(
                self.config.product_key or "",
                self.config.product_secret or "",
                self.config.identifier or "",
            )
            if self.config.auth_mode == "shared_secret"
            else None
        )
        if ssl_context is not None:
            if not self.config.ssl:
                raise ConfigError("ssl_context", "given for a plain ws:// link (ssl=False)")
            if self.config.auth_mode == "mtls" or self.config.ca_file is not None:
                raise ConfigError(
                    "ssl_context",
                    "given with device_cert or ca_file: put the certificate and the CA in the "
                    "context (client_ssl_context), or leave ssl_context out",
                )
            if not self.config.dangerously_disable_verification and (
                ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname
            ):
                raise ConfigError(
                    "ssl_context",
                    "must verify the hub (CERT_REQUIRED and check_hostname); "
                    "dangerously_disable_verification=True says otherwise explicitly",
                )
        self._ssl_context = ssl_context or (
            client_ssl_context(
                cafile=self.config.ca_file,
                certfile=self.config.device_cert,
                keyfile=self.config.device_key,
                chainfile=self.config.device_chain,
                dangerously_disable_verification=self.config.dangerously_disable_verification,
            )
            if self.config.ssl
            else None
        )
        #: TLS for the firmware storage host: verified against the system store unless
        #: ``firmware_ca_file`` names a private CA. Never carries the device certificate (§11).
        self.firmware_ssl_context: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=str(self.config.firmware_ca_file))
            if self.config.firmware_ca_file
            else None
        )
        #: the HTTP proxy of the device socket (an explicit ``proxy``, else the environment)
        self.proxy = select_proxy(
            "wss" if self.config.ssl else "ws",
            self.config.host,
            self.config.port,
            proxy=self.config.proxy,
            no_proxy=self.config.no_proxy,
        )
        if self.config.proxy is not None and download_options is not None:
            if download_options.proxy is None:  # the link's explicit proxy serves firmware too
                download_options = replace(
                    download_options, proxy=self.config.proxy, no_proxy=self.config.no_proxy
                )
        elif self.config.proxy is not None:
            download_options = DownloadOptions(
                proxy=self.config.proxy, no_proxy=self.config.no_proxy
            )
        self.session = PhoenixSession()
        self.backoff = Backoff(
            initial=self.config.backoff_initial,
            maximum=self.config.backoff_max,
            jitter=self.config.backoff_jitter,
            rand=rand,
        )
        self._status = LinkStatus()
        # [connect_gate, awaiting it now] (one attribute: see the shared-key test)
        self._gate: list[Any] | None = [connect_gate, False] if connect_gate is not None else None
        #: called with every new status (state changes, attempts, errors); must not block
        self.status_listener = status_listener
        self._ws: WebSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: _Wake | None = None
        self._reconnect_now = False
        self._stopping = False
        self._waiters: list[tuple[Callable[[LinkStatus], bool], asyncio.Future[LinkStatus]]] = []
        # a dict as an ordered set: an empty dict is 64 bytes, an empty set 216 (x 10,000 links)
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._callbacks = CallbackQueue(self.config.name, self.config.callback_timeout)
        self._abort_reason: NHLinkError | None = None  # why this side dropped the socket
        self._validated_sent = False  # firmware_validated told to the server on this join
        self._reply_handlers: dict[str, Callable[[Reply], Awaitable[None]]] = {}
        self._topics: dict[str, _TopicHandlers] = {}  # on_topic() registrations
        # Components, each owning one part of the protocol. They talk to the server through
        # send()/join()/on_topic()/on_reply() and are told about (dis)connections below.
        from .extensions.router import ExtensionRouter

        self.extensions = ExtensionRouter(self, dict(extensions or {}))
        self.updates = UpdateManager(
            self,
            download_options,
            UpdatePolicy(
                allow_unverified_firmware=self.config.allow_unverified_firmware,
                callback_timeout=self.config.callback_timeout,
                min_reschedule_ms=round(self.config.min_reschedule_delay * 1000),
            ),
        )
        #: support scripts, the network interface report and the console (nhlink.remote)
        self.remote = RemoteFeatures(
            self,
            scripts=scripts,
            console=console,
            network_interface=network_interface,
            signing_keys=signing_keys,
            archives=archives,
        )

    # -- public API ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's (host, port) of the connection to the hub; None while not connected."""
        ws = self._ws
        return ws.local_address if ws is not None else None

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def __repr__(self) -> str:
        return f"<NervesHubLink {self.name!r} {self.config.url} {self._status.state.value}>"

    async def start(self) -> None:
        """Start connecting in the background; returns at once. Idempotent."""
        if self.running:
            return
        instances.register(self)
        self._stopping = False
        self.updates.start()
        self._wake = _Wake()
        self._task = asyncio.create_task(self._run(), name=f"nhlink:{self.name}")

    async def stop(self, *, suspend_update: bool = False) -> None:
        """Close the connection cleanly and stop reconnecting. Idempotent.

        An update in progress is cancelled first (writer aborted, ``failed`` reported while the
        socket is still up), then the socket is closed with 1000. ``suspend_update``: a
        download into a writer that can resume is kept for the next start instead (synced,
        resume point saved, nothing reported; see :meth:`UpdateManager.stop`).
        """
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        await self.updates.stop(suspend=suspend_update)
        await self.extensions.stop()
        await self.remote.stop()
        task = self._task
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "stopping"), _CLOSE_TIMEOUT + 1)
        if task is not None:
            gating = self._gate is not None and self._gate[1]
            if ws is None and (gating or self._status.state is LinkState.CONNECTING):
                task.cancel()  # nothing to finish gracefully: abandon the connection attempt
            # Let the loop end by itself so the disconnect callbacks run to completion.
            done, _ = await asyncio.wait({task}, timeout=_STOP_GRACE)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._callbacks.drain(_STOP_GRACE)  # the last disconnect callback runs to the end
        self._task = None
        instances.unregister(self)
        self._set_status(state=LinkState.STOPPED, next_retry_in=None)

    async def __aenter__(self) -> NervesHubLink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def reconnect(self) -> None:
        """Drop the socket (closing it), reconnect at once and reset the backoff."""
        self.backoff.reset()
        self._reconnect_now = True
        ws = self._ws
        if ws is not None:
            # A clean close frame, but a dead peer must not delay the reconnect: drop TCP after 1 s.
            self._spawn(_close_soon(ws, "reconnect"), "reconnect-close")
        if self._wake is not None:
            self._wake.set()

    async def wait_for(
        self, predicate: Callable[[LinkStatus], bool], timeout: float | None = None
    ) -> LinkStatus:
        """Wait until ``predicate(status)`` holds; returns that status. Raises TimeoutError."""
        if predicate(self._status):
            return self._status
        fut: asyncio.Future[LinkStatus] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def wait_joined(self, timeout: float | None = None) -> LinkStatus:
        """Wait until the device channel is joined."""
        return await self.wait_for(lambda s: s.joined, timeout)

    def firmware_validated(self) -> bool:
        """What ``meta.firmware_validated`` says on join (PROTOCOL.md §10)."""
        from_client = self.client.firmware_validated()
        if from_client is not None:
            return bool(from_client)
        if self.writer is not None:
            from_writer = self.writer.is_confirmed()
            if from_writer is not None:
                return bool(from_writer)
        return self.store.state.validated_uuid == self.config.firmware_meta["uuid"]

    async def confirm_update(self) -> None:
        """Mark the running firmware valid: writer's ``fwup_confirm``, persist, tell the server
        (``firmware_validated``, unless this connection already told it).

        Raises :class:`~nhlink.errors.WriterError` if the writer refuses; nothing else happens then.
        """
        if self.writer is not None:
            try:
                result = self.writer.fwup_confirm()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                raise WriterError(f"fwup_confirm failed: {exc}") from exc
        self.store.state.validated_uuid = self.config.firmware_meta["uuid"]
        await self.store.asave()
        # Once per connection: the join's meta (or an earlier message) may have said it.
        if self.session.is_joined(wire.TOPIC_DEVICE) and not self._validated_sent:
            await self._send_validated()

    async def _send_validated(self) -> None:
        self._validated_sent = True
        await self.send(wire.TOPIC_DEVICE, wire.EVENT_FIRMWARE_VALIDATED, {})

    async def send(
        self,
        topic: str,
        event: str,
        payload: Any,
        *,
        track_reply: bool = False,
        on_reply: Callable[[Reply], Awaitable[None]] | None = None,
        reply_timeout: float | None = None,
    ) -> str:
        """Push ``event`` on a joined topic; returns the ref used.

        ``on_reply`` is registered for this message's ref *before* it is written, so the reply
        can never race past it (it implies ``track_reply``). It is forgotten after
        ``reply_timeout`` seconds (default: the link's ``reply_timeout``, 30 s) without a reply
        (most pushes get none), so handlers never pile up on a long-lived connection. Raises
        ConnectionClosed when there is no connection and LocalProtocolError when the topic is
        not joined.
        """
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(1006, "", "not connected to NervesHub")
        frame = self.session.push(topic, event, payload, track_reply=track_reply or bool(on_reply))
        ref = self.session.last_ref()  # before any await: another task may send meanwhile
        if on_reply is not None:
            self._reply_handlers[ref] = on_reply
            delay = self.reply_timeout if reply_timeout is None else reply_timeout
            asyncio.get_running_loop().call_later(delay, self._forget_reply, ref)
        try:
            await send_frame(ws, self.session, frame)
        except BaseException:
            self._forget_reply(ref)
            raise
        return ref

    def delivered(self, ref: str) -> bool:
        """Whether the server processed the message sent with ``ref`` (a later heartbeat was
        answered); see :meth:`PhoenixSession.delivered`."""
        return self.session.delivered(ref)

    def _forget_reply(self, ref: str) -> None:
        self._reply_handlers.pop(ref, None)
        self.session.forget_reply(ref)

    @property
    def pending_replies(self) -> int:
        """Reply handlers still registered (they expire after ``reply_timeout``)."""
        return len(self._reply_handlers)

    async def join(self, topic: str, payload: Any) -> None:
        """Send ``phx_join`` for ``topic`` (the reply arrives as a Joined/JoinRefused event)."""
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(1006, "", "not connected to NervesHub")
        await send_frame(ws, self.session, self.session.join(topic, payload))

    # -- hooks for the update manager and extensions ------------------------------------------

    def on_topic(
        self,
        topic: str,
        push: Callable[[Push], Awaitable[None]],
        closed: Callable[[ChannelClosed], Awaitable[None]] | None = None,
        *,
        joined: Callable[[Joined], Awaitable[None]] | None = None,
        join_refused: Callable[[JoinRefused], Awaitable[None]] | None = None,
    ) -> None:
        """Route a topic's pushes, channel closes, and join outcomes to a component."""
        handlers = self._topics[topic] = _TopicHandlers(push)
        if closed is not None:
            handlers.closed = closed
        if joined is not None:
            handlers.joined = joined
        if join_refused is not None:
            handlers.join_refused = join_refused

    def on_reply(self, ref: str, handler: Callable[[Reply], Awaitable[None]]) -> None:
        self._reply_handlers[ref] = handler

    # -- internals -------------------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        status = self._status
        if self.status_listener is not None:
            try:
                self.status_listener(status)
            except Exception:
                logger.exception("%s: status_listener failed", self.name)
        for predicate, fut in list(self._waiters):
            if not fut.done():
                try:
                    ok = predicate(status)
                except Exception as exc:  # a broken predicate fails its own waiter only
                    fut.set_exception(exc)
                    continue
                if ok:
                    fut.set_result(status)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        async def runner() -> Any:
            return await coro

        task = asyncio.ensure_future(runner())
        task.set_name(f"nhlink:{self.name}:{name}")
        self._tasks[task] = None
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "%s: background task %s failed: %r", self.name, task.get_name(), task.exception()
            )

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._reconnect_now = False
            self._wake.clear()
            try:
                await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_status(last_error=without_traceback(exc))
                if self._stop_requested():
                    logger.debug("%s: connection ended while stopping: %s", self.name, exc)
                elif isinstance(exc, NHLinkError | OSError):
                    logger.warning("%s: connection ended: %s", self.name, exc)
                else:
                    logger.exception("%s: unexpected error in the connection loop", self.name)
            if self._stop_requested():
                break
            delay = 0.0 if self._reconnect_now else self.backoff.next_delay()
            self._set_status(state=LinkState.WAITING, next_retry_in=delay, last_retry_delay=delay)
            if delay > 0:
                logger.info("%s: reconnecting in %.1f s", self.name, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def _validation_reported(self) -> bool:
        # A method, not the attribute: confirm_update() sets it while the watcher sleeps.
        return self._validated_sent

    def _stop_requested(self) -> bool:
        # A method, not the attribute: stop() flips it while _run awaits.
        return self._stopping

    async def _open_socket(self) -> WebSocket:
        """Open the device socket (§2) and set the session's serializer for it (§4.6)."""
        config = self.config
        msgpack = (
            config.serializer == wire.SERIALIZER_MSGPACK and config.endpoint not in _MSGPACK_REFUSED
        )
        try:
            ws = await self._upgrade(
                config.url_for(wire.SERIALIZER_MSGPACK if msgpack else wire.SERIALIZER_JSON)
            )
        except InvalidStatus as exc:
            if not (msgpack and exc.status == 403):
                raise
            # Nothing is negotiated in-band: a server without the MessagePack serializer
            # refuses vsn 3.0.0 with 403. Ask again for JSON, and keep to it in this process.
            _MSGPACK_REFUSED.add(config.endpoint)
            logger.warning(
                "%s: %s refused vsn 3.0.0 (HTTP 403: no MessagePack serializer); "
                "using JSON (vsn 2.0.0) with this server from now on",
                self.name,
                config.endpoint,
            )
            msgpack = False
            ws = await self._upgrade(config.url_for(wire.SERIALIZER_JSON))
        self.session.use(wire.SERIALIZER_MSGPACK if msgpack else wire.SERIALIZER_JSON)
        return ws

    async def _upgrade(self, url: str) -> WebSocket:
        headers: dict[str, str] = {}
        if self._signer is not None:
            headers = self._signer.headers(self._clock())
        try:
            ws = await connect(
                url,
                ssl=self._ssl_context,
                extra_headers=headers,
                open_timeout=self.config.connect_timeout,
                close_timeout=_CLOSE_TIMEOUT,
                max_message_size=self.config.max_message_size,
                user_agent=self.config.user_agent,
                proxy=self.proxy,
            )
        except InvalidStatus as exc:
            if self._signer is not None and self._signer.observe_server_date(
                exc.headers, self._clock()
            ):
                logger.debug("%s: server clock noted from the Date header", self.name)
            if exc.status == 401:
                raise AuthRejected(
                    f"NervesHub refused the device credentials (HTTP 401"
                    f"{': ' + exc.reason if exc.reason else ''})"
                ) from exc
            raise
        if self._signer is not None:
            self._signer.observe_server_date(ws.response_headers, self._clock())
        ws.release_response_headers()  # read what is needed; not kept for the connection's life
        return ws

    async def _connect_and_serve(self) -> None:
        gate = self._gate
        if gate is not None:
            gate[1] = True  # stop() may abandon the attempt
            try:
                await gate[0]()
            finally:
                gate[1] = False
            if self._stop_requested():
                return  # stopped while waiting for the gate: no connection to open
        self._set_status(
            state=LinkState.CONNECTING,
            connect_attempts=self._status.connect_attempts + 1,
            next_retry_in=None,
        )
        ws = await self._open_socket()
        self._ws = ws
        self._abort_reason = None
        self._reconnect_now = False  # a reconnect() asked for during the attempt is satisfied
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        side: list[asyncio.Task[None]] = []
        heartbeat: _Heartbeat | None = None
        join_timer: asyncio.TimerHandle | None = None
        try:
            self._set_status(state=LinkState.CONNECTED, last_close_code=None, stable=False)
            logger.info(
                "%s: connected to %s (%s)",
                self.name,
                self.config.endpoint,
                "MessagePack, vsn 3.0.0" if self.session.binary else "JSON, vsn 2.0.0",
            )
            # Off the critical path: a slow handle_connected never delays the join (§14.3).
            self._callbacks.put("handle_connected", self.client.handle_connected)
            await self._join_device()
            join_timer = loop.call_later(self.config.join_timeout, self._join_overdue, ws)
            # A timer, not a task: an idle link holds one TimerHandle for its heartbeat.
            heartbeat = _Heartbeat(self, ws)
            binary = self.session.binary
            while (message := await ws.next_message()) is not None:
                if isinstance(message, bytes) != binary:
                    logger.warning(
                        "%s: ignoring unexpected %s frame (vsn %s)",
                        self.name,
                        "binary" if isinstance(message, bytes) else "text",
                        "3.0.0" if binary else "2.0.0",
                    )
                    continue
                joined = await self._dispatch(message)
                message = None  # not held while waiting for the next one (thousands in a fleet)
                if joined:
                    if join_timer is not None:  # not held for the connection's life
                        join_timer.cancel()
                        join_timer = None
                    timers.append(
                        loop.call_later(
                            self.config.backoff_reset_after, self._connection_stable, timers
                        )
                    )
                    if not self._validation_reported():  # else nothing to watch for
                        side.append(
                            asyncio.create_task(
                                self._watch_validation(), name=f"nhlink:{self.name}:validation"
                            )
                        )
            if self._abort_reason is not None:
                raise self._abort_reason
            code = ws.close_code or 1006
            cause = _CLOSE_CAUSES.get(code)
            raise ConnectionClosed(
                code,
                ws.close_reason,
                f"connection closed by the server (code {code}: {cause})" if cause else None,
            )
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if join_timer is not None:
                join_timer.cancel()
            for timer in timers:
                timer.cancel()
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._ws = None
            self.session.reset()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), _CLOSE_TIMEOUT + 1)
            self._set_status(last_close_code=ws.close_code, stable=False)
            await self._connection_lost()
            self._callbacks.put("handle_disconnected", self.client.handle_disconnected)

    def _drop(self, ws: WebSocket, reason: NHLinkError) -> None:
        """This side gives up on the socket: record why, then drop TCP at once."""
        if self._abort_reason is None:
            self._abort_reason = reason
        logger.warning("%s: %s", self.name, reason)
        self._set_status(last_error=reason)
        ws.abort()

    def _join_overdue(self, ws: WebSocket) -> None:
        if self._ws is ws and not self.session.is_joined(wire.TOPIC_DEVICE):
            self._drop(
                ws,
                JoinTimeout(
                    f"the server did not answer the device channel join within "
                    f"{self.config.join_timeout:g} s; reconnecting"
                ),
            )

    def _connection_stable(self, timers: list[asyncio.TimerHandle]) -> None:
        # Joined and still up after backoff_reset_after: the next disconnect starts short again.
        # (Resetting at the join itself would let two processes with one identity evict each
        # other every second forever, §4.4.)
        # Drop the fired handle (the oldest: every one has the same delay) so that a connection
        # up for days does not hold it; any later one (a re-join) stays cancellable.
        if timers:
            del timers[0]
        self.backoff.reset()
        self._set_status(stable=True)

    async def _watch_validation(self) -> None:
        """While joined: tell the server once the firmware becomes validated (§10), whoever
        validates it (the client, the writer or confirm_update()). Polls like NHL (10 s)."""
        interval = self.config.validation_poll_interval
        while not self._validation_reported():
            await asyncio.sleep(interval)
            if self._validation_reported():
                return
            try:
                validated = self.firmware_validated()
            except Exception:
                logger.exception("%s: checking firmware validation failed", self.name)
                continue
            if validated:
                logger.info("%s: the running firmware is now validated", self.name)
                with contextlib.suppress(NHLinkError):
                    await self._send_validated()
                return

    async def _connection_lost(self) -> None:
        """The socket is gone (channels are reset): tell the components."""
        self._reply_handlers.clear()  # no reply can come for a message of a dead socket
        components = (
            (self.extensions, "extensions"),
            (self.updates, "updates"),
            (self.remote, "remote"),
        )
        for component, hook in components:
            try:
                await component.connection_lost()
            except Exception:
                logger.exception("%s: %s.connection_lost failed", self.name, hook)

    async def _join_device(self) -> None:
        downloading = self.store.state.download or {}
        validated = self.firmware_validated()
        self._validated_sent = validated  # the join's meta says it already
        params = self.config.join_params(
            validated=validated,
            auto_revert=bool(self.writer.auto_revert_detected()) if self.writer else False,
            downloading_uuid=downloading.get("uuid"),
        )
        params.update(self.remote.keys.join_params())  # §6.8: "on_connect" when wanted
        await self.join(wire.TOPIC_DEVICE, params)

    async def _dispatch(self, data: str | bytes) -> bool:
        """Handle one message; True when it was the device channel's successful join."""
        try:
            event = self.session.receive(data)
        except DecodeError as exc:
            logger.warning("%s: dropping malformed message: %s", self.name, exc)
            return False
        if event is None:
            return False
        if isinstance(event, Push):
            if event.topic == wire.TOPIC_DEVICE:
                method = _DEVICE_PUSHES.get(event.event)
                if method is None:
                    logger.info("%s: ignoring unknown device event %r", self.name, event.event)
                    return False
                await getattr(self, method)(event.payload)
            else:
                topic_handlers = self._topics.get(event.topic)
                if topic_handlers is None:
                    logger.info("%s: ignoring push on %r: %r", self.name, event.topic, event.event)
                    return False
                await topic_handlers.push(event)
        elif isinstance(event, Joined):
            if event.topic == wire.TOPIC_DEVICE:
                self._set_status(
                    state=LinkState.JOINED,
                    joins=self._status.joins + 1,
                    last_error=None,
                    last_joined_at=self._clock(),
                )
                logger.info("%s: joined the device channel", self.name)
                try:
                    await self.updates.joined()
                except Exception:
                    logger.exception("%s: updates.joined failed", self.name)
                await self._device_joined(event.response)
                return True
            await self._other_joined(event)
        elif isinstance(event, JoinRefused):
            if event.topic == wire.TOPIC_DEVICE:
                raise LocalProtocolError(f"device channel join refused: {event.response!r}")
            await self._other_join_refused(event)
        elif isinstance(event, ChannelClosed):
            if event.topic == wire.TOPIC_DEVICE:
                kind = "crashed (phx_error)" if event.crashed else "closed (phx_close)"
                raise ConnectionClosed(
                    1000, "", f"device channel {kind} by the server; reconnecting"
                )
            handlers = self._topics.get(event.topic)
            if handlers is not None and handlers.closed is not None:
                await handlers.closed(event)
        elif isinstance(event, Reply):
            reply_handler = self._reply_handlers.pop(event.ref, None)
            if reply_handler is not None:
                await reply_handler(event)
        return False

    async def _device_joined(self, response: Any) -> None:
        """The device channel is joined. A legacy server's reply may carry an update (§5)."""
        if isinstance(response, dict) and response.get("update_available") is True:
            await self._on_update(response)
        try:
            await self.remote.device_joined()
        except Exception:
            logger.exception("%s: remote.device_joined failed", self.name)

    async def _other_joined(self, event: Joined) -> None:
        handlers = self._topics.get(event.topic)
        if handlers is not None and handlers.joined is not None:
            await handlers.joined(event)

    async def _other_join_refused(self, event: JoinRefused) -> None:
        handlers = self._topics.get(event.topic)
        if handlers is not None and handlers.join_refused is not None:
            await handlers.join_refused(event)
        else:
            logger.warning("%s: join of %r refused: %r", self.name, event.topic, event.response)

    # -- device channel pushes (PROTOCOL.md §6.4) -----------------------------------------------

    async def _on_reboot(self, payload: Any) -> None:
        # §13.14: acknowledge *before* rebooting.
        with contextlib.suppress(NHLinkError):
            await self.send(wire.TOPIC_DEVICE, wire.EVENT_REBOOTING, {})
        self._spawn(self._call("reboot", self.client.reboot), "reboot")

    async def _on_identify(self, payload: Any) -> None:
        self._spawn(self._call("identify", self.client.identify), "identify")

    async def _call(self, name: str, fn: Callable[..., Any]) -> Any:
        return await call_callback(name, fn, timeout=self.config.callback_timeout)

    async def _on_update(self, payload: Any) -> None:
        await self.updates.on_update(payload)

    async def _on_extensions_get(self, payload: Any) -> None:
        await self.extensions.on_extensions_get(payload)

    def log(self, level: str | int, message: str, **meta: str) -> None:
        """Ship a log line through the ``logging`` extension when it is attached; else drop it."""
        self.extensions.log(level, message, **meta)

    async def _on_fwup_public_keys(self, payload: Any) -> None:
        await self.remote.keys_pushed("fwup", payload)

    async def _on_archive_public_keys(self, payload: Any) -> None:
        await self.remote.keys_pushed("archive", payload)

    async def _on_archive(self, payload: Any) -> None:
        self.remote.on_archive(payload)

    async def _on_scripts_run(self, payload: Any) -> None:
        # §6.6: every ref is answered, at once when scripts are not configured.
        self.remote.on_scripts_run(payload)
