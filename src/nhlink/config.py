"""Options → a frozen, validated :class:`LinkConfig`, before anything connects.

The server joins a device with incomplete firmware metadata and then never updates it
(PROTOCOL.md §6.2), so every check that can be done locally is done here, each failing with a
:class:`~nhlink.errors.ConfigError` that names the option.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .protocol import wire

__all__ = ["LinkConfig"]

DEFAULT_NAME = "NervesHubLink"


def _text(option: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(option, f"must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ConfigError(option, "must not be empty")
    return value


def _readable_file(option: str, value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(option, "must be a file path")
    path = Path(value)
    if not path.is_file():
        raise ConfigError(option, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(option, f"not readable: {path}")
    return path


def _device_key(value: object) -> Path | str:
    """A key file, or a ``pkcs11:`` URI (checked now: module present, PIN file readable)."""
    from .transport import pkcs11

    if pkcs11.is_pkcs11_uri(value):
        assert isinstance(value, str)
        pkcs11.parse_uri(value)
        return value
    path = _readable_file("device_key", value)
    if pkcs11.is_tss2_key_file(path):
        raise pkcs11.refuse_tss2_key(path)
    return path


def _positive(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(option, f"must be a positive number, not {value!r}")
    return float(value)


def _flag(option: str, value: object) -> bool:
    """Security-relevant switches take real booleans only: ``bool("false")`` is True."""
    if not isinstance(value, bool):
        raise ConfigError(option, f"must be True or False, not {value!r}")
    return value


# A name is used as a file name (``<state_dir>/<name>.json``): one path component, no hidden
# files, nothing a shell or a log line could misread.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")
# RFC 1123 host names (underscores tolerated: private DNS and container names use them).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _name(value: object) -> str:
    name = _text("name", value)
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(
            "name",
            f"must be a safe file name (letters, digits and _ . @ + -, not starting with . "
            f"or -, at most 128 characters), not {name!r}",
        )
    return name


def _host(value: object) -> str:
    """A host name or an IP literal (IPv6 with or without brackets); returned without
    brackets. Anything else (a path, a query, a user, a port) is refused: it would silently
    change the URL the device connects to."""
    host = _text("host", value)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        import ipaddress  # only when a config is built

        return str(ipaddress.ip_address(literal))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return host
    raise ConfigError("host", f"must be a host name or an IP address, not {host!r}")


def certificate_common_name(path: Path) -> str | None:
    """The Subject CN of a PEM certificate — the device identity under mTLS (§3.1)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:  # pragma: no cover - CPython always has it
        return None
    try:
        info = decode(str(path))
    except (ssl.SSLError, OSError, ValueError):
        return None
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Everything a :class:`~nhlink.NervesHubLink` needs, validated. Build with :meth:`build`."""

    host: str
    port: int
    ssl: bool
    path: str
    firmware_meta: Mapping[str, str]
    name: str = DEFAULT_NAME
    # mTLS
    device_cert: Path | None = None
    #: a key file, or a ``pkcs11:`` URI naming a key in a token (a TPM via tpm2-pkcs11)
    device_key: Path | str | None = None
    device_chain: Path | None = None
    # NH1 shared secret
    product_key: str | None = None
    product_secret: str | None = field(default=None, repr=False)
    identifier: str | None = None
    # server verification
    ca_file: Path | None = None
    dangerously_disable_verification: bool = False
    firmware_ca_file: Path | None = None  # CA for the firmware storage host (default: system)
    # timers and limits
    heartbeat_interval: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_jitter: float = 0.5
    connect_timeout: float = 30.0
    max_message_size: int = 1024 * 1024
    join_timeout: float = 30.0
    backoff_reset_after: float = 30.0
    callback_timeout: float = 30.0
    min_reschedule_delay: float = 60.0
    validation_poll_interval: float = 10.0
    state_dir: Path | None = None
    allow_unverified_firmware: bool = False
    user_agent: str = "nhlink"
    extra_join_params: Mapping[str, Any] = field(default_factory=dict)
    #: HTTP proxy URL (``http://[user:password@]host:port``); None: from the environment
    #: (``https_proxy``...); ``""``: never a proxy. May carry credentials: never shown.
    proxy: str | None = field(default=None, repr=False)
    #: hosts reached directly (``no_proxy`` syntax); None: from the environment
    no_proxy: str | None = None
    #: ``"json"`` (vsn 2.0.0, text frames) or ``"msgpack"`` (vsn 3.0.0, binary frames, §4.6)
    serializer: str = wire.SERIALIZER_JSON

    @property
    def auth_mode(self) -> str:
        """``"mtls"`` or ``"shared_secret"``."""
        return "mtls" if self.device_cert is not None else "shared_secret"

    @property
    def url(self) -> str:
        """The socket URL with the configured serializer's ``vsn`` (§2.2, §4.6)."""
        return self.url_for(self.serializer)

    @property
    def endpoint(self) -> str:
        """The socket URL without its query: ``scheme://host:port/path``."""
        scheme = "wss" if self.ssl else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{scheme}://{host}:{self.port}{self.path}"

    def url_for(self, serializer: str) -> str:
        """The socket URL asking for ``serializer`` (``"json"`` or ``"msgpack"``)."""
        query = wire.VSN_QUERY_MSGPACK if serializer == wire.SERIALIZER_MSGPACK else wire.VSN_QUERY
        return f"{self.endpoint}?{query}"

    @property
    def identity(self) -> str:
        """The device identity the server will see: the certificate CN, or ``identifier``."""
        if self.device_cert is not None:
            return certificate_common_name(self.device_cert) or f"cert:{self.device_cert}"
        assert self.identifier is not None
        return self.identifier

    def __repr__(self) -> str:
        # Never show the secret (it is also excluded from the dataclass repr).
        return (
            f"LinkConfig(name={self.name!r}, url={self.url!r}, auth={self.auth_mode}, "
            f"identity={self.identity!r})"
        )

    @classmethod
    def build(cls, **options: Any) -> LinkConfig:
        """Validate keyword options (the names of PROTOCOL.md §14.1 plus the Python extras)."""
        fields: dict[str, Any] = {}
        fields.update(_endpoint(options))
        fields["firmware_meta"] = _firmware_meta(options.pop("firmware_meta", None))
        fields.update(_credentials(options, use_ssl=fields["ssl"]))
        fields.update(_verification(options))
        fields.update(_timers(options))
        fields["name"] = _name(options.pop("name", DEFAULT_NAME))
        max_message = options.pop("max_message_size", 1024 * 1024)
        if isinstance(max_message, bool) or not isinstance(max_message, int) or max_message < 4096:
            raise ConfigError("max_message_size", "must be an integer >= 4096")
        fields["max_message_size"] = max_message
        state_dir = options.pop("state_dir", None)
        if state_dir is not None and not isinstance(state_dir, str | os.PathLike):
            raise ConfigError("state_dir", "must be a directory path")
        fields["state_dir"] = Path(state_dir) if state_dir is not None else None
        fields["user_agent"] = _text("user_agent", options.pop("user_agent", "nhlink"))
        extra = options.pop("extra_join_params", {}) or {}
        if not isinstance(extra, Mapping):
            raise ConfigError("extra_join_params", "must be a mapping")
        fields["extra_join_params"] = dict(extra)
        fields.update(_proxy(options))
        serializer = options.pop("serializer", wire.SERIALIZER_JSON)
        if serializer not in (wire.SERIALIZER_JSON, wire.SERIALIZER_MSGPACK):
            raise ConfigError("serializer", f'must be "json" or "msgpack", got {serializer!r}')
        fields["serializer"] = serializer
        if options:
            raise ConfigError(sorted(options)[0], "unknown option")
        return cls(**fields)

    def join_params(
        self, *, validated: bool, auto_revert: bool, downloading_uuid: str | None
    ) -> dict[str, Any]:
        """The ``device`` join payload (§6.2): ``nerves_fw_*`` keys, api version, meta."""
        params: dict[str, Any] = dict(self.extra_join_params)
        for key, value in self.firmware_meta.items():
            params[wire.JOIN_FW_PREFIX + key] = value
        params[wire.JOIN_DEVICE_API_VERSION] = wire.DEVICE_API_VERSION
        params[wire.JOIN_CURRENTLY_DOWNLOADING_UUID] = downloading_uuid
        params[wire.JOIN_META] = {
            wire.META_FIRMWARE_VALIDATED: validated,
            wire.META_AUTO_REVERT_DETECTED: auto_revert,
        }
        return params


# -- LinkConfig.build, one group of options at a time (each pops what it reads) ------------------


def _endpoint(options: dict[str, Any]) -> dict[str, Any]:
    host = _host(options.pop("host", None) or "")
    port = options.pop("port", 443)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("port", f"must be an integer in 1..65535, not {port!r}")
    use_ssl = options.pop("ssl", True)
    if not isinstance(use_ssl, bool):
        raise ConfigError("ssl", "must be True or False")
    path = _text("path", options.pop("path", wire.DEVICE_SOCKET_PATH))
    if not path.startswith("/") or "?" in path or "#" in path:
        raise ConfigError("path", "must start with '/' and carry no query string")
    return {"host": host, "port": port, "ssl": use_ssl, "path": path}


def _firmware_meta(meta: object) -> dict[str, str]:
    if not isinstance(meta, Mapping):
        raise ConfigError(
            "firmware_meta",
            "is required: a mapping with " + ", ".join(wire.REQUIRED_FIRMWARE_META),
        )
    clean: dict[str, str] = {}
    for key in wire.REQUIRED_FIRMWARE_META:
        if key not in meta or meta[key] is None:
            raise ConfigError(f"firmware_meta.{key}", "is required")
        clean[key] = _text(f"firmware_meta.{key}", meta[key])
    for key, value in meta.items():
        if key in clean or value is None:
            continue
        if not isinstance(key, str) or not key:
            raise ConfigError("firmware_meta", f"keys must be non-empty strings, not {key!r}")
        clean[key] = _text(f"firmware_meta.{key}", value, allow_empty=True)
    return clean


def _credentials(options: dict[str, Any], *, use_ssl: bool) -> dict[str, Any]:
    """mTLS files or the NH1 shared secret: exactly one of the two (§3)."""
    device_cert = options.pop("device_cert", None)
    device_key = options.pop("device_key", None)
    device_chain = options.pop("device_chain", None)
    product_key = options.pop("product_key", None)
    product_secret = options.pop("product_secret", None)
    identifier = options.pop("identifier", None)
    mtls = device_cert is not None or device_key is not None
    shared = product_key is not None or product_secret is not None
    if mtls and shared:
        raise ConfigError(
            "device_cert",
            "give either device_cert/device_key (mTLS) or "
            "product_key/product_secret/identifier (shared secret), not both",
        )
    if not mtls and not shared:
        raise ConfigError(
            "device_cert",
            "no authentication configured: give device_cert/device_key (mTLS) "
            "or product_key/product_secret/identifier (shared secret)",
        )
    if mtls:
        if device_cert is None or device_key is None:
            raise ConfigError(
                "device_key" if device_key is None else "device_cert",
                "device_cert and device_key go together",
            )
        if not use_ssl:
            raise ConfigError("ssl", "mTLS needs ssl=True (wss://)")
        return {
            "device_cert": _readable_file("device_cert", device_cert),
            "device_key": _device_key(device_key),
            "device_chain": (
                _readable_file("device_chain", device_chain) if device_chain is not None else None
            ),
        }
    _text("product_key", product_key or "")
    _text("product_secret", product_secret or "")
    if not str(product_secret).isascii():
        raise ConfigError("product_secret", "must be ASCII text")
    _text("identifier", identifier or "")
    return {"product_key": product_key, "product_secret": product_secret, "identifier": identifier}


def _verification(options: dict[str, Any]) -> dict[str, Any]:
    """Server certificates and firmware verification: real booleans only (item: a string
    "false" must never switch verification off)."""
    ca_file = options.pop("ca_file", None)
    fw_ca = options.pop("firmware_ca_file", None)
    return {
        "ca_file": _readable_file("ca_file", ca_file) if ca_file is not None else None,
        "dangerously_disable_verification": _flag(
            "dangerously_disable_verification",
            options.pop("dangerously_disable_verification", False),
        ),
        "firmware_ca_file": (
            _readable_file("firmware_ca_file", fw_ca) if fw_ca is not None else None
        ),
        "allow_unverified_firmware": _flag(
            "allow_unverified_firmware", options.pop("allow_unverified_firmware", False)
        ),
    }


def _timers(options: dict[str, Any]) -> dict[str, Any]:
    """Heartbeat, backoff, deadlines and callback limits, in seconds (§12)."""
    timers = {
        name: _positive(name, options.pop(name, default))
        for name, default in (
            ("heartbeat_interval", 30.0),
            ("backoff_initial", 1.0),
            ("backoff_max", 60.0),
            ("connect_timeout", 30.0),
            ("join_timeout", 30.0),
            ("backoff_reset_after", 30.0),
            ("callback_timeout", 30.0),
            ("min_reschedule_delay", 60.0),
            ("validation_poll_interval", 10.0),
        )
    }
    if timers["backoff_initial"] > timers["backoff_max"]:
        raise ConfigError("backoff_initial", "must not exceed backoff_max")
    jitter = options.pop("backoff_jitter", 0.5)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        raise ConfigError("backoff_jitter", "must be within [0, 1]")
    timers["backoff_jitter"] = float(jitter)
    return timers


def _proxy(options: dict[str, Any]) -> dict[str, Any]:
    """``proxy`` (a URL, ``""`` for none, None for the environment) and ``no_proxy``."""
    from .transport.proxy import Proxy

    proxy = options.pop("proxy", None)
    no_proxy = options.pop("no_proxy", None)
    if proxy is not None:
        if not isinstance(proxy, str):
            raise ConfigError("proxy", 'must be a proxy URL such as http://proxy:3128, or ""')
        if proxy.strip():
            Proxy.parse(proxy)  # raises ConfigError without the credentials
    if no_proxy is not None and not isinstance(no_proxy, str):
        raise ConfigError("no_proxy", "must be a comma-separated string of hosts")
    return {"proxy": proxy, "no_proxy": no_proxy}
