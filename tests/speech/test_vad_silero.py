"""Silero VAD: edges on real speech, no false starts on silence/noise/clicks, per-call state."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agentd.speech.interfaces import SpeechEnded, SpeechError, SpeechStarted, VadConfig
from agentd.speech.vad_silero import SileroVad
from tests.speech.conftest import (
    add_noise,
    frames_of,
    require_model,
    speak_espeak,
    speech_edges,
    through_g711,
    trim_silence,
    with_silence,
)

EDGE_TOLERANCE_S = 0.100
SENTENCES = [
    ("Hello, I would like to book an appointment for tomorrow morning.", "en-us"),
    ("Can you transfer me to the billing department please?", "en-gb+f3"),
    ("Yes.", "en-us+m3"),
]


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad(require_model("silero-vad", "silero_vad.onnx"))


def run(stream, pcm: np.ndarray, frame: int = 160) -> list[tuple[float, object]]:
    """Feed a clip in frames; (stream time when emitted, event) for every event."""
    out = []
    for chunk in frames_of(pcm, frame):
        out.extend((stream.time, event) for event in stream.feed(chunk))
    return out


def clip(text: str, voice: str, before: float = 1.0, after: float = 1.5) -> np.ndarray:
    return through_g711(with_silence(trim_silence(speak_espeak(text, voice)), before, after))


@pytest.mark.parametrize(("text", "voice"), SENTENCES)
def test_speech_edges_match_the_clip_energy(vad: SileroVad, text: str, voice: str) -> None:
    pcm = clip(text, voice)
    true_start, true_end = speech_edges(pcm)
    events = [event for _, event in run(vad.stream(), pcm)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded], events
    started, ended = events
    assert abs(started.at - true_start) <= EDGE_TOLERANCE_S
    assert abs(ended.at - true_end) <= EDGE_TOLERANCE_S
    assert ended.duration == pytest.approx(ended.at - started.at)
    assert started.probability >= VadConfig().threshold


def test_edges_hold_with_line_noise(vad: SileroVad) -> None:
    text, voice = SENTENCES[0]
    clean = clip(text, voice)
    true_start, true_end = speech_edges(clean)
    events = [event for _, event in run(vad.stream(), add_noise(clean, snr_db=20, seed=3))]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded], events
    assert abs(events[0].at - true_start) <= EDGE_TOLERANCE_S
    # A quiet word ending may drown in the noise: allow a little more on that side.
    assert abs(events[1].at - true_end) <= 1.5 * EDGE_TOLERANCE_S


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros(8000 * 3, dtype=np.int16),
        lambda: through_g711(add_noise(np.zeros(8000 * 3, dtype=np.int16), 0, seed=1)),
        lambda: np.random.default_rng(2).normal(0, 300, 8000 * 3).astype(np.int16),  # -40 dBFS hiss
        lambda: (3000 * np.sin(2 * np.pi * 50 * np.arange(8000 * 3) / 8000)).astype(np.int16),  # hum
    ],
    ids=["digital-silence", "g711-noise", "hiss", "mains-hum"],
)
def test_silence_and_noise_give_no_events(vad: SileroVad, make) -> None:
    stream = vad.stream()
    assert run(stream, make()) == []
    assert not stream.speaking
    assert stream.probability < VadConfig().threshold


def test_a_100ms_click_is_not_speech(vad: SileroVad) -> None:
    rng = np.random.default_rng(4)
    click = (rng.normal(0, 8000, 800)).clip(-32768, 32767).astype(np.int16)  # loud, 100 ms
    pcm = with_silence(click, 1.0, 1.0)
    pcm = np.concatenate([pcm, with_silence(click, 0.0, 1.0)])  # and a second one
    assert run(vad.stream(), pcm) == []


@pytest.mark.parametrize("ms", [100, 150])
def test_a_fragment_of_speech_shorter_than_min_speech_is_not_speech(
    vad: SileroVad, ms: int
) -> None:
    # Real voice the model is sure about, but only `ms` long: the model's ~100 ms hangover
    # must not make it look min_speech_ms (200) long.
    voiced = trim_silence(speak_espeak("Hello there", "en-us"))[: ms * 8]
    pcm = through_g711(with_silence(voiced, 1.0, 1.0))
    assert run(vad.stream(), pcm) == []
    assert len(run(vad.stream(VadConfig(min_speech_ms=0)), pcm)) == 2  # it was heard


def test_short_word_shorter_than_min_speech_is_ignored(vad: SileroVad) -> None:
    pcm = clip("Yes.", "en-us", after=1.0)
    start, end = speech_edges(pcm)
    long_enough = VadConfig(min_speech_ms=int((end - start) * 1000) - 150)
    too_short = VadConfig(min_speech_ms=int((end - start) * 1000) + 300)
    assert len(run(vad.stream(long_enough), pcm)) == 2
    assert run(vad.stream(too_short), pcm) == []


@pytest.mark.parametrize("end_of_turn_ms", [200, 400, 800])
def test_end_of_turn_follows_config(vad: SileroVad, end_of_turn_ms: int) -> None:
    pcm = clip(*SENTENCES[0], after=2.0)
    events = run(vad.stream(VadConfig(end_of_turn_ms=end_of_turn_ms)), pcm)
    (_, started), (emitted_at, ended) = events
    assert isinstance(ended, SpeechEnded)
    # Emitted once the silence since `at` has lasted end_of_turn_ms: at most one model window
    # (32 ms) plus one 20 ms frame later.
    waited = emitted_at - ended.at
    assert end_of_turn_ms / 1000 <= waited <= end_of_turn_ms / 1000 + 0.032 + 0.020 + 1e-6


def test_pause_shorter_than_end_of_turn_keeps_the_turn(vad: SileroVad) -> None:
    first = trim_silence(speak_espeak("I need to change my booking.", "en-us"))
    second = trim_silence(speak_espeak("For next Tuesday.", "en-us"))
    pcm = through_g711(np.concatenate([
        with_silence(first, 0.5, 0.35), with_silence(second, 0.0, 1.5)
    ]))
    events = [e for _, e in run(vad.stream(VadConfig(end_of_turn_ms=700)), pcm)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    events = [e for _, e in run(vad.stream(VadConfig(end_of_turn_ms=150)), pcm)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2


def test_speaking_and_time_track_the_stream(vad: SileroVad) -> None:
    pcm = clip(*SENTENCES[0])
    stream = vad.stream()
    seen_speaking = False
    for chunk in frames_of(pcm):
        stream.feed(chunk)
        seen_speaking |= stream.speaking
    assert seen_speaking and not stream.speaking
    assert stream.time == pytest.approx(len(pcm) / 8000)


def test_interleaved_streams_match_each_alone(vad: SileroVad) -> None:
    a = clip(*SENTENCES[0], before=0.7)
    b = add_noise(clip(*SENTENCES[1], before=1.3), snr_db=25, seed=5)
    alone_a = run(vad.stream(), a)
    alone_b = run(vad.stream(), b)
    sa, sb = vad.stream(), vad.stream()
    got_a, got_b = [], []
    frames_a, frames_b = frames_of(a), frames_of(b, 120)  # different chunking, too
    for i in range(max(len(frames_a), len(frames_b))):
        if i < len(frames_a):
            got_a.extend((sa.time, e) for e in sa.feed(frames_a[i]))
        if i < len(frames_b):
            got_b.extend((sb.time, e) for e in sb.feed(frames_b[i]))
    assert [e for _, e in got_a] == [e for _, e in alone_a]
    assert [e for _, e in got_b] == [e for _, e in alone_b]


def test_streams_in_threads_share_one_model(vad: SileroVad) -> None:
    pcm = clip(*SENTENCES[0])
    expected = [e for _, e in run(vad.stream(), pcm)]
    results: list[list] = [[] for _ in range(4)]

    def worker(slot: int) -> None:
        results[slot] = [e for _, e in run(vad.stream(), pcm)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [expected] * 4


def test_chunking_does_not_change_the_result(vad: SileroVad) -> None:
    pcm = clip(*SENTENCES[1])
    by_frame = [e for _, e in run(vad.stream(), pcm, 160)]
    by_odd = [e for _, e in run(vad.stream(), pcm, 77)]
    whole = vad.stream().feed(pcm)
    assert by_frame == by_odd == whole


def test_reset_forgets_speech_in_progress(vad: SileroVad) -> None:
    pcm = clip(*SENTENCES[0])
    stream = vad.stream()
    half = len(pcm) // 2
    assert any(isinstance(e, SpeechStarted) for e in stream.feed(pcm[:half]))
    stream.reset()
    assert not stream.speaking
    # No SpeechEnded for a turn we forgot; a fresh start for the rest of the speech.
    rest = stream.feed(pcm[half:])
    assert [type(e) for e in rest] == [SpeechStarted, SpeechEnded]
    assert rest[0].at >= half / 8000
    assert stream.time == pytest.approx(len(pcm) / 8000)


def test_odd_input_is_tolerated(vad: SileroVad) -> None:
    stream = vad.stream()
    assert stream.feed(np.zeros(0, dtype=np.int16)) == []
    assert stream.feed(np.zeros((2, 160), dtype=np.int16)) == []  # flattened
    assert stream.feed(np.full(160, np.nan, dtype=np.float32)) == []
    assert stream.time == pytest.approx(480 / 8000)
    with pytest.raises(TypeError):
        stream.feed(np.array(["a"] * 10))


def test_bad_config_is_refused(vad: SileroVad) -> None:
    with pytest.raises(ValueError):
        vad.stream(VadConfig(threshold=0.3, neg_threshold=0.5))


def test_missing_model_names_file_and_fetch_command(tmp_path) -> None:
    missing = tmp_path / "silero_vad.onnx"
    with pytest.raises(SpeechError) as info:
        SileroVad(missing)
    assert str(missing) in str(info.value)
    assert "agentd models fetch silero-vad" in str(info.value)


def test_corrupt_model_is_a_speech_error(tmp_path) -> None:
    bad = tmp_path / "silero_vad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(SpeechError, match="cannot load"):
        SileroVad(bad)


def test_closed_model_is_a_speech_error() -> None:
    model = SileroVad(require_model("silero-vad", "silero_vad.onnx"))
    stream = model.stream()
    model.close()
    with pytest.raises(SpeechError, match="closed"):
        stream.feed(np.zeros(256, dtype=np.int16))
