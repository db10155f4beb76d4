#!/usr/bin/env python3
"""Response latency of the live agent, measured on the wire (issue 6 part 3).

Starts Kamailio on loopback and agentd (extension 2001) answering with the dental example,
then places real SIP calls with the scripted caller (tests/harness/caller.py): each caller
turn is an espeak-ng utterance sent as real-time G.711 RTP; the agent's RTP packets are
timed on arrival.

  first sound    = first voiced agent packet after the caller's last voiced packet
                   (a cached filler counts)
  first content  = first sound + the gap the call loop recorded between its first audio and
                   its first non-filler audio for that turn (records store, `response_ms` and
                   `first_content_ms`: the loop knows which audio was a filler; on the wire
                   both are paced in real time, so the gap is the same)
  barge-in stop  = caller's first voiced packet -> the last voiced agent packet before
                   100 ms of silence. The caller starts talking only while the agent is
                   surely speaking (>= 1 s after the reply's first voiced packet, and a voiced
                   agent packet in the last 40 ms); a barge-in that found the agent silent is
                   not a stop time and is counted apart ("missed").
  breakdown      = the call loop's own per-turn record (p50, ms from the caller's speech
                   end on the loop clock): end of turn, final transcript, the model's first
                   clause, its first audio, content handed to RTP, first audio, content

Runs each concurrency level (calls at once) with --turns caller turns in all, every
--barge-every'th turn a barge-in; prints a table, writes a PNG histogram. Bounded: every
wait has a timeout and the whole run stops after --max-minutes.

    .venv/bin/python tools/bench_latency.py                       # 1.5B, 30 turns, 1,2,4
    .venv/bin/python tools/bench_latency.py --model 0.5b --turns 12 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.rig import (  # noqa: E402
    DEFAULT_MODEL,
    FAST_MODEL,
    AgentRig,
    caller_speech,
    missing_requirements,
)
from tests.harness.caller import ScriptedCaller  # noqa: E402

MODELS = {"1.5b": DEFAULT_MODEL, "0.5b": FAST_MODEL}
QUESTIONS = (
    "What are your opening hours?",
    "Where are you, and is there parking nearby?",
    "Do you take new patients?",
    "How much notice do I need to give to cancel?",
    "Are you open on Saturday morning?",
)
BARGE_IN = "Sorry, wait a moment."
LONG_QUESTION = "Where are you, and is there parking nearby?"  # a reply of several seconds
BREAKDOWN = ("eos_detect_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_chunk_ms",
             "first_rtp_ms", "response_ms", "first_content_ms")
TURNS_PER_CALL = 5


@dataclass
class Sample:
    concurrency: int
    first_sound_ms: float | None = None
    first_content_ms: float | None = None
    loop_first_audio_ms: float | None = None
    loop_first_content_ms: float | None = None
    breakdown: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Results:
    turns: list[Sample] = field(default_factory=list)
    barge_ins: list[tuple[int, float]] = field(default_factory=list)  # (concurrency, ms)
    barge_missed: list[int] = field(default_factory=list)  # concurrency of each miss
    failures: list[str] = field(default_factory=list)


async def one_call(rig: AgentRig, concurrency: int, turns: int, barge_every: int,
                   results: Results, deadline: float) -> None:
    caller = ScriptedCaller(rig.pbx_address)
    measured: list[tuple[int, Sample]] = []  # (agent turn index, sample)
    try:
        t0 = time.monotonic()
        await caller.dial()
        if await caller.wait_quiet(t0, quiet_s=1.0, timeout=30) is None:
            raise RuntimeError("no greeting")
        ref = rig.call_ref(caller.call_id or "")
        if ref is None:
            raise RuntimeError("agentd did not log the call")
        for turn in range(1, turns + 1):
            if time.monotonic() > deadline:
                break
            barge_turn = bool(barge_every and turn % barge_every == 0)
            text = LONG_QUESTION if barge_turn else QUESTIONS[(turn - 1) % len(QUESTIONS)]
            said = await caller.say(caller_speech(text, tail_s=0.1))
            first = await caller.wait_voice(said.last_voiced, timeout=20)
            sample = Sample(concurrency)
            if first is None:
                results.failures.append(f"call {ref} turn {turn}: no reply")
                continue
            sample.first_sound_ms = (first.time - said.last_voiced) * 1000
            measured.append((turn, sample))
            if barge_turn:
                # Talk over the reply once it has played ~1 s, at a moment it is speaking.
                await asyncio.sleep(1.0)
                if not await speaking_now(caller, timeout=8.0):
                    results.barge_missed.append(concurrency)
                else:
                    barge = await caller.say(caller_speech(BARGE_IN, tail_s=0.0))
                    stop = agent_stop(caller, barge.first_voiced)
                    if stop is None:
                        results.barge_missed.append(concurrency)
                    else:
                        results.barge_ins.append((concurrency, stop * 1000))
                    # The barge-in itself is a caller turn: let the agent answer it.
                    await asyncio.to_thread(rig.wait_turn_logged, ref, turn, 30)
                    await caller.wait_quiet(barge.last_voiced, quiet_s=1.5, timeout=30)
                await caller.hangup()
                break
            await asyncio.to_thread(rig.wait_turn_logged, ref, turn, 40)
            await caller.wait_quiet(said.last_voiced, quiet_s=0.6, timeout=30)
        if not caller.ended.is_set():
            await caller.hangup()
        await asyncio.to_thread(rig.wait_call_finished, ref, 10)
        row = rig.call_row(caller.call_id or "")
        agent_turns = {t["index"]: t for t in (row.turns if row else []) if t["speaker"] == "agent"}
        for turn, sample in measured:
            record = agent_turns.get(2 * turn + 1)
            if record and record["response_ms"] is not None:
                sample.loop_first_audio_ms = record["response_ms"]
                sample.loop_first_content_ms = record["first_content_ms"]
                sample.breakdown = {name: record.get(name) for name in BREAKDOWN}
                if record["first_content_ms"] is not None and sample.first_sound_ms is not None:
                    sample.first_content_ms = sample.first_sound_ms + (
                        record["first_content_ms"] - record["response_ms"])
            results.turns.append(sample)
    except Exception as exc:  # one failed call must not stop the bench
        results.failures.append(f"call at concurrency {concurrency}: {exc!r}")
    finally:
        await caller.close()


async def speaking_now(caller: ScriptedCaller, timeout: float) -> bool:
    """Wait (bounded) until the agent's latest packet is voiced and recent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not caller.ended.is_set():
        heard = caller.heard[-2:]
        if heard and all(p.voiced for p in heard) and time.monotonic() - heard[-1].time < 0.04:
            return True
        await asyncio.sleep(0.005)
    return False


def agent_stop(caller: ScriptedCaller, barge_at: float, quiet_s: float = 0.1) -> float | None:
    """Seconds from `barge_at` to the agent's last voiced packet before `quiet_s` of
    unvoiced packets; None when the agent was not speaking at `barge_at`."""
    packets = [p for p in caller.heard if p.time > barge_at - 0.06]
    if not packets or not any(p.voiced for p in packets if p.time <= barge_at + 0.02):
        return None
    last = barge_at
    for packet in packets:
        if packet.time <= barge_at:
            continue
        if packet.voiced:
            if packet.time - last >= quiet_s:
                break  # silence long enough before this: the agent had stopped
            last = packet.time
        elif packet.time - last >= quiet_s:
            break
    return max(0.0, last - barge_at)


async def run_level(rig: AgentRig, concurrency: int, turns: int, barge_every: int,
                    results: Results, deadline: float) -> None:
    done = 0
    while done < turns and time.monotonic() < deadline:
        batch = min(concurrency, max(1, -(-(turns - done) // TURNS_PER_CALL)))
        per_call = min(TURNS_PER_CALL, max(1, (turns - done) // batch))
        tasks = [one_call(rig, concurrency, per_call, barge_every, results, deadline)
                 for _ in range(concurrency)]
        # Stagger starts so greetings do not all end on the same frame.
        started = [asyncio.ensure_future(_later(i * 0.7, t)) for i, t in enumerate(tasks)]
        await asyncio.gather(*started)
        done += per_call * concurrency


async def _later(delay: float, coro: object) -> None:
    await asyncio.sleep(delay)
    await coro  # type: ignore[misc]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def table(results: Results, levels: list[int]) -> str:
    lines = ["calls  turns  first sound p50/p95 ms  first content p50/p95 ms  "
             "(loop: audio / content p50)  barge-in stop p50/max ms (n)"]
    for level in levels:
        samples = [s for s in results.turns if s.concurrency == level]
        sound = [s.first_sound_ms for s in samples if s.first_sound_ms is not None]
        content = [s.first_content_ms for s in samples if s.first_content_ms is not None]
        loop_a = [s.loop_first_audio_ms for s in samples if s.loop_first_audio_ms is not None]
        loop_c = [s.loop_first_content_ms for s in samples
                  if s.loop_first_content_ms is not None]
        barge = [ms for c, ms in results.barge_ins if c == level]
        missed = sum(1 for c in results.barge_missed if c == level)
        lines.append(
            f"{level:>5}  {len(sound):>5}  {percentile(sound, 50):>8.0f} / {percentile(sound, 95):<8.0f}"
            f"      {percentile(content, 50):>8.0f} / {percentile(content, 95):<8.0f}"
            f"      ({percentile(loop_a, 50):.0f} / {percentile(loop_c, 50):.0f})"
            f"          {percentile(barge, 50):.0f} / {max(barge) if barge else float('nan'):.0f}"
            f" ({len(barge)}{f', {missed} missed' if missed else ''})")
    lines.append("loop breakdown p50 ms: " + ", ".join(name.removesuffix("_ms") for name in
                                                        BREAKDOWN))
    for level in levels:
        samples = [s for s in results.turns if s.concurrency == level]
        values = []
        for name in BREAKDOWN:
            got = [s.breakdown[name] for s in samples if s.breakdown.get(name) is not None]
            values.append(f"{percentile(got, 50):.0f}")  # type: ignore[arg-type]
        lines.append(f"{level:>5}  " + " / ".join(values))
    return "\n".join(lines)


def histogram(results: Results, levels: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for level in levels:
        samples = [s for s in results.turns if s.concurrency == level]
        for axis, values in zip(axes, (
                [s.first_sound_ms for s in samples if s.first_sound_ms is not None],
                [s.first_content_ms for s in samples if s.first_content_ms is not None]),
                strict=True):
            if values:
                axis.hist(values, bins=20, alpha=0.5, label=f"{level} call(s)")
    for axis, name, target in zip(axes, ("first sound", "first content"), (800, 1500),
                                  strict=True):
        axis.axvline(target, color="red", linestyle="--", label=f"target {target} ms")
        axis.set_xlabel(f"{name}: caller's last voiced packet -> agent audio (ms)")
        axis.set_ylabel("turns")
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="1.5b")
    parser.add_argument("--turns", type=int, default=30, help="caller turns per level")
    parser.add_argument("--concurrency", default="1,2,4", help="calls at once, e.g. 1,2,4")
    parser.add_argument("--barge-every", type=int, default=5,
                        help="every Nth turn of a call is a barge-in (0: none)")
    parser.add_argument("--png", type=Path, default=Path("bench_latency.png"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--max-minutes", type=float, default=20.0)
    parser.add_argument("--llm-threads", type=int, default=None,
                        help="dialog.llm.threads (default: the example's config)")
    parser.add_argument("--log-level", default="info",
                        help="agentd's log level (debug: per-generation token counts)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    model = MODELS[args.model]
    missing = missing_requirements(model)
    if missing:
        print("cannot run: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-latency-"))
    results = Results()
    deadline = time.monotonic() + args.max_minutes * 60
    threads = args.llm_threads or "the example's"
    print(f"model {model}, {threads} LLM thread(s); work dir {workdir}", flush=True)
    rig = AgentRig(workdir, model=model, max_calls=max(levels),
                   llm_threads=args.llm_threads, log_level=args.log_level).start()
    try:
        for level in levels:
            started = time.monotonic()
            asyncio.run(run_level(rig, level, args.turns, args.barge_every, results, deadline))
            print(f"level {level}: {sum(s.concurrency == level for s in results.turns)} turns "
                  f"in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        rig.stop()
    print(table(results, levels))
    for failure in results.failures:
        print("failure:", failure)
    histogram(results, levels, args.png, f"agentd response latency on the wire ({model})")
    print(f"histogram: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
