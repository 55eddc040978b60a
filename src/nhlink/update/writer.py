"""The firmware writer interface (NervesHubLinkAVM's FwupWriter behaviour, PROTOCOL.md §14.4).

Subclass :class:`FwupWriter`. Methods may be plain (run in a worker thread, so slow flash never
stalls the heartbeat) or ``async def`` (awaited on the event loop). Raise any exception to fail
the update: nhlink then calls :meth:`FwupWriter.fwup_abort`, reports ``failed`` with the
exception's text, and keeps the connection running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FwupWriter"]


class FwupWriter:
    """Where firmware goes. The call order for one update is::

    fwup_begin(size, meta[, offset])  ->  fwup_chunk(block)*  ->  fwup_finish()
                                      \\->  fwup_abort()   (on any failure, at most once)
    """

    #: True if the writer can continue an interrupted image at a byte offset
    #: (``fwup_begin(..., offset=N)`` then chunks from N). Otherwise downloads restart at 0.
    supports_resume: bool = False
    #: True if the image is installed while it streams in (SWUpdate, fwup on stdin): progress
    #: is then reported to the server as ``updating`` only (PROTOCOL.md §7.3).
    streams_install: bool = False

    def set_progress_reporter(self, report: Callable[[int], None] | None) -> None:
        """nhlink passes a function to call (on the event loop) with the install progress,
        0–100, for writers that know it (RAUC after the download); None to stop."""

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> Any:
        """Prepare to receive ``size`` bytes (0 if unknown), starting at byte ``offset``."""
        raise NotImplementedError

    def fwup_chunk(self, data: bytes | memoryview) -> Any:
        """Write the next block, in order. Do not keep a reference to a memoryview after return."""
        raise NotImplementedError

    def fwup_finish(self) -> Any:
        """All bytes written and verified: make the new image active. May reboot."""
        raise NotImplementedError

    def fwup_abort(self) -> Any:
        """The update failed: clean up, leave the running firmware untouched."""

    def fwup_confirm(self) -> Any:
        """Mark the running image valid (prevent rollback). Called by ``confirm_update()``."""

    def is_confirmed(self) -> bool | None:
        """Whether the platform considers the running image validated; None if unknown."""
        return None

    def auto_revert_detected(self) -> bool:
        """Whether the platform rolled back from a failed image at this boot."""
        return False
