#!/usr/bin/env python3
"""Benchmark the local LLM on a scripted 6-turn dental call.

Prints per turn: time to the first generated token (cold on turn 1, warm after), decode
tokens/s, time to the first spoken clause (the say text up to a clause boundary), prompt vs
cached tokens, and the reply. Target: <= 500 ms to first token on warm turns on 2 cores.

    .venv/bin/python tools/bench_dialog.py [--model qwen2.5-coder-1.5b-instruct-q4_k_m]
        [--threads 2] [--no-opening] [--full-mask] [--prefill]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentd.dialog.llm_llama import LlamaBackend  # noqa: E402
from agentd.dialog.schema import ReplyError, parse_reply, turn_schema  # noqa: E402
from agentd.dialog.types import ChatMessage  # noqa: E402
from agentd.models import ModelStore  # noqa: E402

SYSTEM_PROMPT = """\
You are Ava, the receptionist of Bright Smile Dental, answering the phone.
Persona: warm, brief, professional. Speak in one or two short sentences; this is a phone call.
Today is Monday 3 March 2025, 10:12, Europe/London. Opening hours: Monday to Friday, 8 am to 6 pm.
Never give medical advice, a diagnosis or a discount.

Reply with one JSON object: "say" is what you say to the caller now; "action" is one of:
- {"type": "none"}: just talk.
- {"type": "tool", "name": ..., "arguments": {...}}: run a tool; you will see its result next.
- {"type": "transfer", "target": ..., "reason": ...}: hand the caller to a person.
- {"type": "end_call", "reason": ...}: only after saying goodbye.

Tools:
- verify_identity(name, date_of_birth YYYY-MM-DD): check who the caller is. Needed before
  changing an appointment.
- find_slots(day YYYY-MM-DD): free appointment times on a day.
- move_appointment(appointment_id, new_start YYYY-MM-DDTHH:MM): move an appointment. Ask the
  caller to confirm the exact new time first.
Transfer targets: front_desk (staff), billing (invoices, insurance).

Flow "reschedule": verify the caller (name and date of birth), ask which day, call find_slots
and offer at most three times, confirm the exact time, then call move_appointment.
Facts: none yet."""

TOOLS = {
    "verify_identity": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 60},
            "date_of_birth": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        },
        "required": ["name", "date_of_birth"],
    },
    "find_slots": {
        "type": "object",
        "properties": {"day": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}},
        "required": ["day"],
    },
    "move_appointment": {
        "type": "object",
        "properties": {
            "appointment_id": {"type": "string", "maxLength": 20},
            "new_start": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$"},
        },
        "required": ["appointment_id", "new_start"],
    },
}
TARGETS = ["front_desk", "billing"]

# (caller line, tool result shown after the agent's tool call, if it calls one)
SCRIPT = [
    ("Hi, I need to move my appointment, please.", None),
    ("It's Jane Doe, born fourth of July 1985.",
     '{"tool":"verify_identity","ok":true,"result":{"verified":true,"appointment_id":"A-1042",'
     '"current":"2025-03-05T09:00"}}'),
    ("Could I come on Thursday instead?",
     '{"tool":"find_slots","ok":true,"result":{"slots":["09:30","11:00","15:45"]}}'),
    ("Eleven o'clock works.", None),
    ("Yes, that's right.",
     '{"tool":"move_appointment","ok":true,"result":{"moved":true,"start":"2025-03-06T11:00"}}'),
    ("No, that's everything. Thanks, bye!", None),
]
CLAUSE_END = re.compile(r"[,.!?;:](\s|$)")


def model_path(model_id: str) -> Path:
    path = Path(model_id)
    if path.is_file():
        return path
    found = ModelStore().require(model_id)
    found = Path(found)
    return found if found.is_file() else next(found.glob("*.gguf"))


def batch_sizes(llm: LlamaBackend, context: int = 1800, sizes: tuple[int, ...] = (
        1, 2, 4, 8, 12, 16, 24, 32)) -> None:
    """Print the cost of evaluating `n` new tokens at once after `context` cached ones."""
    model = llm._llm  # the raw llama.cpp context: this measures the kernels, not our code
    filler = (SYSTEM_PROMPT + "\n") * 40
    prefix = llm.tokenize(filler)[:context]
    extra = llm.tokenize(" " + " ".join(line for line, _ in SCRIPT))[: max(sizes)]
    model.n_tokens = 0
    model.eval(prefix)
    print(f"{'batch':>5} {'ms':>6} {'ms/token':>8}   (after {len(prefix)} cached tokens)")
    for size in sizes:
        best = float("inf")
        for _ in range(3):
            model.n_tokens = len(prefix)
            started = time.perf_counter()
            model.eval(extra[:size])
            best = min(best, (time.perf_counter() - started) * 1000)
        print(f"{size:>5} {best:>6.0f} {best / size:>8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument(
        "--no-opening", action="store_true", help='do not end the prompt with {"say":"'
    )
    parser.add_argument(
        "--full-mask", action="store_true", help="apply the grammar to the whole vocabulary"
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="prefill each caller line minus its last word before the turn (as while the "
        "caller still speaks)",
    )
    parser.add_argument(
        "--draft", type=int, default=None,
        help="guessed tokens checked per generated token (0: off; default: the backend's)",
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="instead of the call: ms per token of prompt evaluation by batch size, after a "
        "context as long as a live call's (what sizes the prefill steps)",
    )
    args = parser.parse_args()

    path = model_path(args.model)
    started = time.perf_counter()
    llm = LlamaBackend(
        path,
        n_ctx=args.ctx,
        threads=args.threads,
        say_opening=not args.no_opening,
        greedy_grammar_check=not args.full_mask,
    )
    if args.draft is not None:
        llm.draft_tokens = max(0, args.draft)
    print(
        f"model {path.name}: loaded in {time.perf_counter() - started:.1f} s, "
        f"threads={args.threads}, opening={'off' if args.no_opening else 'on'}, "
        f"grammar={'full mask' if args.full_mask else 'greedy check'}, "
        f"draft={llm.draft_tokens}, load now "
        f"{os.getloadavg()[0]:.1f}"
    )
    if args.batches:
        batch_sizes(llm)
        llm.close()
        return 0
    schema = turn_schema(TOOLS, TARGETS)
    messages = [ChatMessage("system", SYSTEM_PROMPT)]
    header = (
        f"{'turn':>4} {'prompt':>6} {'cached':>6} {'new':>4} {'first_tok_ms':>12} "
        f"{'clause_ms':>9} {'gen_tok':>7} {'tok/s':>6} {'fallbk':>6} {'guess':>7} "
        f"{'total_ms':>8}  reply"
    )
    print(header)
    warm_first: list[float] = []
    for turn, (line, tool_result) in enumerate(SCRIPT, start=1):
        if args.prefill:
            partial = line.rsplit(" ", 1)[0]
            llm.prefill([*messages, ChatMessage("user", partial)])
        messages.append(ChatMessage("user", line))
        said: list[str] = []
        clause_at: list[float] = []
        t0 = time.perf_counter()

        def on_say(text: str, said: list[str] = said, clause_at: list[float] = clause_at) -> None:
            said.append(text)
            if not clause_at and CLAUSE_END.search("".join(said) + " "):
                clause_at.append(time.perf_counter())

        text, stats = llm.generate(messages, schema, max_tokens=args.max_tokens, on_say=on_say)
        clause_ms = (clause_at[0] - t0) * 1000 if clause_at else float("nan")
        decode_s = max(1e-6, (stats.total_ms - stats.first_token_ms) / 1000)
        rate = (stats.completion_tokens - 1) / decode_s if stats.completion_tokens > 1 else 0.0
        try:
            reply = parse_reply(text, TOOLS, TARGETS)
            shown = f"{reply.say!r} -> {reply.action.kind}"
            if reply.action.kind == "tool":
                shown += f" {reply.action.tool}({reply.action.arguments})"
            elif reply.action.kind == "transfer":
                shown += f" {reply.action.target}"
        except ReplyError as exc:
            reply, shown = None, f"REFUSED: {exc}"
        print(
            f"{turn:>4} {stats.prompt_tokens:>6} {stats.cached_tokens:>6} "
            f"{stats.prompt_tokens - stats.cached_tokens:>4} {stats.first_token_ms:>12.0f} "
            f"{clause_ms:>9.0f} {stats.completion_tokens:>7} {rate:>6.1f} "
            f"{llm.last_grammar_fallbacks:>6} "
            f"{f'{llm.last_accepted}/{llm.last_drafted}':>7} {stats.total_ms:>8.0f}  {shown}"
        )
        if turn > 1:
            warm_first.append(stats.first_token_ms)
        messages.append(ChatMessage("assistant", text))
        if tool_result is not None and reply is not None and reply.action.kind == "tool":
            messages.append(ChatMessage("tool", tool_result))
    warm_first.sort()
    if warm_first:
        print(
            f"warm turns: first token median {warm_first[len(warm_first) // 2]:.0f} ms, "
            f"max {warm_first[-1]:.0f} ms (target <= 500 ms)"
        )
    llm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
