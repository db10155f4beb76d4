"""The line-test call handlers (echo, playback) against a real UserAgent call over loopback."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from agentd.linetest import load_wav_8k, playback_handler


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return path


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(spectrum)])


def test_load_wav_resamples_and_mixes_down(tmp_path: Path) -> None:
    stereo = np.repeat(tone(500, 1.0, 16000), 2)
    pcm = load_wav_8k(write_wav(tmp_path / "t.wav", stereo, 16000, channels=2))
    assert pcm.dtype == np.int16
    assert abs(pcm.size - 8000) < 50
    assert abs(dominant(pcm, 8000) - 500) < 5


class FakeMedia:
    """Plays queued audio out in real time, as RtpSession does (8 samples per ms)."""

    def __init__(self) -> None:
        import time

        self.sent: list[np.ndarray] = []
        self._clock = time.monotonic
        self._drained_at = self._clock()
        self._queued = 0.0

    def send(self, pcm: np.ndarray) -> None:
        self._update()
        self.sent.append(pcm)
        self._queued += pcm.size

    def _update(self) -> None:
        now = self._clock()
        self._queued = max(0.0, self._queued - (now - self._drained_at) * 8000)
        self._drained_at = now

    @property
    def queued_samples(self) -> int:
        self._update()
        return int(self._queued)


class FakeLeg:
    def __init__(self) -> None:
        import asyncio

        self.media = FakeMedia()
        self.dtmf: asyncio.Queue[str] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.reference = "test"


async def test_playback_plays_the_file_until_the_call_ends(tmp_path: Path) -> None:
    import asyncio

    handler = playback_handler(write_wav(tmp_path / "p.wav", tone(700, 0.2, 8000), 8000), {},
                               gap_seconds=0.1)
    leg = FakeLeg()
    task = asyncio.create_task(handler(leg))  # type: ignore[arg-type]
    await asyncio.sleep(0.6)
    leg.ended.set()
    await asyncio.wait_for(task, 2)
    audio = [chunk for chunk in leg.media.sent if chunk.any()]
    assert len(audio) >= 2  # played again after the gap
    assert abs(dominant(audio[0], 8000) - 700) < 5
