#!/usr/bin/env python3
"""Benchmark the speech engines on the speech test set; prints tables of numbers.

    .venv/bin/python tools/bench_speech.py [--quick] [--engines silero,whisper,vosk,...]
        [--threads 1] [--cache-dir DIR] [--json FILE]
        [--final-beam N] [--no-denoise] [--prompt TEXT | --prompt-policy POLICY.yaml]
        [--asr-model whisper-tiny-en,whisper-base] [--vosk-model vosk-en-small,vosk-ko]

Engines are built by agentd.speech.factory from the default `speech:` config and the model
store (`agentd models list`), each in its own child process so load time and RSS are its own
(RSS delta = after loading minus before importing the engine module). Audio is the test set
(tools/make_speech_testset.py): caller clips at 8 kHz through G.711, clean and at 20 dB SNR.

VAD (silero): RTF = feed() time / audio time, 20 ms frames. End-of-speech delay = stream time
  at which SpeechEnded is returned minus the clip's true speech end (energy edge), with the
  configured end_of_turn_ms; "-eot" subtracts end_of_turn (what the detector adds). Splits:
  clips where a SpeechEnded came > 100 ms before the true end (a turn cut in two).
ASR (whisper, vosk): each clip is fed in 20 ms frames followed by trailing silence (or the
  clip's own noise), with partials on and a VAD beside it as in a call: prepare_final() (where
  the engine has it) at the VAD's first silent window after speech, finish() when SpeechEnded
  arrives. Final latency = time from SpeechEnded to the final transcript on a real-time
  timeline: max(0, prepare start + prepare time - SpeechEnded) + finish() time. "finish"
  = the finish() call alone. RTF = all accept/prepare/finish time / audio time. WER is over
  the set (errors / reference words) after agentd.speech.testset.normalize_transcript.
  The WER of one-shot transcribe() on the same clips is printed below the table, so a
  difference made by the streaming path (partials, prepare_final) shows, and so is the WER
  per voice engine and over the even- and odd-indexed utterances (settings are chosen on the
  even half; the odd half shows whether they carry over). Whisper options map to the
  `speech.asr` config: --final-beam (final_beam_size), --no-denoise (denoise: false),
  --prompt TEXT or --prompt-policy FILE (prompt = the policy's own words: business and agent
  name, knowledge topics, flow names, escalation topics and targets, open weekdays).
  --asr-model ID[,ID...] benchmarks each Whisper model id (speech.asr.model) in its own
  worker, one row each (default whisper-tiny-en), so models compare within one run.
  --vosk-model ID[,ID...] does the same for Vosk (default vosk-en-small, the English small
  model, and vosk-ko); each model is measured on the clips of its own language (the Korean
  model on Korean espeak-ng clips, which says nothing about English).
TTS (piper, hibari, espeak, coqui if its model is installed): first chunk = time from
  synthesize() to the first 8 kHz chunk, short (one clause) and long (3-4 sentences) agent
  replies, after one warm-up; RTF = synthesis time / audio time over the long replies.

Numbers are medians (p50) and p95 over clips/texts; the CPU is shared, so repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentd.speech.testset import (  # noqa: E402
    Clip,
    TestSet,
    TestSetError,
    build_testset,
    corpus_wer,
    normalize_transcript,
    transcript_wer,
    word_errors,
)

FRAME = 160  # 20 ms at 8 kHz
RATE = 8000
TAIL_S = 1.2  # audio fed after each clip, so end_of_turn can elapse
ALL_ENGINES = ("silero", "whisper", "vosk", "piper", "hibari", "espeak", "coqui")
DEFAULT_WHISPER = "whisper-tiny-en"
DEFAULT_VOSK = "vosk-en-small"
ASR_DEFAULTS = {"whisper": DEFAULT_WHISPER, "vosk": DEFAULT_VOSK}  # speech.asr.model by engine
KINDS = {"silero": "vad", "whisper": "asr", "vosk": "asr", "piper": "tts", "hibari": "tts",
         "espeak": "tts", "coqui": "tts"}
TARGETS = {
    "vad_rtf": 0.01,
    "asr_final_p50_ms": 150.0,
    "tts_first_ms": 150.0,
    "wer_clean": 0.10,
    "wer_noisy": 0.20,
}
SHORT_TEXTS = ["Sure.", "Okay, one moment.", "Thanks, got it.", "Let me check that for you."]
LONG_TEXTS = [
    "Thanks for calling Bright Smile Dental. I can move your appointment to Friday at half "
    "past two. Would that work for you, or would you prefer the morning?",
    "I found your order. It left our warehouse on Monday and should arrive tomorrow before "
    "noon. If it does not, call us back and we will send a replacement.",
    "I understand. Let me put you through to someone in our sales team. Please stay on the "
    "line, it should only take a moment. Thank you for your patience.",
]


# ---- measurement helpers -----------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def frames_of(pcm: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(pcm), FRAME):
        yield pcm[start : start + FRAME]


def with_tail(clip: Clip, pcm: np.ndarray, seconds: float = TAIL_S) -> np.ndarray:
    """The clip and `seconds` more of its background: silence, or its own leading noise."""
    count = int(seconds * RATE)
    if not clip.noisy:
        return np.concatenate((pcm, np.zeros(count, dtype=np.int16)))
    lead = pcm[: max(FRAME, int((clip.speech_start - 0.05) * RATE))]
    return np.concatenate((pcm, np.resize(lead, count)))


def corpus_cer(pairs: list[tuple[str, str]]) -> float:
    """Character error rate without spaces (word splits vary in Korean)."""
    errors = chars = 0
    for reference, hypothesis in pairs:
        ref = list(normalize_transcript(reference).replace(" ", ""))
        errors += word_errors(ref, list(normalize_transcript(hypothesis).replace(" ", "")))
        chars += len(ref)
    return errors / chars if chars else 0.0


def loaded(build: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    before = rss_mb()
    started = time.perf_counter()
    engine = build()
    return engine, {"load_s": time.perf_counter() - started, "rss_mb": rss_mb() - before}


def kind_of(name: str) -> str:
    """The kind of a result row: `whisper:whisper-base` is a whisper (asr) row."""
    return KINDS[name.split(":", 1)[0]]


def speech_config(engine: str, threads: int, asr_options: dict[str, Any] | None = None) -> Any:
    from agentd.config.schema import SpeechConfig

    kind = KINDS[engine]
    section: dict[str, Any] = {"threads": threads}
    if engine in ASR_DEFAULTS:
        section.update({"engine": engine, "model": ASR_DEFAULTS[engine], **(asr_options or {})})
    elif engine == "coqui":
        section.update(engine="coqui", model="coqui-en-ljspeech-vits")
    elif kind == "tts":
        section.update(engine=engine, model="piper-en-us-joe-medium" if engine == "piper" else None)
    return SpeechConfig.model_validate({kind: section})


# ---- workers (one engine per child process) ---------------------------------------------------


def bench_vad(testset: TestSet, quick: bool, threads: int) -> dict[str, Any]:
    from agentd.speech.factory import build_vad, speech_store, vad_config

    cfg = speech_config("silero", threads)
    vad, result = loaded(lambda: build_vad(cfg, speech_store(cfg)))
    config = vad_config(cfg)
    clips = testset.select(limit=24 if quick else None)
    busy = audio = 0.0
    delays: list[float] = []
    splits = missed = 0
    for clip in clips:
        pcm = with_tail(clip, clip.audio())
        stream = vad.stream(config)
        ends: list[tuple[float, float]] = []  # (emitted at, dated at)
        for frame in frames_of(pcm):
            started = time.perf_counter()
            events = stream.feed(frame)
            busy += time.perf_counter() - started
            ends += [(stream.time, e.at) for e in events if type(e).__name__ == "SpeechEnded"]
        audio += len(pcm) / RATE
        final = [emitted for emitted, at in ends if emitted >= clip.speech_end]
        if any(emitted < clip.speech_end - 0.1 for emitted, _ in ends):
            splits += 1
        if not final:
            missed += 1
            continue
        delays.append(final[0] - clip.speech_end)
    eot = config.end_of_turn_ms / 1000
    result.update(
        clips=len(clips), rtf=busy / audio, end_of_turn_ms=config.end_of_turn_ms,
        eos_p50_ms=1000 * percentile(delays, 50), eos_p95_ms=1000 * percentile(delays, 95),
        over_eot_p50_ms=round(1000 * (percentile(delays, 50) - eot), 1) + 0.0,
        over_eot_p95_ms=round(1000 * (percentile(delays, 95) - eot), 1) + 0.0,
        splits=splits, missed=missed,
    )
    return result


def policy_vocabulary(path: str) -> str:
    """Words an operator's policy already holds, as a Whisper prompt."""
    from agentd.dialog.policy import load_policy

    policy = load_policy(path)
    words = [policy.agent.organisation, policy.agent.name]
    words += [item.topic for item in policy.knowledge]
    words += [name.replace("_", " ") for name in policy.flows]
    for rule in policy.escalation.rules:
        words += list(getattr(rule, "topics", None) or ())
    words += [t.label for t in policy.escalation.targets.values() if getattr(t, "label", None)]
    if policy.hours is not None:
        days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        words += [day.capitalize() for day in days if getattr(policy.hours, day)]
    return ", ".join(dict.fromkeys(words)) + "."


def bench_asr(engine_name: str, testset: TestSet, quick: bool, threads: int,
              asr_options: dict[str, Any] | None = None) -> dict[str, Any]:
    from agentd.speech.factory import build_asr, build_vad, speech_store, vad_config

    cfg = speech_config(engine_name, threads, asr_options)
    store = speech_store(cfg)
    vad = build_vad(cfg, store)  # before the ASR: its load is not the ASR's
    vad_cfg = vad_config(cfg)
    asr, result = loaded(lambda: build_asr(cfg, store))
    lang = asr.language
    per_set = 10 if quick else None
    if engine_name == "vosk" and quick and lang != "en":
        per_set = 4
    busy = audio = 0.0
    finals: list[float] = []
    finish_calls: list[float] = []
    examples: list[str] = []
    groups: dict[str, list[tuple[str, str]]] = {}  # "espeak clean", "even noisy", ...
    for noisy in (False, True):
        pairs: list[tuple[str, str]] = []
        one_shot: list[tuple[str, str]] = []  # whole clip at once: isolates the streaming path
        condition = "noisy" if noisy else "clean"
        for index, clip in enumerate(testset.select(lang=lang, noisy=noisy, limit=per_set)):
            one_shot.append((clip.text, asr.transcribe(clip.audio()).text))
            pcm = with_tail(clip, clip.audio())
            run = _asr_turn(asr, vad.stream(vad_cfg), vad_cfg, clip, pcm)
            busy += run["busy_s"]
            audio += run["audio_s"]
            finals.append(run["final_s"])
            finish_calls.append(run["finish_s"])
            pairs.append((clip.text, run["text"]))
            half = "even" if index % 2 == 0 else "odd"
            for group in (f"{clip.engine} {condition}", f"{half} {condition}"):
                groups.setdefault(group, []).append((clip.text, run["text"]))
            if len(examples) < 3 and not noisy and transcript_wer(clip.text, run["text"]) > 0:
                examples.append(f"{clip.text!r} -> {run['text']!r}")
        result["wer_noisy" if noisy else "wer_clean"] = corpus_wer(pairs)
        result["cer_noisy" if noisy else "cer_clean"] = corpus_cer(pairs)
        result["oneshot_wer_noisy" if noisy else "oneshot_wer_clean"] = corpus_wer(one_shot)
        result["clips_noisy" if noisy else "clips_clean"] = len(pairs)
    result.update(
        language=lang, rtf=busy / audio,
        final_p50_ms=1000 * percentile(finals, 50), final_p95_ms=1000 * percentile(finals, 95),
        finish_p50_ms=1000 * percentile(finish_calls, 50),
        finish_p95_ms=1000 * percentile(finish_calls, 95),
        examples=examples,
        wer_groups={group: corpus_wer(pairs) for group, pairs in sorted(groups.items())},
        options=asr_options or {},
    )
    return result


def _asr_turn(asr: Any, vad: Any, vad_cfg: Any, clip: Clip, pcm: np.ndarray) -> dict[str, Any]:
    """One caller turn as the call loop runs it (see the module docstring)."""
    stream = asr.open_stream()
    prepare = getattr(stream, "prepare_final", None)
    busy = 0.0
    prepared_at: float | None = None  # stream time the latest prepare_final started
    prepare_s = 0.0
    fed = 0
    ended_at: float | None = None
    for frame in frames_of(pcm):
        started = time.perf_counter()
        stream.accept(frame)
        busy += time.perf_counter() - started
        fed += len(frame)
        events = vad.feed(frame)
        if any(type(e).__name__ == "SpeechEnded" for e in events) and fed / RATE >= clip.speech_end:
            ended_at = fed / RATE
            break
        if prepare is None:
            continue
        if vad.speaking and vad.probability >= vad_cfg.threshold:
            prepared_at = None  # speech again: the next silence prepares anew
        elif vad.speaking and vad.probability < vad_cfg.neg_threshold and prepared_at is None:
            prepared_at = fed / RATE
            started = time.perf_counter()
            prepare()
            prepare_s = time.perf_counter() - started
            busy += prepare_s
    if ended_at is None:
        ended_at = fed / RATE  # the VAD never ended the turn: finish at the end of the audio
    started = time.perf_counter()
    transcript = stream.finish()
    finish_s = time.perf_counter() - started
    busy += finish_s
    still_preparing = (
        max(0.0, prepared_at + prepare_s - ended_at) if prepared_at is not None else 0.0
    )
    return {
        "text": transcript.text, "busy_s": busy, "audio_s": fed / RATE,
        "final_s": still_preparing + finish_s, "finish_s": finish_s,
    }


def bench_tts(engine_name: str, quick: bool, threads: int) -> dict[str, Any]:
    from agentd.speech.factory import build_tts, speech_store

    cfg = speech_config(engine_name, threads)
    tts, result = loaded(lambda: build_tts(cfg, speech_store(cfg)))
    for _ in tts.synthesize("Hello, how can I help?"):  # warm-up, as the daemon does
        pass
    repeats = 1 if quick else 3
    firsts: dict[str, list[float]] = {"short": [], "long": []}
    synth_s = audio_s = 0.0
    for label, texts in (("short", SHORT_TEXTS), ("long", LONG_TEXTS)):
        for _ in range(repeats):
            for text in texts:
                started = time.perf_counter()
                samples = 0
                first: float | None = None
                for chunk in tts.synthesize(text):
                    if first is None:
                        first = time.perf_counter() - started
                    samples += len(chunk)
                total = time.perf_counter() - started
                firsts[label].append(first if first is not None else float("nan"))
                if label == "long":
                    synth_s += total
                    audio_s += samples / RATE
    result.update(
        voice=str(getattr(tts, "voice", "")), native_rate=int(getattr(tts, "native_rate", 0)),
        first_short_p50_ms=1000 * percentile(firsts["short"], 50),
        first_short_p95_ms=1000 * percentile(firsts["short"], 95),
        first_long_p50_ms=1000 * percentile(firsts["long"], 50),
        first_long_p95_ms=1000 * percentile(firsts["long"], 95),
        rtf=synth_s / audio_s if audio_s else float("nan"),
    )
    return result


def worker(engine: str, cache_dir: str, quick: bool, threads: int,
           asr_options: dict[str, Any] | None = None) -> dict[str, Any]:
    from agentd.speech.interfaces import SpeechError

    try:
        kind = KINDS[engine]
        if kind == "tts":
            return bench_tts(engine, quick, threads)
        testset = build_testset(cache_dir)
        if kind == "vad":
            return bench_vad(testset, quick, threads)
        return bench_asr(engine, testset, quick, threads, asr_options)
    except (SpeechError, ImportError) as exc:
        return {"skipped": str(exc).splitlines()[0][:160]}


# ---- parent: run workers, print tables ---------------------------------------------------------


def run_worker(engine: str, cache_dir: str, quick: bool, threads: int,
               timeout_s: float, asr_options: dict[str, Any] | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", engine, "--cache-dir", cache_dir,
               "--threads", str(threads), "--asr-options", json.dumps(asr_options or {})]
    command += ["--quick"] if quick else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"worker failed (exit {done.returncode}): {tail[:160]}"}
    return json.loads(lines[-1])


def mark(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def fmt(value: Any, spec: str = ".0f") -> str:
    if isinstance(value, float) and np.isnan(value):
        return "-"
    return format(value, spec)


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    def rows(kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, r) for name, r in results.items() if kind_of(name) == kind]

    def skipped(name: str, r: dict[str, Any]) -> bool:
        if "skipped" in r:
            print(f"{name:8} skipped: {r['skipped']}")
            return True
        return False

    t = TARGETS
    if rows("vad"):
        print("\nVAD (end-of-speech delay = SpeechEnded returned - true end of speech)")
        print(f"{'engine':8} {'load s':>6} {'RSS MB':>6} {'RTF':>7} {'eot ms':>6} "
              f"{'delay p50/p95 ms':>16} {'-eot p50/p95':>12} {'splits':>6} {'missed':>6} "
              f"{'clips':>5}  target RTF<={t['vad_rtf']}")
        for name, r in rows("vad"):
            if skipped(name, r):
                continue
            print(f"{name:8} {r['load_s']:6.2f} {r['rss_mb']:6.0f} {r['rtf']:7.4f} "
                  f"{r['end_of_turn_ms']:6d} "
                  f"{fmt(r['eos_p50_ms']):>7}/{fmt(r['eos_p95_ms']):<8} "
                  f"{fmt(r['over_eot_p50_ms']):>5}/{fmt(r['over_eot_p95_ms']):<6} "
                  f"{r['splits']:6d} {r['missed']:6d} {r['clips']:5d}  "
                  f"{mark(r['rtf'], t['vad_rtf'])}")
    if rows("asr"):
        width = max(8, *(len(name) for name, _ in rows("asr")))
        print("\nASR (final = SpeechEnded -> final transcript, real-time timeline; "
              "finish = the finish() call)")
        print(f"{'engine':{width}} {'lang':>4} {'load s':>6} {'RSS MB':>6} {'RTF':>6} "
              f"{'WER clean':>9} {'WER noisy':>9} {'final p50/p95 ms':>16} "
              f"{'finish p50/p95':>14} {'clips':>7}  targets")
        for name, r in rows("asr"):
            if skipped(name, r):
                continue
            note = "" if r["language"] == "en" else f"  (WER on {r['language']} clips, not English)"
            print(f"{name:{width}} {r['language']:>4} {r['load_s']:6.2f} {r['rss_mb']:6.0f} "
                  f"{r['rtf']:6.3f} {100 * r['wer_clean']:8.1f}% {100 * r['wer_noisy']:8.1f}% "
                  f"{fmt(r['final_p50_ms']):>7}/{fmt(r['final_p95_ms']):<8} "
                  f"{fmt(r['finish_p50_ms']):>6}/{fmt(r['finish_p95_ms']):<7} "
                  f"{r['clips_clean']:3d}+{r['clips_noisy']:<3d}  "
                  f"WER {mark(r['wer_clean'], t['wer_clean'])}/"
                  f"{mark(r['wer_noisy'], t['wer_noisy'])} "
                  f"final {mark(r['final_p50_ms'], t['asr_final_p50_ms'])}{note}")
        print(f"targets: WER <= {100 * t['wer_clean']:.0f}% clean, <= "
              f"{100 * t['wer_noisy']:.0f}% noisy (20 dB SNR); final <= "
              f"{t['asr_final_p50_ms']:.0f} ms p50")
        for name, r in rows("asr"):
            if "skipped" in r:
                continue
            print(f"  {name}: WER of one-shot transcribe() (no streaming, no VAD) "
                  f"{100 * r['oneshot_wer_clean']:.1f}% clean, "
                  f"{100 * r['oneshot_wer_noisy']:.1f}% noisy")
            if "cer_clean" in r and r.get("language") != "en":
                print(f"  {name}: character error rate {100 * r['cer_clean']:.0f}% clean, "
                      f"{100 * r['cer_noisy']:.0f}% noisy ({r['language']} espeak-ng clips)")
            if r.get("wer_groups"):
                print(f"  {name}: WER by group: " + ", ".join(
                    f"{group} {100 * value:.1f}%" for group, value in r["wer_groups"].items()))
            if r.get("options"):
                print(f"  {name}: speech.asr options {json.dumps(r['options'])}")
            for example in r.get("examples", []):
                print(f"  {name} e.g. {example}")
    if rows("tts"):
        print("\nTTS (first chunk = synthesize() -> first 8 kHz chunk, after one warm-up)")
        print(f"{'engine':8} {'voice':>16} {'load s':>6} {'RSS MB':>6} "
              f"{'first short p50/p95':>19} {'first long p50/p95':>18} {'RTF':>6}  "
              f"target first<={t['tts_first_ms']:.0f} ms")
        for name, r in rows("tts"):
            if skipped(name, r):
                continue
            worst = max(r["first_short_p50_ms"], r["first_long_p50_ms"])
            print(f"{name:8} {r['voice'][:16]:>16} {r['load_s']:6.2f} {r['rss_mb']:6.0f} "
                  f"{fmt(r['first_short_p50_ms']):>9}/{fmt(r['first_short_p95_ms']):<9} "
                  f"{fmt(r['first_long_p50_ms']):>8}/{fmt(r['first_long_p95_ms']):<9} "
                  f"{r['rtf']:6.3f}  {mark(worst, t['tts_first_ms'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset (under ~2 minutes)")
    parser.add_argument("--engines", default=",".join(ALL_ENGINES),
                        help=f"comma-separated, from {','.join(ALL_ENGINES)}")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per engine")
    parser.add_argument("--cache-dir", help="test set directory (default .cache/speech-testset)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--final-beam", type=int, help="Whisper speech.asr.final_beam_size")
    parser.add_argument("--no-denoise", action="store_true", help="Whisper denoise: false")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help="Whisper speech.asr.prompt")
    prompts.add_argument("--prompt-policy", type=Path,
                         help="Whisper prompt = this policy's own words (see above)")
    parser.add_argument("--asr-model", default=DEFAULT_WHISPER,
                        help="Whisper speech.asr.model id(s), comma-separated: one row each")
    parser.add_argument("--vosk-model", default=f"{DEFAULT_VOSK},vosk-ko",
                        help="Vosk speech.asr.model id(s), comma-separated: one row each")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--asr-options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        options = json.loads(args.asr_options)
        print(json.dumps(worker(args.worker, args.cache_dir, args.quick, args.threads, options)))
        return 0
    asr_options: dict[str, Any] = {}
    if args.final_beam is not None:
        asr_options["final_beam_size"] = args.final_beam
    if args.no_denoise:
        asr_options["denoise"] = False
    if args.prompt:
        asr_options["prompt"] = args.prompt
    elif args.prompt_policy:
        asr_options["prompt"] = policy_vocabulary(str(args.prompt_policy))
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in KINDS]
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {','.join(ALL_ENGINES)}")
    started = time.monotonic()
    try:
        testset = build_testset(args.cache_dir)
    except TestSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"speech test set {testset.spec_hash[:12]}: {len(testset.clips)} clips in "
          f"{testset.root} (ready in {time.monotonic() - started:.1f} s); "
          f"{'quick' if args.quick else 'full'} run, {args.threads} thread(s) per engine, "
          f"{os.cpu_count()} CPUs")
    timeout_s = 100.0 if args.quick else 300.0
    asr_models = {engine: [m.strip() for m in ids.split(",") if m.strip()]
                  for engine, ids in (("whisper", args.asr_model), ("vosk", args.vosk_model))}
    runs: list[tuple[str, str, dict[str, Any] | None]] = []  # (row, engine, asr options)
    for engine in engines:
        if engine not in asr_models:
            runs.append((engine, engine, None))
            continue
        # The decode options (--final-beam, --prompt, ...) are Whisper's.
        options = asr_options if engine == "whisper" else {}
        for model in asr_models[engine]:
            if engine == "whisper" and asr_models[engine] == [DEFAULT_WHISPER]:
                runs.append((engine, engine, options))  # the plain row of earlier runs
            else:
                runs.append((f"{engine}:{model}", engine, {**options, "model": model}))
    results: dict[str, dict[str, Any]] = {}
    for row, engine, options in runs:
        engine_started = time.monotonic()
        results[row] = run_worker(engine, str(testset.root.parent), args.quick,
                                  args.threads, timeout_s, options)
        results[row]["wall_s"] = time.monotonic() - engine_started
        print(f"  {row}: {results[row]['wall_s']:.1f} s", file=sys.stderr)
    print_tables(results)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
