#!/usr/bin/env python3
"""Benchmark the ASR engines on TTS caller clips through G.711 at 8 kHz; prints numbers.

Per engine: load time; RTF of streaming (20 ms frames, partials on); the cost of one
partial; final latency = time from the finish() call to its result, (a) cold (no partials,
no prepare), (b) streamed with partials, (c) with prepare_final() called 100 ms into the
trailing silence and 300 ms more silence fed before finish(); WER clean and at 20 dB SNR.
Whisper is also compared with stock faster-whisper transcribe() (30 s window).
Medians over the clips (p50), worst in brackets. The CPU is shared: repeat and compare.

    .venv/bin/python tools/bench_asr.py --whisper DIR [--vosk DIR] [--threads 1] [--repeat 1]
        [--final-beam 5] [--prompt TEXT]

The speech test set's WER and final latency (as a call runs it) are in tools/bench_speech.py.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentd.media.g711 import ulaw_decode, ulaw_encode
from agentd.media.resample import StreamResampler
from agentd.speech.metrics import normalize_words, wer

RATE = 8000
FRAME = 160
ENGLISH = [
    "Hello, I would like to book an appointment for next Tuesday afternoon.",
    "Can you transfer me to the sales department please?",
    "I have a question about my last invoice.",
    "Please call me back tomorrow morning.",
    "What time does the office open on Saturday?",
    "My name is John Smith and I am calling about the delivery that never came.",
]
KOREAN = [
    "안녕하세요 예약을 하고 싶습니다",
    "내일 오후에 다시 전화해 주세요",
    "영업부로 연결해 주시겠어요",
]
VOICES = {  # caller voices: (program, voice)
    "flite-rms": ("flite", "rms"),
    "flite-kal": ("flite", "kal"),
    "flite-awb": ("flite", "awb"),
    "espeak-en": ("espeak-ng", "en-us"),
}


def speak(program: str, voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        if program == "flite":
            command = ["flite", "-voice", voice, "-o", str(path), "-t", text]
        else:
            command = ["espeak-ng", "-v", voice, "-w", str(path), text]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        with wave.open(str(path)) as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int16)
    resampler = StreamResampler(rate, RATE)
    return np.concatenate((resampler.process(pcm), resampler.flush()))


def phone(pcm: np.ndarray, snr_db: float | None, seed: int = 1) -> np.ndarray:
    """0.3 s silence before the speech (the trailing silence is fed by the scenarios)."""
    pcm = np.concatenate((np.zeros(int(0.3 * RATE), np.int16), pcm))
    if snr_db is not None:
        x = pcm.astype(np.float64)
        power = float(np.mean(x[np.abs(x) > 100] ** 2)) / 10 ** (snr_db / 10)
        x += np.random.default_rng(seed).normal(0.0, np.sqrt(power), x.shape)
        pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm))


def silence(seconds: float, like: np.ndarray, snr_db: float | None) -> np.ndarray:
    """Trailing 'silence': digital zero, or the same noise floor as the clip."""
    n = int(seconds * RATE)
    if snr_db is None:
        return np.zeros(n, np.int16)
    x = like.astype(np.float64)
    power = float(np.mean(x[np.abs(x) > 100] ** 2)) / 10 ** (snr_db / 10)
    noise = np.random.default_rng(7).normal(0.0, np.sqrt(power), n)
    return ulaw_decode(ulaw_encode(np.clip(np.rint(noise), -32768, 32767).astype(np.int16)))


def feed(stream, pcm: np.ndarray, partial: bool = True) -> tuple[float, list[float]]:
    """Feed 20 ms frames; returns (total seconds, seconds of each call that made a partial).

    Whisper counts its model decodes; Vosk's partials are the calls that returned one."""
    total, decoding = 0.0, []
    for i in range(0, len(pcm), FRAME):
        before = getattr(stream, "decodes", None)
        start = time.perf_counter()
        result = stream.accept(pcm[i : i + FRAME], partial=partial)
        spent = time.perf_counter() - start
        total += spent
        if stream.decodes > before if before is not None else result is not None:
            decoding.append(spent)
    return total, decoding


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{1000 * statistics.median(values):.0f} ms [{1000 * max(values):.0f}]"


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    words = sum(len(normalize_words(r)) for r, _ in pairs)
    return sum(wer(r, h) * len(normalize_words(r)) for r, h in pairs) / max(1, words)


def bench_engine(
    engine, clips: list[tuple[str, np.ndarray, float | None]], repeat: int, score: bool = True
) -> None:
    rtf, partial_cost, cold, streamed, prepared, prepare_cost = [], [], [], [], [], []
    reused = 0
    hyps: dict[float | None, list[tuple[str, str]]] = {}
    for _ in range(repeat):
        for text, pcm, snr in clips:
            tail_first, tail_rest = silence(0.1, pcm, snr), silence(0.3, pcm, snr)
            # (a) cold: the whole turn, no partials, finish() does all the work.
            stream = engine.open_stream()
            feed(stream, np.concatenate((pcm, tail_first, tail_rest)), partial=False)
            start = time.perf_counter()
            final = stream.finish()
            cold.append(time.perf_counter() - start)
            hyps.setdefault(snr, []).append((text, final.text))
            # (b) streamed with partials, no prepare_final.
            stream = engine.open_stream()
            spent, decoding = feed(stream, np.concatenate((pcm, tail_first, tail_rest)))
            start = time.perf_counter()
            stream.finish()
            streamed.append(time.perf_counter() - start)
            rtf.append((spent + streamed[-1]) / (len(pcm) / RATE + 0.4))
            partial_cost.extend(decoding)
            # (c) streamed, prepare_final at the VAD's first silence.
            if hasattr(engine.open_stream(), "prepare_final"):
                stream = engine.open_stream()
                feed(stream, np.concatenate((pcm, tail_first)))
                start = time.perf_counter()
                stream.prepare_final()
                prepare_cost.append(time.perf_counter() - start)
                decodes = stream.decodes
                feed(stream, tail_rest)
                start = time.perf_counter()
                stream.finish()
                prepared.append(time.perf_counter() - start)
                reused += stream.decodes == decodes
    print(f"  streaming RTF (partials on) p50 {statistics.median(rtf):.3f}  max {max(rtf):.3f}")
    print(f"  partial decode cost         {ms(partial_cost)}  ({len(partial_cost)} partials)")
    print(f"  final after end of speech:  cold {ms(cold)}  streamed {ms(streamed)}")
    if prepared:
        print(
            f"                              with prepare_final {ms(prepared)}"
            f"  (prepare itself {ms(prepare_cost)}; reused {reused}/{len(prepared)})"
        )
    for snr, pairs in hyps.items() if score else ():
        label = "clean" if snr is None else f"{snr:g} dB SNR"
        print(f"  WER {label:<11} {100 * corpus_wer(pairs):5.1f} %  ({len(pairs)} clips)")


def bench_stock_whisper(model_dir: str, threads: int, clips) -> None:
    """Stock faster-whisper transcribe(): pads every call to 30 s."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        model_dir, device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True
    )
    times, pairs = [], {}
    for text, pcm, snr in clips:
        resampler = StreamResampler(RATE, 16000)
        audio = np.concatenate((resampler.process(pcm), resampler.flush())).astype(np.float32)
        start = time.perf_counter()
        segments, _ = model.transcribe(
            audio / 32768.0, beam_size=1, language="en", without_timestamps=True, vad_filter=False
        )
        hyp = " ".join(s.text.strip() for s in segments)
        times.append(time.perf_counter() - start)
        pairs.setdefault(snr, []).append((text, hyp))
    print(f"  stock transcribe(), 30 s window: {ms(times)} per clip", end="")
    for snr, p in pairs.items():
        print(
            f"; WER {'clean' if snr is None else f'{snr:g} dB'} {100 * corpus_wer(p):.1f} %", end=""
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", help="Whisper CTranslate2 model directory")
    parser.add_argument("--vosk", help="Vosk model directory (Korean)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--no-stock", action="store_true", help="skip stock faster-whisper")
    parser.add_argument("--final-beam", type=int, default=5, help="Whisper beam for finals")
    parser.add_argument("--prompt", help="Whisper prompt (previous text) with domain words")
    args = parser.parse_args()

    if args.whisper:
        from agentd.speech.asr_whisper import WhisperAsr

        clips = []
        for name in args.voices.split(","):
            program, voice = VOICES[name]
            for text in ENGLISH:
                pcm = speak(program, voice, text)
                clips += [(text, phone(pcm, None), None), (text, phone(pcm, 20), 20.0)]
        start = time.perf_counter()
        engine = WhisperAsr(
            args.whisper, threads=args.threads, final_beam_size=args.final_beam, prompt=args.prompt
        )
        print(
            f"whisper tiny.en int8, {args.threads} thread(s), final beam {args.final_beam}"
            f"{', prompt' if args.prompt else ''}: load "
            f"{1000 * (time.perf_counter() - start):.0f} ms; {len(clips)} clips "
            f"({args.voices}; clean and 20 dB SNR), repeat {args.repeat}"
        )
        bench_engine(engine, clips, args.repeat)
        if not args.no_stock:
            bench_stock_whisper(args.whisper, args.threads, clips)
    if args.vosk:
        from agentd.speech.asr_vosk import VoskAsr

        clips = [(t, phone(speak("espeak-ng", "ko", t), None), None) for t in KOREAN]
        start = time.perf_counter()
        engine = VoskAsr(args.vosk)
        print(
            f"vosk-ko: load {1000 * (time.perf_counter() - start):.0f} ms; "
            f"{len(clips)} espeak-ng Korean clips (WER meaningless: engine path only)"
        )
        bench_engine(engine, clips, args.repeat, score=False)


if __name__ == "__main__":
    main()
