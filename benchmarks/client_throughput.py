"""WebSocket client receive throughput over loopback: nhlink (compiled, pure) vs other clients.

One local server process (raw sockets, so it is never the bottleneck: it writes pre-built frames)
serves every client in the same run. Each client runs in its own fresh process, so the pure
core can be selected with NHLINK_NO_EXTENSIONS=1 and CPU time is the client's alone::

    python benchmarks/client_throughput.py               # 100,000 x 64 B text, 1,000 x 1 MiB
    python benchmarks/client_throughput.py --json out.json --repeat 3

Reports messages/s (best of ``--repeat``) and CPU seconds per message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENTS = ("nhlink-cython", "nhlink-python", "aiohttp", "websockets", "picows")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- server (separate process) --------------------------------------------------------------------


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big") + payload


def serve(port_file: str) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    with open(port_file, "w") as f:
        f.write(str(listener.getsockname()[1]))
    blobs: dict[tuple[int, int], bytes] = {}
    while True:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            head = request.decode("latin-1")
            if head.startswith("GET /quit"):
                return
            path = head.split(" ", 2)[1]
            count, size = (int(x) for x in path.strip("/").split("/")[:2])
            key = next(
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            conn.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            blob = blobs.get((count, size))
            if blob is None:
                opcode = 1 if size <= 4096 else 2
                pattern = b'["1","2","device","fwup_progress",{"value":42}]'
                payload = (pattern * (size // len(pattern) + 1))[:size]
                blob = _frame(opcode, payload) * count
                blobs[(count, size)] = blob
            conn.sendall(blob)
            conn.sendall(_frame(8, (1000).to_bytes(2, "big")))
            try:  # RFC 6455 §7.1.1: the server closes TCP once the client's close frame arrives
                conn.settimeout(10)
                conn.recv(65536)
            except OSError:
                pass


# -- clients (one process each) -------------------------------------------------------------------


async def run_nhlink(url: str, count: int, size: int) -> int:
    from nhlink.transport import connect

    n = 0
    async with connect(url, max_message_size=2 * 1024 * 1024, read_limit=8 * 1024 * 1024) as ws:
        async for _ in ws:
            n += 1
    return n


async def run_aiohttp(url: str, count: int, size: int) -> int:
    import aiohttp

    n = 0
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, max_msg_size=2 * 1024 * 1024, autoping=True) as ws,
    ):
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                n += 1
    return n


async def run_websockets(url: str, count: int, size: int) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    n = 0
    async with connect(url, max_size=2 * 1024 * 1024, compression=None, ping_interval=None) as ws:
        try:
            async for _ in ws:
                n += 1
        except ConnectionClosed:
            pass
    return n


async def run_picows(url: str, count: int, size: int) -> int:
    import picows

    class Listener(picows.WSListener):  # type: ignore[misc,unused-ignore]  # Any without picows
        n = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
                Listener.n += 1
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(picows.WSCloseCode.OK)
                transport.disconnect()

    transport, _ = await picows.ws_connect(Listener, url, max_frame_size=2 * 1024 * 1024)
    await transport.wait_disconnected()
    return Listener.n


def worker(client: str, url: str, count: int, size: int) -> dict[str, Any]:
    runner = {
        "nhlink-cython": run_nhlink,
        "nhlink-python": run_nhlink,
        "aiohttp": run_aiohttp,
        "websockets": run_websockets,
        "picows": run_picows,
    }[client]
    if client.startswith("nhlink"):
        import nhlink._core

        expected = client.split("-")[1]
        if expected != nhlink._core.IMPLEMENTATION:
            raise SystemExit(f"wanted the {expected} core, got {nhlink._core.IMPLEMENTATION}")
    # The library is imported before the clocks start: this measures receiving, not importing
    # (an import of ~35 ms spread over 1,000 messages would add ~35 µs to each).
    __import__(
        {"aiohttp": "aiohttp", "websockets": "websockets.asyncio.client", "picows": "picows"}.get(
            client, "nhlink.transport"
        )
    )
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    n = asyncio.run(runner(f"{url}/{count}/{size}", count, size))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if n != count:
        raise SystemExit(f"{client}: received {n} messages, expected {count}")
    return {"client": client, "count": count, "size": size, "wall": wall, "cpu": cpu}


# -- driver --------------------------------------------------------------------------------------


def _available(client: str) -> bool:
    module = {"aiohttp": "aiohttp", "websockets": "websockets", "picows": "picows"}.get(client)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=100_000, help="number of small messages")
    parser.add_argument("--large", type=int, default=1_000, help="number of 1 MiB messages")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.count, args.size)))
        return 0

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if time.monotonic() > deadline:
                    raise SystemExit("benchmark server did not start")
                time.sleep(0.05)
            port = int(Path(port_file).read_text())
            url = f"ws://127.0.0.1:{port}"
            results = []
            for count, size in ((args.small, 64), (args.large, 1024 * 1024)):
                print(f"\n## receive {count:,} messages of {size:,} B over loopback")
                rows = []
                for client in args.clients.split(","):
                    if not _available(client):
                        print(f"  {client:<15} (not installed)")
                        continue
                    env = dict(os.environ)
                    env.pop("NHLINK_NO_EXTENSIONS", None)
                    if client == "nhlink-python":
                        env["NHLINK_NO_EXTENSIONS"] = "1"
                    best: dict[str, Any] | None = None
                    for _ in range(args.repeat):
                        out = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--worker",
                                client,
                                "--url",
                                url,
                                "--count",
                                str(count),
                                "--size",
                                str(size),
                            ],
                            env=env,
                            capture_output=True,
                            text=True,
                            check=False,
                            timeout=600,
                        )
                        if out.returncode != 0:
                            print(f"  {client:<15} FAILED: {out.stderr.strip()[-300:]}")
                            best = None
                            break
                        result = json.loads(out.stdout)
                        if best is None or result["wall"] < best["wall"]:
                            best = result
                    if best is not None:
                        rows.append(best)
                        results.append(best)
                base = next((r for r in rows if r["client"] == "aiohttp"), None)
                for r in sorted(rows, key=lambda r: r["wall"]):
                    rate = r["count"] / r["wall"]
                    ratio = f"{base['wall'] / r['wall']:5.2f}x aiohttp" if base else ""
                    mib = r["count"] * r["size"] / r["wall"] / 2**20
                    print(
                        f"  {r['client']:<15} {rate:12,.0f} msg/s  {mib:9.1f} MiB/s"
                        f"  {r['cpu'] / r['count'] * 1e6:8.2f} µs CPU/msg  {ratio}"
                    )
        finally:
            with contextlib.suppress(OSError, NameError):
                socket.create_connection(("127.0.0.1", port), timeout=2).sendall(
                    b"GET /quit HTTP/1.1\r\n\r\n"
                )
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
