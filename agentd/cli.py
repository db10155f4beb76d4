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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="register with the PBX and answer calls")
    run.add_argument("-c", "--config", required=True, help="path to config.yaml")
    commands.add_parser("config-reference", help="print every config key as a Markdown table")
    from agentd.service.cli import add_service_parsers

    add_service_parsers(commands)
    from agentd.models.cli import add_models_parser

    add_models_parser(commands)
    from agentd.dialog.chat import add_chat_parser
    from agentd.dialog.flows import add_test_flows_parser

    add_chat_parser(commands)
    add_test_flows_parser(commands)
    from agentd.records.cli import add_calls_parser

    add_calls_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "config-reference":
        from agentd.config import render_config_reference

        print(render_config_reference())
        return 0
    if args.command == "run":
        from agentd.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        from agentd.daemon import run as run_daemon

        return run_daemon(config, args.config)
    if args.command in ("check", "reload"):
        from agentd.service.cli import run_service_command

        return run_service_command(args)
    if args.command == "models":
        from agentd.models.cli import run_models_command

        return run_models_command(args)
    if args.command == "chat":
        from agentd.dialog.chat import run_chat_command

        return run_chat_command(args)
    if args.command == "test-flows":
        from agentd.dialog.flows import run_test_flows_command

        return run_test_flows_command(args)
    if args.command == "calls":
        from agentd.records.cli import run_calls_command

        return run_calls_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
