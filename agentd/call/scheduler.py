"""Work shared by every call: LLM turns one at a time, TTS clauses round-robin across calls.

On a 2-core box two LLM decodes at once are each slower than one after the other, so
`LlmGate` admits one generation at a time, first come first served; a `prefill` (speculative
work while a caller still talks) runs only when the model is idle and is skipped otherwise.
`ScheduledLlm` wraps a backend so every `DialogSession` of the shared engine goes through
the gate without knowing it.

TTS runs on `workers` threads fed by a `RoundRobin` queue keyed by call: each pick takes the
next clause of the next call that has one, so a long reply to one caller cannot starve
another. Clauses of one call are never synthesised at the same time (their audio must stay
in order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from agentd.signature import accepts_keyword
from agentd.speech.interfaces import CancelToken, TtsEngine

log = logging.getLogger("agentd.call")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# ---- LLM -------------------------------------------------------------------------------------


@dataclass
class GateStats:
    generations: int = 0
    prefills: int = 0
    prefills_skipped: int = 0
    waits_ms: list[float] = field(default_factory=list)  # per generation (last 1000)


class LlmGate:
    """A fair (FIFO) lock for model work across calls. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._busy = False
        self._abandoned: set[int] = set()  # tickets whose waiters timed out
        self.stats = GateStats()

    def acquire(self, timeout: float | None = None,
                cancelled: Callable[[], bool] | None = None) -> bool:
        """Wait for our turn; False after `timeout` or once `cancelled()` is true (checked
        every 50 ms), and then our place in the queue is given up."""
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            while not (self._serving == ticket and not self._busy):
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0 or (cancelled is not None and cancelled()):
                    self._abandon(ticket)
                    return False
                self._lock.wait(left)
            self._busy = True
        waited = (time.perf_counter() - started) * 1000.0
        self.stats.waits_ms.append(waited)
        del self.stats.waits_ms[:-1000]
        return True

    def try_acquire(self) -> bool:
        """The gate only if nobody holds or waits for it (for optional work)."""
        with self._lock:
            if self._busy or self._serving != self._next_ticket:
                return False
            self._next_ticket += 1
            self._busy = True
            return True

    @property
    def has_waiters(self) -> bool:
        """Someone waits for the gate (optional work holding it should stop soon)."""
        with self._lock:
            return self._next_ticket - self._serving > (1 if self._busy else 0)

    def release(self) -> None:
        with self._lock:
            self._busy = False
            self._serving += 1
            self._skip_abandoned()
            self._lock.notify_all()

    def _abandon(self, ticket: int) -> None:
        self._abandoned.add(ticket)
        self._skip_abandoned()
        self._lock.notify_all()

    def _skip_abandoned(self) -> None:
        while not self._busy and self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1


class ScheduledLlm:
    """An `LlmBackend` whose generate/prefill pass through an `LlmGate`; all else delegates."""

    def __init__(self, backend: Any, gate: LlmGate | None = None) -> None:
        self.backend = backend
        self.gate = gate or LlmGate()
        self.name = getattr(backend, "name", "llm")
        prefill = getattr(backend, "prefill", None)
        self._prefill_stops = accepts_keyword(prefill, "stop")
        self._prefill_schema = accepts_keyword(prefill, "schema")

    def generate(self, messages: Any, schema: Any, **kwargs: Any) -> Any:
        cancel = kwargs.get("cancel")
        if not self.gate.acquire(cancelled=(lambda: cancel.cancelled) if cancel else None):
            raise RuntimeError("cancelled while waiting for the model")
        try:
            self.gate.stats.generations += 1
            return self.backend.generate(messages, schema, **kwargs)
        finally:
            self.gate.release()

    def prefill(self, messages: Any, *, schema: Any = None,
                stop: Callable[[], bool] | None = None) -> None:
        """The backend's prefill when the model is idle (skipped otherwise); `schema` (the
        whole prompt a generate will use) only reaches backends that take it; it stops at
        the backend's next step once a generate waits or `stop()` is true."""
        if not self.gate.try_acquire():
            self.gate.stats.prefills_skipped += 1
            return
        try:
            self.gate.stats.prefills += 1
            kwargs: dict[str, Any] = {}
            if self._prefill_stops:
                # A generate waits on the gate, not on the backend's own lock, so the
                # backend cannot see it: tell the prefill to stop for it.
                kwargs["stop"] = lambda: self.gate.has_waiters or (stop is not None and stop())
            if schema is not None and self._prefill_schema:
                kwargs["schema"] = schema
            self.backend.prefill(messages, **kwargs)
        finally:
            self.gate.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


# ---- TTS -------------------------------------------------------------------------------------


class RoundRobin(Generic[K, T]):
    """Per-key FIFO queues served in turn (not thread-safe; the scheduler locks it)."""

    def __init__(self) -> None:
        self._queues: OrderedDict[K, deque[T]] = OrderedDict()

    def push(self, key: K, item: T) -> None:
        self._queues.setdefault(key, deque()).append(item)

    def pop(self, skip: set[K] | frozenset[K] = frozenset()) -> tuple[K, T] | None:
        """The next item of the first key not in `skip`; that key goes to the back."""
        for key in list(self._queues):
            if key in skip:
                continue
            queue = self._queues.pop(key)
            item = queue.popleft()
            if queue:
                self._queues[key] = queue  # re-inserted last: others go first
            return key, item
        return None

    def drop(self, key: K) -> list[T]:
        return list(self._queues.pop(key, ()))

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())


@dataclass
class TtsJob:
    """One clause for one call. Callbacks run on a scheduler thread."""

    call: str
    text: str
    cancel: CancelToken
    on_chunk: Callable[[np.ndarray], None]
    on_done: Callable[[BaseException | None], None]


@dataclass
class TtsStats:
    clauses: int = 0
    cancelled: int = 0
    failed: int = 0
    first_chunk_ms: list[float] = field(default_factory=list)  # last 1000


Synthesize = Callable[[str, CancelToken], Iterator[np.ndarray]]


class TtsScheduler:
    """Synthesises queued clauses on worker threads, round-robin across calls."""

    def __init__(self, engine: TtsEngine | None = None, *, workers: int = 1,
                 synthesize: Synthesize | None = None) -> None:
        if synthesize is None:
            if engine is None:
                raise ValueError("give a TTS engine or a synthesize function")
            synthesize = engine.synthesize
        self._synthesize = synthesize
        self._queue: RoundRobin[str, TtsJob] = RoundRobin()
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = TtsStats()
        self._threads = [threading.Thread(target=self._work, name=f"tts-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, job: TtsJob) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("TTS scheduler is closed")
            self._queue.push(job.call, job)
            self._cond.notify()

    def cancel_call(self, call: str) -> None:
        """Drop the call's queued clauses (their on_done gets None); the running one stops at
        its next chunk through its own cancel token."""
        with self._cond:
            dropped = self._queue.drop(call)
        for job in dropped:
            job.cancel.cancel()
            self.stats.cancelled += 1
            _safe(job.on_done, None)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            left = []
            while (picked := self._queue.pop()) is not None:
                left.append(picked[1])
            self._cond.notify_all()
        for job in left:
            job.cancel.cancel()
            _safe(job.on_done, None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = self._queue.pop(skip=self._busy)
                while picked is None and not self._closed:
                    self._cond.wait()
                    picked = self._queue.pop(skip=self._busy)
                if picked is None:
                    return
                call, job = picked
                self._busy.add(call)
            error: BaseException | None = None
            try:
                self._run(job)
            except Exception as exc:  # an engine failure ends this clause, not the worker
                error = exc
                self.stats.failed += 1
                log.warning("call %s: TTS failed on %r: %s", job.call, job.text[:40], exc)
            finally:
                with self._cond:
                    self._busy.discard(call)
                    self._cond.notify_all()
            _safe(job.on_done, error)

    def _run(self, job: TtsJob) -> None:
        if job.cancel.cancelled:
            self.stats.cancelled += 1
            return
        started = time.perf_counter()
        first = True
        for chunk in self._synthesize(job.text, job.cancel):
            if job.cancel.cancelled:
                break
            if first:
                first = False
                self.stats.first_chunk_ms.append((time.perf_counter() - started) * 1000.0)
                del self.stats.first_chunk_ms[:-1000]
            job.on_chunk(np.asarray(chunk, dtype=np.int16).reshape(-1))
        self.stats.clauses += 1


def _safe(callback: Callable[[BaseException | None], None], error: BaseException | None) -> None:
    try:
        callback(error)
    except Exception:
        log.exception("TTS completion callback failed")
