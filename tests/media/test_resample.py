"""Streaming resampler: chunked equals one-shot, no edge clicks, lengths and pitch kept."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from agentd.media.resample import StreamResampler

RATE_PAIRS = [
    (8000, 16000),
    (16000, 8000),
    (8000, 22050),
    (22050, 8000),
    (8000, 24000),
    (24000, 8000),
    (16000, 24000),
]
TONE_HZ = 440.0
AMPLITUDE = 16000


def tone(rate: int, seconds: float = 1.0, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def resample_in_odd_chunks(resampler: StreamResampler, x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces = []
    start = 0
    while start < len(x):
        size = int(rng.integers(1, 400))
        pieces.append(resampler.process(x[start : start + size]))
        start += size
    pieces.append(resampler.flush())
    for piece in pieces:
        assert piece.dtype == np.int16
    return np.concatenate(pieces)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_chunked_matches_one_shot(in_rate: int, out_rate: int) -> None:
    x = tone(in_rate)
    chunked = resample_in_odd_chunks(StreamResampler(in_rate, out_rate), x)
    one_shot = soxr.resample(x.astype(np.float32) / 32768, in_rate, out_rate) * 32768
    assert abs(len(chunked) - len(one_shot)) <= 2
    n = min(len(chunked), len(one_shot))
    assert np.max(np.abs(chunked[:n] - one_shot[:n])) <= 2.0


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_no_discontinuity_at_chunk_edges(in_rate: int, out_rate: int) -> None:
    y = resample_in_odd_chunks(StreamResampler(in_rate, out_rate), tone(in_rate), seed=3)
    # A sine's steepest step between samples is A * 2*pi*f / rate; a click would far exceed it.
    steepest = AMPLITUDE * 2 * np.pi * TONE_HZ / out_rate
    # Skip the filter's start-up and end transients, which are not chunk-edge effects.
    body = y[out_rate // 20 : -out_rate // 20].astype(np.int32)
    assert np.max(np.abs(np.diff(body))) <= steepest * 1.05 + 4


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_length_follows_rate_ratio(in_rate: int, out_rate: int) -> None:
    seconds = 0.73
    y = resample_in_odd_chunks(StreamResampler(in_rate, out_rate), tone(in_rate, seconds), seed=7)
    expected = int(in_rate * seconds) * out_rate / in_rate
    assert abs(len(y) - expected) <= 3


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_frequency_preserved(in_rate: int, out_rate: int) -> None:
    hz = 1000.0
    y = resample_in_odd_chunks(StreamResampler(in_rate, out_rate), tone(in_rate, 1.0, hz), seed=5)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * out_rate / len(y)
    assert abs(peak_hz - hz) <= 2 * out_rate / len(y)


def test_float_input_gives_int16_like_int16_input() -> None:
    x = tone(24000, 0.5)
    from_float = resample_in_odd_chunks(StreamResampler(24000, 8000), x.astype(np.float32) / 32768)
    from_int = resample_in_odd_chunks(StreamResampler(24000, 8000), x)
    assert from_float.dtype == np.int16
    assert np.array_equal(from_float, from_int)


def test_float_input_is_clipped_and_nan_is_silence() -> None:
    r = StreamResampler(8000, 8000)
    out = r.process(np.array([2.0, -2.0, np.nan, 0.5], dtype=np.float32))
    assert out.tolist() == [32767, -32768, 0, 16384]
    loud = StreamResampler(16000, 8000)
    y = np.concatenate([loud.process(np.full(1600, 1.5, np.float32)), loud.flush()])
    assert y.dtype == np.int16 and y.max() == 32767


def test_same_rate_passes_through() -> None:
    r = StreamResampler(8000, 8000)
    x = tone(8000, 0.1)
    out = r.process(x)
    assert np.array_equal(out, x)
    out[0] = 1  # a copy: the caller's buffer is not aliased
    assert x[0] == 0
    assert r.flush().size == 0


def test_flush_resets_for_a_new_stream() -> None:
    r = StreamResampler(8000, 16000)
    x = tone(8000, 0.25)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    assert np.array_equal(first, second)


def test_empty_chunks_and_bad_arguments() -> None:
    r = StreamResampler(8000, 16000)
    assert r.process(np.zeros(0, np.int16)).dtype == np.int16
    assert r.flush().dtype == np.int16
    with pytest.raises(ValueError):
        StreamResampler(0, 8000)
    with pytest.raises(TypeError):
        r.process(np.zeros(10, np.int32))
