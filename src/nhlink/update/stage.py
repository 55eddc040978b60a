"""Hash the firmware on the event loop, write it on a worker thread (PROTOCOL.md §11).

``StreamingDigest.feed`` runs on the loop (it is quick: hashlib in C); the writer's blocking
``fwup_chunk`` calls run on one dedicated worker thread, so slow flash never stalls the
heartbeat and writing block *n* overlaps with receiving the next chunk. Blocks go to the worker
in batches of about ``batch`` bytes (one thread hop each); at most ``depth`` batches are in
flight, and when the worker falls behind :meth:`WriteStage.feed` waits, which stops reading the
socket — backpressure all the way to the server. Writers with ``async def fwup_chunk`` are
awaited on the loop instead.

The digest is also the verification gate: :meth:`StreamingDigest.feed` returns only blocks that
can no longer fail verification, so every block this stage hands to the writer has passed every
check that could be made on it.

Durability: with ``sync=True`` (a writer that can resume after a restart), the worker calls
``fwup_sync()`` after writing a batch that ends further into the image than the last sync, and
only then reports that offset as durable; the update manager persists resume points from the
durable offset alone, so a power cut never leaves a resume point past bytes that were lost.

Invariants:
* Blocks are written in order, by a single worker thread.
* A partial batch is handed over after ``flush_after`` seconds without more data, so a stalled
  download still writes (and reports as verified) everything it received.
* After a failure (checksum mismatch, writer error) no further block is written.
* Whatever ends an operation — success, error or cancellation — every batch already handed to
  the worker has finished before control returns, so an abort never overlaps a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..errors import UpdateError, WriterError

if TYPE_CHECKING:
    from .._core import StreamingDigest
    from .writer import FwupWriter

__all__ = ["WriteStage"]

#: (bytes received and hashed, end of what the writer holds *durably*: 0 without ``sync``)
Progress = tuple[int, int]


class WriteStage:
    """Digest + writer for one image. See the module docstring for the contract."""

    def __init__(
        self,
        writer: FwupWriter,
        digest: StreamingDigest,
        *,
        depth: int = 4,
        batch: int = 256 * 1024,
        on_progress: Callable[[Progress], None] | None = None,
        sync: bool = False,
    ) -> None:
        """``on_progress`` is called on the event loop as each batch is done (hashed and
        written), with its progress: even when no further chunk arrives. ``sync``: make written
        bytes durable (``fwup_sync``) before reporting them in the progress' second element.

        Chunks go to the worker in batches of about ``batch`` bytes (one thread hop each: a hop
        costs tens of microseconds, a 64 KiB chunk takes about as long to hash); at most
        ``depth`` batches are in flight.
        """
        if depth < 1 or batch < 1:
            raise ValueError("depth and batch must be >= 1")
        self.batch = batch
        self._batched: list[bytes | memoryview] = []
        self._batched_size = 0
        self._in_flight = 0  # submitted batches not finished yet
        self.flush_after = 0.05  # seconds a partial batch waits for more data
        self._flush_timer: asyncio.TimerHandle | None = None
        self.sync = sync
        self._synced = digest.released  # what the writer held durably when the stage began
        self._progress: Progress = (digest.total, self._synced if sync else 0)
        self.on_progress = on_progress
        self.writer = writer
        self.digest = digest
        self.depth = depth
        self._on_loop = inspect.iscoroutinefunction(writer.fwup_chunk)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[asyncio.Future[Progress]] = deque()
        self._broken = False  # set by the worker on its first failure; read only by the worker

    # -- worker side -----------------------------------------------------------------------------

    def _work(self, blocks: list[bytes | memoryview], progress: Progress, sync: bool) -> Progress:
        if self._broken:
            return progress
        name = "fwup_chunk"
        try:
            write = self.writer.fwup_chunk
            for block in blocks:
                write(block)
            if sync:
                name = "fwup_sync"
                self.writer.fwup_sync()
        except Exception as exc:
            self._broken = True
            raise WriterError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        return progress

    def _durable_point(self) -> tuple[Progress, bool]:
        """The progress to report once the blocks handed over so far are written, and whether
        the writer must sync them first (they reach further than the last sync)."""
        released = self.digest.released
        if not self.sync:
            return (self.digest.total, 0), False
        needs_sync = released > self._synced
        self._synced = released
        return (self.digest.total, released), needs_sync

    # -- loop side -------------------------------------------------------------------------------

    async def feed(self, chunk: bytes) -> Progress | None:
        """Hand over the next chunk. Returns the progress of the work completed so far (None if
        nothing completed during this call). Raises the first failure of any earlier chunk."""
        # On the loop; may raise ChecksumMismatch (a bad part). Returns verified blocks only.
        blocks = self.digest.feed(chunk)
        if self._on_loop:
            return await self._write_on_loop(blocks)
        if blocks:
            self._batched.extend(blocks)
            self._batched_size += sum(map(len, blocks))
        if self._batched_size >= self.batch:
            self._submit()
        elif self._batched and self._flush_timer is None:
            # A partial batch must not wait for data that may not come (a stalled server):
            # hand it over shortly if nothing fills it.
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.flush_after, self._submit)
        progress: Progress | None = None
        pending = self._pending
        while pending and (len(pending) > self.depth or pending[0].done()):
            progress = await self._harvest()
        return progress

    async def _write_on_loop(self, blocks: list[bytes | memoryview]) -> Progress:
        """An ``async def fwup_chunk`` writer: write (and sync) on the loop, in order."""
        name = "fwup_chunk"
        try:
            for block in blocks:
                await self.writer.fwup_chunk(block)
            done, needs_sync = self._durable_point()
            if needs_sync:
                name = "fwup_sync"
                result = self.writer.fwup_sync()
                if inspect.isawaitable(result):
                    await result
        except UpdateError:
            raise
        except Exception as exc:
            raise WriterError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        if self.on_progress is not None:
            self.on_progress(done)
        return done

    async def write_final(self, blocks: list[bytes | memoryview]) -> None:
        """Write the blocks :meth:`StreamingDigest.flush` returned (after verification), then
        wait for every write. Raises the first failure."""
        if self._on_loop:
            await self._write_on_loop(blocks)
            return
        self._batched.extend(blocks)
        self._batched_size += sum(map(len, blocks))
        await self.drain()

    def _submit(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._batched:
            return
        chunks, self._batched, self._batched_size = self._batched, [], 0
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nhlink-firmware")
        loop = asyncio.get_running_loop()
        progress, needs_sync = self._durable_point()
        self._progress = progress
        future = loop.run_in_executor(self._executor, self._work, chunks, progress, needs_sync)
        self._in_flight += 1
        future.add_done_callback(self._done)
        self._pending.append(future)

    def _done(self, future: asyncio.Future[Progress]) -> None:
        self._in_flight -= 1
        ok = not future.cancelled() and future.exception() is None
        if ok and self.on_progress is not None:
            self.on_progress(future.result())

    async def _harvest(self) -> Progress:
        future = self._pending[0]
        try:
            return await asyncio.shield(future)
        except BaseException:
            await self.settle()  # never leave work running behind an error or a cancellation
            raise
        finally:
            if self._pending and self._pending[0] is future:
                self._pending.popleft()

    async def drain(self) -> Progress:
        """Wait for every chunk handed over; raises the first failure."""
        self._submit()
        progress = self._progress
        while self._pending:
            progress = await self._harvest()
        return progress

    async def settle(self) -> None:
        """Wait until no chunk is being processed, ignoring failures and cancellations (they
        are someone else's to report). Call before aborting the writer."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._batched.clear()
        self._batched_size = 0
        while self._pending:
            future = self._pending.popleft()
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # mark retrieved

    def replace_digest(self, digest: StreamingDigest) -> None:
        """Start over with a fresh digest (after :meth:`drain` or :meth:`settle`)."""
        if self._pending or self._batched:
            raise RuntimeError("replace_digest() with chunks in flight: drain() or settle() first")
        self.digest = digest
        self._synced = digest.released
        self._progress = (digest.total, self._synced if self.sync else 0)
        self._broken = False

    def close(self) -> None:
        """Release the worker thread (after :meth:`drain` or :meth:`settle`)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
