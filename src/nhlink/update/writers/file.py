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
      crash, so an interrupted download can resume (``supports_resume``).
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
                if not target.exists() or target.stat().st_size < offset:
                    raise WriterError(f"cannot resume at byte {offset}: partial image is shorter")
                f = open(target, "r+b")  # noqa: SIM115
                f.truncate(offset)
                f.seek(offset)
            else:
                f = open(target, "wb")  # noqa: SIM115
            if size:
                self._check_space(target.parent, size - offset)
        self._file = f
        self._written = offset

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
