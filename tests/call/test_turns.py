"""TurnTaker: end-of-turn timing and the barge-in hold decision, on a fake clock."""

from __future__ import annotations

from agentd.call.turns import (
    BargeIn,
    DropUtterance,
    EndOfTurn,
    HoldAgent,
    OpenUtterance,
    PrepareFinal,
    ResumeAgent,
    TurnConfig,
    TurnTaker,
    is_backchannel,
    looks_complete,
    looks_incomplete,
)
from agentd.speech.interfaces import SpeechEnded, SpeechStarted

STEP = 0.02


class Driver:
    """Feeds one VAD step per 20 ms and collects the actions."""

    def __init__(self, config: TurnConfig | None = None) -> None:
        self.turns = TurnTaker(config or TurnConfig())
        self.now = 0.0
        self.actions: list[object] = []

    def run(self, seconds: float, probability: float, events: list[object] | None = None,
            echo_only: bool | None = None, level: float | None = None) -> list[object]:
        got: list[object] = []
        first = True
        for _ in range(max(1, round(seconds / STEP))):
            self.now = round(self.now + STEP, 6)
            got += self.turns.frame(self.now, probability, (events or []) if first else [],
                                    echo_only=echo_only, level_dbfs=level)
            first = False
        self.actions += got
        return got

    def prepared(self, text: str) -> list[object]:
        seq = [a for a in self.actions if isinstance(a, PrepareFinal)][-1].seq
        got = self.turns.prepared(self.now, seq, text)
        self.actions += got
        return got

    def of(self, kind: type) -> list[object]:
        return [a for a in self.actions if isinstance(a, kind)]


def speak(d: Driver, seconds: float) -> None:
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    d.run(seconds - STEP, 0.9)


def test_text_checks() -> None:
    assert is_backchannel("Uh-huh.") and is_backchannel("okay, okay") and is_backchannel("")
    assert is_backchannel("Mm-hmm") and is_backchannel("yeah right")
    assert not is_backchannel("okay but when") and not is_backchannel("no")
    assert looks_complete("I'd like to book a cleaning.")
    assert not looks_complete("I'd like to book and.") and not looks_complete("Tuesday")
    assert looks_incomplete("I want to, um") and looks_incomplete("so the")
    assert not looks_incomplete("Tuesday at ten.")


def test_utterance_opens_and_final_is_prepared_at_first_silence() -> None:
    d = Driver()
    speak(d, 1.0)
    opened = d.of(OpenUtterance)
    assert len(opened) == 1 and abs(opened[0].start_at + 0.2) < 1e-6
    assert not d.of(PrepareFinal)
    silence_at = d.now
    d.run(STEP, 0.1)
    assert len(d.of(PrepareFinal)) == 1 and abs(d.now - silence_at - STEP) < 1e-6


def test_complete_sentence_ends_the_turn_on_the_fast_path() -> None:
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2, end_of_turn_s=0.4))
    speak(d, 1.0)
    d.run(0.1, 0.1)
    assert not d.prepared("I'd like to book a cleaning.")  # too early: 100 ms of silence
    d.run(0.06, 0.1)
    assert not d.of(EndOfTurn)
    d.run(0.06, 0.1)
    ends = d.of(EndOfTurn)
    assert len(ends) == 1
    end = ends[0]
    assert 0.199 <= end.decided_at - end.speech_end_at < 0.26
    assert end.reset_vad  # the VAD has not ended its speech: the loop resets it
    assert d.turns.stats.fast_ends == 1 and not d.turns.in_utterance


def test_a_lone_word_waits_for_the_vad_end_of_turn() -> None:
    # "Sorry," [pause] "hold on a second": the pause after one word is no end of turn.
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2, end_of_turn_s=0.4))
    speak(d, 0.5)
    d.run(0.1, 0.1)
    d.prepared("Sorry.")
    d.run(0.2, 0.1)
    assert not d.of(EndOfTurn) and d.turns.stats.fast_ends == 0
    speak(d, 0.8)  # the caller goes on: the same turn
    assert not d.of(EndOfTurn) and len(d.of(OpenUtterance)) == 1
    # A one-word answer still ends at the VAD's own end of turn.
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2, end_of_turn_s=0.4))
    speak(d, 0.4)
    d.run(0.1, 0.1)
    d.prepared("Yes.")
    d.run(0.3, 0.1)
    d.run(STEP, 0.1, [SpeechEnded(at=0.4, duration=0.4)])
    assert len(d.of(EndOfTurn)) == 1
    # Two words are enough for the fast path; the minimum is configurable.
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2, end_of_turn_s=0.4, fast_end_min_words=1))
    speak(d, 0.4)
    d.run(0.1, 0.1)
    d.prepared("Yes.")
    d.run(0.12, 0.1)
    assert d.turns.stats.fast_ends == 1


def test_without_a_transcript_the_vad_end_of_turn_decides() -> None:
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2))
    speak(d, 1.0)
    d.run(0.3, 0.1)
    assert not d.of(EndOfTurn)  # no prepared text yet: wait for the VAD
    d.run(STEP, 0.1, [SpeechEnded(at=1.0, duration=1.0)])
    ends = d.of(EndOfTurn)
    assert len(ends) == 1 and ends[0].speech_end_at == 1.0 and not ends[0].reset_vad


def test_an_unfinished_sentence_gets_more_time() -> None:
    d = Driver(TurnConfig(fast_end_of_turn_s=0.2, end_of_turn_s=0.4, incomplete_hold_s=0.6))
    speak(d, 1.0)
    d.run(0.1, 0.1)
    d.prepared("I'd like to book an appointment for, um")
    d.run(0.3, 0.1)
    d.run(STEP, 0.1, [SpeechEnded(at=1.0, duration=1.0)])
    d.run(0.3, 0.1)
    assert not d.of(EndOfTurn)  # 0.7 s of silence: still waiting
    d.run(0.4, 0.1)
    ends = d.of(EndOfTurn)
    assert len(ends) == 1 and 0.95 <= ends[0].decided_at - 1.0 <= 1.1
    assert d.turns.stats.incomplete_holds == 1


def test_speech_resuming_in_the_pause_continues_the_turn() -> None:
    d = Driver()
    speak(d, 0.6)
    d.run(0.1, 0.1)
    d.prepared("I need")
    d.run(0.3, 0.9)  # talks again before any end of turn
    d.run(0.15, 0.1)
    assert len(d.of(OpenUtterance)) == 1 and len(d.of(PrepareFinal)) == 2
    assert not d.of(EndOfTurn)
    d.prepared("I need a new appointment.")
    d.run(0.1, 0.1)
    assert len(d.of(EndOfTurn)) == 1


def test_speech_during_agent_audio_holds_then_barges_in_when_it_goes_on() -> None:
    d = Driver(TurnConfig(backchannel_max_s=0.8))
    d.turns.agent_active(0.0, True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2 + STEP, probability=0.9)])
    holds = d.of(HoldAgent)
    assert len(holds) == 1 and holds[0].at == d.now  # stop at once, on confirmation
    d.run(0.5, 0.9)
    assert not d.of(BargeIn)
    d.run(0.2, 0.9)
    barge = d.of(BargeIn)
    assert len(barge) == 1 and barge[0].reason == "caller kept talking"
    assert d.turns.in_utterance  # the interruption is the caller's next turn
    d.turns.agent_active(d.now, False)
    d.run(0.1, 0.1)
    d.prepared("Actually I need to cancel.")
    d.run(0.2, 0.1)
    assert len(d.of(EndOfTurn)) == 1


def test_backchannel_resumes_the_agent_and_drops_the_utterance() -> None:
    d = Driver()
    d.turns.agent_active(0.0, True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    d.run(0.1, 0.9)
    d.run(0.1, 0.1)
    assert not d.of(ResumeAgent)
    got = d.prepared("Uh-huh.")
    assert isinstance(got[0], ResumeAgent) and got[0].heard == "Uh-huh."
    assert isinstance(got[1], DropUtterance) and got[1].reason == "backchannel"
    assert got[1].reset_vad
    assert not d.of(BargeIn) and not d.turns.in_utterance
    assert d.turns.stats.backchannels == 1


def test_noise_resumes_the_agent() -> None:
    d = Driver()
    d.turns.agent_active(0.0, True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    d.run(0.1, 0.1)
    got = d.prepared("")
    assert isinstance(got[0], ResumeAgent) and got[1].reason == "noise"


def test_short_real_words_barge_in() -> None:
    d = Driver()
    d.turns.agent_active(0.0, True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    d.run(0.2, 0.9)
    d.run(0.1, 0.1)
    got = d.prepared("Stop.")
    assert isinstance(got[0], BargeIn)
    d.turns.agent_active(d.now, False)
    d.run(0.2, 0.1)
    # "Stop." is then answered as a turn, at the VAD's end of turn (one word: no fast path)
    d.run(STEP, 0.1, [SpeechEnded(at=d.now - 0.3, duration=0.2)])
    assert len(d.of(EndOfTurn)) == 1


def test_hold_without_a_decision_times_out_into_a_barge_in() -> None:
    d = Driver(TurnConfig(hold_max_s=0.5, backchannel_max_s=5.0))
    d.turns.agent_active(0.0, True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    d.run(0.1, 0.1)  # silence, but the prepared text never comes
    d.run(0.5, 0.1)
    assert [a.reason for a in d.of(BargeIn)] == ["no decision in time"]


def test_a_reply_ready_while_the_caller_talks_waits_for_the_decision() -> None:
    d = Driver()
    speak(d, 0.4)
    got = d.turns.agent_active(d.now, True)
    assert len(got) == 1 and isinstance(got[0], HoldAgent)
    assert d.turns.holding


def test_stale_prepared_results_are_ignored() -> None:
    d = Driver()
    speak(d, 0.5)
    d.run(0.1, 0.1)
    old = d.of(PrepareFinal)[-1].seq
    d.run(0.1, 0.9)
    d.run(0.3, 0.1)
    assert d.turns.prepared(d.now, old, "Yes.") == []


# ---- echo: the agent's own voice coming back ------------------------------------------------


def echo_confirmed(d: Driver) -> None:
    """The agent talks; its echo goes on for 0.3 s and the VAD confirms it as speech."""
    d.turns.agent_active(d.now, True)
    d.run(0.3, 0.9, echo_only=True)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)], echo_only=True)


def test_echo_alone_never_holds_the_agent() -> None:
    d = Driver()
    echo_confirmed(d)
    d.run(2.0, 0.9, echo_only=True)  # the agent talks on; its echo is "speech" throughout
    d.run(STEP, 0.1, [SpeechEnded(at=d.now, duration=2.5)], echo_only=True)
    d.run(1.0, 0.1, echo_only=True)
    assert d.actions == []  # no utterance, no hold, no barge-in, no end of turn
    assert not d.turns.in_utterance and not d.turns.holding
    assert d.turns.stats.echoes == 1 and d.turns.stats.holds == 0


def test_a_stray_frame_over_the_echo_does_not_hold() -> None:
    d = Driver()
    echo_confirmed(d)
    d.run(STEP, 0.9, echo_only=False)  # one frame (a click) louder than echo
    d.run(1.0, 0.9, echo_only=True)
    assert not d.of(HoldAgent) and not d.of(OpenUtterance)


def test_the_caller_talking_over_the_echo_holds_the_agent_within_two_frames() -> None:
    d = Driver(TurnConfig(backchannel_max_s=0.8))
    echo_confirmed(d)
    d.run(0.4, 0.9, echo_only=True)
    caller_from = d.now
    d.run(STEP, 0.9, echo_only=False)
    assert not d.of(HoldAgent)
    d.run(STEP, 0.9, echo_only=False)
    holds, opened = d.of(HoldAgent), d.of(OpenUtterance)
    assert len(holds) == 1 and holds[0].at == d.now == round(caller_from + 2 * STEP, 6)
    # The utterance (ASR audio) starts where the caller's voice does, not at the echo's onset.
    assert len(opened) == 1 and opened[0].start_at == caller_from
    d.run(0.8, 0.9, echo_only=False)  # they go on: a real interruption
    assert [b.reason for b in d.of(BargeIn)] == ["caller kept talking"]


def test_a_caller_already_over_the_echo_at_confirmation_holds_at_once() -> None:
    d = Driver(TurnConfig(early_hold_s=None))
    d.turns.agent_active(0.0, True)
    d.run(0.3, 0.9, echo_only=False)
    onset = d.now - 0.2
    d.run(STEP, 0.9, [SpeechStarted(at=onset, probability=0.9)], echo_only=False)
    holds, opened = d.of(HoldAgent), d.of(OpenUtterance)
    assert len(holds) == 1 and holds[0].at == d.now
    assert len(opened) == 1 and opened[0].start_at == onset  # the VAD's onset, as before


def test_speech_after_the_agent_stops_is_the_callers_turn() -> None:
    d = Driver()
    echo_confirmed(d)
    d.turns.agent_active(d.now, False)  # the reply ends; the guard sees no echo after it
    d.run(0.1, 0.9, echo_only=True)
    d.run(0.4, 0.9, echo_only=False)
    assert len(d.of(OpenUtterance)) == 1 and not d.of(HoldAgent)
    d.run(0.1, 0.1, echo_only=False)
    d.prepared("I need to cancel.")
    d.run(0.3, 0.1, echo_only=False)
    assert len(d.of(EndOfTurn)) == 1


def test_cancel_forgets_a_pending_echo() -> None:
    d = Driver()
    echo_confirmed(d)
    d.turns.cancel()
    d.run(0.1, 0.9, echo_only=False)
    assert not d.of(OpenUtterance)  # needs a new VAD onset


# ---- the early hold: pause before the VAD's confirmation -------------------------------------


def test_agent_pauses_after_100_ms_of_speech_before_the_vad_confirms() -> None:
    d = Driver(TurnConfig(early_hold_s=0.1))
    d.turns.agent_active(0.0, True)
    d.run(0.08, 0.9)
    assert not d.of(HoldAgent)
    d.run(STEP, 0.9)
    holds = d.of(HoldAgent)
    assert len(holds) == 1 and abs(holds[0].at - 0.1) < 1e-6 and d.turns.holding
    assert not d.of(OpenUtterance)  # not an utterance until the VAD says speech
    onset = d.now - 0.1
    d.run(STEP, 0.9, [SpeechStarted(at=onset, probability=0.9)])
    assert len(d.of(OpenUtterance)) == 1 and len(d.of(HoldAgent)) == 1  # no second pause
    d.run(0.8, 0.9)  # they go on: a real interruption, timed from the VAD's onset
    assert [b.reason for b in d.of(BargeIn)] == ["caller kept talking"]


def test_a_burst_the_vad_never_confirms_resumes_the_agent() -> None:
    d = Driver(TurnConfig(early_hold_s=0.1))
    d.turns.agent_active(0.0, True)
    d.run(0.14, 0.9)  # a cough: long enough to pause, too short for the VAD
    assert len(d.of(HoldAgent)) == 1
    d.run(0.1, 0.05)
    resumed = d.of(ResumeAgent)
    assert len(resumed) == 1 and resumed[0].heard == "" and not d.turns.holding
    assert not d.of(OpenUtterance) and not d.of(BargeIn)


def test_a_vad_that_hesitates_too_long_resumes_the_agent() -> None:
    d = Driver(TurnConfig(early_hold_s=0.1))
    d.turns.agent_active(0.0, True)
    d.run(1.5, 0.9)  # a steady speech-like sound the VAD never confirms (a tone, music)
    assert len(d.of(HoldAgent)) == 1 and len(d.of(ResumeAgent)) == 1  # paused once only
    d.run(0.1, 0.05)
    d.run(0.14, 0.9)  # after a quiet gap a new burst may pause the agent again
    assert len(d.of(HoldAgent)) == 2


def test_no_early_hold_on_echo_or_when_the_agent_is_quiet() -> None:
    d = Driver(TurnConfig(early_hold_s=0.1))
    d.turns.agent_active(0.0, True)
    d.run(0.5, 0.9, echo_only=True)  # only the agent's own echo
    assert not d.of(HoldAgent)
    d.turns.agent_active(d.now, False)
    d.run(0.1, 0.05)
    d.run(0.3, 0.9)  # the caller speaks while the agent is silent: nothing to pause
    assert not d.of(HoldAgent)


def test_early_hold_off_waits_for_the_vad() -> None:
    d = Driver(TurnConfig(early_hold_s=None))
    d.turns.agent_active(0.0, True)
    d.run(0.18, 0.9)
    assert not d.of(HoldAgent)
    d.run(STEP, 0.9, [SpeechStarted(at=d.now - 0.2, probability=0.9)])
    assert len(d.of(HoldAgent)) == 1


def test_a_loud_onset_pauses_the_agent_before_the_vad_scores_it() -> None:
    d = Driver(TurnConfig(early_hold_s=0.06))
    d.turns.agent_active(0.0, True)
    d.run(1.0, 0.02, level=-60.0)  # a quiet line while the agent talks
    d.run(0.04, 0.1, level=-25.0)  # "Sss...": loud, but the VAD is not sure yet
    assert not d.of(HoldAgent)
    d.run(STEP, 0.2, level=-24.0)
    assert len(d.of(HoldAgent)) == 1  # 60 ms into the sound, not after the VAD's ~100 ms


def test_the_level_onset_follows_the_noise_floor() -> None:
    d = Driver(TurnConfig(early_hold_s=0.06))
    d.turns.agent_active(0.0, True)
    d.run(3.0, 0.02, level=-30.0)  # a noisy line: -30 dBFS of steady noise
    d.run(0.3, 0.1, level=-26.0)  # a little louder: not 15 dB above the floor
    assert not d.of(HoldAgent)
    d.run(0.1, 0.1, level=-12.0)  # clearly above it
    assert len(d.of(HoldAgent)) == 1


def test_no_level_onset_on_echo_or_when_switched_off() -> None:
    d = Driver(TurnConfig(early_hold_s=0.06))
    d.turns.agent_active(0.0, True)
    d.run(1.0, 0.02, level=-60.0)
    d.run(0.3, 0.1, echo_only=True, level=-20.0)  # only the agent's echo
    assert not d.of(HoldAgent)
    off = Driver(TurnConfig(early_hold_s=0.06, onset_min_dbfs=None))
    off.turns.agent_active(0.0, True)
    off.run(1.0, 0.02, level=-60.0)
    off.run(0.3, 0.1, level=-20.0)
    assert not off.of(HoldAgent)


def test_a_loud_click_the_vad_never_confirms_resumes_the_agent() -> None:
    d = Driver(TurnConfig(early_hold_s=0.06))
    d.turns.agent_active(0.0, True)
    d.run(1.0, 0.02, level=-60.0)
    d.run(0.08, 0.05, level=-15.0)  # a door slam
    d.run(0.2, 0.02, level=-60.0)
    assert len(d.of(HoldAgent)) == 1 and len(d.of(ResumeAgent)) == 1
    assert not d.turns.holding and not d.of(OpenUtterance)
