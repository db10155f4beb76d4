"""What the live call loop reports: per-turn latency records, barge-ins, the call's end.

The records/metrics layer implements `CallObserver`; the call loop only calls it. Times are
seconds of call audio since the call was answered (20 ms per received RTP frame, which the
media clock paces in real time); durations are milliseconds. An observer
must be quick and must not raise (the loop logs and ignores it if it does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agentd.dialog.types import HandoffRecord

log = logging.getLogger("agentd.call")

TurnKind = Literal["greeting", "speech", "dtmf", "silence", "transfer_failed"]


@dataclass(frozen=True)
class TurnRecord:
    """One agent reply and what led to it.

    Latencies run from the true end of the caller's speech (the VAD's refined offset) for a
    speech turn, from the key press for DTMF, and from the reply's start otherwise.
    None: it did not happen (no audio, no content, no final transcript).
    """

    call_ref: str
    index: int  # 0 = greeting, then 1, 2, ...
    kind: TurnKind
    caller_text: str  # final transcript or digits ("" for greeting/silence)
    confidence: float | None
    started_at: float  # the reference instant the latencies count from
    end_of_turn_ms: float | None  # speech end -> end-of-turn decision
    asr_final_ms: float | None  # decision -> final transcript ready
    first_audio_ms: float | None  # -> first agent audio starts to play (a filler counts)
    first_content_ms: float | None  # -> the dialog's own words start to play
    fillers: tuple[str, ...]  # cached fillers played while the reply was slow
    reply_text: str  # what the dialog said (all clauses)
    played_text: str  # what the caller actually heard of it
    interrupted: bool  # the caller barged in
    tools: tuple[str, ...] = ()
    outcome: str = "spoken"  # spoken | interrupted | transfer | end_call | hangup
    # Where the time went (same reference instant as first_audio_ms):
    llm_first_token_ms: float | None = None  # -> the model's first spoken clause (say text)
    tts_first_chunk_ms: float | None = None  # -> its first audio synthesised (or cached)
    first_rtp_ms: float | None = None  # -> the reply's own audio handed to the RTP sender
    #   (it still queues behind an acknowledgement or filler that is playing)


@dataclass(frozen=True)
class BargeInRecord:
    call_ref: str
    at: float  # when the caller's speech was confirmed (loop time)
    stop_ms: float  # confirmation -> agent audio flushed
    resumed: bool  # True: a backchannel or noise; the agent went on
    heard: str  # what the caller said, when known ("" for noise)


@dataclass(frozen=True)
class CallSummary:
    call_ref: str
    caller: str
    started_at: float
    ended_at: float
    end_reason: str  # remote hangup | agent: <reason> | transferred | max call length | ...
    turns: int
    barge_ins: int
    backchannels: int
    transferred_to: str | None  # the policy's target name
    handoff: HandoffRecord | None
    turn_records: tuple[TurnRecord, ...] = field(default=())
    transfer_uri: str | None = None  # where the REFER sent the caller (extension or URI)


class CallObserver(Protocol):
    """Implemented by the records/metrics layer; every method is called on the event loop."""

    def call_started(self, call_ref: str, caller: str, at: float, *, call_id: str = "") -> None:
        ...

    def turn_finished(self, record: TurnRecord) -> None: ...

    def barge_in(self, record: BargeInRecord) -> None: ...

    def call_finished(self, summary: CallSummary) -> None: ...


class NullObserver:
    """Records nothing (the default)."""

    def call_started(self, call_ref: str, caller: str, at: float, *, call_id: str = "") -> None:
        pass

    def turn_finished(self, record: TurnRecord) -> None:
        pass

    def barge_in(self, record: BargeInRecord) -> None:
        pass

    def call_finished(self, summary: CallSummary) -> None:
        pass


class LogObserver(NullObserver):
    """One log line per turn and per call (useful until the records layer exists)."""

    def turn_finished(self, record: TurnRecord) -> None:
        log.info(
            "call %s turn %d (%s): first audio %s ms, first content %s ms%s",
            record.call_ref, record.index, record.kind, _ms(record.first_audio_ms),
            _ms(record.first_content_ms), " (interrupted)" if record.interrupted else "",
        )

    def call_finished(self, summary: CallSummary) -> None:
        log.info("call %s finished: %s after %d turns, %d barge-ins", summary.call_ref,
                 summary.end_reason, summary.turns, summary.barge_ins)


class ObserverFanout:
    """Sends every report to several observers; one that raises is logged and skipped."""

    def __init__(self, observers: Sequence[CallObserver]) -> None:
        self.observers = tuple(observers)

    def _each(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("call observer %s.%s failed", type(observer).__name__, method)

    def call_started(self, call_ref: str, caller: str, at: float, *, call_id: str = "") -> None:
        for observer in self.observers:
            try:
                observer.call_started(call_ref, caller, at, call_id=call_id)
            except Exception:
                log.exception("call observer %s.call_started failed", type(observer).__name__)

    def turn_finished(self, record: TurnRecord) -> None:
        self._each("turn_finished", record)

    def barge_in(self, record: BargeInRecord) -> None:
        self._each("barge_in", record)

    def call_finished(self, summary: CallSummary) -> None:
        self._each("call_finished", summary)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
