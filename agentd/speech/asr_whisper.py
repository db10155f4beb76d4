"""Streaming ASR on faster-whisper (CTranslate2 Whisper), tuned for phone-call latency.

Whisper is not a streaming model: every hypothesis re-encodes the utterance so far. Stock
faster-whisper pads each call to a 30 s window (~0.5 s of encoder time here); this engine
builds its own log-mel features instead and encodes only what the audio needs:

- Window = the speech plus >= 3 s of silence padding, at least 10 s, at most 30 s. Encoder
  time scales with the window. A window trimmed to the audio makes the decoder loop on
  repetitions; the padding and 10 s floor were measured to give the 30 s path's accuracy
  (better, on G.711 TTS clips), and `trim_repetition` cuts the loops that still happen.
- Partials are decoded every `partial_interval_s` of new audio, and only when that new audio
  holds sound (a frame energy gate), never per frame.
- `prepare_final()` lets the call loop start the final decode at the first silence the VAD
  hears; `finish()` then reuses that result (or any earlier decode) when nothing but quiet
  audio arrived after it, so the final costs ~0 ms after the end-of-turn wait.
- Finals (prepare_final/finish) use beam search (`final_beam_size`, 5 by default); partials
  stay greedy. Beam 5 took the test set's clean WER from 15.4% to 11.9% (tools/bench_speech).
- Tiny.en's text changes with tiny differences in its input (a 40 ms longer tail can drop
  the first words), so each decode window is a pure function of the 8 kHz samples: from
  0.3 s before the first to 0.1 s after the last frame above -50 dBFS, resampled afresh,
  zero-filled past what has arrived. A final prepared at the first silence then decodes
  what a one-shot decode of the whole clip decodes. Only true silence is trimmed.
- An utterance with no sound at all is never decoded (Whisper invents "Thank you.").
- `prompt` (optional) is given to Whisper as previous text (<|startofprev|>) to bias its
  vocabulary; it did not pay on the speech test set (tools/bench_speech.py): the operator's
  policy words took clean WER down ~0.6 points and noisy WER up ~1.2.
- `denoise` (on by default): spectral subtraction of the line's steady noise from each
  decode window before resampling (`spectral_subtract`). Tiny.en hears 20 dB SNR white noise
  as words; subtracting it took the test set's noisy WER from 24.6 % to 22.0 % streamed
  (20.8 % one-shot; clean unchanged), settings chosen on the even-indexed utterances; on
  independent espeak-ng clips (6 noise seeds) 33 % -> 28 %.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentd.media.resample import StreamResampler
from agentd.speech.interfaces import TELEPHONE_RATE, SpeechError, Transcript

__all__ = ["WhisperAsr", "WhisperStream", "spectral_subtract", "trim_repetition"]

WHISPER_RATE = 16000
_HOP = 160  # samples per mel frame at 16 kHz (10 ms)
_MAX_FRAMES = 3000  # the encoder's positional table: 30 s
_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
_GATE_FRAME = 160  # 20 ms at 8 kHz: the energy gate's frame
_GATE_FLOOR_RMS = 100.0  # int16 RMS (~ -50 dBFS): quieter than this is never sound
# Gates relative to the utterance's speech level (90th percentile of frame RMS; a
# percentile, so one loud click cannot make real speech look quiet):
_SPEECH_GATE = 0.1  # -20 dB: "did the caller say more?" (partials due, reuse of a decode);
# a 20 dB SNR noise floor stays under it
_TRIM_MARGIN_S = 0.3  # real audio kept before the first sound (soft onsets sit under the floor)
_END_MARGIN_S = 0.1  # ... and after the last; zero-filled when not yet heard (see _window)
_MAX_PROMPT_TOKENS = 100
_WORD_KEY = re.compile(r"[^\w']+")
# Spectral subtraction (see spectral_subtract); chosen on half the speech test set.
_DENOISE_FFT = 256  # 32 ms at 8 kHz, half-overlapping frames
_DENOISE_QUIET = 0.2  # the quietest fifth of a window's frames is its noise
_DENOISE_FLOOR = 0.05  # gain floor (-26 dB): deeper cuts leave "musical" noise
_DENOISE_MIN_CONTRAST_DB = 12.0  # quieter frames this close to the loud ones are speech
# A quieter line is left alone: tiny.en's text changes with any change to its input, and
# clean calls (TTS pauses, idle channel noise) decoded better untouched.
_DENOISE_MIN_NOISE_DBFS = -55.0


def spectral_subtract(
    samples: np.ndarray,
    *,
    quiet_fraction: float = _DENOISE_QUIET,
    floor: float = _DENOISE_FLOOR,
    min_contrast_db: float = _DENOISE_MIN_CONTRAST_DB,
    min_noise_dbfs: float = _DENOISE_MIN_NOISE_DBFS,
) -> np.ndarray:
    """`samples` (float32, any rate) with their steady background noise subtracted.

    The noise spectrum is the mean power spectrum of the quietest `quiet_fraction` of the
    half-overlapping 256-sample frames; each frame's magnitude is scaled by
    sqrt(max(1 - noise/power, floor**2)). A window whose quiet frames are within
    `min_contrast_db` of its loud ones (speech throughout, no pause to learn the noise from),
    one whose noise is under `min_noise_dbfs` (a quiet line; full scale is 1.0) and one of
    under four frames are returned unchanged.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    n = _DENOISE_FFT
    hop = n // 2
    if len(x) < 4 * n:
        return x.copy()
    window = np.sqrt(np.hanning(n + 1)[:n]).astype(np.float32)  # sqrt-Hann: analysis+synthesis
    tail = (-(len(x) - n)) % hop
    padded = np.concatenate(
        (np.zeros(hop, np.float32), x, np.zeros(tail + hop, np.float32))
    )
    frames = np.lib.stride_tricks.sliding_window_view(padded, n)[::hop] * window
    spectra = np.fft.rfft(frames, axis=1)
    power = spectra.real**2 + spectra.imag**2
    energy = power.sum(axis=1)
    quiet = np.argsort(energy)[: max(1, int(len(energy) * quiet_fraction))]
    noise = power[quiet].mean(axis=0)
    noise_energy = float(noise.sum())
    loud_energy = float(np.percentile(energy, 90))
    # Parseval over the one-sided spectrum, near enough: mean square of a windowed frame.
    noise_ms = float(np.mean((frames[quiet] ** 2).sum(axis=1))) / float(np.sum(window**2))
    if (
        noise_ms <= 10 ** (min_noise_dbfs / 10)
        or loud_energy < noise_energy * 10 ** (min_contrast_db / 10)
    ):
        return x.copy()
    gain = np.sqrt(np.maximum(1.0 - noise / np.maximum(power, 1e-20), floor * floor))
    cleaned = np.fft.irfft(spectra * gain, n=n, axis=1).astype(np.float32) * window
    out = np.zeros(len(padded), np.float32)
    for index, frame in enumerate(cleaned):  # overlap-add; sqrt-Hann squared sums to 1
        out[index * hop : index * hop + n] += frame
    return out[hop : hop + len(x)]


def trim_repetition(text: str, min_tail_words: int = 3, min_period_words: int = 2) -> str:
    """Cut a decoder loop: the earliest tail that only repeats the words before it.

    The tail must be >= `min_tail_words` long and run to the end of the text, with a
    period of >= `min_period_words` (so "no, no, no" stays as said).
    """
    words = text.split()
    keys = [_WORD_KEY.sub("", w.lower()) for w in words]
    n = len(keys)
    for start in range(1, n - min_tail_words + 1):
        for period in range(min_period_words, start + 1):
            if all(keys[k] == keys[k - period] for k in range(start, n)):
                return " ".join(words[:start])
    return text


@dataclass(frozen=True)
class _Decoded:
    text: str
    avg_logprob: float  # per token


def _check_model_dir(model_dir: Path, model_id: str) -> None:
    if not model_dir.is_dir():
        raise SpeechError(
            f"Whisper model directory {model_dir} does not exist; "
            f"run `agentd models fetch {model_id}`"
        )
    for name in _MODEL_FILES:
        if not (model_dir / name).is_file():
            raise SpeechError(
                f"Whisper model file {model_dir / name} is missing; "
                f"run `agentd models fetch {model_id}`"
            )


class WhisperAsr:
    """One CTranslate2 Whisper model shared by every call's stream (thread-safe).

    `model_dir` holds a CTranslate2 Whisper conversion (model.bin, config.json,
    tokenizer.json). `threads`: CTranslate2 intra-op threads (1 was as fast as 2 whenever
    anything else ran on this 2-core box). `beam_size`: partials; `final_beam_size`:
    prepare_final/finish. `prompt`: optional text Whisper reads as what was said before
    (names, domain words). `partial_interval_s`: new audio between partial
    decodes. `min_window_s`/`pad_s`: encoder window floor and silence padding (see module
    docstring). `chunk_s`: utterances longer than this are decoded in windows of it.
    `denoise`: subtract the line's steady noise before decoding (`spectral_subtract`).
    `model_id` names the model in error messages (`agentd models fetch <id>`).
    """

    name = "whisper"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int = 1,
        beam_size: int = 1,
        final_beam_size: int = 5,
        prompt: str | None = None,
        language: str = "en",
        compute_type: str = "int8",
        partial_interval_s: float = 1.0,
        min_window_s: float = 10.0,
        pad_s: float = 3.0,
        chunk_s: float = 25.0,
        denoise: bool = True,
        model_id: str = "whisper-tiny-en",
    ) -> None:
        model_dir = Path(model_dir)
        _check_model_dir(model_dir, model_id)
        if threads < 1 or beam_size < 1 or final_beam_size < 1:
            raise ValueError("threads, beam_size and final_beam_size must be >= 1")
        if pad_s <= 0.0 or pad_s + chunk_s > 30.0 or min_window_s > 30.0:
            raise ValueError("need pad_s > 0, pad_s + chunk_s <= 30 and min_window_s <= 30")
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer

            # A directory path never touches the hub; local_files_only keeps it that way.
            self._model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type=compute_type,
                cpu_threads=threads,
                local_files_only=True,
            )
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError variants
            raise SpeechError(
                f"cannot load Whisper model from {model_dir}: {exc}; "
                f"run `agentd models fetch {model_id}` to restore it"
            ) from exc
        multilingual = self._model.model.is_multilingual
        if not multilingual and language != "en":
            raise SpeechError(f"model {model_dir} is English-only; got language={language!r}")
        self.language = language
        self.model_dir = model_dir
        self.beam_size = beam_size
        self.final_beam_size = final_beam_size
        self.prompt = prompt
        self.denoise = denoise
        self.partial_interval_s = partial_interval_s
        import ctranslate2

        self._storage_view = ctranslate2.StorageView.from_array
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe", language=language
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        if prompt and prompt.strip():
            # Whisper reads text after <|startofprev|> as what was said before: it biases
            # spelling and vocabulary (names, "appointment") without being transcribed.
            previous = self._tokenizer.encode(" " + prompt.strip())[-_MAX_PROMPT_TOKENS:]
            self._prompt = [self._tokenizer.sot_prev, *previous, *self._prompt]
        self.end_margin_s = _END_MARGIN_S
        self._min_frames = int(min_window_s * 100)
        self._pad_frames = int(pad_s * 100)
        self._chunk_samples = int(chunk_s * WHISPER_RATE)

    def open_stream(self) -> WhisperStream:
        return WhisperStream(self)

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """One-shot: the final transcript of a whole 8 kHz int16 utterance."""
        stream = self.open_stream()
        stream.accept(pcm, partial=False)
        return stream.finish()

    # -- decoding (thread-safe: features are pure, CTranslate2 queues concurrent calls) --

    def decode(self, audio: np.ndarray, beam_size: int | None = None) -> _Decoded:
        """Decode <= chunk_s of 16 kHz float32 audio (greedy unless `beam_size` > 1)."""
        n_frames = math.ceil(len(audio) / _HOP)
        window = min(_MAX_FRAMES, max(self._min_frames, n_frames + self._pad_frames))
        window -= window % 2  # the encoder's stride-2 convolution
        padded = np.zeros(window * _HOP, dtype=np.float32)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        features = self._model.feature_extractor(padded, padding=0)[:, :window]
        encoded = self._model.model.encode(self._storage_view(np.ascontiguousarray(features[None])))
        seconds = len(audio) / WHISPER_RATE
        max_new = min(440 - len(self._prompt), 10 + int(8 * seconds))
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=beam_size or self.beam_size,
            max_length=len(self._prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        # CTranslate2's score is the cumulative log-prob over length**length_penalty (1).
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1) if tokens else -10.0
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return _Decoded("", avg_logprob)  # Whisper's own "this was silence" rule
        text = trim_repetition(self._tokenizer.decode(tokens).strip())
        return _Decoded(text, avg_logprob)


@dataclass(frozen=True)
class _Hypothesis:
    upto: int  # 8 kHz samples of the utterance it covers
    transcript: Transcript
    final: bool  # decoded with the final beam (a greedy partial is not reused as the final)


class WhisperStream:
    """One utterance. `accept` never waits for another thread's decode (it skips the
    partial instead), so the call loop can keep feeding audio while `prepare_final` runs."""

    def __init__(self, engine: WhisperAsr) -> None:
        self._engine = engine
        self._lock = threading.Lock()  # audio buffers and flags; held briefly
        self._decode_lock = threading.Lock()  # one decode at a time per stream
        self._audio8: list[np.ndarray] = []  # resampled per decode window, see _window
        self._samples8 = 0
        self._tail8 = np.zeros(0, dtype=np.int16)  # < one gate frame not yet measured
        self._levels: list[np.ndarray] = []  # RMS of each 20 ms frame so far
        self._last_partial_at = 0
        self._last_partial_text = ""
        self._best: _Hypothesis | None = None  # newest decode, reusable when only quiet followed
        self._chunk_texts: dict[tuple[int, bool], _Decoded] = {}  # completed chunks, decoded once
        self._finished = False
        self._cancelled = False
        self.decodes = 0  # model decodes run by this stream (tests and benchmarks read it)
        self.decode_seconds = 0.0

    # -- AsrStream --

    def accept(self, pcm: np.ndarray, *, partial: bool = True) -> Transcript | None:
        """Add 8 kHz int16 audio; decodes a partial at most every partial_interval_s."""
        samples = _as_int16(pcm)
        with self._lock:
            if self._cancelled:
                return None
            if self._finished:
                raise SpeechError("accept() after finish(): open a new stream per utterance")
            if len(samples):
                self._audio8.append(samples.copy())
            self._measure(samples)
            self._samples8 += len(samples)
            due = (
                partial
                and self._samples8 - self._last_partial_at
                >= self._engine.partial_interval_s * TELEPHONE_RATE
            )
            if due:
                # Only worth a decode if the caller said something since the last one.
                due = self._sound_span(_SPEECH_GATE)[1] > self._last_partial_at
                self._last_partial_at = self._samples8
        if not due or not self._decode_lock.acquire(blocking=False):
            return None  # a final being prepared is worth more than this partial
        try:
            hypothesis = self._decode_now(final=False)
        finally:
            self._decode_lock.release()
        if hypothesis is None or not hypothesis.transcript.text:
            return None
        with self._lock:
            if hypothesis.transcript.text == self._last_partial_text:
                return None
            self._last_partial_text = hypothesis.transcript.text
        return Transcript(
            hypothesis.transcript.text, final=False, confidence=hypothesis.transcript.confidence
        )

    def prepare_final(self) -> Transcript | None:
        """Decode everything fed so far now (call at the first silence the VAD hears).

        `finish()` returns this result without decoding again if only quiet audio arrives
        in between. Returns the candidate (final=False), or None after cancel.
        """
        with self._decode_lock:
            hypothesis = self._decode_now(final=True)
        if hypothesis is None:
            return None
        t = hypothesis.transcript
        return Transcript(t.text, final=False, confidence=t.confidence)

    def finish(self) -> Transcript:
        with self._lock:
            if self._cancelled:
                return Transcript("", final=True)
            self._finished = True
        with self._decode_lock:
            hypothesis = self._decode_now(final=True)
        if hypothesis is None:  # cancelled meanwhile
            return Transcript("", final=True)
        t = hypothesis.transcript
        return Transcript(t.text, final=True, confidence=t.confidence)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._audio8.clear()
            self._chunk_texts.clear()
            self._best = None

    # -- internals --

    def _measure(self, samples: np.ndarray) -> None:
        """Append the RMS of each complete 20 ms frame (caller holds the lock)."""
        data = np.concatenate([self._tail8, samples]) if len(self._tail8) else samples
        whole = len(data) // _GATE_FRAME * _GATE_FRAME
        self._tail8 = data[whole:].copy()
        if whole:
            frames = data[:whole].astype(np.float32).reshape(-1, _GATE_FRAME)
            self._levels.append(np.sqrt(np.mean(frames * frames, axis=1)))

    def _sound_span(self, gate: float) -> tuple[int, int]:
        """(start, end) in 8 kHz samples of the frames at >= `gate` x the speech level;
        (0, 0) when nothing rose above the absolute floor (caller holds the lock)."""
        levels = self._all_levels()
        audible = levels[levels >= _GATE_FLOOR_RMS]
        if not audible.size:
            return 0, 0
        threshold = max(_GATE_FLOOR_RMS, gate * float(np.percentile(audible, 90)))
        loud = np.flatnonzero(levels >= threshold)
        return int(loud[0]) * _GATE_FRAME, (int(loud[-1]) + 1) * _GATE_FRAME

    def _keep_span(self) -> tuple[int, int]:
        """(start, end) in 8 kHz samples of what is decoded: from the first to the last
        frame above the absolute floor. Only true silence is trimmed, never soft speech
        however far under the loud words it is (a relative gate would cut a quiet first
        word); (0, 0) when nothing is audible (caller holds the lock)."""
        levels = self._all_levels()
        loud = np.flatnonzero(levels >= _GATE_FLOOR_RMS)
        if not loud.size:
            return 0, 0
        return int(loud[0]) * _GATE_FRAME, (int(loud[-1]) + 1) * _GATE_FRAME

    def _all_levels(self) -> np.ndarray:
        if len(self._levels) > 1:
            self._levels = [np.concatenate(self._levels)]
        return self._levels[0] if self._levels else np.zeros(0, np.float32)

    def _decode_now(self, *, final: bool) -> _Hypothesis | None:
        """Hypothesis for all audio so far; reuses the newest one when only quiet followed
        (a greedy partial only for another partial). Caller holds the decode lock."""
        with self._lock:
            if self._cancelled:
                return None
            best = self._best
            said_until = self._sound_span(_SPEECH_GATE)[1]
            if best is not None and best.upto >= said_until and (best.final or not final):
                return best
            upto = self._samples8
            first, last = self._keep_span()
            if last == 0:  # nothing but quiet: nothing to hear
                best = _Hypothesis(upto, Transcript("", final=False), final=True)
                self._best = best
                return best
            if len(self._audio8) > 1:
                self._audio8 = [np.concatenate(self._audio8)]
            audio8 = self._audio8[0] if self._audio8 else np.zeros(0, np.int16)
        # Margins around the kept span: soft word edges sit under any gate.
        begin = max(0, first - int(_TRIM_MARGIN_S * TELEPHONE_RATE))
        end = last + int(self._engine.end_margin_s * TELEPHONE_RATE)
        speech = _window(audio8, begin, end, denoise=self._engine.denoise)
        started = time.perf_counter()
        decoded = self._decode_chunks(speech, 2 * begin, final)
        elapsed = time.perf_counter() - started
        confidence = None
        if decoded:
            mean_logprob = sum(d.avg_logprob for d in decoded) / len(decoded)
            confidence = float(min(1.0, max(0.0, math.exp(mean_logprob))))
        text = " ".join(d.text for d in decoded if d.text)
        hypothesis = _Hypothesis(
            upto, Transcript(text, final=False, confidence=confidence), final=final
        )
        with self._lock:
            self.decodes += 1
            self.decode_seconds += elapsed
            if self._cancelled:
                return None
            self._best = hypothesis
        return hypothesis

    def _decode_chunks(self, speech: np.ndarray, offset: int, final: bool) -> list[_Decoded]:
        """Decode in chunk_s windows; completed chunks are decoded once and remembered."""
        engine = self._engine
        size = engine._chunk_samples
        beam = engine.final_beam_size if final else engine.beam_size
        results = []
        for start in range(0, max(1, len(speech)), size):
            piece = speech[start : start + size]
            complete = len(piece) == size and start + size < len(speech)
            key = (offset + start, final)
            cached = self._chunk_texts.get(key) if complete else None
            if cached is None:
                if len(piece) < WHISPER_RATE // 10:
                    continue  # < 100 ms: nothing Whisper can read
                cached = engine.decode(piece, beam_size=beam)
                if complete:
                    self._chunk_texts[key] = cached
            results.append(cached)
        return results


def _window(audio8: np.ndarray, begin: int, end: int, *, denoise: bool = False) -> np.ndarray:
    """audio8[begin:end] at 16 kHz float32, zero-filled past what has arrived (and with its
    steady noise subtracted when `denoise`).

    Whisper's text changes with tiny differences in the window (a 40 ms longer tail, or a
    stream resampler's held-back samples, can drop the first words), so the window is a
    function of the 8 kHz samples alone: a final prepared at the first silence and a
    one-shot decode of the whole clip see the same input.
    """
    segment = np.zeros(max(0, end - begin), dtype=np.int16)
    heard = audio8[begin:end]
    segment[: len(heard)] = heard
    resampler = StreamResampler(TELEPHONE_RATE, WHISPER_RATE)
    if denoise:
        cleaned = spectral_subtract(segment.astype(np.float32) / np.float32(32768.0))
        out = np.concatenate((resampler.process(cleaned), resampler.flush()))
    else:
        out = np.concatenate((resampler.process(segment), resampler.flush()))
    return out.astype(np.float32) / np.float32(32768.0)


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    array = np.asarray(pcm)
    if array.dtype != np.int16:
        raise SpeechError(f"ASR input must be int16 PCM at 8 kHz, got dtype {array.dtype}")
    return array.reshape(-1)
