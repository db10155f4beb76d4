"""The dialog layer's shared vocabulary: what the LLM decides, what tools return, what a turn
emits to the call loop, and the record a call leaves behind.

The dialog works on text turns only (no audio, no SIP): the call loop feeds it the caller's
final transcript (or DTMF digits) and plays what it says. Everything here is a plain value.
Engines are synchronous (the call loop runs a turn in a worker thread); a turn is a generator
of `DialogEvent`s so speech can start on the first clause while the model is still writing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentd.cancel import CancelToken

JsonDict = dict[str, Any]


# ---- what the model decides each turn -----------------------------------------------------

ActionKind = Literal["none", "tool", "transfer", "end_call"]


@dataclass(frozen=True)
class AgentAction:
    """At most one action per model output, always one the policy declared."""

    kind: ActionKind = "none"
    tool: str | None = None  # kind == "tool": a declared tool name
    arguments: JsonDict = field(default_factory=dict)  # validated against the tool's schema
    target: str | None = None  # kind == "transfer": a declared transfer target name
    reason: str | None = None  # transfer / end_call: short reason (goes to the hand-off)


@dataclass(frozen=True)
class AgentReply:
    say: str
    action: AgentAction = field(default_factory=AgentAction)


# ---- LLM backends ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str


# Set from any thread to stop generation at the next token (barge-in, hang-up).
Cancel = CancelToken


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache (not evaluated again)
    completion_tokens: int
    first_token_ms: float
    total_ms: float


class LlmBackend(Protocol):
    """A chat model whose output is constrained to a JSON schema.

    `generate` returns the complete JSON text; while it runs, `on_say` receives the decoded
    characters of the top-level "say" string as they are produced (the schema puts "say"
    first so speech can start early). Deterministic when the backend was built so
    (temperature 0, fixed seed).
    """

    name: str

    def generate(
        self,
        messages: list[ChatMessage],
        schema: JsonDict,
        *,
        max_tokens: int = 256,
        on_say: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> tuple[str, GenerationStats]: ...

    def prefill(self, messages: list[ChatMessage]) -> None:
        """Evaluate a prompt prefix ahead of time (e.g. while the caller still speaks) so
        the next `generate` with the same prefix only evaluates new tokens. May be a no-op."""


# ---- business tools -------------------------------------------------------------------------


class ToolError(Exception):
    """A tool failed (timeout, HTTP 5xx, bad data): the agent says so and follows the
    policy's failure rule; never crashes the call."""


@dataclass(frozen=True)
class ToolContext:
    caller_id: str | None
    call_ref: str
    now_iso: str  # the call's wall-clock time, ISO 8601 with offset (tools never read clocks)
    facts: Mapping[str, Any]  # facts collected so far (e.g. verified identity)


class Tool(Protocol):
    name: str
    description: str
    parameters: JsonDict  # JSON schema of the arguments (an object schema)
    confirm: bool  # the caller must confirm before it runs

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict: ...


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments: JsonDict
    ok: bool
    result: JsonDict | None
    error: str | None
    latency_ms: float


# ---- what a turn emits to the call loop -----------------------------------------------------


@dataclass(frozen=True)
class Say:
    """Speak this (a clause or sentence); several per turn as the model streams."""

    text: str


@dataclass(frozen=True)
class ToolStarted:
    """A tool is running: the call loop may play a cached filler instead of dead air."""

    name: str
    arguments: JsonDict


@dataclass(frozen=True)
class ToolFinished:
    record: ToolCallRecord


@dataclass(frozen=True)
class TransferRequested:
    """Hand the call to a human: say the hand-off line first, then REFER to `uri`."""

    target: str  # the policy's target name
    uri: str  # SIP URI or extension from the policy
    reason: str
    handoff: HandoffRecord


@dataclass(frozen=True)
class EndCall:
    reason: str


DialogEvent = Say | ToolStarted | ToolFinished | TransferRequested | EndCall


# ---- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptLine:
    speaker: Literal["caller", "agent", "system"]
    text: str
    interrupted: bool = False  # agent speech cut off by the caller (text = what was played)


@dataclass(frozen=True)
class HandoffRecord:
    """What a human (or the CRM) receives when the call is transferred or ends."""

    call_ref: str
    caller_id: str | None
    summary: str
    reason: str | None
    transcript: tuple[TranscriptLine, ...]
    facts: Mapping[str, Any]
    tool_calls: tuple[ToolCallRecord, ...]

    def to_json(self) -> JsonDict:
        return {
            "call_ref": self.call_ref,
            "caller_id": self.caller_id,
            "summary": self.summary,
            "reason": self.reason,
            "transcript": [
                {"speaker": t.speaker, "text": t.text, "interrupted": t.interrupted}
                for t in self.transcript
            ],
            "facts": dict(self.facts),
            "tool_calls": [
                {
                    "name": c.name,
                    "arguments": c.arguments,
                    "ok": c.ok,
                    "result": c.result,
                    "error": c.error,
                    "latency_ms": round(c.latency_ms, 1),
                }
                for c in self.tool_calls
            ],
        }


class DialogSessionProtocol(Protocol):
    """One call's conversation state (the call loop's view)."""

    def greeting(self) -> str: ...

    def turn(
        self, caller_text: str, *, confidence: float | None = None, dtmf: bool = False
    ) -> Iterator[DialogEvent]: ...

    def interrupted(self, played_text: str) -> None:
        """The caller barged in: only `played_text` of the last reply was heard."""

    def silence(self) -> Iterator[DialogEvent]:
        """The caller said nothing for the policy's re-prompt time."""

    def transfer_failed(self, reason: str) -> Iterator[DialogEvent]: ...

    def handoff(self, reason: str | None = None) -> HandoffRecord: ...
