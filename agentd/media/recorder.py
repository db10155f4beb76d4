"""Two-channel call recorder: caller on the left, agent on the right, aligned by time.

Audio is placed at the sample offset given by the caller-supplied time, so gaps become
silence and both sides stay in step however their frames arrive. Only a window of recent
audio is kept in memory; everything further behind the newest write is written out.
"""

from __future__ import annotations

import math
import os
import wave
from types import TracebackType

import numpy as np

__all__ = ["CallRecorder"]

_CALLER = 0
_AGENT = 1
_SAMPLE_WIDTH = 2
_CHANNELS = 2


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm).reshape(-1)
    if pcm.dtype == np.int16:
        return pcm
    if pcm.dtype.kind == "f":
        pcm = np.rint(np.nan_to_num(pcm))
    return np.clip(pcm, -32768, 32767).astype(np.int16)


class CallRecorder:
    """Writes a 16-bit stereo WAV; ``at`` times are seconds on the clock ``start`` came from.

    Writes that land more than ``keep_seconds`` (up to twice that) behind the newest write
    may already have been written out; their late samples are dropped. So are writes that
    start more than ``max_gap_seconds`` after all audio so far (a broken clock must not fill
    the disk with silence) and writes after close(). All are counted in ``dropped_samples``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rate: int = 8000,
        start: float = 0.0,
        *,
        keep_seconds: float = 5.0,
        max_gap_seconds: float = 3600.0,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if keep_seconds <= 0:
            raise ValueError(f"keep_seconds must be positive, got {keep_seconds}")
        self.path = os.fspath(path)
        self.rate = rate
        self.start = start
        self.dropped_samples = 0
        self._keep = max(1, round(keep_seconds * rate))
        self._max_gap = round(max_gap_seconds * rate)
        # Samples before _base are in the file; _buffer[i] holds sample _base + i.
        self._base = 0
        self._end = 0  # one past the last sample written on either channel
        self._buffer = np.zeros((2 * self._keep, _CHANNELS), dtype=np.int16)
        self._wav: wave.Wave_write | None = wave.open(self.path, "wb")
        self._wav.setnchannels(_CHANNELS)
        self._wav.setsampwidth(_SAMPLE_WIDTH)
        self._wav.setframerate(rate)

    @property
    def closed(self) -> bool:
        return self._wav is None

    @property
    def frames_written(self) -> int:
        """Stereo frames already written to the file."""
        return self._base

    def write_caller(self, pcm: np.ndarray, at: float) -> None:
        """Place caller audio (int16) starting at time ``at`` on the left channel."""
        self._write(_CALLER, pcm, at)

    def write_agent(self, pcm: np.ndarray, at: float) -> None:
        """Place agent audio (int16) starting at time ``at`` on the right channel."""
        self._write(_AGENT, pcm, at)

    def close(self) -> None:
        """Write out everything buffered and finish the file; safe to call again."""
        if self._wav is None:
            return
        try:
            self._write_out_until(self._end)
        finally:
            self._wav.close()
            self._wav = None

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, channel: int, pcm: np.ndarray, at: float) -> None:
        samples = _as_int16(pcm)
        if self._wav is None or not math.isfinite(at):
            self.dropped_samples += samples.size
            return
        offset = round((at - self.start) * self.rate)
        if offset - self._end > self._max_gap:
            self.dropped_samples += samples.size
            return
        if offset < self._base:
            skipped = min(samples.size, self._base - offset)
            self.dropped_samples += skipped
            samples = samples[skipped:]
            offset = self._base
        # Pieces no longer than the window always fit in the buffer after writing out.
        for first in range(0, samples.size, self._keep):
            self._place(channel, samples[first : first + self._keep], offset + first)

    def _place(self, channel: int, piece: np.ndarray, offset: int) -> None:
        """Copy a piece of at most one window into the buffer at absolute sample ``offset``."""
        end = offset + piece.size
        # Write out in batches (whenever twice the window is held) to keep copying amortised.
        # end - keep <= offset, so the piece itself is never written out early.
        if end - self._base > 2 * self._keep:
            self._write_out_until(end - self._keep)
        self._buffer[offset - self._base : end - self._base, channel] = piece
        self._end = max(self._end, end)

    def _write_out_until(self, limit: int) -> None:
        """Write frames before sample ``limit`` to the file (silence past the buffered end)."""
        assert self._wav is not None
        if limit <= self._base:
            return
        held = self._end - self._base
        flush = min(limit, self._end) - self._base
        if flush > 0:
            self._wav.writeframes(self._buffer[:flush].tobytes())
            remaining = held - flush
            self._buffer[:remaining] = self._buffer[flush:held]
            self._buffer[remaining:held] = 0
        gap = limit - max(self._end, self._base)
        if gap > 0:
            silence = np.zeros((min(gap, self.rate), _CHANNELS), dtype=np.int16).tobytes()
            frame_bytes = _CHANNELS * _SAMPLE_WIDTH
            while gap > 0:
                count = min(gap, self.rate)
                self._wav.writeframes(silence[: count * frame_bytes])
                gap -= count
        self._base = limit
        self._end = max(self._end, limit)
