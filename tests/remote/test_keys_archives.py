"""Signing keys (§6.8) and archives (§6.7) end to end: FakeHub pushes, state across
restarts, the fwup CommandWriter's --public-key arguments, archives from an aiohttp file
server checked by a signature command."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from nhlink import Client, ConfigError, NervesHubLink
from nhlink.remote import ArchiveInfo, ArchiveOptions, SigningKeys
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.update.writers.command import CommandWriter
from tests.support import FAST_DOWNLOADS, KEY, SECRET, device_options

DEVICE = "gw-keys-0001"
ED1 = base64.b64encode(bytes(range(32))).decode()
ED2 = base64.b64encode(bytes(range(1, 33))).decode()
PEM = (
    "-----BEGIN PUBLIC KEY-----\nMIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA\n"
    "-----END PUBLIC KEY-----"
)


def script(path: Path, body: str) -> Path:
    """An executable Python script at ``path`` (a stand-in for fwup)."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def recording_fwup(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in ``fwup`` that records its arguments and reads the image from stdin."""
    record = tmp_path / "fwup-args.json"
    (tmp_path / "bin").mkdir()
    fwup = script(
        tmp_path / "bin" / "fwup",
        f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
        "sys.stdin.buffer.read()\n",
    )
    return fwup, record


async def join_params(hub: FakeHub, ident: str = DEVICE, n: int = 1) -> dict[str, Any]:
    await hub.wait_for(lambda: len(hub.devices[ident].messages_for("device", "phx_join")) >= n)
    payload = hub.devices[ident].messages_for("device", "phx_join")[n - 1].payload
    assert isinstance(payload, dict)
    return payload


async def test_fwup_keys_requested_pushed_kept_and_passed_to_fwup(tmp_path: Path) -> None:
    fwup, record = recording_fwup(tmp_path)
    hub = FakeHub(shared_secrets={KEY: SECRET}, fwup_public_keys=[ED1, PEM, ED2])
    async with hub:
        writer = CommandWriter([str(fwup), "-a", "-d", "/dev/null", "-t", "upgrade"])
        assert writer.wants_public_keys  # the command is fwup
        options = device_options(hub, DEVICE, tmp_path, fwup_writer=writer)
        async with NervesHubLink(**options) as link:
            await link.wait_joined(10)
            assert (await join_params(hub))["fwup_public_keys"] == "on_connect"
            await hub.wait_for(lambda: link.remote.keys.keys("fwup") == [ED1, PEM, ED2])
            assert writer.public_keys == [ED1, ED2]  # fwup takes the Ed25519 keys only
            # A pushed empty list never clears held keys (§6.8, as NHL).
            assert await hub.push(DEVICE, "device", "fwup_public_keys", {"keys": []})
            assert await hub.run_script(DEVICE, "x", ref="sync")
            await hub.wait_for_message(DEVICE, topic="device", event="scripts/run")
            assert link.remote.keys.keys("fwup") == [ED1, PEM, ED2]
        await writer.fwup_begin(3, {})
        await writer.fwup_chunk(b"abc")
        await writer.fwup_finish()
        argv = json.loads(record.read_text())
        assert argv == ["-a", "-d", "/dev/null", "-t", "upgrade",
                        "--public-key", ED1, "--public-key", ED2]  # fmt: skip
        # After a restart the keys come from the state: nothing is asked for.
        writer2 = CommandWriter([str(fwup)])
        async with NervesHubLink(**{**options, "fwup_writer": writer2}) as link:
            await link.wait_joined(10)
            assert "fwup_public_keys" not in await join_params(hub, n=2)
            assert writer2.public_keys == [ED1, ED2]


async def test_provisioned_keys_are_preferred_and_nothing_is_asked(tmp_path: Path) -> None:
    fwup, _ = recording_fwup(tmp_path)
    hub = FakeHub(shared_secrets={KEY: SECRET}, fwup_public_keys=[ED2])
    async with hub:
        writer = CommandWriter([str(fwup)])
        options = device_options(
            hub, DEVICE, fwup_writer=writer, signing_keys=SigningKeys(fwup=[ED1])
        )
        async with NervesHubLink(**options) as link:
            await link.wait_joined(10)
            params = await join_params(hub)
            assert "fwup_public_keys" not in params and "archive_public_keys" not in params
            assert writer.public_keys == [ED1]


async def test_no_writer_that_uses_keys_asks_for_none(hub: FakeHub) -> None:
    async with NervesHubLink(**device_options(hub, DEVICE)) as link:
        await link.wait_joined(10)
        params = await join_params(hub)
        assert "fwup_public_keys" not in params and "archive_public_keys" not in params


def test_signing_keys_refused() -> None:
    with pytest.raises(ConfigError):
        SigningKeys(fwup="not-a-list")
    with pytest.raises(ConfigError):
        SigningKeys(request_fwup="yes")  # type: ignore[arg-type]


# -- archives ---------------------------------------------------------------------------------

ARCHIVE = b"fwup archive " * 1000
UUID = "1e7a5c4e-0000-4000-8000-000000000001"


def verifier(tmp_path: Path, good: bool = True) -> list[str]:
    """A signature checker standing in for ``fwup -V``: accepts the file when it was given a
    key and its content is the archive's."""
    check = script(
        tmp_path / ("verify-ok" if good else "verify-bad"),
        "import sys\n"
        "args = sys.argv[1:]\n"
        "path = args[args.index('-i') + 1]\n"
        "ok = '--public-key' in args and open(path, 'rb').read() == " + repr(ARCHIVE) + "\n"
        f"sys.exit(0 if ok and {good} else 3)\n",
    )
    return [str(check), "-V", "-i", "{path}"]


def offer(url: str, uuid: str = UUID) -> dict[str, Any]:
    return {
        "size": len(ARCHIVE), "uuid": uuid, "version": "1.2.0", "description": None,
        "platform": "rpi4", "architecture": "arm", "uploaded_at": "2026-08-22T08:33:49",
        "url": url,
    }  # fmt: skip


class ArchiveClient(Client):
    def __init__(self, answers: list[Any] | None = None) -> None:
        self.answers = answers or []
        self.offers: list[ArchiveInfo] = []
        self.ready: list[tuple[ArchiveInfo, Path]] = []
        self.stored = asyncio.Event()

    def archive_available(self, info: ArchiveInfo) -> Any:
        self.offers.append(info)
        return self.answers.pop(0) if self.answers else "download"

    def archive_ready(self, info: ArchiveInfo, path: Path) -> None:
        self.ready.append((info, path))
        self.stored.set()


def archive_link(hub: FakeHub, tmp_path: Path, client: Any, verify: list[str] | None,
                 **extra: Any) -> NervesHubLink:  # fmt: skip
    store = tmp_path / "archives"
    store.mkdir(exist_ok=True)
    options = ArchiveOptions(directory=store, verify=verify, download=FAST_DOWNLOADS)
    return NervesHubLink(
        client=client, archives=options, **device_options(hub, DEVICE, tmp_path, **extra)
    )


async def test_archive_downloaded_verified_stored_once(tmp_path: Path) -> None:
    hub = FakeHub(shared_secrets={KEY: SECRET}, archive_public_keys=[ED1])
    async with hub, FirmwareServer() as files:
        url = files.add("archive.fw", ARCHIVE)
        client = ArchiveClient()
        async with archive_link(hub, tmp_path, client, verifier(tmp_path)) as link:
            await link.wait_joined(10)
            assert (await join_params(hub))["archive_public_keys"] == "on_connect"
            await hub.wait_for(lambda: link.remote.keys.keys("archive") == [ED1])
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            await asyncio.wait_for(client.stored.wait(), 10)
            info, path = client.ready[0]
            assert info.uuid == UUID and info.version == "1.2.0"
            assert path == tmp_path / "archives" / f"{UUID}.fw"
            assert path.read_bytes() == ARCHIVE
            assert sorted(p.name for p in path.parent.iterdir()) == [f"{UUID}.fw"]
            # The server re-sends it on every join: one download only.
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            assert await hub.run_script(DEVICE, "x", ref="sync")
            await hub.wait_for_message(DEVICE, topic="device", event="scripts/run")
        assert len(files.requests_for("archive.fw")) == 1
        assert len(client.offers) == 1
        client2 = ArchiveClient()
        async with archive_link(hub, tmp_path, client2, verifier(tmp_path)) as link:
            await link.wait_joined(10)
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            assert await hub.run_script(DEVICE, "x", ref="sync2")
            await hub.wait_for(
                lambda: len(hub.devices[DEVICE].messages_for("device", "scripts/run")) == 2
            )
        assert not client2.offers  # remembered across the restart
        assert len(files.requests_for("archive.fw")) == 1


async def test_archive_failing_the_signature_check_is_not_kept(tmp_path: Path) -> None:
    hub = FakeHub(shared_secrets={KEY: SECRET}, archive_public_keys=[ED1])
    async with hub, FirmwareServer() as files:
        url = files.add("archive.fw", ARCHIVE)
        client = ArchiveClient()
        async with archive_link(hub, tmp_path, client, verifier(tmp_path, good=False)) as link:
            await link.wait_joined(10)
            await hub.wait_for(lambda: link.remote.keys.keys("archive") == [ED1])
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            await files.wait_for_requests(1, name="archive.fw")
            archives = link.remote.archives
            assert archives is not None
            await archives.wait_idle()
            assert not archives.busy
            # The next offer is tried again (not remembered): the failure was not kept.
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            await files.wait_for_requests(2, name="archive.fw")
            await archives.wait_idle()
        assert not client.ready
        assert list((tmp_path / "archives").iterdir()) == []


async def test_archive_refused_without_keys_ignored_or_rescheduled(tmp_path: Path) -> None:
    async with FakeHub(shared_secrets={KEY: SECRET}) as hub, FirmwareServer() as files:
        url = files.add("archive.fw", ARCHIVE)
        client = ArchiveClient(answers=["ignore"])
        async with archive_link(hub, tmp_path, client, verifier(tmp_path)) as link:
            await link.wait_joined(10)
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            assert await hub.push(DEVICE, "device", "archive", offer(url, uuid="u-2"))
            assert await hub.run_script(DEVICE, "x", ref="sync")  # both offers taken by now
            await hub.wait_for_message(DEVICE, topic="device", event="scripts/run")
            assert link.remote.archives is not None
            await link.remote.archives.wait_idle()
            assert [o.uuid for o in client.offers] == [UUID, "u-2"]  # ignored; no key: refused
        assert files.requests_for("archive.fw") == []
    async with FakeHub(shared_secrets={KEY: SECRET}) as hub, FirmwareServer() as files:
        url = files.add("archive.fw", ARCHIVE)
        client = ArchiveClient(answers=[("reschedule", 50)])
        other = tmp_path / "other"
        other.mkdir()
        async with archive_link(hub, other, client, None) as link:  # verify=None: explicit
            await link.wait_joined(10)
            assert await hub.push(DEVICE, "device", "archive", offer(url, uuid="u-3"))
            await asyncio.wait_for(client.stored.wait(), 10)
        assert len(client.offers) == 2  # asked again after 50 ms, then downloaded
        assert (other / "archives" / "u-3.fw").read_bytes() == ARCHIVE


async def test_archives_off_by_default(hub: FakeHub, tmp_path: Path) -> None:
    async with FirmwareServer() as files:
        url = files.add("archive.fw", ARCHIVE)
        async with NervesHubLink(**device_options(hub, DEVICE, tmp_path)) as link:
            await link.wait_joined(10)
            assert link.remote.archives is None
            assert await hub.push(DEVICE, "device", "archive", offer(url))
            assert await hub.run_script(DEVICE, "x", ref="sync")
            await hub.wait_for_message(DEVICE, topic="device", event="scripts/run")
            assert "archives_done" not in link.store.state.extra
        assert files.requests_for("archive.fw") == []


def test_archive_options_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ArchiveOptions(directory=tmp_path / "missing")
    with pytest.raises(ConfigError):
        ArchiveOptions(directory=tmp_path, verify=["fwup", "-V"])  # no {path}
