"""The system prompt built once from the policy, and the chat messages of each turn.

The system prompt never changes during a call (nothing time-varying goes in it), so the
backend's KV cache keeps it and a turn only evaluates the new messages. The conversation is
replayed as: caller lines as user messages, the agent's own replies as the compact JSON it
wrote, and tool results as compact JSON lines in tool messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentd.dialog.types import AgentReply, ChatMessage, JsonDict, Tool

KEYPAD_PREFIX = "[keypad]"


def target_label(name: str) -> str:
    """How a transfer target is spoken: ``front_desk`` -> ``front desk``."""
    return name.replace("_", " ").replace("-", " ").strip()


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _argument_list(parameters: Mapping[str, Any]) -> str:
    properties: Mapping[str, Any] = parameters.get("properties") or {}
    required = set(parameters.get("required") or ())
    parts = []
    for name, schema in properties.items():
        kind = schema.get("type", "value") if isinstance(schema, Mapping) else "value"
        if isinstance(schema, Mapping) and "enum" in schema:
            kind = "|".join(str(v) for v in schema["enum"])
        parts.append(f"{name}: {kind}" + ("" if name in required else " (optional)"))
    return ", ".join(parts)


@dataclass(frozen=True)
class ToolLine:
    """What the prompt says about one tool."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    confirm: bool
    requires: tuple[str, ...]


def system_prompt(
    policy: Any, tools: Sequence[ToolLine], targets: Sequence[str], reserved_topics: Sequence[str]
) -> str:
    """The fixed instructions for one policy (`policy` follows the policy file's shape)."""
    agent = policy.agent
    lines = [
        f"You are {agent.name}, answering the phone for {agent.organisation}. "
        f"Be {agent.persona}. Speak {_language(agent.language)}.",
        "You are on a live phone call. Each reply is one JSON object: "
        '{"say": words to speak, "action": what to do}.',
        "",
        "RULES",
        "- Keep say short: one or two spoken sentences, no lists, no symbols, no markdown.",
        "- Only give facts from KNOWLEDGE or from tool messages. Never invent free times, "
        "appointments, orders, prices or results, and never say something was checked, "
        "booked, moved, changed or sent unless a tool message in this call says so.",
        "- As soon as the caller has given what a tool needs, call it in that same reply with "
        'say "One moment." - do not ask them to wait and do not answer for the tool.',
        "- Ask for one missing detail at a time. Never make up a name, date, number or id "
        "for a tool: use only what the caller or a tool message said.",
        "- To call a tool: "
        '{"say": "One moment.", "action": {"type": "tool", "name": ..., "arguments": {...}}}. '
        "Its result comes back as a tool message; then tell the caller the outcome.",
        "- A tool marked CONFIRM makes a change: in say, state the exact change as a yes/no "
        "question and call the tool in the same reply. It runs only after the caller says yes.",
        "- A tool marked NEEDS runs only after the named tool has succeeded in this call.",
    ]
    if targets:
        lines.append(
            "- Transfer the caller ({\"type\": \"transfer\", \"target\": ..., \"reason\": ...}) "
            "when they ask for a person, when you cannot help, or when they raise a topic staff "
            "handle. Leave say empty when you transfer. Targets: "
            + ", ".join(targets)
            + "."
        )
    if reserved_topics:
        lines.append("- Topics staff handle (always transfer): " + ", ".join(reserved_topics) + ".")
    if agent.never_say:
        lines.append(
            "- Never give or mention: " + ", ".join(agent.never_say) + ". Offer a transfer instead."
        )
    lines += [
        '- End the call ({"type": "end_call", "reason": ...}) only when the caller has nothing '
        "more (they say goodbye or that is all).",
        '- Otherwise the action is {"type": "none"}.',
        f"- Keypad presses arrive as {KEYPAD_PREFIX} followed by the digits.",
    ]
    knowledge = list(getattr(policy, "knowledge", None) or ())
    if knowledge:
        lines += ["", "KNOWLEDGE"]
        lines += [f"- {item.topic}: {item.answer}" for item in knowledge]
    # Tasks come before the tool list: a small model that reads a task's steps ("first ask
    # for ...") before the tools follows them instead of calling the first tool whose
    # argument (a day) the caller happened to mention.
    flows: Mapping[str, Any] = getattr(policy, "flows", None) or {}
    if flows:
        lines += ["", "TASKS (when the caller asks for one of these, follow its steps in order)"]
        for name, flow in flows.items():
            lines.append(f"{name}: {flow.goal}")
            collect = list(getattr(flow, "collect", None) or ())
            if collect:
                lines.append("  Collect: " + ", ".join(c.replace("_", " ") for c in collect) + ".")
            for i, step in enumerate(flow.steps, 1):
                lines.append(f"  {i}. {step}")
    if tools:
        lines += ["", "TOOLS (call them; never guess their results)"]
        for tool in tools:
            marks = []
            if tool.confirm:
                marks.append("CONFIRM")
            if tool.requires:
                marks.append("NEEDS " + ", ".join(tool.requires))
            mark = f" [{'; '.join(marks)}]" if marks else ""
            lines.append(
                f"- {tool.name}({_argument_list(tool.parameters)}){mark}: {tool.description}"
            )
    if tools:
        lines += ["", "EXAMPLES"]
        lines += [_example(tool) for tool in list(tools)[:3]]
        lines.append(
            'When the caller says goodbye or that is all: '
            '{"say": "", "action": {"type": "end_call", "reason": "caller finished"}}'
        )
    return "\n".join(lines)


def _example(tool: ToolLine) -> str:
    """One worked tool call, introduced by what the caller said ("When the caller has said
    their name and date of birth:"); ids come from tool messages; a CONFIRM tool's say is the
    yes/no question. A small model copies these closely, so they name concrete things."""
    said: list[str] = []
    chosen: list[str] = []
    values = []
    for name in tool.parameters.get("required") or ():
        label = name.replace("_", " ")
        if name.endswith("_id"):
            chosen.append(label[: -len(" id")])
            values.append(f'"{name}": <{label} from a tool message>')
        else:
            said.append(label)
            values.append(f'"{name}": <{label} from the caller>')
    parts = []
    if chosen:
        parts.append("chosen the " + " and the ".join(chosen))
    if said:
        parts.append("said the " + " and the ".join(said))
    when = "has " + " and ".join(parts) if parts else f"wants {tool.name.replace('_', ' ')}"
    say = "Shall I <the exact change>?" if tool.confirm else "One moment."
    return (
        f"When the caller {when}: "
        f'{{"say": "{say}", "action": {{"type": "tool", "name": "{tool.name}", '
        f'"arguments": {{{", ".join(values)}}}}}}}'
    )


def _language(code: str) -> str:
    names = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "nl": "Dutch", "pt": "Portuguese", "ko": "Korean"}  # fmt: skip
    return names.get(code.split("-")[0].lower(), code)


# ---- the conversation -----------------------------------------------------------------------

EntryKind = Literal["caller", "agent", "tool"]


@dataclass(frozen=True)
class HistoryEntry:
    """One message of the conversation as the model will see it."""

    kind: EntryKind
    content: str


def caller_entry(text: str, *, dtmf: bool = False) -> HistoryEntry:
    return HistoryEntry("caller", f"{KEYPAD_PREFIX} {text}" if dtmf else text)


def agent_entry(reply: AgentReply) -> HistoryEntry:
    """The agent's reply in the JSON form the model writes (so it keeps to that form)."""
    action = reply.action
    data: JsonDict
    if action.kind == "tool":
        data = {"type": "tool", "name": action.tool, "arguments": action.arguments}
    elif action.kind == "transfer":
        data = {"type": "transfer", "target": action.target, "reason": action.reason or ""}
    elif action.kind == "end_call":
        data = {"type": "end_call", "reason": action.reason or ""}
    else:
        data = {"type": "none"}
    return HistoryEntry("agent", compact_json({"say": reply.say, "action": data}))


def tool_entry(
    name: str, *, ok: bool, result: Any = None, error: str | None = None
) -> HistoryEntry:
    payload: JsonDict = {"tool": name, "ok": ok}
    if ok:
        payload["result"] = result
    else:
        payload["error"] = error
    return HistoryEntry("tool", compact_json(payload))


_ROLE = {"caller": "user", "agent": "assistant", "tool": "tool"}


def build_messages(
    system: str, history: Sequence[HistoryEntry], *, max_chars: int | None = None
) -> list[ChatMessage]:
    """System prompt + conversation; when over `max_chars`, the oldest half of the
    conversation is dropped at a caller message (rarely, so the cached prefix mostly holds)."""
    entries = list(history)
    if max_chars is not None:
        while len(entries) > 2 and len(system) + sum(len(e.content) for e in entries) > max_chars:
            cut = len(entries) // 2
            while cut < len(entries) - 1 and entries[cut].kind != "caller":
                cut += 1
            entries = entries[cut:]
    messages = [ChatMessage("system", system)]
    messages += [ChatMessage(_ROLE[e.kind], e.content) for e in entries]  # type: ignore[arg-type]
    return messages


def tool_lines(tools: Mapping[str, Tool], requires: Mapping[str, Sequence[str]]) -> list[ToolLine]:
    return [
        ToolLine(
            name=name,
            description=tool.description,
            parameters=tool.parameters,
            confirm=tool.confirm,
            requires=tuple(requires.get(name, ())),
        )
        for name, tool in tools.items()
    ]
