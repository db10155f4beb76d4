"""The LLM's thread count follows other processes' CPU use (agentd/dialog/cpu_share.py):
/proc parsing, the decision with its hysteresis, the governor's sampling window, and a real
llama.cpp context switched between 2 threads and 1."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from agentd.dialog.cpu_share import (
    CpuSample,
    ThreadGovernor,
    others_busy_cores,
    parse_proc_stat,
    parse_process_stat,
    read_sample,
    threads_for,
)
from agentd.dialog.llm_llama import LlamaBackend
from agentd.dialog.schema import parse_reply

from .test_llm_llama import SCHEMA, TARGETS, TOOLS, chat, model_file, smollm_path

PROC_STAT = """cpu  4705 150 1120 16250 520 0 31 7 90 0
cpu0 2352 75 560 8125 260 0 15 3 45 0
cpu1 2353 75 560 8125 260 0 16 4 45 0
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
"""
# The command name may hold spaces and parentheses; utime=1500, stime=230 (fields 14, 15).
PROCESS_STAT = ("4242 (python (agentd) x) S 1 4242 4242 0 -1 4194560 86241 0 12 0 1500 230 "
                "0 0 20 0 9 0 5123 912345678 40000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 "
                "0 17 1 0 0 0 0 0")


def test_proc_stat_gives_total_and_idle_ticks() -> None:
    total, idle = parse_proc_stat(PROC_STAT)
    # user..steal (guest is inside user); idle counts iowait.
    assert total == 4705 + 150 + 1120 + 16250 + 520 + 0 + 31 + 7
    assert idle == 16250 + 520


def test_proc_stat_without_a_cpu_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1 2 3\n")


def test_process_stat_sums_user_and_system_time_past_an_odd_name() -> None:
    assert parse_process_stat(PROCESS_STAT) == 1730


def test_others_busy_is_the_machine_s_busy_time_less_our_own() -> None:
    before = CpuSample(total=1000, idle=600, own=100)
    # 200 ticks elapsed across 2 cores: 40 idle, 160 busy, 60 of them ours -> 100 others'.
    after = CpuSample(total=1200, idle=640, own=160)
    assert others_busy_cores(before, after, cores=2) == pytest.approx(1.0)
    assert others_busy_cores(after, after, cores=2) == 0.0
    # Our own work alone never counts as others' load.
    mine = CpuSample(total=1200, idle=600, own=300)
    assert others_busy_cores(before, mine, cores=2) == 0.0


@pytest.mark.parametrize(("current", "others", "expected"), [
    (2, 0.0, 2),    # idle: all configured threads
    (2, 0.3, 2),    # a little other work: keep both
    (2, 0.7, 1),    # a core taken: give it back
    (2, 1.6, 1),    # both busy: never below 1
    (1, 0.5, 1),    # half a core still taken: stay at 1 (no flapping)
    (1, 0.3, 2),    # the core came free
])
def test_threads_follow_the_free_cores_with_hysteresis(current: int, others: float,
                                                       expected: int) -> None:
    assert threads_for(current, configured=2, cores=2, others_busy=others) == expected


def test_threads_never_exceed_the_configured_count() -> None:
    assert threads_for(2, configured=2, cores=8, others_busy=0.0) == 2
    assert threads_for(4, configured=4, cores=8, others_busy=5.0) == 3


class FakeMachine:
    """Cumulative CPU ticks that the test advances with a given other-process load."""

    def __init__(self, cores: int = 2) -> None:
        self.cores = cores
        self.sample = CpuSample(total=0, idle=0, own=0)
        self.now = 0.0
        self.reads = 0

    def run(self, seconds: float, *, others: float, own: float = 0.0) -> None:
        ticks = int(seconds * 100)
        busy = int(ticks * (others + own))
        self.sample = CpuSample(
            total=self.sample.total + ticks * self.cores,
            idle=self.sample.idle + ticks * self.cores - busy,
            own=self.sample.own + int(ticks * own))
        self.now += seconds

    def read(self) -> CpuSample:
        self.reads += 1
        return self.sample

    def governor(self, configured: int = 2) -> ThreadGovernor:
        return ThreadGovernor(configured, cores=self.cores, read=self.read,
                              clock=lambda: self.now, min_window_s=0.25)


def test_governor_drops_to_one_thread_while_another_process_takes_a_core() -> None:
    machine = FakeMachine()
    governor = machine.governor()
    assert governor.threads() == 2
    machine.run(1.0, others=1.0, own=0.9)
    assert governor.threads() == 1
    assert governor.others_busy == pytest.approx(1.0)
    machine.run(1.0, others=0.0, own=1.0)
    assert governor.threads() == 2


def test_governor_reads_proc_at_most_once_per_window() -> None:
    machine = FakeMachine()
    governor = machine.governor()
    machine.run(0.1, others=1.0)
    reads = machine.reads
    for _ in range(50):  # every llama batch asks: only the clock is read
        assert governor.threads() == 2
    assert machine.reads == reads


def test_governor_with_one_thread_configured_never_samples() -> None:
    machine = FakeMachine()
    governor = machine.governor(configured=1)
    machine.run(1.0, others=0.0)
    assert governor.threads() == 1
    assert machine.reads == 1  # the constructor's


def test_governor_keeps_the_configured_count_when_proc_cannot_be_read() -> None:
    def unreadable() -> CpuSample:
        raise OSError("no /proc here")

    governor = ThreadGovernor(2, cores=2, read=unreadable, clock=lambda: 10.0)
    assert governor.threads() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_real_proc_samples_count_up() -> None:
    first = read_sample()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    second = read_sample()
    assert second.total >= first.total > 0
    assert second.own >= first.own
    assert 0 <= second.idle <= second.total


# ---- a real llama.cpp context ---------------------------------------------------------------


@pytest.fixture(scope="module")
def machine_and_backend() -> Iterator[tuple[FakeMachine, LlamaBackend]]:
    pytest.importorskip("llama_cpp")
    machine = FakeMachine()
    llm = LlamaBackend(model_file(smollm_path()), n_ctx=1024, threads=2,
                       thread_governor=machine.governor())
    yield machine, llm
    llm.close()


def _context_threads(llm: LlamaBackend) -> int:
    import llama_cpp

    return int(llama_cpp.llama_n_threads(llm._llm._ctx.ctx))


def test_backend_switches_the_context_s_threads_with_the_load(
        machine_and_backend: tuple[FakeMachine, LlamaBackend]) -> None:
    machine, llm = machine_and_backend
    llm.generate(chat("Hi, can I book a cleaning on Tuesday?"), SCHEMA)
    assert llm.threads_now == 2 and _context_threads(llm) == 2

    machine.run(2.0, others=1.0, own=1.0)  # another process took a core
    reply, _stats = llm.generate(chat("I need to talk to someone about my bill."), SCHEMA)
    assert parse_reply(reply, TOOLS, TARGETS).say  # it still answers, in the schema
    assert llm.threads_now == 1 and _context_threads(llm) == 1

    machine.run(2.0, others=0.0, own=1.0)  # that process finished
    llm.prefill(chat("Please cancel appointment A123."))
    assert llm.threads_now == 2 and _context_threads(llm) == 2


def test_backend_with_adapt_threads_off_keeps_its_threads() -> None:
    pytest.importorskip("llama_cpp")
    llm = LlamaBackend(model_file(smollm_path()), n_ctx=512, threads=2, adapt_threads=False)
    try:
        assert llm._governor is None and llm.threads_now == 2
    finally:
        llm.close()
