"""Line-echo guard, sans-IO: is a received frame more than the agent's own voice coming back?

On real lines the agent's audio returns attenuated and delayed (hybrid echo the gateway's
canceller left over: echo return loss typically >= 6 dB, delay up to ~64 ms, more on some
trunks). A VAD hears that echo as speech, and the agent would cut itself off. `EchoGuard`
makes the Geigel double-talk decision (ITU-T G.168's classic detector) on 20 ms frames:

    near frame is more than echo  <=>  peak|near| > peak|far over the echo window| x margin
                                                     + the line-noise allowance

Peaks, not energies: an echo sample is a delayed far sample times a gain below 1, so with
a return loss of at least -margin_db its peak can never pass the far peak over the window,
whatever the delay inside the window (energies over a window can). The default margin,
-5 dB, leaves 1 dB over a 6 dB return loss for G.711 quantisation; the noise allowance
(-45 dBFS, added) covers line noise riding on the echo. The echo window for a
near frame that ends at `at` and lasts `d` is far audio sent in [at - d - max_delay, at].
Once a frame passes, the next `hangover_ms` pass too (speech has dips; the caller's decay
must not flip back to "echo" mid-word).

Clock: one clock for both directions, seconds (the call loop's audio clock). `far_end` gets
the time the audio's first sample goes on the wire (the loop knows: now + what is queued
ahead of it), `near_end` the time the received frame's last sample arrived. Because the
loop's clock sees the receive path through the jitter buffer, `max_delay_ms` must cover the
whole round trip as the loop sees it (line echo + network + jitter buffer), hence 200 ms.
Audio flushed before it played (barge-in) is taken back with `flush(at)`.

The line's actual echo return loss is measured as the call goes, as echo cancellers do: the
loss of each received frame judged echo against the far peak of its window while the agent
talks, the 10th percentile over the last second of them (frames with the caller in them are
left out, so a barge-in cannot move it).
Once a second of it is known, the margin becomes that loss less 10 dB when that is more
lenient than the fixed margin. On a line that returns no echo the caller is then heard the
moment they are above the line's noise, not only once they are louder than the agent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

RATE = 8000
FRAME_SAMPLES = 160
_FULL_SCALE = 32768.0
_MAX_FAR_FRAMES = 30_000  # 10 min of queued agent audio; older entries are dropped first
_LOSS_FRAMES = 50  # echo-return-loss samples kept: the last second of agent talk
_LOSS_MIN_FRAMES = 25  # measured loss trusted from half a second of samples
_LOSS_PERCENTILE = 10.0
_LOSS_SAFETY_DB = 10.0  # the margin stays this far under the measured loss
_LOSS_CAP_DB = 60.0


@dataclass(frozen=True)
class EchoConfig:
    enabled: bool = True  # False: every frame is more than echo
    max_delay_ms: float = 200.0  # longest far -> near round trip on the loop's clock
    margin_db: float = -5.0  # near must pass the far peak times this (ERL >= 6 dB, 1 dB spare)
    hangover_ms: float = 60.0  # a frame that passed keeps the next ones passing this long
    noise_dbfs: float = -45.0  # peaks below this are line noise, never more than echo

    def __post_init__(self) -> None:
        if self.max_delay_ms < 0 or self.hangover_ms < 0:
            raise ValueError("max_delay_ms and hangover_ms must not be negative")
        if self.margin_db > 20 or self.noise_dbfs > 0:
            raise ValueError("margin_db must be at most 20 and noise_dbfs at most 0")


@dataclass
class EchoStats:
    near_frames: int = 0
    echo_frames: int = 0  # judged only echo while the agent's audio was in the window
    far_frames: int = 0
    dropped_far: int = 0  # far frames forgotten because the backlog was full


class EchoGuard:
    """Geigel double-talk detector over the agent's sent audio and the caller's frames."""

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.config = config or EchoConfig()
        self.stats = EchoStats()
        self._gain = float(10 ** (self.config.margin_db / 20))
        self._noise_peak = _FULL_SCALE * float(10 ** (self.config.noise_dbfs / 20))
        self._max_delay = self.config.max_delay_ms / 1000.0
        self._hangover = self.config.hangover_ms / 1000.0
        self._far: deque[tuple[float, float, float]] = deque()  # (start, end, peak), by start
        self._passed_at: float | None = None  # end of the last frame that was more than echo
        self._losses: deque[float] = deque(maxlen=_LOSS_FRAMES)  # dB, far peak over near peak

    def far_end(self, pcm: np.ndarray, at: float) -> None:
        """Agent audio (8 kHz int16, any length) whose first sample goes out at `at`."""
        samples = np.asarray(pcm).reshape(-1)
        if samples.size == 0:
            return
        magnitude = np.abs(samples.astype(np.int32))
        for offset in range(0, magnitude.size, FRAME_SAMPLES):
            piece = magnitude[offset:offset + FRAME_SAMPLES]
            start = at + offset / RATE
            self._add_far((start, start + piece.size / RATE, float(piece.max())))

    def flush(self, at: float) -> None:
        """Forget agent audio scheduled to start at or after `at` (flushed, never sent)."""
        while self._far and self._far[-1][0] >= at:
            self._far.pop()

    def near_end(self, pcm: np.ndarray, at: float) -> bool:
        """True when the received frame ending at `at` holds more than echo of the agent."""
        samples = np.asarray(pcm).reshape(-1)
        self.stats.near_frames += 1
        if not self.config.enabled or samples.size == 0:
            return True
        duration = samples.size / RATE
        self._forget_before(at - duration - self._max_delay)
        far_peak = self._far_peak(at - duration - self._max_delay, at)
        near_peak = float(np.abs(samples.astype(np.int32)).max())
        if far_peak <= 0.0:
            return True  # the agent sent nothing that could come back now
        if near_peak > far_peak * self._margin_gain() + self._noise_peak:
            self._passed_at = at
            return True
        if self._passed_at is not None and at - self._passed_at <= self._hangover + 1e-9:
            return True
        if far_peak > 4 * self._noise_peak:
            # Only echo (or line noise) while the agent talks: this frame measures the loss.
            # Frames with the caller in them never do, so their speech cannot lower it.
            loss = 20.0 * float(np.log10(far_peak / max(near_peak, 1.0)))
            self._losses.append(min(max(loss, 0.0), _LOSS_CAP_DB))
        self.stats.echo_frames += 1
        return False

    @property
    def measured_loss_db(self) -> float | None:
        """The line's echo return loss as measured so far (None until known)."""
        if len(self._losses) < _LOSS_MIN_FRAMES:
            return None
        return float(np.percentile(np.fromiter(self._losses, float), _LOSS_PERCENTILE))

    def _margin_gain(self) -> float:
        loss = self.measured_loss_db
        if loss is None:
            return self._gain
        return min(self._gain, float(10 ** (-(loss - _LOSS_SAFETY_DB) / 20)))

    def far_active(self, at: float, samples: int = FRAME_SAMPLES) -> bool:
        """Whether agent audio could be in a received frame of `samples` ending at `at`."""
        return self._far_peak(at - samples / RATE - self._max_delay, at) > 0.0

    def reset(self) -> None:
        self._far.clear()
        self._passed_at = None
        self._losses.clear()

    # -- internals --

    def _add_far(self, entry: tuple[float, float, float]) -> None:
        self.stats.far_frames += 1
        self._far.append(entry)
        if len(self._far) > _MAX_FAR_FRAMES:
            self._far.popleft()
            self.stats.dropped_far += 1

    def _forget_before(self, t: float) -> None:
        while self._far and self._far[0][1] < t:
            self._far.popleft()

    def _far_peak(self, start: float, end: float) -> float:
        peak = 0.0
        for f_start, f_end, f_peak in self._far:
            if f_start > end:
                break
            if f_end > start and f_peak > peak:
                peak = f_peak
        return peak
