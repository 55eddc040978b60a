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
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from . import instances
from .callbacks import call_callback
from .client import Client, DefaultClient
from .config import LinkConfig
from .errors import (
    AuthRejected,
    ConfigError,
    ConnectionClosed,
    DecodeError,
    HeartbeatTimeout,
    InvalidStatus,
    LocalProtocolError,
    NHLinkError,
    WriterError,
)
from .protocol import wire
from .protocol.auth import SharedSecretSigner
from .protocol.backoff import Backoff
from .protocol.channel import ChannelClosed, Joined, JoinRefused, PhoenixSession, Push, Reply
from .transport.tls import client_ssl_context
from .transport.ws import WebSocket, connect
from .update.download import DownloadOptions
from .update.state import StateStore
from .update.writer import FwupWriter

__all__ = ["LinkState", "LinkStatus", "NervesHubLink"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0  # seconds for the server to answer our close frame before we drop TCP
_STOP_GRACE = 10.0  # seconds stop() lets the connection loop finish its callbacks


class LinkState(enum.Enum):
    """Where the connection is in its lifecycle."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"  # WebSocket open, device channel not joined yet
    JOINED = "joined"  # device channel joined: the device is online in NervesHub
    WAITING = "waiting"  # backing off before the next attempt


@dataclass(frozen=True)
class LinkStatus:
    """A snapshot of the connection, for health checks and tests."""

    state: LinkState = LinkState.STOPPED
    last_error: BaseException | None = None
    last_close_code: int | None = None
    connect_attempts: int = 0
    joins: int = 0
    next_retry_in: float | None = None  # while WAITING: the delay before the next attempt
    last_retry_delay: float | None = None  # the most recent backoff delay (kept afterwards)

    @property
    def joined(self) -> bool:
        return self.state is LinkState.JOINED


async def _close_soon(ws: WebSocket, reason: str, timeout: float = 1.0) -> None:
    with contextlib.suppress(TimeoutError, NHLinkError, OSError):
        await asyncio.wait_for(ws.close(1000, reason), timeout)  # aborts TCP when cancelled


class NervesHubLink:
    """A NervesHub device connection.

    ``NervesHubLink(**options)`` validates the options (:class:`~nhlink.config.LinkConfig`) at
    once; :meth:`start` returns immediately and connects, joins and reconnects in the background;
    :meth:`stop` closes cleanly. Also usable as ``async with NervesHubLink(...) as link``.

    ``download_options`` tunes firmware downloads (retries, idle timeout, redirects).
    ``clock`` (Unix time, default :func:`time.time`) and ``rand`` (uniform in [0, 1), default
    :func:`random.random`) exist for tests and simulations.
    """

    def __init__(
        self,
        *,
        client: Client | None = None,
        fwup_writer: FwupWriter | None = None,
        firmware_writer: FwupWriter | None = None,
        extensions: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        download_options: DownloadOptions | None = None,
        **options: Any,
    ) -> None:
        if fwup_writer is not None and firmware_writer is not None:
            raise ConfigError("fwup_writer", "give fwup_writer or firmware_writer, not both")
        self.config = LinkConfig.build(**options)
        self.client: Client = client if client is not None else DefaultClient()
        self.writer: FwupWriter | None = fwup_writer or firmware_writer
        self.extensions_config: dict[str, Any] = dict(extensions or {})
        self._clock = clock
        self._rand = rand
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
        self._ssl_context = (
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
        self.session = PhoenixSession()
        self.backoff = Backoff(
            initial=self.config.backoff_initial,
            maximum=self.config.backoff_max,
            jitter=self.config.backoff_jitter,
        )
        self._status = LinkStatus()
        self._ws: WebSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._reconnect_now = False
        self._stopping = False
        self._waiters: list[tuple[Callable[[LinkStatus], bool], asyncio.Future[LinkStatus]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._push_handlers: dict[str, Callable[[Any], Awaitable[None]]] = {
            wire.EVENT_REBOOT: self._on_reboot,
            wire.EVENT_IDENTIFY: self._on_identify,
            wire.EVENT_UPDATE: self._on_update,
            wire.EVENT_EXTENSIONS_GET: self._on_extensions_get,
            wire.EVENT_SCRIPTS_RUN: self._on_scripts_run,
        }
        self._reply_handlers: dict[str, Callable[[Reply], Awaitable[None]]] = {}
        self._topic_handlers: dict[str, Callable[[Push], Awaitable[None]]] = {}
        self._channel_closed_handlers: dict[str, Callable[[ChannelClosed], Awaitable[None]]] = {}
        self._joined_handlers: dict[str, Callable[[Joined], Awaitable[None]]] = {}
        self._join_refused_handlers: dict[str, Callable[[JoinRefused], Awaitable[None]]] = {}
        # Components, each owning one part of the protocol. They talk to the server through
        # send()/join()/on_topic()/on_reply() and are told about (dis)connections below.
        from .extensions.router import ExtensionRouter
        from .update.manager import UpdateManager

        self.extensions = ExtensionRouter(self, self.extensions_config)
        self.updates = UpdateManager(self, download_options)

    # -- public API ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

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
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"nhlink:{self.name}")

    async def stop(self) -> None:
        """Close the connection cleanly and stop reconnecting. Idempotent.

        An update in progress is cancelled first (writer aborted, ``failed`` reported while the
        socket is still up), then the socket is closed with 1000.
        """
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        await self.updates.stop()
        await self.extensions.stop()
        task = self._task
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "stopping"), _CLOSE_TIMEOUT + 1)
        if task is not None:
            if ws is None and self._status.state is LinkState.CONNECTING:
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
        """Mark the running firmware valid: writer's ``fwup_confirm``, persist, tell the server.

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
        if self.session.is_joined(wire.TOPIC_DEVICE):
            await self.send(wire.TOPIC_DEVICE, wire.EVENT_FIRMWARE_VALIDATED, {})

    async def send(
        self,
        topic: str,
        event: str,
        payload: Any,
        *,
        track_reply: bool = False,
        on_reply: Callable[[Reply], Awaitable[None]] | None = None,
    ) -> str:
        """Push ``event`` on a joined topic; returns the ref used.

        ``on_reply`` is registered for this message's ref *before* it is written, so the reply
        can never race past it (it implies ``track_reply``). Raises ConnectionClosed when there
        is no connection and LocalProtocolError when the topic is not joined.
        """
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(1006, "", "not connected to NervesHub")
        frame = self.session.push(topic, event, payload, track_reply=track_reply or bool(on_reply))
        ref = self.session.last_ref()  # before any await: another task may send meanwhile
        if on_reply is not None:
            self._reply_handlers[ref] = on_reply
        try:
            await ws.send_text(frame)
        except BaseException:
            self._reply_handlers.pop(ref, None)
            raise
        return ref

    async def join(self, topic: str, payload: Any) -> None:
        """Send ``phx_join`` for ``topic`` (the reply arrives as a Joined/JoinRefused event)."""
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(1006, "", "not connected to NervesHub")
        await ws.send_text(self.session.join(topic, payload))

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
        self._topic_handlers[topic] = push
        if closed is not None:
            self._channel_closed_handlers[topic] = closed
        if joined is not None:
            self._joined_handlers[topic] = joined
        if join_refused is not None:
            self._join_refused_handlers[topic] = join_refused

    def on_reply(self, ref: str, handler: Callable[[Reply], Awaitable[None]]) -> None:
        self._reply_handlers[ref] = handler

    # -- internals -------------------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        status = self._status
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
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
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
                self._set_status(last_error=exc)
                if self._stop_requested():
                    logger.debug("%s: connection ended while stopping: %s", self.name, exc)
                elif isinstance(exc, NHLinkError | OSError):
                    logger.warning("%s: connection ended: %s", self.name, exc)
                else:
                    logger.exception("%s: unexpected error in the connection loop", self.name)
            if self._stop_requested():
                break
            delay = 0.0 if self._reconnect_now else self.backoff.next_delay(self._rand())
            self._set_status(state=LinkState.WAITING, next_retry_in=delay, last_retry_delay=delay)
            if delay > 0:
                logger.info("%s: reconnecting in %.1f s", self.name, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def _stop_requested(self) -> bool:
        # A method, not the attribute: stop() flips it while _run awaits.
        return self._stopping

    async def _open_socket(self) -> WebSocket:
        headers: dict[str, str] = {}
        if self._signer is not None:
            headers = self._signer.headers(self._clock())
        try:
            ws = await connect(
                self.config.url,
                ssl=self._ssl_context,
                extra_headers=headers,
                open_timeout=self.config.connect_timeout,
                close_timeout=_CLOSE_TIMEOUT,
                max_message_size=self.config.max_message_size,
                user_agent=self.config.user_agent,
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
        return ws

    async def _connect_and_serve(self) -> None:
        self._set_status(
            state=LinkState.CONNECTING,
            connect_attempts=self._status.connect_attempts + 1,
            next_retry_in=None,
        )
        ws = await self._open_socket()
        self._ws = ws
        self._reconnect_now = False  # a reconnect() asked for during the attempt is satisfied
        heartbeat: asyncio.Task[None] | None = None
        try:
            self._set_status(state=LinkState.CONNECTED, last_close_code=None)
            logger.info("%s: connected to %s", self.name, self.config.url)
            await call_callback("handle_connected", self.client.handle_connected)
            await self._join_device()
            heartbeat = asyncio.create_task(self._heartbeat(ws), name=f"nhlink:{self.name}:hb")
            async for message in ws:
                if isinstance(message, bytes):
                    logger.warning("%s: ignoring unexpected binary frame (vsn 2.0.0)", self.name)
                    continue
                await self._dispatch(message)
            raise ConnectionClosed(ws.close_code or 1006, ws.close_reason)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await heartbeat
            self._ws = None
            self.session.reset()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), _CLOSE_TIMEOUT + 1)
            self._set_status(last_close_code=ws.close_code)
            await self._connection_lost()
            await call_callback("handle_disconnected", self.client.handle_disconnected)

    async def _connection_lost(self) -> None:
        """The socket is gone (channels are reset): tell the components."""
        self._reply_handlers.clear()  # no reply can come for a message of a dead socket
        for component, hook in ((self.extensions, "extensions"), (self.updates, "updates")):
            try:
                await component.connection_lost()
            except Exception:
                logger.exception("%s: %s.connection_lost failed", self.name, hook)

    async def _join_device(self) -> None:
        downloading = self.store.state.download or {}
        params = self.config.join_params(
            validated=self.firmware_validated(),
            auto_revert=bool(self.writer.auto_revert_detected()) if self.writer else False,
            downloading_uuid=downloading.get("uuid"),
        )
        await self.join(wire.TOPIC_DEVICE, params)

    async def _heartbeat(self, ws: WebSocket) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                frame = self.session.heartbeat()
            except HeartbeatTimeout as exc:
                logger.warning("%s: %s", self.name, exc)
                self._set_status(last_error=exc)
                ws.abort()
                return
            try:
                await ws.send_text(frame)
            except ConnectionClosed:
                return

    async def _dispatch(self, text: str) -> None:
        try:
            event = self.session.receive(text)
        except DecodeError as exc:
            logger.warning("%s: dropping malformed message: %s", self.name, exc)
            return
        if event is None:
            return
        if isinstance(event, Push):
            if event.topic == wire.TOPIC_DEVICE:
                handler = self._push_handlers.get(event.event)
                if handler is None:
                    logger.info("%s: ignoring unknown device event %r", self.name, event.event)
                    return
                await handler(event.payload)
            else:
                topic_handler = self._topic_handlers.get(event.topic)
                if topic_handler is None:
                    logger.info("%s: ignoring push on %r: %r", self.name, event.topic, event.event)
                    return
                await topic_handler(event)
        elif isinstance(event, Joined):
            if event.topic == wire.TOPIC_DEVICE:
                self.backoff.reset()
                self._set_status(
                    state=LinkState.JOINED, joins=self._status.joins + 1, last_error=None
                )
                logger.info("%s: joined the device channel", self.name)
                await self._device_joined(event.response)
            else:
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
            closed_handler = self._channel_closed_handlers.get(event.topic)
            if closed_handler is not None:
                await closed_handler(event)
        elif isinstance(event, Reply):
            reply_handler = self._reply_handlers.pop(event.ref, None)
            if reply_handler is not None:
                await reply_handler(event)

    async def _device_joined(self, response: Any) -> None:
        """The device channel is joined. A legacy server's reply may carry an update (§5)."""
        if isinstance(response, dict) and response.get("update_available") is True:
            await self._on_update(response)

    async def _other_joined(self, event: Joined) -> None:
        handler = self._joined_handlers.get(event.topic)
        if handler is not None:
            await handler(event)

    async def _other_join_refused(self, event: JoinRefused) -> None:
        handler = self._join_refused_handlers.get(event.topic)
        if handler is not None:
            await handler(event)
        else:
            logger.warning("%s: join of %r refused: %r", self.name, event.topic, event.response)

    # -- device channel pushes (PROTOCOL.md §6.4) -----------------------------------------------

    async def _on_reboot(self, payload: Any) -> None:
        # §13.14: acknowledge *before* rebooting.
        with contextlib.suppress(NHLinkError):
            await self.send(wire.TOPIC_DEVICE, wire.EVENT_REBOOTING, {})
        self._spawn(call_callback("reboot", self.client.reboot), "reboot")

    async def _on_identify(self, payload: Any) -> None:
        self._spawn(call_callback("identify", self.client.identify), "identify")

    async def _on_update(self, payload: Any) -> None:
        await self.updates.on_update(payload)

    async def _on_extensions_get(self, payload: Any) -> None:
        await self.extensions.on_extensions_get(payload)

    def log(self, level: str | int, message: str, **meta: str) -> None:
        """Ship a log line through the ``logging`` extension when it is attached; else drop it."""
        self.extensions.log(level, message, **meta)

    async def _on_scripts_run(self, payload: Any) -> None:
        # §6.5: answer so the server UI does not wait 15 s for a timeout.
        ref = payload.get("ref") if isinstance(payload, dict) else None
        with contextlib.suppress(NHLinkError):
            await self.send(
                wire.TOPIC_DEVICE,
                wire.EVENT_SCRIPTS_RUN,
                {
                    "ref": ref,
                    "result": "error",
                    "reason": "unsupported",
                    "output": "",
                    "return": "",
                },
            )
