"""The firmware writer interface (NervesHubLinkAVM's FwupWriter behaviour, PROTOCOL.md §14.4).

Subclass :class:`FwupWriter`. Methods may be plain (run in a worker thread, so slow flash never
stalls the heartbeat) or ``async def`` (awaited on the event loop). Raise any exception to fail
the update: nhlink then calls :meth:`FwupWriter.fwup_abort`, reports ``failed`` with the
exception's text, and keeps the connection running.

The verification guarantee: a writer never receives a byte that could still fail verification,
where verification is possible. With ``partials_checksums`` each 1 MiB part arrives only after
its SHA-256 matched (so the writer lags the download by at most one part); with only a
whole-file ``checksum`` the last block arrives only after the whole image matched, so a
streaming installer never sees a complete stream that failed; :meth:`FwupWriter.fwup_finish` is
called only for an image whose bytes all matched. The writer never learns about checksums.

The seed's shapes work too: a writer written against the Elixir client, whose
``fwup_begin(self, size, meta)`` takes no offset, is called exactly like that (an offset is
passed only when resuming, and only to writers with ``supports_resume = True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["FwupWriter", "as_writer", "can_read_back"]


class FwupWriter:
    """Where firmware goes. The call order for one update is::

    fwup_begin(size, meta)  ->  fwup_chunk(block)*  ->  fwup_finish()
                            \\->  fwup_abort()   (on any failure, at most once)

    and, for a writer that can resume (``supports_resume``), after a restart::

    fwup_begin(size, meta, offset)  ->  fwup_read(...)*  ->  [fwup_begin(size, meta, smaller)]
        ->  fwup_chunk(block)* with fwup_sync() between them  ->  fwup_finish()
    """

    __slots__ = ()  # subclasses without __slots__ still get a __dict__

    #: True if the writer can continue an interrupted image at a byte offset after a restart:
    #: ``fwup_begin(size, meta, offset)`` keeps the first ``offset`` bytes it holds and drops
    #: the rest, :meth:`fwup_read` reads them back (nhlink re-verifies them before resuming:
    #: without ``fwup_read`` it starts over from 0), and :meth:`fwup_sync` makes written bytes
    #: durable. Otherwise every download starts at 0.
    supports_resume: bool = False
    #: True if the image is installed while it streams in (SWUpdate, fwup on stdin): progress
    #: is then reported to the server as ``updating`` only (PROTOCOL.md §7.3).
    streams_install: bool = False
    #: True if the writer verifies image signatures with the organisation's signing keys
    #: (fwup): nhlink then asks the server for them when none are provisioned (PROTOCOL.md
    #: §6.8) and passes them with :meth:`set_public_keys`.
    wants_public_keys: bool = False

    def set_public_keys(self, keys: Sequence[str]) -> None:
        """The firmware signing keys nhlink holds (provisioned, or pushed by the server): Ed25519
        keys as base64 and possibly PEM text side by side; keep what you can use. Called at
        start and whenever they change."""

    def set_progress_reporter(self, report: Callable[[int], None] | None) -> None:
        """nhlink passes a function to call (on the event loop) with the install progress,
        0–100, for writers that know it (RAUC after the download); None to stop."""

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> Any:
        """Prepare to receive ``size`` bytes (0 if unknown).

        ``offset`` is passed only to writers with ``supports_resume`` when resuming: keep the
        first ``offset`` bytes already held, drop anything after them, continue at ``offset``.
        When the re-read prefix turns out damaged, nhlink calls ``fwup_begin`` again with a
        smaller offset (or aborts and begins from 0). Raise if the image cannot be continued
        there, e.g. it holds fewer bytes (nhlink then tries the part boundary below, and so on,
        and starts over from 0 when none works); a raising ``fwup_begin`` must leave the held
        bytes as they were."""
        raise NotImplementedError

    def fwup_chunk(self, data: bytes | memoryview) -> Any:
        """Write the next block, in order. Do not keep a reference to a memoryview after return."""
        raise NotImplementedError

    def fwup_sync(self) -> Any:
        """Make every block written so far durable (flush and fsync). nhlink calls it before it
        records a resume point that covers those blocks. Writers that resume must override it
        unless their writes are durable already."""

    def fwup_read(self, offset: int, size: int) -> bytes:
        """Read back ``size`` bytes at ``offset`` of the image held (after ``fwup_begin`` with an
        offset), fewer only at its end. Used to re-verify a resumed image's prefix."""
        raise NotImplementedError

    def fwup_finish(self) -> Any:
        """All bytes written and verified: make the new image active. May reboot."""
        raise NotImplementedError

    def fwup_abort(self) -> Any:
        """The update failed: clean up, leave the running firmware untouched."""

    def fwup_suspend(self) -> Any:
        """Only for writers with ``supports_resume``: nhlink is stopping (``stop(
        suspend_update=True)``, the agent on SIGTERM) and will resume this image on its next
        start. Every block written so far was synced already (:meth:`fwup_sync`): release what
        you hold open, keep the bytes. Default: nothing."""

    def fwup_confirm(self) -> Any:
        """Mark the running image valid (prevent rollback). Called by ``confirm_update()``."""

    def is_confirmed(self) -> bool | None:
        """Whether the platform considers the running image validated; None if unknown."""
        return None

    def auto_revert_detected(self) -> bool:
        """Whether the platform rolled back from a failed image at this boot."""
        return False


def can_read_back(writer: FwupWriter) -> bool:
    """Whether ``writer`` implements :meth:`FwupWriter.fwup_read` (needed to resume)."""
    method = writer.fwup_read
    return getattr(method, "__func__", method) is not FwupWriter.fwup_read


# The writer methods, and the Elixir client's names for them since its 2026-04 rename
# (FirmwareWriter, PROTOCOL.md §14.4), accepted when the fwup_ name is missing.
_METHODS = (
    "fwup_begin",
    "fwup_chunk",
    "fwup_sync",
    "fwup_read",
    "fwup_finish",
    "fwup_abort",
    "fwup_suspend",
    "fwup_confirm",
    "is_confirmed",
    "auto_revert_detected",
    "set_progress_reporter",
    "set_public_keys",
)


class _DuckWriter(FwupWriter):
    """Any object with the writer's methods, not a :class:`FwupWriter` subclass: its methods
    (plain or ``async def``) are used as they are, missing optional ones take the defaults."""

    def __init__(self, obj: Any) -> None:
        self.wrapped = obj
        for name in _METHODS:
            method = getattr(obj, name, None)
            if method is None and name.startswith("fwup_"):
                method = getattr(obj, "firmware_" + name[len("fwup_") :], None)
            if method is not None:
                setattr(self, name, method)  # the bound method itself: async stays async
        self.supports_resume = bool(getattr(obj, "supports_resume", False))
        self.streams_install = bool(getattr(obj, "streams_install", False))
        self.wants_public_keys = bool(getattr(obj, "wants_public_keys", False))

    def __repr__(self) -> str:
        return f"<writer {self.wrapped!r}>"


def as_writer(obj: Any) -> FwupWriter:
    """``obj`` as a :class:`FwupWriter`: subclasses as they are, other objects adapted (they
    need ``fwup_begin``/``fwup_chunk``/``fwup_finish`` or the ``firmware_*`` spellings).
    Raises TypeError naming what is missing."""
    if isinstance(obj, FwupWriter):
        return obj
    writer = _DuckWriter(obj)
    missing = [
        name for name in ("fwup_begin", "fwup_chunk", "fwup_finish") if name not in vars(writer)
    ]
    if missing:
        raise TypeError(
            f"{type(obj).__name__} is not a firmware writer: it has no "
            + ", ".join(f"{name} (or firmware_{name[5:]})" for name in missing)
        )
    return writer
