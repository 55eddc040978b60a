"""The link over MessagePack (vsn 3.0.0, PROTOCOL.md §4.6) against FakeHub, whose MessagePack is
the ``msgpack`` package (an implementation independent of nhlink's codec).

The whole end-to-end suite also runs over MessagePack with ``NHLINK_TEST_SERIALIZER=msgpack``
(tests/support.py); these tests pin what is specific to the serializer choice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import nhlink.link
from nhlink import NervesHubLink
from nhlink.config import LinkConfig
from nhlink.errors import ConfigError
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.update.writers import FileWriter
from tests.support import (
    Recorder,
    device_options,
    image,
    new_hub,
    ota_options,
    push,
    sha,
    statuses,
    wait_status,
)

msgpack = pytest.importorskip("msgpack")

IDENT = "gw-0001"


@pytest.fixture(autouse=True)
def fresh_fallback_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in a "new process": no server remembered as refusing vsn 3.0.0."""
    monkeypatch.setattr(nhlink.link, "_MSGPACK_REFUSED", set())


def msgpack_options(hub: FakeHub, ident: str = IDENT, **extra: Any) -> dict[str, Any]:
    return device_options(hub, ident, serializer="msgpack", **extra)


def test_config() -> None:
    config = LinkConfig.build(**device_options(4000, serializer="msgpack"))
    assert config.serializer == "msgpack"
    assert config.url == "ws://127.0.0.1:4000/device-socket/websocket?vsn=3.0.0"
    assert config.url_for("json").endswith("?vsn=2.0.0")
    assert LinkConfig.build(**device_options(4000, serializer="json")).url.endswith("vsn=2.0.0")
    with pytest.raises(ConfigError, match="serializer"):
        LinkConfig.build(**device_options(4000, serializer="xml"))


async def test_joins_and_heartbeats_over_msgpack(hub: FakeHub) -> None:
    async with NervesHubLink(**msgpack_options(hub, heartbeat_interval=0.05)) as link:
        await link.wait_joined(5)
        record = hub.devices[IDENT]
        assert record.serializer == "msgpack"
        assert [(a.status, a.vsn, a.serializer) for a in hub.attempts] == [
            (101, "3.0.0", "msgpack")
        ]
        assert link.session.binary
        # Heartbeats are answered (binary frames both ways): a push sent now is "delivered"
        # once a later heartbeat's reply arrives.
        ref = await link.send("device", "status_update", {"status": "idle"})
        await hub.wait_for(lambda: link.delivered(ref), timeout=5)
        assert record.join_params is not None
        assert record.join_params["nerves_fw_uuid"] == link.config.firmware_meta["uuid"]


async def test_ota_over_msgpack_verifies_and_completes(
    hub: FakeHub, fw: FirmwareServer, tmp_path: Path
) -> None:
    data = image(300_000, seed=7)
    url = fw.add("fw.bin", data)
    target = tmp_path / "target.img"
    options = ota_options(hub, tmp_path, serializer="msgpack")
    async with NervesHubLink(fwup_writer=FileWriter(target), **options) as link:
        await link.wait_joined(5)
        await push(hub, url, data)
        await wait_status(hub, "completed")
    assert sha(target.read_bytes()) == sha(data)
    assert statuses(hub)[-1] == "completed"
    assert hub.devices[IDENT].serializer == "msgpack"


async def test_falls_back_to_json_once_when_the_server_refuses_vsn3(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nhlink")
    async with new_hub(serializers=("json",)) as old_server:
        recorder = Recorder()
        async with NervesHubLink(client=recorder, **msgpack_options(old_server)) as link:
            await link.wait_joined(5)
            assert not link.session.binary
            assert old_server.devices[IDENT].serializer == "json"
            assert [(a.status, a.vsn) for a in old_server.attempts] == [
                (403, "3.0.0"),
                (101, "2.0.0"),
            ]
            # Remembered: the next connection asks for JSON straight away.
            link.reconnect()
            record = old_server.devices[IDENT]
            await old_server.wait_for(lambda: record.joins >= 2, timeout=5)
            # So does another link to the same server in this process.
            async with NervesHubLink(**msgpack_options(old_server, "gw-0002")) as other:
                await other.wait_joined(5)
        refused = [r for r in caplog.records if "refused vsn 3.0.0" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.WARNING
        assert [(a.status, a.vsn) for a in old_server.attempts[2:]] == [
            (101, "2.0.0"),
            (101, "2.0.0"),
        ]
        assert recorder.events[:3] == ["connected", "disconnected", "connected"]


async def test_fallback_is_per_server(hub: FakeHub) -> None:
    async with new_hub(serializers=("json",)) as old_server:
        async with NervesHubLink(**msgpack_options(old_server)) as old_link:
            await old_link.wait_joined(5)
        async with NervesHubLink(**msgpack_options(hub, "gw-0002")) as new_link:
            await new_link.wait_joined(5)
            assert new_link.session.binary
    assert hub.devices["gw-0002"].serializer == "msgpack"


async def test_a_json_only_link_never_asks_for_vsn3(hub: FakeHub) -> None:
    async with NervesHubLink(**device_options(hub, serializer="json")) as link:
        await link.wait_joined(5)
        assert not link.session.binary
    assert [a.vsn for a in hub.attempts] == ["2.0.0"]


async def test_wrong_frames_are_dropped_and_the_link_stays(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nhlink")
    recorder = Recorder()
    async with NervesHubLink(client=recorder, **msgpack_options(hub)) as link:
        await link.wait_joined(5)
        # A text frame has no place on a vsn 3 socket; nor has a binary frame with bytes
        # after the value, an ext value, or a 4-element array.
        text = json.dumps([None, None, "device", "identify", {}])
        assert await hub.send_raw(IDENT, text)
        good = msgpack.packb([None, None, "device", "identify", {}])
        ext = good[:-1] + b"\xd6\xff\x00\x00\x00\x00"  # a timestamp instead of the payload
        for bad in (good + b"\x00", ext, b"\x94\xc0\xc0\xc0\xc0"):
            assert await hub.send_raw(IDENT, bad)
        # Integer refs from a peer are strings to us: a well-formed frame still gets through.
        assert await hub.send_raw(IDENT, msgpack.packb([7, None, "device", "identify", {}]))
        await asyncio.wait_for(recorder.identified.wait(), 5)
        assert link.status.joined
        assert hub.devices[IDENT].connections == 1
    assert recorder.events.count("identify") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("unexpected text frame (vsn 3.0.0)" in m for m in messages)
    assert sum("dropping malformed message" in m for m in messages) == 3
