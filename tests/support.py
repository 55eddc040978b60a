"""What the end-to-end tests share: one device identity on FakeHub, link options, firmware
images and their checksums, pushing an ``update`` and reading back what the device reported.

Import from here rather than copying: ``from tests.support import KEY, SECRET, device_options``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nhlink
from nhlink import Apply
from nhlink.testing import FakeHub
from nhlink.testing.certs import PKI
from nhlink.update.download import DownloadOptions

KEY = "nhp_testproductkey0000000000000000000000000000"
SECRET = "product-secret-for-tests-0123456789abcdefghij"
META = {
    "uuid": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "product": "gw",
    "architecture": "x86_64",
    "platform": "test",
    "version": "1.0.0",
}
NEW_META = {**META, "uuid": "22222222-2222-2222-2222-222222222222", "version": "1.1.0"}
MiB = 1024 * 1024

#: Reconnect quickly, reset the backoff soon after a join, and let rescheduled updates come back
#: within the test (the defaults are seconds to minutes).
#: The serializer every test device speaks: ``NHLINK_TEST_SERIALIZER=msgpack`` runs the
#: end-to-end tests over vsn 3.0.0 (MessagePack, binary frames) against FakeHub's independent
#: codec (the ``msgpack`` package); JSON otherwise.
SERIALIZER = os.environ.get("NHLINK_TEST_SERIALIZER", "json")

FAST_LINK: dict[str, Any] = {
    "serializer": SERIALIZER,
    "heartbeat_interval": 30.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.4,
    "backoff_reset_after": 0.2,
    "min_reschedule_delay": 0.05,
}
#: Quick download retries; plain http is allowed because the loopback firmware servers of the
#: tests speak http (https is the default requirement, tested on its own).
FAST_DOWNLOADS = DownloadOptions(
    retry_delay=0.01, retry_delay_max=0.05, idle_timeout=10.0, allow_http=True
)


#: A device process for kill -9 tests: ``python -c DEVICE_SCRIPT '<json options + "target">'``
#: (a FileWriter at ``target``, quick http-capable downloads).
DEVICE_SCRIPT = """
import asyncio, json, sys
import nhlink
from nhlink.update.download import DownloadOptions
from nhlink.update.writers import FileWriter

opts = json.loads(sys.argv[1])
async def main():
    link = nhlink.NervesHubLink(
        fwup_writer=FileWriter(opts.pop("target")),
        download_options=DownloadOptions(allow_http=True, retry_delay=0.01, retry_delay_max=0.05),
        **opts,
    )
    await link.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def new_hub(**options: Any) -> FakeHub:
    """A FakeHub that knows the tests' product key and secret."""
    return FakeHub(shared_secrets={KEY: SECRET}, **options)


def device_options(
    hub: FakeHub | int, ident: str = "gw-0001", tmp_path: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """NervesHubLink options for device ``ident`` on ``hub`` (or a port; NH1 over
    ws://127.0.0.1), with its state under ``tmp_path`` when given."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": hub if isinstance(hub, int) else hub.port,
        "ssl": False,
        "product_key": KEY,
        "product_secret": SECRET,
        "identifier": ident,
        "firmware_meta": META,
        "name": ident,
        **FAST_LINK,
    }
    if tmp_path is not None:
        options["state_dir"] = tmp_path / "state"
    options.update(extra)
    return options


def ota_options(
    hub: FakeHub, tmp_path: Path, ident: str = "gw-0001", **extra: Any
) -> dict[str, Any]:
    """:func:`device_options` with state under ``tmp_path`` and quick, http-capable downloads
    (``download_options``, a NervesHubLink argument, rides along)."""
    extra.setdefault("download_options", FAST_DOWNLOADS)
    return device_options(hub, ident, tmp_path, **extra)


async def deliver(
    hub: FakeHub,
    url: str,
    data: bytes,
    *,
    expect: str,
    options: Mapping[str, Any],
    writer: Any = None,
    client: nhlink.Client | None = None,
    **push_options: Any,
) -> Any:
    """Start a device, push an update of ``data`` at ``url``, wait until it ends with status
    ``expect`` (asserted), check the link stayed joined, stop; returns that status payload."""
    async with nhlink.NervesHubLink(client=client, fwup_writer=writer, **options) as link:
        await link.wait_joined(5)
        await push(hub, url, data, options.get("name", "gw-0001"), **push_options)
        payload = await wait_status(hub, expect, options.get("name", "gw-0001"))
        assert link.status.joined  # whatever happened to the update, the connection is fine
    return payload


def resume_point(state: Path) -> int:
    """The resume point (``verified_offset``) a device saved in its state file; 0 if none."""
    try:
        return int(json.loads(state.read_text())["download"]["verified_offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def image(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible test firmware."""
    return hashlib.shake_256(str(seed).encode()).digest(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parts(data: bytes) -> list[str]:
    """NervesHub's ``partials_checksums`` of ``data``: upper-case SHA-256 per 1 MiB part."""
    return [sha(data[i : i + MiB]).upper() for i in range(0, len(data), MiB)]


def tamper(data: bytes, at: int) -> bytes:
    """One byte flipped at ``at`` (negative: from the end)."""
    buf = bytearray(data)
    buf[at] ^= 0xFF
    return bytes(buf)


async def push(
    hub: FakeHub,
    url: str,
    data: bytes,
    ident: str = "gw-0001",
    *,
    checksum: str | None = "auto",
    with_parts: bool = True,
    size: int | None = -1,
    meta: Mapping[str, Any] = NEW_META,
) -> None:
    """Push an ``update`` for ``data`` served at ``url``: its real checksum and parts unless
    told otherwise (``checksum=None`` sends none, any other string is sent as is; ``size``
    defaults to ``len(data)``, None sends none)."""
    await hub.push_update(
        ident,
        firmware_url=url,
        size=len(data) if size == -1 else size,
        checksum=sha(data).upper() if checksum == "auto" else checksum,
        partials_checksums=parts(data) if with_parts else None,
        firmware_meta=dict(meta),
    )


def statuses(hub: FakeHub, ident: str = "gw-0001") -> list[str]:
    """Every ``status_update`` status the device sent, in order."""
    return [m.payload["status"] for m in hub.devices[ident].messages_for("device", "status_update")]


async def wait_status(
    hub: FakeHub, status: str, ident: str = "gw-0001", timeout: float = 30
) -> Any:
    """Wait for the update to end (``completed``/``failed``) or reach ``status``; assert it is
    ``status`` and return its payload (a wrong ending fails at once, not by timeout)."""
    msg = await hub.wait_for_message(
        ident,
        topic="device",
        event="status_update",
        predicate=lambda m: m.payload.get("status") in (status, "failed", "completed"),
        timeout=timeout,
    )
    assert msg.payload["status"] == status, msg.payload
    return msg.payload


def progress_values(hub: FakeHub, stage: str, ident: str = "gw-0001") -> list[int]:
    """The ``fwup_progress`` values the device reported for ``stage``."""
    return [
        m.payload["value"]
        for m in hub.devices[ident].messages_for("device", "fwup_progress")
        if m.payload.get("stage") == stage
    ]


class Recorder(nhlink.Client):
    """A client that records what happened, with scripted ``update_available`` decisions."""

    def __init__(self, decisions: list[Any] | None = None) -> None:
        self.decisions = list(decisions or [])
        self.events: list[str] = []
        self.asked: list[Mapping[str, Any]] = []
        self.progress: list[int] = []
        self.errors: list[BaseException] = []
        self.failed = asyncio.Event()
        self.rebooted = asyncio.Event()
        self.identified = asyncio.Event()

    def update_available(self, firmware_meta: Mapping[str, Any]) -> Any:
        self.asked.append(firmware_meta)
        return self.decisions.pop(0) if self.decisions else Apply()

    def fwup_progress(self, percent: int) -> None:
        self.progress.append(percent)

    def fwup_error(self, error: BaseException) -> None:
        self.errors.append(error)
        self.failed.set()

    def reboot(self) -> None:
        self.events.append("reboot")
        self.rebooted.set()

    async def identify(self) -> None:
        self.events.append("identify")
        self.identified.set()

    def handle_connected(self) -> None:
        self.events.append("connected")

    def handle_disconnected(self) -> None:
        self.events.append("disconnected")


def tls_server_context(
    pki: PKI, *, tls13: bool = True, require_client: bool = False
) -> ssl.SSLContext:
    """A server context with ``pki``'s server certificate: TLS 1.2 only unless ``tls13``;
    client certificates from ``pki``'s CA required with ``require_client``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=pki.ca.cert)
    return ctx
