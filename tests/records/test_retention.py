"""Retention deletes old calls and their recordings, and nothing else."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agentd.records import CallEnd, CallStore
from agentd.records.recording import recording_path
from agentd.records.retention import DAY, apply_retention, run_retention

from .conftest import T0


def _call_with_recording(store: CallStore, folder: Path, ref: str, at: float) -> Path:
    path = recording_path(folder, ref, at)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"RIFF")
    store.start_call(ref, call_id="c", caller="1", at=at, recording_path=path)
    store.end_call(ref, CallEnd("contained", at + 30))
    return path


def test_old_calls_and_recordings_go(tmp_path: Path, store: CallStore) -> None:
    folder = tmp_path / "rec"
    now = T0 + 40 * DAY
    old = _call_with_recording(store, folder, "old", T0)
    recent = _call_with_recording(store, folder, "recent", now - 2 * DAY)
    leftover = recording_path(folder, "crashed", T0)  # a recording with no call row
    leftover.write_bytes(b"RIFF")
    os.utime(leftover, (T0, T0))
    fresh_leftover = recording_path(folder, "fresh", now)
    fresh_leftover.write_bytes(b"RIFF")
    os.utime(fresh_leftover, (now - 60, now - 60))
    stranger = folder / "notes.wav"  # not ours by name: never touched
    stranger.write_bytes(b"x")
    os.utime(stranger, (T0, T0))

    result = apply_retention(store, 30, now, folder)

    assert (result.calls_deleted, result.files_deleted, result.file_errors) == (1, 2, 0)
    assert store.get("old") is None and store.get("recent") is not None
    assert not old.exists() and not leftover.exists()
    assert recent.exists() and fresh_leftover.exists() and stranger.exists()


def test_zero_days_keeps_everything(tmp_path: Path, store: CallStore) -> None:
    path = _call_with_recording(store, tmp_path / "rec", "old", T0)
    assert apply_retention(store, 0, T0 + 1000 * DAY, tmp_path / "rec").calls_deleted == 0
    assert path.exists() and store.get("old") is not None


def test_missing_files_and_folder_are_fine(tmp_path: Path, store: CallStore) -> None:
    path = _call_with_recording(store, tmp_path / "rec", "old", T0)
    path.unlink()
    result = apply_retention(store, 1, T0 + 10 * DAY, tmp_path / "absent")
    assert (result.calls_deleted, result.files_deleted) == (1, 0)


def test_non_wav_paths_in_records_are_not_deleted(tmp_path: Path, store: CallStore) -> None:
    precious = tmp_path / "config.yaml"
    precious.write_text("sip: {}")
    store.start_call("odd", call_id="c", caller="1", at=T0, recording_path=precious)
    store.end_call("odd", CallEnd("contained", T0 + 1))
    assert apply_retention(store, 1, T0 + 10 * DAY).calls_deleted == 1
    assert precious.exists()


async def test_run_retention_runs_at_once_then_every_interval(store: CallStore) -> None:
    clock = [T0 + 10 * DAY]
    store.start_call("a", call_id="c", caller="1", at=T0)
    store.start_call("b", call_id="c", caller="1", at=T0 + 9.5 * DAY)
    store.end_call("a", CallEnd("contained", T0 + 1))
    store.end_call("b", CallEnd("contained", T0 + 9.5 * DAY + 1))
    task = asyncio.create_task(run_retention(store, 1, interval=0.05, clock=lambda: clock[0]))
    try:
        for _ in range(200):
            if store.get("a") is None:
                break
            await asyncio.sleep(0.01)
        assert store.get("a") is None and store.get("b") is not None
        clock[0] += DAY
        for _ in range(300):
            if store.get("b") is None:
                break
            await asyncio.sleep(0.01)
        assert store.get("b") is None
    finally:
        task.cancel()
