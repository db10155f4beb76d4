"""build_vad/asr/tts from the `speech:` config and the model store (real models when fetched)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentd.config import Config, ConfigError
from agentd.config.schema import SpeechConfig
from agentd.models import ModelStore
from agentd.speech.factory import (
    build_asr,
    build_phrase_cache,
    build_tts,
    build_vad,
    speech_store,
    vad_config,
)
from agentd.speech.interfaces import SpeechError, VadConfig


def speech(**data: Any) -> SpeechConfig:
    return SpeechConfig.model_validate(data)


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore()  # $AGENTD_MODELS_DIR or models/ of this checkout


def need(store: ModelStore, model_id: str) -> None:
    if not store.check(model_id, full=False).ok:
        pytest.skip(f"model {model_id} is not installed: run `agentd models fetch {model_id}`")


def test_defaults_and_vad_config() -> None:
    cfg = speech(vad={"threshold": 0.6, "neg_threshold": 0.4, "end_of_turn_ms": 300})
    assert vad_config(cfg) == VadConfig(0.6, 0.4, 200, 300)
    assert cfg.asr.engine == "whisper" and cfg.tts.model == "piper-en-us-joe-medium"


def test_speech_section_in_a_config_file(tmp_path: Path) -> None:
    base = {"sip": {"registrar": "192.0.2.1", "extension": "1001", "password": "x"}}
    config = Config.from_dict(
        {**base, "speech": {"models_dir": "m", "asr": {"engine": "vosk", "model": "vosk-ko"}}},
        base_dir=tmp_path,
    )
    assert config.speech.models_dir == tmp_path / "m"
    assert speech_store(config.speech).root == tmp_path / "m"
    with pytest.raises(ConfigError, match="neg_threshold"):
        Config.from_dict({**base, "speech": {"vad": {"threshold": 0.3, "neg_threshold": 0.5}}})
    with pytest.raises(ConfigError, match="engine"):
        Config.from_dict({**base, "speech": {"tts": {"engine": "festival"}}})


def test_missing_model_is_a_one_line_speech_error(tmp_path: Path) -> None:
    empty = ModelStore(tmp_path)
    with pytest.raises(SpeechError) as caught:
        build_vad(speech(), empty)
    message = str(caught.value)
    assert "\n" not in message and "agentd models fetch silero-vad" in message


def test_model_of_the_wrong_kind_or_engine_is_refused(tmp_path: Path) -> None:
    empty = ModelStore(tmp_path)
    with pytest.raises(
        SpeechError, match="speech.asr.model: 'whisper-tiny-en' is a asr model for whisper"
    ):
        build_asr(speech(asr={"engine": "vosk", "model": "whisper-tiny-en"}), empty)
    with pytest.raises(SpeechError, match="speech.vad.model"):
        build_vad(speech(vad={"model": "piper-en-us-joe-medium"}), empty)
    with pytest.raises(SpeechError, match="unknown model 'nope'"):
        build_tts(speech(tts={"model": "nope"}), empty)


def test_vad_from_store(store: ModelStore) -> None:
    need(store, "silero-vad")
    vad = build_vad(speech(vad={"end_of_turn_ms": 300}), store)
    stream = vad.stream(vad_config(speech()))
    assert stream.feed(np.zeros(1600, dtype=np.int16)) == []
    assert stream.time == pytest.approx(0.2)


def test_whisper_from_store(store: ModelStore) -> None:
    need(store, "whisper-tiny-en")
    asr = build_asr(speech(), store)
    assert asr.name == "whisper" and asr.language == "en"
    stream = asr.open_stream()
    stream.accept(np.zeros(8000, dtype=np.int16))
    assert stream.finish().final


def test_vosk_from_store(store: ModelStore) -> None:
    need(store, "vosk-ko")
    asr = build_asr(speech(asr={"engine": "vosk", "model": "vosk-ko"}), store)
    assert asr.name == "vosk" and asr.language == "ko"


def test_piper_from_store_speaks_8khz(store: ModelStore, tmp_path: Path) -> None:
    need(store, "piper-en-us-joe-medium")
    tts = build_tts(speech(), store)
    chunks = list(tts.synthesize("Hello."))
    assert chunks and all(c.dtype == np.int16 for c in chunks)
    assert 0.2 < sum(len(c) for c in chunks) / 8000 < 3.0
    cache = build_phrase_cache(speech(phrase_cache_dir=str(tmp_path / "phrases")), tts)
    assert cache is not None and cache.cache_dir == tmp_path / "phrases"
    assert build_phrase_cache(speech(), tts) is None


def test_engines_without_model_files(tmp_path: Path) -> None:
    empty = ModelStore(tmp_path)
    if shutil.which("espeak-ng"):
        assert build_tts(speech(tts={"engine": "espeak", "voice": "en-us"}), empty).name
    pytest.importorskip("hibari")
    assert build_tts(speech(tts={"engine": "hibari", "model": None}), empty).name
