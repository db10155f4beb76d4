"""Piper neural TTS (piper-tts 1.8.0, GPL-3.0-or-later, so an optional extra: agentd[piper]).

Also holds the text splitting and chunked resampling shared by the neural engines
(tts_hibari, tts_coqui): each piece of text is synthesised on its own so the first audio
is ready after the first clause, not after the whole reply.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agentd.media.resample import StreamResampler
from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError

__all__ = [
    "PIPER_JOE_MODEL_ID",
    "PiperTts",
    "chunked_resample",
    "require_model_file",
    "split_for_speech",
]

PIPER_JOE_MODEL_ID = "piper-en-us-joe-medium"  # the id in models/manifest.yaml

CHUNK_SAMPLES = 3200  # 400 ms at 8 kHz: the largest chunk yielded, so cancel acts within it
MAX_PIECE_CHARS = 110  # longer sentences are cut at clause punctuation
HARD_PIECE_CHARS = 220  # a clause longer than this is cut at a word boundary
FIRST_CLAUSE_CHARS = 40  # "Sure, ..." : a short opening clause is spoken on its own
# Piper's cost grows with the piece (~RTF 0.1): a 4-word head keeps its first audio near
# 100-150 ms where a whole sentence takes 300+ ms.
FIRST_PIECE_WORDS = 4

# piper phonemizes with one process-wide espeak-ng instance (a C library with global state),
# so every PiperTts in the process shares this lock; the ONNX run itself is outside it.
_ESPEAK_LOCK = threading.Lock()

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e no mt ft approx dept inc ltd co a.m p.m".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"”’)\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")
# Words that start a phrase: a cut before one sounds like a natural breath.
_PHRASE_STARTS = frozenset(
    "and but or so because if when while which who that where to at on in for with from "
    "by about after before until".split()
)


# ---- shared helpers (used by tts_hibari and tts_coqui too) -----------------------------


def require_model_file(path: str | Path, model_id: str) -> Path:
    """The path if it is a file, else SpeechError naming it and the command that fetches it."""
    file = Path(path)
    if not file.is_file():
        raise SpeechError(
            f"model file {file} is missing: run `agentd models fetch {model_id}`"
        )
    return file


def _ends_sentence(text: str, punct_start: int, next_start: int) -> bool:
    """False after a title or an initial ("Dr. Smith", "J. Doe") or before a lowercase word."""
    if next_start < len(text) and text[next_start].islower():
        return False
    if text[punct_start] != ".":
        return True
    word = text[text.rfind(" ", 0, punct_start) + 1 : punct_start].lstrip("(\"“'‘")
    if len(word) == 1 and word.isalpha():
        return False
    return word.lower() not in _ABBREVIATIONS


def _sentences(paragraph: str) -> list[str]:
    out, cut = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        if _ends_sentence(paragraph, match.start(), match.end()):
            out.append(paragraph[cut : match.end()].strip())
            cut = match.end()
    out.append(paragraph[cut:].strip())
    return [s for s in out if s]


def _cut_at_words(text: str, limit: int) -> list[str]:
    pieces: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def _pack_clauses(sentence: str, max_chars: int, hard_chars: int) -> list[str]:
    """Cut a long sentence at clause punctuation into pieces of at most ~max_chars."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        for part in _cut_at_words(clause, hard_chars):
            if current and len(current) + 1 + len(part) > max_chars:
                pieces.append(current)
                current = part
            else:
                current = f"{current} {part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _cut_first_words(piece: str, words: int) -> list[str]:
    """Cut a short head off `piece`: before a phrase word (and, at, to, ...) among its first
    `words` + 1 words when there is one, else after `words` words; never leave a tail of
    fewer than 3 words."""
    tokens = piece.split(" ")
    if len(tokens) < words + 3:
        return [piece]
    cut = words
    for index in range(words, 1, -1):
        if tokens[index].lower() in _PHRASE_STARTS:
            cut = index
            break
    return [" ".join(tokens[:cut]), " ".join(tokens[cut:])]


def split_for_speech(
    text: str,
    *,
    max_chars: int = MAX_PIECE_CHARS,
    hard_chars: int = HARD_PIECE_CHARS,
    first_clause_chars: int = FIRST_CLAUSE_CHARS,
    first_words: int | None = None,
) -> list[str]:
    """Pieces of text to synthesise one at a time, in order, none empty.

    Lines and sentences are pieces; a sentence over `max_chars` is cut at clause punctuation
    and a clause over `hard_chars` at a word boundary. A short opening clause of the first
    sentence ("Sure, ...") is its own piece, so the first audio comes sooner. With
    `first_words`, a longer first piece is cut after about that many words too (for engines
    whose cost grows with the piece: the caller hears the reply start sooner, at the price of
    a phrase break there).
    """
    pieces: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        for sentence in _sentences(line):
            pieces.extend(_pack_clauses(sentence, max_chars, hard_chars))
    if pieces and first_clause_chars > 0:
        head, *rest = _CLAUSE_END.split(pieces[0], maxsplit=1)
        if rest and rest[0] and len(head) <= first_clause_chars:
            pieces[0:1] = [head, rest[0]]
    if pieces and first_words:
        pieces[0:1] = _cut_first_words(pieces[0], first_words)
    return pieces


def chunked_resample(
    parts: Iterable[np.ndarray],
    native_rate: int,
    cancel: CancelToken | None,
    *,
    max_chunk: int = CHUNK_SAMPLES,
) -> Iterator[np.ndarray]:
    """Resample native-rate audio parts (float or int16) to 8 kHz int16 chunks of at most
    `max_chunk` samples; stops, without the filter tail, as soon as `cancel` is set.

    `parts` should be lazy (a generator) so that no further synthesis runs after a cancel.
    """

    def cancelled() -> bool:
        return cancel is not None and cancel.cancelled

    resampler = StreamResampler(native_rate, TELEPHONE_RATE)
    for part in parts:
        if cancelled():
            return
        out = resampler.process(part)
        for start in range(0, len(out), max_chunk):
            if cancelled():
                return
            yield out[start : start + max_chunk]
    if cancelled():
        return
    tail = resampler.flush()
    if len(tail):
        yield tail


def _peak_normalise(audio: np.ndarray, peak: float) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.isfinite(top) or top < 1e-8:
        return np.zeros_like(audio)
    return audio * np.float32(peak / top)


# ---- Piper --------------------------------------------------------------------------


def _voice_name(config: dict[str, Any], model_file: Path) -> str:
    """e.g. "en_US-joe-medium" from the voice config, else the model file's stem."""
    language_section = config.get("language")
    audio_section = config.get("audio")
    language = language_section.get("code") if isinstance(language_section, dict) else None
    quality = audio_section.get("quality") if isinstance(audio_section, dict) else None
    dataset = config.get("dataset")
    if language and dataset and quality:
        return f"{language}-{dataset}-{quality}"
    return model_file.name.split(".")[0]


def _import_piper() -> tuple[Any, Any, Any]:
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as exc:
        raise SpeechError(
            f"Piper TTS needs piper-tts ({exc}): pip install 'agentd[piper]'"
        ) from exc
    return onnxruntime, PiperVoice, PiperConfig


class PiperTts:
    """A Piper voice (e.g. en_US-joe-medium) as a TtsEngine.

    One loaded voice serves concurrent calls from many threads: espeak-ng phonemization is
    serialised by a process-wide lock (it is not re-entrant); onnxruntime's `run` is
    thread-safe and runs unlocked. Each sentence's audio is peak-normalised to `peak`.
    `first_words` cuts a long first sentence after about that many words (None: never).
    """

    name = "piper"

    def __init__(
        self,
        model_path: str | Path,
        config_path: str | Path | None = None,
        *,
        threads: int = 1,
        model_id: str = PIPER_JOE_MODEL_ID,
        length_scale: float | None = None,
        peak: float = 0.9,
        first_words: int | None = FIRST_PIECE_WORDS,
    ) -> None:
        model_file = require_model_file(model_path, model_id)
        config_file = require_model_file(
            config_path if config_path is not None else f"{model_file}.json", model_id
        )
        ort, piper_voice_cls, piper_config_cls = _import_piper()
        try:
            config_dict = json.loads(config_file.read_text(encoding="utf-8"))
            config = piper_config_cls.from_dict(config_dict)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpeechError(
                f"Piper voice config {config_file} is unreadable ({exc}): "
                f"run `agentd models fetch {model_id}`"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise SpeechError(
                f"Piper model {model_file} does not load ({exc}): "
                f"run `agentd models fetch {model_id}`"
            ) from exc
        self._voice = piper_voice_cls(session=session, config=config)
        self._length_scale = length_scale
        self._peak = peak
        self._first_words = first_words
        self.voice: str = _voice_name(config_dict, model_file)
        self.native_rate: int = int(config.sample_rate)
        self.threads = threads

    def synthesize(
        self, text: str, cancel: CancelToken | None = None
    ) -> Iterator[np.ndarray]:
        """Yield 8 kHz int16 chunks, one sentence or clause synthesised at a time."""
        return chunked_resample(self._sentence_audio(text, cancel), self.native_rate, cancel)

    def _sentence_audio(self, text: str, cancel: CancelToken | None) -> Iterator[np.ndarray]:
        from piper.config import SynthesisConfig

        syn_config = SynthesisConfig(length_scale=self._length_scale, normalize_audio=False)
        for piece in split_for_speech(text, first_words=self._first_words):
            if cancel is not None and cancel.cancelled:
                return
            with _ESPEAK_LOCK:
                sentences = self._voice.phonemize(piece)
            for phonemes in sentences:
                if not phonemes:
                    continue
                if cancel is not None and cancel.cancelled:
                    return
                yield self._render(phonemes, syn_config)

    def _render(self, phonemes: list[str], syn_config: Any) -> np.ndarray:
        ids = self._voice.phonemes_to_ids(phonemes)
        try:
            audio = self._voice.phoneme_ids_to_audio(ids, syn_config)
        except Exception as exc:  # onnxruntime's own error types
            raise SpeechError(f"Piper synthesis failed: {exc}") from exc
        if isinstance(audio, tuple):
            audio = audio[0]
        return _peak_normalise(audio, self._peak)

