"""``nhlink run`` as a real subprocess against FakeHub on 127.0.0.1: updates through the
configured writer, SIGTERM mid-download and resume, SIGHUP reloads, maintenance windows, the
update lock, hook policies, journald logs, and the commands around it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.testing.proxy import Fault, FaultProxy
from nhlink.update.writers import FileWriter
from tests.support import (
    KEY,
    NEW_META,
    SECRET,
    MiB,
    image,
    parts,
    push,
    resume_point,
    sha,
    statuses,
    wait_status,
)

from .support import CHILD_ENV, Agent, HubProcess, Setup, events, nhlink_cmd, poll, status


def join_params(hub: FakeHub, ident: str = "gw-0001") -> dict[str, Any]:
    params = hub.devices[ident].join_params
    assert params is not None
    return params


async def test_sigterm_mid_download_resumes_on_the_next_start(
    hub: FakeHub, fw: FirmwareServer, setup: Setup, agents: Callable[..., Agent]
) -> None:
    data = image(10 * MiB + 1234, seed=7)
    target = setup.target("gw-0001")
    state = setup.state / "gw-0001.json"
    setup.write(setup.doc())
    agent = agents().start()
    async with FaultProxy("127.0.0.1", fw.port, seed=1) as proxy:
        proxy.always = (Fault("slow", at=1000, rate=3 * MiB),)
        url = fw.add("fw.bin", data).replace(f":{fw.port}/", f":{proxy.port}/")
        await hub.wait_for_device("gw-0001", timeout=30)
        await push(hub, url, data)
        await wait_status(hub, "downloading")
        await hub.wait_for(lambda: resume_point(state) >= 2 * MiB, timeout=30)
        # While it downloads, `nhlink status` says so.
        answer = await status(setup)
        update = answer["devices"][0]["update"]
        assert update["uuid"] == NEW_META["uuid"] and update["phase"] == "downloading"
        assert 0 <= update["percent"] < 100
        assert await agent.stop() == 0
    saved = resume_point(state)
    assert saved >= 2 * MiB and saved % MiB == 0
    assert FileWriter(target).partial_path.stat().st_size >= saved
    assert "failed" not in statuses(hub)  # a deliberate stop is not a failed update
    assert "suspended at byte" in agent.log

    before = len(fw.requests_for("fw.bin"))
    agents(name="again").start()
    record = await hub.wait_for(lambda: hub.devices["gw-0001"].joins >= 2 or None, timeout=30)
    assert record
    assert join_params(hub)["currently_downloading_uuid"] == NEW_META["uuid"]
    await push(hub, fw.add("fw.bin", data), data)
    await hub.wait_for(lambda: statuses(hub).count("completed") == 1, timeout=30)
    assert sha(target.read_bytes()) == sha(data)
    first = fw.requests_for("fw.bin")[before]
    assert first.range == f"bytes={saved}-"


async def test_sighup_restarts_only_the_changed_device(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    doc = setup.doc(setup.device("gw-a"), setup.device("gw-b"))
    setup.write(doc)
    agent = agents().start()
    await hub.wait_for_device("gw-a", timeout=30)
    await hub.wait_for_device("gw-b", timeout=30)

    # A broken file changes nothing.
    setup.config.write_text(setup.config.read_text() + "\nbogus_key = 1\n")
    agent.signal(signal.SIGHUP)
    await poll(lambda: "reload refused" in agent.log)
    assert "bogus_key: unknown key" in agent.log

    doc["device"][1]["heartbeat_interval"] = 0.3
    setup.write(doc)
    agent.signal(signal.SIGHUP)
    await hub.wait_for(lambda: hub.devices["gw-b"].joins >= 2 or None, timeout=30)
    await poll(lambda: "reloaded: 1 unchanged, restarted ['gw-b']" in agent.log)
    assert hub.devices["gw-a"].connections == 1
    assert hub.devices["gw-b"].connections == 2
    answer = await status(setup)
    assert [d["name"] for d in answer["devices"]] == ["gw-a", "gw-b"]
    assert all(d["state"] == "joined" for d in answer["devices"])
    assert await agent.stop() == 0


async def test_outside_the_maintenance_window_the_update_is_rescheduled_to_its_start(
    hub: FakeHub, fw: FirmwareServer, setup: Setup, agents: Callable[..., Agent]
) -> None:
    now = dt.datetime.now(dt.UTC)
    start = (now + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    end = start + dt.timedelta(hours=1)
    window = f"{start:%H:%M}-{end:%H:%M} UTC"
    setup.write(setup.doc(update={"windows": [window], "window_jitter": 0}))
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)
    data = image(100_000)
    pushed_at = dt.datetime.now(dt.UTC)
    await push(hub, fw.add("fw.bin", data), data)
    payload = await wait_status(hub, "rescheduled")
    expected_ms = (start - pushed_at).total_seconds() * 1000
    assert abs(payload["delay_for"] - expected_ms) < 10_000, (payload, expected_ms)
    assert "maintenance windows" in payload["reason"]
    assert not setup.target("gw-0001").exists()
    assert fw.requests_for("fw.bin") == []
    device = (await status(setup))["devices"][0]
    assert device["rescheduled"]["uuid"] == NEW_META["uuid"]


async def test_jitter_keeps_a_fleet_apart_but_inside_the_window(
    hub: FakeHub, fw: FirmwareServer, setup: Setup, agents: Callable[..., Agent]
) -> None:
    now = dt.datetime.now(dt.UTC)
    start = (now + dt.timedelta(hours=3)).replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{start + dt.timedelta(hours=2):%H:%M} UTC"
    idents = [f"gw-{i}" for i in range(4)]
    setup.write(
        setup.doc(*(setup.device(i) for i in idents), update={"windows": [window]})
    )  # window_jitter defaults to 300 s
    agents().start()
    data = image(1000)
    url = fw.add("fw.bin", data)
    for ident in idents:
        await hub.wait_for_device(ident, timeout=30)
    pushed_at = dt.datetime.now(dt.UTC)
    delays = []
    for ident in idents:
        await push(hub, url, data, ident)
        delays.append((await wait_status(hub, "rescheduled", ident))["delay_for"])
    base = (start - pushed_at).total_seconds() * 1000
    assert all(base - 10_000 <= d <= base + 300_000 + 10_000 for d in delays), (base, delays)
    assert len(set(delays)) == len(delays)  # not the same second


async def test_hook_policies_decide_with_output_or_exit_status(
    hub: FakeHub, fw: FirmwareServer, setup: Setup, agents: Callable[..., Agent]
) -> None:
    setup.write(
        setup.doc(
            setup.device(
                "gw-r",
                hooks={"update_available": 'echo "reschedule 600 maintenance job running"'},
            ),
            setup.device("gw-i", hooks={"update_available": 'echo "not on this site"; exit 1'}),
            setup.device(
                "gw-e", hooks={"update_available": 'test "$NHLINK_FIRMWARE_VERSION" = 1.1.0'}
            ),
        )
    )
    agent = agents().start()
    data = image(300_000)
    url = fw.add("fw.bin", data)
    for ident in ("gw-r", "gw-i", "gw-e"):
        await hub.wait_for_device(ident, timeout=30)
        await push(hub, url, data, ident)
    resched = await wait_status(hub, "rescheduled", "gw-r")
    assert resched["delay_for"] == 600_000
    assert resched["reason"] == "maintenance job running"
    ignored = await wait_status(hub, "ignored", "gw-i")
    assert ignored["reason"] == "not on this site"
    await wait_status(hub, "completed", "gw-e")  # exit 0, no output: apply
    assert sha(setup.target("gw-e").read_bytes()) == sha(data)
    assert "gw-i: update_available: not on this site" in agent.log  # output in the log


async def test_the_update_lock_keeps_one_updater_at_a_time(
    hub: FakeHub, fw: FirmwareServer, setup: Setup, agents: Callable[..., Agent]
) -> None:
    setup.write(setup.doc(update={"busy_retry": 120}))
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)

    # A second agent on the same machine and control socket is refused at once.
    second = agents(name="second").start()
    assert await second.wait() == 1
    assert "another nhlink agent is running (pid" in second.log

    # Another updater holds the machine's update lock (as `flock` from a shell would).
    holder = subprocess.Popen(  # noqa: ASYNC220 - held while the test runs
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(setup.lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'4242 manual-updater')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        data = image(200_000)
        await push(hub, fw.add("fw.bin", data), data)
        payload = await wait_status(hub, "rescheduled")
        assert payload["delay_for"] == 120_000
        assert "another update is in progress" in payload["reason"]
        assert "4242 manual-updater" in payload["reason"]
        image_file = setup.root / "local.img"
        image_file.write_bytes(data)
        done = await nhlink_cmd(
            "install", str(image_file), "--sha256", sha(data), "-c", str(setup.config)
        )
        assert done.returncode == 1
        assert "another update is in progress" in done.stderr
    finally:
        holder.kill()
        holder.wait(10)
    assert not setup.target("gw-0001").exists()


async def test_update_reboot_restart_confirm(
    fw: FirmwareServer, tmp_path: Path, run_dir: Path
) -> None:
    """The whole life of an update, with the hub as its own process (``python -m
    nhlink.testing``, driven through its control API) and firmware metadata from a file the
    image ships: update → written by the file writer → reboot hook → restart on the new image
    → ``nhlink confirm`` → the server hears it and ``nhlink status`` shows it."""
    hub = HubProcess(KEY, SECRET).start()
    setup = Setup(tmp_path, run_dir, hub.port)
    agent = after = None
    try:
        fw_file = setup.root / "firmware.toml"
        meta = dict(NEW_META, uuid="11111111-1111-1111-1111-111111111111", version="1.0.0")
        fw_file.write_text("".join(f'{k} = "{v}"\n' for k, v in meta.items()))
        device = setup.device("gw-0001", firmware={"file": str(fw_file)})
        setup.write(setup.doc(device, update={"reboot_after_update": True}))
        agent = Agent(setup).start()
        record = await hub.until("gw-0001", lambda r: r["joined"])
        assert record["join_params"]["nerves_fw_version"] == "1.0.0"
        data = image(3 * MiB + 5, seed=3)
        await hub.update(
            "gw-0001",
            firmware_url=fw.add("fw.bin", data),
            size=len(data),
            checksum=sha(data).upper(),
            partials_checksums=parts(data),
            firmware_meta=dict(NEW_META),
        )
        record = await hub.until("gw-0001", lambda r: "completed" in r["statuses"])
        assert "failed" not in record["statuses"]
        assert sha(setup.target("gw-0001").read_bytes()) == sha(data)
        await poll(lambda: setup.reboots.exists())  # once `completed` was delivered
        assert setup.reboots.read_text() == "reboot\n"
        assert await agent.stop() == 0

        # "After the reboot": the new image ships its own firmware.toml.
        fw_file.write_text("".join(f'{k} = "{v}"\n' for k, v in NEW_META.items()))
        after = Agent(setup, name="after").start()
        record = await hub.until("gw-0001", lambda r: r["joins"] >= 2 and r["joined"])
        params = record["join_params"]
        assert params["nerves_fw_uuid"] == NEW_META["uuid"]
        assert params["meta"]["firmware_validated"] is False  # confirm = "manual"
        device_status = (await status(setup))["devices"][0]
        assert device_status["validated"] is False
        assert device_status["firmware"]["version"] == NEW_META["version"]
        assert device_status["updates_completed"] == 0  # a new process

        done = await nhlink_cmd("confirm", "-c", str(setup.config))
        assert done.returncode == 0, done.stderr
        assert "confirmed: gw-0001" in done.stdout
        await hub.until("gw-0001", lambda r: events(r, "firmware_validated"))
        assert (await status(setup))["devices"][0]["validated"] is True

        human = await nhlink_cmd("status", "-c", str(setup.config))
        assert "joined" in human.stdout and ", validated" in human.stdout
        assert "1.1.0" in human.stdout
        assert await after.stop() == 0
    finally:
        for process in (agent, after):
            if process is not None:
                process.kill()
        hub.stop()


async def test_reconnect_command(hub: FakeHub, setup: Setup, agents: Callable[..., Agent]) -> None:
    setup.write(setup.doc())
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)
    done = await nhlink_cmd("reconnect", "-c", str(setup.config))
    assert done.returncode == 0 and "reconnecting: gw-0001" in done.stdout
    await hub.wait_for(lambda: hub.devices["gw-0001"].joins >= 2 or None, timeout=30)
    assert hub.devices["gw-0001"].connections == 2


async def test_server_reboot_and_identify_run_the_hooks(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    marker = setup.root / "identified"
    setup.write(setup.doc(hooks={"identify": ["sh", "-c", f"echo $NHLINK_DEVICE > {marker}"]}))
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)
    await hub.identify("gw-0001")
    await poll(lambda: marker.exists() and marker.read_text())
    assert marker.read_text() == "gw-0001\n"
    await hub.reboot("gw-0001")
    await hub.wait_for_message("gw-0001", topic="device", event="rebooting", timeout=10)
    await poll(lambda: setup.reboots.exists())
    assert setup.reboots.read_text() == "reboot\n"


async def test_journald_lines_and_no_secret_in_the_log(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    setup.write(setup.doc(agent={"log_level": "debug"}))
    log_path = setup.root / "agent.log"
    log_path.touch()
    st = os.stat(log_path)
    agent = agents(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).start()
    await hub.wait_for_device("gw-0001", timeout=30)
    await hub.reboot("gw-0001")
    await poll(lambda: setup.reboots.exists())
    assert await agent.stop() == 0
    lines = agent.log.splitlines()
    assert lines and all(line[:3] in {f"<{n}>" for n in range(8)} for line in lines), lines[:5]
    assert "<6>nhlink.link: gw-0001: joined the device channel" in lines
    assert any(line.startswith("<4>nhlink.agent: gw-0001: rebooting") for line in lines)
    assert SECRET not in agent.log


async def test_plain_log_lines_without_the_journal(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    secret_env = {"NHLINK_TEST_SECRET": SECRET}
    doc = setup.doc()
    del doc["product_secret_file"]
    doc["product_secret_env"] = "NHLINK_TEST_SECRET"
    seen = setup.root / "hook-env"
    doc["hooks"]["identify"] = f"env > {seen}"
    setup.write(doc)
    agent = agents(env={**secret_env, "JOURNAL_STREAM": "1:1"}).start("--log-level", "debug")
    await hub.wait_for_device("gw-0001", timeout=30)
    await hub.identify("gw-0001")
    await poll(lambda: seen.exists() and "NHLINK_DEVICE=gw-0001" in seen.read_text())
    assert SECRET not in seen.read_text()  # hooks never inherit the secret's variable
    assert await agent.stop() == 0
    assert " INFO nhlink.link: gw-0001: joined the device channel" in agent.log
    assert not agent.log.startswith("<")  # JOURNAL_STREAM names another file: not the journal
    assert SECRET not in agent.log


def test_child_env_has_no_systemd_variables() -> None:
    assert "NOTIFY_SOCKET" not in CHILD_ENV and "JOURNAL_STREAM" not in CHILD_ENV


async def test_console_and_scripts_from_the_configuration_file(
    hub: FakeHub, setup: Setup, agents: Callable[..., Agent]
) -> None:
    """A gateway operator turns remote access on in the TOML file, no Python: the console
    runs a shell, an allow-listed script answers, the interface is reported."""
    doc = setup.doc(
        setup.device(
            "gw-0001",
            shell={"command": ["/bin/sh", "-i"], "env": {"PS1": "$ "}},
            console={"enabled": True},
            scripts={"commands": {"hello": ["/bin/echo", "hello from the gateway"]}},
        )
    )
    setup.write(doc)
    agents().start()
    await hub.wait_for_device("gw-0001", timeout=30)
    await hub.wait_for(lambda: "console" in hub.devices["gw-0001"].channels, timeout=30)
    report = await hub.wait_for_message(
        "gw-0001", topic="device", event="report_network_interface", timeout=30
    )
    assert report.payload == {"interface": "lo"}
    assert await hub.run_script("gw-0001", "hello", ref="agent-1")
    answer = await hub.wait_for_message("gw-0001", topic="device", event="scripts/run", timeout=30)
    assert answer.payload["output"] == "hello from the gateway\n"
    assert answer.payload["result"] == "completed" and answer.payload["return"] == "0"
    assert await hub.push("gw-0001", "console", "dn", {"data": "echo agent-$((20+22))\r"})

    def console() -> str:
        ups = hub.devices["gw-0001"].messages_for("console", "up")
        return "".join(m.payload["data"] for m in ups)

    await hub.wait_for(lambda: "agent-42" in console(), timeout=30)
