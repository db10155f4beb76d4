"""Regressions for the LLM path under `agentd run`: a reply cut by max_tokens is still a
reply, the shared prompt prefix is warmed once, and a prefill never holds up a generate."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from agentd.call.scheduler import LlmGate, ScheduledLlm
from agentd.dialog.agent import TROUBLE_LINE, DialogEngine, ScriptedLlm
from agentd.dialog.policy import parse_policy
from agentd.dialog.types import Say

POLICY = """
agent:
  name: Ava
  organisation: Test Dental
  greeting: "Thank you for calling Test Dental."
  goodbye: "Goodbye!"
escalation:
  targets:
    front_desk: "100"
"""


def _said(events: list[Any]) -> str:
    return " ".join(e.text for e in events if isinstance(e, Say))


def test_reply_cut_by_max_tokens_keeps_what_was_said() -> None:
    cut = '{"say":"Sure, I can help you move your appointment to another day'  # no closing
    engine = DialogEngine(parse_policy(POLICY), ScheduledLlm(ScriptedLlm([cut])), {})
    session = engine.new_session()
    session.greeting()
    said = _said(list(session.turn("I need to move my appointment")))
    assert "another day" in said
    assert TROUBLE_LINE not in said
    assert session.stats.llm_failures == 0
    assert session.ended is None and session.transferred_to is None
    assert "another day" in session.history[-1].content


def test_warm_cache_prefills_system_prompt_greeting_and_open_caller_turn() -> None:
    llm = ScriptedLlm()
    engine = DialogEngine(parse_policy(POLICY), ScheduledLlm(llm), {})
    assert engine.warm_cache()
    [messages] = llm.prefilled
    assert [m.role for m in messages] == ["system", "assistant", "user"]
    assert messages[0].content == engine.system_prompt
    assert "Thank you for calling Test Dental." in messages[1].content
    assert messages[2].content == ""


class _SlowPrefill:
    """Prefill that works in small steps until told to stop (bounded at 5 s)."""

    name = "slow"

    def __init__(self) -> None:
        self.prefill_started = threading.Event()
        self.prefill_stopped_after = 0.0

    def prefill(self, messages: Any, *, stop: Any = None) -> None:
        started = time.monotonic()
        self.prefill_started.set()
        while time.monotonic() - started < 5.0 and not (stop and stop()):
            time.sleep(0.01)
        self.prefill_stopped_after = time.monotonic() - started

    def generate(self, messages: Any, schema: Any, **kwargs: Any) -> Any:
        return "{}", None


def test_prefill_stops_when_a_generate_waits_on_the_gate() -> None:
    backend = _SlowPrefill()
    llm = ScheduledLlm(backend)
    prefill = threading.Thread(target=llm.prefill, args=([],), daemon=True)
    prefill.start()
    assert backend.prefill_started.wait(2.0)
    started = time.monotonic()
    llm.generate([], {})
    waited = time.monotonic() - started
    prefill.join(5.0)
    assert waited < 2.5, f"generate waited {waited:.2f} s behind a prefill"
    assert backend.prefill_stopped_after < 2.5


def test_gate_has_waiters() -> None:
    gate = LlmGate()
    assert not gate.has_waiters
    assert gate.acquire()
    assert not gate.has_waiters
    waiter = threading.Thread(target=lambda: (gate.acquire(), gate.release()), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 2.0
    while not gate.has_waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.has_waiters
    gate.release()
    waiter.join(2.0)
    assert not gate.has_waiters


def test_final_prefill_through_the_gate_reaches_the_backend_with_the_schema() -> None:
    llm = ScriptedLlm(['{"say":"Yes.","action":{"type":"none"}}'])
    engine = DialogEngine(parse_policy(POLICY), ScheduledLlm(llm), {})
    session = engine.new_session()
    session.greeting()
    session.prefill("Are you open on")
    session.prefill("Are you open on Saturday?")  # the prepared final: the same prompt
    assert llm.prefill_schemas == [engine.schema, engine.schema]  # a partial too
    list(session.turn("Are you open on Saturday?"))
    assert llm.prefilled[1] == llm.calls[0]


@pytest.mark.parametrize("takes_final", [True, False])
def test_prefiller_runs_the_newest_request_and_keeps_a_waiting_final(takes_final: bool) -> None:
    """The final's priority is the Prefiller's own, also for a prefill that does not take
    `final` (as DialogSession.prefill does not)."""
    from agentd.call.workers import Prefiller

    started = threading.Event()
    release = threading.Event()
    seen: list[tuple[str, bool | None]] = []

    def run(text: str, final: bool | None) -> None:
        seen.append((text, final))
        started.set()
        release.wait(5)

    def with_final(text: str, *, final: bool = False) -> None:
        run(text, final)

    def without_final(text: str) -> None:
        run(text, None)

    worker = Prefiller(with_final if takes_final else without_final, final_kw=takes_final)
    try:
        worker.request("I'd")
        assert started.wait(5)
        worker.request("I'd like")  # replaced by the next one while the first runs
        worker.request("I'd like to book.", final=True)
        worker.request("I'd like to book")  # a partial never replaces a waiting final
        release.set()
        deadline = time.monotonic() + 5
        while worker.done < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        marks = (False, True) if takes_final else (None, None)
        assert seen == [("I'd", marks[0]), ("I'd like to book.", marks[1])]
    finally:
        worker.stop()


def test_prefiller_interrupt_stops_the_running_prefill_and_drops_a_waiting_partial() -> None:
    from agentd.call.workers import Prefiller

    running = threading.Event()
    stopped: list[str] = []
    seen: list[str] = []

    def prefill(text: str, *, final: bool = False, stop: Any = None) -> None:
        seen.append(text)
        running.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if stop():
                stopped.append(text)
                return
            time.sleep(0.005)

    worker = Prefiller(prefill, final_kw=True, stop_kw=True)
    try:
        worker.request("Is Tues")
        assert running.wait(5)
        worker.request("Is Tuesday")  # waiting: dropped by the interrupt
        worker.interrupt()
        deadline = time.monotonic() + 5
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stopped == ["Is Tues"]
        running.clear()
        worker.request("Is Tuesday free?", final=True)  # runs again, not stopped at once
        assert running.wait(5)
        time.sleep(0.05)
        assert seen == ["Is Tues", "Is Tuesday free?"] and stopped == ["Is Tues"]
    finally:
        worker.stop()
