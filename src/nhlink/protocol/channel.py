"""Phoenix Channels v2 session state, sans-I/O (PROTOCOL.md §4): refs, joins, replies, heartbeat.

Invariants (everything that changes them lives in this file):

* Every outbound message gets a fresh ref from **one** increasing counter (§4.1; the Elixir client
  reuses refs, which makes replies ambiguous).
* A channel's ``join_ref`` is the ref of the ``phx_join`` that opened it; it is element 0 of every
  later message on that topic (§4.1).
* Server pushes are routed by topic and event, never by ``join_ref`` (fastlane broadcasts carry
  ``null``, §4.1). Only ``phx_close``/``phx_error`` check the ``join_ref``: one naming an older
  instance of the channel (e.g. the server closing the instance a re-join replaced) is stale.
* At most one heartbeat is outstanding; asking for the next one while it is unanswered raises
  :class:`~nhlink.errors.HeartbeatTimeout` (NHL's one-interval liveness rule, §4.3).

Use: call :meth:`PhoenixSession.join`/:meth:`push`/:meth:`heartbeat` to get the frame to send;
feed every received frame to :meth:`PhoenixSession.receive` and act on the event it returns.
Call :meth:`PhoenixSession.reset` when the socket goes away. The serializer (JSON in text frames,
vsn 2.0.0, or MessagePack in binary frames, vsn 3.0.0, §4.6) is chosen per socket with
:meth:`PhoenixSession.use`; :attr:`PhoenixSession.binary` says which kind of frame to send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..errors import DecodeError, HeartbeatTimeout, LocalProtocolError
from . import wire

__all__ = [
    "ChannelClosed",
    "Event",
    "JoinRefused",
    "Joined",
    "PhoenixSession",
    "Push",
    "Reply",
]

# Channel states.
_JOINING = 1
_JOINED = 2


@dataclass(frozen=True, slots=True)
class Joined:
    """The server accepted ``phx_join`` on ``topic``; ``response`` is its reply (usually {})."""

    topic: str
    response: Any


@dataclass(frozen=True, slots=True)
class JoinRefused:
    """The server answered ``phx_join`` with an error (e.g. ``{"error": "could not connect"}``)."""

    topic: str
    response: Any


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to a push we sent (``ref``), e.g. the extensions channel's ``"detach"`` error."""

    topic: str
    ref: str
    status: str
    response: Any


@dataclass(frozen=True, slots=True)
class Push:
    """A server push or broadcast on ``topic``."""

    topic: str
    event: str
    payload: Any


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The server closed (``crashed=False``, phx_close) or lost (``crashed=True``, phx_error) the
    channel. It is gone: re-join or reconnect (§4.2)."""

    topic: str
    crashed: bool
    payload: Any


Event = Joined | JoinRefused | Reply | Push | ChannelClosed


@dataclass(slots=True)
class _Channel:
    join_ref: str
    state: int


_Codec = tuple[Callable[[str | None, str | None, str, str, Any], bytes], Callable[[Any], Any], bool]
_JSON_CODEC: _Codec = (_core.encode_message, _core.decode_message, False)
_MSGPACK_CODEC: _Codec = (_core.encode_msgpack, _core.decode_msgpack, True)


class PhoenixSession:
    """Refs, channel joins and replies for one socket. See the module docstring."""

    # One per link, thousands in a fleet: slots, no per-instance dict.
    __slots__ = (
        "_answered",
        "_channels",
        "_codec",
        "_counter",
        "_heartbeat_ref",
        "_pending_pushes",
    )

    def __init__(self) -> None:
        self._counter = 0
        self._channels: dict[str, _Channel] = {}
        self._pending_pushes: dict[str, str] = {}  # ref -> topic, for pushes whose reply matters
        self._heartbeat_ref: str | None = None
        self._answered = 0  # highest ref of a heartbeat the server answered (kept across resets)
        # (encode, decode, binary frames), shared by every session using the serializer
        self._codec: _Codec = _JSON_CODEC

    @property
    def binary(self) -> bool:
        """Frames go out as binary WebSocket messages (MessagePack), else as text (JSON)."""
        return self._codec[2]

    def use(self, serializer: str) -> None:
        """Encode and decode with ``serializer`` from now on: ``"json"`` (vsn 2.0.0, text
        frames) or ``"msgpack"`` (vsn 3.0.0, binary frames). Set before a socket's first frame."""
        if serializer == wire.SERIALIZER_MSGPACK:
            self._codec = _MSGPACK_CODEC
        elif serializer == wire.SERIALIZER_JSON:
            self._codec = _JSON_CODEC
        else:
            raise ValueError(f"unknown serializer {serializer!r}")

    def next_ref(self) -> str:
        self._counter += 1
        return str(self._counter)

    def reset(self) -> None:
        """Forget every channel and pending reply (the socket is gone). Refs keep increasing."""
        self._channels.clear()
        self._pending_pushes.clear()
        self._heartbeat_ref = None

    def is_joined(self, topic: str) -> bool:
        channel = self._channels.get(topic)
        return channel is not None and channel.state == _JOINED

    def join_ref(self, topic: str) -> str | None:
        channel = self._channels.get(topic)
        return channel.join_ref if channel is not None else None

    # -- outbound --------------------------------------------------------------------------------

    def join(self, topic: str, payload: dict[str, Any]) -> bytes:
        """The ``phx_join`` frame for ``topic``. Re-joining a joined topic replaces the instance."""
        ref = self.next_ref()
        self._channels[topic] = _Channel(join_ref=ref, state=_JOINING)
        return self._codec[0](ref, ref, topic, wire.EVENT_JOIN, payload)

    def push(self, topic: str, event: str, payload: Any, *, track_reply: bool = False) -> bytes:
        """A push on a joined (or joining) ``topic``.

        With ``track_reply`` the server's reply to this ref is returned by :meth:`receive` as a
        :class:`Reply`; otherwise replies to pushes are dropped (device pushes get none, §4.2).
        Raises :class:`LocalProtocolError` if the topic was never joined.
        """
        channel = self._channels.get(topic)
        if channel is None:
            raise LocalProtocolError(f"cannot push {event!r}: topic {topic!r} is not joined")
        ref = self.next_ref()
        if track_reply:
            self._pending_pushes[ref] = topic
        return self._codec[0](channel.join_ref, ref, topic, event, payload)

    def delivered(self, ref: str) -> bool:
        """Whether the server has processed the message sent with ``ref``: a heartbeat sent
        after it was answered (one socket, one ordered stream, one increasing ref counter).
        Device-channel pushes get no reply of their own (§13.7); this is their receipt."""
        return int(ref) < self._answered

    def forget_reply(self, ref: str) -> None:
        """Stop waiting for the reply to push ``ref`` (one that may never come: the server
        answers most pushes with nothing), so tracked refs cannot pile up."""
        self._pending_pushes.pop(ref, None)

    @property
    def tracked_replies(self) -> int:
        """How many pushes' replies are still awaited."""
        return len(self._pending_pushes)

    def last_ref(self) -> str:
        """The ref given to the most recent outbound message."""
        return str(self._counter)

    def heartbeat(self) -> bytes:
        """The next heartbeat frame; raises :class:`HeartbeatTimeout` if the last is unanswered."""
        if self._heartbeat_ref is not None:
            raise HeartbeatTimeout(
                f"heartbeat {self._heartbeat_ref} unanswered for a whole interval: "
                "connection is dead"
            )
        ref = self.next_ref()
        self._heartbeat_ref = ref
        return self._codec[0](None, ref, wire.TOPIC_PHOENIX, wire.EVENT_HEARTBEAT, {})

    # -- inbound ---------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> Event | None:
        """Interpret one frame of the session's kind (:attr:`binary`: the caller sorts out
        frames of the other kind, §4.5–4.6, once, before this). Returns the event, or None for
        internal/stale messages.

        Raises :class:`~nhlink.errors.DecodeError` for a malformed message.
        """
        message = self._codec[1](data)
        topic = message.topic
        event = message.event
        if event == wire.EVENT_REPLY:
            return self._receive_reply(message.join_ref, message.ref, topic, message.payload)
        if event == wire.EVENT_CLOSE or event == wire.EVENT_ERROR:
            channel = self._channels.get(topic)
            if channel is None or (
                message.join_ref is not None and message.join_ref != channel.join_ref
            ):
                return None  # an older instance of the channel: stale
            del self._channels[topic]
            return ChannelClosed(topic, event == wire.EVENT_ERROR, message.payload)
        return Push(topic, event, message.payload)

    def _receive_reply(
        self, join_ref: str | None, ref: str | None, topic: str, payload: Any
    ) -> Event | None:
        if not isinstance(payload, dict) or "status" not in payload:
            raise DecodeError(f"phx_reply without a status: {payload!r}")
        status = payload["status"]
        response = payload.get("response")
        if ref is None:
            return None
        if topic == wire.TOPIC_PHOENIX and ref == self._heartbeat_ref:
            self._heartbeat_ref = None
            self._answered = max(self._answered, int(ref))
            return None
        channel = self._channels.get(topic)
        if channel is not None and ref == channel.join_ref and channel.state == _JOINING:
            if status == wire.REPLY_OK:
                channel.state = _JOINED
                return Joined(topic, response)
            del self._channels[topic]
            return JoinRefused(topic, response)
        pending = self._pending_pushes.pop(ref, None)
        if pending is not None:
            return Reply(topic, ref, str(status), response)
        return None
