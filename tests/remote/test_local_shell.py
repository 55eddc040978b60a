"""The local_shell extension (PROTOCOL.md §8.6) end to end: FakeHub, a real PTY, /bin/sh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from nhlink import ConfigError, NervesHubLink
from nhlink.remote import LocalShellExtension, PtyShell, ShellOptions
from nhlink.testing import FakeHub, Message
from tests.extensions._support import DEVICE, KEY, SECRET, make_hub, running_link, wait_ext

SH = ShellOptions(command=["/bin/sh", "-i"], env={"PS1": "$ "}, batch_delay=0.005)


def output(hub: FakeHub) -> str:
    record = hub.devices[DEVICE]
    return "".join(
        m.payload["data"] for m in record.messages_for("extensions", "local_shell:shell_output")
    )


async def wait_output(hub: FakeHub, text: str, timeout: float = 10.0) -> str:
    await hub.wait_for(lambda: text in output(hub), timeout=timeout)
    return output(hub)


def running_shell(extension: LocalShellExtension) -> PtyShell | None:
    return extension.shell


async def type_in(hub: FakeHub, data: str) -> None:
    assert await hub.push(DEVICE, "extensions", "local_shell:shell_input", {"data": data})


async def exited(hub: FakeHub) -> Message:
    return await wait_ext(hub, "local_shell:shell_exited", timeout=10)


async def test_type_a_command_read_output_resize_and_exit_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "nhlink.remote")
    async with make_hub({"local_shell"}) as hub, running_link(hub, {"local_shell": SH}) as link:
        status = await wait_ext(hub, "local_shell:request_status")
        assert status.payload == {"status": "started"}
        await type_in(hub, "echo hello-$((6*7))\r")
        await wait_output(hub, "hello-42")
        assert await hub.push(
            DEVICE, "extensions", "local_shell:window_size", {"rows": 33, "cols": 101}
        )
        await type_in(hub, "stty size\r")
        await wait_output(hub, "33 101")
        await type_in(hub, "printf 'caf\\303\\251\\n'\r")  # a two-byte character, whole
        await wait_output(hub, "café")
        await type_in(hub, "exit 7\r")
        assert (await exited(hub)).payload == {"exit_code": 7}
        extension = link.extensions.get("local_shell")
        assert isinstance(extension, LocalShellExtension)
        assert extension.shell is None
        # §8.6: input without a shell is ignored; the shell stays down until the next attach.
        await type_in(hub, "echo again\r")
    text = caplog.text
    assert "remote shell started via local_shell" in text
    assert "exit status 7" in text
    assert "hello" not in text and "stty" not in text  # sessions are logged, keystrokes never


async def test_kill_signal_reported_as_128_plus_n() -> None:
    async with make_hub({"local_shell"}) as hub, running_link(hub, {"local_shell": SH}):
        await wait_ext(hub, "local_shell:request_status")
        await type_in(hub, "echo ready\r")
        await wait_output(hub, "ready")
        assert await hub.push(DEVICE, "extensions", "local_shell:kill_shell", {"signal": 9})
        assert (await exited(hub)).payload == {"exit_code": 137}


async def test_detach_ends_the_shell_and_reattach_starts_a_new_one() -> None:
    async with make_hub({"local_shell"}) as hub, running_link(hub, {"local_shell": SH}) as link:
        await wait_ext(hub, "local_shell:request_status")
        extension = link.extensions.get("local_shell")
        assert isinstance(extension, LocalShellExtension)
        shell = extension.shell
        assert shell is not None and shell.running
        assert await hub.detach_extensions(DEVICE, ["local_shell"])
        await wait_ext(hub, "local_shell:detached")
        await shell.exited.wait()
        assert shell.returncode is not None and extension.shell is None
        assert await hub.attach_extensions(DEVICE, ["local_shell"])
        await hub.wait_for(
            lambda: (
                len(hub.devices[DEVICE].messages_for("extensions", "local_shell:request_status"))
                == 2
            )
        )
        again = running_shell(extension)  # a new shell for the new attachment
        assert again is not None and again is not shell


async def test_a_command_that_cannot_start_is_reported_failed() -> None:
    bad = ShellOptions(command=["/nonexistent/shell"])
    async with make_hub({"local_shell"}) as hub, running_link(hub, {"local_shell": bad}):
        status = await wait_ext(hub, "local_shell:request_status")
        assert status.payload["status"] == "failed"
        assert "/nonexistent/shell" in status.payload["reason"]


async def test_idle_timeout_ends_the_shell() -> None:
    quick = ShellOptions(command=["/bin/sh", "-i"], idle_timeout=0.3, batch_delay=0)
    async with make_hub({"local_shell"}) as hub, running_link(hub, {"local_shell": quick}):
        await wait_ext(hub, "local_shell:request_status")
        await exited(hub)
        assert "idle timeout" in output(hub)


async def test_disabled_by_default_answers_nothing_and_starts_nothing() -> None:
    async with (
        make_hub({"local_shell", "health"}) as hub,
        running_link(hub, {"health": True}) as link,
    ):
        await wait_ext(hub, "health:report")
        assert "local_shell" not in hub.devices[DEVICE].requested_extensions
        # The server's traffic reaches a device that did not configure the extension...
        assert await hub.push(DEVICE, "extensions", "local_shell:request_shell", {})
        assert await hub.push(DEVICE, "extensions", "local_shell:shell_input", {"data": "id\r"})
        # ...and a later push is handled after them (one read loop, in order).
        assert await hub.push(DEVICE, "extensions", "health:check", {})
        await hub.wait_for(
            lambda: len(hub.devices[DEVICE].messages_for("extensions", "health:report")) == 2
        )
        sent = [m.event for m in hub.devices[DEVICE].messages_for("extensions")]
        assert not any(event.startswith("local_shell") for event in sent)
        assert link.extensions.get("local_shell") is None


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("yes", "expected True or ShellOptions"),
        (ShellOptions, "instance"),
    ],
)
def test_config_errors(value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NervesHubLink(
            extensions={"local_shell": value},
            host="127.0.0.1",
            port=1,
            ssl=False,
            identifier="d",
            product_key="k",
            product_secret="s",
            firmware_meta={
                "uuid": "u",
                "product": "p",
                "architecture": "a",
                "version": "1.0.0",
                "platform": "x",
            },
        )


@pytest.mark.parametrize(
    "changes",
    [{"command": "/bin/sh -i"}, {"idle_timeout": 0}, {"max_sessions": 0}, {"env": {"A=B": "c"}}],
)
def test_shell_options_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ShellOptions(**changes)


async def test_a_shell_printing_100_mib_stays_bounded_and_heartbeats_flow() -> None:
    """The device runs in its own process so that its memory can be measured: its peak RSS
    may not grow by more than a bound while 100 MiB pass through a hub that reads them."""
    size = int(os.environ.get("NHLINK_FLOOD_BYTES", 100 * 1024 * 1024))
    script = Path(__file__).with_name("_flood_device.py")
    async with make_hub({"local_shell"}) as hub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(hub.port),
            KEY,
            SECRET,
            DEVICE,
            str(size),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = (await asyncio.wait_for(proc.stdout.readline(), 30)).split()
            assert ready[0] == b"ready"
            baseline = int(ready[1])
            await wait_ext(hub, "local_shell:request_status")
            await type_in(hub, "go\r")
            done = await wait_ext(hub, "local_shell:shell_exited", timeout=240)
            assert done.payload == {"exit_code": 0}
            proc.stdin.close()
            peak_line = (await asyncio.wait_for(proc.stdout.readline(), 30)).split()
            assert peak_line[0] == b"peak"
            peak = int(peak_line[1])
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        record = hub.devices[DEVICE]
        chunks = record.messages_for("extensions", "local_shell:shell_output")
        received = sum(m.payload["data"].count("x") for m in chunks)
        assert received == size
        assert "FLOOD-DONE" in chunks[-1].payload["data"] or "FLOOD-DONE" in "".join(
            m.payload["data"] for m in chunks[-3:]
        )
        assert max(len(m.payload["data"]) for m in chunks) <= 16384  # batched, bounded
        assert record.connections == 1  # never dropped: heartbeats were answered
        first, last = chunks[0].monotonic, chunks[-1].monotonic
        beats = [
            m for m in record.messages_for("phoenix", "heartbeat") if first <= m.monotonic <= last
        ]
        assert beats, f"no heartbeat during {last - first:.2f} s of output"
        growth_mib = (peak - baseline) / 1024
        print(f"flood: peak RSS growth {growth_mib:.1f} MiB, {len(beats)} heartbeats during output")
        assert growth_mib < 48, f"device peak RSS grew {growth_mib:.1f} MiB for 100 MiB output"
