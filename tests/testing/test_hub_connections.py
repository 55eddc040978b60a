"""FakeHub socket lifecycle: duplicate identity, drain, idle timeout, control endpoints, CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect

import nhlink
from nhlink.testing import FakeHub
from tests.testing import _signer
from tests.testing.conftest import (
    IDENT,
    KEY,
    SECRET,
    FrozenClock,
    close_code,
    join_device,
    open_device,
    recv,
    send,
)


async def test_duplicate_identity_closes_the_old_socket_with_1001(hub: FakeHub) -> None:
    old = await open_device(hub)
    await join_device(old)
    await hub.wait_for_device(IDENT)
    async with await open_device(hub) as new:
        assert await close_code(old) == 1001
        record = hub.devices[IDENT]
        assert record.connected  # the new socket is the device now
        assert record.connections == 2
        assert record.close_codes == [1001]
        assert not record.joined  # channel state belongs to the new socket
        assert (await join_device(new))[4]["status"] == "ok"
        await hub.wait_for_device(IDENT)
        assert hub.upgrade_counts(IDENT) == {101: 2}
    await old.close()


async def test_other_identities_are_not_affected(hub: FakeHub) -> None:
    async with await open_device(hub, "a") as a, await open_device(hub, "b"):
        await send(a, [None, "1", "phoenix", "heartbeat", {}])
        assert (await recv(a))[3] == "phx_reply"
        assert hub.devices["a"].close_codes == []


async def test_drain_closes_every_socket_with_1012(hub: FakeHub) -> None:
    sockets = [await open_device(hub, name) for name in ("d1", "d2", "d3")]
    for name in ("d1", "d2", "d3"):
        await hub.wait_for_device(name, joined=False)
    assert await hub.drain() == 3
    assert [await close_code(ws) for ws in sockets] == [1012, 1012, 1012]
    for name in ("d1", "d2", "d3"):
        await hub.wait_for_disconnect(name)
    # The hub still accepts connections (a restarted server).
    async with await open_device(hub, "d1"):
        await hub.wait_for_device("d1", joined=False)


async def test_idle_timeout_closes_with_1002(clock: FrozenClock) -> None:
    async with FakeHub(shared_secrets={KEY: SECRET}, clock=clock, idle_timeout=0.2) as hub:
        ws = await open_device(hub)
        assert await close_code(ws) == 1002
        record = await hub.wait_for_disconnect(IDENT)
        assert record.close_codes == [1002]


async def test_disconnect_with_a_code(hub: FakeHub) -> None:
    ws = await open_device(hub)
    await hub.wait_for_device(IDENT, joined=False)
    assert await hub.disconnect(IDENT, 4000, "bye")
    assert await close_code(ws) == 4000
    await hub.wait_for_disconnect(IDENT)
    assert not await hub.disconnect(IDENT)


async def test_stopping_the_hub_closes_with_1001(clock: FrozenClock) -> None:
    async with FakeHub(shared_secrets={KEY: SECRET}, clock=clock) as hub:
        ws = await open_device(hub)
        await hub.wait_for_device(IDENT, joined=False)
    assert await close_code(ws) == 1001


async def test_reconnect_is_counted(hub: FakeHub) -> None:
    for _ in range(3):
        async with await open_device(hub):
            await hub.wait_for_device(IDENT, joined=False)
        await hub.wait_for_disconnect(IDENT)
    assert hub.devices[IDENT].connections == 3
    assert hub.upgrade_counts(IDENT)[101] == 3
    assert len({a.monotonic for a in hub.attempts_for(IDENT)}) == 3


async def test_http_control_api(hub: FakeHub) -> None:
    async with await open_device(hub) as ws, aiohttp.ClientSession(hub.http_url) as http:
        await join_device(ws)
        await recv(ws)  # extensions:get
        await send(ws, ["1", "2", "device", "status_update", {"status": "received"}])
        await hub.wait_for_message(IDENT, event="status_update")

        async with http.get("/_fakehub/devices") as response:
            devices = (await response.json())["devices"]
        assert [d["identifier"] for d in devices] == [IDENT]
        assert devices[0]["joined"] is True
        assert devices[0]["statuses"] == ["received"]

        async with http.get(f"/_fakehub/devices/{IDENT}") as response:
            detail = await response.json()
        assert detail["messages"][0]["frame"][3] == "phx_join"

        body = {"event": "identify", "payload": {}}
        async with http.post(f"/_fakehub/devices/{IDENT}/push", json=body) as response:
            assert await response.json() == {"sent": True}
        assert await recv(ws) == [None, None, "device", "identify", {}]

        body2 = {"firmware_url": "https://x/fw", "size": 3, "checksum": "aa"}
        async with http.post(f"/_fakehub/devices/{IDENT}/update", json=body2) as response:
            assert (await response.json())["sent"] is True
        update = (await recv(ws))[4]
        assert update["checksum"] == "AA"
        assert update["size"] == 3

        async with http.post(f"/_fakehub/devices/{IDENT}/reboot", json={}) as response:
            assert await response.json() == {"sent": True}
        assert (await recv(ws))[3] == "reboot"

        async with http.get("/_fakehub/devices/nobody") as response:
            assert response.status == 404
        async with http.post(
            f"/_fakehub/devices/{IDENT}/push",
            data=b"[1]",
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 400

        async with http.get("/_fakehub/attempts") as response:
            attempts = (await response.json())["attempts"]
        assert attempts[0]["status"] == 101

        async with http.post(
            f"/_fakehub/devices/{IDENT}/disconnect", json={"code": 4001}
        ) as response:
            assert await response.json() == {"sent": True}
        assert await close_code(ws) == 4001

        async with http.post("/_fakehub/drain", json={}) as response:
            assert await response.json() == {"closed": 0}


async def test_control_api_refuses_what_a_browser_could_send(hub: FakeHub) -> None:
    async with await open_device(hub) as ws, aiohttp.ClientSession(hub.http_url) as http:
        await join_device(ws)
        assert (await recv(ws))[3] == "extensions:get"
        reboot = f"/_fakehub/devices/{IDENT}/reboot"
        # A cross-origin "simple request" (no preflight): text/plain, or a form.
        async with http.post(
            reboot, data=b'{"x": 1}', headers={"Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415
        async with http.post(reboot, data={"a": "b"}) as response:
            assert response.status == 415
        # A page's fetch() carries its Origin.
        async with http.post(
            reboot, json={}, headers={"Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
        async with http.get("/_fakehub/devices", headers={"Origin": "null"}) as response:
            assert response.status == 403
        # DNS rebinding: the page's own host name in Host.
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example"):
            async with http.get("/_fakehub/devices", headers={"Host": host}) as response:
                assert response.status == 403, host
                assert "loopback" in (await response.json())["error"]
        # What a script sends is served.
        for host in ("localhost", "127.0.0.1", f"127.0.0.1:{hub.port}", f"[::1]:{hub.port}"):
            async with http.get("/_fakehub/devices", headers={"Host": host}) as response:
                assert response.status == 200, host
        async with http.post(reboot, json={}) as response:
            assert await response.json() == {"sent": True}
        assert (await recv(ws))[3] == "reboot"  # the first reboot the device ever got


async def test_control_api_can_be_disabled(clock: FrozenClock) -> None:
    async with (
        FakeHub(clock=clock, control_api=False) as hub,
        aiohttp.ClientSession(hub.http_url) as http,
        http.get("/_fakehub/devices", allow_redirects=False) as response,
    ):
        assert response.status == 301


async def _command_line_hub(*args: str) -> asyncio.subprocess.Process:
    """``python -m nhlink.testing --port 0`` with our key and ``args``, importing this nhlink."""
    env = dict(os.environ)
    # The child must import the same nhlink as this process.
    root = str(Path(next(iter(nhlink.__path__))).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nhlink.testing", "--port", "0",
        "--product-key", KEY, "--product-secret", SECRET, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        # Ctrl-C on a hub in the foreground: SIGINT at its default, whatever this process
        # inherited (a suite started in the background by a shell ignores SIGINT, and a child
        # would inherit that and never see the signal).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


async def _printed(process: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    """The first line the hub prints that matches ``pattern`` (within 20 s)."""
    assert process.stdout is not None and process.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                error = (await process.stderr.read()).decode()
                pytest.fail(f"the hub exited before printing its URL:\n{error}")
            match = re.search(pattern, line)
            if match:
                return match


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_command_line_hub(tmp_path: Path) -> None:
    process = await _command_line_hub("--extensions", "health")
    try:
        url = (
            await _printed(process, r"(ws://127\.0\.0\.1:\d+/device-socket/websocket\?vsn=2\.0\.0)")
        )[1]
        headers = _signer.sign(KEY, SECRET, IDENT, int(time.time()) - 1)
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            assert (await join_device(ws))[4] == {"status": "ok", "response": {}}
            assert await recv(ws) == [None, None, "device", "extensions:get", {}]
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            await process.wait()
    assert process.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("flags", "version"), [((), "TLSv1.2"), (("--tls13",), "TLSv1.3")])
async def test_command_line_hub_tls_versions(
    tmp_path: Path, flags: tuple[str, ...], version: str
) -> None:
    """``--tls-dir`` serves TLS 1.2 only, as the server does by default; ``--tls13`` offers
    1.3 too (the server's DEVICE_ENABLE_TLS_13), which a default client then negotiates."""
    process = await _command_line_hub("--tls-dir", str(tmp_path / "pki"), *flags)
    try:
        port = int((await _printed(process, r"wss://127\.0\.0\.1:(\d+)/"))[1])
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        assert writer.get_extra_info("ssl_object").version() == version
        writer.close()
        await writer.wait_closed()
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            await process.wait()
    assert process.returncode == 0
