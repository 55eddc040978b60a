"""A software TPM 2.0 holding a device key in a PKCS#11 token, for tests (docs/identity.md).

:class:`SoftTPM` starts, in a directory of its own:

* ``swtpm`` (a TPM 2.0 simulator) on two free TCP ports on 127.0.0.1 — the swtpm TCTI of
  tpm2-tss 3.2 has no Unix-socket form;
* a private D-Bus session bus and ``tpm2-abrmd`` on it: the user-space resource manager. Without
  one, every TPM context a tool or the PKCS#11 module loads stays loaded after it exits and the
  TPM runs out of object slots (``TPM_RC_OBJECT_MEMORY``) within a couple of commands; real
  devices use the kernel's ``/dev/tpmrm0`` instead;
* a tpm2-pkcs11 store (``tpm2_ptool``): a token whose keys are created **inside** the TPM and
  stored wrapped by it (the store is useless without that TPM).

:meth:`SoftTPM.env` is what a process needs to reach the token (``TPM2_PKCS11_TCTI``,
``TPM2_PKCS11_STORE``, ``DBUS_SESSION_BUS_ADDRESS``). :func:`missing` names the Debian packages
absent from this machine. Waiting for the daemons polls their readiness with a deadline.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["PACKAGES", "SoftTPM", "missing", "pkcs11_module"]

#: Debian packages (``--no-install-recommends``) a SoftTPM needs: tool -> package.
PACKAGES = {
    "swtpm": "swtpm",
    "tpm2-abrmd": "tpm2-abrmd",
    "dbus-daemon": "dbus",
    "tpm2_ptool": "libtpm2-pkcs11-tools",
    "tpm2_getrandom": "tpm2-tools",
    "libtpm2_pkcs11.so": "libtpm2-pkcs11-1",
    "pkcs11 engine": "libengine-pkcs11-openssl",
    "tabrmd TCTI": "libtss2-tcti-tabrmd0",
    "swtpm TCTI": "libtss2-tcti-swtpm0",
}


def _lib_glob(pattern: str) -> str | None:
    for root in ("/usr/lib", "/usr/local/lib", "/lib"):
        found = sorted(glob.glob(f"{root}/{pattern}")) + sorted(glob.glob(f"{root}/*/{pattern}"))
        if found:
            return found[0]
    return None


def pkcs11_module() -> str | None:
    """Path of tpm2-pkcs11's PKCS#11 module, if installed."""
    return _lib_glob("pkcs11/libtpm2_pkcs11.so") or _lib_glob("libtpm2_pkcs11.so.1")


def missing() -> list[str]:
    """Packages (Debian names) whose tools a SoftTPM needs and this machine lacks."""
    absent: list[str] = []
    for tool, package in PACKAGES.items():
        if tool == "libtpm2_pkcs11.so":
            ok = pkcs11_module() is not None
        elif tool == "pkcs11 engine":
            ok = _lib_glob("engines-3/pkcs11.so") is not None
        elif tool == "tabrmd TCTI":
            ok = _lib_glob("libtss2-tcti-tabrmd.so*") is not None
        elif tool == "swtpm TCTI":
            ok = _lib_glob("libtss2-tcti-swtpm.so*") is not None
        else:
            ok = (
                shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None
            )
        if not ok:
            absent.append(package)
    return absent


def _free_port_pair() -> tuple[int, int]:
    """Two consecutive free ports on 127.0.0.1: the swtpm TCTI finds the control channel at
    the server port + 1."""
    for _ in range(100):
        first = socket.socket()
        second = socket.socket()
        try:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            second.bind(("127.0.0.1", port + 1))
            return port, port + 1
        except OSError:
            continue
        finally:
            first.close()
            second.close()
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class SoftTPM:
    """See the module docstring. Use as a context manager, or :meth:`start` / :meth:`stop`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.store = self.directory / "store"
        self.module = pkcs11_module() or ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._bus = ""
        self._swtpm_port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> SoftTPM:
        absent = missing()
        if absent:
            raise RuntimeError("SoftTPM needs: apt-get install " + " ".join(absent))
        state = self.directory / "tpm"
        state.mkdir(parents=True, exist_ok=True)
        self.store.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        server, ctrl = _free_port_pair()
        self._swtpm_port = server
        self._spawn(
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
            "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        )  # fmt: skip
        self._bus = f"unix:path={self.directory / 'bus'}"
        self._spawn("dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={self._bus}")
        self._wait(lambda: (self.directory / "bus").exists(), deadline, "dbus-daemon")
        self._wait(self._swtpm_ready, deadline, "swtpm")
        abrmd = ["tpm2-abrmd", "--session", f"--tcti=swtpm:host=127.0.0.1,port={server}"]
        if os.geteuid() == 0:
            abrmd.append("--allow-root")
        self._spawn(*abrmd)
        self._wait(self._abrmd_ready, deadline, "tpm2-abrmd")
        self._ptool("init")
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> SoftTPM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables a process needs to use the token (merge into os.environ)."""
        return {
            "DBUS_SESSION_BUS_ADDRESS": self._bus,
            "TPM2TOOLS_TCTI": "tabrmd:bus_type=session",
            "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session",
            "TPM2_PKCS11_STORE": str(self.store),
        }

    def create_key(
        self,
        *,
        token: str = "nhlink",
        label: str = "device",
        pin: str = "1234",
        algorithm: str = "ecc256",
    ) -> str:
        """Create a token (first call for ``token``) and a key in it, made inside the TPM;
        return its ``pkcs11:`` URI with ``module-path`` and a ``pin-source`` file (mode 0600)."""
        pin_file = self.directory / f"{token}.pin"
        if not pin_file.exists():
            self._ptool(
                "addtoken", "--pid=1", f"--label={token}", "--sopin=so-" + pin, f"--userpin={pin}"
            )
            fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(pin + "\n")
        self._ptool(
            "addkey",
            f"--algorithm={algorithm}",
            f"--label={token}",
            f"--userpin={pin}",
            f"--key-label={label}",
        )
        return (
            f"pkcs11:token={token};object={label};type=private"
            f"?module-path={self.module}&pin-source=file:{pin_file}"
        )

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, *argv: str) -> None:
        log = open(self.directory / f"{Path(argv[0]).name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self._bus} if self._bus else None
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        exe = shutil.which(argv[0], path=path) or argv[0]
        self._procs.append(
            subprocess.Popen([exe, *argv[1:]], stdout=log, stderr=log, env=env, cwd=self.directory)
        )
        log.close()

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            for proc in self._procs:
                if proc.poll() is not None:
                    name = os.fsdecode(proc.args[0]) if isinstance(proc.args, list) else "a daemon"
                    raise RuntimeError(
                        f"{name} exited ({proc.returncode}); see logs in {self.directory}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become ready; see logs in {self.directory}")
            time.sleep(0.05)

    def _swtpm_ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self._swtpm_port), 0.5).close()
            return True
        except OSError:
            return False

    def _abrmd_ready(self) -> bool:
        env = {**os.environ, **self.env()}
        probe = subprocess.run(
            ["tpm2_getrandom", "--hex", "4"], env=env, capture_output=True, timeout=10
        )
        return probe.returncode == 0

    def _ptool(self, *args: str) -> None:
        env = {**os.environ, **self.env()}
        result = subprocess.run(
            ["tpm2_ptool", args[0], f"--path={self.store}", *args[1:]],
            env=env,
            capture_output=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"tpm2_ptool {args[0]} failed: {result.stderr.decode(errors='replace')[-800:]}"
            )
