"""The commands around the agent: ``check``, ``sign``, ``install``, ``confirm`` without an agent,
and what the agent adds to the library: the health hook and the update lock."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from nhlink.agent.lock import LockBusy, UpdateLock
from nhlink.agent.runner import parse_metrics
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.update.writers import FileWriter
from tests.support import SECRET, MiB, image, new_hub, sha, tamper

from .support import CHILD_ENV, Agent, Setup, nhlink_cmd


async def test_check_says_what_the_server_said(hub: FakeHub, setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    done = await nhlink_cmd("check", "-c", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid, 1 device(s)" in done.stdout
    assert "127.0.0.1 → 127.0.0.1" in done.stdout
    assert "accepted: the server took the device credentials (101)" in done.stdout
    assert hub.devices["gw-0001"].joins == 0  # no join without --join

    joined = await nhlink_cmd("check", "--join", "-c", config)
    assert joined.returncode == 0, joined.stdout
    assert "gw-0001: join       joined; the server replied {}" in joined.stdout
    assert hub.devices["gw-0001"].joins == 1

    setup.secret.write_text("not-the-secret")
    refused = await nhlink_cmd("check", "-c", config)
    assert refused.returncode == 1
    assert "FAILED: NervesHub refused the device credentials (HTTP 401" in refused.stdout
    assert "not-the-secret" not in refused.stdout + refused.stderr


async def test_check_reports_an_unreachable_server(setup: Setup) -> None:
    config = str(setup.write(setup.doc(port=1)))  # nothing listens on port 1
    done = await nhlink_cmd("check", "--timeout", "5", "-c", config)
    assert done.returncode == 1
    assert "gw-0001: connect    FAILED" in done.stdout


async def test_sign_prints_headers_the_server_accepts(hub: FakeHub, setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    done = await nhlink_cmd("sign", "-c", config)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    headers = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert {k.lower() for k in headers} == {"x-nh-key", "x-nh-alg", "x-nh-time", "x-nh-signature"}
    assert "curl -i" in done.stderr
    # An independent client (the websockets library) connects with them.
    url = f"ws://127.0.0.1:{hub.port}/device-socket/websocket?vsn=2.0.0"
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send('["1","1","device","phx_join",{}]')
        await hub.wait_for(lambda: hub.devices.get("gw-0001"), timeout=10)
    assert hub.devices["gw-0001"].auth == "product_key"


async def test_sign_refuses_mtls_devices(setup: Setup) -> None:
    cert = setup.root / "cert.pem"
    cert.write_text("x")
    doc = setup.doc(ssl=True)
    del doc["product_secret_file"], doc["product_key"]
    doc["device"][0].update(device_cert=str(cert), device_key=str(cert))
    done = await nhlink_cmd("sign", "-c", str(setup.write(doc)))
    assert done.returncode == 1 and "mTLS" in done.stderr


async def test_install_a_file_verified(setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    data = image(3 * MiB + 17, seed=5)
    source = setup.root / "new.img"
    source.write_bytes(data)
    target = setup.target("gw-0001")
    done = await nhlink_cmd("install", str(source), "--sha256", sha(data), "-c", config)
    assert done.returncode == 0, done.stderr
    assert sha(target.read_bytes()) == sha(data)
    lines = done.stderr.splitlines()
    assert "writing: 0 % (0.1 MiB of 3.0 MiB)" in lines or lines[0].startswith("writing: ")
    assert "writing: 100 % (3.0 MiB of 3.0 MiB)" in lines
    assert f"verified 3.0 MiB, SHA-256 {sha(data)}" in lines
    assert lines[-1] == "installed"
    assert "\r" not in done.stderr  # not a terminal: plain lines


async def test_install_with_a_wrong_checksum_touches_nothing(setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    target = setup.target("gw-0001")
    target.write_bytes(b"the old image")
    data = image(2 * MiB, seed=6)
    source = setup.root / "new.img"
    source.write_bytes(tamper(data, -1))  # the last byte differs from what --sha256 says
    done = await nhlink_cmd("install", str(source), "--sha256", sha(data), "-c", config)
    assert done.returncode == 1
    assert "install failed: SHA-256 mismatch" in done.stderr
    assert target.read_bytes() == b"the old image"
    assert not FileWriter(target).partial_path.exists()
    assert not UpdateLock(setup.lock, "probe").busy()  # released


async def test_install_usage_errors(setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    source = setup.root / "new.img"
    source.write_bytes(b"x")
    no_sum = await nhlink_cmd("install", str(source), "-c", config)
    assert no_sum.returncode == 2 and "--sha256" in no_sum.stderr
    bad_sum = await nhlink_cmd("install", str(source), "--sha256", "abc", "-c", config)
    assert bad_sum.returncode == 2 and "64 hexadecimal" in bad_sum.stderr
    missing = await nhlink_cmd("install", str(setup.root / "nope"), "--unverified", "-c", config)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unverified = await nhlink_cmd("install", str(source), "--unverified", "-c", config)
    assert unverified.returncode == 0 and "not verified" in unverified.stderr
    assert setup.target("gw-0001").read_bytes() == b"x"


async def test_install_from_a_url(setup: Setup, fw: FirmwareServer) -> None:
    config = str(setup.write(setup.doc()))
    data = image(2 * MiB + 3, seed=8)
    url = fw.add("fw.bin", data)
    done = await nhlink_cmd("install", url, "--sha256", sha(data), "-c", config)
    assert done.returncode == 0, done.stderr
    assert sha(setup.target("gw-0001").read_bytes()) == sha(data)
    assert fw.requests_for("fw.bin")[0].range is None


async def test_install_draws_a_progress_bar_on_a_terminal(setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    data = image(2 * MiB, seed=9)
    source = setup.root / "new.img"
    source.write_bytes(data)
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a terminal needs the pty's fds
            [
                sys.executable,
                "-m",
                "nhlink",
                "install",
                str(source),
                "--sha256",
                sha(data),
                "-c",
                config,
            ],
            env=CHILD_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = await asyncio.to_thread(os.read, primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        os.close(primary)
    text = output.decode()
    assert "\rwriting [##############################] 100 %" in text
    assert "installed" in text


async def test_confirm_without_a_running_agent(setup: Setup) -> None:
    config = str(setup.write(setup.doc()))
    done = await nhlink_cmd("confirm", "-c", config)
    assert done.returncode == 0, done.stderr
    assert "confirmed gw-0001 (no agent running" in done.stdout
    state = (setup.state / "gw-0001.json").read_text()
    assert '"validated_uuid": "a1b2c3d4-e5f6-7890-abcd-ef1234567890"' in state
    status = await nhlink_cmd("status", "-c", config)
    assert status.returncode == 1 and "no nhlink agent is running" in status.stderr


async def test_the_health_hook_adds_metrics(tmp_path: Path, run_dir: Path) -> None:
    async with new_hub(extensions=["health"]) as hub:
        (tmp_path / "h").mkdir()
        setup = Setup(tmp_path / "h", run_dir, hub.port)
        setup.write(
            setup.doc(
                extensions={"health": True},
                hooks={"health": "printf 'queue_depth=4\\n# c\\nname=text\\n'"},
            )
        )
        agent = Agent(setup).start()
        try:
            await hub.wait_for(
                lambda: hub.devices.get("gw-0001") and hub.devices["gw-0001"].health_reports,
                timeout=30,
            )
            metrics = hub.devices["gw-0001"].health_reports[0]["metrics"]
            assert metrics["queue_depth"] == 4
            assert "name" not in metrics
            assert "load_1min" in metrics  # the machine's own metrics stay
        finally:
            agent.kill()


def test_parse_metrics() -> None:
    assert parse_metrics("a=1\n b = 2.5 \n#c=3\nd=x\nnoequals\n") == {"a": 1.0, "b": 2.5}
    assert parse_metrics('{"a": 1, "b": true, "c": "2"}') == {"a": 1.0, "c": 2.0}
    assert parse_metrics("{not json") == {}


def test_the_update_lock_excludes_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "update.lock"
    mine = UpdateLock(path, "test one")
    mine.acquire()
    mine.acquire()  # idempotent
    assert path.read_text() == f"{os.getpid()} test one\n"
    other = UpdateLock(path, "test two")  # another open file: excluded even in one process
    with pytest.raises(LockBusy, match=f"locked by pid {os.getpid()} test one"):
        other.acquire()
    assert other.busy() is not None
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl, os\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n    print('busy')\n",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.stdout == "busy\n"
    mine.release()
    assert other.busy() is None
    other.acquire()
    other.release()
    assert os.stat(path).st_mode & 0o777 == 0o600
    if os.geteuid() == 0:  # a lock file planted by another user is not ours to trust
        planted = tmp_path / "planted.lock"
        planted.touch()
        os.chown(planted, 65534, 65534)
        with pytest.raises(LockBusy, match="belongs to uid 65534"):
            UpdateLock(planted, "test").acquire()


async def test_hook_output_reaches_the_device_log(tmp_path: Path, run_dir: Path) -> None:
    async with new_hub(extensions=["logging"]) as hub:
        (tmp_path / "l").mkdir()
        setup = Setup(tmp_path / "l", run_dir, hub.port)
        setup.write(
            setup.doc(extensions={"logging": True}, hooks={"identify": "echo blinking led0"})
        )
        agent = Agent(setup).start()
        try:
            await hub.wait_for(
                lambda: "logging" in getattr(hub.devices.get("gw-0001"), "attached_extensions", ()),
                timeout=30,
            )
            await hub.identify("gw-0001")
            logs = await hub.wait_for(lambda: hub.devices["gw-0001"].logs, timeout=30)
            assert any(entry["message"] == "identify: blinking led0" for entry in logs), logs
        finally:
            agent.kill()
