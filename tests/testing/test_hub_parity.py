"""FakeHub matches the real server where raw device scripts showed it differed, over real sockets.

Each behaviour is the server's (nerves_hub_web @0bb6b5c, Phoenix 1.8.12), as PROTOCOL.md
describes it; the source it comes from is named in each test.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from nhlink.testing import NO_AUTH_REASON, PLATFORM_REASON, FakeHub
from tests.testing import _signer
from tests.testing.conftest import (
    IDENT,
    JOIN_PARAMS,
    KEY,
    SECRET,
    T0,
    FrozenClock,
    join_device,
    open_device,
    recv,
    send,
)

OK_EMPTY = {"status": "ok", "response": {}}
JOIN_CRASHED = {"status": "error", "response": {"reason": "join crashed"}}
CHANNEL_CRASH = {"reason": "channel_crash"}


async def refused(url: str, headers: dict[str, str] | None = None) -> Any:
    """Attempt an upgrade that must fail; return the HTTP response."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers, open_timeout=5):
            pass
    return info.value.response


async def nothing_pending(ws: ClientConnection, ref: str = "hb") -> None:
    """Assert the server sent nothing more: the hub answers frames in order, so the next frame
    must be the reply to this heartbeat."""
    await send(ws, [None, ref, "phoenix", "heartbeat", {}])
    assert await recv(ws) == [None, ref, "phoenix", "phx_reply", OK_EMPTY]


# 1. No credentials: 401, reason in the header and the body (WebsocketConnectionError).


async def test_no_credentials_reason_is_header_and_body(hub: FakeHub) -> None:
    response = await refused(hub.url)
    assert response.status_code == 401
    assert response.headers["nh-connection-error-reason"] == NO_AUTH_REASON
    assert response.body == NO_AUTH_REASON.encode()
    assert hub.attempts[-1].reason == "no_auth"


async def test_bad_credentials_still_get_a_bare_401(hub: FakeHub, clock: FrozenClock) -> None:
    clock.now = T0 + 91  # the vector is expired
    response = await refused(hub.url, _signer.VECTOR_HEADERS)
    assert response.status_code == 401
    assert response.body == b""
    assert "nh-connection-error-reason" not in response.headers


# 2. x-nh-time missing: Integer.parse(nil) raises, DeviceSocket answers "platform unavailable".


async def test_missing_time_header_is_503_with_reason(hub: FakeHub) -> None:
    headers = _signer.sign(KEY, SECRET, IDENT, T0)
    del headers["x-nh-time"]
    response = await refused(hub.url, headers)
    assert response.status_code == 503
    assert response.headers["nh-connection-error-reason"] == PLATFORM_REASON
    assert response.body == PLATFORM_REASON.encode()
    attempt = hub.attempts[-1]
    assert (attempt.status, attempt.reason, attempt.identifier) == (503, "missing_time", IDENT)
    assert hub.upgrade_counts(IDENT) == {503: 1}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"x-nh-time": ""}, "bad_time"),  # present but not an integer: a refusal
        ({"x-nh-alg": "NH1-HMAC-sha256-1000"}, "bad_alg"),  # alg fails before time is read
        ({"x-nh-key": None}, "missing_header"),
        ({"x-nh-alg": None, "x-nh-time": None}, "missing_header"),
    ],
)
async def test_other_header_problems_stay_401(
    hub: FakeHub, change: dict[str, str | None], reason: str
) -> None:
    headers: dict[str, str] = {}
    for name, value in _signer.sign(KEY, SECRET, IDENT, T0).items():
        new = change.get(name, value)
        if new is not None:
            headers[name] = new
    response = await refused(hub.url, headers)
    assert response.status_code == 401
    assert response.body == b""
    assert hub.attempts[-1].reason == reason


async def test_missing_time_with_shared_secrets_disabled_is_401(clock: FrozenClock) -> None:
    async with FakeHub(
        shared_secrets={KEY: SECRET}, shared_secrets_enabled=False, clock=clock
    ) as hub:
        headers = _signer.sign(KEY, SECRET, IDENT, T0)
        del headers["x-nh-time"]
        assert (await refused(hub.url, headers)).status_code == 401


async def test_unavailable_503_carries_the_reason_as_body(hub: FakeHub) -> None:
    hub.unavailable = True
    response = await refused(hub.url, _signer.VECTOR_HEADERS)
    assert response.status_code == 503
    assert response.body == PLATFORM_REASON.encode()


# 3. A non-string device_api_version: Version.parse/1 has no clause for it; the join crashes.


@pytest.mark.parametrize("version", [220, 2.2, None, True, ["2.2.0"], {"v": "2.2.0"}])
async def test_non_string_api_version_crashes_the_join(hub: FakeHub, version: Any) -> None:
    async with await open_device(hub) as ws:
        params = dict(JOIN_PARAMS, device_api_version=version)
        assert await join_device(ws, params, ref="1") == [
            "1",
            "1",
            "device",
            "phx_reply",
            JOIN_CRASHED,
        ]
        await nothing_pending(ws)  # no extensions:get, no phx_close
        record = hub.devices[IDENT]
        assert not record.joined
        assert record.joins == 0
        assert record.join_params is None
        assert [m.rejected for m in record.messages_for("device", "phx_join")] == ["join crashed"]
        # The socket is fine: a join with a string version works.
        assert await join_device(ws, ref="2") == ["2", "2", "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == [None, None, "device", "extensions:get", {}]
        assert record.joined


# 4. Joining `device` again: reply to the new join, then phx_close for the old join_ref.


async def test_duplicate_join_replies_then_closes_the_old_join_ref(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        assert await join_device(ws, ref="1") == ["1", "1", "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == [None, None, "device", "extensions:get", {}]
        await send(ws, ["2", "2", "device", "phx_join", JOIN_PARAMS])
        assert await recv(ws) == ["2", "2", "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == ["1", "1", "device", "phx_close", {}]
        # Only then what the new instance pushes after its join.
        assert await recv(ws) == [None, None, "device", "extensions:get", {}]
        record = hub.devices[IDENT]
        assert record.channels == {"device": "2"}
        assert record.joins == 2
        # The old join_ref is stale now.
        await send(ws, ["1", "3", "device", "status_update", {"status": "received"}])
        await send(ws, ["2", "4", "device", "status_update", {"status": "started"}])
        await nothing_pending(ws)
        assert record.statuses == ["started"]


async def test_duplicate_join_that_crashes_still_closes_the_old_instance(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws, ref="1")
        await recv(ws)  # extensions:get
        await send(ws, ["2", "2", "device", "phx_join", dict(JOIN_PARAMS, device_api_version=2)])
        assert await recv(ws) == ["2", "2", "device", "phx_reply", JOIN_CRASHED]
        assert await recv(ws) == ["1", "1", "device", "phx_close", {}]
        await nothing_pending(ws)
        assert not hub.devices[IDENT].joined


async def test_duplicate_extensions_join_same_order(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, ["5", "5", "extensions", "phx_join", {"health": "0.0.1"}])
        assert (await recv(ws))[4] == {"status": "ok", "response": ["health"]}
        await send(ws, ["6", "6", "extensions", "phx_join", {"logging": "0.0.1"}])
        assert await recv(ws) == [
            "6",
            "6",
            "extensions",
            "phx_reply",
            {"status": "ok", "response": ["logging"]},
        ]
        assert await recv(ws) == ["5", "5", "extensions", "phx_close", {}]
        # The new instance's state survived the close of the old one.
        assert hub.devices[IDENT].offered_extensions == ["logging"]
        await send(ws, ["6", "7", "extensions", "logging:attached", {}])
        await hub.wait_for(lambda: "logging" in hub.devices[IDENT].attached_extensions)


# 5. Integer refs: Phoenix's V2 JSON serializer takes refs as they are and echoes them.


async def test_integer_heartbeat_ref_is_answered(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await ws.send('[null, 7, "phoenix", "heartbeat", {}]')
        reply = await recv(ws)
        # decode_text/encode! pass the ref through: it comes back as the integer 7.
        assert reply == [None, 7, "phoenix", "phx_reply", OK_EMPTY]
        assert type(reply[1]) is int
        message = await hub.wait_for_message(IDENT, event="heartbeat")
        assert message.ref == 7
        assert message.rejected is None
        await nothing_pending(ws)  # still open
        assert hub.devices[IDENT].close_codes == []


async def test_integer_join_ref_is_kept_and_compared_strictly(hub: FakeHub) -> None:
    async with await open_device(hub) as ws:
        await send(ws, [3, 3, "device", "phx_join", JOIN_PARAMS])
        assert await recv(ws) == [3, 3, "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == [None, None, "device", "extensions:get", {}]
        record = hub.devices[IDENT]
        assert record.channels == {"device": 3}
        assert await hub.run_script(IDENT, "1 + 1", ref="r1")
        assert await recv(ws) == [3, None, "device", "scripts/run", {"text": "1 + 1", "ref": "r1"}]
        # Socket.handle_in compares join_refs with ===: "3" is another instance's, 3 is this one.
        await send(ws, ["3", 4, "device", "status_update", {"status": "received"}])
        await send(ws, [3, 5, "device", "status_update", {"status": "started"}])
        await nothing_pending(ws)
        assert [m.rejected for m in record.messages_for("device", "status_update")] == [
            "stale join_ref",
            None,
        ]
        assert record.statuses == ["started"]
        await send(ws, [3, 6, "device", "phx_leave", {}])
        assert await recv(ws) == [3, 6, "device", "phx_reply", OK_EMPTY]
        assert await recv(ws) == [3, 3, "device", "phx_close", {}]


# Console (§9.3): four device events only; `up` needs a string `data`.


async def join_console(ws: ClientConnection, ref: str = "5") -> None:
    await send(ws, [ref, ref, "console", "phx_join", {"console_version": "2.0.0"}])
    assert await recv(ws) == [ref, ref, "console", "phx_reply", OK_EMPTY]


async def test_console_events_the_server_handles(hub: FakeHub) -> None:
    events: list[tuple[str, Any]] = [
        ("up", {"data": "iex> "}),
        ("file-data/start", {"filename": "a.txt"}),
        ("file-data", {"filename": "a.txt", "chunk": 0, "data": "aGk="}),
        ("file-data/stop", {"filename": "a.txt"}),
    ]
    async with await open_device(hub) as ws:
        await join_console(ws)
        for n, (event, payload) in enumerate(events):
            await send(ws, ["5", str(10 + n), "console", event, payload])
        await nothing_pending(ws)  # never answered
        record = hub.devices[IDENT]
        assert record.channels == {"console": "5"}
        assert [m.rejected for m in record.messages_for("console")][1:] == [None] * 4
        assert record.payloads("up", "console") == [{"data": "iex> "}]
        # push() already speaks the console's shape: [console_join_ref, null, "console", ...].
        assert await hub.push(IDENT, "console", "dn", {"data": "h"})
        assert await recv(ws) == ["5", None, "console", "dn", {"data": "h"}]


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("restart", {}),
        ("dn", {"data": "x"}),
        ("window_size", {"height": 24, "width": 80}),
        ("up", {}),
        ("up", {"data": None}),
        ("up", {"data": 5}),
        ("up", {"data": ["a"]}),
        ("up", "text"),
    ],
)
async def test_console_crashes_on_what_it_cannot_handle(
    hub: FakeHub, event: str, payload: Any
) -> None:
    async with await open_device(hub) as ws:
        await join_device(ws, ref="1")
        await recv(ws)  # extensions:get
        await join_console(ws, "5")
        await send(ws, ["5", "6", "console", event, payload])
        assert await recv(ws) == ["5", "5", "console", "phx_error", CHANNEL_CRASH]
        record = hub.devices[IDENT]
        assert [m.rejected for m in record.messages_for("console", event)] == ["channel crashed"]
        assert record.channels == {"device": "1"}  # only the console channel died
        assert not await hub.push(IDENT, "console", "dn", {"data": "x"})
        # Gone: the next console event is "unmatched topic"; a re-join works.
        await send(ws, ["5", "7", "console", "up", {"data": "x"}])
        assert (await recv(ws))[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
        await join_console(ws, "8")
        assert await hub.push(IDENT, "console", "dn", {"data": "x"})
        assert await recv(ws) == ["8", None, "console", "dn", {"data": "x"}]
