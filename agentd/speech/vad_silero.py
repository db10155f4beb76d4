"""Silero VAD (ONNX) at 8 kHz: one shared onnxruntime session, one small stream per call.

The model runs natively at 8 kHz on 256-sample windows (32 ms) with 32 samples of context
from the previous window and a recurrent state of shape [2, 1, 128]. Each stream keeps its
own context, state and detector; only the session is shared (onnxruntime's `run` is
thread-safe), so concurrent calls never see each other's audio.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from pathlib import Path

import numpy as np

from agentd.speech.interfaces import (
    TELEPHONE_RATE,
    SpeechEnded,
    SpeechError,
    SpeechStarted,
    VadConfig,
    VadEvent,
)

__all__ = ["SileroVad", "SileroVadStream", "MODEL_ID", "WINDOW_SAMPLES", "CONTEXT_SAMPLES"]

MODEL_ID = "silero-vad"
WINDOW_SAMPLES = 256  # what the 8 kHz model expects per step (32 ms)
CONTEXT_SAMPLES = 32  # tail of the previous window prepended to each step
_STATE_SHAPE = (2, 1, 128)
_WINDOW_S = WINDOW_SAMPLES / TELEPHONE_RATE
# A not-yet-confirmed burst survives this much silence inside it (a stop consonant's closure),
# but no more: two clicks 100 ms apart must not add up to min_speech_ms.
_PENDING_GAP_S = 0.070
_INT16_SCALE = np.float32(1 / 32768)
# Edge refinement. The model's probability rises a window late and decays over ~100 ms
# after speech stops, so events are dated by the signal's energy near the model's decision:
# 8 ms blocks above max(noise floor + 6 dB, -60 dBFS) (and, at the end, no more than 35 dB
# below the loudest block of the utterance), looking back at most _LOOKBACK_WINDOWS.
_BLOCK = 64
_BLOCK_S = _BLOCK / TELEPHONE_RATE
_LOOKBACK_WINDOWS = 8  # 256 ms
_FLOOR_WINDOWS = 64  # the noise floor is the quietest block of the last ~2 s
_FLOOR_MARGIN_DB = 6.0
_ABSOLUTE_FLOOR_DB = -60.0
_TAIL_RANGE_DB = 35.0
_MODEL_HANGOVER_S = 0.096  # how long the probability stays up after a sound stops


def _missing_model_error(path: Path) -> SpeechError:
    return SpeechError(
        f"Silero VAD model file not found: {path} "
        f"(install it with `agentd models fetch {MODEL_ID}`)"
    )


class SileroVad:
    """`VadModel` on onnxruntime. Load once per process; call `stream()` once per call."""

    name = MODEL_ID

    def __init__(self, model_path: str | Path, *, threads: int = 1) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise _missing_model_error(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise SpeechError(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from exc
        options = ort.SessionOptions()
        # Each window is tiny: threads only add wake-up latency and steal cores from ASR/LLM.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own, undocumented, exception types
            raise SpeechError(
                f"cannot load Silero VAD model {path}: {exc} "
                f"(re-fetch it with `agentd models fetch {MODEL_ID}`)"
            ) from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise SpeechError(
                f"{path} is not a Silero VAD v5+ model (inputs {sorted(names)}, "
                "expected input/state/sr)"
            )
        self.model_path = path
        self._sample_rate = np.array(TELEPHONE_RATE, dtype=np.int64)

    def stream(self, config: VadConfig | None = None) -> SileroVadStream:
        return SileroVadStream(self, config or VadConfig())

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One model step: `window` float32 [1, 288] (context + chunk), `state` [2, 1, 128].

        Returns the speech probability and the next state.
        """
        session = self._session
        if session is None:
            raise SpeechError("Silero VAD model was closed")
        prob, next_state = session.run(
            None, {"input": window, "state": state, "sr": self._sample_rate}
        )
        return float(prob.reshape(-1)[0]), next_state

    def close(self) -> None:
        """Drop the session (streams made from it must not be fed afterwards)."""
        self._session = None


class _Phase(Enum):
    SILENCE = "silence"
    PENDING = "pending"  # above threshold, not yet min_speech_ms long
    SPEECH = "speech"


class SileroVadStream:
    """One call's VAD: buffers frames into 32 ms windows and emits start/end events.

    Detection: a window with probability >= threshold opens a candidate; it becomes speech
    (SpeechStarted, dated where its sound began) once its sound has lasted min_speech_ms
    with no silence gap longer than ~70 ms. During speech a window below neg_threshold starts
    a silence run that only a window >= threshold cancels (hysteresis); once the run has
    lasted end_of_turn_ms, SpeechEnded is emitted, dated where the run began. Both edges
    are dated by the signal's energy next to the model's decision (see _onset_before and
    _offset_before), so the silence is timed from where the sound really stopped.
    """

    def __init__(self, model: SileroVad, config: VadConfig) -> None:
        if not 0.0 <= config.neg_threshold <= config.threshold <= 1.0:
            raise ValueError(
                f"need 0 <= neg_threshold <= threshold <= 1, got {config.neg_threshold}, "
                f"{config.threshold}"
            )
        if config.min_speech_ms < 0 or config.end_of_turn_ms < 0:
            raise ValueError("min_speech_ms and end_of_turn_ms must be >= 0")
        self._model = model
        self.config = config
        self._min_speech_s = config.min_speech_ms / 1000
        self._end_of_turn_s = config.end_of_turn_ms / 1000
        self._window = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples_fed = 0
        self.windows_analysed = 0
        self._reset_detector()

    def _reset_detector(self) -> None:
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._window[:] = 0.0
        self._pending = np.zeros(0, dtype=np.float32)
        self._window_start = self._samples_fed / TELEPHONE_RATE  # time of the next window
        self._probability = 0.0
        self._phase = _Phase.SILENCE
        self._speech_start = 0.0
        self._peak = 0.0
        self._voiced_end = 0.0  # end of the last window that counted as speech
        self._loud_end = 0.0  # end of the last loud 8 ms block of a pending burst
        self._silence_start: float | None = None
        # (window start, per-8-ms-block level in dBFS) of the latest windows
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=_LOOKBACK_WINDOWS)
        self._floors: deque[float] = deque(maxlen=_FLOOR_WINDOWS)
        self._loudest_db = _ABSOLUTE_FLOOR_DB

    @property
    def probability(self) -> float:
        return self._probability

    @property
    def speaking(self) -> bool:
        return self._phase is _Phase.SPEECH

    @property
    def time(self) -> float:
        return self._samples_fed / TELEPHONE_RATE

    def reset(self) -> None:
        """Forget model state, buffered audio and any speech in progress (no event).

        Stream time keeps counting: it stays tied to the call's audio.
        """
        self._reset_detector()

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Add 8 kHz audio (int16, or float in [-1, 1]); returns the events it completed."""
        samples = _as_float32(pcm)
        if samples.size == 0:
            return []
        self._samples_fed += samples.size
        buffered = (
            np.concatenate((self._pending, samples)) if self._pending.size else samples
        )
        events: list[VadEvent] = []
        whole = buffered.size - buffered.size % WINDOW_SAMPLES
        for offset in range(0, whole, WINDOW_SAMPLES):
            self._analyse(buffered[offset : offset + WINDOW_SAMPLES], events)
        self._pending = buffered[whole:].copy()
        return events

    def _analyse(self, chunk: np.ndarray, events: list[VadEvent]) -> None:
        window = self._window
        window[0, CONTEXT_SAMPLES:] = chunk
        prob, self._state = self._model.infer(window, self._state)
        # The next step's context is this window's last samples.
        window[0, :CONTEXT_SAMPLES] = chunk[-CONTEXT_SAMPLES:]
        self.windows_analysed += 1
        self._probability = prob
        start = self._window_start
        end = start + _WINDOW_S
        self._window_start = end
        levels = _block_levels_db(chunk)
        self._floors.append(float(levels.min()))
        if self._phase is not _Phase.SILENCE:
            self._loudest_db = max(self._loudest_db, float(levels.max()))
        self._detect(prob, start, end, levels, events)
        self._recent.append((start, levels))

    def _detect(
        self, prob: float, start: float, end: float, levels: np.ndarray,
        events: list[VadEvent],
    ) -> None:
        cfg = self.config
        loud = np.flatnonzero(levels > self._energy_floor_db())
        loud_end = start + (int(loud[-1]) + 1) * _BLOCK_S if loud.size else None
        if self._phase is _Phase.SILENCE:
            if prob >= cfg.threshold:
                self._phase = _Phase.PENDING
                self._speech_start = self._onset_before(start)
                self._voiced_end, self._peak = end, prob
                self._loud_end = loud_end if loud_end is not None else start
                self._loudest_db = float(levels.max())
                self._confirm_if_long_enough(events)
            return
        if self._phase is _Phase.PENDING:
            if prob >= cfg.neg_threshold:
                self._voiced_end = end
                if loud_end is not None:
                    self._loud_end = loud_end
                self._peak = max(self._peak, prob)
                self._confirm_if_long_enough(events)
            elif end - self._voiced_end > _PENDING_GAP_S:
                self._phase = _Phase.SILENCE  # a click or a burst of line noise
            return
        # SPEECH
        if prob >= cfg.threshold:
            self._silence_start = None
            self._voiced_end = end
        elif prob < cfg.neg_threshold:
            if self._silence_start is None:
                self._silence_start = self._offset_before(start)
        elif self._silence_start is None:
            self._voiced_end = end  # between thresholds: still speech until it drops
        if self._silence_start is not None and end - self._silence_start >= self._end_of_turn_s:
            stopped = self._silence_start
            events.append(SpeechEnded(at=stopped, duration=stopped - self._speech_start))
            self._phase = _Phase.SILENCE
            self._silence_start = None

    def _confirm_if_long_enough(self, events: list[VadEvent]) -> None:
        # Measured on the signal's energy; the model's own span includes its hangover, so it
        # alone confirms only with that allowance (a line too noisy for the energy measure).
        heard = self._loud_end - self._speech_start
        modelled = self._voiced_end - self._speech_start - _MODEL_HANGOVER_S
        if max(heard, modelled) >= self._min_speech_s - 1e-9:
            self._phase = _Phase.SPEECH
            self._silence_start = None
            events.append(SpeechStarted(at=self._speech_start, probability=self._peak))


    def _energy_floor_db(self) -> float:
        floor = min(self._floors) if self._floors else _ABSOLUTE_FLOOR_DB
        return max(floor + _FLOOR_MARGIN_DB, _ABSOLUTE_FLOOR_DB)

    def _blocks_before(self, time: float) -> list[tuple[float, float]]:
        """(block start, level) of the remembered blocks that start before `time`, newest
        first."""
        blocks = []
        for window_start, levels in reversed(self._recent):
            for i in range(len(levels) - 1, -1, -1):
                block_start = window_start + i * _BLOCK_S
                if block_start < time - 1e-9:
                    blocks.append((block_start, float(levels[i])))
        return blocks

    def _onset_before(self, start: float) -> float:
        """Where the sound that the model just called speech began: the start of the run of
        loud blocks that leads up to `start`."""
        floor = self._energy_floor_db()
        onset = start
        for block_start, level in self._blocks_before(start):
            if level <= floor:
                break
            onset = block_start
        return onset

    def _offset_before(self, silence: float) -> float:
        """Where speech stopped, given the model's first silent window at `silence`: the end
        of the last loud block before it (or `silence` if none is remembered)."""
        threshold = max(self._energy_floor_db(), self._loudest_db - _TAIL_RANGE_DB)
        for block_start, level in self._blocks_before(silence):
            if block_start < self._speech_start:
                break
            if level > threshold:
                return min(silence, block_start + _BLOCK_S)
        return silence


def _block_levels_db(chunk: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each 8 ms block of a float window."""
    blocks = chunk.reshape(-1, _BLOCK).astype(np.float64)
    power = np.mean(blocks * blocks, axis=1)
    return 10 * np.log10(np.maximum(power, 1e-12))


def _as_float32(pcm: np.ndarray) -> np.ndarray:
    samples = np.asarray(pcm).reshape(-1)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) * _INT16_SCALE
    if samples.dtype.kind == "f":
        return np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    if samples.dtype.kind in "iu":
        # Wider integers are taken as int16-range PCM (clipped), not rescaled.
        return np.clip(samples, -32768, 32767).astype(np.float32) * _INT16_SCALE
    raise TypeError(f"expected int16 or float PCM, got {samples.dtype}")
