"""The speech test set: deterministic, telephone-format caller clips with references; the
WER normaliser; and Whisper's accuracy on a few clean clips."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from agentd.speech.testset import (
    DEFAULT_SPEC_PATH,
    TestSet,
    TestSetError,
    active_speech_power,
    build_testset,
    corpus_wer,
    load_spec,
    measured_snr_db,
    normalize_transcript,
    spec_hash,
    transcript_wer,
)
from tests.speech.conftest import find_model

AGENT_VOICE_ENGINES = {"piper"}  # the agent speaks with Piper joe; callers must not


def _build(cache_dir: Path, **kwargs: object) -> TestSet:
    try:
        return build_testset(cache_dir, **kwargs)  # type: ignore[arg-type]
    except TestSetError as exc:
        pytest.skip(f"cannot build the speech test set here: {exc}")


@pytest.fixture(scope="module")
def testset(tmp_path_factory: pytest.TempPathFactory) -> TestSet:
    return _build(tmp_path_factory.mktemp("testset-a"))


# ---- the spec ----------------------------------------------------------------------------


def test_spec_has_forty_caller_utterances_with_references_and_non_agent_voices() -> None:
    spec = load_spec()
    english = [u for u in spec.utterances if u.lang == "en"]
    assert len(english) >= 40
    assert all(u.text.strip() and u.say.strip() for u in spec.utterances)
    flows = {u.flow for u in english}
    assert {"dental", "shop", "lead", "transfer", "insurance", "confirm", "backchannel"} <= flows
    engines = {spec.voice(u.voice).engine for u in english}
    assert engines == {"espeak", "flite", "hibari"}
    assert not engines & AGENT_VOICE_ENGINES
    assert len({u.voice for u in english}) >= 6


def test_bad_specs_raise_testset_error(tmp_path: Path) -> None:
    good = DEFAULT_SPEC_PATH.read_text(encoding="utf-8")
    cases = {
        "no-text": good.replace('text: "Where is my order?"', 'text: ""'),
        "unknown-voice": good.replace("voice: espeak-ko, text: \"네", "voice: x, text: \"네"),
        "not-yaml": "voices: [\n",
        "bad-engine": good.replace("engine: flite, name: slt", "engine: sam, name: slt"),
    }
    for name, text in cases.items():
        assert text != good, name
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(TestSetError):
            load_spec(path)


def test_spec_hash_follows_texts_not_formatting(tmp_path: Path) -> None:
    original = load_spec()
    versions = {"espeak": "x", "flite": "y", "hibari": "z"}
    reformatted = tmp_path / "reformatted.yaml"
    reformatted.write_text(
        "# a comment\n" + DEFAULT_SPEC_PATH.read_text(encoding="utf-8"), encoding="utf-8"
    )
    assert spec_hash(load_spec(reformatted), versions) == spec_hash(original, versions)
    edited = tmp_path / "edited.yaml"
    edited.write_text(
        DEFAULT_SPEC_PATH.read_text(encoding="utf-8").replace("Where is my order?", "Where?"),
        encoding="utf-8",
    )
    assert spec_hash(load_spec(edited), versions) != spec_hash(original, versions)
    assert spec_hash(original, {**versions, "espeak": "newer"}) != spec_hash(original, versions)


# ---- the built clips -------------------------------------------------------------------------


def test_build_is_deterministic(testset: TestSet, tmp_path: Path) -> None:
    again = _build(tmp_path / "b", force=True)
    assert again.spec_hash == testset.spec_hash
    assert again.content_hash == testset.content_hash
    assert [c.id for c in again.clips] == [c.id for c in testset.clips]


def test_at_least_forty_clean_clips_and_a_noisy_copy_of_each(testset: TestSet) -> None:
    clean = testset.select(noisy=False)
    noisy = testset.select(noisy=True)
    assert len(testset.select(lang="en", noisy=False)) >= 40
    assert sorted(c.id + ".noisy" for c in clean) == sorted(c.id for c in noisy)
    assert all(c.text.strip() for c in testset.clips)
    manifest = testset.root / "manifest.json"
    assert manifest.is_file() and testset.content_hash in manifest.read_text(encoding="utf-8")


def test_every_clip_is_8khz_int16_mono_with_speech_inside(testset: TestSet) -> None:
    for clip in testset.clips:
        with wave.open(str(clip.path)) as wav:
            assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (8000, 2, 1)
        pcm = clip.audio()
        assert pcm.dtype == np.int16
        assert abs(len(pcm) / 8000 - clip.duration) < 1e-3
        assert 0.25 <= clip.speech_start < clip.speech_end <= clip.duration - 0.25, clip.id
        assert clip.speech_end - clip.speech_start >= 0.3, clip.id
        # Speech between the edges: around -20 dBFS, far above anything outside them.
        start, end = int(clip.speech_start * 8000), int(clip.speech_end * 8000)
        level = 10 * np.log10(active_speech_power(pcm[start:end]) / 32768**2)
        assert -32 < level < -12, (clip.id, level)
        if not clip.noisy:
            lead = pcm[: int(0.25 * 8000)].astype(np.float64)  # inside the 0.3 s padding
            assert np.max(np.abs(lead)) < 10, clip.id  # digital silence after G.711


def test_noisy_copies_have_the_intended_snr(testset: TestSet) -> None:
    by_id = {c.id: c for c in testset.clips}
    for noisy in testset.select(noisy=True):
        clean = by_id[noisy.utterance]
        snr = measured_snr_db(clean.audio(), noisy.audio())
        assert noisy.snr_db is not None
        assert abs(snr - noisy.snr_db) <= 1.0, (noisy.id, snr)


def test_noise_is_seeded_per_clip(testset: TestSet) -> None:
    a, b = testset.select(lang="en", noisy=True)[:2]
    lead = int(0.25 * 8000)  # before either clip's speech: noise only
    noise_a, noise_b = a.audio()[:lead], b.audio()[:lead]
    assert np.std(noise_a) > 0 and np.std(noise_b) > 0
    assert not np.array_equal(noise_a, noise_b)


def _small_spec(tmp_path: Path, count: int = 3) -> Path:
    """The real spec cut to its first `count` utterances (a build in well under a second)."""
    raw = yaml.safe_load(DEFAULT_SPEC_PATH.read_text(encoding="utf-8"))
    raw["utterances"] = raw["utterances"][:count]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_missing_clip_is_rebuilt_and_other_builds_are_removed(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    cache = tmp_path / "cache"
    first = _build(cache, spec_path=spec)
    assert len(first.clips) == 6
    first.clips[1].path.unlink()
    stale = cache / "0123456789abcdef"
    stale.mkdir()
    again = _build(cache, spec_path=spec)
    assert again.clips[1].path.is_file()
    assert again.content_hash == first.content_hash
    assert not stale.exists()
    assert [p.name for p in cache.iterdir()] == [first.root.name]  # no build leftovers


def test_edited_text_builds_a_new_set(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path, count=2)
    first = _build(tmp_path / "cache", spec_path=spec)
    spec.write_text(
        spec.read_text(encoding="utf-8").replace("reschedule", "move"), encoding="utf-8"
    )
    second = _build(tmp_path / "cache", spec_path=spec)
    assert second.spec_hash != first.spec_hash
    assert second.content_hash != first.content_hash
    assert "move" in second.clips[0].text and not first.root.exists()


# ---- the WER normaliser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        ("Is it at 2:30?", "is it at two thirty"),
        ("the 14th of March", "The fourteenth of March."),
        ("My date of birth is the 3rd of June, 1985.", "my date of birth is the third of june "
         "nineteen eighty-five"),
        ("My order number is 4 8 2 7 1 9.", "My order number is 482719."),
        ("My order number is 4 8 2 7 1 9.", "my order number is four eight two seven one nine"),
        ("Our budget is around 5000 dollars a month.", "Our budget is around $5,000 a month."),
        ("We have about 50 employees.", "We have about fifty employees."),
        ("My postcode is SW1A 2AA.", "my post code is S-W-1-A 2-A-A"),
        ("That's Thompson, T H O M P S O N.", "That is Thompson, T-H-O-M-P-S-O-N."),
        ("Okay.", "OK"),
        ("Uh-huh.", "uh huh"),
        ("two thousand five hundred", "2,500"),
        ("one hundred and fifty", "150"),
        ("I'd like to talk to Doctor Miller.", "I would like to talk to Dr. Miller"),
    ],
)
def test_normaliser_makes_equivalent_transcripts_equal(reference: str, hypothesis: str) -> None:
    assert normalize_transcript(reference) == normalize_transcript(hypothesis)
    assert transcript_wer(reference, hypothesis) == 0.0


def test_normaliser_keeps_real_differences() -> None:
    assert transcript_wer("two thirty", "two forty") > 0  # 2 3 0 vs 2 4 0
    dropped_digit = transcript_wer("my zip code is 9 0 2 1 0", "my zip code is 9 0 2 1")
    assert dropped_digit == pytest.approx(1 / 9)
    assert transcript_wer("Where is my order?", "Where in my order") == 0.25
    assert transcript_wer("안녕하세요 예약을", "안녕하세요 예약") == 0.5  # Korean
    assert transcript_wer("", "") == 0.0 and transcript_wer("", "hello") == 1.0
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "x f")]) == pytest.approx(1 / 6)


# ---- accuracy ----------------------------------------------------------------------------------


def _whisper_dir() -> Path:
    found = find_model("whisper-tiny-en")
    for candidate in ([found, found / "model"] if found else []):
        if (candidate / "model.bin").is_file():
            return candidate
    pytest.skip("model whisper-tiny-en is not installed: run `agentd models fetch "
                "whisper-tiny-en` or set AGENTD_TEST_MODELS")


def test_whisper_reads_eight_clean_clips_within_15_percent_wer(testset: TestSet) -> None:
    pytest.importorskip("faster_whisper")
    from agentd.speech.asr_whisper import WhisperAsr

    asr = WhisperAsr(_whisper_dir(), threads=1)
    clips = testset.select(lang="en", noisy=False, limit=8)
    assert len({c.voice for c in clips}) >= 4  # the subset mixes voices
    pairs = [(c.text, asr.transcribe(c.audio()).text) for c in clips]
    assert corpus_wer(pairs) <= 0.15, pairs
