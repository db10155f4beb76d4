#!/usr/bin/env python3
"""Build (or check) the speech test set: caller clips at 8 kHz through G.711, clean and noisy.

    .venv/bin/python tools/make_speech_testset.py [--cache-dir DIR] [--force] [--list]

Texts and voices come from tests/speech/testset/utterances.yaml; the audio goes to
.cache/speech-testset/<hash>/ (or $AGENTD_SPEECH_TESTSET), with manifest.json beside it.
An up-to-date set is only loaded, not rebuilt (unless --force). Needs espeak-ng, flite and
hibari-tts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentd.speech.testset import (  # noqa: E402
    DEFAULT_SPEC_PATH,
    TestSetError,
    build_testset,
    clip_summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="where the set is built")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC_PATH, help="utterances.yaml")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--list", action="store_true", help="print every clip")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        testset = build_testset(args.cache_dir, spec_path=args.spec, force=args.force)
    except TestSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    clips = testset.clips
    print(f"test set: {testset.root}")
    print(f"spec hash {testset.spec_hash[:16]}  content hash {testset.content_hash[:16]}")
    print(
        f"{len(clips)} clips ({sum(not c.noisy for c in clips)} clean, "
        f"{sum(c.noisy for c in clips)} noisy), {sum(c.duration for c in clips):.1f} s of "
        f"audio, ready in {elapsed:.1f} s"
    )
    print(f"{'voice':20} {'clips':>5} {'seconds':>8}")
    for voice, entry in clip_summary(clips).items():
        print(f"{voice:20} {int(entry['clips']):5d} {entry['seconds']:8.1f}")
    if args.list:
        for clip in clips:
            snr = f"{clip.snr_db:g} dB" if clip.noisy else "clean"
            print(
                f"{clip.id:28} {clip.voice:18} {snr:6} {clip.duration:5.2f}s "
                f"[{clip.speech_start:.2f}-{clip.speech_end:.2f}] {clip.text}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
