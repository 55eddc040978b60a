"""FakeHub's MessagePack serializer (vsn 3.0.0, PROTOCOL.md §4.6) over real sockets.

The device side is independent of nhlink: ``websockets`` for the socket, the ``msgpack`` package
for the frames, and the tests' own NH1 signer.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import sys
from typing import Any, cast

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from nhlink.errors import ConfigError
from nhlink.testing import FakeHub
from tests.testing.conftest import (
    IDENT,
    JOIN_PARAMS,
    KEY,
    SECRET,
    FrozenClock,
    close_code,
    join_device,
    open_device,
    recv,
)

msgpack = pytest.importorskip("msgpack")

OK_EMPTY = {"status": "ok", "response": {}}
# PROTOCOL.md §4.6: [nil, "5", "phoenix", "heartbeat", {}]
HEARTBEAT_EXAMPLE = bytes.fromhex(
    "95 c0 a1 35 a7 70 68 6f 65 6e 69 78 a9 68 65 61 72 74 62 65 61 74 80"
)


def pack(value: Any) -> bytes:
    return cast(bytes, msgpack.packb(value, use_bin_type=True))


async def open_v3(hub: FakeHub, vsn: str = "3.0.0") -> ClientConnection:
    return await open_device(hub, url=hub.url_for(vsn=vsn))


async def recv_raw(ws: ClientConnection) -> bytes:
    """The next frame's bytes (within 5 s); asserts it is a binary frame."""
    async with asyncio.timeout(5):
        data = await ws.recv()
    assert isinstance(data, bytes), f"expected a binary frame, got {data!r}"
    return data


async def recv_bin(ws: ClientConnection) -> list[Any]:
    """The next frame, decoded; asserts one MessagePack 5-element array in a binary frame."""
    frame = msgpack.unpackb(await recv_raw(ws), raw=False)
    assert isinstance(frame, list)
    assert len(frame) == 5
    return frame


async def join_v3(ws: ClientConnection, ref: Any = "1") -> list[Any]:
    """Join ``device`` with ``ref``; return the reply (the ``extensions:get`` push is consumed)."""
    await ws.send(pack([ref, ref, "device", "phx_join", JOIN_PARAMS]))
    reply = await recv_bin(ws)
    assert await recv_bin(ws) == [None, None, "device", "extensions:get", {}]
    return reply


async def refused(hub: FakeHub, url: str) -> int:
    """Attempt a signed upgrade that must fail; return the HTTP status."""
    with pytest.raises(InvalidStatus) as info:
        async with await open_device(hub, url=url):
            pass
    return info.value.response.status_code


# ---------------------------------------------------------------------------- negotiation


async def test_join_over_vsn3_gets_a_binary_reply_and_records_the_serializer(
    hub: FakeHub,
) -> None:
    async with await open_v3(hub) as ws:
        assert await join_v3(ws) == ["1", "1", "device", "phx_reply", OK_EMPTY]
        record = await hub.wait_for_device(IDENT)
        assert record.serializer == "msgpack"
        attempt = hub.attempts[-1]
        assert (attempt.status, attempt.vsn, attempt.serializer) == (101, "3.0.0", "msgpack")
        # Records look as they would for a JSON device.
        assert record.join_params == JOIN_PARAMS
        assert record.channels == {"device": "1"}
        message = await hub.wait_for_message(IDENT, event="phx_join")
        assert message.frame() == ["1", "1", "device", "phx_join", JOIN_PARAMS]
        assert hub.summary()[0]["serializer"] == "msgpack"


async def test_heartbeat_example_from_the_protocol(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        await ws.send(HEARTBEAT_EXAMPLE)
        data = await recv_raw(ws)
        # raw=False: a bin would come back as bytes, so equality proves every string is a str.
        assert msgpack.unpackb(data, raw=False) == [None, "5", "phoenix", "phx_reply", OK_EMPTY]
        message = await hub.wait_for_message(IDENT, event="heartbeat")
        assert (message.join_ref, message.ref, message.topic) == (None, "5", "phoenix")
        assert hub.devices[IDENT].heartbeats == 1


async def test_integer_refs_are_stored_and_echoed_as_strings(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        assert await join_v3(ws, ref=7) == ["7", "7", "device", "phx_reply", OK_EMPTY]
        record = hub.devices[IDENT]
        assert record.channels == {"device": "7"}
        assert await hub.run_script(IDENT, "1 + 1", ref="r1")
        payload = {"text": "1 + 1", "ref": "r1"}
        assert await recv_bin(ws) == ["7", None, "device", "scripts/run", payload]
        # Both 7 and "7" name the join "7" now (unlike JSON, where 7 and "7" differ).
        await ws.send(pack([7, 8, "device", "status_update", {"status": "received"}]))
        await ws.send(pack(["7", 9, "device", "status_update", {"status": "started"}]))
        await ws.send(pack([None, 10, "phoenix", "heartbeat", {}]))
        assert await recv_bin(ws) == [None, "10", "phoenix", "phx_reply", OK_EMPTY]
        assert record.statuses == ["received", "started"]
        refs = [(m.join_ref, m.ref) for m in record.messages_for("device", "status_update")]
        assert refs == [("7", "8"), ("7", "9")]


@pytest.mark.parametrize("vsn", ["3.0.0", "3.0.7", "3.0.1-rc.1"])
async def test_vsn_3_0_x_selects_msgpack(hub: FakeHub, vsn: str) -> None:
    async with await open_v3(hub, vsn) as ws:
        await ws.send(pack([None, "h", "phoenix", "heartbeat", {}]))
        assert await recv_bin(ws) == [None, "h", "phoenix", "phx_reply", OK_EMPTY]
    assert hub.attempts[-1].serializer == "msgpack"


@pytest.mark.parametrize("vsn", ["3.1.0", "3", "3.0", "3.0.0-rc.1", "4.0.0"])
async def test_other_vsn_3_is_refused_with_403(hub: FakeHub, vsn: str) -> None:
    assert await refused(hub, hub.url_for(vsn=vsn)) == 403
    attempt = hub.attempts[-1]
    assert (attempt.status, attempt.reason, attempt.vsn, attempt.serializer) == (
        403,
        "vsn",
        vsn,
        None,
    )


async def test_vsn_2_0_x_selects_json_with_integer_refs_kept(hub: FakeHub) -> None:
    async with await open_device(hub, url=hub.url_for(vsn="2.0.1")) as ws:
        await ws.send('[null, 7, "phoenix", "heartbeat", {}]')
        reply = await recv(ws)  # a text frame
        assert reply == [None, 7, "phoenix", "phx_reply", OK_EMPTY]
        assert type(reply[1]) is int
    assert hub.devices[IDENT].serializer == "json"
    assert hub.attempts[-1].serializer == "json"


async def test_json_only_hub_refuses_vsn3_like_an_older_server(clock: FrozenClock) -> None:
    async with FakeHub(shared_secrets={KEY: SECRET}, clock=clock, serializers=("json",)) as hub:
        assert hub.serializers == {"json"}
        assert await refused(hub, hub.url_for(vsn="3.0.0")) == 403
        assert hub.attempts[-1].reason == "vsn"
        async with await open_device(hub) as ws:  # JSON still works
            assert (await join_device(ws))[4] == OK_EMPTY
        # The attribute is live.
        hub.serializers.add("msgpack")
        async with await open_v3(hub) as ws:
            await ws.send(HEARTBEAT_EXAMPLE)
            assert (await recv_bin(ws))[3] == "phx_reply"
        hub.serializers.discard("json")
        assert await refused(hub, hub.url) == 403


async def test_missing_msgpack_package_means_403_and_a_warning(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # import msgpack -> ImportError
    assert await refused(hub, hub.url_for(vsn="3.0.0")) == 403
    assert await refused(hub, hub.url_for(vsn="3.0.0")) == 403
    assert len(hub.warnings) == 1
    assert "msgpack" in hub.warnings[0]
    async with await open_device(hub) as ws:
        assert (await join_device(ws))[4] == OK_EMPTY


@pytest.mark.parametrize("serializers", [(), ["cbor"], ["json", "xml"], "json"])
def test_serializers_option_is_validated(serializers: Any) -> None:
    with pytest.raises(ConfigError):
        FakeHub(serializers=serializers)


# ------------------------------------------------------------------------ server -> device


async def test_server_pushes_are_binary_msgpack_frames(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        await join_v3(ws)
        assert await hub.identify(IDENT)
        assert await recv_bin(ws) == [None, None, "device", "identify", {}]
        sent = await hub.push_update(IDENT, "https://x/fw", size=3, checksum="aa")
        assert sent is not None
        update = await recv_bin(ws)
        assert update == [None, None, "device", "update", sent]
        assert update[4]["checksum"] == "AA"
        # Floats go out as float 64 (0xcb), as msgpax packs them.
        assert await hub.push(IDENT, "device", "custom", {"x": 0.5})
        data = await recv_raw(ws)
        assert b"\xcb" + struct.pack(">d", 0.5) in data
        assert msgpack.unpackb(data, raw=False) == [None, None, "device", "custom", {"x": 0.5}]
        assert hub.devices[IDENT].sent[-1] == [None, None, "device", "custom", {"x": 0.5}]


async def test_send_raw_sends_the_data_as_given(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        await hub.wait_for_device(IDENT, joined=False)
        assert await hub.send_raw(IDENT, "not msgpack")
        async with asyncio.timeout(5):
            assert await ws.recv() == "not msgpack"
        assert await hub.send_raw(IDENT, b"\xc1")
        assert await recv_raw(ws) == b"\xc1"


async def test_status_updates_and_helpers_work_for_msgpack_devices(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws, aiohttp.ClientSession(hub.http_url) as http:
        await join_v3(ws)
        for status in ("received", "completed"):
            await ws.send(pack(["1", None, "device", "status_update", {"status": status}]))
        await hub.wait_for_message(
            IDENT, event="status_update", predicate=lambda m: m.payload["status"] == "completed"
        )
        assert hub.devices[IDENT].statuses == ["received", "completed"]
        async with http.get(f"/_fakehub/devices/{IDENT}") as response:
            detail = await response.json()
        assert detail["serializer"] == "msgpack"
        assert detail["statuses"] == ["received", "completed"]
        async with http.get("/_fakehub/attempts") as response:
            attempts = (await response.json())["attempts"]
        assert attempts[-1]["serializer"] == "msgpack"
        assert attempts[-1]["vsn"] == "3.0.0"


async def test_bin_values_and_non_string_keys_are_accepted(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        params = dict(JOIN_PARAMS, nerves_fw_version=b"1.0.0")
        await ws.send(pack(["1", "1", b"device", "phx_join", params]))
        assert await recv_bin(ws) == ["1", "1", "device", "phx_reply", OK_EMPTY]
        assert (await recv_bin(ws))[3] == "extensions:get"
        await ws.send(pack(["1", None, "device", "connection_types", {1: "x"}]))
        await ws.send(HEARTBEAT_EXAMPLE)
        assert (await recv_bin(ws))[3] == "phx_reply"  # still open
        record = hub.devices[IDENT]
        assert record.join_params is not None
        assert record.join_params["nerves_fw_version"] == "1.0.0"
        assert record.payloads("connection_types") == [{1: "x"}]
        assert any("bin" in w for w in record.warnings)
        assert any("map key" in w for w in record.warnings)


# ------------------------------------------------------------------------- dropped sockets


async def test_text_frame_on_a_vsn3_socket_drops_it(hub: FakeHub) -> None:
    async with await open_v3(hub) as ws:
        await join_v3(ws)
        await ws.send(json.dumps([None, "2", "phoenix", "heartbeat", {}]))
        assert await close_code(ws) == 1011
    record = await hub.wait_for_disconnect(IDENT)
    assert record.close_codes == [1011]
    assert any("text frame" in w for w in record.warnings)
    assert record.heartbeats == 0  # the text frame was not taken as a message


MALFORMED = {
    "not_msgpack": b"\xc1",
    "truncated": pack([None, "5", "phoenix", "heartbeat", {}])[:-1],
    "trailing_bytes": HEARTBEAT_EXAMPLE + b"\xc0",
    "two_values": HEARTBEAT_EXAMPLE + HEARTBEAT_EXAMPLE,
    "four_elements": pack([None, "5", "phoenix", "heartbeat"]),
    "six_elements": pack([None, "5", "phoenix", "heartbeat", {}, None]),
    "map_envelope": pack({"topic": "phoenix"}),
    "nan": pack([None, "5", "phoenix", "heartbeat", {"v": math.nan}]),
    "infinity": pack([None, "5", "phoenix", "heartbeat", {"v": [-math.inf]}]),
    "ext": pack([None, "5", "phoenix", "heartbeat", {"v": msgpack.ExtType(5, b"x")}]),
    "timestamp": pack([None, "5", "phoenix", "heartbeat", {"v": msgpack.Timestamp(1, 0)}]),
    "integer_topic": pack([None, "5", 1, "heartbeat", {}]),
    "invalid_utf8": b"\x95\xc0\xa1\xff" + HEARTBEAT_EXAMPLE[4:],
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_binary_frame_drops_the_socket(hub: FakeHub, data: bytes) -> None:
    async with await open_v3(hub) as ws:
        await join_v3(ws)
        await ws.send(data)
        assert await close_code(ws) == 1011
    record = await hub.wait_for_disconnect(IDENT)
    assert record.close_codes == [1011]
    assert any(w.startswith("malformed MessagePack frame") for w in record.warnings)
    assert record.heartbeats == 0
