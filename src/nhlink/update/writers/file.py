"""FileWriter: the image to a file (atomically) or a block device (in place)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import WriterError
from ..writer import FwupWriter

__all__ = ["FileWriter"]

logger = logging.getLogger(__name__)


class FileWriter(FwupWriter):
    """Writes the firmware image to ``path``.

    * A regular file is written to ``<dir>/.<name>.nhlink-partial``, fsynced and atomically
      renamed over ``path`` only after the image was verified (``fwup_finish``): a failed update
      never leaves a half-written image where the real one was. The partial file survives a
      crash, so an interrupted download can resume (``supports_resume``): nhlink syncs it
      (:meth:`fwup_sync`) before recording a resume point and reads it back
      (:meth:`fwup_read`) to re-verify it before continuing. It is created exclusively and
      never through a symbolic link.
    * A block device (e.g. the inactive slot ``/dev/mmcblk0p3``) is written in place — there is
      nothing to rename; point it at the *inactive* slot only.

    ``on_finish`` (optional) is called with the final path after the image is in place, e.g. to
    flip a bootloader variable.
    """

    supports_resume = True

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = True, on_finish: Any = None
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.on_finish = on_finish
        self._file: BinaryIO | None = None
        self._written = 0
        self.confirmed: bool | None = None

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.nhlink-partial")

    @property
    def is_block_device(self) -> bool:
        try:
            return stat.S_ISBLK(os.stat(self.path).st_mode)
        except FileNotFoundError:
            return False

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
        self._close()
        f: BinaryIO
        if self.is_block_device:
            f = open(self.path, "r+b")  # noqa: SIM115 - kept open across chunks
            f.seek(offset)
        else:
            target = self.partial_path
            target.parent.mkdir(parents=True, exist_ok=True)
            if offset:
                f = self._open_partial(target, os.O_RDWR)
                if os.fstat(f.fileno()).st_size < offset:
                    f.close()
                    raise WriterError(f"cannot resume at byte {offset}: partial image is shorter")
                f.truncate(offset)
                f.seek(offset)
            else:
                target.unlink(missing_ok=True)
                f = self._open_partial(target, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            if size:
                try:
                    self._check_space(target.parent, size - offset)
                except BaseException:
                    f.close()
                    raise
        self._file = f
        self._written = offset

    @staticmethod
    def _open_partial(path: Path, flags: int) -> BinaryIO:
        """Open the partial image without following a symbolic link planted in its place."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise WriterError(f"cannot resume: no partial image at {path}") from None
        except OSError as exc:
            raise WriterError(f"cannot open the partial image {path}: {exc}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WriterError(f"{path} is not a regular file")
        return os.fdopen(fd, "r+b")

    def _check_space(self, directory: Path, needed: int) -> None:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free < needed:
            raise WriterError(f"not enough space in {directory}: need {needed} bytes, {free} free")

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise WriterError("fwup_chunk before fwup_begin")
        self._file.write(data)
        self._written += len(data)

    def fwup_sync(self) -> None:
        """Flush and fsync what was written (before nhlink records a resume point)."""
        f = self._file
        if f is None:
            raise WriterError("fwup_sync before fwup_begin")
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())

    def fwup_read(self, offset: int, size: int) -> bytes:
        """Read back ``size`` bytes at ``offset`` of the image being written."""
        f = self._file
        if f is None:
            raise WriterError("fwup_read before fwup_begin")
        f.flush()
        return os.pread(f.fileno(), size, offset)

    def fwup_finish(self) -> None:
        f = self._file
        if f is None:
            raise WriterError("fwup_finish before fwup_begin")
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        f.close()
        self._file = None
        if not self.is_block_device:
            os.replace(self.partial_path, self.path)
            if self.fsync:
                fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        logger.info("firmware image written to %s (%d bytes)", self.path, self._written)
        if self.on_finish is not None:
            self.on_finish(self.path)

    def fwup_suspend(self) -> None:
        """Stopping, to resume later: close the partial image and keep it (already synced)."""
        self._close()

    def fwup_abort(self) -> None:
        self._close()
        if not self.is_block_device:
            self.partial_path.unlink(missing_ok=True)

    def fwup_confirm(self) -> None:
        self.confirmed = True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
