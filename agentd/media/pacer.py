"""Drift-free frame clock: tick n is due at start + n * interval on a monotonic clock.

`Pacer` is the sans-IO core: given `now`, which ticks are due. Sleeping a fixed 20 ms per
loop accumulates every wake-up delay; computing each deadline from the start does not. If
the caller falls behind, at most `max_burst` overdue ticks are delivered at once and the
older ones are reported as skipped, so a stall never turns into a burst of packets.

`ticks()` is a small async generator over `loop.time()`; `MediaClock` is one shared ticker
that calls many subscribers (one per RTP session) per tick, so a process with hundreds of
calls runs one timer instead of hundreds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = ["Tick", "Pacer", "ticks", "MediaClock"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    """One delivered tick: its index, when it was due, and ticks skipped just before it."""

    index: int
    due: float
    skipped: int = 0


class Pacer:
    """Which ticks of a fixed-interval clock are due at a given time."""

    def __init__(self, start: float, interval: float = 0.02, max_burst: int = 3) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_burst < 1:
            raise ValueError("max_burst must be at least 1")
        self.start = start
        self.interval = interval
        self.max_burst = max_burst
        self.next_index = 0
        self.skipped = 0  # total ticks skipped since start

    def deadline(self) -> float:
        """When the next undelivered tick is due."""
        return self.start + self.next_index * self.interval

    def due(self, now: float) -> list[Tick]:
        """Ticks due at `now` (possibly none), oldest first, at most `max_burst` of them."""
        elapsed = now - self.start
        if elapsed < 0:
            return []
        # Tick n is due when start + n*interval <= now; the tiny epsilon absorbs float error.
        last_due = math.floor(elapsed / self.interval + 1e-9)
        count = last_due - self.next_index + 1
        if count <= 0:
            return []
        skipped = max(0, count - self.max_burst)
        first = self.next_index + skipped
        self.skipped += skipped
        self.next_index = last_due + 1
        return [
            Tick(i, self.start + i * self.interval, skipped if i == first else 0)
            for i in range(first, last_due + 1)
        ]


async def ticks(
    interval: float = 0.02, *, max_burst: int = 3, start: float | None = None
) -> AsyncIterator[Tick]:
    """Yield ticks of a drift-free clock on the running loop's monotonic time, for ever."""
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop.time() if start is None else start, interval, max_burst)
    while True:
        delay = pacer.deadline() - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for tick in pacer.due(loop.time()):
            yield tick


class MediaClock:
    """One shared 20 ms ticker calling every subscriber on each tick.

    Subscribers are plain callables taking the `Tick` and the loop time; they must be quick
    and must not block. On each tick all phase-0 subscribers run, then all phase-1 ones and
    so on: sessions send in phase 0, so every packet leaves before any receive-side work.
    The ticker task runs only while there are subscribers; an exception in one subscriber
    is logged and does not affect the others.

    The event loop's timers wake up to ~1 ms late (epoll has millisecond timeouts). With
    `spin` > 0 the clock sleeps until `spin` seconds before each tick and busy-waits the
    rest, for sub-millisecond ticks at a cost of up to `spin` of CPU per tick for the whole
    process: worth it for a clock shared by many sessions, not for one clock per session.
    """

    def __init__(self, interval: float = 0.02, max_burst: int = 3, spin: float = 0.0) -> None:
        if not 0.0 <= spin < interval:
            raise ValueError("spin must be in [0, interval)")
        self.interval = interval
        self.max_burst = max_burst
        self.spin = spin
        self._phases: dict[int, dict[int, Callable[[Tick, float], None]]] = {}
        self._next_key = 0
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0

    def subscribe(self, callback: Callable[[Tick, float], None], phase: int = 0) -> int:
        """Start calling `callback` every tick in `phase`; returns a key for `unsubscribe`."""
        key = self._next_key
        self._next_key += 1
        self._phases.setdefault(phase, {})[key] = callback
        self._phases = dict(sorted(self._phases.items()))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")
        return key

    def unsubscribe(self, key: int) -> None:
        """Stop calling the subscriber; the ticker stops when none are left."""
        for callbacks in self._phases.values():
            callbacks.pop(key, None)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def subscribers(self) -> int:
        return sum(len(callbacks) for callbacks in self._phases.values())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pacer = Pacer(loop.time(), self.interval, self.max_burst)
        while True:
            deadline = pacer.deadline()
            delay = deadline - loop.time() - self.spin
            if delay > 0:
                await asyncio.sleep(delay)
            if self.spin:
                # Bounded busy-wait: the sleep above ended at most ~spin before the deadline.
                limit = loop.time() + self.spin
                while (now := loop.time()) < deadline and now < limit:
                    pass
            for tick in pacer.due(loop.time()):
                self.skipped += tick.skipped
                now = loop.time()
                # Copy: a subscriber may unsubscribe (close its session) during the tick.
                for callbacks in list(self._phases.values()):
                    for callback in list(callbacks.values()):
                        try:
                            callback(tick, now)
                        except Exception:  # one broken session must not stop the others
                            _log.exception("media clock subscriber failed")
            if not self.subscribers:
                return
