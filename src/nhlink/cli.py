"""The ``nhlink`` command: the agent (``run``), the tools around it, and the demo.

Exit status: 0 success, 1 failure (the server refused, an install failed, no agent...),
2 a bad configuration or command line (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, _core

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _default_config() -> str:
    return os.environ.get("NHLINK_CONFIG", "/etc/nhlink/nhlink.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nhlink", description="NervesHub device client")
    parser.add_argument("--version", action="store_true", help="print version and core, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            default=_default_config(),
            help="configuration file (default: $NHLINK_CONFIG or /etc/nhlink/nhlink.toml)",
        )
        return p

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(p)
        p.add_argument("--socket", help="the agent's control socket (default: from the config)")
        return p

    run = with_config(sub.add_parser("run", help="run the device agent (systemd: Type=notify)"))
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    status = with_socket(sub.add_parser("status", help="what the running agent is doing"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("device", nargs="?", help="one device (default: all)")

    confirm = with_socket(
        sub.add_parser("confirm", help="mark the running firmware valid (fwup_confirm)")
    )
    confirm.add_argument("device", nargs="?", help="one device (default: all)")

    reconnect = with_socket(sub.add_parser("reconnect", help="reconnect now (reset the backoff)"))
    reconnect.add_argument("device", nargs="?", help="one device (default: all)")

    check = with_config(
        sub.add_parser("check", help="validate the config, then try DNS, TLS and NH1/mTLS once")
    )
    check.add_argument("device", nargs="?", help="one device (default: all)")
    check.add_argument(
        "--join",
        action="store_true",
        help="also join the device channel (a running agent with this identity is "
        "disconnected once)",
    )
    check.add_argument("--offline", action="store_true", help="only validate the file")
    check.add_argument("--timeout", type=float, default=15.0, help="seconds per attempt (15)")

    sign = with_config(sub.add_parser("sign", help="print NH1 headers for curl/wscat"))
    sign.add_argument("device", nargs="?", help="the device (default: the only one)")

    install = with_config(
        sub.add_parser("install", help="install an image from a file or URL, verified")
    )
    install.add_argument("source", help="a file path or an http(s) URL")
    install.add_argument("--sha256", help="the image's SHA-256 (hex): required unless --unverified")
    install.add_argument("--unverified", action="store_true", help="install without a checksum")
    install.add_argument("--device", help="whose writer to use (default: the only device)")
    install.add_argument("--reboot", action="store_true", help="run the reboot hook afterwards")

    config = sub.add_parser("config", help="print the example configuration or the unit file")
    config.add_argument(
        "what", choices=["example", "unit"], help="example: nhlink.toml; unit: nhlink.service"
    )

    fleet = sub.add_parser(
        "fleet",
        help="simulate many devices against a hub (load test); 'nhlink fleet --help'",
        add_help=False,
    )
    fleet.add_argument("args", nargs=argparse.REMAINDER)

    token = sub.add_parser(
        "key", help="a device key in a token (TPM via tpm2-pkcs11): make a CSR, test it"
    )
    token_sub = token.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    csr = token_sub.add_parser("csr", help="print a CSR for the token key, signed in the token")
    csr.add_argument("--key", required=True, help="pkcs11: URI of the key (docs/identity.md)")
    csr.add_argument("--cn", required=True, help="the device identifier (certificate CN)")
    csr.add_argument("--out", help="write the CSR here instead of stdout")
    test = token_sub.add_parser(
        "test", help="show the key, and sign with it and verify with the certificate"
    )
    test.add_argument("--key", required=True, help="pkcs11: URI of the key")
    test.add_argument("--cert", required=True, help="the device certificate")

    demo = sub.add_parser("demo", help="a whole OTA update against the built-in test server")
    demo.add_argument("--size", type=int, default=16, metavar="MIB", help="image size (MiB)")
    demo.add_argument("--workdir", help="where to put the image and state (default: a temp dir)")
    return parser


def _err(message: str) -> None:
    print(f"nhlink: {message}", file=sys.stderr)


def _load(path: str) -> Any:
    from .agent.config import load

    return load(path)


def _socket_path(args: argparse.Namespace) -> Path:
    """The control socket: --socket, else [agent].control_socket (read without validating the
    rest: the secrets need not be available to the operator's shell), else the default."""
    from .agent.config import _runtime_default

    if args.socket:
        return Path(args.socket)
    try:
        doc = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
        value = doc.get("agent", {}).get("control_socket")
        if isinstance(value, str):
            expanded = os.path.expandvars(value)
            if "$" not in expanded:  # ${RUNTIME_DIRECTORY} is set for the service only
                return Path(expanded)
    except (OSError, ValueError, AttributeError):
        pass
    return _runtime_default(os.environ)


def data_file(name: str) -> str:
    from importlib import resources

    return resources.files("nhlink.agent").joinpath("data", name).read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fleet"]:
        # Its own command line (and sub-commands), handed over whole: argparse's REMAINDER
        # does not take options that come first.
        from .fleet.cli import main as fleet_main

        return fleet_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        print(f"nhlink {__version__} (core: {_core.IMPLEMENTATION})")
        return 0
    from .agent.config import AgentConfigError

    try:
        return _COMMANDS[args.command](args)
    except AgentConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


# -- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .agent.logs import configure
    from .agent.runner import Agent, AgentBusy

    config = _load(args.config)  # before anything starts: a bad file exits 2
    configure(args.log_level or config.agent.log_level)

    async def main() -> int:
        agent = Agent(config)
        return await agent.run()

    try:
        return asyncio.run(main())
    except AgentBusy as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        _err(f"cannot start: {exc}")
        return EXIT_FAILURE


def _control(args: argparse.Namespace, command: str, **fields: Any) -> dict[str, Any]:
    from .agent.control import request

    return request(_socket_path(args), command, **fields)


def _ask(args: argparse.Namespace, command: str) -> dict[str, Any] | None:
    """The agent's answer to ``command`` for ``args.device``; None (said on stderr) if none."""
    from .agent.control import ControlError

    try:
        return _control(args, command, device=args.device)
    except ControlError as exc:
        _err(str(exc))
        return None


def cmd_status(args: argparse.Namespace) -> int:
    answer = _ask(args, "status")
    if answer is None:
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    agent = answer["agent"]
    print(f"nhlink {agent['version']} agent, pid {agent['pid']}, since {agent['started_at']}")
    print(f"config {agent['config']}")
    for d in answer["devices"]:
        fw = d["firmware"]
        print()
        print(f"{d['name']}  ({d['identity']} at {d['url']})")
        joined = f", last joined {d['last_joined_at']}" if d["last_joined_at"] else ""
        retry = f", next attempt in {d['next_retry_in']:.1f} s" if d["next_retry_in"] else ""
        print(f"  connection  {d['state']} ({d['joins']} joins{joined}{retry})")
        validated = {True: "validated", False: "NOT validated", None: "validation unknown"}
        state = validated[d["validated"]]
        print(f"  firmware    {fw['product']} {fw['version']} ({fw['uuid']}), {state}")
        if d["update"]:
            u = d["update"]
            pct = f" {u['percent']} %" if u["percent"] is not None else ""
            print(f"  update      {u['version']} ({u['uuid']}): {u['phase']}{pct}")
        elif d["rescheduled"]:
            r = d["rescheduled"]
            print(f"  update      {r['version']} ({r['uuid']}): rescheduled to {r['at']}")
        else:
            print("  update      none in progress")
        print(f"  updates     {d['updates_completed']} completed, {d['updates_failed']} failed")
        if d["last_update_error"]:
            print(f"  last update error  {d['last_update_error']}")
        if d["last_error"]:
            print(f"  last error  {d['last_error']}")
    return 0


def cmd_reconnect(args: argparse.Namespace) -> int:
    answer = _ask(args, "reconnect")
    if answer is None:
        return EXIT_FAILURE
    print("reconnecting: " + ", ".join(answer["reconnected"]))
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    """Through the running agent (it tells the server at once); with no agent running, locally
    (the writer's ``fwup_confirm`` and the state file; the server learns it on the next join)."""
    from .agent.control import ControlError

    try:
        answer = _control(args, "confirm", device=args.device)
    except ControlError as exc:
        if "no nhlink agent is running" not in str(exc):
            _err(str(exc))
            return EXIT_FAILURE
    else:
        print("confirmed: " + ", ".join(answer["confirmed"]))
        return 0
    config = _load(args.config)
    specs = [config.device(args.device)] if args.device else list(config.devices)

    async def confirm_all() -> int:
        from .errors import NHLinkError
        from .link import NervesHubLink
        from .update.writer import as_writer

        for spec in specs:
            writer = as_writer(spec.writer.build()) if spec.writer else None
            os.makedirs(spec.link_options["state_dir"], exist_ok=True)
            link = NervesHubLink(fwup_writer=writer, **spec.link_options)
            try:
                await link.confirm_update()
            except NHLinkError as exc:
                _err(f"{spec.name}: {exc}")
                return EXIT_FAILURE
            print(
                f"confirmed {spec.name} (no agent running: the server learns it at the next join)"
            )
        return 0

    return asyncio.run(confirm_all())


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{config.path}: valid, {len(config.devices)} device(s)")
    if args.offline:
        return 0
    specs = [config.device(args.device)] if args.device else list(config.devices)
    from .agent.check import check_device

    results = [
        asyncio.run(check_device(spec, join=args.join, timeout=args.timeout)) for spec in specs
    ]
    return 0 if all(results) else EXIT_FAILURE


def cmd_sign(args: argparse.Namespace) -> int:
    import time

    from .protocol.auth import SharedSecretSigner

    config = _load(args.config)
    spec = config.device(args.device)
    options = spec.link_options
    if "product_secret" not in options:
        _err(f"{spec.name} authenticates with mTLS (device_cert): there are no NH1 headers")
        return EXIT_FAILURE
    signer = SharedSecretSigner(
        options["product_key"], options["product_secret"], options["identifier"]
    )
    headers = signer.headers(time.time())
    for name, value in headers.items():
        print(f"{name}: {value}")
    https = spec.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    flags = " ".join(f"-H '{k}: {v}'" for k, v in headers.items())
    print(file=sys.stderr)
    print("# valid for about a minute (the server's max age); e.g.:", file=sys.stderr)
    print(
        f"#   curl -i {flags} -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
        f"-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: SGVsbG8sIHdvcmxkIQ==' '{https}'",
        file=sys.stderr,
    )
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .agent.install import Progress, install
    from .agent.lock import LockBusy
    from .errors import NHLinkError

    if not args.sha256 and not args.unverified:
        _err("give --sha256 HEX (e.g. from `sha256sum FILE`), or --unverified to install unchecked")
        return EXIT_CONFIG
    if args.sha256:
        digest = args.sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _err("--sha256 must be 64 hexadecimal digits")
            return EXIT_CONFIG
        args.sha256 = digest
    is_url = args.source.startswith(("http://", "https://"))
    if not is_url and not Path(args.source).is_file():
        _err(f"{args.source}: no such file")
        return EXIT_CONFIG
    config = _load(args.config)
    spec = config.device(args.device)
    progress = Progress()
    try:
        asyncio.run(
            install(spec, config.agent.lock_file, args.source, args.sha256, progress=progress)
        )
    except (NHLinkError, LockBusy, OSError) as exc:
        progress.clear()
        _err(f"install failed: {exc}")
        return EXIT_FAILURE
    if args.reboot and spec.hooks.reboot:
        import subprocess

        return subprocess.call(spec.hooks.reboot)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    name = "nhlink.example.toml" if args.what == "example" else "nhlink.service"
    sys.stdout.write(data_file(name))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.size, args.workdir)


def cmd_key(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .transport import pkcs11

    try:
        key = pkcs11.parse_uri(args.key)
        if args.key_command == "csr":
            pem = pkcs11.make_csr(key, args.cn)
            if args.out:
                Path(args.out).write_bytes(pem)
            else:
                sys.stdout.write(pem.decode())
            return 0
        print(f"key:    {key.engine_uri} (PKCS#11 module {key.module})")
        print(f"OpenSSL: {ssl.OPENSSL_VERSION}, pkcs11 engine")
        print(f"test:   {pkcs11.test_signature(Path(args.cert), key)}")
        return 0
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG


_COMMANDS = {
    "key": cmd_key,
    "run": cmd_run,
    "status": cmd_status,
    "confirm": cmd_confirm,
    "reconnect": cmd_reconnect,
    "check": cmd_check,
    "sign": cmd_sign,
    "install": cmd_install,
    "config": cmd_config,
    "demo": cmd_demo,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
