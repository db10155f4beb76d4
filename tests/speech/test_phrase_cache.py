"""Phrase cache: keys, disk round trip, no repeated synthesis, corrupt files, atomic writes."""

from __future__ import annotations

import os
import threading
import time
import wave
from collections.abc import Iterator

import numpy as np
import pytest

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken
from agentd.speech.phrase_cache import PhraseCache, phrase_key
from tests.speech.conftest import espeak_available

PHRASES = ["Hello, thanks for calling.", "One moment please.", "Goodbye!"]


class FakeTts:
    """Deterministic engine that counts what it was asked to say."""

    name = "fake"
    native_rate = TELEPHONE_RATE

    def __init__(self, voice: str = "v1", chunk: int = 400) -> None:
        self.voice = voice
        self.chunk = chunk
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def audio_for(self, text: str) -> np.ndarray:
        seed = sum(text.encode()) + sum(self.voice.encode()) * 7
        return np.random.default_rng(seed).integers(-3000, 3000, 80 * len(text), dtype=np.int16)

    def synthesize(self, text: str, cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
        with self._lock:
            self.calls.append(text)
        audio = self.audio_for(text)
        for start in range(0, audio.size, self.chunk):
            if cancel is not None and cancel.cancelled:
                return
            yield audio[start : start + self.chunk]


def test_warm_synthesises_each_phrase_once(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    assert cache.warm(PHRASES) == 3
    assert cache.warm(PHRASES) == 0
    assert engine.calls == PHRASES
    for text in PHRASES:
        assert np.array_equal(cache.get(text), engine.audio_for(text))
    assert len(list(tmp_path.glob("*.wav"))) == 3


def test_a_new_process_loads_from_disk_without_synthesising(tmp_path) -> None:
    PhraseCache(FakeTts(), tmp_path).warm(PHRASES)
    engine = FakeTts()
    fresh = PhraseCache(engine, tmp_path)
    assert fresh.warm(PHRASES) == 0
    assert engine.calls == []
    assert np.array_equal(fresh.get(PHRASES[0]), engine.audio_for(PHRASES[0]))
    # Files are plain 8 kHz mono WAV an operator can play.
    with wave.open(str(fresh.path(PHRASES[0]))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)


def test_key_depends_on_engine_voice_settings_and_text(tmp_path) -> None:
    a = PhraseCache(FakeTts(voice="v1"), tmp_path)
    b = PhraseCache(FakeTts(voice="v2"), tmp_path)
    assert a.key("Hello") != b.key("Hello")
    assert a.key("Hello") != a.key("Hello!")
    assert a.key("Hello  there\n") == a.key("Hello there")  # whitespace does not matter
    assert phrase_key("fake", "v1", "Hi") != phrase_key("other", "v1", "Hi")
    assert phrase_key("fake", "v1", "Hi", "rate=175") != phrase_key("fake", "v1", "Hi", "rate=200")
    # The same directory holds both voices without mixing them up.
    a.warm(["Hello"])
    assert b.get("Hello") is None
    assert b.warm(["Hello"]) == 1
    assert not np.array_equal(a.get("Hello"), b.get("Hello"))


def test_get_of_an_unknown_phrase_is_none(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    assert cache.get("never said") is None
    assert "never said" not in cache
    assert engine.calls == []


def test_synthesize_or_cached(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    first = cache.synthesize_or_cached("Please hold.")
    second = cache.synthesize_or_cached("Please hold.")
    assert np.array_equal(first, second)
    assert engine.calls == ["Please hold."]
    assert "Please hold." in cache
    assert not first.flags.writeable  # callers cannot damage the cached audio


def test_cancelled_synthesis_is_not_cached(tmp_path) -> None:
    engine = FakeTts(chunk=100)
    cache = PhraseCache(engine, tmp_path)
    cancel = CancelToken()
    cancel.cancel()
    assert cache.synthesize_or_cached("Cancelled phrase.", cancel).size == 0
    assert cache.get("Cancelled phrase.") is None
    assert list(tmp_path.glob("*.wav")) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"garbage, not a wav file at all"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(p.read_bytes()[:30]),  # cut inside the header
    ],
    ids=["empty", "garbage", "truncated", "half-header"],
)
def test_corrupt_file_is_resynthesised(tmp_path, damage) -> None:
    PhraseCache(FakeTts(), tmp_path).warm(PHRASES)
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    damage(cache.path(PHRASES[1]))
    assert cache.warm(PHRASES) == 1
    assert engine.calls == [PHRASES[1]]
    assert cache.stats.corrupt == 1
    assert np.array_equal(cache.get(PHRASES[1]), engine.audio_for(PHRASES[1]))
    # ... and the repaired file is good for the next process.
    assert PhraseCache(FakeTts(), tmp_path).warm(PHRASES) == 0


def test_wrong_format_file_is_replaced(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    with wave.open(str(cache.path("Hi")), "wb") as out:  # right name, 16 kHz stereo
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0" * 400)
    assert cache.get("Hi") is None
    assert cache.warm(["Hi"]) == 1


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path, monkeypatch) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    cache.warm(["Hello"])
    good = cache.path("Hello").read_bytes()
    # A write that dies half-way (disk full) must leave the old file whole and no temp file.
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    other = PhraseCache(FakeTts(), tmp_path)
    with pytest.raises(OSError):
        other._write(other.key("Hello"), np.ones(10, dtype=np.int16))
    monkeypatch.setattr(os, "replace", real_replace)
    assert cache.path("Hello").read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [cache.path("Hello").name]


def test_unwritable_directory_still_serves_audio(tmp_path, monkeypatch) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_write", no_space)
    audio = cache.synthesize_or_cached("Still spoken.")
    assert np.array_equal(audio, engine.audio_for("Still spoken."))
    assert cache.stats.write_errors == 1
    assert cache.get("Still spoken.") is not None  # kept in memory


def test_stale_temporaries_are_cleaned_up(tmp_path) -> None:
    stale = tmp_path / ".0123456789abcdef.x.tmp"
    fresh = tmp_path / ".fedcba9876543210.y.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    PhraseCache(FakeTts(), tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # may belong to another process writing right now


def test_chunks_from_cache_and_live(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    live = list(cache.chunks("Not cached yet."))
    assert np.array_equal(np.concatenate(live), engine.audio_for("Not cached yet."))
    assert cache.get("Not cached yet.") is None  # live audio streams, it is not stored
    cache.warm(["Cached."])
    engine.calls.clear()
    parts = list(cache.chunks("Cached.", chunk_samples=160))
    assert engine.calls == []
    assert all(p.size <= 160 for p in parts)
    assert np.array_equal(np.concatenate(parts), engine.audio_for("Cached."))
    cancel = CancelToken()
    cancel.cancel()
    assert list(cache.chunks("Cached.", cancel)) == []


def test_concurrent_warm_from_threads(tmp_path) -> None:
    engine = FakeTts()
    cache = PhraseCache(engine, tmp_path)
    threads = [threading.Thread(target=cache.warm, args=(PHRASES,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for text in PHRASES:
        assert np.array_equal(cache.get(text), engine.audio_for(text))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".wav"] * 3


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_with_espeak(tmp_path) -> None:
    from agentd.speech.tts_espeak import EspeakTts

    cache = PhraseCache(EspeakTts(), tmp_path)
    assert cache.warm(PHRASES) == 3
    greeting = cache.get(PHRASES[0])
    assert greeting is not None and greeting.dtype == np.int16
    assert 0.5 < greeting.size / TELEPHONE_RATE < 5
    # Same engine and settings in a new process: nothing to synthesise.
    again = PhraseCache(EspeakTts(), tmp_path)
    assert again.warm(PHRASES) == 0
    assert np.array_equal(again.get(PHRASES[0]), greeting)
    # A different rate sounds different, so it is a different phrase.
    faster = PhraseCache(EspeakTts(rate_wpm=250), tmp_path)
    assert faster.get(PHRASES[0]) is None
    assert faster.warm(PHRASES[:1]) == 1
    assert faster.get(PHRASES[0]).size < greeting.size
