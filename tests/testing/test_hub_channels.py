"""FakeHub's Phoenix v2 session: device and extensions channels (§4-§8), over real sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nhlink.testing import FakeHub
from tests.testing.conftest import (
    IDENT,
    JOIN_PARAMS,
    FrozenClock,
    close_code,
    join_device,
    open_device,
    recv,
    send,
)

OK_EMPTY = {"status": "ok", "response": {}}


async def test_device_join_then_extensions_get(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        assert await join_device(ws) == ["1", "1", "device", "phx_reply", OK_EMPTY]
        # §6.3: device_api_version 2.2.0 -> a fastlane push with null refs.
        assert await recv(ws) == [None, None, "device", "extensions:get", {}]
        record = await hub.wait_for_device(IDENT)
        assert record.join_params == JOIN_PARAMS
        assert record.joined
        assert record.channels == {"device": "1"}
        assert record.joins == 1
        assert record.warnings == []


@pytest.mark.parametrize("api", [None, "2.1.0", "2.2.0-rc.1", "bogus"])
async def test_no_extensions_get_below_2_2_0(hub: FakeHub, api: str | None) -> None:
    params = dict(JOIN_PARAMS)
    if api is None:
        del params["device_api_version"]
    else:
        params["device_api_version"] = api
    async with await open_device(hub) as ws:
        assert (await join_device(ws, params))[4] == OK_EMPTY
        # The hub handles frames in order, so the very next frame answers this heartbeat.
        await send(ws, [None, "2", "phoenix", "heartbeat", {}])
        assert await recv(ws) == [None, "2", "phoenix", "phx_reply", OK_EMPTY]


async def test_join_pushes_in_server_order(clock: FrozenClock) -> None:
    async with FakeHub(
        shared_secrets={"nhp_k": "s"},
        clock=clock,
        fwup_public_keys=["fwupkey=="],
        archive_public_keys=["archkey=="],
        connecting_code="IO.puts(:hi)",
    ) as hub:
        params = dict(JOIN_PARAMS, fwup_public_keys="on_connect", archive_public_keys="on_connect")
        async with await open_device(hub, key="nhp_k", secret="s") as ws:
            await join_device(ws, params, ref="7")
            assert await recv(ws) == [
                None,
                None,
                "device",
                "fwup_public_keys",
                {"keys": ["fwupkey=="]},
            ]
            assert await recv(ws) == [
                None,
                None,
                "device",
                "archive_public_keys",
                {"keys": ["archkey=="]},
            ]
            assert await recv(ws) == [None, None, "device", "extensions:get", {}]
            assert await recv(ws) == [
                "7",
                None,
                "device",
                "scripts/run",
                {"text": "IO.puts(:hi)", "ref": "connecting_code"},
            ]


async def test_legacy_update_in_join_reply(clock: FrozenClock) -> None:
    update = {"update_available": True, "firmware_url": "https://x/fw", "firmware_meta": {}}
    async with (
        FakeHub(shared_secrets={"nhp_k": "s"}, clock=clock, legacy_update_in_join=update) as hub,
        await open_device(hub, key="nhp_k", secret="s") as ws,
    ):
        assert (await join_device(ws))[4] == {"status": "ok", "response": update}


async def test_reject_joins(hub: FakeHub) -> None:
    hub.reject_joins = True
    async with await open_device(hub) as ws:
        reply = await join_device(ws)
        assert reply[4] == {"status": "error", "response": {"error": "could not connect"}}
        assert not hub.devices[IDENT].joined


async def test_heartbeat_reply_and_switch_off(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, [None, "5", "phoenix", "heartbeat", {}])
        assert await recv(ws) == [None, "5", "phoenix", "phx_reply", OK_EMPTY]
        hub.stop_heartbeat_replies(IDENT)
        await send(ws, [None, "6", "phoenix", "heartbeat", {}])
        await hub.wait_for_message(IDENT, event="heartbeat", predicate=lambda m: m.ref == "6")
        hub.resume_heartbeat_replies(IDENT)
        await send(ws, [None, "7", "phoenix", "heartbeat", {}])
        # "6" was never answered: the next frame is the reply to "7".
        assert await recv(ws) == [None, "7", "phoenix", "phx_reply", OK_EMPTY]
        assert hub.devices[IDENT].heartbeats == 3


async def test_unmatched_topic(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, ["3", "4", "device", "status_update", {"status": "received"}])
        assert await recv(ws) == [
            "3",
            "4",
            "device",
            "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}},
        ]
        await send(ws, ["9", "9", "nowhere", "phx_join", {}])
        assert (await recv(ws))[4] == {"status": "error", "response": {"reason": "unmatched topic"}}


async def test_device_events_are_recorded_never_answered(hub: FakeHub) -> None:
    events: list[tuple[str, Any]] = [
        ("status_update", {"status": "received"}),
        ("status_update", {"status": "started", "downloader_network_interface": None}),
        ("fwup_progress", {"stage": "updating", "value": 50}),
        ("update_progress", {"value": 100}),
        ("status_update", {"status": "completed"}),
        ("status_update", {"status": "Fwup Error: bad image"}),
        ("firmware_validated", {}),
        ("rebooting", {}),
        ("report_network_interface", {"interface": "eth0"}),
        (
            "scripts/run",
            {"ref": "r", "result": "error", "reason": "unsupported", "output": "", "return": ""},
        ),
    ]
    async with await open_device(hub) as ws:
        await join_device(ws)
        await recv(ws)  # extensions:get
        for n, (event, payload) in enumerate(events):
            await send(ws, ["1", str(10 + n), "device", event, payload])
        await send(ws, [None, "99", "phoenix", "heartbeat", {}])
        # Nothing was answered: the next frame is the heartbeat reply.
        assert await recv(ws) == [None, "99", "phoenix", "phx_reply", OK_EMPTY]
    record = hub.devices[IDENT]
    assert record.statuses == ["received", "started", "completed", "Fwup Error: bad image"]
    assert [p["value"] for p in record.progress] == [50, 100]
    assert record.payloads("report_network_interface") == [{"interface": "eth0"}]
    assert record.warnings == []
    assert [m.event for m in hub.log][:2] == ["phx_join", "status_update"]


@pytest.mark.parametrize("status", ["fwup_complete", "update_failed", "reschedule", None, 3])
async def test_unknown_status_crashes_the_device_channel(hub: FakeHub, status: Any) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws, ref="4")
        await recv(ws)  # extensions:get
        await send(ws, ["4", "5", "device", "status_update", {"status": status}])
        assert await recv(ws) == ["4", "4", "device", "phx_error", {"reason": "channel_crash"}]
        record = hub.devices[IDENT]
        assert not record.joined
        assert record.connected
        # The channel is gone: the next device event is "unmatched topic"; a re-join works.
        await send(ws, ["4", "6", "device", "status_update", {"status": "received"}])
        assert (await recv(ws))[4]["response"] == {"reason": "unmatched topic"}
        assert (await join_device(ws, ref="8"))[4] == OK_EMPTY
        assert record.joins == 2
        rejected = [m.rejected for m in record.messages_for("device", "status_update")]
        assert rejected == ["channel crashed", "unmatched topic"]
        assert record.statuses == []


async def test_stale_join_ref_is_dropped(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws, ref="1")
        await recv(ws)
        await send(ws, ["old", "2", "device", "status_update", {"status": "nonsense"}])
        await send(ws, [None, "3", "device", "status_update", {"status": "received"}])
        await send(ws, [None, "4", "phoenix", "heartbeat", {}])
        assert await recv(ws) == [None, "4", "phoenix", "phx_reply", OK_EMPTY]
    record = hub.devices[IDENT]
    assert [m.payload["status"] for m in record.messages_for("device", "status_update")] == [
        "nonsense",
        "received",
    ]
    assert [m.rejected for m in record.messages_for("device", "status_update")] == [
        "stale join_ref",
        None,
    ]
    assert record.statuses == ["received"]
    assert any("stale join_ref" in w for w in record.warnings)


async def test_duplicate_join_closes_the_old_instance(hub: FakeHub) -> None:
    # Phoenix 1.8: the reply to the new join comes first, then phx_close for the old join_ref
    # (more in test_hub_parity.py).
    async with await open_device(hub) as ws:
        await join_device(ws, ref="1")
        await recv(ws)
        await send(ws, ["2", "2", "device", "phx_join", JOIN_PARAMS])
        assert await recv(ws) == ["2", "2", "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == ["1", "1", "device", "phx_close", {}]
        assert hub.devices[IDENT].channels == {"device": "2"}


async def test_leave(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws, ref="1")
        await recv(ws)
        await send(ws, ["1", "2", "device", "phx_leave", {}])
        assert await recv(ws) == ["1", "2", "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == ["1", "1", "device", "phx_close", {}]
        assert not hub.devices[IDENT].joined


async def test_device_colon_topic_gets_nothing(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, ["1", "1", "device:device-0001", "phx_join", JOIN_PARAMS])
        assert await recv(ws) == ["1", "1", "device:device-0001", "phx_reply", OK_EMPTY]
        record = await hub.wait_for_device(IDENT, joined=False)
        assert not record.joined
        assert not await hub.push(IDENT, "device", "reboot", {})
        assert any("device:" in w for w in record.warnings)


async def test_extensions_join_attach_and_health_check(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws)
        await recv(ws)
        request = {"health": "0.0.1", "logging": "0.0.2", "geo": "0.0.1", "telepathy": "0.0.1"}
        await send(ws, ["2", "2", "extensions", "phx_join", request])
        # geo is requested but not enabled on the hub; telepathy is unknown.
        assert await recv(ws) == [
            "2",
            "2",
            "extensions",
            "phx_reply",
            {"status": "ok", "response": ["health", "logging"]},
        ]
        await send(ws, ["2", "3", "extensions", "health:attached", {}])
        assert await recv(ws) == ["2", None, "extensions", "health:check", {}]
        report = {
            "value": {"timestamp": "2023-11-14T22:13:20Z", "metrics": {"cpu_usage_percent": 3}}
        }
        await send(ws, ["2", "4", "extensions", "health:report", report])
        await hub.wait_for_message(IDENT, event="health:report")
        record = hub.devices[IDENT]
        assert record.attached_extensions == {"health"}
        assert record.offered_extensions == ["health", "logging"]
        assert record.health_reports == [report["value"]]
        # logging was offered but not attached yet: its traffic is refused with "detach".
        await send(ws, ["2", "5", "extensions", "logging:send", {"level": "info", "message": "x"}])
        assert await recv(ws) == [
            "2",
            "5",
            "extensions",
            "phx_reply",
            {"status": "error", "response": "detach"},
        ]
        await send(ws, ["2", "6", "extensions", "logging:attached", {}])
        await send(
            ws,
            [
                "2",
                "7",
                "extensions",
                "logging:send",
                {"level": "info", "message": "hello", "meta": {"time": "1"}},
            ],
        )
        await hub.wait_for_message(IDENT, event="logging:send", predicate=lambda m: m.ref == "7")
        assert record.logs == [{"level": "info", "message": "hello", "meta": {"time": "1"}}]
        assert record.attached_extensions == {"health", "logging"}
        # A hub-initiated check uses the extensions join_ref.
        assert await hub.request_health_check(IDENT)
        assert await recv(ws) == ["2", None, "extensions", "health:check", {}]
        await send(ws, ["2", "8", "extensions", "health:detached", {}])
        await hub.wait_for(lambda: "health" not in record.attached_extensions)
        assert not await hub.request_health_check(IDENT)


@pytest.mark.parametrize("version", ["0.0.0", "0.1.0", "1.0.0", "0.0.1-rc.1", "abc", 1])
async def test_extension_versions_outside_0_0_1_are_ignored(hub: FakeHub, version: Any) -> None:
    async with await open_device(hub) as ws:
        await send(ws, ["2", "2", "extensions", "phx_join", {"health": version}])
        assert (await recv(ws))[4] == {"status": "ok", "response": []}


async def test_attached_for_an_extension_not_offered_gets_detach(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, ["2", "2", "extensions", "phx_join", {"geo": "0.0.1"}])
        assert (await recv(ws))[4] == {"status": "ok", "response": []}
        await send(ws, ["2", "3", "extensions", "geo:attached", {}])
        assert (await recv(ws))[4] == {"status": "error", "response": "detach"}


async def test_attach_and_detach_pushes(hub: FakeHub) -> None:
    hub.extensions.add("geo")
    async with await open_device(hub) as ws:
        await send(ws, ["2", "2", "extensions", "phx_join", {"geo": "0.0.1"}])
        assert (await recv(ws))[4] == {"status": "ok", "response": ["geo"]}
        await send(ws, ["2", "3", "extensions", "geo:attached", {}])
        assert await recv(ws) == ["2", None, "extensions", "geo:location:request", {}]
        await send(
            ws,
            [
                "2",
                "4",
                "extensions",
                "geo:location:update",
                {"source": "gps", "latitude": 1.5, "longitude": 2.5},
            ],
        )
        await hub.wait_for_message(IDENT, event="geo:location:update")
        assert hub.devices[IDENT].locations[0]["source"] == "gps"
        assert await hub.detach_extensions(IDENT, ["geo"])
        assert await recv(ws) == ["2", None, "extensions", "detach", {"extensions": ["geo"]}]
        await send(ws, ["2", "5", "extensions", "geo:location:update", {}])
        assert (await recv(ws))[4] == {"status": "error", "response": "detach"}
        assert await hub.attach_extensions(IDENT, ["geo"])
        assert await recv(ws) == ["2", None, "extensions", "attach", {"extensions": ["geo"]}]
        await send(ws, ["2", "6", "extensions", "geo:attached", {}])
        assert await recv(ws) == ["2", None, "extensions", "geo:location:request", {}]


async def test_periodic_health_checks(clock: FrozenClock) -> None:
    async with (
        FakeHub(
            shared_secrets={"nhp_k": "s"}, clock=clock, extensions=["health"], health_interval=0.05
        ) as hub,
        await open_device(hub, key="nhp_k", secret="s") as ws,
    ):
        await send(ws, ["2", "2", "extensions", "phx_join", {"health": "0.0.1"}])
        await recv(ws)
        await send(ws, ["2", "3", "extensions", "health:attached", {}])
        for _ in range(3):
            assert await recv(ws) == ["2", None, "extensions", "health:check", {}]


async def test_push_helpers(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws)
        await recv(ws)
        payload = await hub.push_update(
            IDENT,
            "https://example.invalid/fw.fw",
            size=1234,
            checksum="ab" * 32,
            partials_checksums=["cd" * 32],
            firmware_meta={"version": "2.0.0", "uuid": "u-1"},
            deployment_id=42,
        )
        assert payload is not None
        frame = await recv(ws)
        assert frame[:4] == [None, None, "device", "update"]
        update = frame[4]
        assert update == payload
        assert update["update_available"] is True
        assert update["checksum"] == "AB" * 32
        assert update["partials_checksums"] == ["CD" * 32]
        assert update["size"] == 1234
        assert update["deployment_id"] == 42
        assert set(update["firmware_meta"]) == {
            "uuid",
            "product",
            "version",
            "architecture",
            "platform",
            "author",
            "description",
            "vcs_identifier",
            "misc",
        }
        assert update["firmware_meta"]["version"] == "2.0.0"
        await hub.push_update(IDENT, None)
        none = (await recv(ws))[4]
        assert none["update_available"] is False
        assert none["firmware_url"] is None
        assert await hub.reboot(IDENT)
        assert await recv(ws) == [None, None, "device", "reboot", {}]
        assert await hub.identify(IDENT)
        assert await recv(ws) == [None, None, "device", "identify", {}]
        assert await hub.run_script(IDENT, "1 + 1", ref="abc")
        assert await recv(ws) == [
            "1",
            None,
            "device",
            "scripts/run",
            {"text": "1 + 1", "ref": "abc"},
        ]
        assert await hub.crash_channel(IDENT)
        assert await recv(ws) == ["1", "1", "device", "phx_error", {"reason": "channel_crash"}]
        assert not await hub.push(IDENT, "device", "reboot")
        assert await hub.send_raw(IDENT, "not json")
        assert await ws.recv() == "not json"
        assert hub.devices[IDENT].sent[-1] == [
            "1",
            "1",
            "device",
            "phx_error",
            {"reason": "channel_crash"},
        ]
    assert not await hub.push("nobody", "device", "reboot", {})


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        json.dumps({"topic": "device"}),
        json.dumps(["1", "1", "device", "phx_join"]),
        json.dumps(["1", "1", "device", "phx_join", {}, "extra"]),
        json.dumps([1.5, "1", "device", "phx_join", {}]),
        json.dumps([None, True, "phoenix", "heartbeat", {}]),
        json.dumps(["1", "1", None, "phx_join", {}]),
        '[null, "1", "phoenix", "heartbeat", NaN]',
        b"\x00\x01binary",
    ],
)
async def test_malformed_frames_close_the_socket(hub: FakeHub, data: str | bytes) -> None:
    async with await open_device(hub) as ws:
        await ws.send(data)
        assert await close_code(ws) == 1011
    assert any(w.startswith(("malformed", "binary")) for w in hub.devices[IDENT].warnings)


async def test_wait_for_message_new_only(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, [None, "1", "phoenix", "heartbeat", {}])
        first = await hub.wait_for_message(IDENT, event="heartbeat")
        assert first.ref == "1"
        assert first.time == hub.clock()
        with pytest.raises(TimeoutError, match="heartbeat"):
            await hub.wait_for_message(IDENT, event="heartbeat", new_only=True, timeout=0.05)
        await send(ws, [None, "2", "phoenix", "heartbeat", {}])
        second = await hub.wait_for_message(IDENT, event="heartbeat", new_only=True)
        assert second.ref == "2"
