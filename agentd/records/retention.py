"""Retention: call records and recordings older than N days are deleted.

The daemon runs `run_retention` as a task: once at start-up, then daily.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentd.records.model import RecordError
from agentd.records.recording import RECORDING_NAME
from agentd.records.store import CallStore

__all__ = ["DAY", "RetentionResult", "apply_retention", "run_retention"]

log = logging.getLogger("agentd.records")
DAY = 86_400.0


@dataclass(frozen=True)
class RetentionResult:
    calls_deleted: int = 0
    files_deleted: int = 0
    file_errors: int = 0  # recordings that could not be removed (logged)


def _remove(path: Path) -> bool | None:
    """True removed, None already gone, False failed (logged)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("retention: cannot remove recording %s: %s", path, exc)
        return False
    return True


def _leftover_recordings(folder: Path, cutoff: float) -> list[Path]:
    """Recordings in `folder` (ours by name) last written before `cutoff`."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("retention: cannot list %s: %s", folder, exc)
        return []
    old: list[Path] = []
    for entry in entries:
        if not RECORDING_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                old.append(Path(entry.path))
        except OSError:
            continue
    return old


def apply_retention(
    store: CallStore,
    days: int,
    now: float,
    recordings_dir: str | os.PathLike[str] | None = None,
) -> RetentionResult:
    """Delete calls that rang more than `days` days before `now` with their recordings,
    and leftover recordings in `recordings_dir` (ours by name, e.g. of calls whose record
    was never written) last written before then. `days` <= 0 keeps everything.
    Raises RecordError (database)."""
    if days <= 0:
        return RetentionResult()
    cutoff = now - days * DAY
    calls, paths = store.delete_before(cutoff)
    # Only ever delete what we wrote: WAV files named in the records, or named like ours.
    files = [Path(p) for p in paths if p.lower().endswith(".wav")]
    if recordings_dir is not None:
        files += _leftover_recordings(Path(recordings_dir), cutoff)
    removed = failed = 0
    for path in files:
        outcome = _remove(path)
        removed += outcome is True
        failed += outcome is False
    if calls or removed:
        log.info(
            "retention: deleted %d call(s) and %d recording(s) older than %d day(s)",
            calls,
            removed,
            days,
        )
    return RetentionResult(calls_deleted=calls, files_deleted=removed, file_errors=failed)


async def run_retention(
    store: CallStore,
    days: int,
    recordings_dir: str | os.PathLike[str] | None = None,
    *,
    interval: float = DAY,
    clock: Callable[[], float] = time.time,
) -> None:
    """Apply retention now and then every `interval` seconds until cancelled; a failed
    pass is logged and retried at the next interval."""
    while True:
        try:
            await asyncio.to_thread(apply_retention, store, days, clock(), recordings_dir)
        except RecordError as exc:
            log.error("retention: %s", exc)
        await asyncio.sleep(interval)
