"""What a call leaves behind, as the store writes and reads it.

The call loop reports through `agentd.call.events.CallObserver`; `RecordsObserver`
(agentd.records.observer) turns those reports into these values for `CallStore`. Times here
are wall-clock seconds since the epoch; latencies are milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # keeps `agentd calls` from importing the dialog (and config) packages
    from agentd.dialog.types import ToolCallRecord

JsonDict = dict[str, Any]
Outcome = Literal["contained", "transferred", "abandoned", "failed"]
Speaker = Literal["caller", "agent", "system"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
SPEAKERS: tuple[Speaker, ...] = get_args(Speaker)


class RecordError(Exception):
    """A record could not be written or read (unknown call, bad value, database error)."""


@dataclass(frozen=True)
class TurnLatency:
    """Where the time went between the caller's last word and the agent's reply (ms).

    Stored as the call loop measured them (see agentd.call.events.TurnRecord); unset when
    not measured or it did not happen.
    """

    eos_detect_ms: float | None = None  # end of caller speech -> end-of-turn decision
    asr_final_ms: float | None = None  # decision -> final transcript ready
    llm_first_token_ms: float | None = None  # -> the model's first token
    tts_first_chunk_ms: float | None = None  # -> first synthesized audio
    first_rtp_ms: float | None = None  # -> first agent audio packet sent
    first_content_ms: float | None = None  # -> first audio of the reply itself (not a filler)
    response_ms: float | None = None  # end of caller speech -> first agent audio

    def as_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


LATENCY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TurnLatency))


@dataclass(frozen=True)
class Turn:
    """One utterance: the caller's final transcript or what the agent played."""

    index: int  # 0, 1, 2 ... within the call, in speaking order
    speaker: Speaker
    text: str
    started_at: float
    ended_at: float | None = None
    interrupted: bool = False  # agent speech cut off by the caller (text = what was played)
    latency: TurnLatency = field(default_factory=TurnLatency)


@dataclass(frozen=True)
class ToolCall:
    """One tool run by the dialog, tied to the turn it ran in."""

    turn: int | None
    name: str
    arguments: JsonDict
    ok: bool
    result: JsonDict | None = None
    error: str | None = None
    latency_ms: float = 0.0

    @classmethod
    def from_record(cls, record: ToolCallRecord, turn: int | None) -> ToolCall:
        return cls(
            turn=turn,
            name=record.name,
            arguments=dict(record.arguments),
            ok=record.ok,
            result=None if record.result is None else dict(record.result),
            error=record.error,
            latency_ms=record.latency_ms,
        )


@dataclass(frozen=True)
class CallEnd:
    """How a call ended. `handoff` is `HandoffRecord.to_json()` (or any JSON object)."""

    outcome: Outcome
    ended_at: float
    reason: str | None = None  # e.g. CallLeg.end_reason: "remote BYE", "transferred"
    transfer_target: str | None = None
    transfer_reason: str | None = None
    handoff: Mapping[str, Any] | None = None


def outcome_for(
    *,
    answered: bool,
    transferred: bool,
    failed: bool,
    caller_turns: int,
    left_unanswered: bool = False,
) -> Outcome:
    """The usual classification: a REFER that succeeded is `transferred`; an error that
    ended the call is `failed`; a caller who hung up before their need was handled is
    `abandoned`: before we answered, before saying anything, or while the agent was still
    answering them (`left_unanswered`: thinking, speaking, or just cut off by them). Calls the
    agent ended, and hang-ups while the agent was idle after answering, are `contained`."""
    if transferred:
        return "transferred"
    if failed:
        return "failed"
    if not answered or caller_turns == 0 or left_unanswered:
        return "abandoned"
    return "contained"


# A caller whose last words are only these (with at least one marker) was closing the call,
# so hanging up over the agent's reply to them is not abandoning it.
_FAREWELL_MARKERS = frozenset({
    "bye", "goodbye", "bye-bye", "byebye", "cheers", "thanks", "thank", "all", "else", "done",
})
_CLOSING_WORDS = _FAREWELL_MARKERS | frozenset({
    "ok", "okay", "great", "perfect", "no", "nope", "that's", "thats", "that", "is", "it",
    "you", "very", "much", "so", "a", "lot", "alright", "right", "nothing", "cool", "good",
    "fine", "have", "nice", "day", "wonderful", "awesome", "then", "oh", "well", "for",
    "your", "help", "lovely", "brilliant", "see", "ya", "thx", "ta", "i'm", "done",
})
_FAREWELL_WORD = re.compile(r"[a-z']+(?:-[a-z']+)*")


def is_farewell(text: str) -> bool:
    """True for a caller's closing line: any "bye", or only thanks/that's-all words
    ("Great, thank you very much.", "No, that's all."); False for a new request."""
    words = _FAREWELL_WORD.findall(text.lower().replace("\u2019", "'"))
    if not words:
        return False
    if any(word in ("bye", "goodbye", "bye-bye", "byebye") for word in words):
        return True
    closing = " ".join(words) in ("that's it", "thats it", "no that's it", "okay that's it")
    return all(word in _CLOSING_WORDS for word in words) and (
        closing or any(word in _FAREWELL_MARKERS for word in words)
    )


@dataclass(frozen=True)
class CallRecord:
    """A call as read back from the store. `list()` leaves turns and tool_calls empty."""

    id: int
    ref: str
    call_id: str
    caller: str | None
    ringing_at: float
    answered_at: float | None
    ended_at: float | None
    outcome: Outcome | None  # None while the call is in progress
    end_reason: str | None
    transfer_target: str | None
    transfer_reason: str | None
    recording_path: str | None
    handoff: JsonDict | None
    turn_count: int
    turns: tuple[Turn, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from ringing to hang-up; None while in progress."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.ringing_at)

    def to_json(self) -> JsonDict:
        return {
            "ref": self.ref,
            "call_id": self.call_id,
            "caller": self.caller,
            "ringing_at": self.ringing_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration,
            "outcome": self.outcome,
            "end_reason": self.end_reason,
            "transfer_target": self.transfer_target,
            "transfer_reason": self.transfer_reason,
            "recording_path": self.recording_path,
            "handoff": self.handoff,
            "turns": [
                {
                    "index": t.index,
                    "speaker": t.speaker,
                    "text": t.text,
                    "started_at": t.started_at,
                    "ended_at": t.ended_at,
                    "interrupted": t.interrupted,
                    "latency": t.latency.as_dict(),
                }
                for t in self.turns
            ],
            "tool_calls": [
                {
                    "turn": c.turn,
                    "name": c.name,
                    "arguments": c.arguments,
                    "ok": c.ok,
                    "result": c.result,
                    "error": c.error,
                    "latency_ms": c.latency_ms,
                }
                for c in self.tool_calls
            ],
        }
