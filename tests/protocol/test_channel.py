"""Phoenix session: refs, joins, replies, routing, heartbeat liveness (PROTOCOL.md §4)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nhlink.errors import DecodeError, HeartbeatTimeout, LocalProtocolError
from nhlink.protocol.channel import (
    ChannelClosed,
    Joined,
    JoinRefused,
    PhoenixSession,
    Push,
    Reply,
)


def frame(*elements: Any) -> str:
    return json.dumps(list(elements))


def decoded(data: bytes) -> list[Any]:
    value = json.loads(data)
    assert isinstance(value, list)
    return value


def test_refs_are_unique_across_everything() -> None:
    s = PhoenixSession()
    refs = [decoded(s.join("device", {}))[1]]
    refs.append(decoded(s.push("device", "status_update", {"status": "received"}))[1])
    refs.append(decoded(s.heartbeat())[1])
    s.receive(frame(None, refs[-1], "phoenix", "phx_reply", {"status": "ok", "response": {}}))
    refs.append(decoded(s.heartbeat())[1])
    s.reset()
    refs.append(decoded(s.join("device", {}))[1])
    assert refs == ["1", "2", "3", "4", "5"]


def test_join_and_push_use_join_ref() -> None:
    s = PhoenixSession()
    assert decoded(s.join("device", {"a": 1})) == ["1", "1", "device", "phx_join", {"a": 1}]
    assert not s.is_joined("device")
    event = s.receive(frame("1", "1", "device", "phx_reply", {"status": "ok", "response": {}}))
    assert event == Joined("device", {})
    assert s.is_joined("device")
    assert decoded(s.push("device", "firmware_validated", {})) == [
        "1",
        "2",
        "device",
        "firmware_validated",
        {},
    ]


def test_join_refused() -> None:
    s = PhoenixSession()
    s.join("device", {})
    event = s.receive(
        frame(
            "1",
            "1",
            "device",
            "phx_reply",
            {"status": "error", "response": {"error": "could not connect"}},
        )
    )
    assert event == JoinRefused("device", {"error": "could not connect"})
    assert not s.is_joined("device")
    with pytest.raises(LocalProtocolError):
        s.push("device", "x", {})


def test_pushes_routed_by_topic_not_join_ref() -> None:
    s = PhoenixSession()
    s.join("device", {})
    s.receive(frame("1", "1", "device", "phx_reply", {"status": "ok", "response": {}}))
    assert s.receive(frame(None, None, "device", "reboot", {})) == Push("device", "reboot", {})
    assert s.receive(frame("1", None, "device", "scripts/run", {"text": "x"})) == Push(
        "device", "scripts/run", {"text": "x"}
    )


def test_stale_close_ignored_current_close_reported() -> None:
    s = PhoenixSession()
    s.join("extensions", {})
    s.receive(frame("1", "1", "extensions", "phx_reply", {"status": "ok", "response": []}))
    s.join("extensions", {})  # re-join: the server closes the old instance (join_ref "1")
    assert s.receive(frame("1", "1", "extensions", "phx_close", {})) is None
    s.receive(frame("2", "2", "extensions", "phx_reply", {"status": "ok", "response": []}))
    event = s.receive(frame("2", "2", "extensions", "phx_error", {"reason": "channel_crash"}))
    assert event == ChannelClosed("extensions", True, {"reason": "channel_crash"})
    assert not s.is_joined("extensions")


def test_tracked_reply() -> None:
    s = PhoenixSession()
    s.join("extensions", {})
    s.push("extensions", "health:attached", {}, track_reply=True)
    ref = s.last_ref()
    event = s.receive(
        frame("1", ref, "extensions", "phx_reply", {"status": "error", "response": "detach"})
    )
    assert event == Reply("extensions", ref, "error", "detach")
    # untracked replies are dropped
    s.push("extensions", "health:report", {})
    assert (
        s.receive(
            frame("1", s.last_ref(), "extensions", "phx_reply", {"status": "ok", "response": {}})
        )
        is None
    )


def test_heartbeat_liveness() -> None:
    s = PhoenixSession()
    hb = decoded(s.heartbeat())
    assert hb == [None, "1", "phoenix", "heartbeat", {}]
    with pytest.raises(HeartbeatTimeout):
        s.heartbeat()
    s.receive(frame(None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}))
    assert decoded(s.heartbeat())[1] == "2"


@pytest.mark.parametrize(
    "text", ["not json", "[1,2,3]", frame(None, "1", "device", "phx_reply", {"no": "status"})]
)
def test_malformed(text: str) -> None:
    with pytest.raises(DecodeError):
        PhoenixSession().receive(text)
