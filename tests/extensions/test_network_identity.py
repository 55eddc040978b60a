"""The network_identity extension (PROTOCOL.md §8.7): reports over FakeHub, built-in providers
parsing real-format output of stand-in ``wg``/``tailscale``/``netbird`` scripts, the server's
rules, change detection on the interval, and the nodekey → base64 conversion."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shlex
import types
from pathlib import Path
from typing import Any

import pytest

from nhlink import ConfigError
from nhlink.extensions import (
    IdentityProvider,
    IdentityProviderError,
    IdentityUnavailable,
    NetBirdProvider,
    NetworkIdentityExtension,
    NetworkIdentityOptions,
    TailscaleProvider,
    WireGuardProvider,
    nodekey_to_base64,
)
from nhlink.extensions.network_identity import (
    DEFAULT_PROVIDERS,
    CallableProvider,
    normalize_identity,
    run_command,
)

from ._support import DEVICE, hub_and_link, sync_point, wait_ext
from .test_docs import BLOCK, DOC

LOGGER = "nhlink.extensions.network_identity"
REPORT = "network_identity:report"

# Keys: standard base64 of 32 bytes (44 characters), as wg and NetBird print them.
WG0 = "X4LDvyoueTRbmD0krGvriprmvGdab5d0A/1K/Tgqpxw="
WG0_ROTATED = "ccMEZrO9sBv7XBP5kqgDV8jV2ZddWwZWreJdtLlMa9Q="
WG1 = "ifabA9SZV4DDG5AHTbCYp7uOppkP8hmNfCeSs3OafgU="
NETBIRD_KEY = "Iay3OpFfBHr4swr3uWcTPgIkkbDv1lUgKapD+HmIqD4="
# Tailscale prints node keys as hex; the server wants the same 32 bytes in base64.
TS_NODEKEY = "nodekey:19941697dece830050dfce1f9d55dde357de7fecf49bc8f1b7f4f872c7d55cbb"
TS_KEY = "GZQWl97OgwBQ384fnVXd41fef+z0m8jxt/T4csfVXLs="
IROH_ID = "ae58ff8833241ac82d6ff7611046ed67b5072d142c588d0063e942d9a75502b6"

#: ``wg show all public-key``: "<interface>\t<key>" per interface; "(none)" without a key.
WG_OUTPUT = f"wg0\t{WG0}\nwt0\t{NETBIRD_KEY}\nwg-spare\t(none)\n"

#: ``tailscale status --json`` (ipnstate.Status), abridged from a real node.
TAILSCALE_STATUS: dict[str, Any] = {
    "Version": "1.76.6-t5e5ef3c5a-g3e7a2b4f2",
    "TUN": True,
    "BackendState": "Running",
    "HaveNodeKey": True,
    "AuthURL": "",
    "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1a01:6667"],
    "Self": {
        "ID": "nT2mq1Bx9221CNTRL",
        "PublicKey": TS_NODEKEY,
        "HostName": "gw-0001",
        "DNSName": "gw-0001.tail1234.ts.net.",
        "OS": "linux",
        "UserID": 6110815361183524,
        "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1a01:6667"],
        "AllowedIPs": ["100.101.102.103/32", "fd7a:115c:a1e0::1a01:6667/128"],
        "Addrs": ["203.0.113.7:41641", "192.168.1.20:41641"],
        "CurAddr": "",
        "Relay": "fra",
        "RxBytes": 0,
        "TxBytes": 0,
        "Created": "2025-03-14T09:26:53.589793238Z",
        "LastWrite": "0001-01-01T00:00:00Z",
        "LastSeen": "0001-01-01T00:00:00Z",
        "LastHandshake": "0001-01-01T00:00:00Z",
        "Online": True,
        "ExitNode": False,
        "ExitNodeOption": False,
        "Active": False,
        "PeerAPIURL": ["http://100.101.102.103:42311"],
        "Capabilities": ["https://tailscale.com/cap/ssh"],
        "InNetworkMap": True,
        "InMagicSock": False,
        "InEngine": False,
    },
    "Health": [],
    "MagicDNSSuffix": "tail1234.ts.net",
    "CurrentTailnet": {
        "Name": "example.com",
        "MagicDNSSuffix": "tail1234.ts.net",
        "MagicDNSEnabled": True,
    },
    "CertDomains": ["gw-0001.tail1234.ts.net"],
    "Peer": {
        "nodekey:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9": {
            "ID": "nK4Wj2ft9111CNTRL",
            "PublicKey": "nodekey:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "HostName": "laptop",
            "DNSName": "laptop.tail1234.ts.net.",
            "OS": "macOS",
            "TailscaleIPs": ["100.90.80.70"],
            "Online": True,
        }
    },
    "User": {"6110815361183524": {"ID": 6110815361183524, "LoginName": "ops@example.com"}},
    "ClientVersion": None,
}

#: ``netbird status --json`` (client/status OutputOverview), abridged.
NETBIRD_STATUS: dict[str, Any] = {
    "peers": {"total": 0, "connected": 0, "details": []},
    "cliVersion": "0.36.5",
    "daemonVersion": "0.36.5",
    "management": {"url": "https://api.netbird.io:443", "connected": True, "error": ""},
    "signal": {"url": "https://signal.netbird.io:443", "connected": True, "error": ""},
    "relays": {"total": 1, "available": 1, "details": []},
    "netbirdIp": "100.92.14.3/16",
    "publicKey": NETBIRD_KEY,
    "usesKernelInterface": True,
    "fqdn": "gw-0001.netbird.cloud",
    "quantumResistance": False,
    "quantumResistancePermissive": False,
    "networks": ["100.92.0.0/16"],
    "forwardingRules": 0,
    "dnsServers": [],
    "events": [],
    "lazyConnectionEnabled": False,
    "profileName": "default",
}

NETBIRD_NEEDS_LOGIN = (
    "Daemon status: NeedsLogin\n\n"
    "Run UP command to log in with SSO (interactive login):\n\n netbird up \n\n"
)

WG_ARGS = "show all public-key"
STATUS_ARGS = "status --json"


def fake_command(directory: Path, name: str, arguments: str, output: str) -> Path:
    """An executable ``directory/name`` that prints the contents of ``directory/name.out`` when
    called with exactly ``arguments`` (and fails like a real CLI otherwise)."""
    data = directory / f"{name}.out"
    data.write_text(output, encoding="utf-8")
    script = directory / name
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$*" != {shlex.quote(arguments)} ]; then\n'
        '  echo "unexpected arguments: $*" >&2\n'
        "  exit 2\n"
        "fi\n"
        f"exec cat {shlex.quote(str(data))}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def set_output(script: Path, output: str) -> None:
    """Atomically change what ``script`` (from :func:`fake_command`) prints."""
    temporary = script.parent / f"{script.name}.out.tmp"
    temporary.write_text(output, encoding="utf-8")
    os.replace(temporary, script.parent / f"{script.name}.out")


def shell_script(directory: Path, name: str, body: str) -> Path:
    script = directory / name
    script.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    script.chmod(0o755)
    return script


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent or init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wireguard(key: str, interface: str) -> dict[str, Any]:
    return {
        "service": "wireguard",
        "identifier": key,
        "instance": interface,
        "details": {"interface": interface},
    }


class Counter:
    """An ``async`` provider returning ``identities``, counting its calls."""

    def __init__(self, identities: list[dict[str, Any]]) -> None:
        self.identities = identities
        self.calls = 0
        self._called = asyncio.Event()

    async def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        self._called.set()
        return self.identities

    async def wait_calls(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.calls < count:
                self._called.clear()
                await self._called.wait()


def extension(*providers: Any, interval: float = 0) -> NetworkIdentityExtension:
    return NetworkIdentityExtension(
        NetworkIdentityOptions(providers=list(providers), interval=interval)
    )


def polling(ext: NetworkIdentityExtension) -> bool:
    """``ext.polling``, read through a call (an ``assert`` on the property narrows it for mypy)."""
    return ext.polling


def reports(hub: Any) -> list[Any]:
    payloads: list[Any] = hub.devices[DEVICE].payloads(REPORT, "extensions")
    return payloads


def events(hub: Any) -> list[str]:
    return [m.event for m in hub.devices[DEVICE].messages_for("extensions")]


# -- end to end ----------------------------------------------------------------------------------


async def test_request_is_answered_with_every_identity() -> None:
    def plain() -> list[dict[str, Any]]:  # runs in a worker thread
        return [
            {
                "service": "iroh",
                "identifier": IROH_ID,
                "instance": "  console \n",
                "details": {"relay": "https://euw1-1.relay.example/"},
            }
        ]

    async def coroutine() -> list[dict[str, Any]]:
        return [{"service": "wireguard", "identifier": WG0, "instance": "wg0"}]

    ext = extension(plain, coroutine)
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, link):
        join = await wait_ext(hub, "phx_join")
        assert join.payload == {"network_identity": "0.0.1"}
        report = await wait_ext(hub, REPORT)
        assert report.rejected is None
        expected = [
            {
                "service": "iroh",
                "identifier": IROH_ID,
                "instance": "console",
                "details": {"relay": "https://euw1-1.relay.example/"},
            },
            {"service": "wireguard", "identifier": WG0, "instance": "wg0", "details": {}},
        ]
        assert report.payload == {"identities": expected}
        order = events(hub)
        assert order.index("network_identity:attached") < order.index(REPORT)
        assert ext.reported == expected
        assert not ext.polling  # interval 0: no periodic check
        # Every request gets everything, changed or not.
        assert await hub.push(DEVICE, "extensions", "network_identity:request", {})
        await hub.wait_for(lambda: len(reports(hub)) == 2, what="a second report")
        assert reports(hub) == [{"identities": expected}] * 2
        assert link.extensions.attached == {"network_identity"}
        assert ext.reports_sent == 2


async def test_builtin_providers_parse_real_output(tmp_path: Path) -> None:
    wg = fake_command(tmp_path, "wg", WG_ARGS, WG_OUTPUT)
    tailscale = fake_command(
        tmp_path, "tailscale", STATUS_ARGS, json.dumps(TAILSCALE_STATUS, indent=2)
    )
    netbird = fake_command(tmp_path, "netbird", STATUS_ARGS, json.dumps(NETBIRD_STATUS, indent=2))
    ext = extension(
        WireGuardProvider(wg), TailscaleProvider(command=tailscale), NetBirdProvider([str(netbird)])
    )
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, _link):
        report = await wait_ext(hub, REPORT)
    assert report.rejected is None
    assert report.payload == {
        "identities": [
            wireguard(WG0, "wg0"),
            wireguard(NETBIRD_KEY, "wt0"),  # NetBird's kernel interface is a wg interface too
            {
                "service": "tailscale",
                "identifier": TS_KEY,
                "details": {
                    "HostName": "gw-0001",
                    "DNSName": "gw-0001.tail1234.ts.net.",
                    "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1a01:6667"],
                },
            },
            {
                "service": "netbird",
                "identifier": NETBIRD_KEY,
                "details": {"fqdn": "gw-0001.netbird.cloud", "netbirdIp": "100.92.14.3/16"},
            },
        ]
    }


async def test_missing_binaries_yield_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    answers: list[list[dict[str, Any]]] = [[]]  # nothing on the first request

    async def late() -> list[dict[str, Any]]:
        return answers.pop() if answers else [{"service": "iroh", "identifier": IROH_ID}]

    ext = extension(
        WireGuardProvider(tmp_path / "missing" / "wg"),
        TailscaleProvider(str(tmp_path / "tailscale")),
        NetBirdProvider(tmp_path / "netbird"),
        late,
    )
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, link):
        await wait_ext(hub, "network_identity:attached")
        # The first request found no identity and sent nothing (§8.7, as NHL); the extension
        # answers in order, so the report this one gets is the only one.
        assert await hub.push(DEVICE, "extensions", "network_identity:request", {})
        report = await wait_ext(hub, REPORT)
        assert report.payload == {
            "identities": [{"service": "iroh", "identifier": IROH_ID, "details": {}}]
        }
        await sync_point(hub, "after-report")
        assert len(reports(hub)) == 1
        assert link.extensions.attached == {"network_identity"}
    missing = [r for r in caplog.records if "is not installed" in r.getMessage()]
    first = [r for r in missing if not r.getMessage().endswith("(again)")]
    assert len(first) == 3 and len(missing) == 6  # once per provider, then quietly
    assert {r.levelno for r in missing} == {logging.DEBUG}
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_server_rules_are_enforced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    keys = [base64.b64encode(bytes([i + 1]) * 32).decode() for i in range(11)]
    valid = [
        {
            "service": "wireguard",
            "identifier": key,
            "instance": f"wg{i}",
            "details": {"endpoint": f"198.51.100.{i}:51820"},
        }
        for i, key in enumerate(keys)
    ]
    bad: list[dict[str, Any]] = [
        {"service": "zerotier", "identifier": "a1b2c3d4e5"},
        {"service": "iroh", "identifier": IROH_ID, "details": {"ticket": "198.51.100.9" * 400}},
        {"service": "netbird", "identifier": "k" * 256},
        {"service": "tailscale", "identifier": ""},
    ]

    def provider() -> list[dict[str, Any]]:
        return [valid[0], *bad, *valid[1:]]

    ext = extension(provider)
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, _link):
        report = await wait_ext(hub, REPORT)
    assert report.payload == {"identities": valid[:10]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5
    assert any("unknown service 'zerotier'" in w for w in warnings)
    assert any("iroh: details are 4813 bytes as JSON (at most 4096)" in w for w in warnings)
    assert any("netbird: identifier has 256 characters (at most 255)" in w for w in warnings)
    assert any("tailscale: empty identifier" in w for w in warnings)
    assert any("11 identities; the server takes 10, so 1 is not reported" in w for w in warnings)
    # details may hold addresses: never logged at info level or above.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert loud and not any("198.51.100." in line for line in loud)


async def test_a_changed_identity_is_sent_on_the_next_check(tmp_path: Path) -> None:
    wg = fake_command(tmp_path, "wg", WG_ARGS, f"wg0\t{WG0}\nwg1\t{WG1}\n")
    ext = extension(WireGuardProvider(wg), interval=0.02)
    initial = {"identities": [wireguard(WG0, "wg0"), wireguard(WG1, "wg1")]}
    rotated = {"identities": [wireguard(WG0_ROTATED, "wg0")]}
    added = {"identities": [wireguard(TS_KEY, "wg2")]}
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, _link):
        first = await wait_ext(hub, REPORT)
        assert first.payload == initial
        assert ext.polling
        # Key rotation on wg0: only that identity is sent again.
        set_output(wg, f"wg0\t{WG0_ROTATED}\nwg1\t{WG1}\n")
        message = await wait_ext(hub, REPORT, predicate=lambda m: m.payload == rotated)
        assert message.rejected is None
        # A new interface: only it is sent.
        set_output(wg, f"wg0\t{WG0_ROTATED}\nwg1\t{WG1}\nwg2\t{TS_KEY}\n")
        await wait_ext(hub, REPORT, predicate=lambda m: m.payload == added)
        await sync_point(hub, "after-added")
        sent = reports(hub)
        # (A check that ran before the server's request found nothing sent yet and sent all.)
        assert sent.count(rotated) == 1 and sent.count(added) == 1
        assert all(payload in (initial, rotated, added) for payload in sent)

        # Detached: the checks stop. Re-attached: the new request gets everything again.
        assert await hub.detach_extensions(DEVICE, ["network_identity"])
        await wait_ext(hub, "network_identity:detached")
        assert not polling(ext)
        assert await hub.attach_extensions(DEVICE, ["network_identity"])
        everything = {
            "identities": [
                wireguard(WG0_ROTATED, "wg0"),
                wireguard(WG1, "wg1"),
                wireguard(TS_KEY, "wg2"),
            ]
        }
        again = await wait_ext(hub, REPORT, predicate=lambda m: m.payload == everything)
        assert again.rejected is None
        assert ext.polling


async def test_unchanged_identities_are_not_sent_again() -> None:
    provider = Counter([{"service": "iroh", "identifier": IROH_ID, "instance": "console"}])
    ext = extension(provider, interval=0.005)
    async with hub_and_link({"network_identity"}, {"network_identity": ext}) as (hub, _link):
        first = await wait_ext(hub, REPORT)
        # Each check calls the provider once; when call n + 1 starts, check n has finished.
        await provider.wait_calls(provider.calls + 3)
        await sync_point(hub, "settled")
        count = len(reports(hub))
        assert count in (1, 2)  # 2: a check ran before the server's request arrived
        assert reports(hub) == [first.payload] * count
        await provider.wait_calls(provider.calls + 5)
        await sync_point(hub, "later")
        assert len(reports(hub)) == count


async def test_nothing_is_sent_before_attach() -> None:
    provider = Counter([{"service": "iroh", "identifier": IROH_ID}])
    ext = extension(provider, interval=0.005)
    # The product setting is off: the server does not offer network_identity.
    async with hub_and_link(set(), {"network_identity": ext}) as (hub, link):
        join = await wait_ext(hub, "phx_join")
        assert join.payload == {"network_identity": "0.0.1"}
        await sync_point(hub, "joined")
        assert hub.devices[DEVICE].offered_extensions == []
        assert provider.calls == 0 and not ext.polling
        assert events(hub) == ["phx_join"]
        # An operator enables it: attached first, then the report.
        assert await hub.attach_extensions(DEVICE, ["network_identity"])
        report = await wait_ext(hub, REPORT)
        assert report.rejected is None
        assert report.payload == {
            "identities": [{"service": "iroh", "identifier": IROH_ID, "details": {}}]
        }
        order = events(hub)
        assert order[:2] == ["phx_join", "network_identity:attached"]
        assert link.extensions.attached == {"network_identity"}


# -- providers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodekey", "expected"),
    [
        (
            "nodekey:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
        (TS_NODEKEY, TS_KEY),
        (TS_NODEKEY.upper().replace("NODEKEY:", "nodekey:"), TS_KEY),
        (TS_NODEKEY.removeprefix("nodekey:"), TS_KEY),  # the prefix is optional
        ("nodekey:" + "ff" * 32, "/" * 42 + "8="),
    ],
)
def test_nodekey_to_base64(nodekey: str, expected: str) -> None:
    converted = nodekey_to_base64(nodekey)
    assert converted == expected
    assert len(converted) == 44
    assert base64.b64decode(converted) == bytes.fromhex(nodekey.removeprefix("nodekey:"))


@pytest.mark.parametrize(
    "nodekey",
    [
        "",
        "nodekey:",
        "nodekey:abc",
        "nodekey:" + "0" * 63,
        "nodekey:" + "0" * 65,
        "nodekey:" + "g" * 64,
        "nodekey: " + "0" * 63,
        "nodekey:" + "00 " * 21 + "0",
        "discokey:" + "0" * 64,
        "NODEKEY:" + "0" * 64,
        "mkey:" + "0" * 64,
        TS_KEY,
    ],
)
def test_nodekey_to_base64_rejects(nodekey: str) -> None:
    with pytest.raises(ValueError, match="node key"):
        nodekey_to_base64(nodekey)


def test_nodekey_to_base64_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="node key"):
        nodekey_to_base64(b"nodekey:" + b"0" * 64)  # type: ignore[arg-type]


def test_wireguard_parse() -> None:
    provider = WireGuardProvider()
    assert provider.argv == ("wg", "show", "all", "public-key")
    assert provider.parse(WG_OUTPUT) == [wireguard(WG0, "wg0"), wireguard(NETBIRD_KEY, "wt0")]
    assert provider.parse("") == []
    assert provider.parse("wg0\t(none)\n") == []
    only = WireGuardProvider(["sudo", "-n", "wg"], interfaces=["wg0"])
    assert only.argv == ("sudo", "-n", "wg", "show", "all", "public-key")
    assert only.parse(WG_OUTPUT) == [wireguard(WG0, "wg0")]
    # A line that is not "<interface> <key>" is skipped; nothing recognisable is an error.
    assert provider.parse(f"garbage\nwg0\t{WG0}\nwg1\tnot-a-key\n") == [wireguard(WG0, "wg0")]
    with pytest.raises(IdentityProviderError, match="unrecognised"):
        provider.parse("Unable to access interface: Operation not permitted\n")


def test_tailscale_parse() -> None:
    provider = TailscaleProvider()
    assert provider.argv == ("tailscale", "status", "--json")
    [identity] = provider.parse(json.dumps(TAILSCALE_STATUS))
    assert identity["identifier"] == TS_KEY
    # Logged out: the zero key, or no Self at all.
    logged_out = {**TAILSCALE_STATUS, "BackendState": "NeedsLogin"}
    logged_out["Self"] = {**TAILSCALE_STATUS["Self"], "PublicKey": "nodekey:" + "0" * 64}
    with pytest.raises(IdentityUnavailable, match="not logged in"):
        provider.parse(json.dumps(logged_out))
    with pytest.raises(IdentityUnavailable, match="NoState"):
        provider.parse(json.dumps({"BackendState": "NoState", "Self": None}))
    minimal = {"Self": {"PublicKey": TS_NODEKEY}}
    assert provider.parse(json.dumps(minimal)) == [
        {"service": "tailscale", "identifier": TS_KEY, "details": {}}
    ]
    with pytest.raises(IdentityProviderError, match="nodekey"):
        provider.parse(json.dumps({"Self": {"PublicKey": TS_KEY}}))
    with pytest.raises(IdentityProviderError, match="did not print JSON"):
        provider.parse("failed to connect to local tailscaled\n")
    with pytest.raises(IdentityProviderError, match="not an object"):
        provider.parse("[]")


def test_netbird_parse() -> None:
    provider = NetBirdProvider()
    assert provider.argv == ("netbird", "status", "--json")
    [identity] = provider.parse(json.dumps({**NETBIRD_STATUS, "netbirdIpv6": "fd00::5/64"}))
    assert identity == {
        "service": "netbird",
        "identifier": NETBIRD_KEY,
        "details": {
            "fqdn": "gw-0001.netbird.cloud",
            "netbirdIp": "100.92.14.3/16",
            "netbirdIpv6": "fd00::5/64",
        },
    }
    with pytest.raises(IdentityUnavailable, match="NeedsLogin"):
        provider.parse(NETBIRD_NEEDS_LOGIN)
    with pytest.raises(IdentityUnavailable, match="no public key"):
        provider.parse(json.dumps({**NETBIRD_STATUS, "publicKey": ""}))
    with pytest.raises(IdentityProviderError, match="not a base64 key"):
        provider.parse(json.dumps({**NETBIRD_STATUS, "publicKey": "peer-id-123"}))


async def test_run_command_failures(tmp_path: Path) -> None:
    failing = shell_script(tmp_path, "failing", "echo 'daemon is not running' >&2\nexit 3\n")
    with pytest.raises(IdentityProviderError, match="status 3: daemon is not running"):
        await run_command([str(failing)])
    chatty = shell_script(tmp_path, "chatty", "exec head -c 5000 /dev/zero\n")
    with pytest.raises(IdentityProviderError, match="more than 1000 bytes"):
        await run_command([str(chatty)], max_output=1000)
    assert len(await run_command([str(chatty)], max_output=5000)) == 5000
    not_executable = tmp_path / "plain"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(IdentityProviderError, match="cannot run"):
        await run_command([str(not_executable)])
    with pytest.raises(IdentityUnavailable, match="is not installed"):
        await run_command([str(tmp_path / "absent")])


async def test_run_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A wrapper whose child would outlive it if only the wrapper were killed.
    hung = shell_script(
        tmp_path, "hung", f"sleep 30 &\necho $$ $! > {shlex.quote(str(pids))}\nwait\n"
    )
    with pytest.raises(IdentityProviderError, match="did not finish within 1 s"):
        await run_command([str(hung)], timeout=1.0)
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid)


async def test_provider_problems_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    wg = fake_command(tmp_path, "wg", "show all public-keys", f"wg0\t{WG0}\n")  # wrong args
    ext = extension(WireGuardProvider(wg))

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    for _ in range(3):
        assert await ext.identities() == []
    assert warnings() == [
        "network_identity: provider wireguard: "
        f"{wg} exited with status 2: unexpected arguments: show all public-key"
    ]
    fake_command(tmp_path, "wg", WG_ARGS, f"wg0\t{WG0}\n")
    assert await ext.identities() == [wireguard(WG0, "wg0")]
    assert any("works again" in r.getMessage() for r in caplog.records)
    fake_command(tmp_path, "wg", "other", "")
    assert await ext.identities() == []
    assert len(warnings()) == 2  # a new failure after a success is worth a warning again


async def test_callable_provider_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def hangs() -> list[dict[str, Any]]:
        await asyncio.Event().wait()
        return []

    def raises() -> list[dict[str, Any]]:
        raise RuntimeError("no endpoint yet")

    def not_a_list() -> Any:
        return 42

    def unavailable() -> list[dict[str, Any]]:
        raise IdentityUnavailable("iroh endpoint not started")

    def single() -> dict[str, Any]:
        return {"service": "iroh", "identifier": IROH_ID}

    ext = NetworkIdentityExtension(
        NetworkIdentityOptions(
            providers=[hangs, raises, not_a_list, unavailable, single], timeout=0.05
        )
    )
    assert await ext.identities() == [{"service": "iroh", "identifier": IROH_ID, "details": {}}]
    messages = {r.getMessage(): r.levelno for r in caplog.records}
    assert any("did not answer within 0.05 s" in m for m in messages)
    assert any(m.endswith("RuntimeError: no endpoint yet") for m in messages)
    assert any("returned int, not a list of identities" in m for m in messages)
    assert (
        messages[
            "network_identity: provider " + unavailable.__qualname__ + ": iroh endpoint not started"
        ]
        == logging.DEBUG
    )
    # Not attached: nothing can be sent, nothing is recorded as sent.
    assert not await ext.send_identities()
    assert await ext.send_changes() == []
    assert ext.reported == []


class Fixed(IdentityProvider):
    name = "fixed"

    async def identities(self) -> list[dict[str, Any]]:
        return [
            {"service": "iroh", "identifier": IROH_ID, "instance": "app"},
            {"service": "iroh", "identifier": IROH_ID[::-1], "instance": " app "},  # same key
        ]


async def test_duplicate_service_and_instance_keeps_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ext = extension(Fixed())
    assert await ext.identities() == [
        {"service": "iroh", "identifier": IROH_ID, "instance": "app", "details": {}}
    ]
    assert "a second identity for instance 'app'" in caplog.text


# -- rules and options ---------------------------------------------------------------------------


def test_normalize_identity_limits() -> None:
    base = {"service": "wireguard", "identifier": WG0}
    assert normalize_identity(base) == {**base, "details": {}}
    assert normalize_identity({**base, "identifier": "x" * 255})["identifier"] == "x" * 255
    assert normalize_identity({**base, "instance": " " + "i" * 255 + " "})["instance"] == "i" * 255
    assert "instance" not in normalize_identity({**base, "instance": "   "})
    assert "instance" not in normalize_identity({**base, "instance": None})
    # {"k":"..."}: 8 bytes of JSON around the value; "é" is 2 bytes.
    at_limit = {"k": "é" * 2043 + "x" * 2}
    assert normalize_identity({**base, "details": at_limit})["details"] == at_limit
    extra = {**base, "unknown": 1, "details": {1: (1, 2)}}
    assert normalize_identity(extra) == {**base, "details": {"1": [1, 2]}}
    for entry, reason in [
        ({**base, "identifier": "x" * 256}, "256 characters"),
        ({**base, "identifier": ""}, "empty identifier"),
        ({**base, "identifier": None}, "NoneType, not a string"),
        ({"identifier": WG0}, "unknown service None"),
        ({**base, "service": "WireGuard"}, "unknown service 'WireGuard'"),
        ({**base, "instance": "i" * 256}, "instance has 256 characters"),
        ({**base, "instance": 7}, "instance is int"),
        ({**base, "details": {"k": "é" * 2043 + "x" * 3}}, "4097 bytes"),
        ({**base, "details": ["a"]}, "details is list"),
        ({**base, "details": {"k": float("nan")}}, "no JSON form"),
        ({**base, "details": {"k": object()}}, "no JSON form"),
        ([("service", "wireguard")], "not a mapping"),
    ]:
        with pytest.raises(ValueError, match=reason):
            normalize_identity(entry)


def test_options_defaults_and_providers(tmp_path: Path) -> None:
    options = NetworkIdentityOptions()
    assert options.providers == DEFAULT_PROVIDERS == ("wireguard", "tailscale", "netbird")
    assert options.interval == 300
    ext = NetworkIdentityExtension()
    assert ext.name == "network_identity" and ext.version == "0.0.1"
    assert [type(p) for p in ext.providers] == [
        WireGuardProvider,
        TailscaleProvider,
        NetBirdProvider,
    ]

    def function() -> list[dict[str, Any]]:
        return []

    custom = WireGuardProvider(tmp_path / "wg", timeout=1.0)
    options = NetworkIdentityOptions(
        providers=["tailscale", custom, function], interval=0, timeout=2.0, max_output=4096
    )
    built = options.build_providers()
    assert isinstance(built[0], TailscaleProvider)
    assert built[0].timeout == 2.0 and built[0].max_output == 4096
    assert built[1] is custom
    assert isinstance(built[2], CallableProvider) and built[2].function is function
    assert isinstance(options.providers, tuple)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"interval": -1}, "interval"),
        ({"interval": float("inf")}, "interval"),
        ({"interval": True}, "interval"),
        ({"interval": "300"}, "interval"),
        ({"providers": "wireguard"}, "providers must be a list"),
        ({"providers": None}, "providers must be a list"),
        ({"providers": ["zerotier"]}, "unknown provider 'zerotier'"),
        ({"providers": [WireGuardProvider]}, "not the class WireGuardProvider"),
        ({"providers": [42]}, "not 42"),
        ({"timeout": 0}, "timeout"),
        ({"max_output": 0}, "max_output"),
    ],
)
def test_options_validation(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        NetworkIdentityOptions(**changes)
    assert caught.value.option == "extensions.network_identity"


def test_from_config() -> None:
    def function() -> list[dict[str, Any]]:
        return []

    assert NetworkIdentityExtension.from_config(True).options == NetworkIdentityOptions()
    options = NetworkIdentityOptions(providers=["netbird"], interval=0)
    assert NetworkIdentityExtension.from_config(options).options is options
    built = [
        NetworkIdentityExtension.from_config(value).options.providers[0]
        for value in (["wireguard"], ("tailscale",), "netbird", function, Fixed())
    ]
    assert built[:4] == ["wireguard", "tailscale", "netbird", function]
    assert isinstance(built[4], Fixed)
    invalid: tuple[Any, ...] = (False, 42, WireGuardProvider, {"providers": []})
    for value in invalid:
        with pytest.raises(ConfigError):
            NetworkIdentityExtension.from_config(value)
    with pytest.raises(TypeError):
        NetworkIdentityExtension({"interval": 0})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CallableProvider(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        WireGuardProvider(timeout=0)
    with pytest.raises(TypeError):
        WireGuardProvider(42)  # type: ignore[arg-type]


async def test_no_providers(caplog: pytest.LogCaptureFixture) -> None:
    ext = extension()
    assert ext.providers == ()
    assert not await ext.send_identities()
    assert "no providers are set" in caplog.text


def test_docs_example() -> None:
    """The "Network identity" example in docs/extensions.md builds what it says."""
    module = types.ModuleType("docs_network_identity_example")
    code = "\n".join(BLOCK.findall(DOC.read_text(encoding="utf-8")))
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    ext = module.network_identity_extension()
    assert isinstance(ext, NetworkIdentityExtension)
    assert ext.options.interval == 300
    wg, tailscale, iroh = ext.providers
    assert isinstance(wg, WireGuardProvider) and wg.interfaces == frozenset({"wg0"})
    assert wg.argv == ("sudo", "-n", "wg", "show", "all", "public-key")
    assert isinstance(tailscale, TailscaleProvider)
    assert isinstance(iroh, CallableProvider)
    [identity] = module.iroh_identities()
    assert normalize_identity(identity) == identity
