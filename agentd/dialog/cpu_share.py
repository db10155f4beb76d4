"""How many CPU threads the LLM should use, given what *other* processes are doing.

llama.cpp's CPU threads meet at a barrier after every operation of the graph (hundreds per
token) and spin while they wait. On the 2-core box two threads are the fastest choice while
nothing else runs, but once another process keeps a core busy, a thread the kernel has
descheduled holds the other one spinning at the barrier. Measured on the 2-core box
(Qwen2.5-Coder-1.5B Q4_K_M, one busy-looping process beside it): decode 8.1 tokens/s with 2
threads against 19.0 with 1 (29.7 with 2 when idle); agentd's start-up prompt (1761 tokens)
took 224 s instead of 24 s. Sleeping instead of spinning (OMP_WAIT_POLICY=PASSIVE) costs a
third of the idle speed, so the thread count follows the load instead.

The load is read from /proc: the machine's busy time minus this process's own (agentd's
other calls, ASR and TTS are not "other work": with four calls two LLM threads still
measured faster than one). `ThreadGovernor` samples at most every `min_window_s`, when the
LLM is about to compute; the parsing and the decision are pure functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

# A core counts as taken once other work uses this much of it (and free again below
# 1 - this): the gap keeps the choice from flapping when the load hovers around half a core.
_TAKE_AT = 0.6


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU time in clock ticks: the machine's (every core), and this process's."""

    total: int
    idle: int
    own: int


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(total, idle) ticks from the aggregate `cpu` line of /proc/stat; idle counts iowait.
    Steal time stays in the total as busy: a vCPU the hypervisor took stalls the barrier
    just like a core another process took."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:]]
            if len(ticks) < 4:
                break
            # user nice system idle iowait irq softirq steal guest guest_nice: guest time is
            # already counted in user/nice.
            counted = ticks[:8]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return sum(counted), idle
    raise ValueError("no aggregate cpu line in /proc/stat")


def parse_process_stat(text: str) -> int:
    """utime + stime ticks from /proc/<pid>/stat (all the process's threads)."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    after = text[text.rindex(")") + 2 :].split()
    # after[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(after[11]) + int(after[12])


def read_sample() -> CpuSample:
    """The current machine and process CPU times (Linux /proc)."""
    with open("/proc/stat") as machine, open("/proc/self/stat") as process:
        total, idle = parse_proc_stat(machine.read())
        own = parse_process_stat(process.read())
    return CpuSample(total=total, idle=idle, own=own)


def others_busy_cores(before: CpuSample, after: CpuSample, cores: int) -> float:
    """Cores' worth of CPU that other processes used between two samples."""
    elapsed = after.total - before.total
    if elapsed <= 0:
        return 0.0
    busy = elapsed - (after.idle - before.idle)
    others = busy - (after.own - before.own)
    return max(0.0, others / elapsed * cores)


def threads_for(current: int, configured: int, cores: int, others_busy: float) -> int:
    """Threads to use next: one per core the other work leaves free, at most `configured`,
    at least 1; moving from `current` only past the hysteresis margin."""
    free = cores - others_busy
    if free >= current + _TAKE_AT:  # a whole further core came free
        current = int(free + 1.0 - _TAKE_AT)
    elif free < current - 1.0 + _TAKE_AT:  # the core this thread used is taken
        current = int(free + _TAKE_AT)
    return max(1, min(configured, current))


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadGovernor:
    """The LLM's thread count, re-decided from other processes' CPU use at most every
    `min_window_s` seconds. Where /proc cannot be read it keeps `configured`."""

    def __init__(
        self,
        configured: int,
        *,
        cores: int | None = None,
        read: Callable[[], CpuSample] = read_sample,
        clock: Callable[[], float] = time.monotonic,
        min_window_s: float = 0.25,
    ) -> None:
        self.configured = max(1, configured)
        self.cores = cores if cores is not None else usable_cores()
        self.current = self.configured
        self.others_busy = 0.0  # cores' worth, over the last window
        self._read = read
        self._clock = clock
        self._min_window_s = min_window_s
        self._since = clock()
        self._sample = self._try_read()

    def _try_read(self) -> CpuSample | None:
        try:
            return self._read()
        except (OSError, ValueError, IndexError):
            return None

    def threads(self) -> int:
        """The thread count for the work about to start."""
        if self.configured == 1 or self._sample is None:
            return self.current
        now = self._clock()
        if now - self._since < self._min_window_s:
            return self.current
        sample = self._try_read()
        if sample is None:
            return self.current
        self.others_busy = others_busy_cores(self._sample, sample, self.cores)
        self._sample, self._since = sample, now
        self.current = threads_for(self.current, self.configured, self.cores, self.others_busy)
        return self.current
