"""The ``network_identity`` extension (PROTOCOL.md §8.7): report overlay-network keys.

The device tells NervesHub which keys it holds on networks NervesHub does not run (iroh,
NetBird, Tailscale, WireGuard), so operators can find and reach it by those routes.

Providers supply the identities: the built-in ones ask the local daemons
(:class:`WireGuardProvider`: ``wg show all public-key``, :class:`TailscaleProvider`:
``tailscale status --json``, :class:`NetBirdProvider`: ``netbird status --json``), and any
callable (plain — run in a worker thread — or ``async``) returning a list of
``{"service", "identifier", "instance"?, "details"?}`` works too.

Behaviour (§8.7):

* every ``network_identity:request`` (the server sends one per attach) is answered with a
  ``network_identity:report`` carrying *all* current identities; nothing is sent when there are
  none, as NHL does;
* while attached, the providers are checked again every ``interval`` seconds (0: never) and only
  the identities that changed — new, or a different identifier or details for a
  (service, instance) — are sent;
* the server's rules are enforced before sending, and what breaks them is dropped with a log
  line: a known service, an identifier of 1–255 characters, an instance of at most 255
  (trimmed), details of at most 4096 bytes as JSON, at most 10 identities.

A provider that is not installed, not logged in, times out or fails yields no identities; it is
logged once (debug for "not available", warning for a failure) and never raises out of the
extension. ``details`` values are never logged at info level or above.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import logging
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

from ..errors import ConfigError
from .extension import DEFAULT_VERSION, Extension, ExtensionContext

__all__ = [
    "DEFAULT_PROVIDERS",
    "MAX_DETAILS_BYTES",
    "MAX_IDENTITIES",
    "SERVICES",
    "CallableProvider",
    "CommandProvider",
    "IdentityProvider",
    "IdentityProviderError",
    "IdentityUnavailable",
    "NetBirdProvider",
    "NetworkIdentityExtension",
    "NetworkIdentityOptions",
    "TailscaleProvider",
    "WireGuardProvider",
    "nodekey_to_base64",
    "normalize_identity",
    "run_command",
]

logger = logging.getLogger(__name__)

# §8.7 — wire strings (events relative to the "network_identity:" prefix).
NAME: Final = "network_identity"
EVENT_REQUEST: Final = "request"
EVENT_REPORT: Final = "report"
KEY_IDENTITIES: Final = "identities"
KEY_SERVICE: Final = "service"
KEY_IDENTIFIER: Final = "identifier"
KEY_INSTANCE: Final = "instance"
KEY_DETAILS: Final = "details"

# §8.7 — the server's rules.
#: The services the server knows; entries for any other are skipped by it.
SERVICES: Final = frozenset({"iroh", "netbird", "tailscale", "wireguard"})
MAX_IDENTIFIER_LENGTH: Final = 255
MAX_INSTANCE_LENGTH: Final = 255
#: ``details`` is rejected above this many bytes when JSON-encoded.
MAX_DETAILS_BYTES: Final = 4096
#: The server uses only the first 10 entries of a report.
MAX_IDENTITIES: Final = 10
#: What the server calls an identity without ``instance``.
DEFAULT_INSTANCE: Final = "default"

#: NHL's default: check the providers every 5 minutes.
DEFAULT_INTERVAL: Final = 300.0
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_MAX_OUTPUT: Final = 1024 * 1024
#: The built-in providers, by name, used when no ``providers`` are given.
DEFAULT_PROVIDERS: Final = ("wireguard", "tailscale", "netbird")

#: Bytes of a command's stderr kept for the log line (the rest is read and discarded).
_STDERR_KEEP: Final = 4096
_READ_CHUNK: Final = 64 * 1024
#: How many distinct "dropped an identity" messages are remembered for log-once.
_MAX_REMEMBERED: Final = 256

Identity: TypeAlias = dict[str, Any]
#: What a provider callable may return: a list of identity mappings (one mapping, or None for
#: nothing, are accepted too).
IdentityResult: TypeAlias = Iterable[Mapping[str, Any]] | Mapping[str, Any] | None
IdentityCallable: TypeAlias = Callable[[], IdentityResult | Awaitable[IdentityResult]]


class IdentityUnavailable(Exception):
    """A provider has nothing to report right now (not installed, not logged in).

    Routine on a device that is not on that network: logged once at debug level.
    """


class IdentityProviderError(Exception):
    """A provider failed (daemon down, timeout, unreadable output).

    Logged once as a warning (again only when the message changes or after a success).
    """


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_identity(entry: object) -> Identity:
    """The identity to send for one provider ``entry``; raises :class:`ValueError` saying why
    the server's rules (§8.7) exclude it. The reason never contains ``details`` values.

    The result has ``service``, ``identifier``, ``instance`` (only when given: trimmed, not
    empty) and ``details`` (``{}`` when not given; JSON-normalised).
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"not a mapping but {type(entry).__name__}")
    service = entry.get(KEY_SERVICE)
    if not isinstance(service, str) or service not in SERVICES:
        raise ValueError(
            f"unknown service {_short(service)} (known: {', '.join(sorted(SERVICES))})"
        )
    identifier = entry.get(KEY_IDENTIFIER)
    if not isinstance(identifier, str):
        raise ValueError(f"{service}: identifier is {type(identifier).__name__}, not a string")
    if not identifier:
        raise ValueError(f"{service}: empty identifier")
    if len(identifier) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(
            f"{service}: identifier has {len(identifier)} characters "
            f"(at most {MAX_IDENTIFIER_LENGTH})"
        )
    identity: Identity = {KEY_SERVICE: service, KEY_IDENTIFIER: identifier}
    instance = entry.get(KEY_INSTANCE)
    if instance is not None:
        if not isinstance(instance, str):
            raise ValueError(f"{service}: instance is {type(instance).__name__}, not a string")
        instance = instance.strip()
        if len(instance) > MAX_INSTANCE_LENGTH:
            raise ValueError(
                f"{service}: instance has {len(instance)} characters "
                f"(at most {MAX_INSTANCE_LENGTH})"
            )
        if instance:
            identity[KEY_INSTANCE] = instance
    details = entry.get(KEY_DETAILS)
    if details is None:
        details = {}
    if not isinstance(details, Mapping):
        raise ValueError(f"{service}: details is {type(details).__name__}, not a mapping")
    try:
        # Compact and unescaped, like the server's Jason.encode!, so the size matches its check.
        encoded = json.dumps(
            dict(details), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{service}: details have no JSON form ({type(exc).__name__})") from None
    size = len(encoded.encode("utf-8"))
    if size > MAX_DETAILS_BYTES:
        raise ValueError(
            f"{service}: details are {size} bytes as JSON (at most {MAX_DETAILS_BYTES})"
        )
    identity[KEY_DETAILS] = json.loads(encoded)
    return identity


def _key(identity: Identity) -> tuple[str, str]:
    """What the server keys an identity on: (service, instance)."""
    return identity[KEY_SERVICE], identity.get(KEY_INSTANCE, DEFAULT_INSTANCE)


def _as_entries(result: object, source: str) -> list[Any]:
    """A provider's result as a list of (not yet validated) entries."""
    if result is None:
        return []
    if isinstance(result, Mapping):
        return [result]
    if isinstance(result, str | bytes) or not isinstance(result, Iterable):
        raise IdentityProviderError(
            f"{source} returned {type(result).__name__}, not a list of identities"
        )
    return list(result)


# -- key formats ---------------------------------------------------------------------------------

_NODEKEY_PREFIX: Final = "nodekey:"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_ZERO_KEY: Final = base64.b64encode(bytes(32)).decode("ascii")


def nodekey_to_base64(nodekey: str) -> str:
    """A Tailscale node key as the 44-character standard base64 of its 32 bytes.

    Tailscale prints node keys as ``"nodekey:"`` followed by 64 hex digits (``key.NodePublic``'s
    text form); WireGuard, NetBird and the server's rule (§8.7) use base64. The prefix may be
    left out. Raises :class:`ValueError` for anything else.
    """
    if not isinstance(nodekey, str):
        raise ValueError(f"not a node key: {_short(nodekey)}")
    text = nodekey.removeprefix(_NODEKEY_PREFIX)
    if not _HEX64.fullmatch(text):
        raise ValueError(f"not a node key (nodekey:<64 hex digits>): {_short(nodekey)}")
    return base64.b64encode(bytes.fromhex(text)).decode("ascii")


def _is_base64_key(text: str) -> bool:
    """Whether ``text`` is a WireGuard-style public key: standard base64 of 32 bytes."""
    if len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


# -- running commands ----------------------------------------------------------------------------


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the process's whole group (it leads its own session), if it still runs."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _read_limited(
    stream: asyncio.StreamReader, limit: int, process: asyncio.subprocess.Process
) -> bytes | None:
    """All of ``stream``, or None (and the process killed) once it exceeds ``limit`` bytes."""
    data = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        if len(data) + len(chunk) > limit:
            _kill(process)
            return None
        data += chunk
    return bytes(data)


async def _read_head(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The first ``keep`` bytes of ``stream``; the rest is read and discarded."""
    data = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        if len(data) < keep:
            data += chunk[: keep - len(data)]
    return bytes(data)


async def run_command(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, max_output: int = DEFAULT_MAX_OUTPUT
) -> bytes:
    """Run ``argv`` (no shell, stdin from /dev/null) and return its standard output.

    Raises :class:`IdentityUnavailable` if the program does not exist, and
    :class:`IdentityProviderError` if it cannot be run, exits non-zero, takes longer than
    ``timeout`` seconds or writes more than ``max_output`` bytes. The program runs in its own
    session, and on timeout, overflow or cancellation its whole process group is killed.
    """
    program = argv[0]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise IdentityUnavailable(f"{program} is not installed") from None
    except OSError as exc:
        raise IdentityProviderError(f"cannot run {program}: {exc.strerror or exc}") from None
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            output, errors = await asyncio.gather(
                _read_limited(process.stdout, max_output, process),
                _read_head(process.stderr, _STDERR_KEEP),
            )
            status = await process.wait()
    except TimeoutError:
        raise IdentityProviderError(f"{program} did not finish within {timeout:g} s") from None
    finally:
        if process.returncode is None:
            _kill(process)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
    if output is None:
        raise IdentityProviderError(f"{program} wrote more than {max_output} bytes")
    if status != 0:
        message = errors.decode("utf-8", "replace").strip().splitlines()
        first = message[0][:200] if message else "no error output"
        raise IdentityProviderError(f"{program} exited with status {status}: {first}")
    return output


def _argv(command: str | os.PathLike[str] | Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(command, str | os.PathLike):
        argv: tuple[str, ...] = (os.fspath(command),)
    elif isinstance(command, Sequence) and all(isinstance(part, str) for part in command):
        argv = tuple(command)
    else:
        raise TypeError(f"{what}: command must be a path or a list of strings, not {command!r}")
    if not argv or not argv[0]:
        raise ValueError(f"{what}: empty command")
    return argv


def _check_limits(what: str, timeout: float, max_output: int) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"{what}: timeout must be a positive number, not {timeout!r}")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
        raise ValueError(f"{what}: max_output must be a positive integer, not {max_output!r}")


# -- providers -----------------------------------------------------------------------------------


class IdentityProvider:
    """A source of identities. Subclass it and override :meth:`identities`.

    Raise :class:`IdentityUnavailable` for "nothing to report right now" (logged at debug) and
    :class:`IdentityProviderError` for a failure (logged as a warning); any other exception is
    treated as a failure too.
    """

    #: Names the provider in log lines.
    name: str = "provider"

    async def identities(self) -> Sequence[Mapping[str, Any]]:
        """The identities this provider currently sees:
        ``[{"service", "identifier", "instance"?, "details"?}, ...]``."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class CallableProvider(IdentityProvider):
    """A provider from a callable returning a list of identities.

    A plain callable runs in a worker thread; an ``async`` one on the event loop. Either is
    bounded by ``timeout`` seconds (a thread that overruns is left to finish on its own).
    """

    def __init__(
        self,
        function: IdentityCallable,
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not callable(function):
            raise TypeError(f"not an identity provider: {function!r}")
        _check_limits("CallableProvider", timeout, 1)
        self.function = function
        self.name = name or getattr(function, "__qualname__", None) or repr(function)
        self.timeout = timeout

    async def identities(self) -> Sequence[Mapping[str, Any]]:
        try:
            if inspect.iscoroutinefunction(self.function):
                result: Any = self.function()
            else:
                result = await asyncio.wait_for(asyncio.to_thread(self.function), self.timeout)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.timeout)
        except TimeoutError:
            raise IdentityProviderError(
                f"{self.name} did not answer within {self.timeout:g} s"
            ) from None
        return _as_entries(result, self.name)


class CommandProvider(IdentityProvider):
    """A provider that runs a local command and parses its output (see :func:`run_command`).

    Subclasses set :attr:`default_command`, :attr:`arguments` and :meth:`parse`. ``command`` is
    the program (a name looked up in ``PATH``, or a path), or a list such as
    ``["sudo", "-n", "wg"]``; :attr:`arguments` are appended to it.
    """

    default_command: ClassVar[str] = ""
    arguments: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        command: str | os.PathLike[str] | Sequence[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        what = type(self).__name__
        self.command = _argv(self.default_command if command is None else command, what)
        _check_limits(what, timeout, max_output)
        self.timeout = timeout
        self.max_output = max_output

    @property
    def argv(self) -> tuple[str, ...]:
        """The full command line that is run."""
        return (*self.command, *self.arguments)

    async def identities(self) -> Sequence[Mapping[str, Any]]:
        output = await run_command(self.argv, timeout=self.timeout, max_output=self.max_output)
        return self.parse(output.decode("utf-8", "replace"))

    def parse(self, output: str) -> list[Identity]:
        """The identities in the command's standard output."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(self.argv)!r}>"


def _json_object(output: str, program: str) -> dict[str, Any]:
    try:
        data = json.loads(output)
    except ValueError:
        first = output.strip().splitlines()[0][:120] if output.strip() else "nothing"
        raise IdentityProviderError(f"{program} did not print JSON: {first!r}") from None
    if not isinstance(data, dict):
        raise IdentityProviderError(f"{program} printed JSON {type(data).__name__}, not an object")
    return data


class WireGuardProvider(CommandProvider):
    """WireGuard: ``wg show all public-key``, one identity per interface.

    ``wg`` prints ``<interface>\\t<base64 public key>`` per line (``(none)`` for an interface
    without a key, which is skipped). Each becomes
    ``{"service": "wireguard", "identifier": key, "instance": interface,
    "details": {"interface": interface}}``. ``interfaces`` limits the report to those names
    (e.g. to leave out NetBird's kernel interface ``wt0``, reported by :class:`NetBirdProvider`).

    Reading keys needs CAP_NET_ADMIN: run as root, or use ``command=["sudo", "-n", "wg"]``.
    """

    name = "wireguard"
    default_command = "wg"
    arguments = ("show", "all", "public-key")

    def __init__(
        self,
        command: str | os.PathLike[str] | Sequence[str] | None = None,
        *,
        interfaces: Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        super().__init__(command, timeout=timeout, max_output=max_output)
        self.interfaces: frozenset[str] | None = (
            None if interfaces is None else frozenset(interfaces)
        )

    def parse(self, output: str) -> list[Identity]:
        found: list[Identity] = []
        unrecognised = 0
        for line in output.splitlines():
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) != 2:
                unrecognised += 1
                continue
            interface, key = parts[0].strip(), parts[1].strip()
            if key == "(none)":
                logger.debug("network_identity: wireguard interface %s has no key", interface)
                continue
            if not interface or not _is_base64_key(key):
                unrecognised += 1
                continue
            if self.interfaces is not None and interface not in self.interfaces:
                continue
            found.append(
                {
                    KEY_SERVICE: "wireguard",
                    KEY_IDENTIFIER: key,
                    KEY_INSTANCE: interface,
                    KEY_DETAILS: {"interface": interface},
                }
            )
        if unrecognised:
            if not found:
                raise IdentityProviderError(
                    f"{self.command[-1]} printed {unrecognised} unrecognised line(s)"
                )
            logger.debug("network_identity: wg: skipped %d unrecognised line(s)", unrecognised)
        return found


class TailscaleProvider(CommandProvider):
    """Tailscale: ``tailscale status --json``, the node's key.

    ``Self.PublicKey`` is printed as ``"nodekey:<64 hex>"``; it is sent as base64 (see
    :func:`nodekey_to_base64`). ``details`` has ``HostName``, ``DNSName`` and
    ``TailscaleIPs`` when present. A node without a key (logged out: no ``Self``, or the zero
    key) has nothing to report.
    """

    name = "tailscale"
    default_command = "tailscale"
    arguments = ("status", "--json")

    def parse(self, output: str) -> list[Identity]:
        data = _json_object(output, "tailscale")
        node = data.get("Self")
        state = data.get("BackendState")
        if not isinstance(node, dict):
            raise IdentityUnavailable(f"tailscale has no node (BackendState {_short(state)})")
        key = node.get("PublicKey")
        if not isinstance(key, str) or not key:
            raise IdentityUnavailable(f"tailscale has no node key (BackendState {_short(state)})")
        try:
            identifier = nodekey_to_base64(key)
        except ValueError:
            raise IdentityProviderError(
                "tailscale printed a PublicKey that is not nodekey:<64 hex digits>"
            ) from None
        if identifier == _ZERO_KEY:
            raise IdentityUnavailable(f"tailscale is not logged in (BackendState {_short(state)})")
        details: dict[str, Any] = {}
        for field in ("HostName", "DNSName"):
            value = node.get(field)
            if isinstance(value, str) and value:
                details[field] = value
        ips = node.get("TailscaleIPs")
        if not ips:
            ips = data.get("TailscaleIPs")
        if isinstance(ips, list) and ips and all(isinstance(ip, str) for ip in ips):
            details["TailscaleIPs"] = ips
        return [{KEY_SERVICE: "tailscale", KEY_IDENTIFIER: identifier, KEY_DETAILS: details}]


class NetBirdProvider(CommandProvider):
    """NetBird: ``netbird status --json``, the peer's WireGuard key.

    The top-level ``publicKey`` (base64, as NetBird's ``OutputOverview`` names it) is the
    identifier; ``details`` has ``fqdn``, ``netbirdIp`` and ``netbirdIpv6`` when present. A
    daemon that needs a login prints ``Daemon status: NeedsLogin ...`` instead of JSON: nothing
    to report.
    """

    name = "netbird"
    default_command = "netbird"
    arguments = ("status", "--json")

    def parse(self, output: str) -> list[Identity]:
        text = output.strip()
        if text.startswith("Daemon status:"):
            raise IdentityUnavailable(f"netbird: {text.splitlines()[0][:120]}")
        data = _json_object(output, "netbird")
        key = data.get("publicKey")
        if not isinstance(key, str) or not key.strip():
            raise IdentityUnavailable("netbird has no public key (not logged in?)")
        key = key.strip()
        if not _is_base64_key(key):
            raise IdentityProviderError("netbird printed a publicKey that is not a base64 key")
        details: dict[str, Any] = {}
        for field in ("fqdn", "netbirdIp", "netbirdIpv6"):
            value = data.get(field)
            if isinstance(value, str) and value:
                details[field] = value
        return [{KEY_SERVICE: "netbird", KEY_IDENTIFIER: key, KEY_DETAILS: details}]


#: Built-in providers by name (for ``NetworkIdentityOptions.providers``).
BUILTIN_PROVIDERS: Final[Mapping[str, type[CommandProvider]]] = {
    "wireguard": WireGuardProvider,
    "tailscale": TailscaleProvider,
    "netbird": NetBirdProvider,
}

#: One entry of ``NetworkIdentityOptions.providers``.
ProviderSpec: TypeAlias = IdentityProvider | IdentityCallable | str


# -- options -------------------------------------------------------------------------------------


def _option_error(message: str) -> ConfigError:
    return ConfigError(f"extensions.{NAME}", message)


@dataclass(frozen=True)
class NetworkIdentityOptions:
    """Options of the ``network_identity`` extension.

    ``providers`` is a list whose entries are built-in provider names (``"wireguard"``,
    ``"tailscale"``, ``"netbird"``, run with ``timeout`` and ``max_output``),
    :class:`IdentityProvider` instances (e.g. ``WireGuardProvider(command="/usr/bin/wg")``) or
    callables returning a list of identities (wrapped in :class:`CallableProvider` with
    ``timeout``). ``interval`` is the seconds between checks for changes while attached
    (0: only answer the server's request). Raises :class:`~nhlink.errors.ConfigError` (option
    ``"extensions.network_identity"``) for invalid values.
    """

    providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT

    def __post_init__(self) -> None:
        providers = self.providers
        if isinstance(providers, str | bytes | Mapping) or not isinstance(providers, Sequence):
            raise _option_error(f"providers must be a list, not {providers!r}")
        for provider in providers:
            if isinstance(provider, str):
                if provider not in BUILTIN_PROVIDERS:
                    raise _option_error(
                        f"unknown provider {provider!r} (built-in: {', '.join(BUILTIN_PROVIDERS)})"
                    )
            elif isinstance(provider, type):
                raise _option_error(f"give an instance, not the class {provider.__name__}")
            elif not isinstance(provider, IdentityProvider) and not callable(provider):
                raise _option_error(
                    f"a provider is a built-in name, an IdentityProvider or a callable, "
                    f"not {provider!r}"
                )
        object.__setattr__(self, "providers", tuple(providers))
        interval = self.interval
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval < 0
        ):
            raise _option_error(f"interval must be a number >= 0 (0: off), not {interval!r}")
        try:
            _check_limits("options", self.timeout, self.max_output)
        except ValueError as exc:
            raise _option_error(str(exc).removeprefix("options: ")) from None

    def build_providers(self) -> tuple[IdentityProvider, ...]:
        """The provider objects for :attr:`providers`, in order."""
        built: list[IdentityProvider] = []
        for provider in self.providers:
            if isinstance(provider, str):
                built.append(
                    BUILTIN_PROVIDERS[provider](timeout=self.timeout, max_output=self.max_output)
                )
            elif isinstance(provider, IdentityProvider):
                built.append(provider)
            else:
                built.append(CallableProvider(provider, timeout=self.timeout))
        return tuple(built)


# -- the extension -------------------------------------------------------------------------------


class NetworkIdentityExtension(Extension):
    """``network_identity``: reports the identities of ``options.providers`` (§8.7).

    ``NetworkIdentityExtension()`` uses the three built-in providers; pass
    :class:`NetworkIdentityOptions` to choose, or see :meth:`from_config`. Configure it as
    ``extensions={"network_identity": NetworkIdentityExtension(...)}``.
    """

    name = NAME
    version = DEFAULT_VERSION

    def __init__(self, options: NetworkIdentityOptions | None = None) -> None:
        if options is not None and not isinstance(options, NetworkIdentityOptions):
            raise TypeError(f"expected NetworkIdentityOptions, not {options!r}")
        self.options = options if options is not None else NetworkIdentityOptions()
        self.providers: tuple[IdentityProvider, ...] = self.options.build_providers()
        #: What the server was last told, by (service, instance).
        self._sent: dict[tuple[str, str], Identity] = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._problems: dict[int, str] = {}  # provider index -> the problem last logged
        self._dropped: set[str] = set()  # "dropped an identity" messages already warned about
        #: Reports sent (answers and changes).
        self.reports_sent = 0

    @classmethod
    def from_config(cls, value: Any) -> NetworkIdentityExtension:
        """The extension for an ``extensions={"network_identity": value}`` entry.

        ``value`` is True (the built-in providers), :class:`NetworkIdentityOptions`, a list of
        providers, or one provider (a built-in name, an :class:`IdentityProvider` or a
        callable). Raises :class:`~nhlink.errors.ConfigError` otherwise.
        """
        if value is True:
            return cls()
        if isinstance(value, NetworkIdentityOptions):
            return cls(value)
        if isinstance(value, list | tuple):
            return cls(NetworkIdentityOptions(providers=value))
        if isinstance(value, str | IdentityProvider) or (
            callable(value) and not isinstance(value, type)
        ):
            return cls(NetworkIdentityOptions(providers=(value,)))
        raise _option_error(
            f"expected True, NetworkIdentityOptions, or a provider or a list of them, not {value!r}"
        )

    # -- public API ------------------------------------------------------------------------------

    @property
    def polling(self) -> bool:
        """True while the periodic check runs (attached, ``interval`` > 0)."""
        return self._poller is not None and not self._poller.done()

    @property
    def reported(self) -> list[Identity]:
        """The identities the server was last told about (as far as this device knows)."""
        return [dict(identity) for identity in self._sent.values()]

    async def identities(self) -> list[Identity]:
        """Ask every provider now and return the identities that pass the server's rules (at
        most 10), without sending them. Never raises (except cancellation)."""
        return list((await self._current()).values())

    async def send_identities(self) -> bool:
        """Send all current identities now (what a ``request`` gets). False when there are none
        or the extension is not attached."""
        async with self._lock:
            current = await self._current()
            if not self.providers:
                # The server asks only when an operator enabled it: worth saying (NHL does too).
                logger.warning("network_identity: identities requested, but no providers are set")
            if not current:
                logger.info("network_identity: no identities to report")
                self._sent = {}
                return False
            if not await self._report(list(current.values())):
                logger.debug("network_identity: report not sent: not attached")
                return False
            self._sent = current
            logger.info(
                "network_identity: reported %d %s (%s)",
                len(current),
                "identity" if len(current) == 1 else "identities",
                ", ".join(f"{service}/{instance}" for service, instance in current),
            )
            return True

    async def send_changes(self) -> list[Identity]:
        """The periodic check: send the identities that are new or changed since the server
        was last told; returns them ([] when nothing changed, or not attached)."""
        async with self._lock:
            if self.context is None or not self.context.attached:
                return []
            current = await self._current()
            changed = [ident for key, ident in current.items() if self._sent.get(key) != ident]
            if not changed:
                return []
            if not await self._report(changed):
                return []  # detached meanwhile: try again on the next check
            # `current`, not a merge: an identity that went away is sent again if it returns.
            self._sent = current
            logger.debug(
                "network_identity: sent %d changed %s (%s)",
                len(changed),
                "identity" if len(changed) == 1 else "identities",
                ", ".join("/".join(_key(ident)) for ident in changed),
            )
            return changed

    # -- extension lifecycle ---------------------------------------------------------------------

    async def start(self, context: ExtensionContext) -> None:
        # A new attachment: the server asks for everything; nothing is assumed delivered.
        self._sent = {}
        await self._stop_poller()
        if self.options.interval > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(self.options.interval), name="nhlink:network_identity"
            )

    async def stop(self) -> None:
        await self._stop_poller()

    async def handle_event(self, event: str, payload: Any) -> None:
        if event == EVENT_REQUEST:
            await self.send_identities()
        else:
            logger.debug("network_identity: ignoring event %r", event)

    # -- internals -------------------------------------------------------------------------------

    async def _stop_poller(self) -> None:
        poller, self._poller = self._poller, None
        if poller is None:
            return
        poller.cancel()
        try:
            await poller
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.send_changes()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("network_identity: the periodic check failed")

    async def _report(self, identities: list[Identity]) -> bool:
        sent = await self.send(EVENT_REPORT, {KEY_IDENTITIES: identities})
        if sent:
            self.reports_sent += 1
        return sent

    async def _current(self) -> dict[tuple[str, str], Identity]:
        """Every provider's identities, validated, de-duplicated and capped, by key."""
        results = await asyncio.gather(
            *(self._ask(index, provider) for index, provider in enumerate(self.providers))
        )
        current: dict[tuple[str, str], Identity] = {}
        extra = 0
        for provider, entries in zip(self.providers, results, strict=True):
            for entry in entries:
                try:
                    identity = normalize_identity(entry)
                except ValueError as exc:
                    self._drop(provider, str(exc))
                    continue
                key = _key(identity)
                if key in current:
                    self._drop(provider, f"{key[0]}: a second identity for instance {key[1]!r}")
                    continue
                if len(current) >= MAX_IDENTITIES:
                    extra += 1
                    continue
                current[key] = identity
        if extra:
            self._drop(
                None,
                f"{MAX_IDENTITIES + extra} identities; the server takes {MAX_IDENTITIES}, "
                f"so {extra} {'is' if extra == 1 else 'are'} not reported",
            )
        return current

    async def _ask(self, index: int, provider: IdentityProvider) -> list[Any]:
        """One provider's raw entries; [] (logged once) when it has none or fails."""
        level = logging.WARNING
        try:
            entries = _as_entries(await provider.identities(), provider.name)
        except asyncio.CancelledError:
            raise
        except IdentityUnavailable as exc:
            level, problem = logging.DEBUG, str(exc)
        except IdentityProviderError as exc:
            problem = str(exc)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if self._problems.pop(index, None) is not None:
                logger.info("network_identity: provider %s works again", provider.name)
            return entries
        if self._problems.get(index) != problem:
            self._problems[index] = problem
            logger.log(level, "network_identity: provider %s: %s", provider.name, problem)
        else:
            logger.debug("network_identity: provider %s: %s (again)", provider.name, problem)
        return []

    def _drop(self, provider: IdentityProvider | None, reason: str) -> None:
        """Log a dropped identity: a warning the first time, debug after."""
        if provider is None:
            message = f"network_identity: {reason}"
        else:
            message = f"network_identity: dropped an identity from {provider.name}: {reason}"
        if message in self._dropped:
            logger.debug("%s", message)
            return
        if len(self._dropped) >= _MAX_REMEMBERED:
            self._dropped.clear()
        self._dropped.add(message)
        logger.warning("%s", message)
