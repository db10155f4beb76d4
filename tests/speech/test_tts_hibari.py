"""HibariTts: the voice bundled in the hibari-tts wheel."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError
from agentd.speech.metrics import wer
from agentd.speech.tts_hibari import HibariTts, hibari_voices
from agentd.speech.tts_piper import CHUNK_SAMPLES
from tests.speech.conftest import find_model, speech_edges, through_g711

THREE_SENTENCES = (
    "Thank you for calling the dental clinic. "
    "Our opening hours are nine to five on weekdays. "
    "Would you like to book an appointment?"
)


@pytest.fixture(scope="module")
def hibari() -> HibariTts:
    pytest.importorskip(
        "hibari", reason="hibari-tts is not installed: pip install 'agentd[hibari]'"
    )
    return HibariTts(threads=1, seed=0)


@pytest.fixture(scope="module")
def transcribe():
    """Whisper tiny.en (faster-whisper) on 8 kHz int16: the ASR that checks intelligibility."""
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    model_dir = find_model("whisper-tiny-en")
    if model_dir is None:
        pytest.skip("whisper-tiny-en is not installed: run `agentd models fetch whisper-tiny-en`")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel

    from agentd.media.resample import StreamResampler

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)

    def run(pcm: np.ndarray) -> str:
        up = StreamResampler(TELEPHONE_RATE, 16000)
        audio16 = np.concatenate((up.process(pcm), up.flush())).astype(np.float32) / 32768
        segments, _ = model.transcribe(audio16, language="en", beam_size=1, vad_filter=False)
        return " ".join(s.text for s in segments)

    return run


def _speak(engine: HibariTts, text: str, cancel: CancelToken | None = None) -> np.ndarray:
    chunks = list(engine.synthesize(text, cancel))
    for chunk in chunks:
        assert chunk.dtype == np.int16 and chunk.ndim == 1 and 0 < len(chunk) <= CHUNK_SAMPLES
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def test_voices_include_american_and_british() -> None:
    pytest.importorskip("hibari", reason="hibari-tts is not installed")
    voices = {v.name: v for v in hibari_voices()}
    assert voices["heart"].bundled and voices["heart"].accent == "American"
    assert {v.accent for v in voices.values()} >= {"American", "British"}


def test_engine_describes_itself(hibari: HibariTts) -> None:
    assert (hibari.name, hibari.voice, hibari.native_rate) == ("hibari", "heart", 24000)


def test_output_is_8k_speech_of_plausible_duration(hibari: HibariTts) -> None:
    pcm = _speak(hibari, THREE_SENTENCES)
    words = len(THREE_SENTENCES.split())
    seconds = len(pcm) / TELEPHONE_RATE
    assert 0.15 * words < seconds < 0.8 * words
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # not silence


def test_padding_silence_is_trimmed(hibari: HibariTts) -> None:
    """hibari pads ~0.3 s of silence before each sentence: the caller must not wait for it."""
    pcm = _speak(hibari, "Please hold the line.")
    start, end = speech_edges(pcm)
    assert start < 0.08
    assert len(pcm) / TELEPHONE_RATE - end < 0.3


def test_first_chunk_comes_before_the_whole_text_is_done(hibari: HibariTts) -> None:
    start = time.perf_counter()
    stream = hibari.synthesize(THREE_SENTENCES)
    first = next(stream)
    first_at = time.perf_counter() - start
    rest = list(stream)
    total = time.perf_counter() - start
    assert len(first) > 0 and len(rest) >= 2
    assert first_at < total
    assert len(first) < 0.5 * sum(len(c) for c in [first, *rest])


def test_cancel_stops_early_and_quietly(hibari: HibariTts) -> None:
    full = len(_speak(hibari, THREE_SENTENCES))
    cancel = CancelToken()
    got = 0
    for chunk in hibari.synthesize(THREE_SENTENCES, cancel):
        got += len(chunk)
        cancel.cancel()
    assert 0 < got < 0.5 * full
    cancelled = CancelToken()
    cancelled.cancel()
    assert list(hibari.synthesize(THREE_SENTENCES, cancelled)) == []


def test_cancel_from_another_thread(hibari: HibariTts) -> None:
    long_text = " ".join([THREE_SENTENCES] * 8)
    cancel = CancelToken()
    got = 0
    timer = threading.Timer(0.0, cancel.cancel)
    for i, chunk in enumerate(hibari.synthesize(long_text, cancel)):
        got += len(chunk)
        if i == 0:
            timer.start()
            timer.join()
    assert got < 0.25 * len(_speak(hibari, long_text))


def test_seed_makes_synthesis_repeatable(hibari: HibariTts) -> None:
    assert np.array_equal(_speak(hibari, "Please hold."), _speak(hibari, "Please hold."))


def test_blank_and_odd_text(hibari: HibariTts) -> None:
    assert list(hibari.synthesize("")) == []
    assert len(_speak(hibari, "... ?!")) < TELEPHONE_RATE
    assert len(_speak(hibari, 'He said "hi" — café, naïve; 3.5% at 7:30 pm.\n\nOK')) > 0


def test_concurrent_calls_share_one_voice(hibari: HibariTts) -> None:
    texts = ["Good morning.", "Please hold the line.", "Your appointment is at three o'clock."]
    alone = {t: _speak(hibari, t) for t in texts}
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(text: str) -> None:
        try:
            results[text] = _speak(hibari, text)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in texts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for text in texts:  # seeded: concurrent output is the same audio as alone
        assert np.array_equal(results[text], alone[text])


def test_asr_reads_back_the_speech_after_g711(hibari: HibariTts, transcribe) -> None:
    text = "Thank you for calling. Your appointment is on Monday at three o'clock."
    heard = transcribe(through_g711(_speak(hibari, text)))
    assert wer(text, heard) <= 0.2, heard


def test_unknown_voice_and_bad_speed_are_speech_errors() -> None:
    pytest.importorskip("hibari", reason="hibari-tts is not installed")
    with pytest.raises(SpeechError, match="heart"):
        HibariTts(voice="nobody")
    with pytest.raises(SpeechError, match="speed"):
        HibariTts(speed=5.0)


def test_voice_not_in_the_wheel_is_never_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hibari", reason="hibari-tts is not installed")
    import urllib.request

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("hibari tried to download a voice")

    monkeypatch.setenv("HIBARI_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    british = next(v for v in hibari_voices() if not v.bundled and v.accent == "British")
    with pytest.raises(SpeechError) as info:
        HibariTts(voice=british.name)
    assert british.file in str(info.value) and "model_path" in str(info.value)
    missing = tmp_path / "gone.onnx"
    with pytest.raises(SpeechError, match=f"agentd models fetch hibari-{british.name}"):
        HibariTts(voice=british.name, model_path=missing)


def test_corrupt_model_is_a_speech_error(tmp_path: Path) -> None:
    pytest.importorskip("hibari", reason="hibari-tts is not installed")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(SpeechError, match="does not load"):
        HibariTts(model_path=bad)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hibari", None)
    with pytest.raises(SpeechError, match=r"pip install 'agentd\[hibari\]'"):
        HibariTts()
