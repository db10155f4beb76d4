"""CoquiTts on a tiny randomly initialised VITS model built here (real Coqui models download
at run time, which these machines cannot do). Its audio is noise; what is tested is the
loading, splitting, resampling, streaming and cancel path through coqui-tts itself.

The model's duration predictor is fixed to 4 frames per token, so the output length is
known exactly from the token count: a real check on "plausible duration".
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError
from agentd.speech.tts_coqui import CoquiTts
from agentd.speech.tts_piper import CHUNK_SAMPLES, split_for_speech

NATIVE_RATE = 16000
HOP = 256
FRAMES_PER_TOKEN = 4
THREE_SENTENCES = "Thank you for calling. We are open until five. Would you like to book?"


def _import_coqui_for_test() -> None:
    """Import coqui-tts, or skip.

    coqui-tts refuses to import without torchaudio and torchcodec installed, but VITS
    inference never calls them. PyPI's torchaudio wheels are CUDA builds tied to one torch
    release, so beside the CPU torch 2.13.0 that tools/setup.sh installs for these tests none
    imports. Only in that case the test stands in empty modules for the two, so that coqui's
    own model code still runs. With the `coqui` extra's set (torch 2.9.1, torchaudio 2.9.1,
    torchcodec 0.8.1, Debian's ffmpeg) the real modules import and every test here passes.
    """
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("TTS") is None:
        pytest.skip("coqui-tts is not installed: pip install 'agentd[coqui]'")
    for name in ("torchaudio", "torchcodec"):
        try:
            importlib.import_module(name)
        except (ImportError, OSError):
            stand_in = types.ModuleType(name)
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = stand_in
    try:
        import TTS.utils.synthesizer  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"coqui-tts does not import here: {exc}")


def _build_tiny_vits(directory: Path) -> tuple[Path, Path]:
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models.vits import Vits

    torch.manual_seed(0)
    args = VitsArgs(
        hidden_channels=16, hidden_channels_ffn_text_encoder=32, num_heads_text_encoder=1,
        num_layers_text_encoder=1, num_layers_posterior_encoder=1, num_layers_flow=1,
        resblock_kernel_sizes_decoder=[3], resblock_dilation_sizes_decoder=[[1, 3, 5]],
        upsample_initial_channel_decoder=16, use_sdp=False, init_discriminator=False,
        spec_segment_size=4,
    )
    audio = BaseAudioConfig(sample_rate=NATIVE_RATE, hop_length=HOP, win_length=1024,
                            fft_size=1024, num_mels=80, do_trim_silence=False)
    config = VitsConfig(model_args=args, audio=audio, use_phonemes=False,
                        text_cleaner="basic_cleaners")
    model = Vits(config)
    with torch.no_grad():  # every token lasts exactly 4 frames (exp(log 3.5) rounded up)
        model.duration_predictor.proj.weight.zero_()
        model.duration_predictor.proj.bias.fill_(math.log(FRAMES_PER_TOKEN - 0.5))
    checkpoint, config_file = directory / "model.pth", directory / "config.json"
    torch.save({"model": model.state_dict()}, checkpoint)
    config.save_json(str(config_file))
    return checkpoint, config_file


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    _import_coqui_for_test()
    return _build_tiny_vits(tmp_path_factory.mktemp("coqui-tiny-vits"))


@pytest.fixture(scope="module")
def coqui(tiny_model: tuple[Path, Path]) -> CoquiTts:
    return CoquiTts(*tiny_model, threads=1)


def _speak(engine: CoquiTts, text: str, cancel: CancelToken | None = None) -> np.ndarray:
    chunks = list(engine.synthesize(text, cancel))
    for chunk in chunks:
        assert chunk.dtype == np.int16 and chunk.ndim == 1 and 0 < len(chunk) <= CHUNK_SAMPLES
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _expected_samples(engine: CoquiTts, text: str) -> int:
    """8 kHz samples the fixed-duration model makes for `text`, piece by piece."""
    tokenizer = engine._synth.tts_model.tokenizer
    tokens = sum(len(tokenizer.text_to_ids(piece)) for piece in split_for_speech(text))
    return tokens * FRAMES_PER_TOKEN * HOP * TELEPHONE_RATE // NATIVE_RATE


def test_engine_describes_itself(coqui: CoquiTts, tiny_model: tuple[Path, Path]) -> None:
    assert (coqui.name, coqui.native_rate) == ("coqui", NATIVE_RATE)
    assert coqui.voice == tiny_model[0].parent.name


def test_config_defaults_to_config_json_beside_the_checkpoint(
    tiny_model: tuple[Path, Path],
) -> None:
    assert CoquiTts(tiny_model[0]).native_rate == NATIVE_RATE


def test_output_is_8k_int16_of_the_expected_length(coqui: CoquiTts) -> None:
    pcm = _speak(coqui, THREE_SENTENCES)
    expected = _expected_samples(coqui, THREE_SENTENCES)
    assert abs(len(pcm) - expected) <= 16
    assert np.any(pcm != 0)


def test_first_chunk_comes_before_the_whole_text_is_done(coqui: CoquiTts) -> None:
    start = time.perf_counter()
    stream = coqui.synthesize(THREE_SENTENCES)
    first = next(stream)
    first_at = time.perf_counter() - start
    rest = list(stream)
    total = time.perf_counter() - start
    assert len(rest) >= 2 and first_at < total
    assert len(first) <= _expected_samples(coqui, split_for_speech(THREE_SENTENCES)[0]) + 16


def test_cancel_stops_early_and_quietly(coqui: CoquiTts) -> None:
    cancel = CancelToken()
    got = 0
    for chunk in coqui.synthesize(THREE_SENTENCES, cancel):
        got += len(chunk)
        cancel.cancel()
    assert 0 < got < 0.5 * _expected_samples(coqui, THREE_SENTENCES)
    cancelled = CancelToken()
    cancelled.cancel()
    assert list(coqui.synthesize(THREE_SENTENCES, cancelled)) == []


def test_concurrent_calls_are_serialised_safely(coqui: CoquiTts) -> None:
    texts = ["Good morning.", "Please hold the line.", "See you on Monday."]
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(text: str) -> None:
        try:
            results[text] = len(_speak(coqui, text))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for text in texts:
        assert abs(results[text] - _expected_samples(coqui, text)) <= 16


def test_blank_text_yields_nothing(coqui: CoquiTts) -> None:
    assert list(coqui.synthesize("")) == []
    assert list(coqui.synthesize("  \n ")) == []


def test_missing_files_name_the_file(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    with pytest.raises(SpeechError, match="agentd models fetch"):
        CoquiTts(tmp_path / "model.pth")
    with pytest.raises(SpeechError, match="nope.json"):
        CoquiTts(tiny_model[0], tmp_path / "nope.json")


def test_checkpoint_that_does_not_match_its_config(
    tmp_path: Path, tiny_model: tuple[Path, Path]
) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a torch checkpoint")
    with pytest.raises(SpeechError, match="does not load"):
        CoquiTts(bad, tiny_model[1])


def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.pth"
    model.write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "TTS.utils.synthesizer", None)
    monkeypatch.setitem(sys.modules, "TTS.utils", None)
    with pytest.raises(SpeechError, match=r"agentd\[coqui\]"):
        CoquiTts(model)
