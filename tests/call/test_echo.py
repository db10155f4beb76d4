"""EchoGuard: the agent's own voice coming back over a line echo path (delay, return loss,
line noise, G.711) is never "more than echo"; a caller talking over the agent at a normal
level is; with the agent silent everything passes. Real speech (espeak-ng), not tones."""

from __future__ import annotations

import numpy as np
import pytest

from agentd.call.echo import FRAME_SAMPLES, EchoConfig, EchoGuard
from agentd.speech.testset import active_speech_power
from tests.speech.conftest import speak_espeak, through_g711

RATE = 8000
F = FRAME_SAMPLES
AGENT_LINE = ("Our opening hours are nine to five on weekdays, and ten to two on Saturdays. "
              "Is there anything else I can help with?")
CALLER_LINE = "Wait, I need to book an appointment for Tuesday."
LEVEL_DBFS = -20.0  # both directions at the same nominal speech level


def at_level(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    gain = 32768 * 10 ** (dbfs / 20) / np.sqrt(active_speech_power(pcm))
    return np.asarray(pcm, dtype=np.float64) * gain


@pytest.fixture(scope="module")
def agent() -> np.ndarray:
    return at_level(speak_espeak(AGENT_LINE), LEVEL_DBFS)


@pytest.fixture(scope="module")
def caller() -> np.ndarray:
    return at_level(speak_espeak(CALLER_LINE, voice="en-gb", pitch=70), LEVEL_DBFS)


def frame_rms_dbfs(pcm: np.ndarray) -> np.ndarray:
    frames = pcm[: len(pcm) // F * F].reshape(-1, F)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-9) / 32768)


def line(agent: np.ndarray, delay_ms: float, erl_db: float, *, noise_dbfs: float = -60.0,
         caller: np.ndarray | None = None, caller_at_s: float = 0.0,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(far, near): what the agent sends, and what comes back: its echo after `delay_ms`
    and `erl_db` of loss, line noise, the caller's voice if any; through G.711."""
    total = len(agent) + RATE
    far = np.zeros(total)
    far[: len(agent)] = agent
    delay = int(delay_ms * RATE / 1000)
    near = np.zeros(total)
    near[delay:] = far[: total - delay] * 10 ** (-erl_db / 20)
    near += np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (noise_dbfs / 20), total)
    if caller is not None:
        start = int(caller_at_s * RATE)
        count = min(len(caller), total - start)
        near[start:start + count] += caller[:count]
    as_int16 = lambda x: np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return as_int16(far), through_g711(as_int16(near))


def run(guard: EchoGuard, far: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame by frame as the call loop would: far frame i goes out at i*20 ms, near frame i
    arrives complete at (i+1)*20 ms. Returns (more than echo, agent audio in the window)."""
    passed, active = [], []
    for i in range(len(near) // F):
        guard.far_end(far[i * F:(i + 1) * F], i * F / RATE)
        at = (i + 1) * F / RATE
        active.append(guard.far_active(at))
        passed.append(guard.near_end(near[i * F:(i + 1) * F], at))
    return np.array(passed), np.array(active)


@pytest.mark.parametrize("delay_ms", [0, 20, 40, 60])
@pytest.mark.parametrize("erl_db", [6, 10, 20])
def test_the_agents_echo_is_never_more_than_echo(agent: np.ndarray, delay_ms: int,
                                                 erl_db: int) -> None:
    for seed in range(2):
        far, near = line(agent, delay_ms, erl_db, seed=seed)
        guard = EchoGuard()
        passed, active = run(guard, far, near)
        assert active.sum() > 200  # the agent talked for most of the clip
        assert not (passed & active).any(), np.flatnonzero(passed & active)
        assert guard.stats.echo_frames == int(active.sum())


def test_echo_on_a_long_trunk_within_max_delay(agent: np.ndarray) -> None:
    far, near = line(agent, 150, 8)  # satellite-ish trunk plus a jitter buffer
    passed, active = run(EchoGuard(), far, near)
    assert not (passed & active).any()
    # ... while a window too short for the path lets echo through: the window matters
    passed, active = run(EchoGuard(EchoConfig(max_delay_ms=20)), far, near)
    assert passed[active].any()


@pytest.mark.parametrize("delay_ms", [0, 40, 60])
@pytest.mark.parametrize("erl_db", [6, 20])
@pytest.mark.parametrize("caller_at_s", [0.5, 1.3, 2.2, 3.1, 4.0])
def test_a_caller_over_the_agent_is_detected_within_two_frames(
        agent: np.ndarray, caller: np.ndarray, delay_ms: int, erl_db: int,
        caller_at_s: float) -> None:
    far, near = line(agent, delay_ms, erl_db, caller=caller, caller_at_s=caller_at_s)
    passed, active = run(EchoGuard(), far, near)
    levels = frame_rms_dbfs(caller)
    # The caller's voice reaches a normal level (within 10 dB of its speech level) here:
    onset = int(caller_at_s * RATE) // F + int(np.flatnonzero(levels > LEVEL_DBFS - 10)[0])
    assert active[onset]  # the agent is talking at that moment
    assert passed[onset:onset + 3].any(), passed[onset - 2:onset + 6]
    # ... and most of its speech frames pass (Geigel misses the quieter ones under a loud
    # agent: about 3 in 4 pass at equal levels)
    speech = np.flatnonzero(levels > LEVEL_DBFS - 10) + int(caller_at_s * RATE) // F
    assert passed[speech].mean() > 0.65


def test_with_the_agent_silent_every_frame_passes(caller: np.ndarray) -> None:
    silent = np.zeros(len(caller) + RATE)
    far, near = line(silent, 0, 6, caller=caller, caller_at_s=0.3)
    passed, active = run(EchoGuard(), far, near)
    assert passed.all() and not active.any()
    guard = EchoGuard()  # nothing sent at all
    assert all(guard.near_end(near[i * F:(i + 1) * F], (i + 1) / 50)
               for i in range(len(near) // F))


def test_echo_tail_is_guarded_until_max_delay_after_the_agent_stops() -> None:
    guard = EchoGuard(EchoConfig(max_delay_ms=100, hangover_ms=0))
    loud = np.full(F, 8000, np.int16)
    echo = np.full(F, 2000, np.int16)  # 12 dB down
    guard.far_end(np.tile(loud, 5), 0.0)  # 0 .. 0.1 s
    assert not guard.near_end(echo, 0.12)
    assert not guard.near_end(echo, 0.2)  # window [0.08, 0.2] still holds agent audio
    assert guard.near_end(echo, 0.24)  # window [0.12, 0.24]: the agent has been silent


def test_hangover_keeps_the_caller_passing_through_a_dip() -> None:
    guard = EchoGuard(EchoConfig(hangover_ms=40))
    guard.far_end(np.full(F * 50, 4000, np.int16), 0.0)
    quiet = np.full(F, 1000, np.int16)  # only echo-sized
    loud = np.full(F, 12000, np.int16)
    assert not guard.near_end(quiet, 0.3)
    assert guard.near_end(loud, 0.32)
    assert guard.near_end(quiet, 0.34) and guard.near_end(quiet, 0.36)  # within 40 ms
    assert not guard.near_end(quiet, 0.38)


def test_flush_forgets_audio_that_never_played() -> None:
    guard = EchoGuard(EchoConfig(hangover_ms=0))
    guard.far_end(np.full(F * 100, 16000, np.int16), 0.0)  # 2 s queued
    caller = np.full(F, 6000, np.int16)
    assert not guard.near_end(caller, 0.5)
    guard.flush(0.5)  # barge-in at 0.5 s: the rest was dropped from the queue
    assert not guard.near_end(caller, 0.52)  # what did play may still come back
    assert guard.near_end(caller, 0.8)  # past the echo window of what played


def test_disabled_guard_and_odd_input() -> None:
    off = EchoGuard(EchoConfig(enabled=False))
    off.far_end(np.full(F, 30000, np.int16), 0.0)
    assert off.near_end(np.zeros(F, np.int16), 0.02)
    guard = EchoGuard()
    guard.far_end(np.zeros(0, np.int16), 0.0)
    guard.far_end(np.full(F, 30000, np.int16), 0.0)
    assert guard.near_end(np.zeros(0, np.int16), 0.02)  # nothing received: not echo
    assert not guard.near_end(np.full((1, F), 100, np.int16), 0.02)  # 2-D frame, echo-sized
    with pytest.raises(ValueError):
        EchoConfig(max_delay_ms=-1)


def test_on_a_line_without_echo_a_quiet_caller_is_heard_over_a_loud_agent(
        agent: np.ndarray, caller: np.ndarray) -> None:
    # The caller 20 dB under the agent: the fixed Geigel margin would call them echo, but
    # the line's measured loss (no echo at all) lets them through.
    quiet = at_level(caller, LEVEL_DBFS - 20)
    far, near = line(agent, 0, 100.0, caller=quiet, caller_at_s=1.5)
    guard = EchoGuard()
    passed, _ = run(guard, far, near)
    assert guard.measured_loss_db is not None and guard.measured_loss_db > 20
    start = int(1.5 * RATE) // F
    count = min(len(quiet) // F, len(passed) - start)
    speech = frame_rms_dbfs(quiet[: count * F]) > -45.0  # the caller's frames over the noise
    caller_frames = passed[start:start + count][speech]
    assert caller_frames.mean() > 0.7  # most of the caller gets through, not only vowels
    first = int(np.argmax(speech))
    assert passed[start + first] or passed[start + first + 1]  # at once, not at the vowels
