"""Call recorder: stereo layout, time alignment, gaps, bounded memory, file validity."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from agentd.media.recorder import CallRecorder

RATE = 8000


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        frames = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, frames.reshape(-1, params.nchannels)


def tone(samples: int, hz: float = 400.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(samples) / RATE
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_tones_land_on_right_channel_at_right_sample(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller = tone(1600, 300)
    agent = tone(800, 500)
    start = 1234.5  # a monotonic-clock reading, not zero
    with CallRecorder(path, rate=RATE, start=start) as rec:
        for i in range(0, len(caller), 160):  # 20 ms frames
            rec.write_caller(caller[i : i + 160], at=start + i / RATE)
        rec.write_agent(agent, at=start + 0.5)
    params, frames = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, RATE)
    assert params.nframes == 4000 + 800
    assert np.array_equal(frames[:1600, 0], caller)
    assert np.array_equal(frames[4000:4800, 1], agent)
    # Gaps are silence on each channel.
    assert not frames[1600:, 0].any()
    assert not frames[:4000, 1].any()


def test_frames_arriving_out_of_order_and_with_gaps(tmp_path: Path) -> None:
    path = tmp_path / "gaps.wav"
    frames_in = [tone(160, 200 + 50 * i) for i in range(5)]
    with CallRecorder(path) as rec:
        for i in (0, 3, 1, 4):  # frame 2 lost, 1 late
            rec.write_caller(frames_in[i], at=0.02 * i)
    _, frames = read_wav(path)
    assert len(frames) == 800
    for i in (0, 1, 3, 4):
        assert np.array_equal(frames[160 * i : 160 * (i + 1), 0], frames_in[i])
    assert not frames[320:480].any()


def test_overlapping_write_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "overlap.wav"
    with CallRecorder(path) as rec:
        rec.write_agent(np.full(320, 1000, np.int16), at=0.0)
        rec.write_agent(np.full(160, -7, np.int16), at=0.01)  # sample 80
    _, frames = read_wav(path)
    assert frames[:80, 1].tolist() == [1000] * 80
    assert frames[80:240, 1].tolist() == [-7] * 160
    assert frames[240:320, 1].tolist() == [1000] * 80
    assert not frames[:, 0].any()


def test_rounding_of_time_to_sample_offset(tmp_path: Path) -> None:
    path = tmp_path / "round.wav"
    with CallRecorder(path, rate=RATE, start=10.0) as rec:
        rec.write_caller(np.array([5], np.int16), at=10.0 + 99.6 / RATE)  # sample 100
    _, frames = read_wav(path)
    assert len(frames) == 101 and frames[100, 0] == 5


def test_long_call_written_incrementally_with_bounded_buffer(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    frame = tone(160)
    rec = CallRecorder(path, keep_seconds=1.0)
    seconds = 30
    for n in range(seconds * 50):
        rec.write_caller(frame, at=n * 0.02)
        rec.write_agent(frame // 2, at=n * 0.02 + 0.005)
        held = (n + 1) * 160 - rec.frames_written
        assert held <= 2 * RATE + 160  # at most twice the window stays in memory
    assert rec.frames_written >= (seconds - 2) * RATE
    rec.close()
    _, frames = read_wav(path)
    assert len(frames) == seconds * RATE + 40
    assert np.array_equal(frames[:-40, 0], np.tile(frame, seconds * 50))
    assert np.array_equal(frames[40:, 1], np.tile(frame // 2, seconds * 50))
    assert rec.dropped_samples == 0


def test_write_too_far_behind_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "late.wav"
    with CallRecorder(path, keep_seconds=1.0) as rec:
        rec.write_caller(np.ones(160, np.int16), at=0.0)
        # Ends at 10.02 s, so everything before 9.02 s (sample 72160) is written out.
        rec.write_caller(np.ones(160, np.int16), at=10.0)
        assert rec.frames_written == 72160
        rec.write_agent(np.full(320, 3, np.int16), at=9.0)  # first half too late
    assert rec.dropped_samples == 160
    _, frames = read_wav(path)
    assert frames[:160, 0].tolist() == [1] * 160
    assert frames[72160:72320, 1].tolist() == [3] * 160
    assert not frames[160:72160, :].any()


def test_long_silence_gap_is_written_without_huge_buffer(tmp_path: Path) -> None:
    path = tmp_path / "gap.wav"
    with CallRecorder(path, keep_seconds=1.0) as rec:
        rec.write_caller(np.ones(10, np.int16), at=0.0)
        rec.write_agent(np.ones(10, np.int16), at=120.0)
        assert rec.frames_written >= 119 * RATE  # the gap went to disk, not to memory
    params, frames = read_wav(path)
    assert params.nframes == 120 * RATE + 10
    assert frames[:, 0].sum() == 10 and frames[:, 1].sum() == 10


def test_single_write_longer_than_window(tmp_path: Path) -> None:
    path = tmp_path / "big.wav"
    speech = tone(5 * RATE)
    with CallRecorder(path, keep_seconds=0.5) as rec:
        rec.write_agent(speech, at=0.25)
        assert rec.frames_written >= 2000 + 4 * RATE
        rec.write_caller(np.full(8, 9, np.int16), at=5.0)
    _, frames = read_wav(path)
    assert np.array_equal(frames[2000 : 2000 + 5 * RATE, 1], speech)
    assert frames[5 * RATE : 5 * RATE + 8, 0].tolist() == [9] * 8


def test_bad_times_and_writes_after_close_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    rec = CallRecorder(path, start=100.0, max_gap_seconds=60.0)
    rec.write_caller(np.ones(100, np.int16), at=99.99)  # 80 samples before the start
    rec.write_caller(np.ones(10, np.int16), at=float("nan"))
    rec.write_caller(np.ones(10, np.int16), at=1e12)  # a broken clock
    rec.close()
    rec.close()  # idempotent
    rec.write_agent(np.ones(10, np.int16), at=100.0)
    assert rec.closed
    assert rec.dropped_samples == 80 + 10 + 10 + 10
    params, frames = read_wav(path)
    assert params.nframes == 20 and frames[:, 0].tolist() == [1] * 20


def test_empty_recording_is_valid_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    CallRecorder(path, rate=16000).close()
    params, frames = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 16000)
    assert params.nframes == 0 and frames.size == 0


def test_rejects_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CallRecorder(tmp_path / "x.wav", rate=0)
    with pytest.raises(ValueError):
        CallRecorder(tmp_path / "y.wav", keep_seconds=0)
