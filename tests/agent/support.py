"""The agent under test: a configuration file written from dicts, ``nhlink run`` as a real
subprocess, and the other ``nhlink`` commands run the way an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nhlink
from nhlink.testing.process import HubProcess as _HubProcess
from tests.support import KEY, META, SECRET

#: Child processes import the same nhlink as this one (a checkout's or an installed wheel's).
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(next(iter(nhlink.__path__))).parent), os.environ.get("PYTHONPATH", "")]
    ),
}
for _name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "NHLINK_CONFIG"):
    CHILD_ENV.pop(_name, None)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _table(prefix: str, table: Mapping[str, Any], header: str | None) -> list[str]:
    lines = [header] if header else []
    subs = []
    for key, value in table.items():
        if isinstance(value, dict):
            subs.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in subs:
        lines += _table(f"{prefix}{key}.", value, f"[{prefix}{key}]")
    return lines


def to_toml(doc: Mapping[str, Any]) -> str:
    """The small TOML subset the tests need (tomllib has no writer)."""
    top = {k: v for k, v in doc.items() if k != "device"}
    scalars = {k: v for k, v in top.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in top.items() if isinstance(v, dict)}
    lines = _table("", scalars, None)
    for key, value in tables.items():
        lines += _table(f"{key}.", value, f"[{key}]")
    for device in doc.get("device", []):
        lines.append("")
        lines += _table("device.", device, "[[device]]")
    return "\n".join(lines) + "\n"


class Setup:
    """Paths of one test's agent: config, state, control socket (short: AF_UNIX paths are
    limited to 107 bytes), update lock, a secret file, and where the reboot hook writes."""

    def __init__(self, root: Path, run_dir: Path, hub_port: int) -> None:
        self.root = root
        self.config = root / "nhlink.toml"
        self.socket = run_dir / "control.sock"
        self.lock = root / "update.lock"
        self.state = root / "state"
        self.reboots = root / "reboots"
        self.secret = root / "secret"
        self.secret.write_text(SECRET + "\n")
        self.secret.chmod(0o600)
        self.hub_port = hub_port

    def target(self, ident: str) -> Path:
        return self.root / f"{ident}.img"

    def device(self, ident: str, **extra: Any) -> dict[str, Any]:
        table: dict[str, Any] = {
            "identifier": ident,
            "firmware": dict(META),
            "writer": {"type": "file", "path": str(self.target(ident)), "fsync": False},
        }
        table.update(extra)
        return table

    def doc(self, *devices: dict[str, Any], **top: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.hub_port,
            "ssl": False,
            "product_key": KEY,
            "product_secret_file": str(self.secret),
            "backoff_initial": 0.05,
            "backoff_max": 0.4,
            "backoff_reset_after": 0.2,
            "heartbeat_interval": 0.2,
            "agent": {
                "control_socket": str(self.socket),
                "lock_file": str(self.lock),
                "state_dir": str(self.state),
            },
            "update": {"confirm": "manual", "reboot_after_update": False},
            "hooks": {"reboot": f"echo reboot >> {self.reboots}", "timeout": 10},
            "download": {"allow_http": True, "retry_delay": 0.01, "retry_delay_max": 0.05},
            "device": list(devices) or [self.device("gw-0001")],
        }
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        return doc

    def write(self, doc: Mapping[str, Any]) -> Path:
        self.config.write_text(to_toml(doc))
        self.config.chmod(0o600)
        return self.config


class Agent:
    """``python -m nhlink run`` in its own process; stderr goes to a file (``log``)."""

    def __init__(self, setup: Setup, env: Mapping[str, str] | None = None, name: str = "agent"):
        self.setup = setup
        self.log_path = setup.root / f"{name}.log"
        self.env = {**CHILD_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Agent:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nhlink", "run", "-c", str(self.setup.config), *extra],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        proc = self.proc
        return await asyncio.to_thread(proc.wait, timeout)

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit status."""
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def nhlink_cmd(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``nhlink ARGS`` as an operator would (off the event loop: the hub keeps serving)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "nhlink", *args],
        env={**CHILD_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def status(setup: Setup) -> dict[str, Any]:
    done = await nhlink_cmd("status", "--json", "-c", str(setup.config))
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def poll(predicate: Callable[[], Any], timeout: float = 30, every: float = 0.05) -> Any:
    """For state only another process has (a file, an agent's answer): check until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(every)


class HubProcess(_HubProcess):
    """``python -m nhlink.testing`` in its own process, driven through its HTTP control API."""

    def __init__(self, product_key: str, product_secret: str) -> None:
        super().__init__(product_key, product_secret, env=CHILD_ENV)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp

        url = f"http://127.0.0.1:{self.port}/_fakehub{path}"
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, json=body) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()

    async def device(self, ident: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", f"/devices/{ident}")
        return answer

    async def update(self, ident: str, **fields: Any) -> None:
        answer = await self._call("POST", f"/devices/{ident}/update", fields)
        assert answer["sent"], answer

    async def until(
        self, ident: str, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the device's record (another process has it) until ``predicate`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                record = await self.device(ident)
            except AssertionError:  # 404: not seen yet
                record = None
            if record is not None and predicate(record):
                return record
            if loop.time() > deadline:
                raise TimeoutError(f"hub: condition on {ident} not reached: {record}")
            await asyncio.sleep(0.05)


def events(record: Mapping[str, Any], event: str) -> list[Any]:
    """Payloads of the device's messages called ``event`` (from a control API record)."""
    return [m["frame"][4] for m in record.get("messages", []) if m["frame"][3] == event]
