"""espeak-ng fallback TTS: 8 kHz speech, streaming chunks, cancel, safe text, clear errors."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agentd.speech.interfaces import TELEPHONE_RATE, CancelToken, SpeechError
from agentd.speech.tts_espeak import EspeakTts
from tests.speech.conftest import espeak_available, speech_edges

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

SENTENCE = "Thank you for calling. Your appointment is booked for Tuesday at ten."


@pytest.fixture(scope="module")
def tts() -> EspeakTts:
    return EspeakTts()


def collect(chunks) -> np.ndarray:
    out = list(chunks)
    for chunk in out:
        assert chunk.dtype == np.int16 and chunk.ndim == 1 and chunk.size > 0
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def children_named(name: str) -> list[int]:
    """Live child processes of this test process with this command name (Linux /proc)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children")
        for pid in children:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except OSError:
                continue
            if comm == name and state != "Z":
                pids.append(int(pid))
    return pids


def test_output_is_8khz_speech_of_plausible_length(tts: EspeakTts) -> None:
    chunks = list(tts.synthesize(SENTENCE))
    pcm = collect(chunks)
    assert max(c.size for c in chunks) <= tts.chunk_samples
    assert len(chunks) > 5  # streamed in pieces, not one blob
    seconds = len(pcm) / TELEPHONE_RATE
    words = len(SENTENCE.split())
    # 175 wpm is ~0.34 s a word; allow pauses and a fast or slow voice.
    assert 0.15 * words <= seconds <= 0.8 * words
    start, end = speech_edges(pcm)
    assert end - start > 0.8 * seconds - 0.6  # speech throughout, not a blip in silence
    # Energy sits in the telephone band (300-3400 Hz), as speech does.
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / TELEPHONE_RATE)
    assert spectrum[(freqs > 200) & (freqs < 3400)].sum() > 0.8 * spectrum.sum()


def test_speaking_rate_changes_duration() -> None:
    slow = collect(EspeakTts(rate_wpm=120).synthesize(SENTENCE))
    fast = collect(EspeakTts(rate_wpm=260).synthesize(SENTENCE))
    assert len(slow) > 1.5 * len(fast)


def test_voice_and_pitch_change_the_audio(tts: EspeakTts) -> None:
    base = collect(tts.synthesize("Hello there."))
    other_voice = collect(EspeakTts(voice="en-gb").synthesize("Hello there."))
    other_pitch = collect(EspeakTts(pitch=80).synthesize("Hello there."))
    assert not np.array_equal(base, other_voice)
    assert not np.array_equal(base, other_pitch)


def test_same_text_gives_the_same_audio_across_threads(tts: EspeakTts) -> None:
    expected = collect(tts.synthesize(SENTENCE))
    results: list[np.ndarray | None] = [None] * 3

    def worker(slot: int) -> None:
        results[slot] = collect(tts.synthesize(SENTENCE))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for got in results:
        assert got is not None and np.array_equal(got, expected)


def test_cancel_stops_early_and_kills_the_process(tts: EspeakTts) -> None:
    long_text = " ".join([SENTENCE] * 20)  # about a minute of speech
    cancel = CancelToken()
    got = []
    for chunk in tts.synthesize(long_text, cancel):
        got.append(chunk)
        if len(got) == 3:
            assert children_named("espeak-ng")  # it was still running
            cancel.cancel()
    assert len(got) == 3
    assert children_named("espeak-ng") == []


def test_cancel_from_another_thread(tts: EspeakTts) -> None:
    cancel = CancelToken()
    timer = threading.Timer(0.3, cancel.cancel)
    timer.start()
    samples = 0
    started = time.monotonic()
    for chunk in tts.synthesize(" ".join([SENTENCE] * 20), cancel):
        samples += chunk.size
        time.sleep(0.02)  # a consumer slower than espeak-ng, like a paced RTP sender
    timer.join()
    assert time.monotonic() - started < 5
    assert samples < 30 * TELEPHONE_RATE  # far less than the whole text


def test_cancelled_before_start_yields_nothing(tts: EspeakTts) -> None:
    cancel = CancelToken()
    cancel.cancel()
    assert list(tts.synthesize(SENTENCE, cancel)) == []


def test_consumer_that_stops_reading_leaves_no_process(tts: EspeakTts) -> None:
    stream = tts.synthesize(" ".join([SENTENCE] * 20))
    next(stream)
    stream.close()
    assert children_named("espeak-ng") == []


@pytest.mark.parametrize(
    "text",
    [
        'She said "don\'t" and left.',
        "First line.\nSecond line.\r\nThird.",
        "Caf\u00e9 cr\u00e8me, na\u00efve \u2014 \u65e5\u672c\u8a9e, emoji \U0001f600.",
        "-v xx --help",
        "Nul\x00 and escape\x1b[31m characters.",
        "<speak>not SSML</speak> & $HOME `id` $(id) ; | > /dev/null",
    ],
    ids=["quotes", "newlines", "unicode", "dashes", "control", "shell"],
)
def test_awkward_text_is_spoken_safely(tts: EspeakTts, text: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything a shell redirection would create lands here
    pcm = collect(tts.synthesize(text))
    assert len(pcm) > 0.3 * TELEPHONE_RATE
    assert list(tmp_path.iterdir()) == []


def test_empty_text_yields_nothing(tts: EspeakTts) -> None:
    assert list(tts.synthesize("")) == []
    assert list(tts.synthesize("  \n\t ")) == []


def test_missing_binary_says_how_to_install() -> None:
    with pytest.raises(SpeechError, match="apt-get install espeak-ng"):
        EspeakTts(binary="espeak-ng-that-does-not-exist")


def test_unknown_voice_is_refused_at_construction() -> None:
    with pytest.raises(SpeechError, match="nosuchvoice"):
        EspeakTts(voice="nosuchvoice")
    with pytest.raises(ValueError):
        EspeakTts(voice="--stdout")


@pytest.mark.parametrize("kwargs", [{"rate_wpm": 10}, {"pitch": 120}, {"chunk_ms": 0}])
def test_bad_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        EspeakTts(**kwargs)


def fake_binary(tmp_path: Path, body: str) -> str:
    """A stand-in for espeak-ng: passes the start-up voice check (-q), then runs `body`."""
    script = tmp_path / "fake-espeak"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -q ] && exit 0; done\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_failing_binary_is_a_speech_error(tmp_path) -> None:
    tts = EspeakTts(binary=fake_binary(tmp_path, "echo 'broken voice data' >&2; exit 3"))
    with pytest.raises(SpeechError, match="exit 3.*broken voice data"):
        list(tts.synthesize("Hello"))


def test_garbage_output_is_a_speech_error(tmp_path) -> None:
    tts = EspeakTts(binary=fake_binary(tmp_path, "cat >/dev/null; echo 'this is not a wav file'"))
    with pytest.raises(SpeechError, match="not a WAV"):
        list(tts.synthesize("Hello"))


def test_hung_binary_times_out_and_cancel_is_prompt(tmp_path) -> None:
    tts = EspeakTts(binary=fake_binary(tmp_path, "exec sleep 30"), timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(SpeechError, match="longer than"):
        list(tts.synthesize("Hello"))
    assert time.monotonic() - started < 5
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    started = time.monotonic()
    assert list(EspeakTts(binary=tts.binary, timeout_s=30).synthesize("Hello", cancel)) == []
    assert time.monotonic() - started < 5
    assert children_named("sleep") == []
