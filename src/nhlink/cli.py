"""The ``nhlink`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, _core


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nhlink", description="NervesHub device client")
    parser.add_argument("--version", action="store_true", help="print version and core, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="a whole OTA update against the built-in test server")
    demo.add_argument("--size", type=int, default=16, metavar="MIB", help="image size (MiB)")
    demo.add_argument("--workdir", help="where to put the image and state (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        print(f"nhlink {__version__} (core: {_core.IMPLEMENTATION})")
        return 0
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.size, args.workdir)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
