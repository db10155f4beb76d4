"""Honest outcomes: a caller who hangs up while the agent is still answering them is
`abandoned`; calls the agent ended, and hang-ups once the agent had answered, are `contained`.
Unit rules, the observer's reading of the loop's summary, and the real call loop (fakes for
the engines and the line) writing to a real store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from agentd.call.events import CallSummary, TurnRecord
from agentd.call.loop import AgentServices, CallLoop, CallLoopConfig
from agentd.call.phrases import PhraseBook
from agentd.call.scheduler import TtsScheduler
from agentd.dialog.types import EndCall, Say
from agentd.records import CallStore
from agentd.records.model import is_farewell, outcome_for
from agentd.records.observer import RecordsObserver, summary_outcome
from agentd.speech.interfaces import VadConfig
from tests.call.fakes import (
    FakeAsr,
    FakeEngine,
    FakeLeg,
    FakeMedia,
    FakeSession,
    FakeTts,
    FakeVad,
    wait_block,
)

# ---- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Bye.", "Okay, thanks, bye!", "Great, thank you very much.", "No, that's all.",
    "That\u2019s it.", "Thanks", "Nothing else, cheers.", "I'll call back later, goodbye.",
])
def test_farewells(text: str) -> None:
    assert is_farewell(text)


@pytest.mark.parametrize("text", [
    "", "Okay.", "No.", "What are your opening hours?", "Thanks, can you book me in?",
    "Is that all you have on Monday?", "Right, and the price?",
])
def test_not_farewells(text: str) -> None:
    assert not is_farewell(text)


def test_outcome_for_left_unanswered_is_abandoned_unless_transferred_or_failed() -> None:
    base = {"answered": True, "caller_turns": 2}
    assert outcome_for(transferred=False, failed=False, **base) == "contained"
    assert outcome_for(transferred=False, failed=False, left_unanswered=True,
                       **base) == "abandoned"
    assert outcome_for(transferred=True, failed=False, left_unanswered=True,
                       **base) == "transferred"
    assert outcome_for(transferred=False, failed=True, left_unanswered=True, **base) == "failed"


# ---- the observer's reading of the summary -------------------------------------------------


def record(index: int, kind: str = "speech", caller: str = "What time do you open?", *,
           outcome: str = "spoken", interrupted: bool = False) -> TurnRecord:
    return TurnRecord("r1", index, kind, caller, None, float(index), None, None,  # type: ignore[arg-type]
                      100.0, 100.0, (), "We open at nine.", "We open", interrupted, (),
                      outcome)


def summary_of(end_reason: str, *records: TurnRecord,
               transferred_to: str | None = None) -> CallSummary:
    greeting = record(0, "greeting", "")
    return CallSummary("r1", "1001", 0.0, 30.0, end_reason, len(records), 0, 0,
                       transferred_to, None, (greeting, *records))


@pytest.mark.parametrize(("end_reason", "last", "outcome"), [
    # the caller hung up while the agent was thinking or speaking its answer
    ("remote hangup", record(1, outcome="hangup"), "abandoned"),
    ("remote hangup", record(1, "dtmf", "1234", outcome="hangup"), "abandoned"),
    ("remote hangup", record(1, "transfer_failed", "", outcome="hangup"), "abandoned"),
    # ... or right after cutting it off, before it could answer again
    ("remote hangup", record(1, outcome="interrupted", interrupted=True), "abandoned"),
    # the caller's words were a goodbye: hanging up over the reply is fine
    ("remote hangup", record(1, caller="Thanks, bye.", outcome="hangup"), "contained"),
    ("remote hangup", record(1, caller="No, that's all, thank you.", outcome="interrupted",
                             interrupted=True), "contained"),
    # the agent had answered and was idle, or only re-prompting
    ("remote hangup", record(1), "contained"),
    ("remote hangup", record(1, "silence", "", outcome="hangup"), "contained"),
    # we ended the call: the agent's goodbye, a shutdown, the call-length limit
    ("agent: goodbye", record(1, outcome="end_call"), "contained"),
    ("shutdown", record(1, outcome="hangup"), "contained"),
    ("max call length", record(1, outcome="hangup"), "contained"),
])
def test_summary_outcome(end_reason: str, last: TurnRecord, outcome: str) -> None:
    assert summary_outcome(summary_of(end_reason, last), caller_turns=1) == outcome


def test_summary_outcome_transfer_and_silent_caller_unchanged() -> None:
    transferred = summary_of("transferred", record(1, outcome="hangup"), transferred_to="desk")
    assert summary_outcome(transferred, caller_turns=1) == "transferred"
    greeting_only = summary_of("remote hangup")
    assert summary_outcome(greeting_only, caller_turns=0) == "abandoned"
    # a summary without turn records (older loops) keeps the old reading
    bare = CallSummary("r1", "1001", 0.0, 9.0, "remote hangup", 1, 0, 0, None, None)
    assert summary_outcome(bare, caller_turns=1) == "contained"


# ---- the real call loop into a real store ----------------------------------------------------

QUESTION, THANKS = 1000, 2000
PHRASES = {QUESTION: "What are your opening hours?", THANKS: "Thanks, bye."}
GREETING_S = 0.4


class LiveCall:
    def __init__(self, session: FakeSession, store: CallStore) -> None:
        self.vad = FakeVad()
        self.media = FakeMedia(self.vad, pace_s=0.004)
        self.leg = FakeLeg(self.media)
        self.tts = TtsScheduler(FakeTts())
        phrases = PhraseBook(None)
        phrases.add(session.greeting_line, np.full(int(GREETING_S * 8000), 700, np.int16))
        config = CallLoopConfig(vad=VadConfig(min_speech_ms=200, end_of_turn_ms=400),
                                filler_after_s=100.0, reprompt_after_s=100.0)
        self.records = RecordsObserver(store)
        self.turns: list[TurnRecord] = []
        services = AgentServices(vad=self.vad, asr=FakeAsr(PHRASES), tts=self.tts,
                                 phrases=phrases, dialog=FakeEngine(session), config=config,
                                 observer=self.records)
        original = self.records.turn_finished

        def seen(turn: TurnRecord) -> None:
            self.turns.append(turn)
            original(turn)

        self.records.turn_finished = seen  # type: ignore[method-assign]
        self.task = asyncio.ensure_future(CallLoop(self.leg, services).run())

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.005)

    async def ask(self, amplitude: int) -> None:
        await self.until(lambda: any(t.kind == "greeting" for t in self.turns))
        self.media.say(amplitude, 0.8)
        self.media.pause(0.5)

    async def end(self) -> None:
        self.leg.remote_hangup()
        await asyncio.wait_for(self.task, 20)
        self.tts.close()


@pytest.mark.timeout(90)
async def test_live_hangup_while_the_agent_answers_is_abandoned(store: CallStore) -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([Say("We are open from nine."), block, Say("Never said.")])
    call = LiveCall(session, store)
    await call.ask(QUESTION)
    await call.until(lambda: bool(session.turns) and call.media.queued_samples > 0)
    await call.end()
    release.set()
    row = store.get("ref1")
    assert row is not None and row.end_reason == "remote hangup"
    assert row.outcome == "abandoned"
    assert call.turns[-1].outcome == "hangup"


@pytest.mark.timeout(90)
async def test_live_hangup_after_the_answer_is_contained(store: CallStore) -> None:
    session = FakeSession()
    session.scripts.append([Say("We are open from nine.")])
    call = LiveCall(session, store)
    await call.ask(QUESTION)
    await call.until(lambda: any(t.kind == "speech" for t in call.turns))
    await call.end()
    row = store.get("ref1")
    assert row is not None and row.outcome == "contained"


@pytest.mark.timeout(90)
async def test_live_hangup_over_the_agents_goodbye_is_contained(store: CallStore) -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([Say("You're welcome, goodbye."), block])
    call = LiveCall(session, store)
    await call.ask(THANKS)
    await call.until(lambda: bool(session.turns) and call.media.queued_samples > 0)
    await call.end()
    release.set()
    row = store.get("ref1")
    assert row is not None and row.outcome == "contained"
    assert call.turns[-1].outcome == "hangup"


@pytest.mark.timeout(90)
async def test_live_agent_ended_call_is_contained(store: CallStore) -> None:
    session = FakeSession()
    session.scripts.append([Say("Goodbye."), EndCall("caller done")])
    call = LiveCall(session, store)
    await call.ask(QUESTION)
    await asyncio.wait_for(call.task, 30)
    call.tts.close()
    row = store.get("ref1")
    assert row is not None and row.end_reason == "agent: caller done"
    assert row.outcome == "contained"
