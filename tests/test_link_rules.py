"""Connection rules a device must keep whatever the server or the application does
(PROTOCOL.md §4.4, §10, §12, §14): join deadline, backoff that survives evictions, validation
reported while joined, callbacks that cannot stall the link, strict configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import nhlink
from nhlink import ConfigError, JoinTimeout, LinkState, NervesHubLink
from nhlink.testing import FakeHub
from tests.support import META, Recorder, device_options

# -- join deadline --------------------------------------------------------------------------------


async def test_unanswered_join_closes_and_reconnects(hub: FakeHub) -> None:
    hub.ignore_joins = True  # heartbeats are answered, the join never is
    async with NervesHubLink(**device_options(hub, join_timeout=0.3)) as link:
        status = await link.wait_for(lambda s: isinstance(s.last_error, JoinTimeout), 5)
        assert "did not answer the device channel join within 0.3 s" in str(status.last_error)
        assert status.state is not LinkState.JOINED
        await hub.wait_for_attempts("gw-0001", 2, status=101, timeout=5)  # reconnected
        hub.ignore_joins = False
        await link.wait_joined(5)


# -- backoff: evictions do not reset it -----------------------------------------------------

SAME_IDENTITY_DEVICE = """
import asyncio, json, sys
import nhlink
async def main():
    async with nhlink.NervesHubLink(**json.loads(sys.argv[1])):
        await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_two_processes_with_one_identity_back_off(hub: FakeHub) -> None:
    # Each connection evicts the other (close 1001, §4.4). A join must not reset the backoff
    # unless the connection then stays up: the delays grow instead of a 1-s eviction loop.
    opts = device_options(
        hub, backoff_initial=0.05, backoff_max=0.8, backoff_jitter=0.0, backoff_reset_after=5.0
    )
    root = str(Path(next(iter(nhlink.__path__))).parent)
    other = subprocess.Popen(  # noqa: ASYNC220 - a second device process, killed below
        [sys.executable, "-c", SAME_IDENTITY_DEVICE, json.dumps(opts)],
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        async with NervesHubLink(**opts) as link:
            status = await link.wait_for(lambda s: (s.last_retry_delay or 0) >= 0.4, 20)
            assert status.last_close_code in (1001, None)
            assert 1001 in hub.devices["gw-0001"].close_codes
    finally:
        other.kill()
        other.wait(10)


async def test_close_codes_are_explained(hub: FakeHub, caplog: pytest.LogCaptureFixture) -> None:
    async with NervesHubLink(**device_options(hub)) as link:
        await link.wait_joined(5)
        with caplog.at_level(logging.WARNING, "nhlink.link"):
            for code, words in (
                (1001, "same device identity connected elsewhere"),
                (1012, "server is restarting"),
                (1002, "idle timeout"),
            ):
                joins = link.status.joins

                def rejoined(s: nhlink.LinkStatus, before: int = joins) -> bool:
                    return s.joins > before and s.joined

                await hub.disconnect("gw-0001", code=code)
                status = await link.wait_for(rejoined, 5)
                assert status.last_close_code is None  # a new connection by now
                assert words in caplog.text


# -- firmware validation reported while joined (§10) -------------------------------------------


async def test_validation_by_the_client_is_pushed_while_joined(hub: FakeHub) -> None:
    class Validating(nhlink.Client):
        valid = False

        def firmware_validated(self) -> bool | None:
            return self.valid

    client = Validating()
    opts = device_options(hub, validation_poll_interval=0.05)
    async with NervesHubLink(client=client, **opts) as link:
        await link.wait_joined(5)
        record = hub.devices["gw-0001"]
        assert record.join_params is not None
        assert record.join_params["meta"]["firmware_validated"] is False
        client.valid = True  # e.g. the application's health checks passed
        await hub.wait_for_message("gw-0001", topic="device", event="firmware_validated")
        await link.confirm_update()  # already told: not sent twice on this connection
        await hub.wait_for(lambda: len(record.messages) > 0)
    assert len(record.messages_for("device", "firmware_validated")) == 1


async def test_validation_by_the_writer_is_pushed_while_joined(
    hub: FakeHub, tmp_path: Path
) -> None:
    from nhlink.update.writers import FileWriter

    class PlatformWriter(FileWriter):
        confirmed_by_platform: bool | None = False

        def is_confirmed(self) -> bool | None:
            return self.confirmed_by_platform

    writer = PlatformWriter(tmp_path / "fw.img")
    opts = device_options(hub, validation_poll_interval=0.05)
    async with NervesHubLink(fwup_writer=writer, **opts) as link:
        await link.wait_joined(5)
        writer.confirmed_by_platform = True
        await hub.wait_for_message("gw-0001", topic="device", event="firmware_validated")


# -- callbacks cannot stall the link (§14.3) -----------------------------------------------------


class Hanging(Recorder):
    """Every callback hangs forever (a bug in the application)."""

    async def handle_connected(self) -> None:  # type: ignore[override]
        await asyncio.Event().wait()

    async def update_available(self, firmware_meta: Mapping[str, Any]) -> Any:
        self.asked.append(firmware_meta)
        await asyncio.Event().wait()


async def test_hanging_callbacks_do_not_stall_join_or_updates(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    client = Hanging()
    opts = device_options(hub, callback_timeout=0.3, heartbeat_interval=0.1)
    with caplog.at_level(logging.ERROR):
        async with NervesHubLink(client=client, **opts) as link:
            await link.wait_joined(5)  # handle_connected hangs; the join does not wait for it
            record = hub.devices["gw-0001"]
            await hub.wait_for(lambda: record.heartbeats >= 2, timeout=5)
            await hub.push_update("gw-0001", "https://127.0.0.1:1/fw.bin", size=10)
            msg = await hub.wait_for_message(
                "gw-0001",
                topic="device",
                event="status_update",
                predicate=lambda m: m.payload.get("status") == "rescheduled",
                timeout=5,
            )
            assert "did not answer" in msg.payload["reason"]
            assert link.status.joined
    assert "callback handle_connected did not return within 0.3 s" in caplog.text
    assert "callback update_available did not return within 0.3 s" in caplog.text


async def test_blocking_plain_callback_is_named(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    returned = asyncio.Event()

    class Blocking(nhlink.Client):
        def identify(self) -> None:
            time.sleep(0.2)  # blocks the event loop: cannot be interrupted, but is reported
            returned.set()  # (its waiter runs after the overrun was logged)

    with caplog.at_level(logging.ERROR):
        async with NervesHubLink(client=Blocking(), **device_options(hub, callback_timeout=0.1)):
            await hub.wait_for_device("gw-0001")
            await hub.identify("gw-0001")
            await asyncio.wait_for(returned.wait(), 5)
    assert "callback identify blocked the event loop" in caplog.text


# -- configuration: security switches and names ----------------------------------------------------


@pytest.mark.parametrize(
    "option", ["dangerously_disable_verification", "allow_unverified_firmware"]
)
@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1, None, "False"])
def test_security_switches_take_real_booleans(hub: FakeHub, option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        NervesHubLink(**device_options(hub, **{option: value}))
    assert info.value.option == option


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", ".hidden", "", "-x", "a" * 129, "a b"])
def test_name_is_a_safe_file_name(hub: FakeHub, tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        NervesHubLink(**device_options(hub, state_dir=tmp_path, name=name))
    assert info.value.option == "name"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "host", ["hub/evil?x=", "hub?x=1", "user@hub", "hub:443", "hub#frag", "-hub", "hub..com", " "]
)
def test_host_is_a_host_name_or_an_address(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        NervesHubLink(
            host=host, product_key="k", product_secret="s", identifier="i", firmware_meta=META
        )
    assert info.value.option == "host"


@pytest.mark.parametrize(
    ("host", "url_host"),
    [
        ("devices.example.com", "devices.example.com"),
        ("gw_hub.local", "gw_hub.local"),
        ("10.0.0.5", "10.0.0.5"),
        ("::1", "[::1]"),
        ("[fe80::1]", "[fe80::1]"),
    ],
)
def test_hosts_accepted(host: str, url_host: str) -> None:
    link = NervesHubLink(
        host=host, product_key="k", product_secret="s", identifier="i", firmware_meta=META
    )
    assert link.config.url == f"wss://{url_host}:443/device-socket/websocket?vsn=2.0.0"


def test_guards_survive_python_dash_o() -> None:
    # Checks that guard behaviour are real checks, not asserts that `python -O` strips.
    script = """
import asyncio
from nhlink.errors import LocalProtocolError
from nhlink.update.manager import UpdateManager
class Host:
    name = "x"; client = None; writer = None; store = None; firmware_ssl_context = None
    async def send(self, *a): raise AssertionError("must not be sent")
async def main():
    try:
        await UpdateManager(Host()).report("fwup_complete")
    except LocalProtocolError as exc:
        print("refused:", exc)
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused: not a NervesHub update status: 'fwup_complete'" in done.stdout
