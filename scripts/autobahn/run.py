#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzing server against a WebSocket echo client and grade it.

    scripts/autobahn/setup.sh                      # once: the Python 2.7 suite, outside the tree
    .venv/bin/python scripts/autobahn/run.py --client nhlink --json /tmp/ab.json
    .venv/bin/python scripts/autobahn/run.py --client websockets --cases '1.*,2.*' --exclude 2.3
    .venv/bin/python scripts/autobahn/run.py --client nhlink --tls   # wss:// (certs made here)

Steps: write the spec (ws://127.0.0.1:PORT on a free port, outdir in a temp dir; with ``--tls``
wss:// with a server certificate for 127.0.0.1 signed by a CA made for the run, which the
clients trust and verify as in production), start
``launcher.py`` under the suite's Python 2.7 (binds 127.0.0.1 only; checked here), ask
``/getCaseCount``, run the echo client against ``/runCase?case=N&agent=AGENT`` for each N (per-case
timeout, overall deadline), call ``/updateReports``, read ``index.json``, print a summary and
write it as JSON with ``--json``. The server's process group is always killed at the end.

Exit status: 0 when every run case was graded and none FAILED (behavior or behaviorClose);
1 when a case FAILED, fewer cases were graded than run, or the deadline cut the run short;
2 when the harness itself could not run (suite not installed, server did not start, ...).

The echo client runs in this process, so ``NHLINK_NO_EXTENSIONS=1`` in the environment selects
nhlink's pure-Python core exactly as it would for an application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LAUNCHER = HERE / "launcher.py"
DEFAULT_CASES = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*"
MAX_MESSAGE = 64 * 2**20
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
LOOPBACK = "127.0.0.1"

EchoClient = Callable[[str, bool, "ssl.SSLContext | None"], Awaitable[None]]


class HarnessError(Exception):
    """The harness could not do its job (as opposed to the client failing cases)."""


# --------------------------------------------------------------------------------------------
# Echo clients: connect to URL, echo every data message (text as text, binary as binary) until
# the server closes. Protocol errors the client detects end the case; they are not harness errors.
# --------------------------------------------------------------------------------------------


async def echo_nhlink(url: str, deflate: bool, tls: ssl.SSLContext | None) -> None:
    """nhlink's own client. Keep this the only place that knows the nhlink.transport.ws API."""
    from nhlink.transport.ws import connect

    compression: Literal["deflate"] | None = "deflate" if deflate else None
    async with connect(
        url, ssl=tls, max_message_size=MAX_MESSAGE, open_timeout=10, compression=compression
    ) as ws:
        async for msg in ws:
            if isinstance(msg, str):
                await ws.send_text(msg)
            else:
                await ws.send_binary(msg)


async def echo_websockets(url: str, deflate: bool, tls: ssl.SSLContext | None) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        async with connect(
            url,
            ssl=tls,
            max_size=MAX_MESSAGE,
            compression="deflate" if deflate else None,
            ping_interval=None,
            open_timeout=10,
        ) as ws:
            async for msg in ws:
                await ws.send(msg)


async def echo_aiohttp(url: str, deflate: bool, tls: ssl.SSLContext | None) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, ssl=tls or True, max_msg_size=MAX_MESSAGE, compress=15 if deflate else 0
        ) as ws,
    ):
        async for msg in ws:  # stops by itself on CLOSE / CLOSING / CLOSED
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:  # ERROR
                break


CLIENTS: dict[str, EchoClient] = {
    "nhlink": echo_nhlink,
    "websockets": echo_websockets,
    "aiohttp": echo_aiohttp,
}


def nhlink_implementation() -> str:
    """Import nhlink (falling back to the source tree) and say which core is in use."""
    try:
        import nhlink._core as core
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        import nhlink._core as core
    return str(core.IMPLEMENTATION)


# --------------------------------------------------------------------------------------------
# Control connections (aiohttp is nhlink's one runtime dependency, so it is always there).
# --------------------------------------------------------------------------------------------


async def control_text(url: str, seconds: float, tls: ssl.SSLContext | None) -> str | None:
    """Open URL, return the first text message (or None), then wait for the server to close."""
    import aiohttp

    first: str | None = None
    async with (
        asyncio.timeout(seconds),
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=tls or True, autoping=True) as ws,
    ):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and first is None:
                first = str(msg.data)
    return first


# --------------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------------


def default_python27() -> Path:
    if os.environ.get("NHLINK_AUTOBAHN_PYTHON"):
        return Path(os.environ["NHLINK_AUTOBAHN_PYTHON"])
    home = os.environ.get("NHLINK_AUTOBAHN_HOME") or str(Path.home() / ".cache/nhlink-autobahn")
    return Path(home) / "py27" / "bin" / "python"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise HarnessError(f"fuzzing server exited early with status {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise HarnessError(f"fuzzing server did not listen on {LOOPBACK}:{port} within {timeout:.0f} s")


def _proc_listen_addrs(pid: int) -> list[str]:
    """Listening TCP addresses of process PID, from /proc (no dependency on ss)."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addrs: list[str] = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                    continue
                host_hex, port_hex = cols[1].split(":")
                port = int(port_hex, 16)
                if v6:
                    raw = bytes.fromhex(host_hex)
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addrs.append(f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{port}")
                else:
                    addrs.append(f"{socket.inet_ntoa(bytes.fromhex(host_hex)[::-1])}:{port}")
    return addrs


def check_loopback_only(pid: int) -> list[str]:
    """Every listening socket of the server must be on 127.0.0.1; cross-checked with `ss -ltnp`."""
    addrs = _proc_listen_addrs(pid)
    if not addrs:
        raise HarnessError(f"could not find the server's listening socket (pid {pid})")
    if shutil.which("ss"):
        out = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                local = line.split()[3]
                if local not in addrs:
                    addrs.append(local)
    bad = [a for a in addrs if not a.startswith(LOOPBACK + ":")]
    if bad:
        raise HarnessError(f"fuzzing server listens beyond loopback: {bad}")
    return sorted(addrs)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:  # the group may outlive its leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def make_tls(directory: Path, spec: dict[str, Any]) -> ssl.SSLContext:
    """A CA and a server certificate for 127.0.0.1 (nhlink's test PKI, made now); the server's key
    and certificate go into the spec, and the returned client context trusts only that CA, with
    hostname checking on."""
    try:
        from nhlink.testing.certs import create_pki
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        from nhlink.testing.certs import create_pki
    pki = create_pki(directory)
    spec["key"] = str(pki.server.key)
    spec["cert"] = str(pki.server.cert)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.cert))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


async def run_cases(
    base: str,
    agent: str,
    client: EchoClient,
    opts: argparse.Namespace,
    out: dict[str, Any],
    tls: ssl.SSLContext | None,
) -> None:
    loop_start = time.monotonic()
    deadline = loop_start + opts.deadline
    text = await control_text(f"{base}/getCaseCount", seconds=30, tls=tls)
    if text is None or not text.strip().isdigit():
        raise HarnessError(f"/getCaseCount answered {text!r}")
    count = int(text)
    out["selected"] = count
    print(f"[autobahn] {count} cases selected; running agent {agent!r}", flush=True)
    timeouts: list[int] = []
    errors: dict[int, str] = {}
    run = 0
    qagent = quote(agent)
    for n in range(1, count + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out["deadline_hit"] = True
            print(f"[autobahn] deadline of {opts.deadline:.0f} s hit after {run} cases", flush=True)
            break
        t = time.monotonic()
        try:
            async with asyncio.timeout(min(opts.per_case_timeout, remaining)):
                await client(f"{base}/runCase?case={n}&agent={qagent}", opts.deflate, tls)
        except TimeoutError:
            timeouts.append(n)
        except Exception as exc:  # the client gave up on the case; the server grades it
            errors[n] = f"{type(exc).__name__}: {exc}"[:200]
        run += 1
        dt = time.monotonic() - t
        if opts.verbose or dt > 5:
            print(f"[autobahn] case #{n} took {dt:.1f} s", flush=True)
        if run % 50 == 0:
            elapsed = time.monotonic() - loop_start
            print(f"[autobahn] {run}/{count} cases, {elapsed:.1f} s", flush=True)
    out["run"] = run
    out["cases_seconds"] = round(time.monotonic() - loop_start, 2)

    # Name the cases that timed out or raised, for the report (cheap: one connection each).
    async def case_id(n: int) -> str:
        try:
            info = await control_text(f"{base}/getCaseInfo?case={n}", seconds=10, tls=tls)
            return str(json.loads(info or "{}").get("id", f"#{n}"))
        except Exception:
            return f"#{n}"

    out["timeouts"] = [await case_id(n) for n in timeouts]
    out["client_exceptions"] = {await case_id(n): msg for n, msg in errors.items()}
    print("[autobahn] updating reports", flush=True)
    await control_text(f"{base}/updateReports?agent={qagent}", seconds=300, tls=tls)


def grade(index_path: Path, agent: str, out: dict[str, Any]) -> None:
    if not index_path.exists():
        raise HarnessError(f"no report index at {index_path}")
    index = json.loads(index_path.read_text())
    results: dict[str, dict[str, Any]] = index.get(agent, {})
    out["graded"] = len(results)
    counts = dict.fromkeys(BEHAVIORS, 0)
    non_ok: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for cid in sorted(results, key=case_key):
        r = results[cid]
        behavior, close = str(r.get("behavior")), str(r.get("behaviorClose"))
        counts[behavior] = counts.get(behavior, 0) + 1
        if behavior != "OK" or close not in ("OK", "INFORMATIONAL"):
            non_ok[cid] = {"behavior": behavior, "behaviorClose": close}
        if "FAILED" in (behavior, close):
            failed.append(cid)
    out["counts"] = counts
    out["failed"] = failed
    out["non_ok"] = non_ok


def print_summary(out: dict[str, Any]) -> None:
    c = out.get("counts", {})
    print()
    print(
        f"autobahn: client={out['client']} agent={out['agent']} "
        f"implementation={out.get('implementation', '-')} deflate={out['deflate']}"
    )
    print(f"  listening: {', '.join(out.get('listening', [])) or '?'} tls={out.get('tls')}")
    print(
        f"  cases selected {out.get('selected', '?')}, run {out.get('run', 0)}, "
        f"graded {out.get('graded', 0)}; timeouts {len(out.get('timeouts', []))}, "
        f"client exceptions {len(out.get('client_exceptions', {}))}"
    )
    print("  " + "  ".join(f"{b} {c.get(b, 0)}" for b in BEHAVIORS))
    for cid, r in out.get("non_ok", {}).items():
        print(f"    {cid:<10} behavior={r['behavior']:<14} behaviorClose={r['behaviorClose']}")
    for cid, msg in list(out.get("client_exceptions", {}).items())[:10]:
        print(f"    client exception in {cid}: {msg}")
    if out.get("timeouts"):
        print(f"  timed out: {' '.join(out['timeouts'])}")
    if out.get("deadline_hit"):
        print("  DEADLINE HIT: run incomplete")
    print(f"  wall {out.get('wall_seconds', 0):.1f} s (cases {out.get('cases_seconds', 0):.1f} s)")
    if out.get("error"):
        print(f"  HARNESS ERROR: {out['error']}")
    print(f"  RESULT: {'PASS' if out.get('passed') else 'FAIL'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--client", choices=sorted(CLIENTS), default="nhlink")
    p.add_argument("--agent", help="agent name in the reports (default: from the client)")
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"comma list (default {DEFAULT_CASES})")
    p.add_argument("--exclude", default="", help="comma list of case patterns to exclude")
    p.add_argument("--per-case-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--deadline", type=float, default=20 * 60.0, metavar="S")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    p.add_argument(
        "--tls", action="store_true", help="wss:// with certificates made for the run (verified)"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the summary here")
    p.add_argument("--reports", type=Path, metavar="DIR", help="keep the suite's reports here")
    p.add_argument("--python27", type=Path, default=default_python27(), metavar="PATH")
    p.add_argument("--verbose", "-v", action="store_true")
    return p.parse_args(argv)


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    client = CLIENTS[opts.client]
    out: dict[str, Any] = {
        "client": opts.client,
        "deflate": opts.deflate,
        "tls": opts.tls,
        "cases": _split(opts.cases),
        "exclude": _split(opts.exclude),
        "run": 0,
        "graded": 0,
        "deadline_hit": False,
        "passed": False,
    }
    agent = opts.agent or opts.client
    if opts.client == "nhlink":
        try:
            out["implementation"] = nhlink_implementation()
            import nhlink.transport.ws  # noqa: F401  (fail here, not once per case)
        except ImportError as exc:
            print(f"[autobahn] cannot import nhlink.transport.ws: {exc}", file=sys.stderr)
            return 2
        agent = opts.agent or f"nhlink-{out['implementation']}"
    if opts.deflate and not opts.agent:
        agent += "-deflate"
    if opts.tls and not opts.agent:
        agent += "-tls"
    out["agent"] = agent
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", agent):
        print(f"[autobahn] agent name {agent!r}: use letters, digits, '_', '.', '-'")
        return 2
    if not opts.python27.exists():
        print(
            f"[autobahn] no suite Python at {opts.python27}: run scripts/autobahn/setup.sh first",
            file=sys.stderr,
        )
        return 2

    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="nhlink-autobahn-"))
    proc: subprocess.Popen[bytes] | None = None
    log_path = tmp / "server.log"
    status = 2
    try:
        port = free_port()
        scheme = "wss" if opts.tls else "ws"
        spec: dict[str, Any] = {
            "url": f"{scheme}://{LOOPBACK}:{port}",
            "outdir": str(tmp / "reports"),
            "cases": out["cases"],
            "exclude-cases": out["exclude"],
            "exclude-agent-cases": {},
        }
        tls: ssl.SSLContext | None = None
        if opts.tls:
            tls = make_tls(tmp / "pki", spec)
        spec_path = tmp / "fuzzingserver.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(opts.python27), "-u", str(LAUNCHER), str(spec_path)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole below
            )
        wait_for_port(port, proc, timeout=60)
        out["listening"] = check_loopback_only(proc.pid)
        print(f"[autobahn] server pid {proc.pid} on {', '.join(out['listening'])}", flush=True)
        asyncio.run(run_cases(f"{scheme}://{LOOPBACK}:{port}", agent, client, opts, out, tls))
        grade(tmp / "reports" / "index.json", agent, out)
        # Re-check at the end: nothing opened later may listen beyond loopback either.
        check_loopback_only(proc.pid)
        out["passed"] = (
            not out["failed"] and out["graded"] == out["run"] > 0 and not out["deadline_hit"]
        )
        status = 0 if out["passed"] else 1
    except HarnessError as exc:
        out["error"] = str(exc)
    except KeyboardInterrupt:
        out["error"] = "interrupted"
        status = 130
    finally:
        if proc is not None:
            stop_server(proc)
        signal.signal(signal.SIGTERM, old_term)
        out["wall_seconds"] = round(time.monotonic() - started, 2)
        if out.get("error") and log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            print("[autobahn] server log (tail):\n  " + "\n  ".join(tail), file=sys.stderr)
        if opts.reports is not None and (tmp / "reports").exists():
            shutil.rmtree(opts.reports, ignore_errors=True)
            shutil.copytree(tmp / "reports", opts.reports)
        shutil.rmtree(tmp, ignore_errors=True)
        print_summary(out)
        if opts.json is not None:
            opts.json.parent.mkdir(parents=True, exist_ok=True)
            opts.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
