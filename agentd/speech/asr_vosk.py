"""Streaming ASR on Vosk (Kaldi): one shared `vosk.Model`, one recognizer per utterance.

Vosk is a true streaming decoder, so partials cost only a `PartialResult()` call; they are
asked for every `partial_interval_s` of audio and returned only when the text changed.
Telephone audio (8 kHz) is resampled at this edge to the rate the model's MFCC config was
trained on (16 kHz for the small Vosk models, read from conf/mfcc.conf).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agentd.media.resample import StreamResampler
from agentd.speech.interfaces import TELEPHONE_RATE, SpeechError, Transcript, WordTiming

__all__ = ["VoskAsr", "VoskStream", "model_sample_rate"]

_Result = dict[str, Any]  # one parsed Vosk JSON result


class _Recognizer(Protocol):
    """The part of vosk.KaldiRecognizer used here."""

    def AcceptWaveform(self, data: bytes) -> int: ...  # vosk's names
    def Result(self) -> str: ...
    def PartialResult(self) -> str: ...
    def FinalResult(self) -> str: ...


_REQUIRED_FILES = ("am/final.mdl", "conf/model.conf")
_DEFAULT_MODEL_RATE = 16000  # Kaldi's default --sample-frequency


def model_sample_rate(model_dir: Path) -> int:
    """The --sample-frequency in the model's conf/mfcc.conf (Kaldi's default 16 kHz)."""
    mfcc = model_dir / "conf" / "mfcc.conf"
    try:
        lines = mfcc.read_text(encoding="utf-8").splitlines()
    except OSError:
        return _DEFAULT_MODEL_RATE
    for line in lines:
        key, _, value = line.split("#", 1)[0].strip().partition("=")
        if key == "--sample-frequency":
            try:
                return int(float(value))
            except ValueError:
                raise SpeechError(f"{mfcc}: bad --sample-frequency {value!r}") from None
    return _DEFAULT_MODEL_RATE


class VoskAsr:
    """A Vosk model loaded once; `open_stream()` is cheap (one KaldiRecognizer)."""

    name = "vosk"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        language: str = "ko",
        partial_interval_s: float = 0.2,
        model_id: str = "vosk-ko",
    ) -> None:
        model_dir = Path(model_dir)
        for name in _REQUIRED_FILES:
            if not (model_dir / name).is_file():
                raise SpeechError(
                    f"Vosk model file {model_dir / name} is missing; "
                    f"run `agentd models fetch {model_id}`"
                )
        import vosk

        vosk.SetLogLevel(-1)  # Kaldi logs to stderr otherwise
        try:
            self._model = vosk.Model(str(model_dir))
        except Exception as exc:  # vosk raises a bare Exception on a bad model
            raise SpeechError(
                f"cannot load Vosk model from {model_dir}: {exc}; "
                f"run `agentd models fetch {model_id}` to restore it"
            ) from exc
        self._recognizer_class = vosk.KaldiRecognizer
        self.model_dir = model_dir
        self.language = language
        self.sample_rate = model_sample_rate(model_dir)
        self.partial_interval_s = partial_interval_s

    def open_stream(self) -> VoskStream:
        recognizer = self._recognizer_class(self._model, float(self.sample_rate))
        recognizer.SetWords(True)
        return VoskStream(recognizer, self.sample_rate, self.partial_interval_s)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """One-shot: the final transcript of a whole 8 kHz int16 utterance."""
        stream = self.open_stream()
        stream.accept(pcm, partial=False)
        return stream.finish()


class VoskStream:
    """One utterance. Thread-safe: a lock serialises the recognizer, which is not."""

    def __init__(self, recognizer: _Recognizer, model_rate: int, partial_interval_s: float) -> None:
        self._recognizer = recognizer
        self._resampler = StreamResampler(TELEPHONE_RATE, model_rate)
        self._lock = threading.Lock()
        self._partial_every = max(1, int(partial_interval_s * TELEPHONE_RATE))
        self._since_partial = 0
        self._segments: list[_Result] = []  # results Vosk closed at its own endpoints
        self._last_partial = ""
        self._final: Transcript | None = None
        self._cancelled = False

    def accept(self, pcm: np.ndarray, *, partial: bool = True) -> Transcript | None:
        samples = np.asarray(pcm)
        if samples.dtype != np.int16:
            raise SpeechError(f"ASR input must be int16 PCM at 8 kHz, got dtype {samples.dtype}")
        samples = samples.reshape(-1)
        with self._lock:
            if self._cancelled:
                return None
            if self._final is not None:
                raise SpeechError("accept() after finish(): open a new stream per utterance")
            self._feed(self._resampler.process(samples))
            self._since_partial += len(samples)
            if not partial or self._since_partial < self._partial_every:
                return None
            self._since_partial = 0
            text = _join(
                [s.get("text", "") for s in self._segments]
                + [json.loads(self._recognizer.PartialResult()).get("partial", "")]
            )
            if not text or text == self._last_partial:
                return None
            self._last_partial = text
            return Transcript(text, final=False)

    def finish(self) -> Transcript:
        """The final transcript (the same one again if called twice; empty after cancel)."""
        with self._lock:
            if self._cancelled:
                return Transcript("", final=True)
            if self._final is None:
                self._feed(self._resampler.flush())
                self._segments.append(json.loads(self._recognizer.FinalResult()))
                self._final = _final(self._segments)
            return self._final

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._segments.clear()

    def _feed(self, samples16: np.ndarray) -> None:
        if len(samples16) and self._recognizer.AcceptWaveform(samples16.tobytes()):
            # Vosk found an endpoint (a long pause) inside the utterance: keep that piece.
            self._segments.append(json.loads(self._recognizer.Result()))


def _join(texts: list[str]) -> str:
    return " ".join(t for t in (t.strip() for t in texts) if t)


def _final(segments: list[_Result]) -> Transcript:
    words = tuple(
        WordTiming(
            word=str(w.get("word", "")),
            start=float(w.get("start", 0.0)),
            end=float(w.get("end", 0.0)),
            confidence=float(w["conf"]) if "conf" in w else None,
        )
        for segment in segments
        for w in segment.get("result", ())
    )
    confidences = [w.confidence for w in words if w.confidence is not None]
    confidence = sum(confidences) / len(confidences) if confidences else None
    return Transcript(
        _join([s.get("text", "") for s in segments]),
        final=True,
        confidence=confidence,
        words=words,
    )
