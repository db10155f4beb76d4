"""Coqui TTS (coqui-tts 0.28.0, MPL-2.0) for users who bring their own Coqui model.

Coqui's models download at run time from a hub; this engine never does: it loads a
checkpoint + config.json (and optionally a vocoder) from paths the operator provides.
coqui-tts needs torch and, at import, torchaudio and torchcodec (see the extra agentd[coqui]).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agentd.speech.interfaces import CancelToken, SpeechError
from agentd.speech.tts_piper import chunked_resample, require_model_file, split_for_speech

__all__ = ["CoquiTts"]

COQUI_MODEL_ID = "coqui"
_INSTALL_HINT = (
    "pip install 'agentd[coqui]' (torch, torchaudio and torchcodec that match) and "
    "apt-get install ffmpeg (torchcodec loads FFmpeg's libraries)"
)


def _import_coqui() -> tuple[Any, Any]:
    try:
        import torch
        from TTS.utils import synthesizer
    except (ImportError, OSError) as exc:  # OSError: a torchaudio built for another torch
        raise SpeechError(f"Coqui TTS cannot be imported ({exc}): {_INSTALL_HINT}") from exc
    return torch, synthesizer


class CoquiTts:
    """A Coqui TTS model (VITS, Glow-TTS, Tacotron2, ... + optional vocoder) as a TtsEngine.

    Coqui's synthesizer and text front-ends are not re-entrant, so one lock serialises the
    synthesis of each piece across threads; pieces are short, so concurrent calls interleave.
    `threads` sets torch's intra-op thread count, which is process-wide.
    """

    name = "coqui"

    def __init__(
        self,
        model_path: str | Path,
        config_path: str | Path | None = None,
        *,
        vocoder_path: str | Path | None = None,
        vocoder_config_path: str | Path | None = None,
        speaker: str | None = None,
        language: str | None = None,
        threads: int | None = None,
        model_id: str = COQUI_MODEL_ID,
    ) -> None:
        model_file = require_model_file(model_path, model_id)
        config_file = require_model_file(
            config_path if config_path is not None else model_file.parent / "config.json",
            model_id,
        )
        vocoder_files: dict[str, str] = {}
        if vocoder_path is not None:
            vocoder_file = require_model_file(vocoder_path, model_id)
            vocoder_config = require_model_file(
                vocoder_config_path
                if vocoder_config_path is not None
                else vocoder_file.parent / "config.json",
                model_id,
            )
            vocoder_files = {
                "vocoder_checkpoint": str(vocoder_file),
                "vocoder_config": str(vocoder_config),
            }
        torch, synthesizer = _import_coqui()
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        try:
            self._synth = synthesizer.Synthesizer(
                tts_checkpoint=str(model_file),
                tts_config_path=str(config_file),
                use_cuda=False,
                **vocoder_files,
            )
        except Exception as exc:  # coqui raises anything from KeyError to RuntimeError
            raise SpeechError(
                f"Coqui model {model_file} with config {config_file} does not load "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        # Synthesizer.tts pads every sentence with this much silence; pieces here are
        # clauses, so the padding would be a pause in mid-sentence.
        self._pad_samples = int(getattr(synthesizer, "PAD_SILENCE_SAMPLES", 0))
        self._speaker = speaker
        self._language = language
        self._lock = threading.Lock()
        self.native_rate: int = int(self._synth.output_sample_rate)
        self.voice: str = speaker or model_file.parent.name
        self.threads = threads

    def synthesize(
        self, text: str, cancel: CancelToken | None = None
    ) -> Iterator[np.ndarray]:
        """Yield 8 kHz int16 chunks, one sentence or clause synthesised at a time."""
        return chunked_resample(self._piece_audio(text, cancel), self.native_rate, cancel)

    def _piece_audio(self, text: str, cancel: CancelToken | None) -> Iterator[np.ndarray]:
        for piece in split_for_speech(text):
            if cancel is not None and cancel.cancelled:
                return
            with self._lock:
                try:
                    wav = self._synth.tts(
                        piece,
                        speaker_name=self._speaker,
                        language_name=self._language,
                        split_sentences=False,
                    )
                except Exception as exc:  # model errors surface as assorted types
                    raise SpeechError(
                        f"Coqui synthesis failed ({type(exc).__name__}: {exc})"
                    ) from exc
            audio = np.asarray(wav, dtype=np.float32).reshape(-1)
            if self._pad_samples and len(audio) > self._pad_samples:
                audio = audio[: -self._pad_samples]
            if len(audio):
                yield np.clip(np.nan_to_num(audio), -1.0, 1.0)
