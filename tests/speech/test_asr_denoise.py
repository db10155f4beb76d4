"""Whisper's noise subtraction (spectral_subtract) and the speech.asr knobs reaching the engine."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agentd.config.schema import AsrSectionConfig, SpeechConfig
from agentd.speech.asr_whisper import spectral_subtract
from agentd.speech.interfaces import SpeechError

RATE = 8000


def tone(seconds: float, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1250 * t)
    return (level * wave / np.sqrt(np.mean(wave**2))).astype(np.float32)


def white(count: int, rms: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, rms, count).astype(np.float32)


def power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


def caller_turn(noise_rms: float) -> tuple[np.ndarray, np.ndarray, slice]:
    """0.5 s of line noise, 1.5 s of 'speech' (two tones), 0.5 s of noise: (noisy, clean,
    where the speech is)."""
    speech = tone(1.5)
    clean = np.concatenate((np.zeros(RATE // 2, np.float32), speech, np.zeros(RATE // 2, np.float32)))
    return clean + white(len(clean), noise_rms), clean, slice(RATE // 2, RATE // 2 + len(speech))


def test_steady_noise_is_subtracted_and_the_speech_kept() -> None:
    noisy, clean, speech = caller_turn(noise_rms=0.01)  # 20 dB SNR
    out = spectral_subtract(noisy)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    pause = slice(0, RATE // 2 - 256)  # noise only, clear of the first frame that sees speech
    # Plain power subtraction (no over-subtraction): ~4 dB less noise in the pauses...
    assert power_db(out[pause]) <= power_db(noisy[pause]) - 3
    assert abs(power_db(out[speech]) - power_db(clean[speech])) < 1.0  # ... speech level kept
    # ... and the result is closer to the clean signal than the noisy input was (~3.5 dB).
    assert power_db(out - clean) <= power_db(noisy - clean) - 2.5


def test_digital_silence_and_clean_speech_pass_through_unchanged() -> None:
    _, clean, _ = caller_turn(noise_rms=0.0)
    assert np.array_equal(spectral_subtract(clean), clean)


def test_a_quiet_line_is_left_alone() -> None:
    # Tiny.en's text changes with any change to its input: a line under -55 dBFS of noise
    # is decoded as it is.
    quiet, _, _ = caller_turn(noise_rms=0.001)  # -60 dBFS
    assert np.array_equal(spectral_subtract(quiet), quiet)
    louder, _, _ = caller_turn(noise_rms=0.003)  # -50 dBFS: subtracted
    assert not np.array_equal(spectral_subtract(louder), louder)


def test_speech_without_a_pause_is_not_mistaken_for_noise() -> None:
    # No quiet frames to learn the noise from: the quietest frames are speech, so nothing
    # may be subtracted (the contrast gate).
    busy = tone(2.0) + white(2 * RATE, 0.01)
    assert np.array_equal(spectral_subtract(busy), busy)


@pytest.mark.parametrize("count", [0, 1, 255, 1023])
def test_too_short_windows_are_returned_as_they_are(count: int) -> None:
    x = white(count, 0.1)
    out = spectral_subtract(x)
    assert np.array_equal(out, x) and out is not x


def test_int16_scaled_input_works_too() -> None:
    noisy, _, _ = caller_turn(noise_rms=0.01)
    scaled = spectral_subtract(noisy * 32768) / 32768
    np.testing.assert_allclose(scaled, spectral_subtract(noisy), atol=1e-5)


# ---- config ---------------------------------------------------------------------------------


def test_asr_section_defaults_and_limits() -> None:
    section = AsrSectionConfig()
    assert section.final_beam_size == 5 and section.prompt is None and section.denoise is True
    with pytest.raises(ValidationError):
        AsrSectionConfig.model_validate({"final_beam_size": 0})
    with pytest.raises(ValidationError):
        AsrSectionConfig.model_validate({"final_beam_size": 17})


def test_speech_asr_options_reach_the_whisper_engine() -> None:
    from agentd.speech.factory import build_asr, speech_store

    cfg = SpeechConfig.model_validate(
        {"asr": {"final_beam_size": 3, "prompt": "Bright Smile Dental, Ava.", "denoise": False}}
    )
    try:
        asr = build_asr(cfg, speech_store(cfg))
    except SpeechError as exc:
        pytest.skip(f"whisper-tiny-en is not installed in the model store: {exc}")
    assert asr.final_beam_size == 3  # type: ignore[attr-defined]
    assert asr.prompt == "Bright Smile Dental, Ava."  # type: ignore[attr-defined]
    assert asr.denoise is False  # type: ignore[attr-defined]
    default = build_asr(SpeechConfig.model_validate({}), speech_store(cfg))
    assert default.denoise is True and default.prompt is None  # type: ignore[attr-defined]
