"""One fixed benchmark of nhlink's core, run natively and under emulation (scripts/cross/run.sh).

The emulation slowdown of a workload is its time emulated divided by its time natively, the same
code on the same inputs, both cores. Only the standard library and an installed nhlink are used::

    python bench.py [--json OUT] [--repeat N]

Workloads (each one "round", timed best of ``--repeat``):

* ``interp``: a pure-Python loop (no nhlink): the interpreter's own slowdown;
* ``mask``: ``apply_mask`` over 4 MiB in 64 KiB calls;
* ``frames``: ``FrameParser`` over 2,000 server frames of 200 bytes, fed in 4 KiB reads;
* ``codec``: ``encode_message`` + ``decode_message`` of 1,000 Phoenix messages;
* ``digest``: ``StreamingDigest`` over 4 MiB in 4 KiB chunks (SHA-256 by OpenSSL included).
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

KEY = bytes.fromhex("37fa213d")


def _interp() -> Callable[[], object]:
    def run() -> int:
        total = 0
        for i in range(200_000):
            total += i * i % 7
        return total

    return run


def _mask(core: ModuleType) -> Callable[[], object]:
    block = bytes(range(256)) * 256  # 64 KiB

    def run() -> None:
        for _ in range(64):
            core.apply_mask(block, KEY)

    return run


def _frames(core: ModuleType) -> Callable[[], object]:
    payload = bytes(range(200))
    frame = struct.pack("!BBH", 0x82, 126, len(payload)) + payload
    stream = frame * 2000
    reads = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]

    def run() -> None:
        parser = core.FrameParser()
        count = 0
        for data in reads:
            count += len(parser.feed(data))
        assert count == 2000, count

    return run


def _codec(core: ModuleType) -> Callable[[], object]:
    payload = {
        "firmware_url": "https://example.com/firmware/a1b2c3d4.fw?token=0123456789abcdef",
        "firmware_meta": {
            "uuid": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
            "version": "1.2.3",
            "architecture": "arm",
            "platform": "rpi4",
            "size": 5368709120,
        },
        "partials_checksums": ["0123456789ABCDEF" * 4] * 4,
    }

    def run() -> None:
        for i in range(1000):
            data = core.encode_message("1", str(i), "device", "update", payload)
            core.decode_message(data)

    return run


def _digest(core: ModuleType) -> Callable[[], object]:
    chunk = bytes(range(256)) * 16  # 4 KiB
    count = 1024  # 4 MiB

    def run() -> None:
        digest = core.StreamingDigest()
        for _ in range(count):
            digest.feed(chunk)
        digest.flush()

    return run


WORKLOADS: dict[str, Callable[[ModuleType], Callable[[], object]]] = {
    "mask": _mask,
    "frames": _frames,
    "codec": _codec,
    "digest": _digest,
}


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up (imports, caches)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import importlib

    results: dict[str, dict[str, float]] = {"-": {"interp": best_of(_interp(), args.repeat)}}
    for impl in ("cython", "python"):
        try:
            core = importlib.import_module(f"nhlink._core.{impl}")
        except ImportError as exc:
            print(f"{impl}: not available ({exc})", file=sys.stderr)
            continue
        results[impl] = {name: best_of(make(core), args.repeat) for name, make in WORKLOADS.items()}
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "pointer_bits": struct.calcsize("P") * 8,
        "seconds": results,
    }
    for impl, times in results.items():
        print(f"{impl:7} " + "  ".join(f"{k} {v * 1e3:8.2f} ms" for k, v in times.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
