"""Firmware download throughput over loopback, measured the way an outsider would.

The server (:class:`~nhlink.testing.firmware.FirmwareServer`, aiohttp, ``sendfile``) runs in
its own process; every client row runs in a fresh process of its own (so its CPU time and peak
RSS are its own), the rows interleaved round by round, and the table shows the **median** of
the rounds, wall time and CPU seconds side by side, each as a ratio to the raw-socket row of
the same run:

* ``raw-socket`` (the baseline): an HTTP/1.1 GET on a blocking socket, ``recv_into`` one
  preallocated 256 KiB buffer, ``hashlib.sha256`` on each read;
* ``aiohttp``: ``session.get`` + ``iter_any()`` + ``hashlib``: the bare library;
* ``download``: :func:`nhlink.update.download.download` into a sink that only hashes with
  ``hashlib`` — what nhlink's download loop costs around aiohttp;
* ``pipeline-cython`` / ``pipeline-python``: the whole update path — ``download()``,
  ``StreamingDigest`` (compiled / pure core) with the whole-file checksum *and* the 1 MiB part
  checksums (every byte hashed twice, each part held back until it matched), the threaded
  write stage, and a real :class:`~nhlink.update.writers.FileWriter` writing to disk
  (``--write-dir``, default a temporary directory under ``/var/tmp``), synced at every part
  as the update manager does for a resumable writer, fsynced and renamed at the end.

Run::

    python benchmarks/download_throughput.py                   # 256 MiB, median of 5
    python benchmarks/download_throughput.py --size-mib 64 --repeat 9 --json out.json
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

IMPLS = ("raw-socket", "aiohttp", "download", "pipeline-cython", "pipeline-python")
#: rows that take the pipeline apart (``--impl``): no sync per part; a writer that keeps nothing
EXTRA = ("pipeline-nosync", "pipeline-null")
BASELINE = "raw-socket"
MIB = 1024 * 1024


class NullWriter:
    """The writer of the raw and aiohttp rows: counts bytes, keeps nothing."""

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


CORES = ("cython", "python")


class _LoopbackSink:
    """What every row's download sink shares: nothing to do per attempt, no restarts."""

    async def attempt(self, number: int, offset: int) -> None:
        pass

    async def restart(self) -> None:
        raise AssertionError("no restarts on loopback")

    def total_size(self, size: int) -> None:
        pass


async def _pipeline(
    core_name: str,
    url: str,
    size: int,
    digest: str,
    parts: list[str],
    write_dir: str,
    variant: str = "",
) -> int:
    import importlib

    from nhlink.update.download import DownloadOptions, download
    from nhlink.update.stage import WriteStage
    from nhlink.update.writers import FileWriter

    core = importlib.import_module(f"nhlink._core.{core_name}")
    target = Path(write_dir) / f"fw-{os.getpid()}.img"
    writer: Any = FileWriter(target)
    if variant == "null":

        class Null(FileWriter):
            def fwup_chunk(self, data: bytes | memoryview) -> None:
                pass

        writer = Null(target)
    writer.fwup_begin(size, {})

    class Sink(_LoopbackSink):  # the update manager's download sink, minus status reports
        def __init__(self) -> None:
            # sync=True: fwup_sync (flush + fsync) before each resume point, as for a
            # resumable writer with a state directory.
            self.stage = WriteStage(writer, self._digest(), sync=variant != "nosync")

        def _digest(self) -> Any:
            return core.StreamingDigest(part_checksums=parts, checksum=digest)

        async def data(self, chunk: bytes) -> None:
            await self.stage.feed(chunk)

    sink = Sink()
    options = DownloadOptions(allow_http=True)  # the loopback server speaks plain http
    try:
        total = await download(url, sink=sink, expected_size=size, options=options)
        await sink.stage.drain()
        await sink.stage.write_final(sink.stage.digest.flush())  # verifies, then the held tail
        sink.stage.close()
        await asyncio.to_thread(writer.fwup_finish)
        assert total == size
        assert variant == "null" or target.stat().st_size == size
    finally:
        target.unlink(missing_ok=True)
    return total


async def _download(url: str, size: int, digest: str) -> int:
    from nhlink.update.download import DownloadOptions, download

    hasher = hashlib.sha256()
    update = hasher.update

    class Sink(_LoopbackSink):  # hashes, nothing else: the download loop's own cost
        async def data(self, chunk: bytes) -> None:
            update(chunk)

    total = await download(
        url, sink=Sink(), expected_size=size, options=DownloadOptions(allow_http=True)
    )
    assert total == size and hasher.hexdigest() == digest.lower()
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
    buffer = bytearray(256 * 1024)
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


def client(
    impl: str, url: str, size: int, digest: str, parts: list[str], write_dir: str
) -> dict[str, Any]:
    # Import what the row needs before the clock starts: importing aiohttp alone takes longer
    # than some downloads.
    if impl.startswith("pipeline"):
        import importlib

        import nhlink.update.download

        core_name = impl.removeprefix("pipeline-")
        importlib.import_module(f"nhlink._core.{core_name if core_name in CORES else 'cython'}")
    elif impl == "download":
        import nhlink.update.download  # noqa: F401
    elif impl == "aiohttp":
        import aiohttp  # noqa: F401
    before = _status_mib("VmRSS") or 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    if impl in ("pipeline-nosync", "pipeline-null"):
        variant = impl.removeprefix("pipeline-")
        asyncio.run(_pipeline("cython", url, size, digest, parts, write_dir, variant))
    elif impl.startswith("pipeline-"):
        core = impl.removeprefix("pipeline-")
        asyncio.run(_pipeline(core, url, size, digest, parts, write_dir))
    elif impl == "download":
        asyncio.run(_download(url, size, digest))
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
    if impl != "pipeline-cython":
        return True
    try:
        import nhlink._core.cython  # noqa: F401
    except ImportError:
        return False
    return True


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the median is shown)")
    parser.add_argument(
        "--impl", action="append", choices=IMPLS + EXTRA, help="rows to run (default: IMPLS)"
    )
    parser.add_argument("--write-dir", help="where the pipeline rows write (default: /var/tmp)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve", nargs=2, metavar=("PATH", "URL_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        asyncio.run(_serve(*args.serve))
        return
    if args.client:
        impl, url, size, digest, parts_file, write_dir = args.client
        parts = json.loads(Path(parts_file).read_text())
        print(json.dumps(client(impl, url, int(size), digest, parts, write_dir)))
        return

    size = args.size_mib * MIB
    impls = [impl for impl in (args.impl or IMPLS) if _available(impl)]
    with (
        tempfile.TemporaryDirectory(prefix="nhlink-bench-") as tmp,
        tempfile.TemporaryDirectory(
            prefix="nhlink-bench-", dir=args.write_dir or "/var/tmp"
        ) as write_dir,
    ):
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
                            write_dir,
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    results[impl].append(json.loads(out.strip().splitlines()[-1]))
        finally:
            server.terminate()
            server.wait(10)

    med = {
        impl: {key: _median([r[key] for r in runs]) for key in ("seconds", "cpu", "maxrss_mib")}
        for impl, runs in results.items()
    }
    base = med.get(BASELINE)
    print(f"download: {args.size_mib} MiB over loopback, SHA-256 verified")
    print(
        f"(median of {args.repeat} interleaved rounds; each client in its own process; the "
        "server in another)\n"
    )
    print(
        f"{'impl':<16} {'MiB/s':>7} {'vs raw':>7} {'CPU s':>6} {'CPU vs raw':>10} "
        f"{'peak RSS MiB':>12}  {'rounds: MiB/s':<}"
    )
    for impl in impls:
        row = med[impl]
        rate = args.size_mib / row["seconds"]
        speed = f"{base['seconds'] / row['seconds']:.2f}x" if base else "-"
        cpu = f"{row['cpu'] / base['cpu']:.2f}x" if base else "-"
        rounds = " ".join(f"{args.size_mib / r['seconds']:.0f}" for r in results[impl])
        print(
            f"{impl:<16} {rate:>7.0f} {speed:>7} {row['cpu']:>6.2f} {cpu:>10} "
            f"{row['maxrss_mib']:>12.1f}  {rounds}"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": size, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
