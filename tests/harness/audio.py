"""Test audio: write tone WAVs (8 kHz mono 16-bit) and analyse recordings.

The analysis is what interop tests use to prove audio flowed: the dominant frequency
(FFT peak), the RMS level in dBFS and the fraction of 20 ms frames that are not silent.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FULL_SCALE = 32768.0
SILENCE_FLOOR_DBFS = -120.0


def tone(freq_hz: float, *, level_dbfs: float = -12.0, seconds: float = 1.0,
         rate: int = 8000) -> np.ndarray:
    """A sine as int16 whose RMS level is `level_dbfs` (a sine's peak is 3 dB above its RMS)."""
    if seconds < 0 or rate <= 0 or not 0 < freq_hz < rate / 2:
        raise ValueError("bad tone parameters")
    peak = FULL_SCALE * 10 ** (level_dbfs / 20) * np.sqrt(2)
    if peak > 32767:
        raise ValueError(f"level {level_dbfs} dBFS clips")
    t = np.arange(int(round(seconds * rate))) / rate
    return np.round(peak * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = 8000) -> Path:
    """Write mono int16 samples as a 16-bit PCM WAV."""
    path = Path(path)
    data = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(data.tobytes())
    return path


def write_tone_wav(path: str | Path, freq_hz: float, *, level_dbfs: float = -12.0,
                   seconds: float = 30.0, rate: int = 8000) -> Path:
    """Write a tone WAV (8 kHz mono 16-bit by default) for a phone or SIPp to send."""
    return write_wav(path, tone(freq_hz, level_dbfs=level_dbfs, seconds=seconds, rate=rate), rate)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (int16, first channel only) and sample rate of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as src:
        if src.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, rate = src.getnchannels(), src.getframerate()
        raw = src.readframes(src.getnframes())
    samples = np.frombuffer(raw, dtype="<i2")
    usable = len(samples) - len(samples) % channels
    return samples[:usable:channels].astype(np.int16), rate


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale; SILENCE_FLOOR_DBFS for empty or all-zero input."""
    if len(samples) == 0:
        return SILENCE_FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    if rms <= 0:
        return SILENCE_FLOOR_DBFS
    return max(SILENCE_FLOOR_DBFS, float(20 * np.log10(rms / FULL_SCALE)))


def _frames(samples: np.ndarray, rate: int, frame_ms: float) -> np.ndarray:
    size = max(1, int(rate * frame_ms / 1000))
    count = len(samples) // size
    return samples[: count * size].astype(np.float64).reshape(count, size)


def active_mask(samples: np.ndarray, rate: int, *, threshold_dbfs: float = -40.0,
                frame_ms: float = 20.0) -> np.ndarray:
    """Per-frame booleans: frame RMS is above `threshold_dbfs`."""
    frames = _frames(samples, rate, frame_ms)
    if len(frames) == 0:
        return np.zeros(0, dtype=bool)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    return rms > FULL_SCALE * 10 ** (threshold_dbfs / 20)


def active_fraction(samples: np.ndarray, rate: int, *, threshold_dbfs: float = -40.0,
                    frame_ms: float = 20.0) -> float:
    """Fraction of `frame_ms` frames whose RMS is above `threshold_dbfs` (0.0 when empty)."""
    mask = active_mask(samples, rate, threshold_dbfs=threshold_dbfs, frame_ms=frame_ms)
    return float(mask.mean()) if len(mask) else 0.0


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation).

    Returns 0.0 for input too short or silent to have a peak. DC is ignored.
    """
    if len(samples) < 16:
        return 0.0
    x = samples.astype(np.float64)
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if spectrum[peak] <= 0:
        return 0.0
    offset = 0.0
    if 0 < peak < len(spectrum) - 1:
        # Parabolic fit on log magnitudes refines the peak between FFT bins.
        a, b, c = np.log(spectrum[peak - 1: peak + 2] + 1e-12)
        denom = a - 2 * b + c
        if denom != 0:
            offset = 0.5 * (a - c) / denom
    return float((peak + offset) * rate / len(x))


@dataclass(frozen=True)
class AudioAnalysis:
    """Summary of one recording."""

    duration_s: float
    rate: int
    dominant_hz: float       # over the active (non-silent) part
    rms_dbfs: float          # over the whole recording
    active_rms_dbfs: float   # over the non-silent frames only: the talker's level
    active_fraction: float


def analyse(samples: np.ndarray, rate: int, *, threshold_dbfs: float = -40.0) -> AudioAnalysis:
    """Dominant frequency, levels and activity of int16 samples."""
    mask = active_mask(samples, rate, threshold_dbfs=threshold_dbfs)
    frames = _frames(samples, rate, 20.0)
    active = frames[mask].reshape(-1) if len(mask) else np.zeros(0)
    return AudioAnalysis(
        duration_s=len(samples) / rate,
        rate=rate,
        dominant_hz=dominant_frequency(active, rate),
        rms_dbfs=rms_dbfs(samples),
        active_rms_dbfs=rms_dbfs(active),
        active_fraction=float(mask.mean()) if len(mask) else 0.0,
    )


def analyse_wav(path: str | Path, *, threshold_dbfs: float = -40.0) -> AudioAnalysis:
    """`analyse` applied to a WAV file."""
    samples, rate = read_wav(path)
    return analyse(samples, rate, threshold_dbfs=threshold_dbfs)


# ----- G.711 (what SIPp streams; also lets tests predict what a phone hears) -----

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> G.711 mu-law bytes (uint8), per ITU-T G.711 segment coding."""
    x = np.asarray(samples).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    # Segment = position of the highest set bit above bit 7 (magnitude is 132..32767).
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes -> int16 samples."""
    c = ~np.asarray(codes, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (c >> 4) & 0x07
    magnitude = (((c & 0x0F) << 3) + _ULAW_BIAS) << exponent
    value = magnitude - _ULAW_BIAS
    return np.where(c & 0x80, -value, value).astype(np.int16)


def write_ulaw_tone(path: str | Path, freq_hz: float, *, level_dbfs: float = -12.0,
                    seconds: float = 10.0) -> Path:
    """Raw (headerless) 8 kHz mu-law tone, e.g. for SIPp's rtp_stream action."""
    path = Path(path)
    path.write_bytes(ulaw_encode(tone(freq_hz, level_dbfs=level_dbfs, seconds=seconds)).tobytes())
    return path
