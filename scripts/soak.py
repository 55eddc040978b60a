"""Soak: many devices against FakeHub through fault proxies, for a bounded time.

    python scripts/soak.py [--minutes 10] [--devices 200] [--seed N] [--json out.json]

The hub and the firmware server run in a child process of their own (``--serve``); this
process runs the devices (one NervesHubLink each, FileWriters in a temporary directory) behind
two FaultProxy instances (hub, firmware) that split writes at random sizes and cut random
connections. Through the hub's HTTP control API, random events arrive all the time: server-side
disconnects (1000/1001/1012), reboots (the client reconnects, as a rebooting device would),
and firmware updates (two 1.5 MiB images in turn; one in twelve with a wrong checksum). All
traffic stays on 127.0.0.1 and the run stops by itself.

Every minute it prints this process's RSS, open fds and asyncio tasks, joins, reconnects and
updates completed/failed. At the end the faults stop, every device must be joined again and
idle, and then it checks, by code: every completed update installed exactly its image, every
failed one left the previous image, no update was ever reported completed with a wrong image,
the task and fd counts are back to the quiet baseline, and RSS grew less than --max-growth-mib
from the first full minute. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support
sys.path.insert(1, str(ROOT / "src"))

from tests.support import KEY, SECRET, device_options  # noqa: E402

import nhlink  # noqa: E402
from nhlink.testing.proxy import Fault, FaultProxy  # noqa: E402
from nhlink.update.download import DownloadOptions  # noqa: E402
from nhlink.update.writers import FileWriter  # noqa: E402

MiB = 1024 * 1024
IMAGE_SIZE = 3 * MiB // 2
OLD = b"factory image"


def images(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(IMAGE_SIZE) for _ in range(2)]


# -- the server process ---------------------------------------------------------------------------


async def serve(seed: int) -> None:
    from nhlink.testing import FakeHub
    from nhlink.testing.firmware import FirmwareServer

    async with (
        FakeHub(shared_secrets={KEY: SECRET}, health_interval=None) as hub,
        FirmwareServer() as files,
    ):
        for i, data in enumerate(images(seed)):
            files.add(f"fw{i}.bin", data)
        print(f"hub={hub.port} files={files.port}", flush=True)
        await asyncio.Event().wait()


# -- the devices ---------------------------------------------------------------------------------


class Device(nhlink.Client):
    def __init__(self) -> None:
        self.link: nhlink.NervesHubLink | None = None

    def reboot(self) -> None:  # a reboot is a reconnect, for the soak
        if self.link is not None:
            self.link.reconnect()


def stats() -> tuple[float, int, int]:
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    data = images(args.seed)
    sums = [hashlib.sha256(d).hexdigest().upper() for d in data]
    parts = [
        [hashlib.sha256(d[i : i + MiB]).hexdigest().upper() for i in range(0, len(d), MiB)]
        for d in data
    ]
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--seed",
        str(args.seed),
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
    match = re.search(r"hub=(\d+) files=(\d+)", line)
    if not match:
        print(f"soak: the server did not start: {line!r}", file=sys.stderr)
        return 1
    hub_port, files_port = int(match[1]), int(match[2])
    work = Path(tempfile.mkdtemp(prefix="nhlink-soak-"))
    violations: list[str] = []
    history: list[dict[str, Any]] = []
    async with (
        FaultProxy("127.0.0.1", hub_port, seed=args.seed, split=True) as hub_proxy,
        FaultProxy("127.0.0.1", files_port, seed=args.seed + 1, split=True) as fw_proxy,
        aiohttp.ClientSession(f"http://127.0.0.1:{hub_port}") as control,
    ):
        downloads = DownloadOptions(
            allow_http=True, retry_delay=0.2, retry_delay_max=2.0, idle_timeout=5.0
        )
        links: list[nhlink.NervesHubLink] = []
        targets: dict[str, Path] = {}
        for n in range(args.devices):
            ident = f"soak-{n:04d}"
            target = work / ident / "fw.img"
            target.parent.mkdir(parents=True)
            target.write_bytes(OLD)
            targets[ident] = target
            client = Device()
            link = nhlink.NervesHubLink(
                client=client,
                fwup_writer=FileWriter(target, fsync=False),
                download_options=downloads,
                **device_options(
                    hub_proxy.port,
                    ident,
                    work / ident,
                    backoff_initial=0.5,
                    backoff_max=5.0,
                    backoff_reset_after=10.0,
                    heartbeat_interval=10.0,
                    min_reschedule_delay=1.0,
                ),
            )
            client.link = link
            links.append(link)
            await link.start()
        for link in links:
            await link.wait_joined(120)
        print(f"soak: {args.devices} devices joined; running {args.minutes} min", flush=True)

        async def post(path: str, body: dict[str, Any]) -> bool:
            """POST to the hub's control API; whether it sent something to the device."""
            try:
                async with control.post(f"/_fakehub/devices/{path}", json=body) as response:
                    return bool((await response.json()).get("sent"))
            except aiohttp.ClientError as exc:
                violations.append(f"control API: {exc}")
                return False

        first_snapshot = None
        if args.trace:
            import tracemalloc

            tracemalloc.start(10)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_minute = started + 60
        events = {"disconnects": 0, "reboots": 0, "updates": 0, "cuts": 0, "unsent": 0}
        baseline_rss: float | None = None
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            link = rng.choice(links)
            ident = link.name
            roll = rng.random()
            if roll < 0.25:
                await post(f"{ident}/disconnect", {"code": rng.choice([1000, 1001, 1012])})
                events["disconnects"] += 1
            elif roll < 0.35:
                await post(f"{ident}/reboot", {})
                events["reboots"] += 1
            elif roll < 0.45:
                hub_proxy.schedule(Fault("cut", at=rng.randint(100, 5000), direction="down"))
                fw_proxy.schedule(Fault("cut", at=rng.randint(1000, IMAGE_SIZE)))
                events["cuts"] += 1
            elif not link.updates.busy and link.status.joined:
                which = rng.randrange(2)
                bad = rng.random() < 1 / 12
                sent = await post(
                    f"{ident}/update",
                    {
                        "firmware_url": f"http://127.0.0.1:{fw_proxy.port}/fw/fw{which}.bin",
                        "size": IMAGE_SIZE,
                        "checksum": "00" * 32 if bad else sums[which],
                        "partials_checksums": parts[which],
                        "firmware_meta": {"uuid": f"image-{which}-{bad}", "version": "2.0"},
                    },
                )
                events["updates" if sent else "unsent"] += 1
            if time.monotonic() >= next_minute:
                next_minute += 60
                # The proxies keep a record per connection: drop the closed ones, so the RSS
                # measured is the devices', not the harness's bookkeeping.
                for proxy in (hub_proxy, fw_proxy):
                    proxy.connections[:] = [c for c in proxy.connections if not c.done.is_set()]
                rss, fds, tasks = stats()
                baseline_rss = baseline_rss or rss
                row = {
                    "minute": round((time.monotonic() - started) / 60),
                    "rss_mib": round(rss, 1),
                    "fds": fds,
                    "tasks": tasks,
                    "joins": sum(link.status.joins for link in links),
                    "completed": sum(link.updates.completed_count for link in links),
                    "failed": sum(link.updates.failed_count for link in links),
                    "busy": sum(1 for link in links if link.updates.busy),
                    **events,
                }
                history.append(row)
                print(json.dumps(row), flush=True)
                if args.trace:
                    snapshot = tracemalloc.take_snapshot()
                    if first_snapshot is None:
                        first_snapshot = snapshot
                    else:
                        for stat in snapshot.compare_to(first_snapshot, "lineno")[:8]:
                            print(f"  trace: {stat}", flush=True)

        # Quiet down: no more faults; everyone back, idle.
        hub_proxy.always = fw_proxy.always = ()
        for link in links:
            await link.wait_joined(120)
            await asyncio.wait_for(link.updates.wait_idle(), 300)
        gc.collect()
        rss, fds, tasks = stats()
        for link in links:
            ident = link.name
            installed = targets[ident].read_bytes()
            for done in link.updates.completed:
                if str(done.uuid).endswith("True"):
                    violations.append(f"{ident}: completed an update with a wrong checksum")
            if link.updates.completed:
                last = link.updates.completed[-1]
                index = int(str(last.uuid).split("-")[1])
                if installed != data[index]:
                    violations.append(f"{ident}: completed {last.uuid} but holds another image")
            elif installed != OLD:
                violations.append(f"{ident}: nothing completed, yet the image changed")
        # When quiet: per device its connection, heartbeat and validation watcher; per proxied
        # connection (this process runs the proxies too) a handler and two pumps; a few more.
        proxied = hub_proxy.open_connections + fw_proxy.open_connections
        quiet_tasks = args.devices * 3 + proxied * 3 + 8
        if tasks > quiet_tasks:
            names: dict[str, int] = {}
            for task in asyncio.all_tasks():
                name = re.sub(r"soak-\d+", "*", task.get_name())
                names[name] = names.get(name, 0) + 1
            violations.append(f"{tasks} tasks when quiet (expected at most {quiet_tasks}): {names}")
        if baseline_rss is not None and rss - baseline_rss > args.max_growth_mib:
            violations.append(
                f"RSS grew {rss - baseline_rss:.1f} MiB from minute 1 (limit {args.max_growth_mib})"
            )
        summary = {
            "devices": args.devices,
            "minutes": args.minutes,
            "seed": args.seed,
            "final": {"rss_mib": round(rss, 1), "fds": fds, "tasks": tasks},
            "history": history,
            "violations": violations,
        }
        for link in links:
            await link.stop()
    server.terminate()
    await server.wait()
    print(json.dumps(summary["final"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if violations:
        print("soak: FAILED:\n  " + "\n  ".join(violations[:50]), file=sys.stderr)
        return 1
    print(f"soak: OK ({args.devices} devices, {args.minutes} min, seed {args.seed})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-growth-mib", type=float, default=30)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--trace", action="store_true", help="tracemalloc: print the top growing lines each minute"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**31)
    if args.serve:
        asyncio.run(serve(args.seed))
        return
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
