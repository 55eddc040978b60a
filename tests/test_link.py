"""NervesHubLink end to end over 127.0.0.1 against nhlink.testing.FakeHub.

PROTOCOL.md §3–§6 and §12.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nhlink
from nhlink import ConfigError, LinkState, NervesHubLink
from nhlink.testing import FakeHub
from nhlink.testing.certs import PKI, create_pki
from tests.support import FAST_LINK, KEY, META, SECRET, Recorder, device_options


def link_options(hub: FakeHub, identifier: str = "gw-0001", **extra: Any) -> dict[str, Any]:
    return device_options(hub, identifier, **extra)


async def test_shared_secret_connect_and_join_params(hub: FakeHub) -> None:
    async with NervesHubLink(**link_options(hub)) as link:
        record = await hub.wait_for_device("gw-0001")
        status = await link.wait_joined(5)
        assert status.state is LinkState.JOINED
        assert record.auth == "product_key"
        params = record.join_params
        assert params is not None
        assert params["nerves_fw_uuid"] == META["uuid"]
        assert params["nerves_fw_product"] == "gw"
        assert params["nerves_fw_architecture"] == "x86_64"
        assert params["nerves_fw_platform"] == "test"
        assert params["nerves_fw_version"] == "1.0.0"
        assert params["device_api_version"] == "2.2.0"
        assert params["currently_downloading_uuid"] is None
        assert params["meta"] == {
            "firmware_validated": False,
            "firmware_auto_revert_detected": False,
        }
        assert "fwup_version" not in params  # §13.16: not a fwup device
        assert hub.upgrade_counts("gw-0001") == {101: 1}
    assert link.status.state is LinkState.STOPPED
    await hub.wait_for_disconnect("gw-0001")


async def test_refs_unique_on_the_wire(hub: FakeHub) -> None:
    async with NervesHubLink(**link_options(hub, heartbeat_interval=0.05)) as link:
        await link.wait_joined(5)
        await hub.wait_for(lambda: hub.devices["gw-0001"].heartbeats >= 3)
        await hub.identify("gw-0001")
        record = hub.devices["gw-0001"]
        refs = [m.ref for m in record.messages]
        assert len(refs) == len(set(refs))
        hb = record.messages_for("phoenix", "heartbeat")
        assert all(m.join_ref is None and m.payload == {} for m in hb)


async def test_mtls_connect(tmp_path: Path) -> None:
    pki: PKI = create_pki(tmp_path)
    device = pki.device("gw-cert-7")
    async with FakeHub(tls=pki.server_context()) as hub:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": hub.port,
            "ssl": True,
            "device_cert": device.cert,
            "device_key": device.key,
            "ca_file": pki.ca.cert,
            "firmware_meta": META,
            "name": "mtls",
            **FAST_LINK,
        }
        async with NervesHubLink(**options) as link:
            assert link.config.identity == "gw-cert-7"
            record = await hub.wait_for_device("gw-cert-7")
            assert record.auth == "certificate"
            await link.wait_joined(5)


async def test_mtls_untrusted_server_is_not_joined(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    device = pki.device("gw-cert-8")
    async with FakeHub(tls=pki.server_context()) as hub:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": hub.port,
            "ssl": True,
            "device_cert": device.cert,
            "device_key": device.key,
            "ca_file": pki.untrusted_ca.cert,
            "firmware_meta": META,
            "name": "mtls-untrusted",
            **FAST_LINK,
        }
        async with NervesHubLink(**options) as link:
            status = await link.wait_for(lambda s: s.last_error is not None, 5)
            assert isinstance(status.last_error, nhlink.TLSVerificationError)
            assert "gw-cert-8" not in hub.devices


async def test_heartbeat_and_dead_server_detected(hub: FakeHub) -> None:
    async with NervesHubLink(**link_options(hub, heartbeat_interval=0.1)) as link:
        await link.wait_joined(5)
        record = hub.devices["gw-0001"]
        await hub.wait_for(lambda: record.heartbeats >= 2)
        hub.stop_heartbeat_replies("gw-0001")
        status = await link.wait_for(lambda s: isinstance(s.last_error, nhlink.HeartbeatTimeout), 5)
        assert "unanswered" in str(status.last_error)
        await hub.wait_for(lambda: record.joins >= 2, timeout=5)  # reconnected and re-joined
        await link.wait_joined(5)


@pytest.mark.parametrize("code", [1001, 1012, 1002, 1000])
async def test_reconnect_after_close_code_with_backoff(hub: FakeHub, code: int) -> None:
    rand_values = [0.5]
    opts = link_options(hub, backoff_initial=0.2, backoff_max=1.0, backoff_jitter=0.5)
    link = NervesHubLink(rand=lambda: rand_values[0], **opts)
    async with link:
        await link.wait_joined(5)
        await hub.disconnect("gw-0001", code=code)
        status = await link.wait_for(lambda s: s.state is LinkState.WAITING, 5)
        assert status.last_close_code == code
        assert status.next_retry_in == pytest.approx(0.2 * 1.25)  # jitter 0.5 * rand 0.5
        assert status.last_retry_delay == status.next_retry_in
        attempts = await hub.wait_for_attempts("gw-0001", 2, status=101, timeout=5)
        gap = attempts[1].monotonic - attempts[0].monotonic
        assert gap >= 0.25
        await link.wait_joined(5)
        assert link.backoff.attempt == 1  # not reset by the join itself...
        await link.wait_for(lambda s: s.stable, 5)
        assert link.backoff.attempt == 0  # ...but once it stayed up (backoff_reset_after)


async def test_drain_of_many_devices_reconnects_all_with_jitter(hub: FakeHub) -> None:
    links = [NervesHubLink(**link_options(hub, f"gw-{i:04d}")) for i in range(5)]
    for link in links:
        await link.start()
    try:
        for link in links:
            await link.wait_joined(5)
        assert await hub.drain() == 5
        delays = []
        for link in links:
            # joins == 2: back after the drain; the delay it waited stays in the status.
            status = await link.wait_for(lambda s: s.joins >= 2 and s.joined, 5)
            assert status.last_retry_delay is not None
            delays.append(status.last_retry_delay)
        assert all(0.05 <= d <= 0.075 for d in delays)
        assert len(set(delays)) > 1  # jitter: not in lockstep
        assert all(hub.devices[f"gw-{i:04d}"].close_codes == [1012] for i in range(5))
    finally:
        for link in links:
            await link.stop()


async def test_reconnect_closes_socket_and_resets_backoff(hub: FakeHub) -> None:
    recorder = Recorder()
    async with NervesHubLink(
        client=recorder, **link_options(hub, backoff_initial=5.0, backoff_max=10.0)
    ) as link:
        await link.wait_joined(5)
        link.backoff.attempt = 3
        link.reconnect()
        assert link.backoff.attempt == 0  # reset by reconnect() itself, before any join
        record = hub.devices["gw-0001"]
        await hub.wait_for(lambda: record.joins >= 2, timeout=3)  # at once, not after 5 s
        assert recorder.events[:3] == ["connected", "disconnected", "connected"]
        assert hub.upgrade_counts("gw-0001") == {101: 2}
        assert record.connections == 2


async def test_reboot_sends_rebooting_first(hub: FakeHub) -> None:
    recorder = Recorder()
    async with NervesHubLink(client=recorder, **link_options(hub)) as link:
        await link.wait_joined(5)
        await hub.reboot("gw-0001")
        await asyncio.wait_for(recorder.rebooted.wait(), 5)
        msg = await hub.wait_for_message("gw-0001", topic="device", event="rebooting")
        assert msg.payload == {}
        await hub.identify("gw-0001")
        await asyncio.wait_for(recorder.identified.wait(), 5)


async def test_raising_callbacks_do_not_break_the_link(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(nhlink.Client):
        def handle_connected(self) -> None:
            raise RuntimeError("boom in connected")

        async def identify(self) -> None:
            raise RuntimeError("boom in identify")

    caplog.set_level(logging.INFO, logger="nhlink")
    async with NervesHubLink(client=Broken(), **link_options(hub)) as link:
        await link.wait_joined(5)
        await hub.identify("gw-0001")
        await hub.push("gw-0001", "device", "no_such_event", {})
        await hub.run_script("gw-0001", "IO.puts(1)", ref="r-1")
        msg = await hub.wait_for_message("gw-0001", topic="device", event="scripts/run")
        assert msg.payload == {
            "ref": "r-1",
            "result": "error",
            "reason": "unsupported",
            # §6.6: the UI shows only output and return: say why nothing ran
            "output": "scripts are not supported on this device "
            "(nhlink: no script handler or command list configured)",
            "return": "",
        }
        assert link.status.joined
    assert "boom in connected" in caplog.text
    assert "boom in identify" in caplog.text
    assert "no_such_event" in caplog.text


async def test_channel_crash_and_close_lead_to_rejoin(hub: FakeHub) -> None:
    async with NervesHubLink(**link_options(hub)) as link:
        await link.wait_joined(5)
        record = hub.devices["gw-0001"]
        await hub.crash_channel("gw-0001")
        await hub.wait_for(lambda: record.joins >= 2, timeout=5)
        await link.wait_joined(5)
        await hub.close_channel("gw-0001")
        await hub.wait_for(lambda: record.joins >= 3, timeout=5)
        await link.wait_joined(5)


async def test_refused_join_retries_with_backoff(hub: FakeHub) -> None:
    hub.reject_joins = True
    async with NervesHubLink(**link_options(hub)) as link:
        status = await link.wait_for(lambda s: s.connect_attempts >= 3, 5)
        assert "join refused" in str(status.last_error)
        assert not status.joined
        hub.reject_joins = False
        await link.wait_joined(5)


async def test_bad_secret_is_retried_on_the_backoff_schedule(hub: FakeHub) -> None:
    opts = link_options(
        hub, product_secret="wrong-secret", backoff_initial=0.1, backoff_max=0.4, backoff_jitter=0.0
    )
    async with NervesHubLink(**opts) as link:
        attempts = await hub.wait_for_attempts("gw-0001", 4, status=401, timeout=5)
        gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4
        assert isinstance(link.status.last_error, nhlink.AuthRejected)
        assert "wrong-secret" not in repr(link.config)


async def test_fast_clock_recovered_through_date_header(hub: FakeHub) -> None:
    # The device clock runs 5 s fast: the server refuses tokens from its future (§3.2.4).
    link = NervesHubLink(clock=lambda: time.time() + 5, **link_options(hub))
    async with link:
        await link.wait_joined(5)
    counts = hub.upgrade_counts("gw-0001")
    assert counts[401] == 1 and counts[101] == 1


async def test_slow_clock_recovered_through_date_header(hub: FakeHub) -> None:
    link = NervesHubLink(clock=lambda: time.time() - 600, **link_options(hub))
    async with link:
        await link.wait_joined(5)
    assert hub.upgrade_counts("gw-0001") == {401: 1, 101: 1}


async def test_unset_clock_refuses_to_sign(hub: FakeHub) -> None:
    link = NervesHubLink(clock=lambda: 1000.0, **link_options(hub))
    async with link:
        status = await link.wait_for(lambda s: s.last_error is not None, 5)
        assert isinstance(status.last_error, nhlink.ClockNotSet)
    assert hub.attempts == []  # nothing was sent


async def test_two_named_instances(hub: FakeHub) -> None:
    a = await nhlink.start_link(**link_options(hub, "gw-a"))
    b = await nhlink.start_link(**link_options(hub, "gw-b"))
    try:
        await a.wait_joined(5)
        await b.wait_joined(5)
        assert nhlink.get("gw-a") is a and nhlink.get("gw-b") is b
        nhlink.reconnect("gw-a")
        await hub.wait_for(lambda: hub.devices["gw-a"].joins >= 2, timeout=5)
        assert hub.devices["gw-b"].joins == 1
        await nhlink.confirm_update("gw-b")
        await hub.wait_for_message("gw-b", topic="device", event="firmware_validated")
    finally:
        await a.stop()
        await b.stop()
    with pytest.raises(KeyError):
        nhlink.get("gw-a")


async def test_same_identity_twice_is_a_config_error(hub: FakeHub) -> None:
    a = NervesHubLink(**link_options(hub, "gw-dup", name="one"))
    b = NervesHubLink(**link_options(hub, "gw-dup", name="two"))
    await a.start()
    try:
        with pytest.raises(ConfigError, match="same device identity"):
            await b.start()
        same_name = NervesHubLink(**link_options(hub, "gw-other", name="one"))
        with pytest.raises(ConfigError, match="already running"):
            await same_name.start()
    finally:
        await a.stop()
    # Stopped, ``one`` frees its name and its identity: ``two`` may run now (and a clash that
    # was refused left nothing behind).
    await b.start()
    try:
        assert nhlink.get("two") is b
        with pytest.raises(ConfigError, match="same device identity"):
            await NervesHubLink(**link_options(hub, "gw-dup", name="three")).start()
    finally:
        await b.stop()
    assert not {"one", "two", "three"} & set(nhlink.instances.names())


async def test_confirm_update_persists_validation(hub: FakeHub, tmp_path: Path) -> None:
    opts = link_options(hub, state_dir=tmp_path)
    async with NervesHubLink(**opts) as link:
        await link.wait_joined(5)
        await link.confirm_update()
        await hub.wait_for_message("gw-0001", topic="device", event="firmware_validated")
    record = hub.devices["gw-0001"]
    async with NervesHubLink(**opts) as link:  # a "reboot" into the same firmware
        await hub.wait_for(lambda: record.joins >= 2)
        assert record.join_params is not None
        assert record.join_params["meta"]["firmware_validated"] is True
    new_fw = dict(META, uuid="00000000-0000-0000-0000-000000000002", version="1.1.0")
    async with NervesHubLink(**dict(opts, firmware_meta=new_fw)) as link:
        await hub.wait_for(lambda: record.joins >= 3)
        assert record.join_params["meta"]["firmware_validated"] is False  # new image: unvalidated


async def test_confirm_update_writer_refusal(hub: FakeHub) -> None:
    class Refusing(nhlink.FwupWriter):
        def fwup_confirm(self) -> None:
            raise OSError("bootloader says no")

    async with NervesHubLink(fwup_writer=Refusing(), **link_options(hub)) as link:
        await link.wait_joined(5)
        with pytest.raises(nhlink.WriterError, match="bootloader says no"):
            await link.confirm_update()
        assert link.store.state.validated_uuid is None


def _bad(**changes: Any) -> Callable[[], NervesHubLink]:
    def make() -> NervesHubLink:
        base: dict[str, Any] = {
            "host": "hub.example.com",
            "product_key": KEY,
            "product_secret": SECRET,
            "identifier": "x",
            "firmware_meta": META,
        }
        for key, value in changes.items():
            if value is ...:
                base.pop(key, None)
            else:
                base[key] = value
        return NervesHubLink(**base)

    return make


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (_bad(firmware_meta=...), "firmware_meta"),
        (_bad(firmware_meta={**META, "uuid": ""}), "firmware_meta.uuid"),
        (
            _bad(firmware_meta={k: v for k, v in META.items() if k != "platform"}),
            "firmware_meta.platform",
        ),
        (_bad(product_key=..., product_secret=..., identifier=...), "device_cert"),
        (_bad(device_cert="/nonexistent.pem", device_key="/nonexistent.key"), "device_cert"),
        (_bad(identifier=""), "identifier"),
        (_bad(port=0), "port"),
        (_bad(port="443"), "port"),
        (_bad(host=""), "host"),
        (_bad(heartbeat_interval=0), "heartbeat_interval"),
        (_bad(frobnicate=True), "frobnicate"),
    ],
)
def test_config_errors(make: Callable[[], NervesHubLink], option: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.option == option


def test_mtls_files_must_be_readable(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as info:
        NervesHubLink(
            host="h", device_cert=cert, device_key=tmp_path / "missing.key", firmware_meta=META
        )
    assert info.value.option == "device_key"


def test_secret_never_logged_or_shown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        link = NervesHubLink(
            host="h", product_key=KEY, product_secret=SECRET, identifier="x", firmware_meta=META
        )
    assert SECRET not in repr(link) + repr(link.config) + caplog.text


async def test_stop_lets_async_disconnect_callback_finish(hub: FakeHub) -> None:
    finished = asyncio.Event()

    class Slow(nhlink.Client):
        async def handle_disconnected(self) -> None:
            await asyncio.sleep(0.05)  # work the callback must be allowed to complete
            finished.set()

    link = NervesHubLink(client=Slow(), **link_options(hub))
    await link.start()
    await link.wait_joined(5)
    await link.stop()
    assert finished.is_set()


async def test_stop_against_a_server_that_ignores_close(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nhlink.link._CLOSE_TIMEOUT", 0.3)
    async with NervesHubLink(**link_options(hub)) as link:
        await link.wait_joined(5)
        ws = link._ws
        assert ws is not None
        transport = ws._transport
        assert transport is not None
        # From now on the server never sees our frames (close included) and never closes.
        transport.write = lambda data: None  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        started = loop.time()
    assert loop.time() - started < 3  # bounded by the close timeout, not hanging
    assert ws.closed


async def test_reconnect_during_connect_does_not_skip_later_backoff(hub: FakeHub) -> None:
    link = NervesHubLink(rand=lambda: 0.0, **link_options(hub, backoff_initial=0.2))
    await link.start()
    try:
        link.reconnect()  # while the first attempt is under way
        await link.wait_joined(5)
        await hub.disconnect("gw-0001", code=1001)
        status = await link.wait_for(lambda s: s.state is LinkState.WAITING, 5)
        assert status.next_retry_in == pytest.approx(0.2)  # not 0: the flag was consumed
    finally:
        await link.stop()


async def test_secret_never_logged_while_connecting(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = NervesHubLink(**link_options(hub, "gw-bad", product_secret="wrong-" + SECRET[6:]))
    async with bad, NervesHubLink(**link_options(hub)) as good:
        await good.wait_joined(5)
        await hub.wait_for_attempts("gw-bad", 2, status=401)
    text = caplog.text + repr(good.status) + repr(bad.status)
    assert "gw-bad" in text or "401" in text  # the attempts were logged...
    assert SECRET not in text and SECRET[6:] not in text  # ...without the secrets


async def test_links_share_an_ssl_context_and_a_connect_gate(tmp_path: Path) -> None:
    """Many links in one process (a gateway, nhlink fleet): one verifying TLS context for all,
    every connection attempt through one gate, every status change to a listener."""
    import ssl

    from nhlink.transport import client_ssl_context

    pki = create_pki(tmp_path)
    shared = client_ssl_context(cafile=pki.ca.cert)
    gate_calls: list[str] = []
    states: dict[int, list[LinkState]] = {0: [], 1: [], 2: []}

    def listener(i: int) -> Callable[[nhlink.LinkStatus], None]:
        def heard(status: nhlink.LinkStatus) -> None:
            if not states[i] or states[i][-1] is not status.state:  # every change, not every call
                states[i].append(status.state)

        return heard

    async def gate() -> None:
        gate_calls.append("attempt")

    async with FakeHub(tls=pki.server_context(mtls=False), shared_secrets={KEY: SECRET}) as hub:
        links = [
            NervesHubLink(
                **device_options(hub, f"gw-{i}", ssl=True),
                ssl_context=shared,
                connect_gate=gate,
                status_listener=listener(i),
            )
            for i in range(3)
        ]
        for link in links:
            await link.start()
        for link in links:
            await link.wait_joined(10)
            assert link._ssl_context is shared
        for link in links:
            await link.stop()
    assert gate_calls == ["attempt"] * 3
    expected = [LinkState.CONNECTING, LinkState.CONNECTED, LinkState.JOINED, LinkState.STOPPED]
    assert list(states.values()) == [expected] * 3
    # A context that would not verify the hub is refused (unless said so explicitly).
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigError, match="ssl_context"):
        NervesHubLink(**device_options(1, "gw-x", ssl=True), ssl_context=lax)
    with pytest.raises(ConfigError, match="ssl_context"):
        NervesHubLink(**device_options(1, "gw-x", ssl=False), ssl_context=shared)
    NervesHubLink(
        **device_options(1, "gw-x", ssl=True, dangerously_disable_verification=True),
        ssl_context=lax,
    )
    # The context carries the CA and certificate: given both ways, one would be ignored.
    with pytest.raises(ConfigError, match="ssl_context"):
        NervesHubLink(
            **device_options(1, "gw-x", ssl=True, ca_file=pki.ca.cert), ssl_context=shared
        )


async def test_stop_while_waiting_at_the_connect_gate_opens_no_connection(hub: FakeHub) -> None:
    at_gate = asyncio.Event()
    never = asyncio.Event()

    async def gate() -> None:
        at_gate.set()
        await never.wait()  # a pacer with a long backlog

    link = NervesHubLink(**device_options(hub, "gw-gated"), connect_gate=gate)
    await link.start()
    await asyncio.wait_for(at_gate.wait(), 5)
    started = time.monotonic()
    await link.stop()
    assert time.monotonic() - started < 2  # abandoned at once, not after the 10 s grace
    assert link.status.connect_attempts == 0
    assert "gw-gated" not in hub.devices


async def test_link_objects_stay_within_cpythons_shared_key_limit(hub: FakeHub) -> None:
    """CPython shares one key table between the instances of a class only while the class's
    instances have at most 29 attribute names (SHARED_KEYS_MAX_SIZE 30, one slot spent on the
    first instance); past it every instance carries a dict of its own, ~1.5 KiB per link, which
    ``nhlink fleet`` pays 10,000 times. A new attribute belongs in an existing component.
    The per-link components use ``__slots__`` (no dict at all): a base class without
    ``__slots__`` would quietly give each instance a dict again."""
    async with NervesHubLink(**link_options(hub)) as link:
        await link.wait_joined(10)
        ws = link._ws
        assert ws is not None
        names = vars(link)
        assert len(names) <= 29, ("NervesHubLink", len(names))
        slotted = [
            ws,
            ws._conn,
            link.updates,
            link.extensions,
            link.session,
            link.backoff,
            link.store,
            link.store.state,
            link._callbacks,
            link._signer,
            link._status,
            link.remote,
            link.client,  # DefaultClient
        ]
        for obj in slotted:
            assert not hasattr(obj, "__dict__"), type(obj).__name__


@pytest.mark.parametrize(("interval", "slot"), [(30.0, 0.1), (0.05, 0.0005)])
async def test_heartbeats_are_due_at_slot_ends_so_many_links_beat_together(
    interval: float, slot: float
) -> None:
    """A heartbeat is due at the end of a slot (0.1 s, or 1 % of a short interval): the links
    of one process beat in the same turn of the loop. The interval never shrinks."""
    from types import SimpleNamespace

    from nhlink.link import _Heartbeat

    loop = asyncio.get_running_loop()
    link: Any = SimpleNamespace(config=SimpleNamespace(heartbeat_interval=interval))
    beats: list[float] = []
    started = loop.time()
    for _ in range(20):
        before = loop.time()
        beat = _Heartbeat(link, ws=None)  # type: ignore[arg-type]
        after = loop.time()
        assert beat._handle is not None
        when = beat._handle.when()
        beat.cancel()
        assert before + interval <= when <= after + interval + slot
        assert abs(when / slot - round(when / slot)) < 1e-6  # on a slot boundary
        beats.append(when)
        await asyncio.sleep(0)
    # Scheduled within one slot of each other, they are due at the same instant: 20 timers
    # share as many instants as the slots the scheduling spanned (plus the edges).
    assert len(set(beats)) <= (loop.time() - started) / slot + 2
    if interval == 30.0:
        assert len(set(beats)) <= 2  # 20 schedulings take far less than 0.1 s
