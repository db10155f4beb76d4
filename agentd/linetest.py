"""Line-test call handlers used until the AI agent exists: echo and playback.

Both honour a DTMF map that blind-transfers the call (e.g. `9` -> extension 4000), which is
how an operator checks audio both ways and the PBX's transfer permissions in one call.
"""

from __future__ import annotations

import asyncio
import logging
import wave
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import numpy as np

from agentd.media.resample import StreamResampler
from agentd.sip.callleg import CallLeg

log = logging.getLogger("agentd.linetest")

RATE = 8000


def load_wav_8k(path: str | Path) -> np.ndarray:
    """A WAV file as 8 kHz mono int16 (other rates resampled, channels averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate = wav.getframerate()
        channels = wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != RATE:
        resampler = StreamResampler(rate, RATE)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    return pcm


async def _watch_dtmf(leg: CallLeg, transfers: Mapping[str, str]) -> None:
    """Blind-transfer on a mapped key; a failed transfer keeps the call (and is logged)."""
    while not leg.ended.is_set():
        digit = await leg.dtmf.get()
        log.info("call %s: DTMF %s", leg.reference, digit)
        target = transfers.get(digit)
        if target is None:
            continue
        result = await leg.transfer(target, reason=f"caller pressed {digit}")
        if result.ok:
            return
        log.warning("call %s: transfer to %s failed: %s %s", leg.reference, target,
                    result.status, result.reason)


async def _until_ended(leg: CallLeg, work: Awaitable[None], transfers: Mapping[str, str]) -> None:
    tasks = [
        asyncio.ensure_future(work),
        asyncio.ensure_future(_watch_dtmf(leg, transfers)),
        asyncio.ensure_future(leg.ended.wait()),
    ]
    try:
        await asyncio.wait([tasks[2]])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def echo_handler(
    delay_ms: int, transfers: Mapping[str, str]
) -> Callable[[CallLeg], Awaitable[None]]:
    """Send the caller's audio back `delay_ms` later."""

    async def handle(leg: CallLeg) -> None:
        assert leg.media is not None
        media = leg.media

        async def echo() -> None:
            media.send(np.zeros(delay_ms * RATE // 1000, dtype=np.int16))
            async for frame in media.frames():
                media.send(frame)

        await _until_ended(leg, echo(), transfers)

    return handle


def playback_handler(
    path: str | Path, transfers: Mapping[str, str], gap_seconds: float = 1.0
) -> Callable[[CallLeg], Awaitable[None]]:
    """Play a WAV file, again and again with a short gap, until the call ends."""
    audio = load_wav_8k(path)
    if audio.size == 0:
        raise ValueError(f"{path}: the WAV file holds no audio")
    gap = np.zeros(int(gap_seconds * RATE), dtype=np.int16)

    async def handle(leg: CallLeg) -> None:
        assert leg.media is not None
        media = leg.media

        async def play() -> None:
            while True:
                media.send(audio)
                media.send(gap)
                while media.queued_samples > 0:
                    await asyncio.sleep(0.1)

        await _until_ended(leg, play(), transfers)

    return handle
