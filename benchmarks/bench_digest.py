"""Streaming SHA-256 for firmware downloads, nhlink's pipeline against bare hashlib.

Run: ``python -m pytest benchmarks/bench_digest.py -p no:cacheprovider --benchmark-only -q``.

One round streams 4 MiB of firmware arriving in HTTP chunks of 64 B, 1 KiB or 16 KiB (already
in memory: this measures the CPU cost, not the network). Rows:

* ``hashlib`` (the baseline): ``hashlib.sha256().update`` per chunk, hashing only;
* ``nhlink-cython`` / ``nhlink-python``: ``StreamingDigest.feed`` per chunk then ``flush`` and
  ``hexdigest``: the whole-file hash *plus* re-blocking into 64 KiB writer blocks (the blocks
  are dropped, as a writer that is faster than the hash would);
* group ``digest: 1 KiB chunks + 1 MiB parts``: the same with ``part_checksums`` on, so every
  byte is hashed twice (whole file and its 1 MiB part); informational, expect about 2x the cost.

``extra_info``: ``impl``, ``items`` (bytes per round) and ``unit`` ("bytes").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from benchmarks._bench import optional, run

TOTAL = 4 * 1024 * 1024
BLOCK = 64 * 1024
PART = 1024 * 1024
DATA = os.urandom(TOTAL)
PARTS = [hashlib.sha256(DATA[i : i + PART]).hexdigest().upper() for i in range(0, TOTAL, PART)]
CHUNK_SIZES = {"64 B": 64, "1 KiB": 1024, "16 KiB": 16 * 1024}
CHUNKS = {
    name: [DATA[i : i + size] for i in range(0, TOTAL, size)] for name, size in CHUNK_SIZES.items()
}


NH_C = optional("nhlink._core.cython")
NH_PY = optional("nhlink._core.python")
IMPLS = {
    name: module
    for name, module in (("nhlink-cython", NH_C), ("nhlink-python", NH_PY))
    if module is not None
}


def bare_hashlib(chunks: list[bytes]) -> str:
    update = (hasher := hashlib.sha256()).update
    for chunk in chunks:
        update(chunk)
    return hasher.hexdigest()


def nhlink_pipeline(core: ModuleType, chunks: list[bytes], parts: list[str] | None) -> str:
    digest = core.StreamingDigest(block_size=BLOCK, part_size=PART, part_checksums=parts)
    feed = digest.feed
    for chunk in chunks:
        feed(chunk)
    digest.flush()
    return digest.hexdigest()  # type: ignore[no-any-return]


EXPECTED = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize("impl", ["hashlib", *IMPLS])
@pytest.mark.parametrize("chunk", list(CHUNK_SIZES))
def test_stream(benchmark: Any, chunk: str, impl: str) -> None:
    chunks = CHUNKS[chunk]
    fn: Callable[[], str]
    if impl == "hashlib":
        fn = lambda: bare_hashlib(chunks)  # noqa: E731
    else:
        core = IMPLS[impl]
        fn = lambda: nhlink_pipeline(core, chunks, None)  # noqa: E731
    assert fn() == EXPECTED
    run(
        benchmark,
        fn,
        batch=False,
        group=f"digest: {chunk} chunks",
        impl=impl,
        items=TOTAL,
        unit="bytes",
    )


@pytest.mark.parametrize("impl", ["hashlib", *IMPLS])
def test_stream_with_parts(benchmark: Any, impl: str) -> None:
    chunks = CHUNKS["1 KiB"]
    fn: Callable[[], str]
    if impl == "hashlib":
        fn = lambda: bare_hashlib(chunks)  # noqa: E731
    else:
        core = IMPLS[impl]
        fn = lambda: nhlink_pipeline(core, chunks, PARTS)  # noqa: E731
    assert fn() == EXPECTED
    run(
        benchmark,
        fn,
        batch=False,
        group="digest: 1 KiB chunks + 1 MiB parts",
        impl=impl,
        items=TOTAL,
        unit="bytes",
    )
