"""VoskAsr with the small US English model (vosk-en-small) on English TTS through G.711.

The Korean model (test_asr_vosk.py) proves the engine path; this one checks what an
English user gets: the transcript of flite's speech within a WER bound, partials while the
caller speaks, and word timings where the words are.
"""

from __future__ import annotations

import numpy as np
import pytest

from agentd.speech.asr_vosk import VoskAsr
from agentd.speech.testset import transcript_wer
from tests.speech.conftest import frames_of, phone_clip, require_model_dir, speak_flite

MODEL_ID = "vosk-en-small"
SENTENCES = [
    "I need to reschedule my appointment for tomorrow morning.",
    "Can you transfer me to the sales department please?",
    "What time does the office open on Saturday?",
]


@pytest.fixture(scope="module")
def engine() -> VoskAsr:
    return VoskAsr(require_model_dir(MODEL_ID, "am/final.mdl"), language="en", model_id=MODEL_ID)


def test_english_model_reads_16k_and_says_english(engine: VoskAsr) -> None:
    assert engine.language == "en"
    assert engine.sample_rate == 16000


def test_flite_speech_through_g711_within_wer_bound(engine: VoskAsr) -> None:
    errors = []
    for text in SENTENCES:
        stream = engine.open_stream()
        for frame in frames_of(phone_clip(speak_flite(text, voice="kal"))):
            stream.accept(frame)
        hypothesis = stream.finish().text
        errors.append(transcript_wer(text, hypothesis))
    # Measured 0 % / 0 % / 0 % for kal; the bound leaves room for a word per sentence.
    assert sum(errors) / len(errors) <= 0.15, errors


def test_partials_then_final_with_word_timings(engine: VoskAsr) -> None:
    text = SENTENCES[0]
    pcm = phone_clip(speak_flite(text, voice="kal"))
    stream = engine.open_stream()
    frames = frames_of(pcm)
    partials = [(i, p) for i, p in enumerate(stream.accept(f) for f in frames) if p is not None]
    final = stream.finish()
    assert partials and all(not p.final and p.text for _, p in partials)
    # Streaming: the first words are heard while the caller is still in the first half.
    assert partials[0][0] < len(frames) // 2
    assert "need" in partials[len(partials) // 2][1].text
    assert final.final and final.words
    duration = len(pcm) / 8000
    assert 0.2 <= final.words[0].start < final.words[-1].end <= duration + 0.1
    assert all(w.confidence is not None and 0.0 <= w.confidence <= 1.0 for w in final.words)


def test_silence_is_no_words(engine: VoskAsr) -> None:
    stream = engine.open_stream()
    for frame in frames_of(np.zeros(16000, np.int16)):
        stream.accept(frame)
    assert stream.finish().text == ""
