"""FakeHub: a NervesHub-compatible device endpoint on 127.0.0.1, for tests, demos and CI.

It reproduces what PROTOCOL.md says the real server does, checked independently of nhlink's
client code (no imports from its signer, codec, frames or protocol modules):

* §2: socket paths, ``vsn`` negotiation (``~> 2.0.0`` JSON, ``~> 3.0.0`` MessagePack, else 403),
  301 for other paths, 401/403/503 answers (the reason text as header and body where the server
  sends one), ``Date`` headers (taken from the hub clock, so clock recovery can be tested with a
  frozen clock);
* §3: mTLS (subject CN) and NH1 shared-secret verification (:mod:`._nh1`, :mod:`._etf`), and
  the duplicate-identity kick (close 1001);
* §4: Phoenix v2 JSON frames (string or integer refs, echoed as sent), heartbeats, "unmatched
  topic", duplicate joins (reply first, then ``phx_close`` for the old join_ref), stale
  join_refs;
* §4.6: the MessagePack serializer (vsn 3.0.0), encoded and decoded with the ``msgpack`` PyPI
  package (imported lazily, only for a vsn 3 socket): binary frames only, refs turned into
  strings, and the socket dropped on anything the real server's socket process crashes on;
* §6-§9: the ``device``, ``extensions`` and ``console`` channels, join crashes (a non-string
  ``device_api_version``), status validation (an unknown status "crashes" the channel with
  ``phx_error``), extension attach/detach, console events the server has no handler for;
* §4.4/§12: idle timeout (close 1002) and drain (close 1012).

All state lives on the event loop that runs the hub; the control methods must be awaited (or
called) from that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from email.utils import formatdate
from types import TracebackType
from typing import Any, Final, TypeVar

from aiohttp import WSMsgType, web

from nhlink.errors import ConfigError
from nhlink.testing import _nh1
from nhlink.testing._records import Attempt, DeviceRecord, Message, Ref

__all__ = [
    "DEVICE_STATUSES",
    "DOCS_URL",
    "KNOWN_EXTENSIONS",
    "NO_AUTH_REASON",
    "PLATFORM_REASON",
    "SERIALIZERS",
    "SOCKET_PATHS",
    "FakeHub",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# §2.1: both mount points (``/socket`` only on the device endpoint, which is what we emulate).
SOCKET_PATHS: Final = ("/device-socket/websocket", "/socket/websocket")
# §2.2/§4.6: the serializers, and the ``major.minor`` of the ``~> major.minor.0`` vsn each takes.
SERIALIZERS: Final = ("json", "msgpack")
_VSN_SERIES: Final = {"json": (2, 0), "msgpack": (3, 0)}
DOCS_URL: Final = "https://docs.nerves-hub.org/"
# §2.5 response headers.
REASON_HEADER: Final = "nh-connection-error-reason"
NO_AUTH_REASON: Final = "no certificate pair or shared secrets connection settings were provided"
PLATFORM_REASON: Final = "the platform could not be reached to authenticate this device"
# §7.4: the server's strict status enum (plus anything containing "fwup error").
DEVICE_STATUSES: Final = frozenset(
    {
        "requested",
        "rescheduled",
        "ignored",
        "received",
        "started",
        "downloading",
        "updating",
        "completed",
        "failed",
        "expired",
    }
)
# §6.5 device events the server knows (everything else is ignored by the real server).
DEVICE_EVENTS: Final = frozenset(
    {
        "status_update",
        "fwup_progress",
        "update_progress",
        "firmware_validated",
        "rebooting",
        "scripts/run",
        "report_network_interface",
        "connection_types",
    }
)
# §9.3: the only events the server's console channel handles; anything else crashes it.
CONSOLE_EVENTS: Final = frozenset({"up", "file-data/start", "file-data", "file-data/stop"})
# §8: the five server-side extensions, in the order the hub lists them in the join reply.
KNOWN_EXTENSIONS: Final = ("health", "geo", "logging", "local_shell", "network_identity")
# §8.3-§8.7: what the server sends right after "<name>:attached".
_ON_ATTACH: Final = {
    "health": "health:check",
    "geo": "geo:location:request",
    "local_shell": "local_shell:request_shell",
    "network_identity": "network_identity:request",
}
# Close codes (§4.4).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_IDLE: Final = 1002  # Bandit's idle timeout
# The socket process crashed (malformed frame). For a JSON frame and for a vsn 3.0.0 frame alike,
# the real server's close code is unconfirmed (PROTOCOL.md §15 ❓); 1011 is the RFC 6455 one.
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_RESTART: Final = 1012

_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


def _semver(value: object) -> tuple[int, int, int, bool] | None:
    """(major, minor, patch, is_prerelease) for a strict SemVer string, like Version.parse."""
    if not isinstance(value, str):
        return None
    match = _SEMVER.fullmatch(value)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3]), match[4] is not None


def _api_at_least(value: object, major: int, minor: int, patch: int) -> bool:
    """``device_api_version >= major.minor.patch``; missing or invalid means 1.0.0 (§6.2)."""
    parsed = _semver(value) or (1, 0, 0, False)
    if parsed[:3] != (major, minor, patch):
        return parsed[:3] > (major, minor, patch)
    return not parsed[3]  # 2.2.0-rc < 2.2.0


def _extension_version_ok(value: object) -> bool:
    """``~> 0.0.1``: >= 0.0.1 and < 0.1.0 (§8.1); Elixir's match? allows pre-releases."""
    parsed = _semver(value)
    if parsed is None:
        return False
    major, minor, patch, pre = parsed
    return major == 0 and minor == 0 and (patch > 1 or (patch == 1 and not pre))


def _vsn_serializer(vsn: str | None) -> str | None:
    """The serializer whose requirement ``vsn`` matches, like Phoenix's ``Version.match?``.

    ``~> 2.0.0`` means ``>= 2.0.0 and < 2.1.0-0`` with pre-releases allowed: ``2.0.0``,
    ``2.0.7``, ``2.0.1-rc`` and ``2.0.0+build`` match; ``2.0.0-rc``, ``2.1.0``, ``2.0`` and
    ``2`` do not (not SemVer, or out of range). Likewise ``~> 3.0.0`` for MessagePack. A missing
    vsn is Phoenix's default ``1.0.0``, which matches nothing.
    """
    parsed = _semver(vsn)
    if parsed is None:
        return None
    major, minor, patch, pre = parsed
    for name, series in _VSN_SERIES.items():
        if (major, minor) == series and (patch > 0 or not pre):
            return name
    return None


def _import_msgpack() -> Any:
    """The ``msgpack`` module, or None when it cannot be imported (JSON needs no extra)."""
    try:
        return importlib.import_module("msgpack")
    except ImportError:
        return None


class _Undecodable(Exception):
    """A vsn 3.0.0 frame the real server's socket process would crash on (§4.6 "errors")."""


class _Pairs(list[tuple[Any, Any]]):
    """A decoded MessagePack map whose keys are not checked yet (``object_pairs_hook``)."""


def _hashable(value: Any) -> Any:
    """A key for a Python dict: MessagePack (and Elixir) maps may have array or map keys."""
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _hashable(item)) for key, item in value.items())
    return value


def _from_msgpack(value: Any, notes: set[str]) -> Any:
    """Check a value from ``msgpack.unpackb`` and return it in the JSON model (dicts, lists).

    Raises :class:`_Undecodable` for a non-finite float, an ext value (the timestamp ext -1
    included) or a ``bin`` that is not UTF-8. A ``bin`` is read as the string it holds (the
    server reads ``str`` and ``bin`` both as plain binaries); ``notes`` collects ``"bin"`` and
    ``"map key"`` (a non-string key, kept) for a warning.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Undecodable(f"non-finite float {value!r}")
        return value
    if isinstance(value, bytes):
        notes.add("bin")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Undecodable("a bin value that is not UTF-8") from None
    if isinstance(value, _Pairs):
        result: dict[Any, Any] = {}
        for raw_key, raw_item in value:
            key = _from_msgpack(raw_key, notes)
            if not isinstance(key, str):
                notes.add("map key")
            result[_hashable(key)] = _from_msgpack(raw_item, notes)
        return result
    if isinstance(value, list):
        return [_from_msgpack(item, notes) for item in value]
    raise _Undecodable(f"ext value {value!r}")  # msgpack.ExtType, msgpack.Timestamp


def _msgpack_ref(value: Any) -> str | None:
    """§4.6: the server turns a non-nil ``join_ref``/``ref`` into a string (``7`` -> ``"7"``).

    Elixir's ``to_string`` also accepts booleans (atoms); floats, arrays and maps are refused
    here (FakeHub's simplification: their Elixir text forms are not reproduced).
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise _Undecodable(f"ref {value!r} is not nil, a string, an integer or a boolean")


def _decode_msgpack(packer: Any, data: bytes) -> tuple[list[Any], set[str]]:
    """One vsn 3.0.0 frame -> ``[join_ref, ref, topic, event, payload]`` (refs as strings) and
    the notes of :func:`_from_msgpack`; raises :class:`_Undecodable`."""
    try:
        value = packer.unpackb(
            data, raw=False, strict_map_key=False, object_pairs_hook=_Pairs, use_list=True
        )
    except RecursionError:
        raise _Undecodable("nested too deeply") from None
    except Exception as exc:  # ExtraData, FormatError, StackError, invalid UTF-8, truncated...
        raise _Undecodable(f"not one MessagePack value ({type(exc).__name__}: {exc})") from None
    notes: set[str] = set()
    try:
        frame = _from_msgpack(value, notes)
    except RecursionError:
        raise _Undecodable("nested too deeply") from None
    if not isinstance(frame, list) or len(frame) != 5:
        raise _Undecodable("the envelope is not an array of 5 elements")
    join_ref, ref, topic, event, payload = frame
    if not isinstance(topic, str) or not isinstance(event, str):
        raise _Undecodable("topic and event must be strings")
    return [_msgpack_ref(join_ref), _msgpack_ref(ref), topic, event, payload], notes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_ref(value: object) -> bool:
    """A ``join_ref``/``ref`` the hub accepts: null, a string, or an integer.

    Phoenix's V2 JSON serializer does no type check (``decode_text`` destructures the list), so
    an integer ref is stored and echoed *as an integer*; string-or-null is what PROTOCOL.md §4.1
    prescribes and integers are what some raw clients send. Other JSON types stay refused.
    """
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    )


class _Rejected(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        identifier: str | None = None,
        auth: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.identifier = identifier
        self.auth = auth
        self.headers = dict(headers or {})
        self.body = body


def _platform_unavailable(
    reason: str, identifier: str | None = None, auth: str | None = None
) -> _Rejected:
    """§2.5: 503 with the "platform could not be reached" reason as header and body."""
    return _Rejected(
        503,
        reason,
        identifier,
        auth,
        headers={REASON_HEADER: PLATFORM_REASON},
        body=PLATFORM_REASON,
    )


class _Identity:
    __slots__ = ("auth", "fingerprint", "identifier", "key")

    def __init__(
        self, identifier: str, auth: str, key: str | None = None, fingerprint: str | None = None
    ) -> None:
        self.identifier = identifier
        self.auth = auth
        self.key = key
        self.fingerprint = fingerprint


class _Connection:
    """One accepted device socket. Its channel state is shared (same objects) with the device
    record while it is that identity's current connection."""

    def __init__(
        self,
        serial: int,
        record: DeviceRecord,
        ws: web.WebSocketResponse,
        close_timeout: float,
        serializer: str = "json",
        packer: Any = None,
    ) -> None:
        self.serial = serial
        #: "json" (text frames) or "msgpack" (binary frames, encoded and decoded by ``packer``,
        #: the ``msgpack`` module).
        self.serializer = serializer
        self.packer = packer
        self.record = record
        self.identifier = record.identifier
        self.ws = ws
        self.close_timeout = close_timeout
        self.channels: dict[str, Ref] = {}
        self.requested: dict[str, Any] = {}
        self.offered: list[str] = []
        self.attached: set[str] = set()
        self.heartbeat_replies = True
        self.timers: dict[str, asyncio.Task[None]] = {}
        self.close_code: int | None = None
        self.lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        return self.close_code is None and not self.ws.closed

    async def send(self, frame: list[Any]) -> bool:
        """Send one Phoenix frame (a text message, or a binary one holding a single MessagePack
        value on a vsn 3.0.0 socket, §4.6); False if the socket is gone."""
        if self.packer is not None:
            # msgpax's mapping: every string a str (never bin), floats as float 64.
            data: bytes = self.packer.packb(frame, use_bin_type=True)
            return await self.send_raw(data, frame)
        return await self.send_raw(json.dumps(frame, ensure_ascii=False), frame)

    async def send_raw(self, data: str | bytes, frame: list[Any] | None = None) -> bool:
        if not self.open:
            return False
        try:
            async with self.lock:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
        except (ConnectionError, RuntimeError):
            return False
        if frame is not None:
            self.record.sent.append(frame)
        return True

    def cancel_timers(self, name: str | None = None) -> None:
        for key in [name] if name is not None else list(self.timers):
            task = self.timers.pop(key, None)
            if task is not None:
                task.cancel()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` (first call wins); waits at most ``close_timeout`` for the peer."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.record.close_codes.append(code)
        self.cancel_timers()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
            async with asyncio.timeout(self.close_timeout + 1):
                await self.ws.close(code=code, message=reason.encode("utf-8"))


class FakeHub:
    """A NervesHub-compatible device endpoint, bound to 127.0.0.1 only.

    Use it as an async context manager (or call :meth:`start`/:meth:`stop`)::

        async with FakeHub(shared_secrets={"nhp_key": "secret"}) as hub:
            client = connect_to(hub.url)
            record = await hub.wait_for_device("device-0001")
            await hub.push_update("device-0001", firmware_url=..., size=..., checksum=...)
            await hub.wait_for_message("device-0001", event="status_update",
                                       predicate=lambda m: m.payload["status"] == "completed")

    Authentication (§3): ``tls`` is a server :class:`ssl.SSLContext`; for mTLS it should request
    but not require a client certificate (``CERT_OPTIONAL`` with the device CA loaded, see
    :func:`nhlink.testing.certs.server_ssl_context`) and then the subject CN is the identifier.
    ``shared_secrets`` maps product keys (``nhp_...``, any identifier, auto-created) to secrets;
    ``device_keys`` maps other keys to ``(secret, identifier)``. ``certificate_identifiers``,
    when given, is the set of CNs the hub accepts (others get 401); by default any certificate
    the TLS layer verified is accepted (just-in-time provisioning).

    ``clock`` (Unix seconds) drives token checks and the ``Date`` header; ``max_age`` is the
    server's token max-age (90 s); ``idle_timeout`` closes a socket with 1002 when nothing was
    received for that long (None disables). ``extensions`` lists the extensions enabled on the
    "product"; ``health_interval``/``geo_interval`` re-send checks/requests periodically (None
    disables). ``legacy_update_in_join`` puts an update into the device join reply as 2023
    servers did. ``fwup_public_keys``/``archive_public_keys`` are pushed after a join that asks
    for them with ``"on_connect"``; ``connecting_code`` is sent as ``scripts/run`` (§6.3).

    ``serializers`` names the serializers the upgrade may select (§2.2, §4.6): ``"json"`` for a
    ``vsn`` matching ``~> 2.0.0`` (text frames) and ``"msgpack"`` for ``~> 3.0.0`` (binary
    MessagePack frames, via the ``msgpack`` package); any other vsn, or one whose serializer is
    not enabled, gets 403. ``serializers=("json",)`` is a server from before 2026-07-08. If
    ``msgpack`` cannot be imported, "msgpack" counts as not enabled (and a warning goes to
    :attr:`warnings`).

    Most options are also mutable attributes of the same name (``extensions`` and
    ``serializers`` are sets).
    ``unavailable = True`` makes every upgrade answer 503; ``reject_joins = True`` makes device
    joins fail with ``{"error": "could not connect"}``; ``ignore_joins = True`` leaves them
    unanswered (heartbeats are still answered: a server stuck in the join).
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        shared_secrets: Mapping[str, str] | None = None,
        device_keys: Mapping[str, tuple[str, str]] | None = None,
        shared_secrets_enabled: bool = True,
        certificate_identifiers: Collection[str] | None = None,
        max_age: float = 90,
        idle_timeout: float | None = 180,
        clock: Callable[[], float] = time.time,
        heartbeat_replies: bool = True,
        extensions: Collection[str] = (),
        health_interval: float | None = 3600,
        geo_interval: float | None = None,
        legacy_update_in_join: Mapping[str, Any] | None = None,
        fwup_public_keys: Sequence[str] = (),
        archive_public_keys: Sequence[str] = (),
        connecting_code: str | None = None,
        unavailable: bool = False,
        redirect_url: str = DOCS_URL,
        control_api: bool = True,
        close_timeout: float = 2.0,
        max_message_size: int = 1024 * 1024,
        serializers: Collection[str] = SERIALIZERS,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError("port", f"must be 0..65535, got {port}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ConfigError("idle_timeout", "must be positive or None")
        for name in extensions:
            if name not in KNOWN_EXTENSIONS:
                raise ConfigError("extensions", f"unknown extension {name!r}")
        if isinstance(serializers, str):
            raise ConfigError("serializers", "must be a collection of names, not one string")
        if not serializers:
            raise ConfigError("serializers", "must not be empty")
        for name in serializers:
            if name not in SERIALIZERS:
                raise ConfigError("serializers", f"unknown serializer {name!r} (json, msgpack)")
        self._port = port
        self.tls = tls
        self._product_keys: dict[str, str] = {}
        self._device_keys: dict[str, tuple[str, str]] = {}
        for key, secret in (shared_secrets or {}).items():
            self.add_product_key(key, secret)
        for key, (secret, identifier) in (device_keys or {}).items():
            self.add_device_key(key, secret, identifier)
        self.shared_secrets_enabled = shared_secrets_enabled
        self.certificate_identifiers: set[str] | None = (
            None if certificate_identifiers is None else set(certificate_identifiers)
        )
        self.max_age = max_age
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.heartbeat_replies = heartbeat_replies
        self.extensions: set[str] = set(extensions)
        self.health_interval = health_interval
        self.geo_interval = geo_interval
        self.legacy_update_in_join: dict[str, Any] | None = (
            None if legacy_update_in_join is None else dict(legacy_update_in_join)
        )
        self.fwup_public_keys = list(fwup_public_keys)
        self.archive_public_keys = list(archive_public_keys)
        self.connecting_code = connecting_code
        self.unavailable = unavailable
        self.reject_joins = False
        self.ignore_joins = False
        self.redirect_url = redirect_url
        self.control_api = control_api
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size
        self.serializers: set[str] = set(serializers)

        #: identifier -> record, for every identity that ever authenticated.
        self.devices: dict[str, DeviceRecord] = {}
        #: every frame received from any device, in order.
        self.log: list[Message] = []
        #: every upgrade request on a socket path, in order.
        self.attempts: list[Attempt] = []
        #: hub-wide problems that belong to no device (e.g. ``msgpack`` missing), each once.
        self.warnings: list[str] = []
        self._conns: dict[str, _Connection] = {}
        self._all_conns: set[_Connection] = set()
        self._serial = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1:``port`` and start serving. Call :meth:`stop` afterwards."""
        if self._runner is not None:
            raise RuntimeError("FakeHub already started")
        app = web.Application(client_max_size=self.max_message_size)
        app.on_response_prepare.append(self._set_date)
        if self.control_api:
            from nhlink.testing import _control

            _control.add_routes(app, self)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, ssl_context=self.tls)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        logger.info("FakeHub listening on %s", self.url)

    async def stop(self) -> None:
        """Close every device socket with 1001 (going away) and stop listening."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await asyncio.gather(
            *(conn.close(CLOSE_GOING_AWAY, "server stopping") for conn in list(self._all_conns))
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()

    async def __aenter__(self) -> FakeHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (the ephemeral one when constructed with ``port=0``)."""
        if self._bound_port is None:
            raise RuntimeError("FakeHub is not started")
        return self._bound_port

    @property
    def scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:<port>`` (``wss`` with TLS)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` with TLS), e.g. for the control endpoints."""
        return f"{'https' if self.tls is not None else 'http'}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The device socket URL: ``ws://127.0.0.1:<port>/device-socket/websocket?vsn=2.0.0``."""
        return self.url_for()

    def url_for(self, path: str = SOCKET_PATHS[0], vsn: str | None = "2.0.0") -> str:
        query = f"?vsn={vsn}" if vsn is not None else ""
        return f"{self.base_url}{path}{query}"

    # ------------------------------------------------------------------------ credentials

    def add_product_key(self, key: str, secret: str) -> None:
        """Accept ``key`` (must start with ``nhp_``) for any identifier."""
        if not key.startswith("nhp_"):
            raise ConfigError("shared_secrets", "product keys start with 'nhp_'")
        self._product_keys[key] = secret

    def add_device_key(self, key: str, secret: str, identifier: str) -> None:
        """Accept ``key`` (must not start with ``nhp_``) for ``identifier`` only."""
        if key.startswith("nhp_"):
            raise ConfigError("device_keys", "keys starting with 'nhp_' are product keys")
        if not identifier:
            raise ConfigError("device_keys", "identifier must not be empty")
        self._device_keys[key] = (secret, identifier)

    def revoke_key(self, key: str) -> None:
        """Deactivate a key: later attempts with it get 401 (open sockets stay)."""
        self._product_keys.pop(key, None)
        self._device_keys.pop(key, None)

    # ----------------------------------------------------------------------- HTTP handling

    async def _set_date(self, request: web.Request, response: web.StreamResponse) -> None:
        # §3.2.5: clients recover a slow clock from Date, so it follows the hub clock.
        response.headers["Date"] = formatdate(self.clock(), usegmt=True)

    def _attempt(
        self,
        path: str,
        status: int,
        reason: str,
        identifier: str | None = None,
        auth: str | None = None,
        *,
        vsn: str | None = None,
        serializer: str | None = None,
    ) -> None:
        attempt = Attempt(
            identifier=identifier,
            status=status,
            auth=auth,
            reason=reason,
            path=path,
            time=self.clock(),
            monotonic=asyncio.get_running_loop().time(),
            vsn=vsn,
            serializer=serializer,
        )
        self.attempts.append(attempt)
        if identifier is not None and status != 101 and identifier in self.devices:
            self.devices[identifier].rejections[status] += 1
        logger.debug("upgrade %s from %r: %d (%s)", path, identifier, status, reason)
        self._notify()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path not in SOCKET_PATHS:
            # §2.1: the device endpoint redirects every other path to documentation.
            return web.Response(status=301, headers={"Location": self.redirect_url})
        # §2.2: vsn negotiation comes before authentication (Phoenix's serializer check).
        vsn = request.query.get("vsn")
        serializer, packer = self._negotiate(vsn)
        if serializer is None:
            self._attempt(path, 403, "vsn", vsn=vsn)
            return web.Response(status=403)
        try:
            if self.unavailable:
                raise _platform_unavailable("unavailable")
            identity = self._authenticate(request)
        except _Rejected as rejected:
            self._attempt(
                path,
                rejected.status,
                rejected.reason,
                rejected.identifier,
                rejected.auth,
                vsn=vsn,
                serializer=serializer,
            )
            # §2.5: WebsocketConnectionError sends the reason as header *and* body (401 "no
            # auth", 503); every other refusal is a bare 401 with an empty body.
            return web.Response(
                status=rejected.status,
                headers=rejected.headers,
                body=rejected.body.encode("utf-8"),
            )
        ws = web.WebSocketResponse(
            timeout=self.close_timeout,
            autoping=True,
            compress=True,
            max_msg_size=self.max_message_size,
        )
        if not ws.can_prepare(request).ok:
            self._attempt(
                path,
                400,
                "not_websocket",
                identity.identifier,
                identity.auth,
                vsn=vsn,
                serializer=serializer,
            )
            return web.Response(status=400)
        record = self._record(identity)
        old = self._conns.pop(identity.identifier, None)
        if old is not None:
            # §3: the newly authenticated socket knocks the old one off with 1001.
            logger.debug("duplicate identity %r: closing the older socket", identity.identifier)
            self._spawn(old.close(CLOSE_GOING_AWAY, "duplicate connection"))
        await ws.prepare(request)
        self._serial += 1
        conn = _Connection(self._serial, record, ws, self.close_timeout, serializer, packer)
        self._conns[record.identifier] = conn
        self._all_conns.add(conn)
        record.serializer = serializer
        record.connected = True
        record.connections += 1
        record.channels = conn.channels
        record.requested_extensions = conn.requested
        record.offered_extensions = conn.offered
        record.attached_extensions = conn.attached
        self._attempt(
            path, 101, "ok", identity.identifier, identity.auth, vsn=vsn, serializer=serializer
        )
        try:
            await self._serve(conn)
        finally:
            conn.cancel_timers()
            self._all_conns.discard(conn)
            if self._conns.get(record.identifier) is conn:
                del self._conns[record.identifier]
                record.connected = False
            self._notify()
        return ws

    def _negotiate(self, vsn: str | None) -> tuple[str | None, Any]:
        """§2.2/§4.6: ``(serializer, msgpack module or None)``; ``(None, None)`` means 403."""
        name = _vsn_serializer(vsn)
        if name is None or name not in self.serializers:
            return None, None
        if name == "json":
            return name, None
        packer = _import_msgpack()
        if packer is None:
            self._hub_warning(
                "a device asked for MessagePack (vsn 3.0.x) but the msgpack package cannot be"
                " imported: answering 403 as a server without that serializer does"
            )
            return None, None
        return name, packer

    def _hub_warning(self, text: str) -> None:
        if text not in self.warnings:
            logger.warning("FakeHub: %s", text)
            self.warnings.append(text)

    def _record(self, identity: _Identity) -> DeviceRecord:
        record = self.devices.get(identity.identifier)
        if record is None:
            record = self.devices[identity.identifier] = DeviceRecord(identity.identifier)
        record.auth = identity.auth
        record.key = identity.key
        record.certificate_sha1 = identity.fingerprint
        return record

    def _authenticate(self, request: web.Request) -> _Identity:
        """§3: certificate first, then any ``x-`` header means NH1, else "no auth"."""
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        if peercert:
            return self._certificate_identity(request, peercert)
        if any(name.lower().startswith("x-") for name in request.headers):
            return self._shared_secret_identity(request)
        raise _Rejected(
            401, "no_auth", headers={REASON_HEADER: NO_AUTH_REASON}, body=NO_AUTH_REASON
        )

    def _certificate_identity(self, request: web.Request, peercert: Any) -> _Identity:
        # The TLS layer already did path validation against the configured CA(s): a client
        # certificate from an unknown CA fails the handshake, as on the real server (§2.5).
        common_name = ""
        for rdn in peercert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName" and not common_name:
                    common_name = value
        fingerprint = None
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(ssl_object, ssl.SSLObject):
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                fingerprint = hashlib.sha1(der).hexdigest().upper()  # §3.1 step 1
        if not common_name:
            raise _Rejected(401, "no_common_name", auth="certificate")
        allowed = self.certificate_identifiers
        if allowed is not None and common_name not in allowed:
            raise _Rejected(401, "unknown_certificate", common_name, auth="certificate")
        return _Identity(common_name, "certificate", fingerprint=fingerprint)

    def _shared_secret_identity(self, request: web.Request) -> _Identity:
        headers = request.headers
        if not self.shared_secrets_enabled:
            token = headers.get("x-nh-signature")
            hint = _nh1.peek_identifier(token) if token else None
            raise _Rejected(401, "shared_secrets_disabled", hint, "shared_secret")
        secrets = dict(self._product_keys)
        secrets.update((key, secret) for key, (secret, _) in self._device_keys.items())
        now_ms = math.floor(self.clock() * 1000)
        try:
            verified = _nh1.verify_headers(headers, secrets, now_ms=now_ms, max_age=self.max_age)
        except _nh1.NH1Crash as exc:
            # The server's verification raised (e.g. no x-nh-time): DeviceSocket catches it and
            # answers "platform unavailable".
            raise _platform_unavailable(exc.reason, exc.identifier, "shared_secret") from None
        except _nh1.NH1Error as exc:
            raise _Rejected(401, exc.reason, exc.identifier, "shared_secret") from None
        if verified.key in self._product_keys:
            return _Identity(verified.identifier, "product_key", verified.key)
        bound = self._device_keys[verified.key][1]
        if verified.identifier != bound:
            # §3.2.1: a device key signs only its own device's identifier.
            raise _Rejected(401, "identifier_mismatch", verified.identifier, "shared_secret")
        return _Identity(verified.identifier, "device_key", verified.key)

    # ------------------------------------------------------------------ Phoenix v2 session

    async def _serve(self, conn: _Connection) -> None:
        ws = conn.ws
        while True:
            try:
                msg = await ws.receive(timeout=self.idle_timeout)
            except TimeoutError:
                # §4.3/§12: nothing received for idle_timeout (pings count: aiohttp restarts
                # the timer after answering one). Bandit closes with 1002.
                logger.debug("idle timeout for %r", conn.identifier)
                await conn.close(CLOSE_IDLE, "idle timeout")
                return
            if msg.type is WSMsgType.TEXT and conn.packer is not None:
                # §4.6: the MessagePack serializer decodes binary frames only; a text frame
                # crashes the socket process, dropping every channel.
                self._warn(conn, "text frame received under vsn=3.0.0 (MessagePack)")
                await conn.close(CLOSE_INTERNAL_ERROR, "text frame")
                return
            if msg.type is WSMsgType.TEXT:
                assert isinstance(msg.data, str)
                await self._on_text(conn, msg.data)
            elif msg.type is WSMsgType.BINARY and conn.packer is not None:
                assert isinstance(msg.data, bytes)
                await self._on_msgpack(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                # §4.5: a client MUST NOT send binary frames under vsn 2.0.0; NervesHub
                # would try to decode it as a binary push and crash on anything else.
                self._warn(conn, "binary frame received under vsn=2.0.0")
                await conn.close(CLOSE_INTERNAL_ERROR, "binary frame")
                return
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return
            if not conn.open:
                return

    def _warn(self, conn: _Connection, text: str) -> None:
        logger.debug("device %r: %s", conn.identifier, text)
        conn.record.warnings.append(text)

    async def _on_text(self, conn: _Connection, text: str) -> None:
        try:
            frame = json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            frame = None
        valid = (
            isinstance(frame, list)
            and len(frame) == 5
            and _is_ref(frame[0])
            and _is_ref(frame[1])
            and isinstance(frame[2], str)
            and isinstance(frame[3], str)
        )
        if not valid:
            # §4.1: the V2 serializer's decode! raises; the socket process dies.
            self._warn(conn, f"malformed frame: {text[:200]!r}")
            await conn.close(CLOSE_INTERNAL_ERROR, "malformed message")
            return
        assert isinstance(frame, list)
        await self._on_frame(conn, frame)

    async def _on_msgpack(self, conn: _Connection, data: bytes) -> None:
        """§4.6: one binary frame on a vsn 3.0.0 socket."""
        try:
            frame, notes = _decode_msgpack(conn.packer, data)
        except _Undecodable as exc:
            # The serializer's decode! raises; the socket process dies with every channel.
            self._warn(conn, f"malformed MessagePack frame, {exc}: {data[:64].hex(' ')}")
            await conn.close(CLOSE_INTERNAL_ERROR, "malformed message")
            return
        if "bin" in notes:
            self._warn(conn, "MessagePack bin value(s) received: the server reads them as strings")
        if "map key" in notes:
            self._warn(conn, "non-string MessagePack map key(s): the handlers match string keys")
        await self._on_frame(conn, frame)

    async def _on_frame(self, conn: _Connection, frame: list[Any]) -> None:
        """Record and act on one decoded ``[join_ref, ref, topic, event, payload]``."""
        join_ref, ref, topic, event, payload = frame
        message = Message(
            identifier=conn.identifier,
            join_ref=join_ref,
            ref=ref,
            topic=topic,
            event=event,
            payload=payload,
            time=self.clock(),
            monotonic=asyncio.get_running_loop().time(),
            connection=conn.serial,
        )
        rejected: str | None = "hub error"
        try:
            rejected = await self._dispatch(conn, message)
        finally:
            if rejected is not None:
                message = dataclasses.replace(message, rejected=rejected)
            self.log.append(message)
            conn.record.messages.append(message)
            self._notify()

    async def _reply(
        self, conn: _Connection, message: Message, status: str, response: Any = None
    ) -> None:
        body = {"status": status, "response": {} if response is None else response}
        await conn.send([message.join_ref, message.ref, message.topic, "phx_reply", body])

    async def _dispatch(self, conn: _Connection, message: Message) -> str | None:
        """Act on one frame; return why it was refused or dropped (None if accepted)."""
        topic, event = message.topic, message.event
        if topic == "phoenix" and event == "heartbeat":
            # §4.3: the reply carries the heartbeat's refs.
            if self.heartbeat_replies and conn.heartbeat_replies:
                await self._reply(conn, message, "ok")
            return None
        if event == "phx_join":
            return await self._join(conn, message)
        if topic not in conn.channels:
            if event == "phx_leave":
                await self._reply(conn, message, "ok")
                return None
            # §4.2: not joined.
            await self._reply(conn, message, "error", {"reason": "unmatched topic"})
            return "unmatched topic"
        current = conn.channels[topic]
        if message.join_ref is not None and current is not None and message.join_ref != current:
            # §4.1: a message for an earlier instance of the channel is dropped silently.
            self._warn(conn, f"stale join_ref {message.join_ref!r} on {topic!r} dropped")
            return "stale join_ref"
        if event == "phx_leave":
            await self._reply(conn, message, "ok")
            await self._drop_channel(conn, topic, "phx_close", {})
            return None
        if topic == "device":
            return await self._device_event(conn, message)
        if topic == "extensions":
            return await self._extensions_event(conn, message)
        if topic == "console":
            return await self._console_event(conn, message)
        return None  # "device:<x>" events are only recorded.

    def _forget_channel(self, conn: _Connection, topic: str) -> Ref:
        """Remove ``topic`` (and the extensions state) without telling the device."""
        join_ref = conn.channels.pop(topic, None)
        if topic == "extensions":
            conn.cancel_timers()
            conn.attached.clear()
            conn.offered.clear()
        return join_ref

    async def _drop_channel(
        self, conn: _Connection, topic: str, event: str, payload: dict[str, Any]
    ) -> None:
        """Remove ``topic`` and tell the device (``phx_close`` or ``phx_error``, §4.2)."""
        join_ref = self._forget_channel(conn, topic)
        await conn.send([join_ref, join_ref, topic, event, payload])

    async def _join(self, conn: _Connection, message: Message) -> str | None:
        topic = message.topic
        # §4.2, Phoenix 1.8 ``Socket.handle_in`` for a duplicate join: the old instance is shut
        # down first, but its ``[old, old, topic, "phx_close", {}]`` is queued to the socket's
        # own mailbox, so it goes out *after* the reply to the new join (ok or error) and before
        # anything the new instance pushes after joining.
        duplicate = topic in conn.channels
        old_join_ref = self._forget_channel(conn, topic) if duplicate else None
        if topic == "device":
            rejected = await self._join_device(conn, message)
        elif topic == "extensions":
            rejected = await self._join_extensions(conn, message)
        elif topic.startswith("device:") or topic == "console":
            if topic.startswith("device:"):
                self._warn(conn, f"joined {topic!r}: the real server sends nothing on it (§6.1)")
            conn.channels[topic] = message.join_ref
            await self._reply(conn, message, "ok")
            rejected = None
        else:
            await self._reply(conn, message, "error", {"reason": "unmatched topic"})
            return "unmatched topic"
        if duplicate:
            await conn.send([old_join_ref, old_join_ref, topic, "phx_close", {}])
        if topic == "device" and rejected is None:
            await self._after_device_join(conn, message)
        return rejected

    async def _join_device(self, conn: _Connection, message: Message) -> str | None:
        """Answer a ``device`` join (the pushes that follow are :meth:`_after_device_join`)."""
        params = message.payload
        if not isinstance(params, dict):
            self._warn(conn, "device join payload is not an object")
            await self._reply(conn, message, "error", {"reason": "join crashed"})
            return "join crashed"
        if "device_api_version" in params and not isinstance(params["device_api_version"], str):
            # §6.2: a missing or unparsable version string means 1.0.0, but the server runs
            # Version.parse/1 on whatever is present, and it has no clause for a non-string
            # (null included): the join process crashes.
            version = params["device_api_version"]
            self._warn(conn, f"device_api_version {version!r} is not a string: join crashed")
            await self._reply(conn, message, "error", {"reason": "join crashed"})
            return "join crashed"
        if self.reject_joins:
            await self._reply(conn, message, "error", {"error": "could not connect"})
            return "join refused"
        if self.ignore_joins:
            return "join ignored"  # no reply at all
        record = conn.record
        record.join_params = params
        record.joins += 1
        missing = [
            f"nerves_fw_{k}"
            for k in ("uuid", "product", "architecture", "version", "platform")
            if f"nerves_fw_{k}" not in params
        ]
        if missing:
            # §6.2: the join still succeeds, but the real server records no metadata.
            self._warn(conn, f"device join lacks {', '.join(missing)}")
        conn.channels["device"] = message.join_ref
        await self._reply(conn, message, "ok", self.legacy_update_in_join)
        return None

    async def _after_device_join(self, conn: _Connection, message: Message) -> None:
        """§6.3: the pushes that follow a successful ``device`` join, in the server's order."""
        params = message.payload
        assert isinstance(params, dict)
        api = params.get("device_api_version")
        if params.get("fwup_public_keys") == "on_connect" and self.fwup_public_keys:
            await self._fastlane(conn, "fwup_public_keys", {"keys": list(self.fwup_public_keys)})
        if params.get("archive_public_keys") == "on_connect" and self.archive_public_keys:
            keys = list(self.archive_public_keys)
            await self._fastlane(conn, "archive_public_keys", {"keys": keys})
        if _api_at_least(api, 2, 2, 0):
            await self._fastlane(conn, "extensions:get", {})
        if self.connecting_code is not None and _api_at_least(api, 2, 1, 0):
            payload = {"text": self.connecting_code, "ref": "connecting_code"}
            await conn.send([message.join_ref, None, "device", "scripts/run", payload])

    async def _fastlane(self, conn: _Connection, event: str, payload: Any) -> bool:
        return await conn.send([None, None, "device", event, payload])

    async def _device_event(self, conn: _Connection, message: Message) -> str | None:
        event, payload = message.event, message.payload
        if event == "status_update":
            status = payload.get("status") if isinstance(payload, dict) else None
            if not isinstance(status, str) or not (
                status in DEVICE_STATUSES or "fwup error" in status.lower()
            ):
                # §7.4: the strict enum cast raises inside the channel process.
                self._warn(conn, f"invalid status_update {status!r}: channel crashed")
                await self._drop_channel(conn, "device", "phx_error", {"reason": "channel_crash"})
                return "channel crashed"
        elif event in ("fwup_progress", "update_progress"):
            value = payload.get("value") if isinstance(payload, dict) else None
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                self._warn(conn, f"{event} value {value!r} is not an integer 0..100")
        elif event not in DEVICE_EVENTS:
            self._warn(conn, f"unknown device event {event!r} (ignored by the server)")
        # §6.5: device-channel events are never answered.
        return None

    async def _console_event(self, conn: _Connection, message: Message) -> str | None:
        """§9.3: ``ConsoleChannel`` has ``handle_in`` clauses for four events only, and ``up``
        appends ``payload["data"]`` to a string. Anything else raises in the channel process:
        ``phx_error`` for the console join_ref, and the channel is gone."""
        event, payload = message.event, message.payload
        if event not in CONSOLE_EVENTS:
            problem = f"console event {event!r} has no server handler"
        elif event == "up" and not (
            isinstance(payload, dict) and isinstance(payload.get("data"), str)
        ):
            problem = "console 'up' without a string 'data'"
        else:
            return None  # relayed to the browsers; never answered
        self._warn(conn, f"{problem}: channel crashed")
        await self._drop_channel(conn, "console", "phx_error", {"reason": "channel_crash"})
        return "channel crashed"

    # ------------------------------------------------------------------------ extensions

    async def _join_extensions(self, conn: _Connection, message: Message) -> str | None:
        payload = message.payload
        if not isinstance(payload, dict):
            self._warn(conn, "extensions join payload is not an object")
            await self._reply(conn, message, "error", {"reason": "join crashed"})
            return "join crashed"
        conn.cancel_timers()
        conn.requested.clear()
        conn.requested.update(payload)
        conn.attached.clear()
        disabled = conn.record.disabled_extensions
        conn.offered[:] = [
            name
            for name in KNOWN_EXTENSIONS
            if _extension_version_ok(payload.get(name))
            and name in self.extensions
            and name not in disabled
        ]
        conn.channels["extensions"] = message.join_ref
        # §8.1: the reply is a JSON array.
        await self._reply(conn, message, "ok", list(conn.offered))
        return None

    async def _ext_push(self, conn: _Connection, event: str, payload: Any) -> bool:
        if "extensions" not in conn.channels:
            return False
        return await conn.send([conn.channels["extensions"], None, "extensions", event, payload])

    async def _extensions_event(self, conn: _Connection, message: Message) -> str | None:
        name, sep, sub = message.event.partition(":")
        if not sep:
            self._warn(conn, f"unscoped extensions event {message.event!r}")
            return "unscoped event"
        if sub == "attached":
            if name not in conn.offered:
                await self._reply(conn, message, "error", "detach")
                return "detach"
            conn.attached.add(name)
            await self._on_attach(conn, name)
            return None
        if sub in ("detached", "error"):
            conn.attached.discard(name)
            conn.cancel_timers(name)
            return None
        if name not in conn.attached:
            # §8.2: traffic of an extension that is not attached: the bare-string reply.
            await self._reply(conn, message, "error", "detach")
            return "detach"
        payload = message.payload
        if message.event == "health:report":
            value = payload.get("value") if isinstance(payload, dict) else None
            if not isinstance(value, dict):
                self._warn(conn, "health:report without a 'value' object")
            else:
                metrics = value.get("metrics", {})
                if not isinstance(metrics, dict) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
                ):
                    self._warn(conn, "health:report metrics must be numbers")
        elif message.event == "logging:send":
            meta = payload.get("meta") if isinstance(payload, dict) else None
            if isinstance(meta, dict) and not all(isinstance(v, str) for v in meta.values()):
                self._warn(conn, "logging:send meta values must be strings")
        return None

    async def _on_attach(self, conn: _Connection, name: str) -> None:
        request = _ON_ATTACH.get(name)
        if request is None:
            return
        await self._ext_push(conn, request, {})
        interval = {"health": self.health_interval, "geo": self.geo_interval}.get(name)
        if interval:
            conn.cancel_timers(name)
            conn.timers[name] = self._spawn(self._every(conn, interval, request))

    async def _every(self, conn: _Connection, interval: float, event: str) -> None:
        while conn.open:
            await asyncio.sleep(interval)
            await self._ext_push(conn, event, {})

    # --------------------------------------------------------------------- waiting helpers

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` in the background; :meth:`stop` cancels and awaits what is left."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float = 5.0,
        what: str = "condition",
    ) -> T:
        """Wait until ``predicate()`` returns something truthy and return it.

        The predicate is re-evaluated whenever the hub's state changes (an upgrade, a frame, a
        close); there is no polling. Raises :class:`TimeoutError` naming ``what``.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    result = predicate()
                    if result:
                        return result
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(f"FakeHub: timed out after {timeout} s waiting for {what}") from None

    async def wait_for_device(
        self,
        identifier: str,
        *,
        joined: bool = True,
        timeout: float = 5.0,
    ) -> DeviceRecord:
        """Wait until ``identifier`` is connected (and, by default, has joined ``device``)."""

        def ready() -> DeviceRecord | None:
            record = self.devices.get(identifier)
            if record is None or not record.connected:
                return None
            return record if record.joined or not joined else None

        state = "joined" if joined else "connected"
        return await self.wait_for(ready, timeout=timeout, what=f"{identifier!r} {state}")

    async def wait_for_disconnect(
        self,
        identifier: str,
        *,
        timeout: float = 5.0,
    ) -> DeviceRecord:
        """Wait until ``identifier`` has no open socket on the hub."""

        def gone() -> DeviceRecord | None:
            record = self.devices.get(identifier)
            return record if record is not None and not record.connected else None

        return await self.wait_for(gone, timeout=timeout, what=f"{identifier!r} disconnected")

    async def wait_for_message(
        self,
        identifier: str,
        *,
        topic: str | None = None,
        event: str | None = None,
        predicate: Callable[[Message], bool] | None = None,
        new_only: bool = False,
        timeout: float = 5.0,
    ) -> Message:
        """Return the first received message of ``identifier`` that matches.

        By default the whole history counts (so a message that arrived before the call is
        found); with ``new_only=True`` only messages received after the call do.
        """
        record = self.devices.get(identifier)
        start = len(record.messages) if new_only and record is not None else 0

        def found() -> Message | None:
            rec = self.devices.get(identifier)
            if rec is None:
                return None
            for message in rec.messages[start:]:
                if topic is not None and message.topic != topic:
                    continue
                if event is not None and message.event != event:
                    continue
                if predicate is not None and not predicate(message):
                    continue
                return message
            return None

        what = f"a message from {identifier!r} (topic={topic!r}, event={event!r})"
        return await self.wait_for(found, timeout=timeout, what=what)

    async def wait_for_attempts(
        self,
        identifier: str | None,
        count: int,
        *,
        status: int | None = None,
        timeout: float = 5.0,
    ) -> list[Attempt]:
        """Wait until at least ``count`` upgrade attempts (with ``status``, if given) were
        attributed to ``identifier``; return them all (for backoff timing via ``monotonic``)."""

        def enough() -> list[Attempt] | None:
            found = [
                a for a in self.attempts_for(identifier) if status is None or a.status == status
            ]
            return found if len(found) >= count else None

        what = f"{count} attempts by {identifier!r} (status={status})"
        return await self.wait_for(enough, timeout=timeout, what=what)

    def attempts_for(self, identifier: str | None) -> list[Attempt]:
        """Upgrade attempts attributed to ``identifier`` (None: the unattributable ones)."""
        return [a for a in self.attempts if a.identifier == identifier]

    def upgrade_counts(self, identifier: str | None) -> Counter[int]:
        """HTTP status -> number of upgrade attempts by ``identifier`` (101 = accepted)."""
        return Counter(a.status for a in self.attempts_for(identifier))

    # ------------------------------------------------------------------------ control API

    def connected(self, identifier: str) -> bool:
        conn = self._conns.get(identifier)
        return conn is not None and conn.open

    async def push(self, identifier: str, topic: str, event: str, payload: Any = None) -> bool:
        """Push ``event`` to a joined ``topic``. Returns False (nothing sent) when the device is
        not connected or has not joined ``topic`` — the real server would drop it too.

        On ``device`` the frame has the fastlane shape ``[null, null, topic, event, payload]``;
        on other topics it carries the channel's join_ref (``[join_ref, null, ...]``, §4.1).
        """
        conn = self._conns.get(identifier)
        if conn is None or topic not in conn.channels:
            return False
        body = {} if payload is None else payload
        if topic == "device":
            return await self._fastlane(conn, event, body)
        return await conn.send([conn.channels[topic], None, topic, event, body])

    async def push_update(
        self,
        identifier: str,
        firmware_url: str | None,
        *,
        size: int | None = None,
        checksum: str | None = None,
        partials_checksums: Sequence[str] | None = None,
        firmware_meta: Mapping[str, Any] | None = None,
        deployment_id: int | None = None,
    ) -> dict[str, Any] | None:
        """Push a §7.1 ``update``; returns the payload sent (None if nothing was sent).

        ``firmware_url=None`` sends the "no update" form (``update_available: false``, every
        other field null). Checksums are upper-cased as the server sends them;
        ``firmware_meta`` is merged over defaults for all nine keys.
        """
        payload: dict[str, Any]
        if firmware_url is None:
            payload = {
                "update_available": False,
                "firmware_url": None,
                "firmware_meta": None,
                "size": None,
                "checksum": None,
                "partials_checksums": None,
                "deployment_id": None,
            }
        else:
            meta: dict[str, Any] = {
                "uuid": str(uuid.uuid4()),
                "product": "fakehub-product",
                "version": "1.0.1",
                "architecture": "x86_64",
                "platform": "fakehub",
                "author": None,
                "description": None,
                "vcs_identifier": None,
                "misc": None,
            }
            meta.update(firmware_meta or {})
            payload = {
                "update_available": True,
                "firmware_url": firmware_url,
                "firmware_meta": meta,
                "size": size,
                "checksum": checksum.upper() if checksum is not None else None,
                "partials_checksums": (
                    [c.upper() for c in partials_checksums]
                    if partials_checksums is not None
                    else None
                ),
                "deployment_id": deployment_id,
            }
        sent = await self.push(identifier, "device", "update", payload)
        return payload if sent else None

    async def reboot(self, identifier: str) -> bool:
        """Push ``reboot`` (§6.4); the device should answer ``rebooting`` first."""
        return await self.push(identifier, "device", "reboot", {})

    async def identify(self, identifier: str) -> bool:
        return await self.push(identifier, "device", "identify", {})

    async def run_script(self, identifier: str, text: str, ref: str = "script-1") -> bool:
        """Push ``scripts/run`` from the channel process (with the device join_ref, §6.4)."""
        conn = self._conns.get(identifier)
        if conn is None or "device" not in conn.channels:
            return False
        payload = {"text": text, "ref": ref}
        return await conn.send([conn.channels["device"], None, "device", "scripts/run", payload])

    async def request_health_check(self, identifier: str) -> bool:
        """Push ``health:check`` if health is attached (as the UI button does)."""
        conn = self._conns.get(identifier)
        if conn is None or "health" not in conn.attached:
            return False
        return await self._ext_push(conn, "health:check", {})

    async def attach_extensions(self, identifier: str, names: Sequence[str]) -> bool:
        """An operator enabled ``names``: make them attachable and push ``attach`` (§8.2)."""
        conn = self._conns.get(identifier)
        if conn is None or "extensions" not in conn.channels:
            return False
        for name in names:
            if name not in conn.offered:
                conn.offered.append(name)
        return await self._ext_push(conn, "attach", {"extensions": list(names)})

    def forget_attachment(self, identifier: str, name: str) -> bool:
        """The server stops considering ``name`` attached *without telling the device* (its
        state was lost, or it was disabled before the push went out): the device's next event
        of that extension gets the bare ``"detach"`` error reply (§8.2)."""
        conn = self._conns.get(identifier)
        if conn is None or name not in conn.attached:
            return False
        conn.attached.discard(name)
        conn.cancel_timers(name)
        return True

    async def detach_extensions(self, identifier: str, names: Sequence[str]) -> bool:
        """An operator disabled ``names``: stop their traffic and push ``detach`` (§8.2)."""
        conn = self._conns.get(identifier)
        if conn is None or "extensions" not in conn.channels:
            return False
        for name in names:
            conn.attached.discard(name)
            conn.cancel_timers(name)
            if name in conn.offered:
                conn.offered.remove(name)
        return await self._ext_push(conn, "detach", {"extensions": list(names)})

    async def crash_channel(self, identifier: str, topic: str = "device") -> bool:
        """Simulate a channel crash: ``phx_error`` ``{"reason": "channel_crash"}`` (§4.2)."""
        conn = self._conns.get(identifier)
        if conn is None or topic not in conn.channels:
            return False
        await self._drop_channel(conn, topic, "phx_error", {"reason": "channel_crash"})
        self._notify()
        return True

    async def close_channel(self, identifier: str, topic: str = "device") -> bool:
        """Close a channel gracefully: ``phx_close`` ``{}`` (§4.2)."""
        conn = self._conns.get(identifier)
        if conn is None or topic not in conn.channels:
            return False
        await self._drop_channel(conn, topic, "phx_close", {})
        self._notify()
        return True

    async def send_raw(self, identifier: str, data: str | bytes) -> bool:
        """Send arbitrary text or binary data (to test the client's robustness)."""
        conn = self._conns.get(identifier)
        return conn is not None and await conn.send_raw(data)

    def stop_heartbeat_replies(self, identifier: str) -> None:
        """Stop answering heartbeats on ``identifier``'s current socket (a new socket gets
        replies again; set ``hub.heartbeat_replies = False`` to stop them everywhere)."""
        conn = self._conns.get(identifier)
        if conn is not None:
            conn.heartbeat_replies = False

    def resume_heartbeat_replies(self, identifier: str) -> None:
        conn = self._conns.get(identifier)
        if conn is not None:
            conn.heartbeat_replies = True

    async def disconnect(self, identifier: str, code: int = CLOSE_NORMAL, reason: str = "") -> bool:
        """Close ``identifier``'s socket with ``code``; False if it was not connected."""
        conn = self._conns.get(identifier)
        if conn is None:
            return False
        await conn.close(code, reason)
        return True

    async def drain(self, code: int = CLOSE_RESTART) -> int:
        """Close every device socket with 1012 (a restarting server, §4.4); returns how many.
        The hub keeps accepting new connections."""
        conns = list(self._all_conns)
        await asyncio.gather(*(conn.close(code, "server restarting") for conn in conns))
        return len(conns)

    def summary(self) -> list[dict[str, Any]]:
        """A JSON-friendly overview of all devices (used by the HTTP control API)."""
        return [device_summary(record) for record in self.devices.values()]


def device_summary(record: DeviceRecord, messages: bool = False) -> dict[str, Any]:
    """A JSON-friendly view of a device record."""
    data: dict[str, Any] = {
        "identifier": record.identifier,
        "auth": record.auth,
        "serializer": record.serializer,
        "connected": record.connected,
        "joined": record.joined,
        "connections": record.connections,
        "joins": record.joins,
        "join_params": record.join_params,
        "channels": dict(record.channels),
        "offered_extensions": list(record.offered_extensions),
        "attached_extensions": sorted(record.attached_extensions),
        "statuses": record.statuses,
        "close_codes": list(record.close_codes),
        "rejections": {str(k): v for k, v in record.rejections.items()},
        "warnings": list(record.warnings),
        "message_count": len(record.messages),
    }
    if messages:
        data["messages"] = [
            {"time": m.time, "connection": m.connection, "frame": m.frame()}
            for m in record.messages
        ]
    return data
