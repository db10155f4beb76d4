"""hibari neural TTS (hibari-tts 0.2.1, Apache-2.0): a 7.9 MB voice, 24 kHz, ~RTF 0.02.

Only the "heart" voice ships inside the wheel; hibari downloads its other voices from a model
hub on first use, which this engine never lets it do: a non-bundled voice must already be
in hibari's cache directory (HIBARI_HOME) or be passed as `model_path`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentd.speech.interfaces import CancelToken, SpeechError
from agentd.speech.tts_piper import chunked_resample, require_model_file, split_for_speech

__all__ = ["HibariTts", "HibariVoice", "hibari_voices"]

DEFAULT_VOICE = "heart"
# hibari pads each sentence with ~300 ms of silence before and ~350 ms after: before the
# first words it is pure added latency, between clauses an over-long pause. Keep a little.
LEAD_SILENCE_S = 0.02
TAIL_SILENCE_S = 0.15
SILENCE_DBFS = -60.0


@dataclass(frozen=True)
class HibariVoice:
    name: str
    language: str  # "en-US" or "en-GB"
    accent: str  # "American" or "British"
    gender: str
    bundled: bool  # in the wheel; the others need a model file fetched beforehand
    file: str


def _import_hibari() -> tuple[Any, Any]:
    try:
        import hibari
        from hibari import voices
    except ImportError as exc:
        raise SpeechError(
            f"hibari TTS needs hibari-tts ({exc}): pip install 'agentd[hibari]'"
        ) from exc
    return hibari, voices


def hibari_voices() -> list[HibariVoice]:
    """The voices hibari-tts knows (American and British; only some are in the wheel)."""
    _, voices = _import_hibari()
    return [
        HibariVoice(
            name=name,
            language=str(entry.get("language", "")),
            accent=str(entry.get("accent", "")),
            gender=str(entry.get("gender", "")),
            bundled=bool(entry.get("bundled", False)),
            file=str(entry.get("file", "")),
        )
        for name, entry in voices.VOICES.items()
    ]


class HibariTts:
    """A hibari voice as a TtsEngine.

    Thread-safe: the grapheme-to-phoneme step (pure Python with a lazily loaded helper
    model) runs under this engine's lock; the ONNX run and the signal processing that
    follows run unlocked, since onnxruntime's `run` is thread-safe and each synthesis has
    its own random generator.
    """

    name = "hibari"
    native_rate = 24000

    def __init__(
        self,
        threads: int = 1,
        *,
        voice: str = DEFAULT_VOICE,
        model_path: str | Path | None = None,
        speed: float = 1.0,
        seed: int | None = None,
    ) -> None:
        hibari, voices = _import_hibari()
        if voice not in voices.VOICES:
            raise SpeechError(
                f"hibari has no voice {voice!r}; it has: {', '.join(voices.VOICES)}"
            )
        model_id = f"hibari-{voice}"
        if model_path is not None:
            model_file = require_model_file(model_path, model_id)
        else:
            try:
                model_file = Path(voices.voice_path(voice, download_missing=False))
            except FileNotFoundError as exc:
                raise SpeechError(
                    f"hibari voice {voice!r} is not in the hibari-tts wheel and its model "
                    f"file {exc} is missing: run `agentd models fetch {model_id}` and pass "
                    "its path as model_path"
                ) from exc
        if not 0.5 <= speed <= 2.0:
            raise SpeechError(f"hibari speed must be within 0.5..2.0, got {speed}")
        try:
            self._engine = hibari.Hibari(voice=voice, model=str(model_file), threads=threads)
            self._engine.g2p  # load the lexicons now, not during the first call
        except SpeechError:
            raise
        except Exception as exc:  # onnxruntime's own error types, corrupt assets
            raise SpeechError(
                f"hibari voice {voice!r} does not load from {model_file} ({exc}): "
                f"run `agentd models fetch {model_id}`"
            ) from exc
        self.native_rate = int(getattr(hibari, "SAMPLE_RATE", self.native_rate))
        self.voice = voice
        self.threads = threads
        self._speed = speed
        self._seed = seed
        self._g2p_lock = threading.Lock()

    def synthesize(
        self, text: str, cancel: CancelToken | None = None
    ) -> Iterator[np.ndarray]:
        """Yield 8 kHz int16 chunks, one sentence or clause synthesised at a time."""
        return chunked_resample(self._sentence_audio(text, cancel), self.native_rate, cancel)

    def _sentence_audio(self, text: str, cancel: CancelToken | None) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self._seed)
        for piece in split_for_speech(text):
            if cancel is not None and cancel.cancelled:
                return
            with self._g2p_lock:
                phoneme_chunks = self._engine.phonemize(piece)
            for phonemes in phoneme_chunks:
                if cancel is not None and cancel.cancelled:
                    return
                ids = self._engine.ids(phonemes)
                try:
                    audio = self._engine.from_ids(ids, self._speed, rng)
                except Exception as exc:  # onnxruntime's own error types
                    raise SpeechError(f"hibari synthesis failed: {exc}") from exc
                audio = _trim_silence(np.asarray(audio, dtype=np.float32), self.native_rate)
                if len(audio):
                    yield audio


def _trim_silence(audio: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading silence to LEAD_SILENCE_S and trailing silence to TAIL_SILENCE_S."""
    frame = rate // 100  # 10 ms
    count = len(audio) // frame
    if count == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: count * frame].reshape(count, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > 10 ** (SILENCE_DBFS / 20))
    if loud.size == 0:
        return audio[:0]
    start = max(0, loud[0] * frame - int(LEAD_SILENCE_S * rate))
    end = min(len(audio), (loud[-1] + 1) * frame + int(TAIL_SILENCE_S * rate))
    return audio[start:end]
