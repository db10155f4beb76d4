"""The call loop's decisions with fake engines, a fake leg and a lock-step fake media session
(call-audio time advances one 20 ms frame per tick, a few ms of real time each)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from agentd.call.echo import EchoConfig
from agentd.call.loop import AgentServices, CallLoop, CallLoopConfig
from agentd.call.phrases import PhraseBook
from agentd.call.scheduler import TtsScheduler
from agentd.dialog.types import (
    EndCall,
    HandoffRecord,
    Say,
    ToolCallRecord,
    ToolFinished,
    ToolStarted,
    TransferRequested,
)
from agentd.speech.interfaces import VadConfig
from tests.call.fakes import (
    FakeAsr,
    FakeEngine,
    FakeLeg,
    FakeMedia,
    FakeSession,
    FakeTts,
    FakeVad,
    Observer,
    tts_samples,
    wait_block,
)

pytestmark = pytest.mark.timeout(30)

BOOK = "I'd like to book a cleaning."
UH_HUH = "Uh-huh."
CANCEL = "Actually, I need to cancel instead."
PHRASES = {1000: BOOK, 2000: UH_HUH, 3000: CANCEL}
GREETING_S = 0.5
CLAUSES = ["One two three four.", "Five six seven eight.", "Nine ten eleven twelve."]


class Call:
    def __init__(self, session: FakeSession, *, transfer_ok: bool = True,
                 echo_gain: float = 0.0, **config: object) -> None:
        self.session = session
        self.vad = FakeVad()
        self.media = FakeMedia(self.vad, pace_s=0.004, echo_gain=echo_gain)
        self.leg = FakeLeg(self.media, transfer_ok=transfer_ok)
        self.observer = Observer()
        self.tts_engine = FakeTts()
        self.tts = TtsScheduler(self.tts_engine)
        phrases = PhraseBook(None)
        phrases.add(session.greeting_line, np.full(int(GREETING_S * 8000), 700, np.int16))
        phrases.add("One moment.", np.full(3600, 800, np.int16))
        phrases.add("Let me check that.", np.full(4400, 900, np.int16))
        base = CallLoopConfig(vad=VadConfig(min_speech_ms=200, end_of_turn_ms=400),
                              filler_after_s=100.0, reprompt_after_s=100.0,
                              ack_when_content_after_s=None)
        self.config = replace(base, **config)  # type: ignore[arg-type]
        self.services = AgentServices(
            vad=self.vad, asr=FakeAsr(PHRASES), tts=self.tts, phrases=phrases,
            dialog=FakeEngine(session), config=self.config, observer=self.observer)
        self.loop = CallLoop(self.leg, self.services)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Call:
        self.task = asyncio.ensure_future(self.loop.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.leg.remote_hangup()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)
        self.tts.close()

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, "condition not reached in time"
            assert self.task is None or not self.task.done() or predicate()
            await asyncio.sleep(0.005)

    async def greeted(self) -> None:
        await self.until(lambda: any(r.kind == "greeting" for r in self.observer.turns))

    def speech_records(self) -> list:
        return [r for r in self.observer.turns if r.kind == "speech"]


async def test_greeting_starts_within_one_packet_of_the_call() -> None:
    async with Call(FakeSession()) as call:
        await call.greeted()
        first_tick, size = call.media.sends[0]
        assert first_tick <= 1 and size == int(GREETING_S * 8000)
        record = call.observer.turns[0]
        assert record.first_audio_ms is not None and record.first_audio_ms <= 20.0
        assert record.played_text == "Hello, how can I help?"


async def test_end_of_turn_then_reply_with_latency_record() -> None:
    session = FakeSession()
    session.scripts.append([Say("Sure."), Say("Which day suits you?")])
    async with Call(session) as call:
        await call.greeted()
        call.media.say(1000, 1.0)
        call.media.pause(2.0)
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert session.turns == [(BOOK, False)]
        assert record.caller_text == BOOK and not record.interrupted
        # Fast path: a finished sentence ends the turn ~200 ms into the silence.
        assert record.end_of_turn_ms is not None and 150 <= record.end_of_turn_ms <= 450
        assert record.first_audio_ms is not None and record.first_audio_ms < 1200
        assert record.first_content_ms == record.first_audio_ms  # no filler was needed
        assert record.played_text == "Sure. Which day suits you?"


async def _reply_playing(call: Call, session: FakeSession) -> int:
    """Caller asks; the 3-clause reply plays; returns the tick its audio started."""
    session.scripts.append([Say(text) for text in CLAUSES])
    await call.greeted()
    call.media.say(1000, 0.8)
    await call.until(lambda: len(call.tts_engine.texts) >= 1)
    await call.until(lambda: call.media.played_samples
                     >= int(GREETING_S * 8000) + tts_samples(CLAUSES[0]) + 2400)
    return call.media.tick


async def test_barge_in_flushes_at_once_and_reports_only_what_was_heard() -> None:
    session = FakeSession()
    async with Call(session) as call:
        await _reply_playing(call, session)
        session.scripts.append([Say("Okay, cancelling.")])
        call.media.say(3000, 1.2)
        call.media.pause(2.0)
        await call.until(lambda: bool(session.interruptions))
        stream = call.vad.streams[0]
        confirmed_tick = round(stream.confirmed[-1] / 0.02)
        flush_tick = call.media.flushes[0]
        # Audio stops within 150 ms of the VAD confirming the caller's speech.
        assert (flush_tick - confirmed_tick) * 20 <= 150
        assert all(n == 0 for n in call.media.played_at[flush_tick + 1:flush_tick + 30])
        heard = session.interruptions[0]
        assert heard.startswith(CLAUSES[0] + " Five")
        assert len(heard.split()) < len((CLAUSES[0] + " " + CLAUSES[1]).split())
        await call.until(lambda: len(session.turns) == 2)
        assert session.turns[1] == (CANCEL, False)  # the interruption is answered
        barge = call.observer.barge_ins[0]
        assert not barge.resumed and barge.stop_ms <= 150
        cut = [r for r in call.observer.turns if r.interrupted]
        assert cut and cut[0].played_text == heard


async def test_backchannel_does_not_cut_the_agent_off() -> None:
    session = FakeSession()
    async with Call(session) as call:
        await _reply_playing(call, session)
        call.media.say(2000, 0.3)
        await call.until(lambda: len(call.speech_records()) == 1, timeout=15)
        record = call.speech_records()[0]
        assert not session.interruptions and not record.interrupted
        assert record.played_text == " ".join(CLAUSES)
        assert session.turns == [(BOOK, False)]  # "uh-huh" never became a turn
        assert call.observer.barge_ins and call.observer.barge_ins[0].resumed
        total = sum(tts_samples(c) for c in CLAUSES)
        assert call.media.played_samples >= int(GREETING_S * 8000) + total


async def test_line_echo_of_the_agent_does_not_cut_it_off() -> None:
    session = FakeSession()
    async with Call(session, echo_gain=0.5) as call:  # the line returns the agent 6 dB down
        await _reply_playing(call, session)
        await call.until(lambda: len(call.speech_records()) == 1, timeout=15)
        record = call.speech_records()[0]
        assert not record.interrupted and record.played_text == " ".join(CLAUSES)
        assert not call.media.flushes and not call.observer.barge_ins
        assert session.turns == [(BOOK, False)]  # the echo never became a caller turn


async def test_without_the_echo_guard_the_echo_would_cut_the_agent_off() -> None:
    # The control for the test above: the fake line's echo is loud enough to read as speech.
    session = FakeSession()
    async with Call(session, echo_gain=0.5, echo=EchoConfig(enabled=False)) as call:
        await call.greeted()
        call.media.say(1000, 0.8)
        session.scripts.append([Say(text) for text in CLAUSES])
        await call.until(lambda: bool(call.media.flushes), timeout=15)


async def test_caller_talking_over_the_echo_still_barges_in() -> None:
    session = FakeSession()
    async with Call(session, echo_gain=0.5) as call:
        await _reply_playing(call, session)
        session.scripts.append([Say("Okay, cancelling.")])
        call.media.say(3000, 1.2)
        call.media.pause(2.0)
        await call.until(lambda: bool(session.interruptions))
        await call.until(lambda: len(session.turns) == 2)
        assert session.turns[1] == (CANCEL, False)


async def test_slow_reply_gets_a_filler_instead_of_dead_air() -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([block, Say("You're booked for Tuesday.")])
    async with Call(session, filler_after_s=1.0) as call:
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: any(size == 3600 for _, size in call.media.sends))
        release.set()
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert record.fillers == ("One moment.",)
        assert record.first_audio_ms is not None and 900 <= record.first_audio_ms <= 1400
        assert record.first_content_ms is not None
        assert record.first_content_ms > record.first_audio_ms
        assert record.played_text == "You're booked for Tuesday."  # fillers are not dialog


async def test_tool_call_gets_the_tool_filler() -> None:
    session = FakeSession()
    release, block = wait_block()
    tool = ToolCallRecord("find_slots", {}, True, {}, None, 5.0)
    session.scripts.append([ToolStarted("find_slots", {}), block, ToolFinished(tool),
                            Say("Tuesday at ten is free.")])
    async with Call(session, filler_after_s=5.0) as call:
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: any(size == 4400 for _, size in call.media.sends))
        release.set()
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert record.fillers == ("Let me check that.",) and record.tools == ("find_slots",)


async def test_dtmf_digits_go_to_the_dialog() -> None:
    session = FakeSession()
    session.policy.mapped = {"0"}
    async with Call(session, dtmf_gap_s=0.6) as call:
        await call.greeted()
        for digit in "12#":
            call.leg.dtmf.put_nowait(digit)
        await call.until(lambda: len(session.turns) == 1)
        assert session.turns == [("12", True)]
        call.leg.dtmf.put_nowait("3")  # no '#': sent after the gap
        await call.until(lambda: len(session.turns) == 2)
        call.leg.dtmf.put_nowait("0")  # a key the policy maps: at once
        await call.until(lambda: len(session.turns) == 3)
        assert session.turns[1:] == [("3", True), ("0", True)]


async def test_silence_reprompts() -> None:
    session = FakeSession()
    async with Call(session, reprompt_after_s=1.0) as call:
        await call.greeted()
        await call.until(lambda: any(r.kind == "silence" for r in call.observer.turns))
        assert session.silences == 1
        record = next(r for r in call.observer.turns if r.kind == "silence")
        assert record.played_text == "Are you still there?"


async def test_hangup_mid_reply_stops_everything_and_completes_the_record() -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([Say("Let me read you all of our opening hours in detail now."),
                            block, Say("Never said.")])
    call = Call(session)
    async with call:
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: call.media.played_samples > int(GREETING_S * 8000) + 4000)
        call.leg.remote_hangup()
        assert call.task is not None
        await asyncio.wait_for(call.task, 3)
        assert session.cancelled.is_set()  # the model was told to stop
        summary = call.observer.finished[0]
        assert summary.end_reason == "remote hangup" and summary.handoff is not None
        assert summary.turn_records[-1].outcome == "hangup"
        release.set()
        await asyncio.sleep(0.1)
        names = {t.name for t in threading.enumerate()}
        assert not {"ears-ref1", "asr-ref1", "dialog-ref1"} & names
        assert "Never said." not in call.tts_engine.texts


def _handoff() -> HandoffRecord:
    return HandoffRecord("ref1", "5551234", "summary", "asked", (), {}, ())


async def test_transfer_waits_for_the_handoff_line_then_refers() -> None:
    session = FakeSession()
    line = "Let me put you through to the front desk."
    session.scripts.append([Say(line), TransferRequested("front_desk", "100", "asked",
                                                         _handoff())])
    call = Call(session)
    async with call:
        await call.greeted()
        call.media.say(1000, 0.8)
        assert call.task is not None
        await asyncio.wait_for(call.task, 10)
        uri, reason, queued, played = call.leg.transfers[0]
        assert (uri, reason) == ("100", "asked")
        assert queued == 0 and played >= int(GREETING_S * 8000) + tts_samples(line)
        summary = call.observer.finished[0]
        assert summary.transferred_to == "front_desk" and summary.end_reason == "transferred"


async def test_transfer_is_recorded_when_the_call_ends_before_refer_returns() -> None:
    """The leg hangs up (BYE) as soon as the REFER succeeded, so the loop may end before
    transfer() returns: the summary must still say transferred, with the escalation reason."""
    session = FakeSession()
    session.scripts.append([Say("Putting you through."),
                            TransferRequested("front_desk", "100", "asked", _handoff())])
    call = Call(session)
    call.leg.bye_wait_s = 0.5
    async with call:
        await call.greeted()
        call.media.say(1000, 0.8)
        assert call.task is not None
        await asyncio.wait_for(call.task, 10)
        summary = call.observer.finished[0]
        assert summary.transferred_to == "front_desk"
        assert summary.end_reason == "transferred"
        assert summary.handoff is not None and summary.handoff.reason == "asked"


async def test_failed_transfer_follows_the_dialog() -> None:
    session = FakeSession()
    session.scripts.append([Say("Transferring you."),
                            TransferRequested("front_desk", "100", "asked", _handoff())])
    session.failure_script = [Say("Sorry, nobody is free."), EndCall("transfer failed")]
    call = Call(session, transfer_ok=False)
    async with call:
        await call.greeted()
        call.media.say(1000, 0.8)
        assert call.task is not None
        await asyncio.wait_for(call.task, 10)
        assert session.transfer_failures == ["Busy Here"]
        assert call.leg.hangups == ["agent: transfer failed"]
        assert "Sorry, nobody is free." in call.tts_engine.texts
        last = call.observer.turns[-1]
        assert last.kind == "transfer_failed" and last.played_text == "Sorry, nobody is free."


# ---- acknowledgements, fillers after them, prefill, the latency breakdown -------------------


def _with_ack_phrases(call: Call) -> None:
    call.services.phrases.add("Sure.", np.full(2400, 600, np.int16))
    call.services.phrases.add("Okay.", np.full(2800, 650, np.int16))


async def test_slow_reply_is_acknowledged_at_the_end_of_the_turn() -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([block, Say("You're booked for Tuesday.")])
    async with Call(session, ack_when_content_after_s=0.5, filler_after_s=100.0,
                    filler_after_ack_s=100.0) as call:
        _with_ack_phrases(call)
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: any(size == 2400 for _, size in call.media.sends))
        await asyncio.sleep(0.05)
        release.set()
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert record.fillers == ("Sure.",)
        # Said at the end-of-turn decision (fast path, ~200 ms into the silence).
        assert record.first_audio_ms is not None and record.end_of_turn_ms is not None
        assert abs(record.first_audio_ms - record.end_of_turn_ms) <= 60
        assert record.first_content_ms is not None
        assert record.first_content_ms >= record.first_audio_ms + 300  # after "Sure." played
        assert record.played_text == "You're booked for Tuesday."  # not the dialog's words
        assert session.turns == [(BOOK, False)]


async def test_content_waits_only_for_the_rest_of_the_acknowledgement() -> None:
    session = FakeSession()
    session.scripts.append([Say("Tuesday is free.")])
    async with Call(session, ack_when_content_after_s=0.5) as call:
        _with_ack_phrases(call)
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert record.fillers == ("Sure.",)
        assert record.first_audio_ms is not None and record.first_content_ms is not None
        # The content was ready at once and went out right behind the 300 ms "Sure.".
        assert record.first_content_ms - record.first_audio_ms <= 300 + 60
        assert record.first_rtp_ms is not None
        assert record.first_rtp_ms < record.first_content_ms


async def test_no_acknowledgement_once_replies_come_fast() -> None:
    session = FakeSession()
    for _ in range(2):
        session.scripts.append([Say("Yes.")])
    async with Call(session, ack_when_content_after_s=0.5, content_ewma_alpha=1.0) as call:
        _with_ack_phrases(call)
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: len(call.speech_records()) == 1)
        call.media.pause(0.5)
        call.media.say(1000, 0.8)
        await call.until(lambda: len(call.speech_records()) == 2)
        first, second = call.speech_records()
        assert first.fillers == ("Sure.",)  # nothing measured yet: the initial estimate
        assert second.fillers == ()  # the first reply's words were ready at once
        assert second.first_content_ms == second.first_audio_ms


async def test_a_filler_follows_the_acknowledgement_when_the_wait_goes_on() -> None:
    session = FakeSession()
    release, block = wait_block()
    session.scripts.append([block, Say("Found it.")])
    async with Call(session, ack_when_content_after_s=0.5, filler_after_s=0.5,
                    filler_after_ack_s=0.4) as call:
        _with_ack_phrases(call)
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: any(size == 3600 for _, size in call.media.sends))
        release.set()
        await call.until(lambda: bool(call.speech_records()))
        record = call.speech_records()[0]
        assert record.fillers == ("Sure.", "One moment.")
        sends = {size: tick for tick, size in call.media.sends}
        # "One moment." only after "Sure." (300 ms = 15 ticks) and 0.4 s of quiet.
        assert sends[3600] - sends[2400] >= 15 + 20 - 2


async def test_prefill_gets_the_prepared_final_and_the_latency_breakdown_is_filled() -> None:
    class PrefillSession(FakeSession):
        def __init__(self) -> None:
            super().__init__()
            self.prefills: list[tuple[str, bool]] = []

        def prefill(self, text: str, *, final: bool = False) -> None:
            self.prefills.append((text, final))

    session = PrefillSession()
    session.scripts.append([Say("Sure."), Say("Which day suits you?")])
    async with Call(session) as call:
        await call.greeted()
        call.media.say(1000, 0.8)
        await call.until(lambda: bool(call.speech_records()))
        assert (BOOK, True) in session.prefills
        record = call.speech_records()[0]
        assert record.llm_first_token_ms is not None and record.tts_first_chunk_ms is not None
        assert record.first_audio_ms is not None
        assert record.end_of_turn_ms is not None
        assert record.end_of_turn_ms <= record.llm_first_token_ms <= record.tts_first_chunk_ms
        assert record.tts_first_chunk_ms <= record.first_audio_ms


def test_trim_silence_keeps_the_edges_asked_for() -> None:
    from agentd.call.loop import _trim_silence

    pcm = np.concatenate([np.zeros(800, np.int16), np.full(1600, 3000, np.int16),
                          np.zeros(2400, np.int16)])
    both = _trim_silence(pcm, lead_s=0.01, tail_s=0.02)
    assert both.size == 80 + 1600 + 160
    assert _trim_silence(pcm, lead_s=0.0, tail_s=None).size == 1600 + 2400
    assert _trim_silence(np.zeros(1000, np.int16), lead_s=0.0, tail_s=0.0).size == 1000
