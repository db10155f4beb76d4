#!/usr/bin/env python3
"""Throughput of the G.711 codecs, against CPython's audioop when it is available.

Usage: .venv/bin/python tools/bench_media.py [--quick]

For μ-law and A-law, on 20 ms frames (160 samples) and on one minute of 8 kHz audio
(480,000 samples), prints encode, decode and encode+decode rates in Msamples/s (best of
several repeats, time.perf_counter) and the speed ratio against audioop measured in the
same run (above 1.0 means agentd is faster). Also the real-time factor of StreamResampler.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentd.media import g711  # noqa: E402
from agentd.media.resample import StreamResampler  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # removed in Python 3.13
        audioop = None

FRAME_SAMPLES = 160
MINUTE_SAMPLES = 480_000


def best_seconds_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Best (least disturbed) mean time of one call over several timed batches."""
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - begin) / calls)
    return best


def speech_like(samples: int) -> np.ndarray:
    """Noise with a speech-like level (mostly small, occasionally loud), reproducible."""
    rng = np.random.default_rng(20)
    envelope = np.repeat(rng.uniform(0.02, 0.6, samples // 800 + 1), 800)[:samples]
    return np.clip(rng.standard_normal(samples) * envelope * 12000, -32768, 32767).astype(np.int16)


def bench_law(law: str, samples: int, calls: int, repeats: int) -> None:
    encode = getattr(g711, f"{law}_encode")
    decode = getattr(g711, f"{law}_decode")
    pcm = speech_like(samples)
    coded = encode(pcm)
    ours_enc = best_seconds_per_call(lambda: encode(pcm), calls, repeats)
    ours_dec = best_seconds_per_call(lambda: decode(coded), calls, repeats)
    line = (
        f"{law:5} {samples:7d} samples  agentd: enc {samples / ours_enc / 1e6:8.1f}"
        f"  dec {samples / ours_dec / 1e6:8.1f}"
        f"  enc+dec {samples / (ours_enc + ours_dec) / 1e6:8.1f} Msamples/s"
    )
    if audioop is not None:
        lin2 = getattr(audioop, f"lin2{law}")
        to_lin = getattr(audioop, f"{law}2lin")
        raw = pcm.tobytes()
        # audioop gives bytes; the pipeline needs an ndarray, so its decode includes the view.
        ref_enc = best_seconds_per_call(lambda: lin2(raw, 2), calls, repeats)
        ref_dec = best_seconds_per_call(
            lambda: np.frombuffer(to_lin(coded, 2), np.int16), calls, repeats
        )
        line += (
            f" | audioop enc+dec {samples / (ref_enc + ref_dec) / 1e6:8.1f} Msamples/s"
            f" | ratio enc {ref_enc / ours_enc:5.2f}x  dec {ref_dec / ours_dec:5.2f}x"
            f"  enc+dec {(ref_enc + ref_dec) / (ours_enc + ours_dec):5.2f}x"
        )
    print(line, flush=True)


def bench_resampler(in_rate: int, out_rate: int, seconds: int, repeats: int) -> None:
    """Real-time factor of streaming resampling in 20 ms chunks (how many calls one core holds)."""
    chunk = in_rate // 50
    audio = speech_like(in_rate * seconds)
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    best = float("inf")
    for _ in range(repeats):
        resampler = StreamResampler(in_rate, out_rate)
        begin = time.perf_counter()
        for piece in chunks:
            resampler.process(piece)
        resampler.flush()
        best = min(best, time.perf_counter() - begin)
    print(f"resample {in_rate:5d} -> {out_rate:5d} Hz in 20 ms chunks: "
          f"{seconds / best:8.0f}x real time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"audioop {'present' if audioop else 'absent: ratios skipped'}")
    for law in ("ulaw", "alaw"):
        bench_law(law, FRAME_SAMPLES, calls=20_000 // scale, repeats=5)
        bench_law(law, MINUTE_SAMPLES, calls=40 // scale, repeats=5)
    for in_rate, out_rate in ((8000, 16000), (24000, 8000), (22050, 8000)):
        bench_resampler(in_rate, out_rate, seconds=60 // scale, repeats=3)


if __name__ == "__main__":
    main()
