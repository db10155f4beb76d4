"""Streaming sample-rate conversion on top of soxr, with filter state kept across chunks."""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["StreamResampler"]

_INT16_SCALE = 32768.0


def _to_float32(chunk: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1) from int16 PCM or float audio."""
    chunk = np.asarray(chunk).reshape(-1)
    if chunk.dtype == np.int16:
        return chunk.astype(np.float32) / np.float32(_INT16_SCALE)
    if chunk.dtype.kind == "f":
        return np.ascontiguousarray(chunk, dtype=np.float32)
    raise TypeError(f"expected int16 or float audio, got {chunk.dtype}")


def _to_int16(samples: np.ndarray) -> np.ndarray:
    # NaN would cast to an arbitrary integer; treat it as silence.
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(samples * np.float32(_INT16_SCALE))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


class StreamResampler:
    """Resample one mono stream chunk by chunk; output is int16 at ``out_rate``.

    Input may be int16 PCM or float audio in [-1, 1] (e.g. TTS output). Call flush() at end of
    stream for the filter tail; the resampler can then be reused for a new stream.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, num_channels=1, dtype="float32", quality=quality
            )

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns what the filter can emit so far (may be empty)."""
        if self._stream is None:
            return self._passthrough(chunk)
        return _to_int16(self._stream.resample_chunk(_to_float32(chunk)))

    def flush(self) -> np.ndarray:
        """Emit the samples still held in the filter and reset for a new stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return _to_int16(tail)

    @staticmethod
    def _passthrough(chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk).reshape(-1)
        if chunk.dtype == np.int16:
            return chunk.copy()
        return _to_int16(_to_float32(chunk))
