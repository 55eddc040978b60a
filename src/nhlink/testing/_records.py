"""What :class:`~nhlink.testing.FakeHub` remembers: received messages, upgrade attempts, devices.

These objects are the control API's read side. They are plain data, mutated only by the hub on
the event loop; tests read them (directly or through ``FakeHub.wait_for*``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = ["Attempt", "DeviceRecord", "Message", "Ref"]

#: A ``join_ref``/``ref`` as it arrived: Phoenix's V2 JSON serializer keeps an integer ref an
#: integer (and echoes it so); string or null is what clients should send (PROTOCOL.md §4.1).
#: The MessagePack serializer (vsn 3.0.0, §4.6) turns every non-null ref into a string.
Ref: TypeAlias = str | int | None


@dataclass(frozen=True)
class Message:
    """One Phoenix frame received from a device: ``[join_ref, ref, topic, event, payload]``.

    ``time`` is the hub clock (``FakeHub(clock=...)``); ``monotonic`` is the event loop's clock,
    for measuring intervals. ``connection`` numbers the hub's accepted sockets from 1.
    ``rejected`` says why the hub refused or dropped it (``"unmatched topic"``,
    ``"stale join_ref"``, ``"detach"``, ``"channel crashed"``, ``"join crashed"``, ...); None
    when accepted. ``join_ref``/``ref`` keep their JSON type (an integer stays an integer); on
    a MessagePack socket they are strings (``7`` arrives as ``"7"``), as on the real server.
    Otherwise a message looks the same whichever serializer carried it.
    """

    identifier: str
    join_ref: Ref
    ref: Ref
    topic: str
    event: str
    payload: Any
    time: float
    monotonic: float
    connection: int
    rejected: str | None = None

    def frame(self) -> list[Any]:
        """The message as the five-element list it arrived as."""
        return [self.join_ref, self.ref, self.topic, self.event, self.payload]


@dataclass(frozen=True)
class Attempt:
    """One WebSocket upgrade request on a device socket path and how the hub answered it.

    ``status`` is the HTTP status (101 accepted; 401, 403, 503, 400 refused). ``identifier`` is
    the authenticated identity, or for a refused shared-secret attempt the identifier read
    (unverified) from the token, or None. ``reason`` is a short diagnostic code, e.g. ``"ok"``,
    ``"no_auth"``, ``"expired"``, ``"invalid"``, ``"bad_signature"``, ``"unknown_key"``,
    ``"vsn"``. ``vsn`` is the query parameter as sent (None when missing); ``serializer`` is the
    one it selected (``"json"`` for ``~> 2.0.0``, ``"msgpack"`` for ``~> 3.0.0``), None when the
    hub answered 403 because no enabled serializer matched.
    """

    identifier: str | None
    status: int
    auth: str | None  # "certificate" | "shared_secret" | None
    reason: str
    path: str
    time: float
    monotonic: float
    vsn: str | None = None
    serializer: str | None = None  # "json" | "msgpack" | None


@dataclass(eq=False)
class DeviceRecord:
    """Everything the hub knows about one device identity, across its connections.

    The channel fields (``channels``, ``offered_extensions``, ``attached_extensions``) describe
    the *current* connection and are reset on every new socket; ``messages`` and the counters
    accumulate.
    """

    identifier: str
    auth: str = ""  # how it last authenticated: "certificate" | "product_key" | "device_key"
    key: str | None = None  # the shared-secret key used (never the secret)
    certificate_sha1: str | None = None  # uppercase hex SHA-1 of the client certificate (DER)
    serializer: str | None = None  # of the latest accepted socket: "json" | "msgpack"
    connected: bool = False
    connections: int = 0  # accepted upgrades
    joins: int = 0  # successful joins of the "device" topic
    join_params: dict[str, Any] | None = None  # payload of the latest "device" join
    channels: dict[str, Ref] = field(default_factory=dict)  # topic -> join_ref
    requested_extensions: dict[str, Any] = field(default_factory=dict)  # extensions join payload
    offered_extensions: list[str] = field(default_factory=list)  # the join reply array
    attached_extensions: set[str] = field(default_factory=set)
    disabled_extensions: set[str] = field(default_factory=set)  # device-level opt-outs
    messages: list[Message] = field(default_factory=list)
    sent: list[list[Any]] = field(default_factory=list)  # every frame the hub sent it
    close_codes: list[int] = field(default_factory=list)  # codes the hub closed sockets with
    rejections: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    warnings: list[str] = field(default_factory=list)  # protocol deviations the hub noticed

    @property
    def joined(self) -> bool:
        """True while the current socket has the ``device`` topic joined."""
        return self.connected and "device" in self.channels

    def messages_for(
        self, topic: str | None = None, event: str | None = None, *, accepted: bool = False
    ) -> list[Message]:
        """Received messages, optionally filtered by topic and/or event (and, with
        ``accepted=True``, only those the hub did not refuse or drop)."""
        return [
            m
            for m in self.messages
            if (topic is None or m.topic == topic)
            and (event is None or m.event == event)
            and not (accepted and m.rejected is not None)
        ]

    def payloads(self, event: str, topic: str | None = None) -> list[Any]:
        """Payloads of the *accepted* ``event`` messages, in order."""
        return [m.payload for m in self.messages_for(topic, event, accepted=True)]

    @property
    def statuses(self) -> list[str]:
        """The ``status`` of every accepted ``status_update``, in order."""
        return [
            p["status"]
            for p in self.payloads("status_update", "device")
            if isinstance(p, dict) and isinstance(p.get("status"), str)
        ]

    @property
    def progress(self) -> list[Any]:
        """Payloads of ``fwup_progress`` and ``update_progress``, in order."""
        return [
            m.payload
            for m in self.messages_for("device", accepted=True)
            if m.event in ("fwup_progress", "update_progress")
        ]

    @property
    def health_reports(self) -> list[Any]:
        """The ``value`` of every ``health:report``."""
        return [
            p.get("value") if isinstance(p, dict) else p
            for p in self.payloads("health:report", "extensions")
        ]

    @property
    def logs(self) -> list[Any]:
        """Payloads of ``logging:send``."""
        return self.payloads("logging:send", "extensions")

    @property
    def locations(self) -> list[Any]:
        """Payloads of ``geo:location:update``."""
        return self.payloads("geo:location:update", "extensions")

    @property
    def heartbeats(self) -> int:
        """How many heartbeats this identity has sent (all connections)."""
        return len(self.messages_for("phoenix", "heartbeat"))
