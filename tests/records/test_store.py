"""CallStore: round trips, filters, permissions, durability under SIGKILL, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentd.records import CallEnd, CallStore, RecordError, ToolCall, Turn, TurnLatency
from agentd.records.store import SCHEMA_VERSION

from .conftest import T0, fill_call


def test_round_trip_keeps_every_field(store: CallStore) -> None:
    fill_call(store)
    record = store.get("ab12cd34")
    assert record is not None
    assert (record.call_id, record.caller) == ("ab12cd34@pbx", "+4930123456")
    assert (record.ringing_at, record.answered_at, record.ended_at) == (T0, T0 + 1, T0 + 70)
    assert record.duration == 70
    assert record.outcome == "transferred"
    assert (record.transfer_target, record.transfer_reason) == (
        "reception",
        "caller asked for a person",
    )
    assert record.handoff == {
        "summary": "wants an appointment",
        "caller_id": "+4930123456",
        "facts": {"name": "Ann"},
    }
    assert [(t.index, t.speaker, t.text) for t in record.turns] == [
        (1, "agent", "Hello, Smile Dental."),
        (2, "caller", "I need an appointment"),
        (3, "agent", "Monday at nine"),
    ]
    last = record.turns[-1]
    assert last.interrupted and not record.turns[0].interrupted
    assert last.latency == TurnLatency(
        eos_detect_ms=210, asr_final_ms=55, response_ms=640, first_content_ms=910
    )
    assert record.tool_calls == (
        ToolCall(3, "find_slots", {"day": "monday"}, True, {"slots": ["09:00"]}, None, 12.5),
    )
    assert record.turn_count == 3


def test_same_turn_index_replaces_the_turn(store: CallStore) -> None:
    store.start_call("r1", call_id="c", caller="1001", at=T0)
    store.add_turn("r1", Turn(1, "agent", "Let me check the calendar for", T0 + 1))
    store.add_turn("r1", Turn(1, "agent", "Let me check", T0 + 1, T0 + 2, interrupted=True))
    record = store.get("r1")
    assert record is not None
    assert [(t.text, t.interrupted) for t in record.turns] == [("Let me check", True)]


def test_list_newest_first_with_filters(store: CallStore) -> None:
    fill_call(store, "old", at=T0)
    fill_call(store, "new", at=T0 + 3600)
    store.start_call("live", call_id="c", caller="1001", at=T0 + 7200)
    store.start_call("gone", call_id="c", caller="1001", at=T0 + 100)
    store.end_call("gone", CallEnd("abandoned", T0 + 104, "remote hangup"))
    assert [r.ref for r in store.list()] == ["live", "new", "gone", "old"]
    assert [r.ref for r in store.list(limit=2)] == ["live", "new"]
    assert [r.ref for r in store.list(since=T0 + 100)] == ["live", "new", "gone"]
    assert [r.ref for r in store.list(outcome="abandoned")] == ["gone"]
    live = store.list(limit=1)[0]
    assert live.outcome is None and live.duration is None and live.turns == ()
    assert store.list(outcome="transferred")[0].turn_count == 3


def test_export_jsonl_one_line_per_call_oldest_first(store: CallStore) -> None:
    fill_call(store, "first", at=T0)
    fill_call(store, "second", at=T0 + 60)
    out = io.StringIO()
    assert store.export_jsonl(out) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["ref"] for line in lines] == ["first", "second"]
    assert lines[0]["turns"][2]["latency"]["response_ms"] == 640
    assert lines[0]["tool_calls"][0]["result"] == {"slots": ["09:00"]}
    out = io.StringIO()
    assert store.export_jsonl(out, since=T0 + 30) == 1


def test_export_reads_in_batches(store: CallStore) -> None:
    for n in range(5):
        store.start_call(f"r{n}", call_id="c", caller=None, at=T0 + n)
    assert [r.ref for r in store.iter_calls(batch=2)] == ["r0", "r1", "r2", "r3", "r4"]


def test_reused_reference_reads_the_newest_call(store: CallStore) -> None:
    store.start_call("dup", call_id="first", caller="1", at=T0)
    store.end_call("dup", CallEnd("contained", T0 + 5))
    store.start_call("dup", call_id="second", caller="2", at=T0 + 10)
    store.add_turn("dup", Turn(0, "agent", "hi", T0 + 11))
    record = store.get("dup")
    assert record is not None and record.call_id == "second" and record.turn_count == 1


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "calls.db"
    with CallStore(path) as opened:
        fill_call(opened)
        for name in ("calls.db", "calls.db-wal", "calls.db-shm"):
            mode = stat.S_IMODE((path.parent / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    CallStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reader_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no call records"):
        CallStore(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_schema_version_and_newer_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with CallStore(path) as opened:
        assert opened.schema_version == SCHEMA_VERSION
    with CallStore(path) as reopened:  # opening again migrates nothing and keeps data
        assert reopened.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RecordError, match="newer"):
        CallStore(path)


def test_not_a_database_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RecordError):
        CallStore(path)


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.add_turn("nope", Turn(0, "agent", "hi", T0)),
        lambda s: s.answered("nope", T0),
        lambda s: s.add_turn("r1", Turn(0, "robot", "hi", T0)),  # type: ignore[arg-type]
        lambda s: s.add_turn("r1", Turn(-1, "agent", "hi", T0)),
        lambda s: s.add_turn("r1", Turn(0, "agent", "hi", float("nan"))),
        lambda s: s.add_turn(
            "r1", Turn(0, "agent", "hi", T0, latency=TurnLatency(response_ms="fast"))
        ),  # type: ignore[arg-type]
        lambda s: s.end_call("r1", CallEnd("exploded", T0)),  # type: ignore[arg-type]
        lambda s: s.start_call("", call_id="c", caller=None, at=T0),
        lambda s: s.list(outcome="weird"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_raises_record_error_only(store: CallStore, write) -> None:  # type: ignore[no-untyped-def]
    store.start_call("r1", call_id="c", caller="1001", at=T0)
    with pytest.raises(RecordError):
        write(store)
    record = store.get("r1")
    assert record is not None and record.turns == () and record.outcome is None


def test_odd_json_values_are_kept_as_text(store: CallStore) -> None:
    store.start_call("r1", call_id="c", caller=None, at=T0)
    store.add_tool_call("r1", ToolCall(None, "t", {"when": object()}, False, None, "boom", 1.0))
    record = store.get("r1")
    assert record is not None
    assert record.tool_calls[0].arguments["when"].startswith("<object")
    assert record.tool_calls[0].error == "boom" and not record.tool_calls[0].ok


def test_close_orphans_fails_calls_left_open_by_a_dead_process(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with CallStore(path) as crashed:
        crashed.start_call("lost", call_id="c", caller="1", at=T0)
        crashed.add_turn("lost", Turn(0, "agent", "hello", T0 + 1, T0 + 4))
    with CallStore(path) as restarted:
        restarted.start_call("live", call_id="c", caller="1", at=T0 + 50)
        assert restarted.close_orphans() == 1
        lost, live = restarted.get("lost"), restarted.get("live")
    assert lost is not None and lost.outcome == "failed" and lost.ended_at == T0 + 4
    assert live is not None and live.outcome is None


def test_delete_before_returns_recordings_and_spares_open_calls(store: CallStore) -> None:
    store.start_call("old", call_id="c", caller="1", at=T0, recording_path="/r/old.wav")
    store.add_turn("old", Turn(0, "agent", "hi", T0))
    store.add_tool_call("old", ToolCall(0, "t", {}, True))
    store.end_call("old", CallEnd("contained", T0 + 5))
    store.start_call("open", call_id="c", caller="1", at=T0)
    store.start_call("new", call_id="c", caller="1", at=T0 + 100)
    assert store.delete_before(T0 + 50) == (1, ["/r/old.wav"])
    assert store.get("old") is None
    assert {r.ref for r in store.list()} == {"open", "new"}
    # cascades: no turn or tool call rows are left behind
    rows = store._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    tools = store._db.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0]
    assert (rows, tools) == (0, 0)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from agentd.records import CallStore, Turn
    store = CallStore(sys.argv[1])
    store.start_call("crash", call_id="c@x", caller="1001", at=1.0)
    for index in range(100_000):
        store.add_turn("crash", Turn(index, "caller", f"turn {index}", 2.0 + index))
        print(index, flush=True)
        time.sleep(0.002)
    """
)


def test_every_committed_turn_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    committed: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while len(committed) < 25 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert len(committed) >= 25, "writer did not get going"
    with CallStore(path) as after:
        record = after.get("crash")
    assert record is not None and record.outcome is None
    stored = [t.index for t in record.turns]
    # every turn reported as committed is there; later ones (written after our last read,
    # or in flight) may be too, but nothing is torn or out of order
    assert stored[: len(committed)] == committed
    assert stored == list(range(len(stored)))


def test_store_is_usable_from_several_threads(store: CallStore) -> None:
    import threading

    store.start_call("r1", call_id="c", caller=None, at=T0)

    def writer(first: int) -> None:
        for index in range(first, first + 50):
            store.add_turn("r1", Turn(index, "caller", "x", T0 + index))

    threads = [threading.Thread(target=writer, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    record = store.get("r1")
    assert record is not None and record.turn_count == 200
