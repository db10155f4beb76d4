"""Per-call stereo WAV recordings (caller left, agent right), private to the service user.

The call loop opens one with `open_call_recorder` when `records.recording` is on, hands it
to the call's RTP session (`leg.media.recorder = recorder`; the session feeds it on its
media clock), stores the path with the call record and closes it at hang-up.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from agentd.media.recorder import CallRecorder

__all__ = ["RECORDING_NAME", "open_call_recorder", "recording_path"]

# 20240131-142501-ab12cd34.wav (UTC start time, call reference, optional -N on a clash)
RECORDING_NAME = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_-]{1,64}(?:-\d+)?\.wav$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def recording_path(directory: str | os.PathLike[str], ref: str, started_at: float) -> Path:
    """Where the recording of call `ref` that rang at `started_at` (epoch seconds) goes."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started_at))
    safe_ref = _UNSAFE.sub("_", ref)[:64] or "call"
    return Path(directory) / f"{stamp}-{safe_ref}.wav"


def _create_private(path: Path) -> Path:
    """Create an empty 0600 file at `path`, or at `path` with -1, -2 ... if taken."""
    for attempt in range(100):
        candidate = path if attempt == 0 else path.with_name(f"{path.stem}-{attempt}.wav")
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"no free recording name next to {path}")


def open_call_recorder(
    directory: str | os.PathLike[str],
    ref: str,
    started_at: float,
    media_start: float,
    rate: int = 8000,
) -> CallRecorder:
    """A recorder writing a new 0600 WAV in `directory` (made 0700 if missing).

    `started_at` is the wall-clock time for the file name; `media_start` is the time on
    the clock that will feed the recorder (the RTP session's loop time) at which the
    recording begins. The file path is `recorder.path`. Raises OSError.
    """
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _create_private(recording_path(folder, ref, started_at))
    # wave truncates the existing file, which keeps its 0600 mode.
    return CallRecorder(path, rate, start=media_start)
