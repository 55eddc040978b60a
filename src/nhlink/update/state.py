"""State that survives reboots: the validation flag and an unfinished download's resume point.

One small JSON file per instance, written atomically (temporary file, fsync, rename, fsync of the
directory) so a power cut leaves either the old or the new state, never a torn file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DeviceState", "StateStore", "run_in_thread"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


async def run_in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a worker thread; if the caller is cancelled, still wait for the
    thread to finish before propagating the cancellation.

    A thread cannot be interrupted: returning early would let the next step (an abort, another
    save) overlap work that is still running, e.g. a writer activating an image after the
    update was reported ``failed``.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


@dataclass(slots=True)
class DeviceState:
    """What nhlink remembers about one device identity."""

    #: UUID of the firmware the application confirmed (``confirm_update``). The running firmware
    #: is validated when this equals its UUID: a new image starts unvalidated.
    validated_uuid: str | None = None
    #: An update download that did not finish: its firmware UUID, the byte offset verified so far,
    #: the expected size and checksum (a different update invalidates the resume point).
    download: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """Loads and atomically saves a :class:`DeviceState` at ``path`` (or keeps it in memory)."""

    __slots__ = ("_lock", "path", "state")

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.state = self._load()
        self._lock: asyncio.Lock | None = None

    def _load(self) -> DeviceState:
        if self.path is None or not self.path.exists():
            return DeviceState()
        try:
            raw = json.loads(self.path.read_text("utf-8"))
            return DeviceState(
                validated_uuid=raw.get("validated_uuid"),
                download=raw.get("download"),
                extra=dict(raw.get("extra") or {}),
            )
        except (OSError, ValueError, AttributeError) as exc:
            logger.error("ignoring unreadable state file %s: %s", self.path, exc)
            return DeviceState()

    def save(self) -> None:
        """Write the state now (blocking). From async code use :meth:`asave`."""
        if self.path is not None:
            self._write(self._snapshot())

    async def asave(self) -> None:
        """Write the state in a worker thread. Saves are serialized and each writes the state
        as it was when called, so an older snapshot never lands after a newer one."""
        if self.path is None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await run_in_thread(self._write, self._snapshot())

    def _snapshot(self) -> bytes:
        return json.dumps(asdict(self.state), indent=1, sort_keys=True).encode()

    def _write(self, data: bytes) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # only when saving: not part of an idle device's start-up

        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
