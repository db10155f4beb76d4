"""RecordsObserver: the call loop's reports become call, turn and tool-call rows."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from agentd.call.events import BargeInRecord, CallSummary, TurnRecord
from agentd.dialog.types import HandoffRecord, ToolCallRecord, TranscriptLine
from agentd.records import CallStore
from agentd.records.observer import RecordsObserver, looks_failed

OFFSET = 1_700_000_000.0
# Calls start at loop time 10.0 with the wall clock at OFFSET + 10: loop time t is OFFSET + t.


def observer(store: CallStore, **kwargs: object) -> RecordsObserver:
    return RecordsObserver(store, clock=lambda: OFFSET + 10.0, **kwargs)  # type: ignore[arg-type]


def turn(
    index: int,
    kind: str = "speech",
    caller: str = "",
    reply: str = "",
    *,
    played: str | None = None,
    interrupted: bool = False,
    tools: tuple[str, ...] = (),
    at: float = 0.0,
    first_audio: float | None = 500.0,
) -> TurnRecord:
    return TurnRecord(
        call_ref="r1",
        index=index,
        kind=kind,  # type: ignore[arg-type]
        caller_text=caller,
        confidence=None,
        started_at=at,
        end_of_turn_ms=200.0,
        asr_final_ms=40.0,
        first_audio_ms=first_audio,
        first_content_ms=800.0,
        fillers=(),
        reply_text=reply,
        played_text=reply if played is None else played,
        interrupted=interrupted,
        tools=tools,
    )


def handoff(*calls: ToolCallRecord, reason: str | None = None) -> HandoffRecord:
    return HandoffRecord(
        "r1", "1001", "booked", reason, (TranscriptLine("caller", "hi"),), {"name": "Ann"}, calls
    )


def summary(
    end_reason: str = "remote hangup",
    transferred_to: str | None = None,
    record: HandoffRecord | None = None,
) -> CallSummary:
    return CallSummary("r1", "1001", 10.0, 70.0, end_reason, 3, 0, 0, transferred_to, record)


def test_a_call_becomes_rows(store: CallStore) -> None:
    obs = observer(store)
    obs.call_started("r1", "1001", 10.0, call_id="abc@pbx", rang_at=OFFSET + 8.0)
    obs.turn_finished(turn(0, "greeting", reply="Hello, Smile Dental.", at=10.5))
    obs.turn_finished(
        turn(
            1,
            caller="Book me in",
            reply="Monday at nine or",
            played="Monday",
            interrupted=True,
            tools=("find_slots",),
            at=20.0,
        )
    )
    obs.turn_finished(turn(2, "dtmf", caller="1", reply="Booked.", tools=("book",), at=30.0))
    obs.barge_in(BargeInRecord("r1", 21.0, 40.0, False, "wait"))
    find = ToolCallRecord("find_slots", {"day": "mon"}, True, {"slots": [9]}, None, 12.0)
    book = ToolCallRecord("book", {"slot": 9}, False, None, "calendar down", 30.0)
    obs.call_finished(summary(record=handoff(find, book)))
    record = store.get("r1")
    assert record is not None
    assert record.call_id == "abc@pbx" and record.caller == "1001"
    assert record.ringing_at == OFFSET + 8.0 and record.answered_at == OFFSET + 10.0
    assert record.ended_at == OFFSET + 70.0
    assert record.outcome == "contained" and record.end_reason == "remote hangup"
    assert [(t.index, t.speaker, t.text, t.interrupted) for t in record.turns] == [
        (1, "agent", "Hello, Smile Dental.", False),
        (2, "caller", "Book me in", False),
        (3, "agent", "Monday", True),  # what the caller heard
        (4, "caller", "[keypad] 1", False),
        (5, "agent", "Booked.", False),
    ]
    agent = record.turns[2]
    assert agent.started_at == pytest.approx(OFFSET + 20.5)  # speech end + first audio
    assert agent.latency.eos_detect_ms == 200 and agent.latency.response_ms == 500
    assert agent.latency.first_content_ms == 800 and agent.latency.llm_first_token_ms is None
    assert [(c.turn, c.name, c.ok) for c in record.tool_calls] == [
        (3, "find_slots", True),
        (5, "book", False),
    ]
    assert record.handoff is not None and record.handoff["summary"] == "booked"
    assert obs.failures == 0


def test_each_turn_is_committed_before_the_call_ends(store: CallStore) -> None:
    obs = observer(store)
    obs.call_started("r1", "1001", 10.0)
    obs.turn_finished(turn(1, caller="hello", reply="hi"))
    record = store.get("r1")
    assert record is not None and record.turn_count == 2 and record.outcome is None


@pytest.mark.parametrize(
    ("end_reason", "transferred_to", "caller_turns", "outcome"),
    [
        ("transferred", "reception", 1, "transferred"),
        ("remote hangup", None, 0, "abandoned"),
        ("remote hangup", None, 1, "contained"),
        ("agent: goodbye", None, 1, "contained"),
        ("error: ASR crashed", None, 1, "failed"),
    ],
)
def test_outcome(
    store: CallStore, end_reason: str, transferred_to: str | None, caller_turns: int, outcome: str
) -> None:
    obs = observer(store)
    obs.call_started("r1", "1001", 10.0)
    obs.turn_finished(turn(0, "greeting", reply="Hello"))
    for index in range(1, caller_turns + 1):
        obs.turn_finished(turn(index, caller="yes", reply="ok"))
    obs.call_finished(
        summary(
            end_reason, transferred_to, handoff(reason="wants a person") if transferred_to else None
        )
    )
    record = store.get("r1")
    assert record is not None and record.outcome == outcome
    if transferred_to:
        assert record.transfer_target == "reception"
        assert record.transfer_reason == "wants a person"


def test_looks_failed() -> None:
    assert looks_failed("error: tts") and looks_failed("Internal error")
    assert not looks_failed("remote hangup") and not looks_failed(None)


def test_store_failures_are_counted_not_raised(store: CallStore) -> None:
    obs = observer(store)
    store.close()
    obs.call_started("r1", "1001", 10.0)
    obs.turn_finished(turn(1, caller="hi", reply="hello"))
    obs.call_finished(summary())
    assert obs.failures >= 3


def test_reports_without_call_started_still_make_a_call(store: CallStore) -> None:
    obs = observer(store)
    obs.turn_finished(turn(1, caller="hi", reply="hello"))
    obs.call_finished(summary())
    record = store.get("r1")
    assert record is not None and record.turn_count == 2 and record.outcome == "contained"


def test_recorder_writes_a_private_wav_named_in_the_record(
    tmp_path: Path, store: CallStore
) -> None:
    obs = observer(store, recordings_dir=tmp_path / "rec")
    recorder = obs.open_recorder("r1", 10.0)
    assert recorder is not None
    obs.call_started("r1", "1001", 10.0)
    tone = (np.sin(np.arange(160) / 3) * 8000).astype(np.int16)
    for n in range(50):
        recorder.write_caller(tone, 10.0 + n * 0.02)
        recorder.write_agent(tone // 2, 10.0 + n * 0.02)
    recorder.close()
    record = store.get("r1")
    assert record is not None and record.recording_path == recorder.path
    path = Path(recorder.path)
    assert path.parent == tmp_path / "rec" and path.name.endswith("-r1.wav")
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "rec").stat().st_mode & 0o777 == 0o700
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 8000, 8000)
        frames = np.frombuffer(wav.readframes(160), dtype=np.int16).reshape(-1, 2)
    assert np.array_equal(frames[:, 0], tone) and np.array_equal(frames[:, 1], tone // 2)


def test_no_recorder_when_recording_is_off_or_impossible(tmp_path: Path, store: CallStore) -> None:
    assert observer(store).open_recorder("r1", 0.0) is None
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    obs = observer(store, recordings_dir=blocker / "rec")
    assert obs.open_recorder("r1", 0.0) is None and obs.failures == 1


def test_open_records_from_config(tmp_path: Path) -> None:
    from agentd.config.schema import Config
    from agentd.records.observer import open_records

    def config(recording: bool) -> Config:
        return Config.from_dict(
            {
                "sip": {"registrar": "127.0.0.1", "extension": "1", "password": "x"},
                "records": {"database": "state/calls.db", "recording": recording},
            },
            base_dir=tmp_path,
        )

    with CallStore(tmp_path / "state" / "calls.db") as earlier:
        earlier.start_call("lost", call_id="c", caller="1", at=OFFSET)
    first = open_records(config(False).records)
    assert first.recordings_dir is None
    lost = first.store.get("lost")
    assert lost is not None and lost.outcome == "failed"
    first.store.close()
    second = open_records(config(True).records)
    assert second.recordings_dir == tmp_path / "state" / "recordings"
    second.store.close()


def test_call_clock_is_anchored_to_the_wall_clock_at_call_start(store: CallStore) -> None:
    # The live loop reports on the call's audio clock: 0.0 when the call starts.
    wall = [OFFSET + 500.0]
    obs = RecordsObserver(store, clock=lambda: wall[0])
    obs.call_started("r1", "1001", 0.0)
    wall[0] += 7.0
    obs.turn_finished(turn(1, caller="hi", reply="hello", at=6.0, first_audio=400.0))
    obs.call_finished(CallSummary("r1", "1001", 0.0, 30.0, "remote hangup", 1, 0, 0, None, None))
    record = store.get("r1")
    assert record is not None
    assert record.answered_at == OFFSET + 500.0 and record.ended_at == OFFSET + 530.0
    assert record.turns[0].started_at == OFFSET + 506.0
    assert record.turns[1].started_at == pytest.approx(OFFSET + 506.4)
    assert record.turns[1].ended_at == OFFSET + 507.0  # reported when playback finished
