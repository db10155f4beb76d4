#!/usr/bin/env python3
"""The LLM beside another busy process: fixed threads against threads that follow the load.

Runs tools/bench_dialog.py's 6-turn dental call three times in one process: on the idle box
(adaptive), then with one busy-looping process beside it, once with the configured threads
held (`adapt_threads: false`) and once adaptive (the default). Prints per setup the start-up
prompt's evaluation rate, the warm turns' first token (median) and decode rate (median), and
the loaded runs' ratio. The busy process stops by itself after `--busy-max-s`.

    .venv/bin/python tools/bench_llm_threads.py [--model ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentd.dialog.llm_llama import LlamaBackend  # noqa: E402
from agentd.dialog.schema import turn_schema  # noqa: E402
from agentd.dialog.types import ChatMessage  # noqa: E402
from tools.bench_dialog import SCRIPT, SYSTEM_PROMPT, TARGETS, TOOLS, model_path  # noqa: E402

BUSY_LOOP = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


@contextmanager
def busy_process(enabled: bool, max_s: float) -> Iterator[None]:
    """One process spinning on a core (as a backup job or a second service would)."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(s=max_s)])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_call(path: Path, threads: int, adapt: bool) -> dict[str, float]:
    llm = LlamaBackend(path, n_ctx=4096, threads=threads, adapt_threads=adapt)
    try:
        schema = turn_schema(TOOLS, TARGETS)
        messages = [ChatMessage("system", SYSTEM_PROMPT)]
        # The start-up prompt (as DialogEngine.warm_cache evaluates it), padded to the dental
        # example's size so the rate is read over a long evaluation.
        padding = ChatMessage("user", (SYSTEM_PROMPT + "\n") * 3)
        started = time.perf_counter()
        llm.prefill([*messages, padding])
        prompt_tokens = len(llm.tokenize(llm.render([*messages, padding])))
        prefill_rate = prompt_tokens / (time.perf_counter() - started)
        first: list[float] = []
        rates: list[float] = []
        for turn, (line, tool_result) in enumerate(SCRIPT):
            messages.append(ChatMessage("user", line))
            text, stats = llm.generate(messages, schema, max_tokens=120)
            if turn:
                first.append(stats.first_token_ms)
            decode_s = (stats.total_ms - stats.first_token_ms) / 1000
            if stats.completion_tokens > 1 and decode_s > 0:
                rates.append((stats.completion_tokens - 1) / decode_s)
            messages.append(ChatMessage("assistant", text))
            if tool_result:
                messages.append(ChatMessage("user", tool_result))
        return {"prefill": prefill_rate, "first": statistics.median(first),
                "decode": statistics.median(rates), "threads_end": llm.threads_now}
    finally:
        llm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy-max-s", type=float, default=300.0,
                        help="the busy process stops by itself after this long")
    args = parser.parse_args()
    path = model_path(args.model)
    print(f"model {path.name}, {args.threads} threads configured")
    print(f"{'setup':<34} {'prompt tok/s':>12} {'warm first token ms':>20} "
          f"{'decode tok/s':>12} {'threads at end':>14}")
    results = {}
    for name, busy, adapt in (("idle, adaptive", False, True),
                              ("one busy process, fixed threads", True, False),
                              ("one busy process, adaptive", True, True)):
        with busy_process(busy, args.busy_max_s):
            row = run_call(path, args.threads, adapt)
        results[name] = row
        print(f"{name:<34} {row['prefill']:>12.0f} {row['first']:>20.0f} "
              f"{row['decode']:>12.1f} {row['threads_end']:>14.0f}", flush=True)
    fixed = results["one busy process, fixed threads"]
    adaptive = results["one busy process, adaptive"]
    print(f"with a busy process, adaptive vs fixed: "
          f"prompt {adaptive['prefill'] / fixed['prefill']:.2f}x, "
          f"first token {fixed['first'] / adaptive['first']:.2f}x faster, "
          f"decode {adaptive['decode'] / fixed['decode']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
