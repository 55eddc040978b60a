"""``nhlink fleet``: load-test a NervesHub server with simulated devices.

::

    nhlink fleet --hub wss://hub.example.com/socket/websocket --devices 10000 \\
        --product-key nhp_... --product-secret-file secret.txt --ramp 500/s --duration 10m \\
        --json summary.json
    nhlink fleet merge shard-*.json --json fleet.json
    nhlink fleet make-certs --ca-cert ca.crt --ca-key ca.key --devices 10000 --out certs/

Exit status: 0 done, 1 the run failed (fewer than ``--min-joined`` joined, nothing to merge),
2 a bad command line (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .sim import (
    DEFAULT_FIRMWARE,
    Fleet,
    FleetError,
    FleetOptions,
    check_fd_limit,
    identities,
    merge,
    parse_shard,
    shard_range,
)

__all__ = ["main", "parse_duration", "parse_rate", "parse_speed"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

_RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SPEED_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_rate(text: str) -> float:
    """``500/s``, ``30/min``, ``2/h`` or a plain number (per second)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*([a-z]+))?\s*", text.lower())
    if not match or (match.group(2) and match.group(2) not in _RATE_UNITS):
        raise ValueError(f"expected a rate like 500/s, 30/min or 2/h, not {text!r}")
    return float(match.group(1)) / _RATE_UNITS[match.group(2) or "s"]


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h``: seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"expected a duration like 90s, 10m or 1h, not {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_speed(text: str) -> int:
    """Bytes per second: ``125k`` (decimal), ``1M``, ``2MiB`` (binary); ``/s`` optional."""
    match = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+)\s*(kib|mib|gib|k|m|g)?b?\s*(?:/\s*s)?\s*", text.lower()
    )
    if not match:
        raise ValueError(f"expected a speed like 125k, 1M or 2MiB (bytes/s), not {text!r}")
    return int(float(match.group(1)) * _SPEED_UNITS[match.group(2) or ""])


def _typed(parse: Any, what: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nhlink fleet",
        description="Simulate many NervesHub devices in one process (a server load test). "
        "Also: 'nhlink fleet merge FILE...', 'nhlink fleet make-certs ...' and "
        "'nhlink fleet manifest' (a Kubernetes Indexed Job for shards).",
    )
    parser.add_argument("--hub", required=True, help="device socket URL (ws:// or wss://)")
    parser.add_argument("--devices", type=int, required=True, help="devices in the whole fleet")
    parser.add_argument("--prefix", default="nhlink-sim", help="identities PREFIX-00001...")
    parser.add_argument("--product-key", help="NH1 shared-secret product key")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--product-secret-file", help="file holding the product secret")
    secret.add_argument("--product-secret-env", help="environment variable holding it")
    parser.add_argument("--certs", help="mTLS: DIR with <identity>.crt and <identity>.key")
    parser.add_argument("--ca-file", help="CA of the hub's certificate (wss)")
    parser.add_argument("--ramp", type=_typed(parse_rate, "rate"), help="devices started (200/s)")
    parser.add_argument(
        "--reconnect-rate",
        type=_typed(parse_rate, "rate"),
        help="cap on connection attempts after the ramp (default: the ramp)",
    )
    parser.add_argument("--duration", type=_typed(parse_duration, "duration"), help="10m, 1h...")
    parser.add_argument("--heartbeat", type=float, help="heartbeat interval, s (30)")
    parser.add_argument(
        "--firmware",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="firmware metadata (product, version, uuid, platform, architecture)",
    )
    parser.add_argument("--writer", choices=["null", "hash"], help="what updates go into (null)")
    parser.add_argument("--link-speed", type=_typed(parse_speed, "speed"), help="per device")
    parser.add_argument("--update-failure-rate", type=float, help="probability, 0..1")
    parser.add_argument("--disconnect-rate", type=_typed(parse_rate, "rate"), help="fleet-wide")
    parser.add_argument("--reboot-rate", type=_typed(parse_rate, "rate"), help="fleet-wide")
    parser.add_argument("--scenario", help="a TOML file with any of these options (flags win)")
    parser.add_argument("--shard", help="INDEX/COUNT (INDEX defaults to $JOB_COMPLETION_INDEX)")
    parser.add_argument("--seed", type=int, help="random seed (reproducible events)")
    parser.add_argument("--http-firmware", action="store_true", help="allow http:// firmware")
    parser.add_argument("--json", help="write the summary here ('-': standard output)")
    parser.add_argument(
        "--min-joined",
        type=float,
        default=0.0,
        help="exit 1 unless this fraction of devices was joined at the end (0..1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    return parser


_SCENARIO_KEYS: dict[str, Callable[[Any], Any]] = {
    "ramp": parse_rate,
    "reconnect_rate": parse_rate,
    "duration": parse_duration,
    "heartbeat": float,
    "writer": str,
    "link_speed": parse_speed,
    "update_failure_rate": float,
    "disconnect_rate": parse_rate,
    "reboot_rate": parse_rate,
    "firmware": dict,
    "seed": int,
}


def _scenario(path: str) -> dict[str, Any]:
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("scenario", f"{path}: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in doc.items():
        convert = _SCENARIO_KEYS.get(key)
        if convert is None:
            raise ConfigError("scenario", f"{path}: unknown key {key!r}")
        try:
            if convert in (parse_rate, parse_duration, parse_speed) and not isinstance(value, str):
                value = float(value)
            else:
                value = convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError("scenario", f"{path}: {key}: {exc}") from None
        out[key] = value
    return out


def _secret(args: argparse.Namespace) -> str | None:
    if args.product_secret_file:
        try:
            return Path(args.product_secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("product_secret_file", str(exc)) from None
    if args.product_secret_env:
        value = os.environ.get(args.product_secret_env)
        if not value:
            raise ConfigError("product_secret_env", f"${args.product_secret_env} is not set")
        return value
    return None


def options_from(args: argparse.Namespace) -> FleetOptions:
    scenario = _scenario(args.scenario) if args.scenario else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        if value is not None:
            return value
        return scenario.get(name, default)

    firmware = dict(DEFAULT_FIRMWARE)
    firmware.update({str(k): str(v) for k, v in scenario.get("firmware", {}).items()})
    for item in args.firmware:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("firmware", f"expected KEY=VALUE, not {item!r}")
        firmware[key] = value
    return FleetOptions(
        hub=args.hub,
        devices=args.devices,
        prefix=args.prefix,
        product_key=args.product_key,
        product_secret=_secret(args),
        certs=Path(args.certs) if args.certs else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        ramp=pick("ramp", 200.0),
        reconnect_rate=pick("reconnect_rate", None),
        duration=pick("duration", None),
        heartbeat_interval=pick("heartbeat", 30.0),
        firmware=firmware,
        writer=pick("writer", "null"),
        link_speed=pick("link_speed", None),
        update_failure_rate=pick("update_failure_rate", 0.0),
        disconnect_rate=pick("disconnect_rate", 0.0),
        reboot_rate=pick("reboot_rate", 0.0),
        shard=parse_shard(args.shard),
        seed=pick("seed", None),
        http_firmware=args.http_firmware,
    )


def _progress_line(snap: dict[str, Any], elapsed: float) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    return (
        f"[{elapsed:7.1f}s] joined {snap['joined']:,}/{snap['devices']:,}  "
        f"connected {snap['connected']:,}  waiting {snap['waiting']:,}  "
        f"updating {snap['updating']:,}  failed {snap['failed']:,}  |  "
        f"{snap['join_rate']:,.0f} joins/s  p50 {ms(snap['p50_ms'])}  p99 {ms(snap['p99_ms'])}"
    )


def _human(summary: dict[str, Any]) -> str:
    lat = summary["join_latency"]
    c = summary["counters"]
    lines = [
        f"fleet: {summary['devices']:,} devices ({summary['identities'][0]} .. "
        f"{summary['identities'][1]}) against {summary['hub']}, {summary['wall_s']:.1f} s",
        f"  at the end: {summary['final']['joined']:,} joined, "
        f"{summary['final']['waiting']:,} waiting, {summary['final']['updating']:,} updating",
        f"  joins {c.get('joins', 0):,} (attempts {c.get('connect_attempts', 0):,}), "
        f"disconnects {c.get('disconnects', 0):,}, updates completed "
        f"{c.get('updates_completed', 0):,} / failed {c.get('updates_failed', 0):,}",
        f"  join latency p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, "
        f"max {lat['max_ms']} ms",
        f"  process: {summary['process']['cpu_s']:.1f} CPU s, "
        f"max RSS {summary['process']['max_rss_kib'] / 1024:.1f} MiB",
    ]
    if summary["errors"]:
        lines.append("  errors: " + ", ".join(f"{k} {v:,}" for k, v in summary["errors"].items()))
    return "\n".join(lines)


def _write_json(summary: dict[str, Any], target: str | None) -> None:
    if not target:
        return
    if target == "-":
        # One line: collected with the process's other output (kubectl logs), it is found as
        # the last line that is a JSON object (see _read_summary).
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    else:
        Path(target).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _read_summary(path: str) -> Any:
    """A summary file, or a log (``kubectl logs`` of a shard) whose last JSON line is one."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        raise ValueError(f"{path}: no fleet summary in it") from None


def cmd_run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from(args)
        devices = len(shard_range(options.devices, *options.shard))
        check_fd_limit(devices)
    except (ConfigError, FleetError) as exc:
        print(f"nhlink fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s"
    )
    tty = sys.stderr.isatty()

    async def run() -> dict[str, Any]:
        fleet = Fleet(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, fleet.stop)
        started = time.monotonic()
        last_line = [0.0]

        def progress(snap: dict[str, Any]) -> None:
            now = time.monotonic()
            if tty:
                print("\r" + _progress_line(snap, now - started), end="", file=sys.stderr)
            elif now - last_line[0] >= 10:
                last_line[0] = now
                print(_progress_line(snap, now - started), file=sys.stderr, flush=True)

        try:
            return await fleet.run(None if args.quiet else progress)
        finally:
            if tty and not args.quiet:
                print(file=sys.stderr)

    try:
        summary = asyncio.run(run())
    except (ConfigError, FleetError) as exc:
        print(f"nhlink fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(_human(summary), file=sys.stderr, flush=True)
    _write_json(summary, args.json)
    if summary["final"]["joined"] < args.min_joined * summary["devices"]:
        print(
            f"nhlink fleet: {summary['final']['joined']:,} of {summary['devices']:,} joined, "
            f"fewer than --min-joined {args.min_joined:g}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def cmd_merge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nhlink fleet merge", description="Combine the JSON summaries of fleet shards."
    )
    parser.add_argument(
        "files", nargs="+", help="summaries written with --json (or logs ending in one)"
    )
    parser.add_argument("--json", default="-", help="where to write the result ('-': stdout)")
    args = parser.parse_args(argv)
    try:
        summaries = [_read_summary(f) for f in args.files]
        merged = merge(summaries)
    except (OSError, ValueError, KeyError, TypeError, FleetError) as exc:
        print(f"nhlink fleet merge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    _write_json(merged, args.json)
    if args.json != "-":
        print(_human(merged), file=sys.stderr)
    return 0


def cmd_make_certs(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nhlink fleet make-certs",
        description="Sign a device certificate per identity with a CA (for --certs).",
    )
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--ca-key", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--prefix", default="nhlink-sim")
    parser.add_argument("--shard", help="only this shard's identities (INDEX/COUNT)")
    parser.add_argument("--out", required=True, help="directory for <identity>.crt/.key")
    args = parser.parse_args(argv)
    try:
        from ..testing.certs import CertPair, issue_device_certs
    except ImportError as exc:  # pragma: no cover - cryptography missing
        print(f"nhlink fleet make-certs needs 'cryptography': {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        shard = parse_shard(args.shard)
        names = identities(args.prefix, args.devices, shard_range(args.devices, *shard))
        count = issue_device_certs(
            CertPair(Path(args.ca_cert), Path(args.ca_key)), Path(args.out), names
        )
    except (ConfigError, OSError, ValueError, TypeError) as exc:
        print(f"nhlink fleet make-certs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{count:,} device certificates in {args.out} ({names[0]} .. {names[-1]})")
    return 0


def manifest() -> str:
    """The Kubernetes Indexed Job that runs shards of a fleet (``nhlink fleet manifest``)."""
    from importlib import resources

    return (
        resources.files("nhlink.fleet").joinpath("data", "nhlink-fleet-job.yaml").read_text("utf-8")
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["manifest"]:
        sys.stdout.write(manifest())
        return 0
    if argv[:1] == ["merge"]:
        return cmd_merge(argv[1:])
    if argv[:1] == ["make-certs"]:
        return cmd_make_certs(argv[1:])
    return cmd_run(argv)
