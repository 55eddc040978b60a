"""RaucWriter: install a RAUC bundle through the RAUC service (A/B slots, signed bundles).

RAUC (https://rauc.io) verifies the bundle's signature against its keyring, picks the inactive
slot, writes it and switches the bootloader's primary slot. RAUC 1.8 installs only a complete
regular file, so the verified download is spooled to a file first, then handed to the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import WriterError
from ..writer import FwupWriter
from . import _proc

__all__ = ["RaucSlotState", "RaucWriter"]

logger = logging.getLogger(__name__)

#: Free space kept beyond the bundle's size when spooling (filesystem metadata, other writers).
SPOOL_MARGIN = 1024 * 1024

_PROGRESS_LINE = re.compile(r"^\s*(\d{1,3})%\s+(.*)$")
_LAST_ERROR = re.compile(r"^LastError:\s*(.*)$")


@dataclass(frozen=True)
class RaucSlotState:
    """What ``rauc status`` says about the running system, as the writer reads it."""

    #: Name of the booted slot (``rootfs.0``), None if RAUC could not tell.
    booted: str | None
    #: Name of the slot the bootloader will boot next.
    primary: str | None
    #: ``"good"`` / ``"bad"`` boot status of the booted slot (None if unknown).
    booted_boot_status: str | None
    #: The slot (of the booted slot's class) RAUC activated last, None if RAUC never installed.
    last_activated: str | None

    @property
    def fell_back(self) -> bool:
        """RAUC activated another slot than the one running: the bootloader fell back."""
        return (
            self.booted is not None
            and self.last_activated is not None
            and self.last_activated != self.booted
        )

    @classmethod
    def parse(cls, status: Mapping[str, Any]) -> RaucSlotState:
        """From ``rauc status --detailed --output-format=json``."""
        slots: dict[str, Mapping[str, Any]] = {}
        for entry in status.get("slots") or []:
            if isinstance(entry, Mapping):
                for name, info in entry.items():
                    if isinstance(info, Mapping):
                        slots[str(name)] = info
        booted_bootname = status.get("booted")
        booted = next((n for n, s in slots.items() if s.get("state") == "booted"), None)
        if booted is None and booted_bootname:
            booted = next(
                (n for n, s in slots.items() if s.get("bootname") == booted_bootname), None
            )
        booted_info = slots.get(booted) if booted else None
        klass = booted_info.get("class") if booted_info else None
        last: tuple[str, int, str] | None = None
        for name, info in slots.items():
            if klass is not None and info.get("class") != klass:
                continue
            activated = (info.get("slot_status") or {}).get("activated") or {}
            stamp = activated.get("timestamp")
            if not isinstance(stamp, str):
                continue
            count = activated.get("count")
            key = (stamp, count if isinstance(count, int) else 0, name)
            if last is None or key[:2] > last[:2]:
                last = key
        primary = status.get("boot_primary")
        return cls(
            booted=booted,
            primary=primary if isinstance(primary, str) else None,
            booted_boot_status=(booted_info or {}).get("boot_status"),
            last_activated=last[2] if last else None,
        )


class RaucWriter(FwupWriter):
    """Installs RAUC bundles: spool → (``rauc info``) → ``rauc install`` → confirm after reboot.

    * ``spool_dir``: where the bundle is spooled (needs the bundle's size free; checked before
      the download starts), in a private directory nhlink makes there:
      ``<spool_dir>/nhlink-rauc-<uid>`` (mode 0700, owned by this user, never a symbolic link;
      if another user planted something by that name, a fresh private temporary directory is
      used instead). The spool file is created exclusively, never through a link, fsynced and
      closed before RAUC sees it, checked to be the very file that was written (same inode,
      same size), and removed afterwards, success or not. It survives a crash, so a restarted
      process resumes the download (``supports_resume``) after re-verifying it.
    * ``config``: RAUC system config passed to the local ``rauc info`` check (``--conf``); the
      install itself uses the service's own config.
    * ``keyring``: keyring for the ``rauc info`` check (``--keyring``; default: the config's).
    * ``check_bundle``: run ``rauc info`` before installing — a cheap early rejection of a
      bundle whose signature does not verify, without bothering the service.
    * ``bus_address``: D-Bus address of the RAUC service's bus (``DBUS_SYSTEM_BUS_ADDRESS``),
      default: the system bus.
    * ``progress``: called with RAUC's install progress (0–100, rising) on the event loop.

    Validation: :meth:`fwup_confirm` runs ``rauc status mark-good`` (the booted slot);
    :meth:`auto_revert_detected` is true when RAUC last activated another slot than the booted
    one (the bootloader fell back); :meth:`is_confirmed` is False when the booted slot's boot
    status is ``bad``, True after ``mark-good`` by this process, and None (unknown — nhlink's
    own record decides) otherwise, because most RAUC bootloader backends report a freshly
    activated slot as ``good`` before anyone marked it. See docs/updaters.md.
    """

    supports_resume = True

    def __init__(
        self,
        *,
        spool_dir: str | os.PathLike[str] = "/var/tmp",
        config: str | os.PathLike[str] | None = None,
        keyring: str | os.PathLike[str] | None = None,
        check_bundle: bool = True,
        bus_address: str | None = None,
        rauc: str = "rauc",
        extra_install_args: Sequence[str] = (),
        install_timeout: float = 3600.0,
        command_timeout: float = 60.0,
        progress: Callable[[int], None] | None = None,
        fsync: bool = True,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.config = Path(config) if config is not None else None
        self.keyring = Path(keyring) if keyring is not None else None
        self.check_bundle = check_bundle
        self.bus_address = bus_address
        self.rauc = rauc
        self.extra_install_args = list(extra_install_args)
        self.install_timeout = install_timeout
        self.command_timeout = command_timeout
        self.progress = progress
        self.fsync = fsync
        self._file: BinaryIO | None = None
        self._written = 0
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the spool file
        self._private: Path | None = None  # the private spool directory, once made
        self._state: RaucSlotState | None = None
        self._confirmed_now = False
        self._installed_here = False

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def private_dir(self) -> Path:
        """The private directory the bundle is spooled in."""
        return self._private or self.spool_dir / f"nhlink-rauc-{os.geteuid()}"

    @property
    def spool_path(self) -> Path:
        """The spooled bundle (kept only while an update runs or after a crash)."""
        return self.private_dir / "nhlink-update.raucb"

    def _ensure_private_dir(self) -> Path:
        """Make (or check) the private spool directory: ours, 0700, not a link."""
        if self._private is not None:
            return self._private
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        wanted = self.private_dir
        with contextlib.suppress(FileExistsError):
            os.mkdir(wanted, 0o700)
        st = os.lstat(wanted)
        if (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            if st.st_mode & 0o077:
                os.chmod(wanted, 0o700)
            self._private = wanted
        else:
            # Someone else's (or a link): do not touch it; spool somewhere nobody can predict.
            self._private = Path(tempfile.mkdtemp(prefix="nhlink-rauc-", dir=self.spool_dir))
            logger.warning(
                "%s is not a private directory of this user; spooling in %s (no resume "
                "across restarts)",
                wanted,
                self._private,
            )
        return self._private

    def _open_spool(self, flags: int) -> BinaryIO:
        path = self.spool_path
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise WriterError("cannot resume: no spooled bundle") from None
        except OSError as exc:
            raise WriterError(f"cannot open the spool file {path}: {exc}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise WriterError(f"{path} is not a regular file")
        self._identity = (st.st_dev, st.st_ino)
        return os.fdopen(fd, "r+b")

    def _check_spool_unchanged(self, path: Path) -> None:
        """The file RAUC will read is the one written (and verified) here."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise WriterError(f"the spooled bundle disappeared: {exc}") from exc
        if (
            not stat.S_ISREG(st.st_mode)
            or (st.st_dev, st.st_ino) != self._identity
            or st.st_size != self._written
        ):
            raise WriterError(f"the spooled bundle {path} was replaced or changed; not installing")

    def set_progress_reporter(self, progress: Callable[[int], None] | None) -> None:
        """Set (or clear) the install progress callback; see ``progress``."""
        self.progress = progress

    def _env(self) -> dict[str, str] | None:
        if self.bus_address is None:
            return None
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    def _global_args(self) -> list[str]:
        args = [self.rauc]
        if self.config is not None:
            args.append(f"--conf={self.config}")
        if self.keyring is not None:
            args.append(f"--keyring={self.keyring}")
        return args

    # -- FwupWriter --------------------------------------------------------------------------

    def fwup_begin(self, size: int, firmware_meta: Mapping[str, Any], offset: int = 0) -> None:
        self._close()
        self._ensure_private_dir()
        path = self.spool_path
        f: BinaryIO
        if offset:
            f = self._open_spool(os.O_RDWR)
            if os.fstat(f.fileno()).st_size < offset:
                f.close()
                raise WriterError(f"cannot resume at byte {offset}: the spooled bundle is shorter")
            f.truncate(offset)
            f.seek(offset)
        else:
            path.unlink(missing_ok=True)
            f = self._open_spool(os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            if size:
                st = os.statvfs(path.parent)
                free = st.f_bavail * st.f_frsize
                needed = size - offset + SPOOL_MARGIN
                if free < needed:
                    raise WriterError(
                        f"not enough space in {self.spool_dir} to spool the RAUC bundle: "
                        f"need {needed} bytes, {free} free"
                    )
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        self._file = f
        self._written = offset

    def fwup_chunk(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise WriterError("fwup_chunk before fwup_begin")
        self._file.write(data)
        self._written += len(data)

    def fwup_sync(self) -> None:
        """Flush and fsync the spool file (before nhlink records a resume point)."""
        if self._file is None:
            raise WriterError("fwup_sync before fwup_begin")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def fwup_read(self, offset: int, size: int) -> bytes:
        """Read back ``size`` bytes of the spooled bundle at ``offset``."""
        if self._file is None:
            raise WriterError("fwup_read before fwup_begin")
        self._file.flush()
        return os.pread(self._file.fileno(), size, offset)

    async def fwup_finish(self) -> None:
        f = self._file
        if f is None:
            raise WriterError("fwup_finish before fwup_begin")
        path = self.spool_path
        try:
            # RAUC refuses a bundle that is still open for writing: flush, sync, close first.
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            f.close()
            self._file = None
            self._check_spool_unchanged(path)
            if self.check_bundle:
                await self._check(path)
            self._check_spool_unchanged(path)
            await self._install(path)
        finally:
            self._close()
            path.unlink(missing_ok=True)
        # The boot-time view (booted slot, fallback) stays as read: RAUC now names the new slot
        # as last activated, but that is a pending reboot, not a fallback.
        self._installed_here = True
        logger.info("RAUC installed the bundle (%d bytes)", self._written)

    async def _check(self, path: Path) -> None:
        result = await _proc.run(
            [*self._global_args(), "info", "--output-format=json", str(path)],
            timeout=self.command_timeout,
        )
        if not result.ok:
            reason = _rauc_message(result.stderr) or _proc.tail_text(result.stderr)
            raise WriterError(f"RAUC rejected the bundle: {reason}")

    async def _install(self, path: Path) -> None:
        last_error: list[str] = []
        best = -1

        def on_line(line: str) -> None:
            nonlocal best
            if m := _LAST_ERROR.match(line):
                last_error.append(m.group(1).strip())
                return
            m = _PROGRESS_LINE.match(line)
            if m is None:
                return
            percent = min(100, int(m.group(1)))
            logger.debug("RAUC %d%% %s", percent, m.group(2))
            if percent > best:
                best = percent
                if self.progress is not None:
                    try:
                        self.progress(percent)
                    except Exception:
                        logger.exception("progress callback failed")

        result = await _proc.run(
            [self.rauc, "install", *self.extra_install_args, str(path)],
            env=self._env(),
            timeout=self.install_timeout,
            on_stdout_line=on_line,
            on_stderr_line=on_line,
        )
        if not result.ok:
            reason = (
                last_error[-1]
                if last_error
                else (_rauc_message(result.stderr) or _proc.tail_text(result.stderr))
            )
            raise WriterError(f"RAUC install failed: {reason}")

    def fwup_suspend(self) -> None:
        """Stopping, to resume later: close the partial image and keep it (already synced)."""
        self._close()

    def fwup_abort(self) -> None:
        self._close()
        self.spool_path.unlink(missing_ok=True)

    async def fwup_confirm(self) -> None:
        result = await _proc.run(
            [self.rauc, "status", "mark-good", "booted"],
            env=self._env(),
            timeout=self.command_timeout,
        )
        if not result.ok:
            raise WriterError(f"rauc status mark-good failed: {result.describe()}")
        self._confirmed_now = True
        logger.info("RAUC: booted slot marked good")

    def is_confirmed(self) -> bool | None:
        state = self.slot_state()
        if state is not None and state.booted_boot_status == "bad":
            return False
        if self._confirmed_now:
            return True
        return None

    def auto_revert_detected(self) -> bool:
        if self._installed_here:
            return False  # installed by this process: a reboot is pending, not a fallback
        state = self.slot_state()
        return bool(state is not None and state.fell_back)

    # -- RAUC status ---------------------------------------------------------------------------

    def slot_state(self) -> RaucSlotState | None:
        """RAUC's view of the slots, read once (``rauc status``) and cached; None if RAUC cannot
        be asked. nhlink asks at every join; :meth:`refresh_slot_state` re-reads without
        blocking the event loop."""
        if self._state is None:
            try:
                result = _proc.run_sync(self._status_argv(), env=self._env(), timeout=10.0)
            except WriterError as exc:
                logger.warning("cannot read RAUC status: %s", exc)
                return None
            self._state = self._parse_status(result)
        return self._state

    async def refresh_slot_state(self) -> RaucSlotState | None:
        """Re-read ``rauc status`` (async); the result is what the sync hooks return next."""
        try:
            result = await _proc.run(self._status_argv(), env=self._env(), timeout=10.0)
        except WriterError as exc:
            logger.warning("cannot read RAUC status: %s", exc)
            return None
        self._state = self._parse_status(result)
        return self._state

    def _status_argv(self) -> list[str]:
        return [self.rauc, "status", "--detailed", "--output-format=json"]

    def _parse_status(self, result: _proc.Result) -> RaucSlotState | None:
        if not result.ok:
            logger.warning("cannot read RAUC status: %s", result.describe())
            return None
        try:
            data = json.loads(result.stdout)
        except ValueError as exc:
            logger.warning("unreadable rauc status output: %s", exc)
            return None
        if not isinstance(data, Mapping):
            return None
        state = RaucSlotState.parse(data)
        if state.fell_back:
            logger.warning(
                "RAUC activated %s but %s is running: the bootloader fell back",
                state.last_activated,
                state.booted,
            )
        return state

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _rauc_message(stderr: bytes) -> str | None:
    """The last error RAUC printed (``rauc-...: message`` or ``Failed ...: reason``)."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and "WARNING" not in line and not line.startswith("rauc-Message")
    ]
    return lines[-1] if lines else None
