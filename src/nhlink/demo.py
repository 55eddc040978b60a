"""``nhlink demo``: a whole OTA update on this machine, against the built-in test server.

Starts :class:`~nhlink.testing.FakeHub` and a firmware file server on 127.0.0.1, makes a
firmware image, connects a device (NH1 shared secret) with a :class:`FileWriter` into a
temporary directory, pushes the update, shows the progress, verifies, "reboots" into the new
firmware, confirms it and prints what happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from . import _core
from .client import Client
from .link import NervesHubLink
from .update.writers import FileWriter

IDENTIFIER = "nhlink-demo-0001"
OLD = {
    "uuid": "5f0d4a4e-0000-4000-8000-000000000001",
    "product": "nhlink-demo",
    "architecture": "x86_64",
    "platform": "generic",
    "version": "1.0.0",
}
NEW = {**OLD, "uuid": "5f0d4a4e-0000-4000-8000-000000000002", "version": "1.1.0"}
MiB = 1024 * 1024


class DemoClient(Client):
    """Applies the update and draws progress: a bar on a terminal, log lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_line = -10

    def update_available(self, firmware_meta: Mapping[str, Any]) -> Any:
        self.say(
            f"update offered: {firmware_meta.get('product')} {firmware_meta.get('version')}"
            " -> applying"
        )
        return "apply"

    def fwup_progress(self, percent: int) -> None:
        if self.tty:
            filled = percent * 40 // 100
            self.out.write(f"\r  [{'#' * filled}{'.' * (40 - filled)}] {percent:3d}%")
            if percent == 100:
                self.out.write("\n")
            self.out.flush()
        elif percent >= self.last_line + 10 or percent == 100:
            self.last_line = percent
            self.say(f"progress {percent}%")

    def fwup_error(self, error: BaseException) -> None:
        self.say(f"update FAILED: {error}")

    def say(self, text: str) -> None:
        self.out.write(f"  {text}\n")
        self.out.flush()


def _write_image(path: Path, size: int) -> tuple[str, list[str]]:
    """Write the demo image to ``path`` one 1 MiB part at a time (a 1 GiB demo never holds
    the image in memory); returns its SHA-256 and part checksums, as the server sends them."""
    seed = hashlib.sha256(b"nhlink demo firmware").digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))
    part = (block * (MiB // len(block) + 1))[:MiB]
    whole = hashlib.sha256()
    parts: list[str] = []
    with path.open("wb") as f:
        left = size
        while left:
            data = part[: min(left, MiB)]
            whole.update(data)
            parts.append(hashlib.sha256(data).hexdigest().upper())
            f.write(data)
            left -= len(data)
    return whole.hexdigest().upper(), parts


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest().upper()


async def run_demo(
    size_mib: int = 16, workdir: Path | None = None, out: TextIO = sys.stdout
) -> int:
    """Run the demo; returns a process exit status (0: the update landed and was confirmed)."""
    from .testing import FakeHub
    from .testing.firmware import FirmwareServer
    from .update.options import DownloadOptions

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    work = workdir or Path(tempfile.mkdtemp(prefix="nhlink-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    key = "nhp_" + secrets.token_urlsafe(32)[:43]
    secret = secrets.token_urlsafe(32)[:43]
    image = work / "firmware-1.1.0.fw"  # served from disk, read as it is sent
    size = size_mib * MiB
    checksum, parts = await asyncio.to_thread(_write_image, image, size)
    slot = work / "slot-b" / "firmware.img"
    client = DemoClient(out)
    say(f"nhlink demo — core: {_core.IMPLEMENTATION}, work directory: {work}")
    async with FakeHub(shared_secrets={key: secret}) as hub, FirmwareServer() as files:
        url = files.add("firmware-1.1.0.fw", image, query="X-Amz-Signature=demo")
        say(f"1. test NervesHub on {hub.url}; firmware server on {files.base_url}")
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": hub.port,
            "ssl": False,
            "product_key": key,
            "product_secret": secret,
            "identifier": IDENTIFIER,
            "name": IDENTIFIER,
            "state_dir": work / "state",
            # The loopback firmware server speaks plain http: allowed explicitly (a device
            # refuses http firmware URLs, and https-to-http redirects, by default).
            "download_options": DownloadOptions(allow_http=True),
        }
        started = time.monotonic()
        async with NervesHubLink(
            client=client, fwup_writer=FileWriter(slot), firmware_meta=OLD, **options
        ) as link:
            await link.wait_joined(15)
            say(
                f"2. device {IDENTIFIER!r} connected (NH1 shared secret) and joined, running "
                f"firmware {OLD['version']}"
            )
            await link.confirm_update()
            say(
                f"3. server pushes update {NEW['version']} ({size_mib} MiB, "
                f"SHA-256 {checksum[:16]}…)"
            )
            t0 = time.monotonic()
            await hub.push_update(
                IDENTIFIER,
                firmware_url=url,
                size=size,
                checksum=checksum,
                partials_checksums=parts,
                firmware_meta=NEW,
            )
            msg = await hub.wait_for_message(
                IDENTIFIER,
                topic="device",
                event="status_update",
                timeout=300,
                predicate=lambda m: m.payload.get("status") in ("completed", "failed"),
            )
            elapsed = time.monotonic() - t0
            if msg.payload["status"] != "completed":
                say(f"   update failed: {msg.payload.get('reason')}")
                return 1
        sent = [
            m.payload["status"]
            for m in hub.devices[IDENTIFIER].messages_for("device", "status_update")
        ]
        landed = await asyncio.to_thread(_file_sha256, slot)
        say(
            f"4. verified and written in {elapsed:.2f} s "
            f"({size / MiB / max(elapsed, 1e-6):.0f} MiB/s); statuses sent: {', '.join(sent)}"
        )
        say(f"   image at {slot} — SHA-256 {'matches' if landed == checksum else 'DIFFERS'}")
        async with NervesHubLink(
            client=client, fwup_writer=FileWriter(slot), firmware_meta=NEW, **options
        ) as link:
            record = hub.devices[IDENTIFIER]
            await hub.wait_for(lambda: record.joins >= 2, timeout=15)
            before = (record.join_params or {}).get("meta", {}).get("firmware_validated")
            await link.confirm_update()
            await hub.wait_for_message(
                IDENTIFIER,
                topic="device",
                event="firmware_validated",
                predicate=lambda m: m.connection == record.connections,
            )
            say(
                f"5. rebooted into {NEW['version']}: joined with firmware_validated={before}, "
                "then confirm_update() sent firmware_validated"
            )
        say(f"done in {time.monotonic() - started:.1f} s. Files kept in {work}")
        return 0 if landed == checksum else 1


def main(size_mib: int, workdir: str | None) -> int:
    try:
        return asyncio.run(run_demo(size_mib, Path(workdir) if workdir else None))
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:  # the test server needs aiohttp (always) and nothing else
        print(f"nhlink demo needs {exc.name}: pip install nhlink", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(int(os.environ.get("NHLINK_DEMO_MIB", "16")), None))
