"""The ``nhlink`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, _core


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nhlink", description="NervesHub device client")
    parser.add_argument("--version", action="store_true", help="print version and core, then exit")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        print(f"nhlink {__version__} (core: {_core.IMPLEMENTATION})")
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
