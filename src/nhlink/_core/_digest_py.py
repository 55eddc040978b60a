# cython: annotation_typing=False
"""Streaming SHA-256 with chunk buffering for firmware downloads (PROTOCOL.md §7.1, §11).

One source, two modules: imported as is, this is the pure-Python core; compiled by Cython in
pure-Python mode (``_digest_c.py`` is a symlink to this file, ``_digest_c.pxd`` adds the C types)
it is the fast one. Keep it free of ``import cython`` and of anything Cython cannot type.

What one :class:`StreamingDigest` does, per firmware download:

* re-blocks the incoming HTTP chunks (any size) into writer blocks of exactly ``block_size``
  bytes, the last one possibly short (returned by :meth:`~StreamingDigest.flush`);
* hashes the whole stream (``update.checksum``): chunks under 1 KiB per *block* (one hashlib
  call per 64 KiB instead of one per chunk), bigger ones as they arrive, while they are still in
  the CPU cache (see ``_HASH_ON_ARRIVAL``);
* optionally hashes each ``part_size`` part (NervesHub's 1 MiB ``partials_checksums``) and checks
  it the moment the part completes, so a resumed download can restart at the last verified part;
* **gates** the blocks: a block is returned to the caller (the firmware writer) only once it can
  no longer fail verification, where verification is possible (see "The gate" below).

The gate (ARCHITECTURE.md "the verification gate lives between the digest and the writer"):

* with ``part_checksums``: the blocks of a part are held until that part's SHA-256 matched, then
  returned together, so the writer lags by at most one part. When a whole-file ``checksum`` is
  given too, the last part is held until :meth:`~StreamingDigest.flush` has checked the
  whole-file digest;
* with only a whole-file ``checksum``: the newest block is always held back, and released by
  :meth:`~StreamingDigest.flush` after the whole-file digest matched. A streaming installer
  (SWUpdate, ``fwup -a``) therefore never sees a complete stream that failed verification;
* with neither, there is nothing to verify and blocks are returned as they complete.

A failure (a part or the whole file does not match) drops every held block: they are never
returned.

Copies (firmware can be large; ARCHITECTURE.md "bytes discipline"): every byte is copied at most
once. Immutable chunks (``bytes``, or a read-only view of one) are kept by reference and joined
into one fresh ``bytes`` block when the block completes (the single copy). When nothing is
pending and an immutable chunk holds whole blocks, those blocks are zero-copy ``memoryview``
slices of it. Mutable inputs (``bytearray``, writable ``memoryview``...) may be reused by the
caller after :meth:`feed` returns, so their bytes are copied now, into a private ``bytearray``
that becomes the block itself (handed over as a read-only ``memoryview``) when the block is made
of mutable input only. A block is never touched again after it is returned.

Invariants (between calls):

* ``_pending == sum(len(piece) for piece in _pieces) < _block_size``;
* the first ``_hashed_pieces`` pieces (``_hashed_bytes`` bytes) are hashed already, the others
  not yet; a piece never spans two blocks, so it never spans two parts;
* ``_total`` counts every byte fed since ``offset`` 0 of the file (includes ``offset``);
* ``_part_fill`` is the number of bytes hashed into ``_part``, the current part; a part completes
  exactly at a block boundary (``part_size`` is a multiple of ``block_size`` and ``offset`` a
  multiple of ``part_size``), where it is checked;
* ``_state`` is ``_OPEN`` until :meth:`flush` (``_FLUSHED``) or a checksum failure (``_FAILED``);
* ``_released + _held_bytes + _pending == _total``: every byte fed is either returned to the
  caller, held by the gate (whole blocks in ``_held``) or pending (the unfinished block);
* with ``_GATE_PARTS``, ``_released`` is a part boundary no later than ``_verified_offset``,
  until :meth:`flush` returns the rest.

Counters are Python ints here and ``long long`` when compiled: firmware can exceed 2 GiB, also
on 32-bit ARM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..errors import ChecksumMismatch

__all__ = ["Buffer", "StreamingDigest"]

Buffer = bytes | bytearray | memoryview

# Integer states (not an enum) so the compiled twin compares C ints.
_OPEN = 0
_FLUSHED = 1
_FAILED = 2

# What the gate waits for before it returns a block (see the module docstring).
_GATE_NONE = 0  # nothing to verify: blocks go out as they complete
_GATE_PARTS = 1  # a part's blocks go out once the part matched
_GATE_WHOLE = 2  # the newest block stays back until the whole-file digest matched

# Pieces at least this long are hashed as they arrive, while they are in the CPU cache; shorter
# ones are hashed with their block, in one hashlib call. Measured (x86-64, SHA-NI, 64 KiB
# blocks): per-block hashing wins for small chunks, where a hashlib call costs about as much as
# hashing 64 bytes; from ~1 KiB up, hashing on arrival wins (joining the block then re-reading it
# for the hash cost ~10 % more than hashing the chunks where they are).
_HASH_ON_ARRIVAL = 1024

_HEX = frozenset("0123456789abcdefABCDEF")
# SHA-256 of zero bytes: the "actual" digest of a part the stream never delivered.
_EMPTY_SHA256 = hashlib.sha256().hexdigest()


def _normalize_hex(value: str, what: str) -> str:
    """``value`` lower-cased; ValueError unless it is 64 hex digits (a SHA-256)."""
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise ValueError(f"{what} must be 64 hexadecimal digits (a SHA-256), got {value!r}")
    return value.lower()


def _as_byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view of any bytes-like object (TypeError if it is not one)."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())  # the one copy of these bytes happens here
    if view.ndim == 1 and view.format == "B":
        return view
    return view.cast("B")


class StreamingDigest:
    """SHA-256 of a firmware stream, re-blocked for the writer and checked part by part.

    ``block_size``: size of the writer blocks :meth:`feed` returns. ``part_size``: the size of
    one ``partials_checksums`` part (1 MiB on NervesHub); a multiple of ``block_size``.
    ``part_checksums``: the expected hex SHA-256 of each part (any case); without them parts
    are not hashed at all. ``checksum``: the expected hex SHA-256 of the whole file (any case),
    checked by :meth:`flush`. ``offset``: where this stream starts in the file when its prefix
    is not available; a multiple of ``part_size``. With ``offset > 0`` the whole-file digest
    cannot be computed (``hashlib`` state cannot be restored), so a ``checksum`` fails at
    :meth:`flush`: to resume a download, start at 0 and :meth:`absorb` the prefix instead.

    Call :meth:`feed` for every chunk and write the blocks it returns, in order; at the end of
    the stream call :meth:`flush`, which verifies and returns the remaining blocks. Only then
    is the image complete and verified. Every returned block has passed every check that could
    be made on it (the gate, see the module docstring).
    """

    def __init__(
        self,
        block_size: int = 65536,
        part_size: int = 1048576,
        part_checksums: Sequence[str] | None = None,
        offset: int = 0,
        checksum: str | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if part_size <= 0 or part_size % block_size:
            raise ValueError(
                f"part_size must be a positive multiple of block_size ({block_size}), "
                f"got {part_size}"
            )
        if offset < 0 or offset % part_size:
            raise ValueError(
                f"offset must be a non-negative multiple of part_size ({part_size}), got {offset}"
            )
        self._block_size = block_size
        self._part_size = part_size
        self._expected: list[str] | None = None
        self._part_count = 0
        if part_checksums is not None:
            if isinstance(part_checksums, str):
                raise TypeError("part_checksums must be a sequence of hex strings, not a str")
            self._expected = [
                _normalize_hex(value, f"part_checksums[{index}]")
                for index, value in enumerate(part_checksums)
            ]
            self._part_count = len(self._expected)
        self._checksum: str | None = (
            _normalize_hex(checksum, "checksum") if checksum is not None else None
        )
        if self._expected is not None:
            self._gate = _GATE_PARTS
        elif self._checksum is not None:
            self._gate = _GATE_WHOLE
        else:
            self._gate = _GATE_NONE
        self._start(offset)

    def _start(self, offset: int) -> None:
        """(Re)initialise the stream state at ``offset``; configuration is kept."""
        self._offset = offset
        self._total = offset
        self._pieces: list[Any] = []
        self._pending = 0
        self._hashed_pieces = 0
        self._hashed_bytes = 0
        self._state = _OPEN
        self._hexdigest = ""
        # The whole-file hash only makes sense from byte 0; skip the work otherwise.
        self._whole: Any = hashlib.sha256() if offset == 0 else None
        # The bound method, looked up once: it is called for every block or big chunk.
        self._whole_update: Any = self._whole.update if self._whole is not None else None
        self._part: Any = hashlib.sha256() if self._expected is not None else None
        self._part_index = offset // self._part_size
        self._part_fill = 0
        self._part_digests: list[str] = []
        self._verified_offset = offset
        self._held: list[Any] = []
        self._held_bytes = 0
        self._released = offset

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: Buffer, /) -> list[bytes | memoryview]:
        """Hash ``data`` and return the writer blocks it completes (each ``block_size`` bytes).

        The caller may reuse a mutable ``data`` buffer as soon as this returns. The returned
        blocks are the caller's: nhlink never mutates them. Raises :class:`ChecksumMismatch`
        when a part completed by this chunk does not match ``part_checksums`` (the digest is
        then failed: :meth:`reset` it or drop it), ValueError after :meth:`flush`.

        ``data`` is positional-only: the compiled twin then takes the cheapest call (METH_O),
        which matters since the call is most of the cost for small chunks.
        """
        # Fast path, the common case for small chunks: an immutable ``bytes`` that does not
        # complete a block is only remembered: not copied and not hashed yet.
        if type(data) is bytes and self._state == _OPEN:
            n = len(data)
            pending = self._pending
            if pending + n < self._block_size:
                pieces = self._pieces
                if n >= _HASH_ON_ARRIVAL:
                    # Big enough to hash right now, while it is in the CPU cache.
                    if self._hashed_pieces != len(pieces):
                        self._hash_kept()
                    self._hash(data)
                    pieces.append(data)
                    self._hashed_pieces = len(pieces)
                    self._hashed_bytes = pending + n
                elif n:
                    pieces.append(data)
                self._pending = pending + n
                self._total += n
                return []
        return self._feed(data)

    def _feed(self, data: Any) -> list[bytes | memoryview]:
        if self._state != _OPEN:
            raise ValueError(
                "feed() after flush()" if self._state == _FLUSHED else "feed() after a failure"
            )
        if isinstance(data, bytes):
            view = memoryview(data)
            immutable = True
        else:
            view = _as_byte_view(data)
            # A view of an immutable bytes (ours, or the caller's) needs no defensive copy.
            immutable = view.readonly and type(view.obj) is bytes
        n = len(view)
        block_size = self._block_size
        blocks: list[bytes | memoryview] = []
        pos = 0
        if self._pending:
            # Complete the pending block first.
            need = block_size - self._pending
            if n < need:
                self._keep(view, immutable)
                self._total += n
                return blocks
            self._keep(view[:need], immutable)
            pos = need
            self._emit_pending(blocks)
        # Whole blocks straight from the input: zero-copy slices of an immutable bytes,
        # one copy each otherwise (hashed first, so the copy reads from cache).
        while n - pos >= block_size:
            end = pos + block_size
            block: bytes | memoryview = view[pos:end]
            self._hash(block)
            if not immutable:
                block = bytes(block)
            self._block_done(block, blocks)
            pos = end
        if pos < n:
            self._keep(view[pos:], immutable)
        self._total += n
        return blocks

    def _keep(self, piece: memoryview, immutable: bool) -> None:
        """Add ``piece`` to the pending block; it never overfills the block."""
        pieces = self._pieces
        n = len(piece)
        if n >= _HASH_ON_ARRIVAL:
            # Hash it now, while it is in the CPU cache (earlier pieces first, in order).
            self._hash_kept()
            self._hash(piece)
            pieces.append(piece if immutable else bytearray(piece))
            self._hashed_pieces = len(pieces)
            self._hashed_bytes = self._pending + n
        elif immutable:
            pieces.append(piece)  # a view of an immutable bytes: safe to keep
        else:
            # Mutable input is copied now; consecutive ones share one unhashed accumulator.
            # No negative indexing: the compiled twin runs with wraparound=False.
            last = len(pieces) - 1
            if last >= self._hashed_pieces and type(pieces[last]) is bytearray:
                pieces[last] += piece
            else:
                pieces.append(bytearray(piece))
        self._pending += n

    def _hash_kept(self) -> None:
        """Hash the pending pieces not hashed yet, one call each (rare: mixed chunk sizes)."""
        pieces = self._pieces
        index = self._hashed_pieces
        count = len(pieces)
        while index < count:
            self._hash(pieces[index])
            index += 1
        self._hashed_pieces = count
        self._hashed_bytes = self._pending

    def _take_pending(self) -> bytes | memoryview:
        """Join and hash the pending pieces; the join is the single copy of their bytes."""
        pieces = self._pieces
        block: bytes | memoryview
        if len(pieces) == 1 and type(pieces[0]) is bytearray:
            block = memoryview(pieces[0]).toreadonly()  # already our private copy
        else:
            block = b"".join(pieces)
        # Small pieces are hashed here, with the block: one hashlib call instead of one per
        # piece (a call costs about as much as hashing 64 bytes).
        hashed = self._hashed_bytes
        if hashed < len(block):
            self._hash(block if hashed == 0 else memoryview(block)[hashed:])
        self._pieces = []
        self._pending = 0
        self._hashed_pieces = 0
        self._hashed_bytes = 0
        return block

    def _emit_pending(self, blocks: list[bytes | memoryview]) -> None:
        self._block_done(self._take_pending(), blocks)

    def _hash(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` (never crossing a part boundary) to the whole-file and part hashes."""
        if self._whole_update is not None:
            self._whole_update(data)
        if self._part is not None:
            if self._part_index >= self._part_count:
                self._too_long()
            self._part.update(data)
            self._part_fill += len(data)

    def _block_done(self, block: bytes | memoryview, blocks: list[bytes | memoryview]) -> None:
        """A hashed block is complete: check the part it ends, then let the gate decide whether
        it (and the blocks held before it) go to the writer now."""
        gate = self._gate
        if gate == _GATE_NONE:
            blocks.append(block)
            self._released += len(block)
            return
        part_done = False
        if self._part_fill == self._part_size:
            self._finish_part()  # raises on a mismatch: nothing held is ever returned
            part_done = True
        if gate == _GATE_PARTS:
            self._held.append(block)
            self._held_bytes += len(block)
            # A verified part goes out, except the last one while a whole-file checksum is
            # still to be checked (flush() does that, then returns it).
            if part_done and (self._checksum is None or self._part_index < self._part_count):
                self._release(blocks)
        else:
            # Only the whole-file digest can vouch for the bytes: keep the newest block back,
            # so the writer cannot have a complete image before flush() checked it.
            if self._held:
                self._release(blocks)
            self._held.append(block)
            self._held_bytes += len(block)

    def _release(self, blocks: list[bytes | memoryview]) -> None:
        """Hand every held block to the caller."""
        blocks.extend(self._held)
        self._released += self._held_bytes
        self._held = []
        self._held_bytes = 0

    def _fail(self) -> None:
        """A check failed: drop what is held; the digest refuses more work until reset."""
        self._state = _FAILED
        self._held = []
        self._held_bytes = 0

    def _too_long(self) -> None:
        """The stream runs past the last part announced in part_checksums."""
        self._fail()
        limit = self._part_count * self._part_size
        raise ChecksumMismatch(
            "end of stream",
            "more data",
            what=f"part {self._part_count}: the stream is longer than the {self._part_count} "
            f"parts ({limit} bytes) of partials_checksums",
        )

    def _finish_part(self) -> None:
        """The current part is complete: record its digest and check it."""
        assert self._expected is not None
        actual = self._part.hexdigest()
        index = self._part_index
        expected = self._expected[index]
        end = index * self._part_size + self._part_fill
        self._part = hashlib.sha256()
        self._part_index = index + 1
        self._part_fill = 0
        self._part_digests.append(actual)
        if actual != expected:
            self._fail()
            raise ChecksumMismatch(expected, actual, what=f"part {index}")
        self._verified_offset = end

    def flush(self) -> list[bytes | memoryview]:
        """End of stream: verify, then return every block not returned yet (held blocks and the
        final short one; possibly an empty list).

        Completes and checks the last part and, with a whole-file ``checksum``, the whole-file
        digest. Raises :class:`ChecksumMismatch` when a part or the whole file does not match,
        when parts announced in ``part_checksums`` never arrived, or when the whole file cannot
        be checked (the stream started at ``offset > 0``); nothing held is returned then.
        :meth:`feed` and :meth:`flush` raise ValueError afterwards.
        """
        if self._state != _OPEN:
            raise ValueError(
                "flush() called twice" if self._state == _FLUSHED else "flush() after a failure"
            )
        tail = self._take_pending()
        if type(tail) is not bytes:
            tail = bytes(tail)  # a lone private accumulator: the caller gets immutable bytes
        if self._whole is not None:
            self._hexdigest = self._whole.hexdigest()
        if self._part is not None:
            assert self._expected is not None
            if self._part_fill:
                self._finish_part()
            if self._part_index < self._part_count:
                self._fail()
                raise ChecksumMismatch(
                    self._expected[self._part_index],
                    _EMPTY_SHA256,
                    what=f"part {self._part_index} (missing: the stream ended at byte "
                    f"{self._total})",
                )
        checksum = self._checksum
        if checksum is not None:
            if self._whole is None:
                self._fail()
                raise ChecksumMismatch(
                    checksum,
                    "unknown",
                    what=f"firmware image (resumed at byte {self._offset} without re-reading "
                    f"the bytes before it: the whole-file digest cannot be checked)",
                )
            if self._hexdigest != checksum:
                self._fail()
                raise ChecksumMismatch(checksum, self._hexdigest)
        self._state = _FLUSHED
        out = self._held
        if tail:
            out.append(tail)
        self._released += self._held_bytes + len(tail)
        self._held = []
        self._held_bytes = 0
        return out

    def absorb(self, data: Buffer, /) -> bool:
        """Hash one whole part that the writer already holds (the prefix of a resumed image,
        read back from the writer) as if it had been fed, without returning it.

        Only at a part boundary before any :meth:`feed` of the stream, with ``part_checksums``,
        and ``data`` must be exactly one part (``part_size`` bytes). Returns True when the part
        matched its checksum (the stream is then one part further, and the whole-file digest
        covers it), False when it did not: nothing changes, and the caller restarts the image
        at this part (:attr:`total`). ValueError when called out of place.
        """
        if self._state != _OPEN:
            raise ValueError("absorb() after flush() or a failure")
        if self._expected is None:
            raise ValueError("absorb() needs part_checksums")
        if self._pending or self._part_fill or self._held_bytes or self._released != self._total:
            raise ValueError("absorb() only at a part boundary, before feed()")
        view = _as_byte_view(data)
        if len(view) != self._part_size:
            raise ValueError(
                f"absorb() takes exactly one part ({self._part_size} bytes), got {len(view)}"
            )
        index = self._part_index
        if index >= self._part_count:
            raise ValueError(f"absorb(): part {index} is beyond the {self._part_count} parts")
        actual = hashlib.sha256(view).hexdigest()
        if actual != self._expected[index]:
            return False
        if self._whole_update is not None:
            self._whole_update(view)
        self._part_digests.append(actual)
        self._part_index = index + 1
        self._total += self._part_size
        self._verified_offset = self._total
        self._released = self._total
        return True

    def reset(self) -> None:
        """Start over from byte 0 with fresh hashes (the server ignored a Range request)."""
        self._start(0)

    # -- results ---------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Bytes of the file seen so far, including ``offset``."""
        return self._total

    @property
    def whole_available(self) -> bool:
        """True when the stream started at byte 0, so the whole-file digest can be computed."""
        return self._offset == 0

    @property
    def part_digests(self) -> list[str]:
        """Lower-case hex SHA-256 of each part completed in this stream, in order.

        Item ``k`` is part ``offset // part_size + k`` of the file. Empty without
        ``part_checksums``.
        """
        return list(self._part_digests)

    @property
    def released(self) -> int:
        """End of the bytes returned to the caller so far (a file offset, ``offset`` included):
        what the writer holds once it wrote every returned block."""
        return self._released

    @property
    def held(self) -> int:
        """Bytes fed but not returned yet (held by the gate, or in the unfinished block)."""
        return self._total - self._released

    @property
    def verified_offset(self) -> int:
        """End of the last part verified against ``part_checksums`` (or ``offset``).

        Where a resumed download can restart: every byte before it has been checked.
        """
        return self._verified_offset

    def hexdigest(self) -> str:
        """Lower-case hex SHA-256 of the whole stream; only after :meth:`flush`, from offset 0."""
        if self._offset != 0:
            raise ValueError(
                f"the whole-file digest is not available: the stream was resumed at byte "
                f"{self._offset}"
            )
        if self._state != _FLUSHED:
            raise ValueError("hexdigest() before flush()")
        return self._hexdigest

    def verify(self, expected: str) -> None:
        """Check the whole-file digest against ``expected`` hex (any case, e.g. the server's
        upper-case ``checksum``). Raises :class:`ChecksumMismatch`, or ValueError when
        ``expected`` is not a SHA-256 in hex or the digest is not available yet.
        """
        wanted = _normalize_hex(expected, "expected checksum")
        actual = self.hexdigest()
        if actual != wanted:
            raise ChecksumMismatch(expected, actual)
