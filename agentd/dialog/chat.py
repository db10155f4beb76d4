"""`agentd chat -c config.yaml`: the operator plays the caller in a terminal.

The agent's lines stream as they are decided, tool calls show with arguments and results,
transfers and the end of the call are shown, and the hand-off record is printed at the end
(JSON with --json). Lines starting with "/" are commands: /dtmf DIGITS, /silence,
/low TEXT (as if heard with ASR confidence 0.2), /handoff, /quit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from agentd.dialog.agent import DialogEngine, DialogSession
from agentd.dialog.prompt import compact_json
from agentd.dialog.types import (
    DialogEvent,
    EndCall,
    HandoffRecord,
    Say,
    ToolFinished,
    ToolStarted,
    TransferRequested,
)

HELP = "Type as the caller. /dtmf 0  /silence  /low TEXT  /handoff  /quit"


def show_event(event: DialogEvent, out: TextIO) -> None:
    if isinstance(event, Say):
        out.write(f"agent> {event.text}\n")
    elif isinstance(event, ToolStarted):
        out.write(f"  [tool] {event.name} {compact_json(event.arguments)}\n")
    elif isinstance(event, ToolFinished):
        record = event.record
        if record.ok:
            out.write(f"  [tool] {record.name} ok ({record.latency_ms:.0f} ms): "
                      f"{_clip(compact_json(record.result), 300)}\n")  # fmt: skip
        else:
            out.write(f"  [tool] {record.name} FAILED: {record.error}\n")
    elif isinstance(event, TransferRequested):
        out.write(f"  [transfer] to {event.target} ({event.uri}): {event.reason}\n")
    elif isinstance(event, EndCall):
        out.write(f"  [end call] {event.reason}\n")
    out.flush()


def show_handoff(record: HandoffRecord, out: TextIO, *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(record.to_json(), indent=2, ensure_ascii=False, default=str) + "\n")
        return
    out.write("\n--- hand-off record ---\n")
    out.write(f"call: {record.call_ref}  caller: {record.caller_id or '-'}\n")
    out.write(f"reason: {record.reason or '-'}\n")
    out.write(f"summary: {record.summary}\n")
    if record.facts:
        out.write(f"facts: {_clip(compact_json(dict(record.facts)), 600)}\n")
    for call in record.tool_calls:
        status = "ok" if call.ok else f"failed: {call.error}"
        out.write(f"tool: {call.name} {compact_json(call.arguments)} -> {status}\n")
    out.write(f"transcript: {len(record.transcript)} lines\n")


def converse(
    session: DialogSession, lines: Iterable[str], out: TextIO, *, prompt: Callable[[], None]
) -> None:
    """Play the conversation: caller lines in, events out, until the call is over."""
    for event in session.opening():
        show_event(event, out)
    if session.finished:
        return
    prompt()
    for raw in lines:
        line = raw.rstrip("\n").strip()
        events: Iterable[DialogEvent]
        if not line:
            prompt()
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/help":
            out.write(HELP + "\n")
            prompt()
            continue
        if line == "/handoff":
            show_handoff(session.handoff(), out, as_json=False)
            prompt()
            continue
        if line == "/silence":
            events = session.silence()
        elif line.startswith("/dtmf"):
            events = session.turn(line[len("/dtmf"):].strip(), dtmf=True)
        elif line.startswith("/low "):
            events = session.turn(line[len("/low "):], confidence=0.2)
        else:
            events = session.turn(line)
        for event in events:
            show_event(event, out)
        if session.finished:
            return
        prompt()


def run_chat(
    config_path: str | Path,
    *,
    caller_id: str | None = None,
    as_json: bool = False,
    now: str | None = None,
    stub_webhooks: bool = False,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    llm: Any = None,
) -> int:
    """Exit status: 0 after the conversation, 2 on a config or model problem."""
    from agentd.config import ConfigError, load_config
    from agentd.dialog.flows import scenario_time, stub_webhooks_of

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    dialog = config.dialog
    if dialog is None or dialog.policy is None:
        err.write(f"{config_path}: no dialog: section with a policy\n")
        return 2
    policy = dialog.policy
    clock: Callable[[], datetime]
    if now is not None:
        try:
            fixed = scenario_time(now, date.today(), policy.agent.timezone)
        except ValueError as exc:
            err.write(f"--now: {exc}\n")
            return 2
        clock = _FrozenThenRunning(fixed)
    else:
        clock = _utc_now
    try:
        engine = DialogEngine.from_config(dialog, llm=llm, now=clock)
    except Exception as exc:  # missing model or database, llama-cpp absent, bad server
        err.write(f"cannot start the agent: {exc}\n")
        return 2
    if stub_webhooks:
        stub_webhooks_of(policy, engine.tools)
        engine.handoff_poster = None
    interactive = stdin.isatty()
    session = engine.new_session(caller_id=caller_id)
    chat_out = err if as_json else out  # --json: stdout carries only the record

    def prompt() -> None:
        if interactive:
            chat_out.write("you> ")
            chat_out.flush()

    if interactive:
        chat_out.write(HELP + "\n")
    try:
        converse(session, stdin, chat_out, prompt=prompt)
    except KeyboardInterrupt:
        out.write("\n")
    show_handoff(session.handoff(session.ended or _transfer_reason(session)), out, as_json=as_json)
    return 0


def _transfer_reason(session: DialogSession) -> str | None:
    return f"transferred to {session.transferred_to}" if session.transferred_to else None


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _FrozenThenRunning:
    """`--now`: the call starts at the given moment and time runs on from there."""

    def __init__(self, start: datetime) -> None:
        self._offset = start - _utc_now()

    def __call__(self) -> datetime:
        return _utc_now() + self._offset


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def add_chat_parser(commands: Any) -> None:
    chat = commands.add_parser("chat", help="talk to the agent in a terminal (you are the caller)")
    chat.add_argument("-c", "--config", required=True, help="path to config.yaml")
    chat.add_argument("--caller-id", default=None, help="caller ID the agent sees")
    chat.add_argument("--json", action="store_true", help="print the hand-off record as JSON")
    chat.add_argument(
        "--now", default=None, help="start the call at this time: 'monday 10:00' or ISO 8601"
    )
    chat.add_argument(
        "--stub-webhooks", action="store_true", help="answer webhook tools with a stub"
    )


def run_chat_command(args: Any) -> int:
    return run_chat(
        args.config,
        caller_id=args.caller_id,
        as_json=args.json,
        now=args.now,
        stub_webhooks=args.stub_webhooks,
    )
