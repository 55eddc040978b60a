"""systemd integration: the notify protocol against a real AF_UNIX datagram socket (the unit
test and the agent as a process), the unit file through ``systemd-analyze verify``, and the
control socket's permissions."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nhlink.agent.control import ControlError, request
from nhlink.agent.notify import Notifier
from nhlink.cli import data_file
from nhlink.testing import FakeHub

from .support import Agent, Setup, status


class Listener:
    """The service manager's end: a bound datagram socket collecting (time, fields)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    async def next(self, timeout: float = 30) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append((time.monotonic(), fields))
        return fields

    async def until(self, key: str, timeout: float = 30) -> dict[str, str]:
        async with asyncio.timeout(timeout):
            while True:
                fields = await self.next()
                if key in fields:
                    return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(run_dir: Path) -> Iterator[Listener]:
    run_dir.mkdir(parents=True, exist_ok=True)
    lst = Listener(str(run_dir.parent / "notify"))
    yield lst
    lst.close()


async def test_notifier_sends_datagrams_to_a_path_and_an_abstract_socket(
    listener: Listener,
) -> None:
    notifier = Notifier(listener.address, watchdog_usec=3_000_000)
    assert notifier.watchdog_interval == 1.5  # half the timeout
    notifier.ready("connecting")
    assert await listener.next() == {"READY": "1", "STATUS": "connecting"}
    notifier.status("joined")
    notifier.status("joined")  # unchanged: not sent again
    notifier.watchdog()
    assert await listener.next() == {"STATUS": "joined"}
    assert await listener.next() == {"WATCHDOG": "1"}
    notifier.stopping()
    assert (await listener.next())["STOPPING"] == "1"
    notifier.close()

    abstract = Listener(f"@nhlink-test-{os.getpid()}")
    try:
        Notifier(abstract.address).send(status="x")
        assert await abstract.next() == {"STATUS": "x"}
    finally:
        abstract.close()


def test_notifier_from_the_environment() -> None:
    assert not Notifier.from_env({}).enabled
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000"})
    assert n.enabled and n.watchdog_interval == 5.0
    # The watchdog is meant for another process: not ours to ping.
    other = Notifier.from_env(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_interval is None
    assert not Notifier(None).send(ready="1")  # outside systemd: nothing, no error


async def test_the_agent_speaks_the_notify_protocol(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent], listener: Listener
) -> None:
    setup.write(setup.doc())
    agent = agents(env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}).start()
    ready = await listener.until("READY")
    assert ready["READY"] == "1" and ready["STATUS"].startswith("gw-0001: ")
    joined = await listener.until("STATUS")
    while joined.get("STATUS") != "gw-0001: joined":
        joined = await listener.until("STATUS")
    pings: list[float] = []
    while len(pings) < 6:
        fields = await listener.next()
        if "WATCHDOG" in fields:
            pings.append(listener.messages[-1][0])
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    # Every 0.2 s (half of WATCHDOG_USEC); the median keeps a loaded machine from flaking.
    assert 0.1 <= gaps[len(gaps) // 2] <= 0.39, gaps
    agent.signal(signal.SIGTERM)
    stopping = await listener.until("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert await agent.wait() == 0


async def test_reload_is_announced(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent], listener: Listener
) -> None:
    setup.write(setup.doc())
    agent = agents(env={"NOTIFY_SOCKET": listener.address}).start()
    await listener.until("READY")
    agent.signal(signal.SIGHUP)
    reloading = await listener.until("RELOADING")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert (await listener.until("READY"))["READY"] == "1"


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze missing (Debian package systemd; scripts/test.sh installs it)")
    return tool


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    nhlink = Path(sys.executable).with_name("nhlink")
    assert nhlink.exists(), "the nhlink console script is installed next to python"
    unit = tmp_path / "nhlink.service"
    unit.write_text(data_file("nhlink.service").replace("/usr/local/bin/nhlink", str(nhlink)))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    # verify prints (and still exits 0 on) unknown keys and bad values: none may appear.
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr
    text = unit.read_text()
    for line in (
        "Type=notify",
        "After=network-online.target",
        "Restart=on-failure",
        "WatchdogSec=",
        "ProtectSystem=",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text


def test_systemd_analyze_catches_mistakes(tmp_path: Path) -> None:
    """The check above is worth something: a broken unit makes verify speak."""
    tool = _systemd_analyze()
    unit = tmp_path / "broken.service"
    unit.write_text(
        data_file("nhlink.service")
        .replace("/usr/local/bin/nhlink", "/bin/true")
        .replace("ProtectSystem=full", "ProtectSystem=maybe")
    )
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert "protect system value" in done.stderr, done.stderr


async def test_the_control_socket_is_private(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    setup.write(setup.doc())
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)
    answer = await status(setup)
    assert answer["devices"][0]["state"] == "joined"
    mode = os.stat(setup.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(setup.socket.parent).st_mode) == 0o700
    with pytest.raises(ControlError, match="unknown command"):
        await asyncio.to_thread(request, setup.socket, "format-disk")
    with pytest.raises(ControlError, match="no device named 'gw-9'"):
        await asyncio.to_thread(request, setup.socket, "status", device="gw-9")
    if os.geteuid() != 0:
        return
    # Another user: the file mode stops it; and if the mode were opened up, SO_PEERCRED does.
    os.chmod(setup.socket.parent.parent, 0o755)  # the test's temporary directory
    os.chmod(setup.socket.parent, 0o755)
    try:
        assert as_nobody(setup.socket) == "EACCES"
        os.chmod(setup.socket, 0o666)
        answer_text = as_nobody(setup.socket)
        assert '"ok": false' in answer_text and "another user" in answer_text, answer_text
        assert "gw-0001" not in answer_text
    finally:
        os.chmod(setup.socket, 0o600)
        os.chmod(setup.socket.parent, 0o700)


def as_nobody(path: Path) -> str:
    """Ask for the status as user nobody (a forked child: no interpreter to exec)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            try:
                s.connect(str(path))
            except PermissionError:
                os.write(write, b"EACCES")
                os._exit(0)
            s.sendall(b'{"command": "status"}\n')
            os.write(write, s.recv(65536).strip())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()
