"""The call loop's observer (agentd.call.events.CallObserver) writing call records.

Each `turn_finished` is committed at once (a crash loses at most the turn in flight). One
`TurnRecord` (an agent reply and what led to it) becomes up to two rows: the caller's words
at index 2*i and the agent's reply at 2*i+1. Times arrive on the event loop's clock and are
stored as wall-clock time. Tool calls come from the record's `tool_calls` when the loop
reports them there, else from the hand-off at the call's end (matched to turns by name, in
order). Nothing here raises into the call loop: failures are logged and counted.

Times: the loop reports on its own clock (the call's audio clock, 0.0 at `call_started`;
any clock will do as long as `call_started`'s `at` is "now" on it). Each call is anchored
to the wall clock when `call_started` arrives, and stored as wall-clock time.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.records.model import (
    OUTCOMES,
    CallEnd,
    Outcome,
    RecordError,
    ToolCall,
    Turn,
    TurnLatency,
    is_farewell,
    outcome_for,
)
from agentd.records.recording import open_call_recorder
from agentd.records.store import CallStore

if TYPE_CHECKING:
    from agentd.call.events import BargeInRecord, CallSummary, TurnRecord
    from agentd.config.schema import RecordsConfig
    from agentd.media.recorder import CallRecorder

__all__ = [
    "RecordsObserver",
    "looks_failed",
    "open_records",
    "summary_outcome",
]

log = logging.getLogger("agentd.records")

_MAX_OPEN_CALLS = 4096  # per-call state kept for calls the loop never finished
# end_reason prefixes that mean the call ended because something broke
_FAILED_REASONS = ("error", "failed", "failure", "crash", "internal")


def looks_failed(end_reason: str | None) -> bool:
    """True for end reasons that say the call ended because something broke."""
    text = (end_reason or "").strip().lower()
    return text.startswith(_FAILED_REASONS) or " error" in text


def summary_outcome(summary: CallSummary, caller_turns: int) -> Outcome:
    """The outcome the loop reported (if its summary carries one), else `outcome_for`."""
    reported: Any = getattr(summary, "outcome", None)
    if reported in OUTCOMES:
        return reported  # type: ignore[no-any-return]
    return outcome_for(
        answered=True,  # the loop only runs answered calls
        transferred=summary.transferred_to is not None,
        failed=looks_failed(summary.end_reason),
        caller_turns=caller_turns,
        left_unanswered=_left_unanswered(summary),
    )


# Reply kinds that answer the caller; a re-prompt ("silence") or the greeting answers nothing.
_ANSWER_KINDS = ("speech", "dtmf", "transfer_failed")


def _left_unanswered(summary: CallSummary) -> bool:
    """The caller hung up while the agent was still answering them, read from the last turn
    record: a reply in progress at the hang-up (outcome "hangup": thinking or speaking) or one
    the caller had just cut off ("interrupted"), unless the words it answered were a goodbye.
    Hang-ups while the agent was idle, or during a re-prompt, leave the caller answered."""
    if not (summary.end_reason or "").strip().lower().startswith("remote"):
        return False  # we ended it (agent goodbye, shutdown, max call length...)
    records = getattr(summary, "turn_records", ())
    if not records:
        return False
    last = records[-1]
    if last.outcome == "hangup":
        cut = last.kind in _ANSWER_KINDS
    else:
        cut = last.outcome == "interrupted" or last.interrupted
    return cut and not is_farewell(last.caller_text)


@dataclass
class _OpenCall:
    started: bool = False
    caller_turns: int = 0
    recording: str | None = None
    detailed_tools: bool = False  # the loop reported tool calls with their turns
    # wall time = wall_anchor + (loop time - loop_anchor); set by the first report
    wall_anchor: float | None = None
    loop_anchor: float = 0.0
    # (row index, tool name) of tools the loop named but did not detail
    pending_tools: list[tuple[int, str]] = field(default_factory=list)


class RecordsObserver:
    """Implements agentd.call.events.CallObserver over a `CallStore`.

    `recordings_dir` set (records.recording on): `open_recorder` gives each call a WAV.
    """

    def __init__(
        self,
        store: CallStore,
        *,
        recordings_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.recordings_dir = None if recordings_dir is None else Path(recordings_dir)
        self.failures = 0
        self._clock = clock
        self._calls: OrderedDict[str, _OpenCall] = OrderedDict()

    # ---- helpers --------------------------------------------------------------------------

    def _call(self, ref: str) -> _OpenCall:
        state = self._calls.get(ref)
        if state is None:
            state = self._calls[ref] = _OpenCall()
            while len(self._calls) > _MAX_OPEN_CALLS:
                self._calls.popitem(last=False)
        return state

    def _anchor(self, state: _OpenCall, at: float) -> None:
        if state.wall_anchor is None:
            state.wall_anchor, state.loop_anchor = self._clock(), at

    @staticmethod
    def _wall(state: _OpenCall, at: float) -> float:
        assert state.wall_anchor is not None
        return state.wall_anchor + (at - state.loop_anchor)

    def _guard(self, what: str, ref: str, action: Callable[[], None]) -> None:
        try:
            action()
        except RecordError as exc:
            self.failures += 1
            log.error("call %s: %s not recorded: %s", ref, what, exc)
        except Exception:  # records must never end a call
            self.failures += 1
            log.exception("call %s: %s not recorded", ref, what)

    # ---- recording ------------------------------------------------------------------------

    def open_recorder(self, call_ref: str, media_start: float) -> CallRecorder | None:
        """A recorder for this call (None when recording is off or the file cannot be
        made); give it to the RTP session (`leg.media.recorder = ...`), close it at
        hang-up. `media_start` is the session clock's (event loop's) time now."""
        if self.recordings_dir is None:
            return None
        try:
            recorder = open_call_recorder(self.recordings_dir, call_ref, self._clock(), media_start)
        except OSError as exc:
            self.failures += 1
            log.error(
                "call %s: cannot start recording in %s: %s", call_ref, self.recordings_dir, exc
            )
            return None
        state = self._call(call_ref)
        state.recording = recorder.path
        if state.started:
            self._guard(
                "recording path",
                call_ref,
                lambda: self.store.set_recording(call_ref, recorder.path),
            )
        return recorder

    # ---- CallObserver ---------------------------------------------------------------------

    def call_started(
        self,
        call_ref: str,
        caller: str,
        at: float,
        *,
        call_id: str = "",
        rang_at: float | None = None,
    ) -> None:
        """The call was answered at `at` (the loop's clock, now); `rang_at` (wall clock,
        e.g. `CallLeg.started_at`) when the INVITE came, if known."""
        state = self._call(call_ref)
        self._anchor(state, at)

        def write() -> None:
            answered_at = self._wall(state, at)
            self.store.start_call(
                call_ref,
                call_id=call_id,
                caller=caller,
                at=answered_at if rang_at is None else min(rang_at, answered_at),
                recording_path=state.recording,
            )
            state.started = True
            self.store.answered(call_ref, answered_at)

        self._guard("start", call_ref, write)

    def turn_finished(self, record: TurnRecord) -> None:
        ref = record.call_ref
        self._guard(f"turn {record.index}", ref, lambda: self._write_turn(record))

    def _write_turn(self, record: TurnRecord) -> None:
        ref = record.call_ref
        state = self._call(ref)
        if not state.started:
            self.call_started(ref, "", record.started_at)
        reference = self._wall(state, record.started_at)
        caller_row, agent_row = 2 * record.index, 2 * record.index + 1
        if record.caller_text:
            text = f"[keypad] {record.caller_text}" if record.kind == "dtmf" else record.caller_text
            state.caller_turns += 1
            self.store.add_turn(ref, Turn(caller_row, "caller", text, reference, reference))
        said = record.played_text if record.interrupted else record.reply_text
        first_audio = record.first_audio_ms
        if said or record.interrupted:
            latency = TurnLatency(
                eos_detect_ms=record.end_of_turn_ms,
                asr_final_ms=record.asr_final_ms,
                llm_first_token_ms=getattr(record, "llm_first_token_ms", None),
                tts_first_chunk_ms=getattr(record, "tts_first_chunk_ms", None),
                first_rtp_ms=getattr(record, "first_rtp_ms", None),
                first_content_ms=record.first_content_ms,
                response_ms=first_audio,
            )
            started = reference + (first_audio or 0.0) / 1000.0
            ended = max(started, self._clock())
            self.store.add_turn(
                ref, Turn(agent_row, "agent", said, started, ended, record.interrupted, latency)
            )
        detailed = getattr(record, "tool_calls", None)
        if detailed:
            state.detailed_tools = True
            for call in detailed:
                self.store.add_tool_call(ref, ToolCall.from_record(call, agent_row))
        else:
            state.pending_tools.extend((agent_row, name) for name in record.tools)

    def barge_in(self, record: BargeInRecord) -> None:
        """Barge-ins show as interrupted agent turns; their counts go to metrics."""

    def call_finished(self, summary: CallSummary) -> None:
        ref = summary.call_ref
        self._guard("end", ref, lambda: self._write_end(summary))
        self._calls.pop(ref, None)

    def _write_end(self, summary: CallSummary) -> None:
        ref = summary.call_ref
        state = self._call(ref)
        self._anchor(state, summary.ended_at)  # no earlier report: the call ends now
        if not state.started:
            self.call_started(ref, summary.caller, summary.started_at)
        handoff = summary.handoff
        if handoff is not None and not state.detailed_tools:
            self._write_handoff_tools(ref, state, tuple(handoff.tool_calls))
        self.store.end_call(
            ref,
            CallEnd(
                outcome=summary_outcome(summary, state.caller_turns),
                ended_at=self._wall(state, summary.ended_at),
                reason=summary.end_reason,
                transfer_target=_transfer_target(summary),
                transfer_reason=handoff.reason if handoff and summary.transferred_to else None,
                handoff=handoff.to_json() if handoff is not None else None,
            ),
        )

    def _write_handoff_tools(self, ref: str, state: _OpenCall, calls: tuple[Any, ...]) -> None:
        """Tie the hand-off's tool calls (in run order) to the turns that named them."""
        pending = list(state.pending_tools)
        for call in calls:
            row = None
            for position, (candidate_row, name) in enumerate(pending):
                if name == call.name:
                    row = candidate_row
                    del pending[position]
                    break
            self.store.add_tool_call(ref, ToolCall.from_record(call, row))
        state.pending_tools.clear()


def _transfer_target(summary: CallSummary) -> str | None:
    """'billing (3001)': the policy's name for the target and where the REFER sent the call."""
    name = summary.transferred_to
    uri = getattr(summary, "transfer_uri", None)
    if name is None or not uri or uri == name:
        return name
    return f"{name} ({uri})"


def open_records(records: RecordsConfig) -> RecordsObserver:
    """The daemon's records at start-up: open (create) the database from the `records:`
    config, fail the calls a previous process left open, and record calls if configured.
    Raises RecordError. Run `retention.run_retention(observer.store, records.retention_days,
    records.recordings_path)` as a task next."""
    store = CallStore(records.database_path)
    orphans = store.close_orphans()
    if orphans:
        log.warning("%d call record(s) left open by a previous run marked failed", orphans)
    return RecordsObserver(
        store, recordings_dir=records.recordings_path if records.recording else None
    )
