"""The agent's configuration file: every error names the file and the key, before anything
starts (exit status 2); the firmware metadata sources; secrets from files and the environment."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nhlink.agent.config import (
    AgentConfigError,
    load,
    parse_env_file,
    rauc_booted_bundle,
)
from nhlink.cli import data_file
from tests.support import KEY, META, SECRET

from .support import Setup, nhlink_cmd, to_toml


@pytest.fixture
def fake_setup(tmp_path: Path, run_dir: Path) -> Setup:
    return Setup(tmp_path, run_dir, 4000)


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        table = doc
        for name in parents:
            table = table["device"][0] if name == "device0" else table[name]
        del table[last]

    return change


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        table = doc
        for name in parents:
            table = table["device"][0] if name == "device0" else table.setdefault(name, {})
        table[last] = value

    return change


def _env_secret(doc: dict[str, Any], var: str) -> None:
    del doc["product_secret_file"]
    doc["product_secret_env"] = var


#: (change to a good document, the key the error must name, a piece of its message)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown top key", _set("heartbeat_intervall", 3), "heartbeat_intervall", "unknown key"),
    ("unknown device key", _set("device0.idenitfier", "x"), "device[0].idenitfier", "unknown key"),
    ("unknown agent key", _set("agent.sockett", "/x"), "agent.sockett", "unknown key"),
    ("port type", _set("port", "4000"), "port", "must be an integer"),
    ("ssl type", _set("ssl", "false"), "ssl", "must be true or false"),
    (
        "timer type",
        _set("device0.heartbeat_interval", "30"),
        "device[0].heartbeat_interval",
        "number",
    ),
    ("timer value", _set("device0.backoff_max", -1), "device[0].backoff_max", "positive"),
    (
        "missing secret file",
        _set("product_secret_file", "/nonexistent/secret"),
        "device[0].product_secret_file",
        "no such file",
    ),
    (
        "unset secret env",
        lambda d: _env_secret(d, "NHLINK_UNSET_VAR"),
        "device[0].product_secret_env",
        "is not set",
    ),
    (
        "two secret sources",
        _set("device0.product_secret_env", "X"),
        "device[0].product_secret_env",
        "give one of",
    ),
    (
        "bad window",
        _set("update.windows", ["Mon-Fry 02:00-04:00"]),
        "device[0].update.windows[0]",
        "unknown day",
    ),
    (
        "bad window time",
        _set("update.windows", ["02:00-25:00"]),
        "device[0].update.windows[0]",
        "bad time",
    ),
    (
        "bad timezone",
        _set("update.timezone", "Mars/Olympus"),
        "device[0].update.timezone",
        "unknown time zone",
    ),
    (
        "windows type",
        _set("update.windows", "Mon 02:00-03:00"),
        "update.windows",
        "list of strings",
    ),
    (
        "writer type missing",
        _set("device0.writer", {"path": "/x"}),
        "device[0].writer.type",
        "is required",
    ),
    (
        "unknown writer",
        _set("device0.writer", {"type": "flash"}),
        "device[0].writer.type",
        "unknown writer",
    ),
    ("writer key", _set("device0.writer.pth", "/x"), "device[0].writer.pth", "unknown key"),
    ("writer required", _del("device0.writer.path"), "device[0].writer.path", "is required"),
    (
        "custom writer import",
        _set("device0.writer", {"type": "no_such_mod:W"}),
        "device[0].writer.type",
        "cannot load",
    ),
    (
        "custom writer options",
        _set("device0.writer", {"type": "nhlink.update.writers:FileWriter", "size": 3}),
        "device[0].writer",
        "options do not fit",
    ),
    ("missing meta", _del("device0.firmware.uuid"), "device[0].firmware", "no uuid"),
    ("hook type", _set("hooks.reboot", 5), "hooks.reboot", "list of strings"),
    ("hook policy", _set("hooks.update_available", []), "hooks.update_available", "empty"),
    ("hook timeout", _set("hooks.timeout", 45), "device[0].hooks.timeout", "callback_timeout"),
    ("health hook", _set("hooks.health", ["true"]), "device[0].hooks.health", "extensions.health"),
    ("download option", _set("download.idle_timeout", 0), "device[0].download.idle_timeout", "> 0"),
    ("confirm", _set("update.confirm", 3), "update.confirm", "list of strings"),
    ("log level", _set("agent.log_level", "loud"), "agent.log_level", "one of"),
    ("no host", _del("host"), "device[0].host", "is required"),
    ("no devices", lambda d: d.pop("device"), "device", "no [[device]]"),
    (
        "auth",
        lambda d: d.pop("product_secret_file"),
        "device[0].product_secret",
        "must not be empty",
    ),
    ("twice", lambda d: d["device"].append(dict(d["device"][0])), "device[1].name", "used twice"),
    (
        "path var",
        _set("device0.ca_file", "${NHLINK_UNSET_DIR}/ca.pem"),
        "device[0].ca_file",
        "is not set",
    ),
]


@pytest.mark.parametrize(("label", "change", "key", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_names_the_file_and_the_key(
    fake_setup: Setup, label: str, change: Callable[[dict[str, Any]], None], key: str, message: str
) -> None:
    doc = fake_setup.doc()
    load(fake_setup.write(doc))  # the unchanged document is good
    change(doc)
    path = fake_setup.write(doc)
    with pytest.raises(AgentConfigError) as info:
        load(path)
    assert info.value.file == str(path)
    assert info.value.key == key, str(info.value)
    assert message in info.value.message, str(info.value)
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_not_toml_and_missing_file(fake_setup: Setup) -> None:
    fake_setup.config.write_text("host = \n")
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        load(fake_setup.config)
    with pytest.raises(AgentConfigError, match="no such file"):
        load(fake_setup.root / "missing.toml")


def test_an_inline_secret_needs_a_private_file(fake_setup: Setup) -> None:
    doc = fake_setup.doc()
    del doc["product_secret_file"]
    doc["product_secret"] = SECRET
    path = fake_setup.write(doc)  # 0600
    assert load(path).devices[0].link_options["product_secret"] == SECRET
    path.chmod(0o644)
    with pytest.raises(AgentConfigError) as info:
        load(path)
    assert info.value.key == "device[0].product_secret"
    assert "other users can read (mode 0644)" in info.value.message
    assert SECRET not in str(info.value)


def test_secrets_never_in_a_repr(fake_setup: Setup) -> None:
    config = load(fake_setup.write(fake_setup.doc()))
    assert SECRET not in repr(config)


def test_secret_from_the_environment_and_paths_with_variables(fake_setup: Setup) -> None:
    doc = fake_setup.doc()
    del doc["product_secret_file"]
    doc["product_secret_env"] = "NHLINK_T_SECRET"
    doc["device"][0]["ca_file"] = "${NHLINK_T_DIR}/secret"
    config = load(
        fake_setup.write(doc),
        environ={"NHLINK_T_SECRET": "from-env", "NHLINK_T_DIR": str(fake_setup.root)},
    )
    spec = config.devices[0]
    assert spec.link_options["product_secret"] == "from-env"


def test_defaults_and_merging(fake_setup: Setup) -> None:
    doc = fake_setup.doc(
        fake_setup.device("gw-a"),
        fake_setup.device("gw-b", update={"windows": ["Sat 00:00-06:00"]}, port=4443),
        update={"windows": ["Mon-Fri 02:00-04:00"], "timezone": "UTC"},
    )
    config = load(fake_setup.write(doc))
    a, b = config.devices
    assert (a.name, b.name) == ("gw-a", "gw-b")
    assert a.link_options["port"] == 4000 and b.link_options["port"] == 4443
    assert len(a.update.schedule.windows) == 1 and a.update.schedule.windows[0].days == frozenset(
        range(5)
    )
    assert b.update.schedule.windows[0].days == frozenset({5})
    assert b.update.confirm == "manual"  # the top-level [update] still applies key by key
    assert a.link_options["state_dir"] == fake_setup.state
    assert a.hooks.reboot == ["/bin/sh", "-c", f"echo reboot >> {fake_setup.reboots}"]
    assert a.writer is not None and a.writer.type == "file"
    assert config.agent.control_socket == fake_setup.socket


def test_firmware_from_os_release_and_inline_values_win(fake_setup: Setup) -> None:
    release = fake_setup.root / "os-release"
    release.write_text(
        '# comment\nNAME="Gateway OS"\nVERSION_ID="2.4.1"\nIMAGE_ID=\'abcd-1234\'\n'
        "BUILD_ID=ignored\n"
    )
    firmware = {
        "product": "gw",
        "architecture": "arm64",
        "platform": "rpi4",
        "file": str(release),
        "keys": {"version": "VERSION_ID", "uuid": "IMAGE_ID", "misc": "NAME"},
    }
    doc = fake_setup.doc(fake_setup.device("gw-0001", firmware=firmware))
    meta = load(fake_setup.write(doc)).devices[0].link_options["firmware_meta"]
    assert meta == {
        "product": "gw",
        "architecture": "arm64",
        "platform": "rpi4",
        "version": "2.4.1",
        "uuid": "abcd-1234",
        "misc": "Gateway OS",
    }
    firmware["version"] = "9.9.9"  # inline wins over the file
    doc = fake_setup.doc(fake_setup.device("gw-0001", firmware=firmware))
    assert (
        load(fake_setup.write(doc)).devices[0].link_options["firmware_meta"]["version"] == "9.9.9"
    )


def test_firmware_from_a_key_value_file_without_a_mapping(fake_setup: Setup) -> None:
    env_file = fake_setup.root / "firmware.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in META.items()) + "OTHER=x\n")
    doc = fake_setup.doc(fake_setup.device("gw-0001", firmware={"file": str(env_file)}))
    assert load(fake_setup.write(doc)).devices[0].link_options["firmware_meta"] == META
    env_file.write_text("version=1\n")
    with pytest.raises(AgentConfigError, match="no uuid, product, architecture, platform"):
        load(fake_setup.write(doc))


RAUC_STATUS = {
    "compatible": "nhlink-test-gw",
    "booted": "A",
    "slots": [
        {
            "rootfs.0": {
                "class": "rootfs",
                "bootname": "A",
                "state": "booted",
                "slot_status": {"bundle": {"version": "3.1.0", "hash": "f00dfeed"}},
            }
        },
        {
            "rootfs.1": {
                "class": "rootfs",
                "bootname": "B",
                "state": "inactive",
                "slot_status": {"bundle": {"version": "3.2.0", "hash": "beef"}},
            }
        },
    ],
}


def test_firmware_from_rauc_status(fake_setup: Setup) -> None:
    assert rauc_booted_bundle(RAUC_STATUS) == {
        "rauc_compatible": "nhlink-test-gw",
        "version": "3.1.0",
        "uuid": "f00dfeed",
    }
    # `rauc status` as a command: a stand-in printing what RAUC 1.8 prints.
    rauc = fake_setup.root / "rauc"
    rauc.write_text(
        "#!/bin/sh\n"
        '[ "$*" = "status --detailed --output-format=json" ] || exit 3\n'
        f"echo '{json.dumps(RAUC_STATUS)}'\n"
    )
    rauc.chmod(0o755)
    firmware = {
        "product": "gw",
        "architecture": "arm64",
        "platform": "p",
        "rauc": True,
        "rauc_command": str(rauc),
    }
    doc = fake_setup.doc(fake_setup.device("gw-0001", firmware=firmware))
    meta = load(fake_setup.write(doc)).devices[0].link_options["firmware_meta"]
    assert (meta["version"], meta["uuid"]) == ("3.1.0", "f00dfeed")
    rauc.write_text("#!/bin/sh\necho 'no service' >&2\nexit 1\n")
    with pytest.raises(AgentConfigError) as info:
        load(fake_setup.write(doc))
    assert info.value.key == "device[0].firmware.rauc" and "no service" in info.value.message


def test_env_file_syntax() -> None:
    assert parse_env_file("A=\"x y\"\nB='z'\n#C=1\nD=plain\nbad line\nE=\n") == {
        "A": "x y",
        "B": "z",
        "D": "plain",
        "E": "",
    }


def test_the_example_configuration_is_valid(tmp_path: Path, run_dir: Path) -> None:
    text = data_file("nhlink.example.toml")
    tomllib.loads(text)
    secret = tmp_path / "product-secret"
    secret.write_text(SECRET)
    release = tmp_path / "os-release"
    release.write_text('VERSION_ID="1.0"\nIMAGE_ID="u-1"\n')
    text = (
        text.replace("/etc/nhlink/product-secret", str(secret))
        .replace("/etc/machine-id", str(secret))
        .replace("/etc/os-release", str(release))
    )
    path = tmp_path / "nhlink.toml"
    path.write_text(text)
    config = load(path)
    spec = config.devices[0]
    assert spec.name == "gateway" and spec.writer is not None and spec.writer.type == "rauc"
    assert spec.link_options["product_key"] == "nhp_..."
    assert spec.extensions == {"health": True, "logging": True}


async def test_a_bad_config_exits_2_and_starts_nothing(fake_setup: Setup) -> None:
    doc = fake_setup.doc()
    doc["device"][0]["writer"]["type"] = "flash"
    path = fake_setup.write(doc)
    done = await nhlink_cmd("run", "-c", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nhlink: {path}: device[0].writer.type: unknown writer 'flash': file, command, rauc, "
        "swupdate or module:Class"
    ]
    assert not fake_setup.socket.exists() and not fake_setup.socket.parent.exists()
    assert not fake_setup.state.exists()
    checked = await nhlink_cmd("check", "--offline", "-c", str(path))
    assert checked.returncode == 2 and "device[0].writer.type" in checked.stderr


async def test_config_example_and_unit_are_printed() -> None:
    example = await nhlink_cmd("config", "example")
    assert example.returncode == 0 and "[[device]]" in example.stdout
    unit = await nhlink_cmd("config", "unit")
    assert unit.returncode == 0 and "Type=notify" in unit.stdout


def test_to_toml_round_trips() -> None:
    doc = {"a": 1, "b": {"c": [True, "x"], "d": {"e": 1.5}}, "device": [{"k": KEY, "t": {"u": 1}}]}
    assert tomllib.loads(to_toml(doc)) == doc


def test_example_is_in_the_package() -> None:
    # `nhlink config example` works from an installed wheel: the file is package data.
    import nhlink.agent

    assert (Path(next(iter(nhlink.agent.__path__))) / "data" / "nhlink.example.toml").is_file()
    assert os.access(Path(next(iter(nhlink.agent.__path__))) / "data" / "nhlink.service", os.R_OK)


def test_remote_access_sections_build_the_link_options(fake_setup: Setup) -> None:
    inbox = fake_setup.root / "inbox"
    inbox.mkdir()
    archives = fake_setup.root / "archives"
    archives.mkdir()
    doc = fake_setup.doc(
        fake_setup.device(
            "gw-r",
            network_interface="wwan0",
            extensions={"local_shell": True, "network_identity": True},
            shell={"command": ["/bin/sh", "-i"], "idle_timeout": 600, "env": {"A": "b"}},
            console={"upload_dir": str(inbox), "idle_timeout": 120},
            scripts={"commands": {"uptime": ["uptime"], "disk": "df -h"}, "timeout": 5},
            signing_keys={"fwup": ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]},
            archives={"directory": str(archives), "keep": 2},
        )
    )
    spec = load(fake_setup.write(doc)).devices[0]
    options = spec.remote_options()
    shell = options["extensions"]["local_shell"]
    assert shell.command == ["/bin/sh", "-i"] and shell.idle_timeout == 600
    assert shell.env == {"A": "b"}
    assert options["extensions"]["network_identity"] is True
    console = options["console"]
    assert console.upload_dir == inbox and console.shell.idle_timeout == 120
    assert options["scripts"].commands == {"uptime": ["uptime"], "disk": ["/bin/sh", "-c", "df -h"]}
    assert options["signing_keys"].fwup == ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="]
    assert options["archives"].directory == archives and options["archives"].keep == 2
    assert spec.link_options["network_interface"] == "wwan0"
    # Nothing of it without the sections: remote access stays off.
    plain = load(fake_setup.write(fake_setup.doc())).devices[0].remote_options()
    assert plain == {"extensions": {}}


@pytest.mark.parametrize(
    ("section", "value", "key", "message"),
    [
        ("shell", {"max_sessions": 0}, "device[0].shell.max_sessions", "at least 1"),
        (
            "console",
            {"upload_dir": "/nonexistent/inbox"},
            "device[0].console.upload_dir",
            "no such",
        ),
        ("scripts", {"timeout": 20}, "device[0].scripts.timeout", "15"),
        ("archives", {"directory": "/nonexistent"}, "device[0].archives.directory", "no such"),
        ("console", {"colour": True}, "device[0].console.colour", "unknown key"),
    ],
)
def test_remote_access_errors_name_the_key(
    fake_setup: Setup, section: str, value: dict[str, Any], key: str, message: str
) -> None:
    doc = fake_setup.doc(fake_setup.device("gw-r", **{section: value}))
    with pytest.raises(AgentConfigError) as info:
        load(fake_setup.write(doc))
    assert info.value.key == key, str(info.value)
    assert message in info.value.message, str(info.value)
