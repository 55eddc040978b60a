"""Firmware download throughput over loopback: nhlink's pipeline against bare aiohttp and sockets.

Each row downloads the same 256 MiB image from one :class:`~nhlink.testing.firmware.FirmwareServer`
(its own process, serving with ``sendfile``), SHA-256-verifies it and writes it to a null writer:

* ``nhlink-cython`` / ``nhlink-python``: :func:`nhlink.update.download.download` into a sink
  that does what the update manager does with a current server's update: ``StreamingDigest``
  (compiled / pure core) with the whole-file checksum *and* the 1 MiB part checksums, so every
  byte is hashed twice and the verification gate holds each part back until it matched; the
  released 64 KiB blocks go to the writer through the write stage; then ``flush`` (verifies,
  releases the rest);
* ``aiohttp``: ``session.get`` + ``iter_any()`` + ``hashlib.sha256().update`` + writer, per chunk;
* ``raw-socket`` (the baseline): an HTTP/1.1 GET on a blocking socket, ``recv_into`` one
  preallocated 1 MiB buffer, ``hashlib`` + writer on each read.

Every client runs in a fresh process, so its peak RSS (``VmHWM``) is its own. The file is
created in a temporary directory and removed afterwards. Run::

    python benchmarks/download_throughput.py                  # 256 MiB, best of 3
    python benchmarks/download_throughput.py --size-mib 64 --repeat 5 --json out.json

Reports MiB/s (best wall time of ``--repeat``), CPU seconds of the client, its peak RSS and how
far the download raised RSS above the idle, imported client ("growth": memory stays flat).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IMPLS = ("nhlink-cython", "nhlink-python", "aiohttp", "raw-socket")
BASELINE = "raw-socket"
MIB = 1024 * 1024


class NullWriter:
    """The firmware writer of every row: counts bytes, keeps nothing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, block: bytes | memoryview) -> None:
        self.written += len(block)


# -- server (its own process) ------------------------------------------------------------------


async def _serve(path: str, port_file: str) -> None:
    from nhlink.testing.firmware import FirmwareServer

    async with FirmwareServer() as server:
        url = server.add("fw.bin", path)
        Path(port_file).write_text(url)  # noqa: ASYNC240  # once, before serving
        await asyncio.Event().wait()  # until terminated


# -- clients (one process per run) ---------------------------------------------------------------


async def _nhlink(core_name: str, url: str, size: int, digest: str, parts: list[str]) -> int:
    import importlib

    from nhlink.update.download import DownloadOptions, download
    from nhlink.update.stage import WriteStage
    from nhlink.update.writer import FwupWriter

    core = importlib.import_module(f"nhlink._core.{core_name}")
    writer = NullWriter()

    class NullFwupWriter(FwupWriter):  # what the update manager drives
        def fwup_chunk(self, data: bytes | memoryview) -> None:
            writer.write(data)

    class Sink:  # the update manager's download sink, minus status reports
        def __init__(self) -> None:
            self.stage = WriteStage(NullFwupWriter(), self._digest())

        def _digest(self) -> Any:
            return core.StreamingDigest(part_checksums=parts, checksum=digest)

        async def attempt(self, number: int, offset: int) -> None:
            pass

        async def restart(self) -> None:
            await self.stage.drain()
            self.stage.replace_digest(self._digest())

        def total_size(self, size: int) -> None:
            pass

        async def data(self, chunk: bytes) -> None:
            await self.stage.feed(chunk)

    sink = Sink()
    options = DownloadOptions(allow_http=True)  # the loopback server speaks plain http
    total = await download(url, sink=sink, expected_size=size, options=options)
    await sink.stage.drain()
    await sink.stage.write_final(sink.stage.digest.flush())  # verifies, then the held tail
    sink.stage.close()
    assert total == size == writer.written
    return total


async def _aiohttp(url: str, size: int, digest: str) -> int:
    import aiohttp

    writer = NullWriter()
    hasher = hashlib.sha256()
    update = hasher.update
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        async for chunk in response.content.iter_any():
            update(chunk)
            writer.write(chunk)
    assert hasher.hexdigest() == digest.lower() and writer.written == size
    return size


def _raw_socket(url: str, size: int, digest: str) -> int:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    writer = NullWriter()
    hasher = hashlib.sha256()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert length == size
        hasher.update(body)
        writer.write(body)
        received = len(body)
        recv_into, update, write = sock.recv_into, hasher.update, writer.write
        while received < length:
            n = recv_into(buffer)
            if not n:
                raise ConnectionError("closed early")
            update(view[:n])
            write(view[:n])
            received += n
    assert hasher.hexdigest() == digest.lower() and writer.written == size
    return size


def client(impl: str, url: str, size: int, digest: str, parts: list[str]) -> dict[str, Any]:
    # Import what the row needs before the clock starts: importing aiohttp alone takes longer
    # than some downloads.
    if impl.startswith("nhlink"):
        import importlib

        import nhlink.update.download  # noqa: F401

        importlib.import_module(f"nhlink._core.{impl.removeprefix('nhlink-')}")
    elif impl == "aiohttp":
        import aiohttp  # noqa: F401
    before = _status_mib("VmRSS") or 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    if impl == "nhlink-cython":
        asyncio.run(_nhlink("cython", url, size, digest, parts))
    elif impl == "nhlink-python":
        asyncio.run(_nhlink("python", url, size, digest, parts))
    elif impl == "aiohttp":
        asyncio.run(_aiohttp(url, size, digest))
    elif impl == "raw-socket":
        _raw_socket(url, size, digest)
    else:
        raise ValueError(impl)
    return {
        "impl": impl,
        "seconds": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "maxrss_mib": _peak_rss_mib(),
        # How far the download pushed RSS above the imported, idle process (memory flatness).
        "growth_mib": max(0.0, _peak_rss_mib() - before),
    }


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM`` restarts at exec, unlike ``ru_maxrss``, which Linux
    carries over from the parent (the driver, which wrote the image)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- driver ------------------------------------------------------------------------------------


def _make_image(path: Path, size: int) -> str:
    """Write the image; return its SHA-256, and write its part checksums to ``<path>.parts``
    (JSON), upper-case as the server sends them (§7.1)."""
    hasher = hashlib.sha256()
    parts: list[str] = []
    with path.open("wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            hasher.update(block)
            parts.append(hashlib.sha256(block).hexdigest().upper())
            file.write(block)
            left -= len(block)
    path.with_name(path.name + ".parts").write_text(json.dumps(parts))
    return hasher.hexdigest().upper()


def _available(impl: str) -> bool:
    if impl != "nhlink-cython":
        return True
    try:
        import nhlink._core.cython  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--impl", action="append", choices=IMPLS, help="rows to run (default all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve", nargs=2, metavar=("PATH", "URL_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=5, metavar=("IMPL", "URL", "SIZE", "SHA", "PARTS"))
    args = parser.parse_args()

    if args.serve:
        asyncio.run(_serve(*args.serve))
        return
    if args.client:
        impl, url, size, digest, parts_file = args.client
        parts = json.loads(Path(parts_file).read_text())
        print(json.dumps(client(impl, url, int(size), digest, parts)))
        return

    size = args.size_mib * MIB
    impls = [impl for impl in (args.impl or IMPLS) if _available(impl)]
    with tempfile.TemporaryDirectory(prefix="nhlink-bench-") as tmp:
        image = Path(tmp) / "fw.bin"
        digest = _make_image(image, size)
        url_file = Path(tmp) / "url"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(image), str(url_file)])
        try:
            deadline = time.monotonic() + 30
            while not url_file.exists() or not url_file.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the firmware server did not start")
                time.sleep(0.05)
            url = url_file.read_text()
            results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
            for _ in range(args.repeat):
                for impl in impls:  # interleaved, so drift affects every row alike
                    out = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--client",
                            impl,
                            url,
                            str(size),
                            digest,
                            str(image) + ".parts",
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    results[impl].append(json.loads(out.strip().splitlines()[-1]))
        finally:
            server.terminate()
            server.wait(10)

    best = {impl: min(runs, key=lambda r: r["seconds"]) for impl, runs in results.items()}
    base = best.get(BASELINE)
    print(f"download: {args.size_mib} MiB over loopback + SHA-256 verify + null writer")
    print(f"(best of {args.repeat}; each client in its own process; server: FirmwareServer)\n")
    header = f"{'impl':<15} {'MiB/s':>8} {'vs raw':>7} {'CPU s':>7} {'peak RSS MiB':>13}"
    print(header + f" {'growth MiB':>11}")
    for impl in impls:
        row = best[impl]
        rate = args.size_mib / row["seconds"]
        ratio = f"{base['seconds'] / row['seconds']:.2f}x" if base else "-"
        print(
            f"{impl:<15} {rate:>8.0f} {ratio:>7} {row['cpu']:>7.2f} {row['maxrss_mib']:>13.1f}"
            f" {row['growth_mib']:>11.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": size, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
