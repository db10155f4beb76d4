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
    and must not block. The ticker task runs only while there are subscribers; an exception
    in one subscriber is logged and does not affect the others.
    """

    def __init__(self, interval: float = 0.02, max_burst: int = 3) -> None:
        self.interval = interval
        self.max_burst = max_burst
        self._subscribers: dict[int, Callable[[Tick, float], None]] = {}
        self._next_key = 0
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0

    def subscribe(self, callback: Callable[[Tick, float], None]) -> int:
        """Start calling `callback` every tick; returns a key for `unsubscribe`."""
        key = self._next_key
        self._next_key += 1
        self._subscribers[key] = callback
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")
        return key

    def unsubscribe(self, key: int) -> None:
        """Stop calling the subscriber; the ticker stops when none are left."""
        self._subscribers.pop(key, None)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _run(self) -> None:
        async for tick in ticks(self.interval, max_burst=self.max_burst):
            self.skipped += tick.skipped
            now = asyncio.get_running_loop().time()
            # Copy: a subscriber may unsubscribe (close its session) during the tick.
            for callback in list(self._subscribers.values()):
                try:
                    callback(tick, now)
                except Exception:  # one broken session must not stop the others
                    _log.exception("media clock subscriber failed")
            if not self._subscribers:
                return
