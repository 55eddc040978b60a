"""scripts/run (§6.6), report_network_interface (§6.9) and the console channel (§9), end to
end against FakeHub over 127.0.0.1 with a real PTY and /bin/sh."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest

from nhlink import ConfigError, NervesHubLink
from nhlink.remote import ConsoleOptions, ScriptOptions, ScriptResult, ShellOptions
from nhlink.remote.console import safe_upload_name
from nhlink.testing import FakeHub, Message
from tests.support import device_options

DEVICE = "gw-remote-0001"
REPORT = "report_network_interface"


def make_link(hub: FakeHub, **extra: Any) -> NervesHubLink:
    return NervesHubLink(**device_options(hub, DEVICE, **extra))


async def script_answer(hub: FakeHub, ref: str) -> Message:
    return await hub.wait_for_message(
        DEVICE,
        topic="device",
        event="scripts/run",
        predicate=lambda m: isinstance(m.payload, dict) and m.payload.get("ref") == ref,
        timeout=15,
    )


# -- scripts/run ------------------------------------------------------------------------------


async def test_scripts_answered_at_once_with_the_reason_by_default(hub: FakeHub) -> None:
    async with make_link(hub) as link:
        await link.wait_joined(10)
        assert await hub.run_script(DEVICE, "uptime", ref="abc+/1")
        answer = (await script_answer(hub, "abc+/1")).payload
        assert answer["result"] == "error" and answer["reason"] == "unsupported"
        assert "not supported" in answer["output"] and answer["return"] == ""


async def test_allow_listed_commands_run_and_others_are_refused(hub: FakeHub) -> None:
    options = ScriptOptions(
        commands={"greet": ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"]}
    )
    async with make_link(hub, scripts=options) as link:
        await link.wait_joined(10)
        assert await hub.run_script(DEVICE, " greet\n", ref="r1")
        answer = (await script_answer(hub, "r1")).payload
        assert answer["result"] == "completed"
        assert answer["output"] == "hello\noops\n" and answer["return"] == "3"
        assert await hub.run_script(DEVICE, "rm -rf /", ref="r2")
        refused = (await script_answer(hub, "r2")).payload
        assert refused["result"] == "error" and refused["reason"] == "not allowed"
        assert "greet" in refused["output"]


async def test_a_handler_runs_any_text_with_a_deadline_and_bounded_output(hub: FakeHub) -> None:
    seen: list[str] = []

    async def handler(text: str) -> ScriptResult | str:
        seen.append(text)
        if text == "big":
            return "x" * 100_000
        if text == "boom":
            raise RuntimeError("no such thing")
        if text == "slow":
            await hub.wait_for(lambda: False, timeout=60)  # never returns in time
        return ScriptResult(output="done", value=":ok")

    options = ScriptOptions(handler=handler, timeout=0.5, max_output=1000)
    async with make_link(hub, scripts=options) as link:
        await link.wait_joined(10)
        for ref, text in (("a", "status"), ("b", "big"), ("c", "boom"), ("d", "slow")):
            assert await hub.run_script(DEVICE, text, ref=ref)
        assert (await script_answer(hub, "a")).payload["return"] == ":ok"
        big = (await script_answer(hub, "b")).payload["output"]
        assert len(big) == 1000 and big.endswith("[output truncated by nhlink]")
        crashed = (await script_answer(hub, "c")).payload
        assert crashed["output"] == "RuntimeError: no such thing" and crashed["return"] == "nil"
        slow = (await script_answer(hub, "d")).payload
        assert slow["result"] == "error" and slow["reason"] == "timeout"
        assert "timeout exceeded" in slow["output"]


async def test_client_run_script_and_the_connecting_code(hub: FakeHub) -> None:
    class Client(nhlink_client()):  # type: ignore[misc]
        def run_script(self, text: str) -> str:
            return f"ran {text}"

    async with make_link(hub, client=Client()) as link:
        await link.wait_joined(10)
        assert await hub.run_script(DEVICE, "hello()", ref="connecting_code")
        answer = (await script_answer(hub, "connecting_code")).payload
        assert answer["result"] == "completed" and answer["output"] == "ran hello()"


def nhlink_client() -> type:
    from nhlink import Client

    return Client


@pytest.mark.parametrize(
    "changes",
    [
        {"timeout": 15},
        {"max_running": 0},
        {"commands": {"x": "ls -l"}},
        {"commands": {" x": ["a"]}},
    ],
)
def test_script_options_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ScriptOptions(**changes)


# -- report_network_interface -----------------------------------------------------------------


async def test_the_interface_of_the_connection_is_reported_after_every_join(hub: FakeHub) -> None:
    async with make_link(hub) as link:
        await link.wait_joined(10)
        report = await hub.wait_for_message(
            DEVICE, topic="device", event="report_network_interface"
        )
        assert report.payload == {"interface": "lo"}  # 127.0.0.1 is on the loopback interface
        await hub.disconnect(DEVICE, 1012)
        await hub.wait_for(
            lambda: (
                len(hub.devices[DEVICE].messages_for("device", "report_network_interface")) == 2
            ),
            timeout=10,
        )


async def test_interface_fixed_name_callable_and_off(hub: FakeHub) -> None:
    async with make_link(hub, network_interface="wwan0") as link:
        await link.wait_joined(10)
        report = await hub.wait_for_message(
            DEVICE, topic="device", event="report_network_interface"
        )
        assert report.payload == {"interface": "wwan0"}
    async with make_link(hub, identifier="gw-remote-0002", network_interface=lambda: "wlan0"):
        report = await hub.wait_for_message(
            "gw-remote-0002", topic="device", event="report_network_interface"
        )
        assert report.payload == {"interface": "wlan0"}
    async with make_link(hub, identifier="gw-remote-0003", network_interface=False) as link:
        await link.wait_joined(10)
        assert await hub.run_script("gw-remote-0003", "x", ref="sync")  # a later message...
        await hub.wait_for_message("gw-remote-0003", topic="device", event="scripts/run")
        events = [m.event for m in hub.devices["gw-remote-0003"].messages_for("device")]
        assert "report_network_interface" not in events  # ...and no report before it


# -- console ----------------------------------------------------------------------------------


def console_output(hub: FakeHub) -> str:
    return "".join(m.payload["data"] for m in hub.devices[DEVICE].messages_for("console", "up"))


async def wait_console(hub: FakeHub, text: str) -> None:
    await hub.wait_for(lambda: text in console_output(hub), timeout=10)


async def dn(hub: FakeHub, data: str) -> None:
    assert await hub.push(DEVICE, "console", "dn", {"data": data})


SHELL = ShellOptions(command=["/bin/sh", "-i"], env={"PS1": "$ "}, batch_delay=0.005)


async def test_console_shell_resize_exit_and_restart(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nhlink.remote")
    async with make_link(hub, console=ConsoleOptions(shell=SHELL)) as link:
        await link.wait_joined(10)
        join = await hub.wait_for_message(DEVICE, topic="console", event="phx_join")
        assert join.payload["console_version"] == "2.0.0"
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        assert await hub.push(DEVICE, "console", "window_size", {"height": 41, "width": 99})
        await dn(hub, "stty size; echo con-$((40+2))\r")
        await wait_console(hub, "con-42")
        assert "41 99" in console_output(hub)
        await dn(hub, "exit 5\r")
        await wait_console(hub, "shell exited with status 5")
        await dn(hub, "echo second-$((1+1))\r")  # the next input starts a new shell
        await wait_console(hub, "second-2")
        sent = {m.event for m in hub.devices[DEVICE].messages_for("console")}
        assert sent <= {"phx_join", "up"}  # only what the server's console channel handles
        assert not [m for m in hub.devices[DEVICE].messages_for("console") if m.rejected]
    assert "remote shell started via console" in caplog.text
    assert "con-" not in caplog.text


async def test_console_off_by_default(hub: FakeHub) -> None:
    async with make_link(hub) as link:
        await link.wait_joined(10)
        await hub.wait_for_message(DEVICE, topic="device", event="report_network_interface")
        assert link.remote.console is None
        assert not hub.devices[DEVICE].messages_for("console")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def upload(hub: FakeHub, name: str, pieces: list[str], user: int = 7) -> None:
    assert await hub.push(
        DEVICE, "console", "file-data/start", {"filename": name, "uploaded_by": user}
    )
    for i, data in enumerate(pieces):
        assert await hub.push(
            DEVICE, "console", "file-data", {"filename": name, "chunk": i % 3, "data": data}
        )
    assert await hub.push(
        DEVICE, "console", "file-data/stop", {"filename": name, "uploaded_by": user}
    )


async def test_console_uploads_sanitised_checked_and_renamed_into_place(
    hub: FakeHub, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "exists.txt").write_text("old")
    options = ConsoleOptions(shell=SHELL, upload_dir=inbox, max_upload=4096)
    async with make_link(hub, console=options) as link:
        await link.wait_joined(10)
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        blob = bytes(range(256)) * 9  # 2304 bytes, in arrival order; chunk numbers repeat
        await upload(hub, "data.bin", [b64(blob[i : i + 1024]) for i in range(0, len(blob), 1024)])
        for name in ("../evil", "/etc/passwd", "..", ".hidden", "a/b", "nul\x00x", ""):
            await upload(hub, name, [b64(b"bad")])
        await upload(hub, "exists.txt", [b64(b"new")])
        await upload(hub, "bad64.txt", ["!!!notbase64"])
        await upload(hub, "big.bin", [b64(b"x" * 1024)] * 5)
        await upload(hub, "last.txt", [b64(b"end")])
        await hub.wait_for(lambda: (inbox / "last.txt").exists(), timeout=10)
        assert (inbox / "data.bin").read_bytes() == blob
        assert (inbox / "exists.txt").read_text() == "old"
        assert sorted(p.name for p in inbox.iterdir()) == ["data.bin", "exists.txt", "last.txt"]
        assert not (tmp_path / "evil").exists()
        text = console_output(hub)
        assert "not a plain file name" in text and "exists" in text
        assert "not valid base64" in text and "larger than 4096" in text


async def test_console_upload_refused_without_upload_dir_and_partial_discarded(
    hub: FakeHub, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with make_link(hub, console=ConsoleOptions(shell=SHELL)) as link:
        await link.wait_joined(10)
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        await upload(hub, "x.txt", [b64(b"x")])
        await wait_console(hub, "uploads are not enabled")
    options = ConsoleOptions(shell=SHELL, upload_dir=inbox)
    async with make_link(hub, console=options) as link:
        await link.wait_joined(10)
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        assert await hub.push(DEVICE, "console", "file-data/start", {"filename": "p.txt"})
        assert await hub.push(
            DEVICE, "console", "file-data", {"filename": "p.txt", "chunk": 0, "data": b64(b"1")}
        )
        assert await hub.run_script(DEVICE, "sync", ref="s1")  # handled after the pushes
        await script_answer(hub, "s1")
        assert len(list(inbox.iterdir())) == 1  # the temporary file
        await hub.disconnect(DEVICE, 1012)
        await hub.wait_for(lambda: not any(inbox.iterdir()), timeout=10)  # discarded


async def test_send_file_to_the_console(hub: FakeHub, tmp_path: Path) -> None:
    path = tmp_path / "report.log"
    payload = bytes(range(256)) * 10
    path.write_bytes(payload)
    async with make_link(hub, console=ConsoleOptions(shell=SHELL, max_download=4000)) as link:
        await link.wait_joined(10)
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        assert link.remote.console is not None
        await link.remote.console.send_file(path)
        await hub.wait_for_message(DEVICE, topic="console", event="file-data/stop")
        messages = hub.devices[DEVICE].messages_for("console")
        files = [m for m in messages if m.event.startswith("file-data")]
        assert files[0].event == "file-data/start" and files[-1].event == "file-data/stop"
        pieces = [m.payload for m in files if m.event == "file-data"]
        assert [p["chunk"] for p in pieces] == [0, 1, 2]
        assert b"".join(base64.b64decode(p["data"]) for p in pieces) == payload
        path.write_bytes(b"x" * 5000)
        with pytest.raises(ValueError, match="larger than 4000"):
            await link.remote.console.send_file(path)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a.txt", True), ("é.bin", True), ("..", False), ("a/b", False), ("a\\b", False),
     (".x", False), ("x" * 256, False), (" x", False), ("a\nb", False), (7, False)],
)  # fmt: skip
def test_safe_upload_name(name: Any, ok: bool) -> None:
    assert (safe_upload_name(name) is not None) is ok


async def test_console_idle_timeout_ends_the_shell_and_input_starts_a_new_one(
    hub: FakeHub,
) -> None:
    quick = ShellOptions(command=["/bin/sh", "-i"], env={"PS1": "$ "}, idle_timeout=0.3)
    async with make_link(hub, console=ConsoleOptions(shell=quick)) as link:
        await link.wait_joined(10)
        await hub.wait_for(lambda: "console" in hub.devices[DEVICE].channels)
        await dn(hub, "echo one-$((0+1))\r")
        await wait_console(hub, "one-1")
        await wait_console(hub, "Session timeout")
        await wait_console(hub, "shell exited")
        await dn(hub, "echo two-$((1+1))\r")
        await wait_console(hub, "two-2")
