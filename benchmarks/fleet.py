"""What a device costs when thousands share one process: ``nhlink fleet`` against bare clients.

Every row runs in fresh processes on 127.0.0.1, the server always in its own process:

* ``nhlink fleet`` (real :class:`~nhlink.NervesHubLink` devices: NH1, join, heartbeats every
  ``--heartbeat`` s) against FakeHub (``python -m nhlink.testing``). Per device: resident growth
  of the fleet process from before the first device to the end of the idle window, divided by
  N; idle CPU: CPU seconds over the idle window (after every device joined) per wall second;
  join rate and latency from the fleet's JSON summary; FakeHub's own resident growth per device.
* bare idle WebSocket connections of aiohttp, websockets and ``nhlink.transport.connect`` (no
  protocol on top) to a ``websockets`` server: resident growth per connection, same N.

Over ``ws``, ``wss`` (TLS 1.2: FakeHub serves 1.2 only, as the server does by default) and
``wss13`` (TLS 1.3: FakeHub's ``--tls13``, the server's ``DEVICE_ENABLE_TLS_13``); the server's
certificate from a test CA (P-256), the fleet with one shared context, as ``nhlink fleet``
runs; the bare rows' server offers the same TLS version. Run::

    python benchmarks/fleet.py                           # 1k, 5k, 10k; ws and wss; ~20 min
    python benchmarks/fleet.py --sizes 10000 --transports wss13 --bare ""
    python benchmarks/fleet.py --sizes 1000 --idle 35    # quicker
    python benchmarks/fleet.py --json fleet.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "nhp_benchmark_fleet_key"
SECRET = "benchmark-fleet-secret-0123456789"
BARE = ("aiohttp", "websockets", "nhlink-transport")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {path.read_text()}")
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise RuntimeError(f"no {prefix!r} from the server: {path.read_text()}")


class Hub:
    """FakeHub in its own process; its output goes to a file (a pipe could fill and stall it)."""

    def __init__(self, workdir: Path, tls: bool, tls13: bool = False) -> None:
        self.log = workdir / f"hub-{'wss' if tls else 'ws'}.log"
        args = ["--port", "0", "--product-key", KEY, "--product-secret", SECRET]
        args += ["--idle-timeout", "600"]
        if tls:
            args += ["--tls-dir", str(workdir / "pki")]
        if tls13:
            args += ["--tls13"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nhlink.testing", *args], stdout=out, stderr=out
            )
        line = _wait_for_line(self.log, "control API:", self.proc)
        self.port = int(line.split()[-1].split(":")[2].split("/")[0])
        self.ca = workdir / "pki" / "ca.crt" if tls else None
        self.scheme = "wss" if tls else "ws"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def fleet_row(
    workdir: Path, n: int, transport: str, ramp: float, idle: float, hb: float
) -> dict[str, Any]:
    hub = Hub(workdir, transport != "ws", tls13=transport == "wss13")
    try:
        hub_start = _rss_kib(hub.proc.pid)
        secret = workdir / "secret"
        secret.write_text(SECRET)
        out = workdir / f"fleet-{n}-{hub.scheme}.json"
        duration = n / ramp + idle
        cmd = [
            sys.executable, "-m", "nhlink", "fleet",
            "--hub", f"{hub.scheme}://127.0.0.1:{hub.port}/socket/websocket",
            "--devices", str(n), "--ramp", f"{ramp}/s", "--duration", f"{duration}s",
            "--product-key", KEY, "--product-secret-file", str(secret),
            "--heartbeat", str(hb), "--json", str(out), "--quiet",
        ]  # fmt: skip
        if hub.ca is not None:
            cmd += ["--ca-file", str(hub.ca)]
        hub_cpu0 = _cpu_s(hub.proc.pid)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        hub_peak = hub_start
        hub_cpu: list[tuple[float, float]] = []  # (seconds since the fleet started, CPU s)
        while proc.poll() is None:  # sample the hub while the fleet is up
            hub_peak = max(hub_peak, _rss_kib(hub.proc.pid))
            hub_cpu.append((time.monotonic() - started, _cpu_s(hub.proc.pid) - hub_cpu0))
            time.sleep(0.5)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"nhlink fleet failed: {err[-2000:]}")
        summary = json.loads(out.read_text())
    finally:
        hub.stop()
    p = summary["process"]
    lat = summary["join_latency"]
    # The hub's CPU until every device had joined: the first sample 1 s past "all joined"
    # (the fleet's clock starts after its imports, so a little late; the hub idles meanwhile).
    hub_join_cpu_ms = None
    if p.get("all_joined_after_s"):
        after = [c for t, c in hub_cpu if t >= p["all_joined_after_s"] + 1.0]
        if after:
            hub_join_cpu_ms = round(1000 * after[0] / n, 3)
    return {
        "row": "nhlink fleet",
        "transport": transport,
        "devices": n,
        "joined": summary["final"]["joined"],
        "kib_per_device": p.get("kib_per_device"),
        "idle_cpu_percent": p.get("idle_cpu_percent"),
        "steady_cpu_percent": p.get("steady_cpu_percent"),
        "steady_window_s": p.get("steady_window_s"),
        "idle_window_s": p.get("idle_window_s"),
        "join_rate": round(n / p["all_joined_after_s"], 1) if p.get("all_joined_after_s") else None,
        "join_cpu_ms": p.get("join_cpu_ms"),
        "hub_join_cpu_ms": hub_join_cpu_ms,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "hub_kib_per_device": round((hub_peak - hub_start) / n, 2),
        "errors": summary["errors"],
    }


# -- bare connections --------------------------------------------------------------------------

_SERVER = r"""
import asyncio, ssl, sys
from websockets.asyncio.server import serve
async def main():
    ctx = None
    if len(sys.argv) > 1:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        if sys.argv[3] == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async def handler(ws):
        await ws.wait_closed()
    async with serve(handler, "127.0.0.1", 0, ssl=ctx, ping_interval=None, compression=None) as s:
        print("port", s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""

_CLIENT = r"""
import asyncio, json, ssl, sys, time
lib, url, n, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
async def main():
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    if lib == "aiohttp":
        import aiohttp
        # limit=0: the default pool of 100 connections would hold back the 101st WebSocket
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        opener = lambda: session.ws_connect(url, ssl=ctx or None, autoping=False)
    elif lib == "websockets":
        from websockets.asyncio.client import connect
        opener = lambda: connect(url, ssl=ctx, ping_interval=None, compression=None)
    else:
        from nhlink.transport import connect
        opener = lambda: connect(url, ssl=ctx)
    await asyncio.sleep(0)
    before = rss()
    conns = []
    sem = asyncio.Semaphore(200)
    async def one():
        async with sem:
            conns.append(await opener())
    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(2)
    after = rss()
    print(json.dumps({"kib_per_connection": round((after - before) / n, 2), "n": len(conns)}))
    for c in conns:
        await c.close()
    if lib == "aiohttp":
        await session.close()
asyncio.run(main())
"""


def bare_row(workdir: Path, lib: str, n: int, transport: str) -> dict[str, Any]:
    args = []
    ca = ""
    tls = transport != "ws"
    if tls:
        pki = workdir / "pki"
        args = [str(pki / "server.crt"), str(pki / "server.key")]
        args.append("1.3" if transport == "wss13" else "1.2")
        ca = str(pki / "ca.crt")
    log = workdir / "bare-server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", _SERVER, *args], stdout=out, stderr=out)
    try:
        port = int(_wait_for_line(log, "port", server).split()[1])
        scheme = "wss" if tls else "ws"
        done = subprocess.run(
            [sys.executable, "-c", _CLIENT, lib, f"{scheme}://127.0.0.1:{port}/", str(n), ca],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{lib}: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(30)
    return {"row": f"bare {lib}", "transport": transport, "devices": n, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--transports", default="ws,wss")
    parser.add_argument("--ramp", type=float, default=1000.0, help="devices started per second")
    parser.add_argument(
        "--idle", type=float, default=100.0, help="idle window, s (the steady one starts 35 s in)"
    )
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--bare", default=",".join(BARE), help="bare client rows ('' for none)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nhlink-fleet-bench-") as tmp:
        workdir = Path(tmp)
        # The PKI is made once (the first wss hub writes it); bare TLS rows reuse it.
        for transport in args.transports.split(","):
            if transport not in ("ws", "wss", "wss13"):
                parser.error(f"unknown transport {transport!r} (ws, wss, wss13)")
            for n in (int(x) for x in args.sizes.split(",")):
                row = fleet_row(workdir, n, transport, args.ramp, args.idle, args.heartbeat)
                rows.append(row)
                print(json.dumps(row), flush=True)
                for lib in filter(None, args.bare.split(",")):
                    bare = bare_row(workdir, lib, n, transport)
                    rows.append(bare)
                    print(json.dumps(bare), flush=True)
    print()
    print(
        "| row | transport | N | KiB/device | idle CPU % of a core (from all joined / steady) "
        "| joins/s | p50 / p99 join ms | CPU ms per join: fleet / FakeHub | FakeHub KiB/device |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["row"] == "nhlink fleet":
            print(
                f"| nhlink fleet | {r['transport']} | {r['devices']:,} | {r['kib_per_device']} "
                f"| {r['idle_cpu_percent']} / {r['steady_cpu_percent']} | {r['join_rate']} "
                f"| {r['p50_ms']} / {r['p99_ms']} "
                f"| {r['join_cpu_ms']} / {r['hub_join_cpu_ms']} "
                f"| {r['hub_kib_per_device']} |"
            )
        else:
            print(
                f"| {r['row']} | {r['transport']} | {r['devices']:,} | {r['kib_per_connection']} "
                "| — | — | — | — | — |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
