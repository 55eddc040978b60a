"""The final status (``completed``/``failed``) reaches the server at least once: it counts as
delivered only when a later heartbeat was answered, and is sent again after a re-join until
then (PROTOCOL.md §7.4: the verdict drives the deployment's success and penalty logic)."""

from __future__ import annotations

from typing import Any

from nhlink.protocol import wire
from nhlink.update.manager import UpdateManager
from nhlink.update.state import StateStore


class Host:
    """A minimal UpdateHost: records what was sent, decides what counts as delivered."""

    name = "dev"
    client: Any = None
    writer: Any = None
    firmware_ssl_context = None

    def __init__(self) -> None:
        self.store = StateStore(None)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.up = True
        self.answered = 0  # refs below this were processed by the server

    async def send(self, topic: str, event: str, payload: Any) -> str:
        if not self.up:
            from nhlink.errors import ConnectionClosed

            raise ConnectionClosed(1006, "", "down")
        self.sent.append((event, payload))
        return str(len(self.sent))

    def delivered(self, ref: str) -> bool:
        return int(ref) < self.answered


def pending(manager: UpdateManager) -> bool:
    return manager.verdict_pending


def statuses(host: Host) -> list[str]:
    return [p["status"] for e, p in host.sent if e == wire.EVENT_STATUS_UPDATE]


async def test_a_verdict_the_socket_may_have_lost_is_sent_again() -> None:
    host = Host()
    manager = UpdateManager(host)
    await manager.report(wire.STATUS_FAILED, reason="SHA-256 mismatch")
    assert pending(manager)
    await manager.connection_lost()  # the socket died before any heartbeat was answered
    await manager.joined()  # the re-join: sent again
    assert statuses(host) == ["failed", "failed"]
    host.answered = 99  # a later heartbeat was answered: delivered
    assert not pending(manager)
    await manager.joined()
    assert statuses(host) == ["failed", "failed"]


async def test_a_verdict_sent_while_down_goes_out_after_the_join() -> None:
    host = Host()
    manager = UpdateManager(host)
    host.up = False
    await manager.report(wire.STATUS_COMPLETED)
    assert statuses(host) == [] and pending(manager)
    host.up = True
    await manager.joined()
    assert statuses(host) == ["completed"]


async def test_other_statuses_are_best_effort() -> None:
    host = Host()
    manager = UpdateManager(host)
    await manager.report(wire.STATUS_DOWNLOADING)
    await manager.joined()
    assert statuses(host) == ["downloading"]
    assert not pending(manager)


async def test_a_verdict_sent_while_the_join_was_on_the_way_is_not_sent_twice() -> None:
    """Found by the reliability campaign (seed 16, ~1 run in 10): the update ended while the
    new socket's join was on the way; its ``completed`` went out on that socket, and the join
    reply then sent it again — the server heard ``completed`` twice."""
    host = Host()
    manager = UpdateManager(host)
    await manager.report(wire.STATUS_COMPLETED)  # on the socket whose join is on the way
    await manager.joined()  # that join's reply
    assert statuses(host) == ["completed"]
    assert pending(manager)  # not confirmed yet: if this socket dies, the next join resends
    await manager.connection_lost()
    await manager.joined()
    assert statuses(host) == ["completed", "completed"]
