"""The three speech interfaces every engine implements: VAD, ASR, TTS.

Design rules (all engines follow them):
- One loaded model serves every concurrent call; each call holds only a small stream object
  (`VadModel.stream()`, `AsrEngine.open_stream()`), so model weights load once per process.
- Engines are synchronous and may block on CPU for tens of milliseconds; the call loop runs
  them in worker threads, never on the event loop that paces RTP.
- Audio between layers is int16 PCM at 8 kHz (`TELEPHONE_RATE`); an engine that needs another
  rate resamples at its own edge with `agentd.media.resample.StreamResampler`.
- Engines never import SIP or media-session code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from agentd.cancel import CancelToken

TELEPHONE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz


# ---- VAD ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VadConfig:
    """Thresholds in probability; times in milliseconds (from the operator's config)."""

    threshold: float = 0.5  # speech starts when the probability rises above this
    neg_threshold: float = 0.35  # ... and counts as silence again below this (hysteresis)
    min_speech_ms: int = 200  # shorter bursts (clicks, line noise) are not speech
    end_of_turn_ms: int = 400  # silence after speech that ends the caller's turn


@dataclass(frozen=True)
class SpeechStarted:
    at: float  # stream time (s) where speech began, i.e. before min_speech_ms was confirmed
    probability: float


@dataclass(frozen=True)
class SpeechEnded:
    at: float  # stream time (s) where speech stopped (not where the silence was confirmed)
    duration: float  # seconds of speech from SpeechStarted.at to `at`


VadEvent = SpeechStarted | SpeechEnded


class VadStream(Protocol):
    """One call's VAD state. `feed` takes any number of 8 kHz int16 samples."""

    @property
    def probability(self) -> float:
        """Speech probability of the latest analysed window."""

    @property
    def speaking(self) -> bool: ...

    @property
    def time(self) -> float:
        """Stream time in seconds: samples fed so far / 8000."""

    def feed(self, pcm: np.ndarray) -> list[VadEvent]: ...

    def reset(self) -> None: ...


class VadModel(Protocol):
    name: str

    def stream(self, config: VadConfig | None = None) -> VadStream: ...


# ---- ASR ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds from the start of the utterance
    end: float
    confidence: float | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool
    confidence: float | None = None  # 0..1 where the engine gives one
    words: tuple[WordTiming, ...] = ()


class AsrStream(Protocol):
    """One utterance. Feed 8 kHz int16 audio as it arrives; read partials; finish once.

    A stream may also implement `PreparesFinal.prepare_final()` (optional; check with
    `isinstance(stream, PreparesFinal)`): the call loop calls it at the first silence the
    VAD hears, so the final is decoded during the end-of-turn wait.
    """

    def accept(self, pcm: np.ndarray) -> Transcript | None:
        """Add audio; returns a new partial hypothesis when the engine has one, else None."""

    def finish(self) -> Transcript:
        """The final hypothesis for everything fed (the stream cannot be fed after this)."""

    def cancel(self) -> None:
        """Drop the utterance (barge-in, hang-up); later calls are no-ops."""


@runtime_checkable
class PreparesFinal(Protocol):
    """Optional part of an AsrStream."""

    def prepare_final(self) -> Transcript | None:
        """Decode everything fed so far now (the caller has probably stopped talking).

        `finish()` returns this result without decoding again when only silence follows;
        speech after it is decoded by `finish()` as usual. Returns the candidate text
        (final=False), or None after cancel. May block for a decode (tens to hundreds of ms).
        """


class AsrEngine(Protocol):
    name: str
    language: str

    def open_stream(self) -> AsrStream: ...


# ---- TTS ------------------------------------------------------------------------------


class TtsEngine(Protocol):
    name: str
    voice: str
    native_rate: int  # the rate the model produces; output is resampled to 8 kHz

    def synthesize(
        self, text: str, cancel: CancelToken | None = None
    ) -> Iterator[np.ndarray]:
        """Yield 8 kHz int16 chunks as they are made (the first before the whole text is
        done); stop early, without error, once `cancel` is set."""


@runtime_checkable
class Closeable(Protocol):
    def close(self) -> None: ...


class SpeechError(RuntimeError):
    """An engine could not load or run; the message says what and how to fix it."""
