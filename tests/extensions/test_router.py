"""The extensions channel against FakeHub: join, attach handshake, routing, detach, re-join.

PROTOCOL.md §8.1–§8.2, §4.2 (phx_error/phx_close on a non-device topic), §14.6.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nhlink import ConfigError, NervesHubLink
from nhlink.extensions import (
    Extension,
    ExtensionContext,
    HealthExtension,
    LinuxHealthProvider,
    LoggingOptions,
)
from nhlink.protocol.channel import JoinRefused

from ._support import (
    DEVICE,
    Spy,
    hub_and_link,
    link_options,
    make_hub,
    running_link,
    sync_point,
    wait_count,
    wait_event,
    wait_ext,
)


async def test_no_extension_configured_means_no_join() -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {}) as link:
        await link.wait_joined(5)
        await sync_point(hub, "after-extensions-get")
        assert hub.devices[DEVICE].messages_for("extensions") == []
        assert link.extensions.configured == ()


async def test_disabled_entries_are_not_advertised() -> None:
    async with hub_and_link({"health"}, {"health": False, "logging": None}) as (hub, link):
        await link.wait_joined(5)
        await sync_point(hub, "s1")
        assert hub.devices[DEVICE].messages_for("extensions") == []


async def test_join_payload_array_reply_and_attached() -> None:
    custom = Spy(version="0.0.2")
    config: dict[str, Any] = {"health": True, "logging": True, "network_identity": custom}
    async with hub_and_link({"health", "network_identity"}, config) as (hub, link):
        join = await wait_ext(hub, "phx_join")
        # §8.1: {name: version} for every configured extension.
        assert join.payload == {
            "health": "0.0.1",
            "logging": "0.0.1",
            "network_identity": "0.0.2",
        }
        record = hub.devices[DEVICE]
        # §8.1: the reply is an array; logging is not enabled on this "product".
        assert record.offered_extensions == ["health", "network_identity"]
        await wait_ext(hub, "health:attached")
        await wait_ext(hub, "network_identity:attached")
        await wait_ext(hub, "health:report")
        assert link.extensions.attached == {"health", "network_identity"}
        assert record.attached_extensions == {"health", "network_identity"}
        assert record.messages_for("extensions", "logging:attached") == []
        assert custom.starts == 1
        # network_identity:request arrives on attach, prefix removed (§8.7, §14.6).
        await wait_event(custom.got_event)
        assert custom.events == [("request", {})]
        assert not link.extensions.get("logging").accepting  # type: ignore[union-attr]


async def test_reply_events_are_prefixed_again() -> None:
    spy = Spy(reply=("report", {"identities": [{"service": "x", "identifier": "y"}]}))
    async with hub_and_link({"network_identity"}, {"network_identity": spy}) as (hub, _link):
        message = await wait_ext(hub, "network_identity:report")
        assert message.payload == {"identities": [{"service": "x", "identifier": "y"}]}
        assert message.rejected is None


async def test_context_send_only_while_attached() -> None:
    spy = Spy()
    async with hub_and_link({"network_identity"}, {"network_identity": spy}) as (hub, link):
        await wait_event(spy.started)
        context = spy.contexts[0]
        assert context.name == "network_identity"
        assert context.link is link
        await wait_ext(hub, "network_identity:attached")
        assert context.attached
        assert await spy.send("report", {"identities": []})
        message = await wait_ext(hub, "network_identity:report")
        assert message.payload == {"identities": []}
        await hub.detach_extensions(DEVICE, ["network_identity"])
        await wait_event(spy.stopped)
        assert not spy.contexts[0].attached  # (not `context`: mypy keeps its narrowing)
        assert not await context.send("report", {"identities": []})
    assert not await Extension().send("anything")  # never started: nowhere to send


async def test_server_detach_sends_detached_and_stops_reports() -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": True}) as link:
        await wait_ext(hub, "health:report")
        assert await hub.detach_extensions(DEVICE, ["health"])
        await wait_ext(hub, "health:detached")
        assert link.extensions.attached == frozenset()
        reports = len(hub.devices[DEVICE].health_reports)
        # The server would not send this any more; if it did, the device must not answer.
        assert await hub.push(DEVICE, "extensions", "health:check", {})
        await sync_point(hub, "after-check")
        assert not await hub.request_health_check(DEVICE)
        await sync_point(hub, "again")
        assert len(hub.devices[DEVICE].health_reports) == reports
        assert hub.devices[DEVICE].messages_for("extensions", "health:report")[-1].rejected is None


async def test_detach_all_and_bare_string_forms() -> None:
    spy = Spy()
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "health:attached")
        await wait_ext(hub, "geo:attached")
        assert await hub.push(DEVICE, "extensions", "detach", {"extensions": "all"})
        await wait_ext(hub, "health:detached")
        await wait_ext(hub, "geo:detached")
        await wait_event(spy.stopped)
        assert link.extensions.attached == frozenset()
        # A bare name re-attaches one (NHL's form); the hub still offers it.
        assert await hub.push(DEVICE, "extensions", "attach", {"extensions": "geo"})
        await wait_count(hub, "geo:attached", 2)
        assert spy.starts == 2


async def test_error_reply_detach_stops_the_extension() -> None:
    spy = Spy()
    async with hub_and_link({"health"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "health:attached")
        assert spy.starts == 0  # geo is not offered
        # An attach for something the server does not offer: the hub answers
        # geo:attached with {"status": "error", "response": "detach"} (§8.2).
        assert await hub.push(DEVICE, "extensions", "attach", {"extensions": ["geo"]})
        attached = await wait_ext(hub, "geo:attached")
        assert attached.rejected == "detach"
        await wait_event(spy.stopped)
        assert spy.starts == 1 and spy.stops == 1
        assert "geo" not in link.extensions.attached
        assert "health" in link.extensions.attached
        # No ":detached" for a refusal: the server already considers it detached.
        assert hub.devices[DEVICE].messages_for("extensions", "geo:detached") == []


async def test_detach_reply_to_an_event_stops_the_extension() -> None:
    # §8.2: the bare "detach" error reply to *any* push of an extension (not only to its
    # ":attached") means the server no longer considers it attached: stop it.
    spy = Spy(reply=("location:update", {"source": "gps", "latitude": 1.0, "longitude": 2.0}))
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "geo:location:update")
        assert hub.forget_attachment(DEVICE, "geo")
        assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
        refused = await wait_count(hub, "geo:location:update", 2)
        assert refused[-1].rejected == "detach"
        await wait_event(spy.stopped)
        assert "geo" not in link.extensions.attached
        assert "health" in link.extensions.attached
        assert hub.devices[DEVICE].messages_for("extensions", "geo:detached") == []
        # Stopped for good: further requests are not answered.
        assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
        await sync_point(hub, "after-detach")
        assert len(hub.devices[DEVICE].messages_for("extensions", "geo:location:update")) == 2


async def test_reply_handlers_of_extension_pushes_expire() -> None:
    # ":attached" and every extension event register a handler for a reply that usually
    # never comes: they must not pile up on a long-lived connection.
    spy = Spy(reply=("location:update", {"source": "gps", "latitude": 1.0, "longitude": 2.0}))
    async with make_hub({"geo"}) as hub:
        link = NervesHubLink(extensions={"geo": spy}, **link_options(hub.port))
        link.reply_timeout = 0.2
        forgotten: list[str] = []
        all_gone = asyncio.Event()
        forget = link._forget_reply

        def spy_forget(ref: str) -> None:
            forget(ref)
            forgotten.append(ref)
            if link.pending_replies == 0 and len(forgotten) >= 7:
                all_gone.set()

        link._forget_reply = spy_forget  # type: ignore[method-assign]
        async with link:
            await wait_ext(hub, "geo:location:update")
            for _ in range(5):
                assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
            await wait_count(hub, "geo:location:update", 6)
            await wait_event(all_gone)
            assert link.pending_replies == 0
            assert link.session.tracked_replies == 0
            assert len(forgotten) >= 7  # geo:attached + 6 events


async def test_attach_event_for_a_newly_enabled_extension() -> None:
    spy = Spy(reply=("location:update", {"source": "gps", "latitude": 1.0, "longitude": 2.0}))
    async with hub_and_link({"health"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "health:attached")
        assert "geo" not in link.extensions.attached
        assert await hub.attach_extensions(DEVICE, ["geo"])
        await wait_ext(hub, "geo:attached")
        location = await wait_ext(hub, "geo:location:update")
        assert location.rejected is None
        assert spy.events == [("location:request", {})]
        assert link.extensions.attached == {"health", "geo"}
        # A repeated attach for an attached extension changes nothing.
        assert await hub.attach_extensions(DEVICE, ["geo"])
        await sync_point(hub, "after-repeat")
        assert len(hub.devices[DEVICE].messages_for("extensions", "geo:attached")) == 1


async def test_attach_all_starts_every_configured_extension() -> None:
    spy = Spy()
    async with hub_and_link({"health"}, {"health": True, "network_identity": spy}) as (hub, _link):
        await wait_ext(hub, "health:attached")
        assert await hub.attach_extensions(DEVICE, ["network_identity"])
        await wait_ext(hub, "network_identity:attached")
        assert await hub.push(DEVICE, "extensions", "attach", {"extensions": "all"})
        await sync_point(hub, "after-all")
        # Both were attached already: nothing is started twice.
        assert spy.starts == 1
        assert len(hub.devices[DEVICE].messages_for("extensions", "health:attached")) == 1


async def test_failed_start_sends_error_and_others_keep_working() -> None:
    broken = Spy(fail_start=RuntimeError("no gps receiver"))
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": broken}) as (hub, link):
        error = await wait_ext(hub, "geo:error")
        assert error.payload == {"reason": "start_failure: RuntimeError: no gps receiver"}
        await wait_ext(hub, "health:report")
        assert hub.devices[DEVICE].messages_for("extensions", "geo:attached") == []
        assert link.extensions.attached == {"health"}
        assert broken.stops == 0  # never started, so never stopped
        assert link.status.joined


async def test_raising_and_blocking_handlers_do_not_affect_others() -> None:
    spy = Spy(fail_event=ValueError("bad payload"))
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "health:report")
        await wait_event(spy.got_event)  # geo:location:request on attach; it raised
        # Still attached: the next event is delivered too.
        spy.got_event.clear()
        spy.block = asyncio.Event()
        assert await hub.push(DEVICE, "extensions", "geo:location:request", {})
        await wait_event(spy.got_event)
        # geo is stuck in its handler; health answers regardless.
        assert await hub.request_health_check(DEVICE)
        await wait_count(hub, "health:report", 2)
        assert link.extensions.attached == {"health", "geo"}
        spy.block.set()
        assert len(spy.events) == 2


async def test_unknown_and_unprefixed_events_are_ignored() -> None:
    async with make_hub({"health"}) as hub, running_link(hub, {"health": True}) as link:
        await wait_ext(hub, "health:report")
        for event in ("nope:thing", "nonsense", "attach"):
            assert await hub.push(DEVICE, "extensions", event, {"extensions": 7})
        await sync_point(hub, "after-junk")
        assert link.extensions.attached == {"health"}
        assert link.status.joined


@pytest.mark.parametrize("crash", [True, False], ids=["phx_error", "phx_close"])
async def test_channel_loss_rejoins_and_attaches_again(crash: bool) -> None:
    spy = Spy()
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": spy}) as (hub, link):
        await wait_ext(hub, "health:report")
        await wait_event(spy.started)
        lose = hub.crash_channel if crash else hub.close_channel
        assert await lose(DEVICE, "extensions")
        await wait_count(hub, "phx_join", 2)
        await wait_count(hub, "health:attached", 2)
        await wait_count(hub, "geo:attached", 2)
        await wait_count(hub, "health:report", 2)
        assert spy.starts == 2 and spy.stops == 1
        assert link.extensions.attached == {"health", "geo"}
        assert link.status.joined  # the device channel was not affected
        assert hub.upgrade_counts(DEVICE) == {101: 1}


async def test_renegotiated_after_reconnect() -> None:
    spy = Spy()
    async with hub_and_link({"health", "geo"}, {"health": True, "geo": spy}) as (hub, link):
        first = await wait_ext(hub, "health:report")
        assert first.connection == 1
        assert await hub.disconnect(DEVICE)
        again = await wait_ext(hub, "health:report", predicate=lambda m: m.connection == 2)
        assert again.rejected is None
        await wait_ext(hub, "geo:attached", predicate=lambda m: m.connection == 2)
        assert spy.starts == 2 and spy.stops == 1
        assert link.extensions.attached == {"health", "geo"}
    assert spy.stops == 2  # link.stop() stops the extensions


async def test_extension_stopped_when_link_stops() -> None:
    spy = Spy()
    async with hub_and_link({"geo"}, {"geo": spy}) as (hub, _link):
        await wait_ext(hub, "geo:attached")
        assert spy.stops == 0
    assert spy.stops == 1
    assert spy.starts == 1


async def test_refused_join_is_retried() -> None:
    async with hub_and_link({"health"}, {"health": True, "logging": True}) as (hub, link):
        await wait_ext(hub, "health:report")
        # FakeHub only refuses malformed joins, which nhlink never sends: feed the refusal
        # to the hook the router installed on the link.
        await link._other_join_refused(JoinRefused("extensions", {"reason": "join crashed"}))
        await wait_count(hub, "phx_join", 2)
        await wait_count(hub, "health:attached", 2)


# -- configuration ---------------------------------------------------------------------------


class Named(Extension):
    name = "something_else"


class BadVersion(Extension):
    version = ""


SHARED = Spy()


@pytest.mark.parametrize(
    ("extensions", "option"),
    [
        ({"health": 42}, "extensions.health"),
        ({"health": "yes"}, "extensions.health"),
        ({"health": LinuxHealthProvider}, "extensions.health"),
        ({"logging": "yes"}, "extensions.logging"),
        ({"logging": {"level": 10}}, "extensions.logging"),
        ({"geo": True}, "extensions.geo"),
        ({"geo": 3}, "extensions.geo"),
        ({"custom": True}, "extensions.custom"),
        ({"custom": object()}, "extensions.custom"),
        ({"custom": Spy}, "extensions.custom"),
        ({"a:b": Spy()}, "extensions.a:b"),
        ({"": Spy()}, "extensions."),
        ({"mine": Named()}, "extensions.mine"),
        ({"mine": BadVersion()}, "extensions.mine"),
        ({"mine": HealthExtension(LinuxHealthProvider())}, "extensions.mine"),
        ({"one": SHARED, "two": SHARED}, "extensions.two"),
    ],
)
def test_config_errors(extensions: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        NervesHubLink(extensions=extensions, **link_options())
    assert info.value.option == option


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0}, {"burst": 0}, {"queue_size": -1}, {"level": "INFO"}, {"burst": 1.5}],
)
def test_logging_options_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        LoggingOptions(**kwargs)
    assert info.value.option == "extensions.logging"


def test_accepted_shapes() -> None:
    class Provider:
        def metrics(self) -> dict[str, float]:
            return {}

    link = NervesHubLink(
        extensions={
            "health": Provider(),
            "logging": LoggingOptions(rate=2),
            "geo": lambda: {"source": "fixed", "latitude": 0.0, "longitude": 0.0},
            "network_identity": Spy(),
        },
        **link_options(),
    )
    router = link.extensions
    assert router.configured == ("health", "logging", "geo", "network_identity")
    assert router.join_payload() == dict.fromkeys(router.configured, "0.0.1")
    assert isinstance(router.get("health"), HealthExtension)
    assert router.get("nope") is None
    assert router.attached == frozenset()
    context = router.get("network_identity").context  # type: ignore[union-attr]
    assert isinstance(context, ExtensionContext) and not context.attached
    assert "network_identity" in repr(context)
    for name in ("health", "geo"):
        assert isinstance(
            NervesHubLink(extensions={name: lambda: {"x": 1}}, **link_options()), NervesHubLink
        )
    with pytest.raises(ConfigError):
        NervesHubLink(**link_options()).extensions.log_handler()
    link.log("info", "dropped silently: not attached")


async def test_stop_with_a_stuck_handler_still_stops_the_extension() -> None:
    spy = Spy()
    spy.block = asyncio.Event()  # never set: handle_event hangs
    async with hub_and_link({"geo"}, {"geo": spy}) as (_hub, link):
        link.extensions.stop_timeout = 0.05
        await wait_event(spy.got_event)  # stuck in geo:location:request
    assert spy.stops == 1
