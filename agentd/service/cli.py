"""`agentd check` and `agentd reload`: the service's operator commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

# Where `agentd reload` looks without -c or --pid-file: systemd's RuntimeDirectory=agentd.
DEFAULT_PID_FILE = Path("/run/agentd/agentd.pid")


class ReloadError(RuntimeError):
    """No agentd to signal; the message says why."""


def add_service_parsers(commands: Any) -> None:
    check = commands.add_parser(
        "check", help="check config, models, SIP port and registrar without registering"
    )
    check.add_argument("-c", "--config", required=True, help="path to config.yaml")
    check.add_argument("--timeout", type=float, default=2.0,
                       help="seconds to wait for the registrar's answer to OPTIONS (default 2)")
    check.add_argument("--no-network", action="store_true",
                       help="skip the registrar probe")
    reload = commands.add_parser(
        "reload", help="re-read the config of the running agentd (sends it SIGHUP)"
    )
    reload.add_argument("-c", "--config", help="its config.yaml: validated first, and its "
                        "service.pid_file used")
    reload.add_argument("--pid-file", help=f"pid file to read (default {DEFAULT_PID_FILE})")
    reload.add_argument("--pid", type=int, help="signal this pid")


def run_service_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.command == "check":
        from agentd.service.check import run_checks

        return run_checks(args.config, out, timeout=args.timeout, network=not args.no_network)
    return _reload(args, out)


def _reload(args: argparse.Namespace, out: TextIO) -> int:
    pid_file = Path(args.pid_file) if args.pid_file else None
    if args.config:
        from agentd.config import ConfigError, load_config
        from agentd.service.lifecycle import default_pid_file

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"not reloading: the new config is invalid\n{exc}", file=sys.stderr)
            return 2
        pid_file = pid_file or default_pid_file(config, os.environ)
    try:
        pid = args.pid or read_pid_file(pid_file or DEFAULT_PID_FILE)
        send_reload(pid)
    except ReloadError as exc:
        print(f"agentd reload: {exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to agentd (pid {pid}); its log says whether the config was taken",
          file=out)
    return 0


def read_pid_file(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ReloadError(f"cannot read pid file {path}: {exc.strerror or exc} "
                          "(is agentd running? under systemd use: systemctl reload agentd)"
                          ) from None
    if not text.isdigit() or int(text) <= 1:
        raise ReloadError(f"pid file {path} holds no pid: {text[:40]!r}")
    return int(text)


def send_reload(pid: int) -> None:
    """SIGHUP to `pid`, after making sure it is an agentd (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raise ReloadError(f"no process {pid} (stale pid file?)") from None
    if b"agentd" not in cmdline:
        shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        raise ReloadError(f"process {pid} is not agentd ({shown})")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ReloadError(f"cannot signal {pid}: {exc.strerror or exc}") from None
