"""``python -m nhlink.testing``: serve a FakeHub on 127.0.0.1 until Ctrl-C.

Example::

    python -m nhlink.testing --port 4000 --product-key nhp_demo --product-secret s3cr3t

prints the device socket URL and the control endpoint, then serves. Without credentials a
random product key/secret pair is generated and printed (they are throw-away test values).
``--tls-dir DIR`` creates a test PKI there (needs ``cryptography``) and serves ``wss`` with
optional client certificates (mTLS): TLS 1.2 only, as the server by default; ``--tls13`` also
offers TLS 1.3 (the server's ``DEVICE_ENABLE_TLS_13``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from collections.abc import Sequence

from nhlink.testing._hub import KNOWN_EXTENSIONS, FakeHub

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nhlink.testing",
        description="Serve a NervesHub-compatible FakeHub on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=4000, help="TCP port (0: any free port)")
    parser.add_argument("--product-key", help="product key (nhp_...) accepted for any identifier")
    parser.add_argument("--product-secret", help="secret of --product-key")
    parser.add_argument(
        "--device-key",
        nargs=3,
        action="append",
        default=[],
        metavar=("KEY", "SECRET", "IDENTIFIER"),
        help="a device key bound to one identifier (repeatable)",
    )
    parser.add_argument(
        "--extensions",
        default="",
        help=f"comma-separated extensions enabled on the product ({', '.join(KNOWN_EXTENSIONS)})",
    )
    parser.add_argument("--max-age", type=float, default=90, help="token max age, s (90)")
    parser.add_argument("--idle-timeout", type=float, default=180, help="idle timeout, s (180)")
    parser.add_argument("--health-interval", type=float, default=3600, help="s between checks")
    parser.add_argument("--tls-dir", help="create a test PKI here and serve wss (mTLS optional)")
    parser.add_argument(
        "--tls13", action="store_true", help="with --tls-dir: offer TLS 1.3 too (default 1.2 only)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


async def _serve(args: argparse.Namespace, product: tuple[str, str] | None) -> None:
    tls = None
    if args.tls_dir:
        from nhlink.testing.certs import create_pki

        pki = create_pki(args.tls_dir)
        tls = pki.server_context(tls13=args.tls13)
        print(f"CA certificate (trust it; sign device certs with it): {pki.ca.cert}")
    hub = FakeHub(
        port=args.port,
        tls=tls,
        shared_secrets=dict([product]) if product else None,
        device_keys={key: (secret, ident) for key, secret, ident in args.device_key},
        max_age=args.max_age,
        idle_timeout=args.idle_timeout,
        health_interval=args.health_interval,
        extensions=[e.strip() for e in args.extensions.split(",") if e.strip()],
    )
    async with hub:
        print(f"FakeHub device socket: {hub.url}")
        print(f"control API:           {hub.http_url}/_fakehub/devices")
        print("Press Ctrl-C to stop.", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.product_key) != bool(args.product_secret):
        parser.error("--product-key and --product-secret go together")
    product: tuple[str, str] | None = None
    if args.product_key:
        product = (args.product_key, args.product_secret)
    elif not args.device_key and not args.tls_dir:
        product = ("nhp_" + secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        print(f"generated product key:    {product[0]}")
        print(f"generated product secret: {product[1]}")
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args, product))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # configuration errors, port in use, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
