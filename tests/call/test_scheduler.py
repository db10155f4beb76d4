"""LLM gate (one generation at a time, FIFO, prefill only when idle) and TTS round-robin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from agentd.call.scheduler import LlmGate, RoundRobin, ScheduledLlm, TtsJob, TtsScheduler
from agentd.dialog.types import Cancel
from agentd.speech.interfaces import CancelToken

pytestmark = pytest.mark.timeout(20)


def test_round_robin_alternates_between_keys_and_keeps_each_keys_order() -> None:
    rr: RoundRobin[str, str] = RoundRobin()
    for i in range(4):
        rr.push("long", f"L{i}")
    rr.push("short", "S0")
    rr.push("short", "S1")
    order = []
    while (picked := rr.pop()) is not None:
        order.append(picked[1])
    assert order == ["L0", "S0", "L1", "S1", "L2", "L3"]


def test_round_robin_skips_busy_keys_and_drops() -> None:
    rr: RoundRobin[str, int] = RoundRobin()
    rr.push("a", 1)
    rr.push("b", 2)
    rr.push("a", 3)
    assert rr.pop(skip={"a"}) == ("b", 2)
    assert rr.drop("a") == [1, 3] and len(rr) == 0 and rr.pop() is None


class Recorder:
    def __init__(self, delay: float = 0.01) -> None:
        self.order: list[str] = []
        self.active: set[str] = set()
        self.overlap_same_call = False
        self.lock = threading.Lock()
        self.delay = delay

    def synthesize(self, text: str, cancel: CancelToken) -> Iterator[np.ndarray]:
        call = text.split(":")[0]
        with self.lock:
            if call in self.active:
                self.overlap_same_call = True
            self.active.add(call)
            self.order.append(text)
        try:
            for _ in range(3):
                if cancel.cancelled:
                    return
                time.sleep(self.delay)
                yield np.ones(80, dtype=np.int16)
        finally:
            with self.lock:
                self.active.discard(call)


def submit(tts: TtsScheduler, call: str, text: str, done: threading.Semaphore,
           token: CancelToken | None = None, chunks: list[int] | None = None) -> None:
    tts.submit(TtsJob(call, f"{call}:{text}", token or CancelToken(),
                      lambda pcm: chunks.append(pcm.size) if chunks is not None else None,
                      lambda error: done.release()))


def test_tts_is_fair_across_calls() -> None:
    rec = Recorder()
    tts = TtsScheduler(synthesize=rec.synthesize, workers=1)
    done = threading.Semaphore(0)
    try:
        gate = threading.Event()
        tts.submit(TtsJob("x", "x:block", CancelToken(), lambda pcm: gate.wait(5),
                          lambda e: done.release()))
        for i in range(4):
            submit(tts, "a", str(i), done)
        submit(tts, "b", "0", done)
        submit(tts, "b", "1", done)
        gate.set()
        for _ in range(7):
            assert done.acquire(timeout=5)
    finally:
        tts.close()
    assert rec.order[1:] == ["a:0", "b:0", "a:1", "b:1", "a:2", "a:3"]
    assert tts.stats.clauses == 7


def test_tts_never_runs_two_clauses_of_one_call_at_once() -> None:
    rec = Recorder(delay=0.005)
    tts = TtsScheduler(synthesize=rec.synthesize, workers=3)
    done = threading.Semaphore(0)
    try:
        for i in range(6):
            submit(tts, "a", str(i), done)
            submit(tts, "b", str(i), done)
        for _ in range(12):
            assert done.acquire(timeout=5)
    finally:
        tts.close()
    assert not rec.overlap_same_call
    assert [t for t in rec.order if t.startswith("a")] == [f"a:{i}" for i in range(6)]


def test_cancel_call_drops_queued_clauses_and_stops_the_running_one() -> None:
    rec = Recorder(delay=0.05)
    tts = TtsScheduler(synthesize=rec.synthesize, workers=1)
    done = threading.Semaphore(0)
    token = CancelToken()
    chunks: list[int] = []
    try:
        for i in range(5):
            submit(tts, "a", str(i), done, token, chunks)
        time.sleep(0.03)
        token.cancel()
        tts.cancel_call("a")
        for _ in range(5):
            assert done.acquire(timeout=5)  # every job reports done, even dropped ones
    finally:
        tts.close()
    assert rec.order == ["a:0"] and len(chunks) <= 2


def test_tts_engine_failure_ends_the_clause_not_the_worker() -> None:
    def broken(text: str, cancel: CancelToken) -> Iterator[np.ndarray]:
        if text == "a:bad":
            raise RuntimeError("boom")
        yield np.zeros(10, dtype=np.int16)

    tts = TtsScheduler(synthesize=broken)
    errors: list[BaseException | None] = []
    done = threading.Semaphore(0)
    try:
        for text in ("a:bad", "a:good"):
            tts.submit(TtsJob("a", text, CancelToken(), lambda pcm: None,
                              lambda e: (errors.append(e), done.release())))
        assert done.acquire(timeout=5) and done.acquire(timeout=5)
    finally:
        tts.close()
    assert isinstance(errors[0], RuntimeError) and errors[1] is None


class SlowLlm:
    name = "slow"

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.order: list[str] = []
        self.prefilled = 0
        self.lock = threading.Lock()

    def generate(self, messages: list[str], schema: object, **kwargs: object) -> str:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.order.append(messages[0])
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return "{}"

    def prefill(self, messages: list[str]) -> None:
        self.prefilled += 1

    def fit(self) -> str:
        return "delegated"


def test_generations_run_one_at_a_time_in_arrival_order() -> None:
    backend = SlowLlm()
    llm = ScheduledLlm(backend)
    threads = []
    for i in range(4):
        thread = threading.Thread(target=llm.generate, args=([f"call{i}"], {}))
        threads.append(thread)
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(5)
    assert backend.max_running == 1
    assert backend.order == [f"call{i}" for i in range(4)]
    assert llm.gate.stats.generations == 4 and llm.fit() == "delegated"


def test_prefill_only_when_the_model_is_idle() -> None:
    backend = SlowLlm()
    llm = ScheduledLlm(backend)
    llm.prefill(["a"])
    assert backend.prefilled == 1
    worker = threading.Thread(target=llm.generate, args=(["b"], {}))
    worker.start()
    time.sleep(0.01)
    llm.prefill(["c"])
    worker.join(5)
    assert backend.prefilled == 1 and llm.gate.stats.prefills_skipped == 1


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    gate = LlmGate()
    assert gate.acquire()
    cancel = Cancel()
    llm = ScheduledLlm(SlowLlm(), gate)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            llm.generate(["x"], {}, cancel=cancel)
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=wait)
    worker.start()
    time.sleep(0.05)
    cancel.cancel()
    worker.join(5)
    assert errors and not worker.is_alive()
    gate.release()
    assert gate.acquire(timeout=1.0)  # the abandoned ticket does not block the next one
    gate.release()
