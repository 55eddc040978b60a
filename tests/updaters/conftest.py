"""Fixtures for the RAUC and SWUpdate writer tests: the real updaters, file-backed A/B slots.

Everything is generated per run: a test CA and a signer (plus a second, untrusted CA), signed
RAUC bundles and .swu files, two slot files, configs, and a ``custom`` bootloader backend that
records every call. Daemons (a private D-Bus, ``rauc service``, ``swupdate``) are started per
test in their own process group and reaped afterwards; the teardown checks that no mount or
loop device of the test is left behind.

Skips (with the reason) where the updaters, root or loop devices are missing; install them with
``scripts/updaters/install-debian.sh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    META,
    NEW_META,
    MiB,
    image,
    ota_options,
    parts,
    progress_values,
    push,
    statuses,
    tamper,
    wait_status,
)

__all__ = [
    "META",
    "NEW_META",
    "MiB",
    "image",
    "parts",
    "progress_values",
    "push",
    "statuses",
    "tamper",
    "wait_status",
]

SLOT_SIZE = 4 * MiB
COMPATIBLE = "nhlink-test-gw"
HW_BOARD, HW_REV = "nhlink-board", "1.0"

# -- skips ----------------------------------------------------------------------------------------


def missing_tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def rauc_unavailable() -> str | None:
    missing = missing_tools("rauc", "dbus-daemon", "mksquashfs", "openssl")
    if missing:
        return f"missing {', '.join(missing)} (scripts/updaters/install-debian.sh installs them)"
    if os.geteuid() != 0:
        return "RAUC installs mount the bundle on a loop device: needs root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control missing): RAUC cannot mount bundles"
    with open("/proc/filesystems") as f:
        if "squashfs" not in f.read():
            return "the kernel has no squashfs: RAUC cannot mount bundles"
    return None


def swupdate_unavailable() -> str | None:
    missing = missing_tools("swupdate", "openssl", "cpio")
    if missing:
        return f"missing {', '.join(missing)} (scripts/updaters/install-debian.sh installs them)"
    return None


# -- helpers --------------------------------------------------------------------------------------


def run(argv: list[str], cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, check=False, timeout=60, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return done


def short_tmpdir(prefix: str) -> Path:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def leftovers(marker: str) -> list[str]:
    """Mounts and loop devices whose line mentions ``marker`` (a test's directory)."""
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        found += [line.strip() for line in f if marker in line]
    if shutil.which("losetup"):
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
        found += [line for line in out.stdout.splitlines() if marker in line]
    return found


class Daemon:
    """A process in its own session; :meth:`stop` terminates the whole group and reaps it."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str] | None = None):
        self.argv = argv
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        # The leader first, so it can stop and reap its own children (SWUpdate's helpers).
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(5)
        # Children of the group (SWUpdate forks helpers) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self._logf.close()


def wait_until(what: str, check: Any, timeout: float = 10.0, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if daemon is not None and not daemon.alive():
            raise RuntimeError(
                f"{daemon.argv[0]} exited while waiting for {what}:\n{daemon.output()}"
            )
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


# -- PKI ------------------------------------------------------------------------------------------

OPENSSL_CNF = """
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_signer]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Signer:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    good: Signer
    other: Signer  # from a CA the devices do not trust


def _make_signer(d: Path, name: str) -> Signer:
    cnf = d / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF)
    ca_key, ca, key, csr, cert = (
        d / f"{name}-{x}" for x in ("ca.key", "ca.pem", "key.pem", "csr.pem", "cert.pem")
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-days",
            "3650",
            "-subj",
            f"/CN=nhlink {name} test CA",
            "-config",
            str(cnf),
            "-extensions",
            "v3_ca",
        ]
    )
    run(
        [
            "openssl",
            "req",
            "-new",
            *ec,
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN=nhlink {name} firmware signer",
            "-config",
            str(cnf),
        ]
    )
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "3650",
            "-extfile",
            str(cnf),
            "-extensions",
            "v3_signer",
        ]
    )
    return Signer(ca, cert, key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if missing_tools("openssl"):
        pytest.skip("openssl missing")
    d = tmp_path_factory.mktemp("pki")
    return Pki(_make_signer(d, "good"), _make_signer(d, "other"))


# -- RAUC -----------------------------------------------------------------------------------------

BOOTLOADER_SH = """#!/bin/sh
# A RAUC 'custom' bootloader backend that records every call (one line each in calls.log).
d="{state}"
echo "$*" >> "$d/calls.log"
case "$1" in
  get-primary) cat "$d/primary" ;;
  set-primary) echo "$2" > "$d/primary" ;;
  get-state) cat "$d/state.$2" 2>/dev/null || echo good ;;
  set-state) echo "$3" > "$d/state.$2" ;;
  get-current) cat "$d/booted" ;;
  *) exit 1 ;;
esac
"""

DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class RaucSystem:
    """A RAUC system on two slot files with a recording bootloader, its own D-Bus and service."""

    def __init__(self, root: Path, pki: Pki):
        self.root = root
        self.pki = pki
        self.state = root / "boot"
        self.state.mkdir()
        (self.state / "primary").write_text("A\n")
        (self.state / "booted").write_text("A\n")
        self.slots = {"A": root / "slotA.img", "B": root / "slotB.img"}
        self.slot_a_content = image(SLOT_SIZE, seed=1000)
        self.slots["A"].write_bytes(self.slot_a_content)
        self.slots["B"].write_bytes(b"\0" * SLOT_SIZE)
        script = root / "bootloader.sh"
        script.write_text(BOOTLOADER_SH.format(state=self.state))
        script.chmod(0o755)
        (root / "mnt").mkdir()
        (root / "data").mkdir()
        self.spool = root / "spool"
        self.config = root / "system.conf"
        self.config.write_text(
            f"[system]\ncompatible={COMPATIBLE}\nbootloader=custom\n"
            f"data-directory={root / 'data'}\nmountprefix={root / 'mnt'}\n\n"
            f"[keyring]\npath={pki.good.ca}\n\n"
            f"[handlers]\nbootloader-custom-backend={script}\n\n"
            f"[slot.rootfs.0]\ndevice={self.slots['A']}\ntype=raw\nbootname=A\n\n"
            f"[slot.rootfs.1]\ndevice={self.slots['B']}\ntype=raw\nbootname=B\n"
        )
        self.bus_socket = root / "bus"
        self.bus_address = f"unix:path={self.bus_socket}"
        (root / "dbus.conf").write_text(DBUS_CONF.format(socket=self.bus_socket))
        self.dbus: Daemon | None = None
        self.service: Daemon | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    def start(self, booted: str = "A") -> None:
        if self.dbus is None:
            self.dbus = Daemon(
                [
                    "dbus-daemon",
                    f"--config-file={self.root / 'dbus.conf'}",
                    "--nofork",
                    "--nopidfile",
                ],
                self.root / "dbus.log",
            )
            wait_until("the private D-Bus", self.bus_socket.exists, daemon=self.dbus)
        (self.state / "booted").write_text(f"{booted}\n")
        self.service = Daemon(
            ["rauc", f"--conf={self.config}", "service", f"--override-boot-slot={booted}"],
            self.root / "rauc-service.log",
            env=self.env,
        )
        wait_until("the RAUC service", self._service_answers, daemon=self.service)

    def _service_answers(self) -> bool:
        done = subprocess.run(
            ["rauc", "status"],
            env={**os.environ, **self.env},
            capture_output=True,
            check=False,
            timeout=3,
        )
        return done.returncode == 0

    def reboot(self, into: str) -> None:
        """Simulate a reboot into slot ``into``: the RAUC service restarts with that boot slot."""
        assert self.service is not None
        self.service.stop()
        self.start(booted=into)

    def stop(self) -> None:
        for daemon in (self.service, self.dbus):
            if daemon is not None:
                daemon.stop()
        self.service = self.dbus = None

    def calls(self) -> list[str]:
        path = self.state / "calls.log"
        return path.read_text().splitlines() if path.exists() else []

    def changes(self) -> list[str]:
        """The recorded bootloader calls that change something (set-*)."""
        return [c for c in self.calls() if c.startswith("set-")]

    def status(self) -> dict[str, Any]:
        done = run(
            ["rauc", "status", "--detailed", "--output-format=json"], env={**os.environ, **self.env}
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def bundle(
        self,
        payload: bytes,
        *,
        signer: Signer | None = None,
        compatible: str = COMPATIBLE,
        version: str = "1.1.0",
    ) -> bytes:
        signer = signer or self.pki.good
        work = Path(tempfile.mkdtemp(dir=self.root))
        content = work / "content"
        content.mkdir()
        (content / "rootfs.img").write_bytes(payload)
        (content / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible}\nversion={version}\n\n"
            "[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n"
        )
        out = work / "update.raucb"
        run(
            [
                "rauc",
                "bundle",
                f"--cert={signer.cert}",
                f"--key={signer.key}",
                f"--keyring={signer.ca}",
                str(content),
                str(out),
            ]
        )
        data = out.read_bytes()
        shutil.rmtree(work)
        return data


@pytest.fixture
def rauc_system(pki: Pki) -> Iterator[RaucSystem]:
    reason = rauc_unavailable()
    if reason:
        pytest.skip(reason)
    root = short_tmpdir("nhrauc")
    system = RaucSystem(root, pki)
    try:
        system.start("A")
        yield system
    finally:
        system.stop()
        left = leftovers(str(root))
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"left behind: {left}"


# -- SWUpdate -------------------------------------------------------------------------------------

FLIP_SH = """#!/bin/sh
# Post-install step of the test .swu: stands in for the bootloader switch (records it).
if [ "$1" = "postinst" ]; then echo "set-primary B" >> "{log}"; fi
"""


class SwupdateSystem:
    """A SWUpdate daemon (sockets in a private directory) with file-backed A/B slots."""

    def __init__(self, root: Path, pki: Pki):
        self.root = root
        self.pki = pki
        self.run_dir = root / "run"
        self.run_dir.mkdir()
        self.slots = {"A": root / "slotA.img", "B": root / "slotB.img"}
        self.slot_a_content = image(SLOT_SIZE, seed=2000)
        self.slots["A"].write_bytes(self.slot_a_content)
        self.slots["B"].write_bytes(b"\0" * SLOT_SIZE)
        self.boot_log = root / "boot.log"
        self.daemon: Daemon | None = None

    def start(self) -> None:
        self.daemon = Daemon(
            [
                "swupdate",
                "-v",
                "-k",
                str(self.pki.good.ca),
                "-H",
                f"{HW_BOARD}:{HW_REV}",
                "-q",
                "stable,copy2",
            ],
            self.root / "swupdate.log",
            env={"TMPDIR": str(self.run_dir)},
        )
        sock = self.run_dir / "sockinstctrl"
        wait_until("the SWUpdate IPC socket", sock.exists, daemon=self.daemon)
        wait_until(
            "the SWUpdate progress socket",
            (self.run_dir / "swupdateprog").exists,
            daemon=self.daemon,
        )

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def boot_changes(self) -> list[str]:
        return self.boot_log.read_text().splitlines() if self.boot_log.exists() else []

    def swu(
        self,
        payload: bytes,
        *,
        signer: Signer | None = None,
        hw_rev: str = HW_REV,
        tamper_image_at: int | None = None,
        installed_directly: bool = True,
    ) -> bytes:
        """A signed .swu: ``rootfs.img`` streamed into slot B (copy2), then ``flip.sh``.

        ``installed_directly=False``: SWUpdate copies the image to its TMPDIR first and installs
        only once the whole .swu arrived and checked out (its default)."""
        signer = signer or self.pki.good
        work = Path(tempfile.mkdtemp(dir=self.root))
        (work / "rootfs.img").write_bytes(payload)
        (work / "flip.sh").write_text(FLIP_SH.format(log=self.boot_log))
        sha_img = hashlib.sha256(payload).hexdigest()
        sha_sh = hashlib.sha256((work / "flip.sh").read_bytes()).hexdigest()

        def images(slot: str, scripts: bool) -> str:
            text = (
                f'images: ( {{ filename = "rootfs.img"; device = "{self.slots[slot]}"; '
                f'type = "raw"; sha256 = "{sha_img}"; '
                f"installed-directly = {'true' if installed_directly else 'false'}; }} );"
            )
            if scripts:
                text += (
                    f' scripts: ( {{ filename = "flip.sh"; type = "shellscript"; '
                    f'sha256 = "{sha_sh}"; }} );'
                )
            return text

        (work / "sw-description").write_text(
            "software =\n{\n"
            '  version = "1.1.0";\n'
            '  description = "nhlink test image";\n'
            f'  hardware-compatibility = [ "{hw_rev}" ];\n'
            "  stable = {\n"
            f"    copy1 = {{ {images('A', False)} }};\n"
            f"    copy2 = {{ {images('B', True)} }};\n"
            "  };\n}\n"
        )
        run(
            [
                "openssl",
                "cms",
                "-sign",
                "-in",
                "sw-description",
                "-out",
                "sw-description.sig",
                "-signer",
                str(signer.cert),
                "-inkey",
                str(signer.key),
                "-outform",
                "DER",
                "-nosmimecap",
                "-binary",
            ],
            cwd=work,
        )
        if tamper_image_at is not None:  # after signing: the hash in sw-description no longer fits
            (work / "rootfs.img").write_bytes(tamper(payload, tamper_image_at))
        names = b"sw-description\nsw-description.sig\nrootfs.img\nflip.sh\n"
        data = run(["cpio", "-o", "-H", "crc"], cwd=work, input=names).stdout
        shutil.rmtree(work)
        return data


@pytest.fixture
def swupdate_system(pki: Pki) -> Iterator[SwupdateSystem]:
    reason = swupdate_unavailable()
    if reason:
        pytest.skip(reason)
    root = short_tmpdir("nhswu")
    system = SwupdateSystem(root, pki)
    try:
        system.start()
        yield system
    finally:
        system.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- hub ------------------------------------------------------------------------------------------


link_options = ota_options


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
