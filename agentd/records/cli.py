"""`agentd calls list | show REF | export`: read the call records.

The database is `--db PATH`, else `records.database` of `-c CONFIG`, else the default
($STATE_DIRECTORY/calls.db or /var/lib/agentd/calls.db). Caller numbers are personal data:
every output masks them (all but the last two characters) unless `--show-caller`.
Exit codes: 0 done; 1 no such call; 2 bad usage or no readable records.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agentd.records.model import LATENCY_FIELDS, OUTCOMES, CallRecord, RecordError, ToolCall
from agentd.records.store import CallStore, default_database_path

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_UNMASKED = {"unknown", "anonymous", "restricted", "private", "-"}
_LATENCY_LABELS = {
    "eos_detect_ms": "end of turn",
    "asr_final_ms": "asr",
    "llm_first_token_ms": "llm first token",
    "tts_first_chunk_ms": "tts first chunk",
    "first_rtp_ms": "first rtp",
    "first_content_ms": "first words",
    "response_ms": "response",
}
assert set(_LATENCY_LABELS) == set(LATENCY_FIELDS)


def add_calls_parser(commands: Any) -> None:
    """Register the `calls` sub-command on the top-level sub-parsers object."""
    calls = commands.add_parser("calls", help="list, show and export call records")
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_mutually_exclusive_group()
    source.add_argument("--db", default=None, help="call records file (SQLite)")
    source.add_argument(
        "-c", "--config", default=None, help="config.yaml whose records.database to read"
    )
    common.add_argument("--show-caller", action="store_true", help="print caller numbers unmasked")
    actions = calls.add_subparsers(dest="calls_command", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="recent calls, newest first")
    listing.add_argument("-n", "--limit", type=int, default=50, help="how many (default 50)")
    listing.add_argument(
        "--since", default=None, help="from this time: 2024-05-01[T09:00], 7d, 12h"
    )
    listing.add_argument("--outcome", choices=OUTCOMES, default=None, help="only this outcome")
    show = actions.add_parser("show", parents=[common], help="one call's transcript and timings")
    show.add_argument("ref", metavar="REF", help="call reference (from `agentd calls list`)")
    export = actions.add_parser("export", parents=[common], help="every call as JSON lines")
    export.add_argument("--since", default=None, help="from this time: 2024-05-01[T09:00], 7d, 12h")
    export.add_argument("-o", "--output", default=None, help="file to write (default stdout)")


def parse_since(text: str, now: float) -> float:
    """`7d`, `12h`, `30m`, `90s`, `2w` before `now`, or an ISO date/time (local time
    unless it carries an offset). Raises ValueError."""
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: give e.g. 2024-05-01, 2024-05-01T09:00 or 7d"
        ) from None
    return moment.timestamp()


def mask_caller(caller: str | None) -> str:
    """All but the last two characters hidden: "+4930123456" -> "*********56"."""
    if not caller:
        return "-"
    if caller.lower() in _UNMASKED:
        return caller
    visible = 2 if len(caller) > 4 else 0
    return "*" * (len(caller) - visible) + caller[len(caller) - visible :]


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _offset(at: float | None, start: float) -> str:
    if at is None:
        return "   -   "
    seconds = max(0.0, at - start)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _open_store(args: argparse.Namespace) -> CallStore | None:
    path: Path
    if args.db:
        path = Path(args.db)
    elif args.config:
        from agentd.config import ConfigError, load_config

        try:
            path = load_config(args.config).records.database_path
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return None
    else:
        path = default_database_path()
    try:
        return CallStore(path, create=False)
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_calls_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    command = getattr(args, "calls_command", None)
    if command is None:
        print("usage: agentd calls {list,show,export} ...", file=sys.stderr)
        return EXIT_USAGE
    since: float | None = None
    if getattr(args, "since", None):
        try:
            since = parse_since(args.since, time.time())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    store = _open_store(args)
    if store is None:
        return EXIT_USAGE
    try:
        with store:
            if command == "list":
                return _list(store, args, since, out)
            if command == "show":
                return _show(store, args, out)
            return _export(store, args, since, out)
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _caller(record: CallRecord, show: bool) -> str:
    return (record.caller or "-") if show else mask_caller(record.caller)


def _list(store: CallStore, args: argparse.Namespace, since: float | None, out: TextIO) -> int:
    records = store.list(limit=args.limit, since=since, outcome=args.outcome)
    rows = [("REF", "STARTED", "CALLER", "DURATION", "OUTCOME", "TURNS", "TRANSFER")]
    for r in records:
        rows.append(
            (
                r.ref,
                _when(r.ringing_at),
                _caller(r, args.show_caller),
                _duration(r.duration),
                r.outcome or "in progress",
                str(r.turn_count),
                r.transfer_target or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(records)} call(s) in {store.path}", file=out)
    return EXIT_OK


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_line(call: ToolCall) -> str:
    outcome = "ok" if call.ok else f"FAILED: {call.error or 'error'}"
    result = f" {_compact(call.result)}" if call.ok and call.result is not None else ""
    return (
        f"tool {call.name} {_compact(call.arguments)} -> {outcome} "
        f"({call.latency_ms:.0f} ms){result}"
    )


def _latency_line(latency: Mapping[str, float | None]) -> str:
    parts = [
        f"{_LATENCY_LABELS[name]} {value:.0f} ms"
        for name, value in latency.items()
        if value is not None
    ]
    return "latency: " + ", ".join(parts) if parts else ""


def _show(store: CallStore, args: argparse.Namespace, out: TextIO) -> int:
    record = store.get(args.ref)
    if record is None:
        print(f"error: no call {args.ref!r} in {store.path}", file=sys.stderr)
        return EXIT_NOT_FOUND
    w = out.write
    w(f"Call {record.ref}  (SIP Call-ID {record.call_id or '-'})\n")
    w(f"Caller:    {_caller(record, args.show_caller)}\n")
    w(f"Rang:      {_when(record.ringing_at)}\n")
    w(f"Answered:  {_when(record.answered_at)}\n")
    w(f"Ended:     {_when(record.ended_at)}  (duration {_duration(record.duration)})\n")
    outcome: str = record.outcome or "in progress"
    if record.transfer_target:
        outcome += f" to {record.transfer_target}"
        if record.transfer_reason:
            outcome += f" ({record.transfer_reason})"
    w(f"Outcome:   {outcome}\n")
    if record.end_reason:
        w(f"End:       {record.end_reason}\n")
    if record.recording_path:
        w(f"Recording: {record.recording_path}\n")
    w(f"\nTranscript ({len(record.turns)} turns; times from when the call rang):\n")
    tools_by_turn: dict[int | None, list[ToolCall]] = {}
    for call in record.tool_calls:
        tools_by_turn.setdefault(call.turn, []).append(call)
    indent = " " * 12
    for turn in record.turns:
        mark = "  [interrupted]" if turn.interrupted else ""
        w(
            f"  {_offset(turn.started_at, record.ringing_at):>8}  {turn.speaker:<7} "
            f"{turn.text}{mark}\n"
        )
        for call in tools_by_turn.pop(turn.index, []):
            w(f"{indent}{_tool_line(call)}\n")
        latency = _latency_line(turn.latency.as_dict())
        if latency:
            w(f"{indent}{latency}\n")
    leftover = [call for calls in tools_by_turn.values() for call in calls]
    if leftover:
        w("\nTool calls not tied to a turn:\n")
        for call in leftover:
            w(f"  {_tool_line(call)}\n")
    handoff = record.handoff
    if handoff:
        w("\nHand-off:\n")
        if handoff.get("summary"):
            w(f"  summary: {handoff['summary']}\n")
        if handoff.get("reason"):
            w(f"  reason:  {handoff['reason']}\n")
        if handoff.get("facts"):
            w(f"  facts:   {_compact(handoff['facts'], 400)}\n")
    return EXIT_OK


def _masked_json(record: CallRecord, show_caller: bool) -> dict[str, Any]:
    data = record.to_json()
    if not show_caller:
        data["caller"] = mask_caller(record.caller)
        if isinstance(data.get("handoff"), dict) and data["handoff"].get("caller_id"):
            data["handoff"] = {
                **data["handoff"],
                "caller_id": mask_caller(data["handoff"]["caller_id"]),
            }
    return data


def _export(store: CallStore, args: argparse.Namespace, since: float | None, out: TextIO) -> int:
    def write(fp: TextIO) -> int:
        count = 0
        for record in store.iter_calls(since):
            fp.write(
                json.dumps(_masked_json(record, args.show_caller), ensure_ascii=False, default=str)
                + "\n"
            )
            count += 1
        return count

    if args.output:
        # The export holds transcripts: private to the user who runs it, like the database.
        path = Path(args.output)
        with open(path, "w", encoding="utf-8", opener=_private_opener) as fp:
            count = write(fp)
        print(f"exported {count} call(s) to {path}", file=sys.stderr)
    else:
        write(out)
    return EXIT_OK


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
