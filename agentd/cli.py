"""The `agentd` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentd",
        description="On-prem, fully offline AI phone agent (a SIP extension on your PBX).",
    )
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
