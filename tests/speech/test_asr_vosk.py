"""VoskAsr with the Korean model on espeak-ng Korean speech through G.711.

The model proves the engine path (streaming, partials, final, word timings, isolation), not
accuracy: espeak-ng's Korean is far from what the model was trained on.
"""

from __future__ import annotations

import threading
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from agentd.speech.asr_vosk import VoskAsr, model_sample_rate
from agentd.speech.interfaces import AsrEngine, SpeechError, Transcript
from tests.speech.conftest import (
    frames_of,
    require_model_dir,
    speak_espeak,
    through_g711,
    with_silence,
)

MODEL_ID = "vosk-ko"
CLIP_A = "안녕하세요 예약을 하고 싶습니다"
CLIP_B = "내일 오후에 다시 전화해 주세요"


def vosk_model_dir() -> Path:
    """The Vosk model directory (the one holding am/ and conf/), or skip."""
    return require_model_dir(MODEL_ID, "am/final.mdl")


@pytest.fixture(scope="module")
def engine() -> VoskAsr:
    return VoskAsr(vosk_model_dir())


def korean_clip(text: str) -> np.ndarray:
    return through_g711(with_silence(speak_espeak(text, voice="ko"), 0.3, 0.5))


def run_stream(engine: VoskAsr, pcm: np.ndarray) -> tuple[list[Transcript], Transcript]:
    stream = engine.open_stream()
    partials = [p for p in (stream.accept(f) for f in frames_of(pcm)) if p is not None]
    return partials, stream.finish()


@pytest.fixture(scope="module")
def reference(engine: VoskAsr) -> dict[str, tuple[list[Transcript], Transcript]]:
    """Each clip decoded alone, once per module."""
    return {CLIP_A: run_stream(engine, korean_clip(CLIP_A))}


def test_missing_model_names_file_and_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(SpeechError) as error:
        VoskAsr(tmp_path / "nowhere")
    message = str(error.value)
    assert "final.mdl" in message
    assert f"agentd models fetch {MODEL_ID}" in message


def test_model_rate_comes_from_mfcc_conf(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    assert model_sample_rate(tmp_path) == 16000  # no mfcc.conf: Kaldi's default
    (tmp_path / "conf" / "mfcc.conf").write_text("--use-energy=false\n--sample-frequency=8000\n")
    assert model_sample_rate(tmp_path) == 8000


def test_engine_satisfies_interface_and_reads_16k(engine: VoskAsr) -> None:
    assert isinstance(engine.name, str) and engine.language == "ko"
    assert engine.sample_rate == 16000  # the Korean model's mfcc.conf has no rate: 16 kHz
    asr: AsrEngine = engine  # static check that the protocol fits
    assert asr.open_stream() is not None


def test_partials_arrive_before_finish_and_change(reference) -> None:
    partials, final = reference[CLIP_A]
    assert partials, "no partial hypothesis while audio streamed"
    assert all(not p.final and p.text for p in partials)
    texts = [p.text for p in partials]
    assert all(a != b for a, b in pairwise(texts)), "a partial repeated unchanged text"
    assert final.final and final.text.strip()


def test_final_has_word_timings_and_confidence(reference) -> None:
    _, final = reference[CLIP_A]
    duration = len(korean_clip(CLIP_A)) / 8000
    assert final.words
    assert " ".join(w.word for w in final.words) == final.text
    for word in final.words:
        assert 0.0 <= word.start <= word.end <= duration + 0.1
        assert word.confidence is not None and 0.0 <= word.confidence <= 1.0
    assert final.confidence == pytest.approx(
        sum(w.confidence for w in final.words) / len(final.words)
    )
    # The clip starts with 0.3 s of silence: no word starts inside it.
    assert final.words[0].start >= 0.2


def test_finish_twice_returns_the_same_final_and_accept_after_finish_raises(engine) -> None:
    stream = engine.open_stream()
    stream.accept(korean_clip(CLIP_B)[:8000])
    first = stream.finish()
    assert stream.finish() == first
    with pytest.raises(SpeechError):
        stream.accept(np.zeros(160, np.int16))


def test_bad_input_is_a_speech_error(engine: VoskAsr) -> None:
    stream = engine.open_stream()
    with pytest.raises(SpeechError):
        stream.accept(np.zeros(160, np.float64))
    assert stream.accept(np.zeros(0, np.int16)) is None  # empty input is fine
    assert stream.finish().text == ""


def test_silence_gives_empty_final(engine: VoskAsr) -> None:
    stream = engine.open_stream()
    for frame in frames_of(np.zeros(8000, np.int16)):
        assert stream.accept(frame) is None
    final = stream.finish()
    assert final.final and final.text == "" and final.words == ()


def test_cancel_drops_the_utterance(engine: VoskAsr) -> None:
    stream = engine.open_stream()
    pcm = korean_clip(CLIP_A)
    for frame in frames_of(pcm[: len(pcm) // 2]):
        stream.accept(frame)
    stream.cancel()
    assert stream.accept(pcm[len(pcm) // 2 :]) is None
    assert stream.finish() == Transcript("", final=True)
    stream.cancel()  # a second cancel is a no-op


def test_two_streams_in_parallel_threads_do_not_interfere(engine: VoskAsr) -> None:
    """Three streams fed frame by frame at once: speech early, speech late, silence.

    Vosk's results vary a little from run to run on this mismatched audio (the lazily
    composed graph's state order changes which tokens survive max-active pruning), so
    isolation is checked through what cannot vary: where each stream's words lie in time
    and that the silent stream hears nothing.
    """
    early = korean_clip(CLIP_A)  # speech from 0.3 s
    late = through_g711(with_silence(speak_espeak(CLIP_B, voice="ko"), 2.0, 0.5))
    silent = np.zeros(max(len(early), len(late)), np.int16)
    results: dict[str, Transcript] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def work(name: str, pcm: np.ndarray) -> None:
        try:
            stream = engine.open_stream()
            start.wait(timeout=10)
            for frame in frames_of(pcm):
                stream.accept(frame)
            results[name] = stream.finish()
        except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(exc)

    clips = {"early": early, "late": late, "silent": silent}
    threads = [threading.Thread(target=work, args=item) for item in clips.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert results["silent"].text == ""
    assert results["early"].words and results["late"].words
    assert results["early"].words[0].start < 1.0
    assert results["early"].words[-1].end <= len(early) / 8000 + 0.1
    assert results["late"].words[0].start >= 1.8  # its 2 s of leading silence held
