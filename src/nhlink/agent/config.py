"""The agent's configuration file (TOML, read with :mod:`tomllib`), validated before anything
connects. docs/agent.md describes every key; ``nhlink config example`` prints an annotated file.

Shape::

    [agent]                 # the process: control socket, update lock, state, logging
    <device keys>           # at the top level: defaults for every [[device]]
    [update] [hooks] [writer] [firmware] [download] [extensions]   # defaults too
    [[device]]              # one table per device identity (one NervesHubLink each)
    <device keys>
    [device.update] ...     # per-device sub-tables: merged over the top-level ones key by key
                            # ([device.writer] replaces [writer] as a whole)

Every error is an :class:`AgentConfigError` naming the file, the key (``device[1].writer.path``)
and what is wrong; unknown keys are errors. Secrets come from files (``*_file``) or the
environment (``*_env``); an inline ``product_secret`` is refused in a file other users can read.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import LinkConfig
from ..errors import ConfigError
from ..protocol import wire
from ..transport.pkcs11 import is_pkcs11_uri
from ..update.options import DownloadOptions
from ..update.writers import _proc
from .lock import DEFAULT_LOCK_FILE
from .windows import Schedule, parse_timezone, parse_window

__all__ = [
    "DEFAULT_CONFIG",
    "AgentConfig",
    "AgentConfigError",
    "AgentSettings",
    "DeviceSpec",
    "load",
]

DEFAULT_CONFIG = Path("/etc/nhlink/nhlink.toml")
DEFAULT_STATE_DIR = Path("/var/lib/nhlink")
DEFAULT_CONTROL_SOCKET = Path("/run/nhlink/control.sock")


class AgentConfigError(ConfigError):
    """A bad configuration file: ``file``, ``key`` (dotted, e.g. ``device[0].writer.path``)
    and what is wrong. ``nhlink`` exits with status 2."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        ValueError.__init__(self, f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.option = key

    def __str__(self) -> str:
        return str(self.args[0])


# -- value kinds -----------------------------------------------------------------------------

Check = Callable[[str, Any], Any]  # (key, value) -> clean value; raises ValueError(message)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_kind(value)}")
    return value


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {_kind(value)}")
    return value


def _num(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_kind(value)}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_kind(value)}")
    return value


def _strs(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, not {_kind(value)}")
    return list(value)


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table, not {_kind(value)}")
    return dict(value)


def _str_table(key: str, value: Any) -> dict[str, str]:
    table = _table(key, value)
    for k, v in table.items():
        if not isinstance(v, str):
            raise ValueError(f"{k} must be a string, not {_kind(v)}")
    return table


def _command(key: str, value: Any) -> list[str]:
    """A command: a list of arguments, or a string run by ``/bin/sh -c``."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        return ["/bin/sh", "-c", value]
    argv = _strs(key, value)
    if not argv or not argv[0]:
        raise ValueError("must not be empty")
    return argv


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: the environment ``${VAR}`` in paths is read from (set by :func:`load`)
_environ: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "nhlink_agent_environ", default=os.environ
)


def _path(key: str, value: Any) -> Path:
    """A path; ``${VAR}`` is replaced from the environment (``${CREDENTIALS_DIRECTORY}``,
    ``${STATE_DIRECTORY}``: what systemd passes to a service)."""
    text = _str(key, value)
    if not text:
        raise ValueError("must not be empty")

    def expand(match: re.Match[str]) -> str:
        name = match[1]
        environ = _environ.get()
        if name not in environ:
            raise ValueError(f"refers to ${{{name}}}, which is not set")
        return environ[name]

    return Path(_ENV_REF.sub(expand, text))


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for t, name in names.items():
        if type(value) is t:
            return f"{name} ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# -- the schema ------------------------------------------------------------------------------

_TIMERS = (
    "heartbeat_interval",
    "backoff_initial",
    "backoff_max",
    "backoff_jitter",
    "connect_timeout",
    "join_timeout",
    "backoff_reset_after",
    "callback_timeout",
    "min_reschedule_delay",
    "validation_poll_interval",
)

#: [[device]] keys (and top-level defaults) that are NervesHubLink options, same names.
LINK_KEYS: dict[str, Check] = {
    "name": _str,
    "host": _str,
    "port": _int,
    "ssl": _bool,
    "path": _str,
    "identifier": _str,
    "identifier_file": _path,
    "product_key": _str,
    "product_secret": _str,
    "product_secret_file": _path,
    "product_secret_env": _str,
    "device_cert": _path,
    # a key file, or a pkcs11: URI (a key in a token: a TPM via tpm2-pkcs11, docs/identity.md)
    "device_key": lambda k, v: v if is_pkcs11_uri(v) else _path(k, v),
    "device_chain": _path,
    "ca_file": _path,
    "firmware_ca_file": _path,
    "dangerously_disable_verification": _bool,
    "allow_unverified_firmware": _bool,
    "max_message_size": _int,
    "state_dir": _path,
    "user_agent": _str,
    "serializer": _str,
    "extra_join_params": _table,
    "proxy": _str,
    "no_proxy": _str,
    "network_interface": lambda k, v: v if isinstance(v, bool) else _str(k, v),
    **dict.fromkeys(_TIMERS, _num),
}

UPDATE_KEYS: dict[str, Check] = {
    "windows": _strs,
    "timezone": _str,
    "window_jitter": _num,
    "reboot_after_update": _bool,
    "confirm": lambda k, v: v if v in ("on-join", "manual") else _command(k, v),
    "busy_retry": _num,
}

HOOK_KEYS: dict[str, Check] = {
    "reboot": _command,
    "identify": _command,
    "update_available": lambda k, v: v if v in ("apply", "ignore") else _command(k, v),
    "health": _command,
    "timeout": _num,
}

FIRMWARE_REQUIRED = wire.REQUIRED_FIRMWARE_META
#: further metadata read from a KEY=value firmware file without a ``keys`` mapping
FIRMWARE_OPTIONAL = ("misc", "author", "description", "vcs_identifier", "fwup_version")
FIRMWARE_KEYS: dict[str, Check] = {
    "file": _path,
    "keys": _str_table,
    "rauc": _bool,
    "rauc_command": _str,
    **dict.fromkeys(("uuid", "product", "architecture", "platform", "version"), _str),
    "meta": _str_table,
}

DOWNLOAD_KEYS: dict[str, Check] = {
    "max_disconnects": _int,
    "idle_timeout": _num,
    "retry_delay": _num,
    "retry_delay_max": _num,
    "jitter": _num,
    "max_total_time": _num,
    "max_redirects": _int,
    "allow_http": _bool,
    "max_size": _int,
    "chunk_size": _int,
    "max_download_rate": _int,
    "proxy": _str,
    "no_proxy": _str,
}

EXTENSION_KEYS: dict[str, Check] = {
    "health": _bool,
    "logging": _bool,
    "local_shell": _bool,
    "network_identity": _bool,
}

# Remote access (docs/remote.md); every section is off unless present and enabled.
SHELL_KEYS: dict[str, Check] = {
    "command": _command,
    "user": _str,
    "group": _str,
    "cwd": _path,
    "env": _str_table,
    "inherit_env": _bool,
    "term": _str,
    "idle_timeout": _num,
    "max_sessions": _int,
}
CONSOLE_KEYS: dict[str, Check] = {
    "enabled": _bool,
    "upload_dir": _path,
    "max_upload": _int,
    "overwrite": _bool,
    "max_download": _int,
    "idle_timeout": _num,
}
SCRIPT_KEYS: dict[str, Check] = {
    "commands": lambda k, v: {n: _command(f"{k}.{n}", c) for n, c in _table(k, v).items()},
    "timeout": _num,
    "max_output": _int,
    "max_running": _int,
}
KEY_KEYS: dict[str, Check] = {
    "fwup": _strs,
    "archive": _strs,
    "request_fwup": _bool,
    "request_archive": _bool,
}
ARCHIVE_KEYS: dict[str, Check] = {
    "directory": _path,
    "verify": lambda k, v: None if v is False else _command(k, v),
    "keep": _int,
    "max_size": _int,
}

AGENT_KEYS: dict[str, Check] = {
    "control_socket": _path,
    "lock_file": _path,
    "state_dir": _path,
    "log_level": _str,
}

#: writer type → {key: check}; "!" marks a required key.
WRITER_KEYS: dict[str, dict[str, Check]] = {
    "file": {"!path": _path, "fsync": _bool},
    "command": {"!argv": _strs, "cwd": _path, "env": _str_table, "finish_timeout": _num},
    "rauc": {
        "spool_dir": _path,
        "config": _path,
        "keyring": _path,
        "check_bundle": _bool,
        "bus_address": _str,
        "rauc": _str,
        "extra_install_args": _strs,
        "install_timeout": _num,
        "command_timeout": _num,
        "fsync": _bool,
    },
    "swupdate": {
        "socket_dir": _path,
        "ctrl_socket": _path,
        "progress_socket": _path,
        "selection": _str,
        "dry_run": _bool,
        "info": _str,
        "confirm_command": _strs,
        "finish_timeout": _num,
    },
}

SECTIONS: dict[str, dict[str, Check]] = {
    "update": UPDATE_KEYS,
    "hooks": HOOK_KEYS,
    "firmware": FIRMWARE_KEYS,
    "download": DOWNLOAD_KEYS,
    "extensions": EXTENSION_KEYS,
    "shell": SHELL_KEYS,
    "console": CONSOLE_KEYS,
    "scripts": SCRIPT_KEYS,
    "signing_keys": KEY_KEYS,
    "archives": ARCHIVE_KEYS,
}
LOG_LEVELS = ("debug", "info", "warning", "error")


# -- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterSpec:
    """Which writer and its constructor options (built when the device starts)."""

    type: str  # file, command, rauc, swupdate, or module:Class
    options: dict[str, Any]

    def build(self) -> Any:
        cls = writer_class(self.type)
        return cls(**self.options)


@dataclass(frozen=True)
class Hooks:
    reboot: list[str] | None = field(default_factory=lambda: ["systemctl", "reboot"])
    identify: list[str] | None = None
    update_available: str | list[str] = "apply"
    health: list[str] | None = None
    timeout: float = 20.0


@dataclass(frozen=True)
class UpdateRules:
    schedule: Schedule = field(default_factory=Schedule)
    reboot_after_update: bool = True
    #: "on-join", "manual" or a command whose exit status 0 confirms
    confirm: str | list[str] = "on-join"
    #: seconds an update waits when another updater holds the machine's update lock
    busy_retry: float = 300.0


@dataclass(frozen=True)
class DeviceSpec:
    """One ``[[device]]``, resolved: everything its NervesHubLink and hooks need. Two specs
    compare equal iff nothing about the device changed (SIGHUP restarts the others)."""

    index: int
    name: str
    link_options: dict[str, Any] = field(repr=False)  # carries the secret: never log it
    writer: WriterSpec | None
    hooks: Hooks
    update: UpdateRules
    download: dict[str, Any] = field(repr=False)  # may carry a proxy's credentials
    extensions: dict[str, bool]
    identity: str
    url: str
    #: [shell] [console] [scripts] [signing_keys] [archives], checked
    remote: dict[str, dict[str, Any]] = field(default_factory=dict)

    def download_options(self) -> DownloadOptions:
        return DownloadOptions(**self.download)

    def remote_options(self) -> dict[str, Any]:
        """NervesHubLink options for the remote-access sections (``extensions`` among them:
        the local shell and network identity)."""
        return remote_options(self.extensions, self.remote, self.download_options())


@dataclass(frozen=True)
class AgentSettings:
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    lock_file: Path = DEFAULT_LOCK_FILE
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: str = "info"


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    agent: AgentSettings
    devices: tuple[DeviceSpec, ...]
    #: environment variables the file reads secrets from (kept from child processes)
    secret_env: frozenset[str] = frozenset()

    def device(self, name: str | None) -> DeviceSpec:
        """The device called ``name``, or the only one. Raises AgentConfigError."""
        if name is None:
            if len(self.devices) != 1:
                names = ", ".join(d.name for d in self.devices)
                raise AgentConfigError(self.path, "device", f"several devices ({names}): name one")
            return self.devices[0]
        for spec in self.devices:
            if spec.name == name:
                return spec
        raise AgentConfigError(self.path, "device", f"no device named {name!r}")


# -- loading ---------------------------------------------------------------------------------


def writer_class(type_name: str) -> type:
    if type_name == "file":
        from ..update.writers.file import FileWriter

        return FileWriter
    if type_name == "command":
        from ..update.writers.command import CommandWriter

        return CommandWriter
    if type_name == "rauc":
        from ..update.writers.rauc import RaucWriter

        return RaucWriter
    if type_name == "swupdate":
        from ..update.writers.swupdate import SwupdateWriter

        return SwupdateWriter
    module_name, _, attr = type_name.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not isinstance(cls, type):
        raise TypeError(f"{type_name} is not a class")
    return cls


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ
        #: environment variables that hold secrets (product_secret_env)
        self.secret_env: set[str] = set()

    def error(self, key: str, message: str) -> AgentConfigError:
        return AgentConfigError(self.path, key, message)

    def checked(
        self, where: str, table: Mapping[str, Any], spec: Mapping[str, Check]
    ) -> dict[str, Any]:
        """Type-check ``table`` against ``spec`` (unknown keys are errors)."""
        clean: dict[str, Any] = {}
        known = {k.lstrip("!"): check for k, check in spec.items()}
        for key, value in table.items():
            name = f"{where}.{key}" if where else key
            check = known.get(key)
            if check is None:
                hint = ""
                if where == "agent" and (key in LINK_KEYS or key in SECTIONS or key == "writer"):
                    hint = (
                        f"; {key} is a device key: in TOML every key after [agent] belongs to "
                        "[agent], so put the defaults for all devices above the first table"
                    )
                raise self.error(
                    name, f"unknown key (known here: {', '.join(sorted(known))}){hint}"
                )
            try:
                clean[key] = check(name, value)
            except ValueError as exc:
                raise self.error(name, str(exc)) from None
        return clean

    def device_table(self, where: str, table: Mapping[str, Any]) -> dict[str, Any]:
        """Type-check the keys a [[device]] (or the top level) may hold."""
        out: dict[str, Any] = {}
        for key, value in table.items():
            name = f"{where}.{key}" if where else key
            if key in SECTIONS:
                section = _table(name, value) if isinstance(value, dict) else None
                if section is None:
                    raise self.error(name, f"must be a table, not {_kind(value)}")
                out[key] = self.checked(name, section, SECTIONS[key])
            elif key == "writer":
                out[key] = self.writer(name, value)
            elif key in LINK_KEYS:
                try:
                    out[key] = LINK_KEYS[key](name, value)
                except ValueError as exc:
                    raise self.error(name, str(exc)) from None
            else:
                known = sorted([*LINK_KEYS, *SECTIONS, "writer"])
                raise self.error(name, f"unknown key (known here: {', '.join(known)})")
        return out

    def writer(self, where: str, value: Any) -> WriterSpec:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a table, not {_kind(value)}")
        options = dict(value)
        type_name = options.pop("type", None)
        if not isinstance(type_name, str):
            raise self.error(
                f"{where}.type", "is required: file, command, rauc, swupdate or module:Class"
            )
        if type_name in WRITER_KEYS:
            spec = WRITER_KEYS[type_name]
            clean = self.checked(where, options, spec)
            for key in spec:
                if key.startswith("!") and key[1:] not in clean:
                    raise self.error(f"{where}.{key[1:]}", f"is required for a {type_name} writer")
            if type_name == "command" and not clean["argv"]:
                raise self.error(f"{where}.argv", "must not be empty")
            return WriterSpec(type_name, clean)
        if ":" not in type_name:
            raise self.error(
                f"{where}.type",
                f"unknown writer {type_name!r}: file, command, rauc, swupdate or module:Class",
            )
        try:
            cls = writer_class(type_name)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise self.error(f"{where}.type", f"cannot load {type_name}: {exc}") from None
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as exc:
            raise self.error(where, f"options do not fit {type_name}: {exc}") from None
        return WriterSpec(type_name, options)

    def read_secret(self, key: str, path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise self.error(key, f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(key, f"cannot read {path}: {exc}") from None
        if not text:
            raise self.error(key, f"{path} is empty")
        return text

    def secrets(self, where: str, merged: dict[str, Any], file_mode: int) -> None:
        """``product_secret`` / ``_file`` / ``_env`` and ``identifier`` / ``_file`` → values."""
        sources = [
            k
            for k in ("product_secret", "product_secret_file", "product_secret_env")
            if k in merged
        ]
        if len(sources) > 1:
            raise self.error(f"{where}.{sources[1]}", f"give one of {', '.join(sources)}")
        if "product_secret_file" in merged:
            key = f"{where}.product_secret_file"
            merged["product_secret"] = self.read_secret(key, merged.pop("product_secret_file"))
        elif "product_secret_env" in merged:
            var = merged.pop("product_secret_env")
            self.secret_env.add(var)
            value = self.environ.get(var)
            if not value:
                raise self.error(f"{where}.product_secret_env", f"${var} is not set (or empty)")
            merged["product_secret"] = value
        elif "product_secret" in merged and file_mode & 0o077:
            raise self.error(
                f"{where}.product_secret",
                f"an inline secret in a file other users can read (mode {file_mode & 0o777:04o}): "
                "use product_secret_file or product_secret_env, or chmod 600 the file",
            )
        for key, value in (("proxy", merged.get("proxy")),):
            if isinstance(value, str) and "@" in value and file_mode & 0o077:
                raise self.error(
                    f"{where}.{key}",
                    f"proxy credentials in a file other users can read (mode "
                    f"{file_mode & 0o777:04o}): chmod 600 the file",
                )
        if "identifier_file" in merged:
            if "identifier" in merged:
                raise self.error(f"{where}.identifier_file", "give identifier or identifier_file")
            merged["identifier"] = self.read_secret(
                f"{where}.identifier_file", merged.pop("identifier_file")
            )

    def firmware_meta(self, where: str, fw: Mapping[str, Any]) -> dict[str, str]:
        """Inline values win; the file fills what they leave out; RAUC fills the rest."""
        meta: dict[str, str] = dict(fw.get("meta", {}))
        for key in ("uuid", "product", "architecture", "platform", "version"):
            if key in fw:
                meta[key] = fw[key]
        if "file" in fw:
            for key, value in self.firmware_file(
                f"{where}.file", fw["file"], fw.get("keys")
            ).items():
                meta.setdefault(key, value)
        elif "keys" in fw:
            raise self.error(f"{where}.keys", "needs firmware.file")
        if fw.get("rauc"):
            for key, value in self.rauc_meta(
                f"{where}.rauc", fw.get("rauc_command", "rauc")
            ).items():
                meta.setdefault(key, value)
        missing = [k for k in FIRMWARE_REQUIRED if not meta.get(k)]
        if missing:
            raise self.error(
                where,
                f"no {', '.join(missing)}: give {'it' if len(missing) == 1 else 'them'} inline, "
                "in firmware.file, or from RAUC (firmware.rauc = true gives version and uuid)",
            )
        return meta

    def firmware_file(self, key: str, path: Path, keys: Mapping[str, str] | None) -> dict[str, str]:
        """A TOML file (``*.toml``: its top-level strings) or a ``KEY=value`` file such as
        ``/etc/os-release``; ``keys`` maps metadata names to the file's names."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise self.error(key, f"cannot read {path}: {exc.strerror or exc}") from None
        values: dict[str, str] = {}
        if path.suffix == ".toml":
            try:
                table = tomllib.loads(data.decode("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise self.error(key, f"{path} is not valid TOML: {exc}") from None
            values = {k: v for k, v in table.items() if isinstance(v, str)}
        else:
            values = parse_env_file(data.decode("utf-8", errors="replace"))
        if keys:
            out = {}
            for meta_key, file_key in keys.items():
                if file_key in values:
                    out[meta_key] = values[file_key]
            return out
        wanted = (*FIRMWARE_REQUIRED, *FIRMWARE_OPTIONAL)
        return {k.lower(): v for k, v in values.items() if k.lower() in wanted}

    def rauc_meta(self, key: str, rauc: str) -> dict[str, str]:
        """The booted slot's bundle: ``version`` and (its hash as) ``uuid``."""
        import json

        try:
            result = _proc.run_sync([rauc, "status", "--detailed", "--output-format=json"])
        except Exception as exc:
            raise self.error(key, f"rauc status failed: {exc}") from None
        if not result.ok:
            raise self.error(key, f"rauc status failed: {result.describe()}")
        try:
            status = json.loads(result.stdout)
        except ValueError as exc:
            raise self.error(key, f"rauc status printed no JSON: {exc}") from None
        return rauc_booted_bundle(status)


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines (os-release syntax: quotes, ``#`` comments, backslash escapes)."""
    import shlex

    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, raw = line.partition("=")
        try:
            words = shlex.split(raw, comments=False)
        except ValueError:
            continue
        values[name.strip()] = words[0] if words else ""
    return values


def rauc_booted_bundle(status: Mapping[str, Any]) -> dict[str, str]:
    """From ``rauc status --detailed --output-format=json``: the booted slot's bundle
    ``version``, its ``hash`` as ``uuid``, and the system's ``compatible`` as
    ``rauc_compatible``."""
    meta: dict[str, str] = {}
    compatible = status.get("compatible")
    if isinstance(compatible, str):
        meta["rauc_compatible"] = compatible
    for entry in status.get("slots") or []:
        if not isinstance(entry, Mapping):
            continue
        for info in entry.values():
            if not isinstance(info, Mapping) or info.get("state") != "booted":
                continue
            bundle = ((info.get("slot_status") or {}).get("bundle")) or {}
            if isinstance(bundle.get("version"), str):
                meta["version"] = bundle["version"]
            if isinstance(bundle.get("hash"), str):
                meta["uuid"] = bundle["hash"]
    return meta


def _merge(defaults: dict[str, Any], device: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in device.items():
        if key in SECTIONS or key == "extra_join_params":
            merged[key] = {**defaults.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the file. Raises :class:`AgentConfigError`."""
    token = _environ.set(os.environ if environ is None else environ)
    try:
        return _load(Path(path), _environ.get())
    finally:
        _environ.reset(token)


def _load(path: Path, environ: Mapping[str, str]) -> AgentConfig:
    loader = _Loader(path, environ)
    try:
        raw = path.read_bytes()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AgentConfigError(
            path, "", "no such file (start from `nhlink config example`)"
        ) from None
    except OSError as exc:
        raise AgentConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AgentConfigError(path, "", f"not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(path, "", f"not valid TOML: {exc}") from None

    agent_table = doc.pop("agent", {})
    if not isinstance(agent_table, dict):
        raise loader.error("agent", "must be a table")
    agent = loader.checked("agent", agent_table, AGENT_KEYS)
    level = agent.get("log_level", "info").lower()
    if level not in LOG_LEVELS:
        raise loader.error("agent.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    settings = AgentSettings(
        control_socket=agent.get("control_socket", _runtime_default(loader.environ)),
        lock_file=agent.get("lock_file", DEFAULT_LOCK_FILE),
        state_dir=agent.get("state_dir", _state_default(loader.environ)),
        log_level=level,
    )
    devices_raw = doc.pop("device", None)
    if devices_raw is None:
        raise loader.error("device", "no [[device]] table: configure at least one device")
    if not isinstance(devices_raw, list) or not all(isinstance(d, dict) for d in devices_raw):
        raise loader.error("device", "must be an array of tables ([[device]])")
    defaults = loader.device_table("", doc)
    specs: list[DeviceSpec] = []
    for index, table in enumerate(devices_raw):
        where = f"device[{index}]"
        merged = _merge(defaults, loader.device_table(where, table))
        specs.append(_device(loader, where, index, merged, settings, mode))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise loader.error(f"device[{spec.index}].name", f"{spec.name!r} is used twice")
        seen[spec.name] = spec.name
    identities = [(s.identity, s.link_options["host"]) for s in specs]
    for spec, identity in zip(specs, identities, strict=True):
        if identities.count(identity) > 1:
            raise loader.error(
                f"device[{spec.index}]",
                f"device identity {spec.identity!r} on {identity[1]} is configured twice "
                "(the server would disconnect the two from each other in a loop)",
            )
    return AgentConfig(path, settings, tuple(specs), frozenset(loader.secret_env))


def _runtime_default(environ: Mapping[str, str]) -> Path:
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / "control.sock" if runtime else DEFAULT_CONTROL_SOCKET


def _state_default(environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else DEFAULT_STATE_DIR


def _device(
    loader: _Loader,
    where: str,
    index: int,
    merged: dict[str, Any],
    settings: AgentSettings,
    file_mode: int,
) -> DeviceSpec:
    sections = {key: merged.pop(key, {}) for key in SECTIONS}
    writer = merged.pop("writer", None)
    loader.secrets(where, merged, file_mode)
    download_proxy = sections["download"].get("proxy")
    if isinstance(download_proxy, str) and "@" in download_proxy and file_mode & 0o077:
        raise loader.error(
            f"{where}.download.proxy",
            f"proxy credentials in a file other users can read (mode {file_mode & 0o777:04o}): "
            "chmod 600 the file",
        )
    if merged.get("proxy") is not None and "proxy" not in sections["download"]:
        # The device's proxy serves its firmware downloads too (as in the library).
        sections["download"] = {
            **sections["download"],
            "proxy": merged["proxy"],
            **({"no_proxy": merged["no_proxy"]} if "no_proxy" in merged else {}),
        }
    if "name" not in merged:
        merged["name"] = merged.get("identifier") or f"device{index}"
    merged.setdefault("state_dir", settings.state_dir)
    merged["firmware_meta"] = loader.firmware_meta(f"{where}.firmware", sections["firmware"])
    if "host" not in merged:
        raise loader.error(f"{where}.host", "is required (the NervesHub device endpoint)")
    interface = merged.pop("network_interface", None)  # a NervesHubLink option, not config
    try:
        link = LinkConfig.build(**merged)
    except ConfigError as exc:
        option = exc.option
        message = str(exc).removeprefix(f"{option}: ")
        if option.startswith("firmware_meta"):
            option = "firmware" + option[len("firmware_meta") :]
        raise loader.error(f"{where}.{option}", message) from None
    if interface is not None:
        merged["network_interface"] = interface
    hooks = sections["hooks"]
    update = sections["update"]
    try:
        tz = parse_timezone(update.get("timezone", "local"))
    except ValueError as exc:
        raise loader.error(f"{where}.update.timezone", str(exc)) from None
    windows = []
    for i, text in enumerate(update.get("windows", [])):
        try:
            windows.append(parse_window(text, tz))
        except ValueError as exc:
            raise loader.error(f"{where}.update.windows[{i}]", str(exc)) from None
    schedule = Schedule(tuple(windows), jitter=update.get("window_jitter", 300.0))
    for key in ("window_jitter", "busy_retry"):
        if key in update and update[key] < 0:
            raise loader.error(f"{where}.update.{key}", "must be >= 0")
    timeout = hooks.get("timeout", 20.0)
    if not 0 < timeout < link.callback_timeout:
        raise loader.error(
            f"{where}.hooks.timeout",
            f"must be > 0 and below callback_timeout ({link.callback_timeout:g} s), "
            "which bounds every callback a hook runs in",
        )
    if "health" in hooks and not sections["extensions"].get("health"):
        raise loader.error(f"{where}.hooks.health", "needs extensions.health = true")
    try:
        download = DownloadOptions(**sections["download"])
    except ConfigError as exc:
        raise loader.error(f"{where}.download.{exc.option}", str(exc).split(": ", 1)[-1]) from None
    remote = {key: sections[key] for key in _REMOTE_SECTIONS if sections.get(key)}
    try:
        remote_options(sections["extensions"], remote, download)
    except ConfigError as exc:
        raise loader.error(f"{where}.{exc.option}", str(exc).split(": ", 1)[-1]) from None
    del download
    return DeviceSpec(
        index=index,
        name=link.name,
        link_options=merged,
        writer=writer,
        hooks=Hooks(
            reboot=hooks.get("reboot", ["systemctl", "reboot"]),
            identify=hooks.get("identify"),
            update_available=hooks.get("update_available", "apply"),
            health=hooks.get("health"),
            timeout=hooks.get("timeout", 20.0),
        ),
        update=UpdateRules(
            schedule=schedule,
            reboot_after_update=update.get("reboot_after_update", True),
            confirm=update.get("confirm", "on-join"),
            busy_retry=update.get("busy_retry", 300.0),
        ),
        download=sections["download"],
        extensions=sections["extensions"],
        identity=link.identity,
        url=link.url,
        remote=remote,
    )


_REMOTE_SECTIONS = ("shell", "console", "scripts", "signing_keys", "archives")


def remote_options(
    extensions: Mapping[str, bool],
    remote: Mapping[str, Mapping[str, Any]],
    download: DownloadOptions,
) -> dict[str, Any]:
    """The remote-access sections as NervesHubLink options; raises ConfigError (the option
    named as ``section.key``)."""
    from ..remote.archives import ArchiveOptions
    from ..remote.console import ConsoleOptions
    from ..remote.keys import SigningKeys
    from ..remote.pty import ShellOptions
    from ..remote.scripts import ScriptOptions

    def build(section: str, cls: Any, values: Mapping[str, Any]) -> Any:
        try:
            return cls(**values)
        except ConfigError as exc:
            option = exc.option.split(".", 1)[-1]
            raise ConfigError(f"{section}.{option}", str(exc).split(": ", 1)[-1]) from None

    shell_values = dict(remote.get("shell", {}))
    out: dict[str, Any] = {"extensions": {}}
    shell = build("shell", ShellOptions, shell_values)
    if extensions.get("local_shell"):
        out["extensions"]["local_shell"] = shell
    if extensions.get("network_identity"):
        out["extensions"]["network_identity"] = True
    console = dict(remote.get("console", {}))
    if console.pop("enabled", bool(console)):
        idle = console.pop("idle_timeout", shell_values.get("idle_timeout", 300.0))
        console_shell = build("shell", ShellOptions, {**shell_values, "idle_timeout": idle})
        out["console"] = build("console", ConsoleOptions, {**console, "shell": console_shell})
    if remote.get("scripts"):
        out["scripts"] = build("scripts", ScriptOptions, remote["scripts"])
    if remote.get("signing_keys"):
        out["signing_keys"] = build("signing_keys", SigningKeys, remote["signing_keys"])
    if remote.get("archives"):
        out["archives"] = build(
            "archives", ArchiveOptions, {**remote["archives"], "download": download}
        )
    return out
