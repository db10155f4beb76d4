"""Turn-taking decisions, sans-IO: when the caller's turn ends, and what caller speech during
agent speech means (a real interruption, or a backchannel/noise the agent talks over).

`TurnTaker` reads the VAD (its events and the latest window's probability, once per 20 ms
frame), the ASR's prepared-final transcript and whether the agent is talking; it returns
actions for the call loop to carry out. It never reads a clock: every input carries `now`
(seconds, one clock for all inputs), so tests drive it with a fake one.

End of turn. At the first window the VAD hears as silence the loop is asked to prepare the
final transcript (`PrepareFinal`), so it is ready when the turn ends. The turn ends
- early (fast path) once the silence has lasted `fast_end_of_turn_s` and the prepared text
  looks like a finished sentence (ends in . ? ! and not in "and", "um", "the", ...);
- else at the VAD's own end of turn (its `end_of_turn_ms` of silence), unless the words so
  far stop mid-sentence; then up to `incomplete_hold_s` more silence is allowed.

Barge-in (the hold decision). Caller speech confirmed by the VAD (its `min_speech_ms`, 200 ms
by default, which already drops clicks and line bursts) while the agent talks pauses the
agent at once (`HoldAgent`: the loop flushes queued audio, so it stops within one 20 ms
packet) but keeps its reply. Then:
- the speech goes on past `backchannel_max_s`, or no decision by `hold_max_s`: `BargeIn`
  (cancel the reply; the speech is the caller's next turn);
- it stops sooner and the prepared transcript is empty (noise) or only backchannel words
  ("uh-huh", "okay", "yeah", "mm-hm"): `ResumeAgent` (the loop restarts the cut clause) and
  `DropUtterance`; otherwise `BargeIn`.
Echo. On a line the agent's own voice comes back (line echo) and the VAD hears it as
speech. When the loop passes `echo_only` per frame (agentd.call.echo.EchoGuard: True = the
frame is no more than the agent's echo), confirmed speech counts as the caller's only once
`echo_confirm_frames` frames in a row were more than echo; until then it opens nothing and
holds nothing, and if the VAD's speech ends first it was only echo (`stats.echoes`). A
caller talking over the agent passes the guard within a frame or two of reaching a normal
level, usually before the VAD confirms, so real barge-ins are not slowed. Without
`echo_only` (None) every frame counts as the caller's, as before.
Why pause first and decide after: a backchannel and the start of a real interruption sound
alike for their first ~400 ms, so deciding before stopping would either talk over real
interruptions for that long or cut the agent off at every "uh-huh". Pausing on confirmed
speech meets the 150 ms stop target for real interruptions (the stop is one packet after
confirmation), and a backchannel costs only a short pause and a repeated clause start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from agentd.speech.interfaces import SpeechEnded, SpeechStarted, VadEvent

DEFAULT_BACKCHANNELS: frozenset[str] = frozenset({
    "uh-huh", "uh huh", "uhhuh", "mm-hm", "mm-hmm", "mm hm", "mm hmm", "mhm", "mmhmm", "hmm",
    "mm", "okay", "ok", "yeah", "right", "i see", "alright", "all right", "got it",
})
# A turn whose last word is one of these is probably not finished.
CONTINUATION_WORDS: frozenset[str] = frozenset({
    "and", "or", "but", "so", "because", "the", "a", "an", "to", "of", "for", "with", "my",
    "your", "um", "uh", "er", "erm", "ah", "like", "is", "at", "in", "on", "if", "then",
    "that", "i", "i'm", "it's", "was", "are", "from", "about",
})
_EPS = 1e-6  # time comparisons on float clocks
FRAME_S = 0.02  # one VAD step (a 20 ms frame)
# An early hold ends (the agent plays on) after this many quiet frames or this long without
# the VAD confirming speech.
_EARLY_RELEASE_FRAMES = 3
_EARLY_HOLD_MAX_S = 0.5
_FLOOR_RISE_DB = 0.05  # per frame: 2.5 dB/s
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


@dataclass(frozen=True)
class TurnConfig:
    threshold: float = 0.5  # the VAD's speech threshold (probability)
    neg_threshold: float = 0.35  # ... and its silence threshold
    end_of_turn_s: float = 0.4  # the VAD's end_of_turn_ms (for the incomplete-turn hold)
    fast_end_of_turn_s: float | None = 0.2  # None: always wait for the VAD's end of turn
    # The fast path needs this many words: a lone "Sorry," / "Well," often starts a longer
    # turn (a caller who barges in with "Sorry, [pause] hold on" was answered "Okay." in the
    # pause). The VAD's own end of turn still ends a one-word answer ("Yes.") 200 ms later;
    # its content waits on the model anyway.
    fast_end_min_words: int = 2
    incomplete_hold_s: float = 0.6
    backchannel_max_s: float = 0.8
    hold_max_s: float = 1.5
    # While the agent talks, pause it after this much speech-like sound, before the VAD's
    # own confirmation (its min_speech_ms, 200 ms): the stop then lands within ~150 ms of
    # the caller's first word. A burst the VAD never confirms resumes the agent. None: pause
    # only at the VAD's confirmation.
    early_hold_s: float | None = 0.06
    # The early pause also counts frames that are clearly louder than the line's noise floor
    # (and more than echo) as speech-like: the VAD scores a soft onset ("S...") as speech
    # only ~100 ms in, the level rises at once. None: the VAD's probability alone.
    onset_min_dbfs: float | None = -40.0  # ~ the level of a soft "s" on a phone line
    onset_above_floor_db: float = 15.0
    backchannels: frozenset[str] = field(default=DEFAULT_BACKCHANNELS)
    echo_confirm_frames: int = 2  # frames in a row more than echo before speech is the caller's


# ---- actions for the loop ------------------------------------------------------------------


@dataclass(frozen=True)
class OpenUtterance:
    """Open an ASR stream and feed it the audio from `start_at` on (pre-roll included)."""

    start_at: float


@dataclass(frozen=True)
class PrepareFinal:
    """Decode the utterance so far now; report it with `prepared(seq, text)`."""

    seq: int


@dataclass(frozen=True)
class EndOfTurn:
    """The caller's turn is over: finish the ASR stream and answer it."""

    speech_end_at: float  # the VAD's refined offset, else the first silent window
    decided_at: float
    reset_vad: bool  # the VAD still thinks speech goes on (fast path): reset it


@dataclass(frozen=True)
class DropUtterance:
    """Cancel the ASR stream: the sound was noise or a backchannel."""

    reason: str
    reset_vad: bool


@dataclass(frozen=True)
class HoldAgent:
    """Stop agent audio now (flush), keeping the reply until the decision."""

    at: float


@dataclass(frozen=True)
class ResumeAgent:
    """It was a backchannel or noise: play the held reply on."""

    heard: str


@dataclass(frozen=True)
class BargeIn:
    """A real interruption: cancel the held reply; the caller's speech is their next turn."""

    at: float
    reason: str


TurnAction = OpenUtterance | PrepareFinal | EndOfTurn | DropUtterance | HoldAgent | ResumeAgent \
    | BargeIn


# ---- text checks -----------------------------------------------------------------------------


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_backchannel(text: str, vocabulary: Iterable[str] = DEFAULT_BACKCHANNELS) -> bool:
    """True for "" (noise) and for text made only of backchannel phrases ("Okay, okay.")."""
    phrases = sorted((" ".join(words_of(p)) for p in vocabulary), key=len, reverse=True)
    rest = " ".join(words_of(text))
    while rest:
        for phrase in phrases:
            if phrase and (rest == phrase or rest.startswith(phrase + " ")):
                rest = rest[len(phrase):].lstrip()
                break
        else:
            return False
    return True


def looks_incomplete(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped.endswith((",", "...", "-", "\u2026")):
        return True
    words = words_of(stripped)
    return not words or words[-1] in CONTINUATION_WORDS


def looks_complete(text: str) -> bool:
    stripped = text.strip()
    return stripped.endswith((".", "?", "!")) and not looks_incomplete(stripped)


# ---- the state machine ---------------------------------------------------------------------


class _Phase(Enum):
    LISTENING = "listening"  # no caller utterance open
    UTTERANCE = "utterance"  # the caller is speaking (or pausing inside their turn)


@dataclass
class TurnStats:
    turns: int = 0
    fast_ends: int = 0
    incomplete_holds: int = 0
    holds: int = 0
    barge_ins: int = 0
    backchannels: int = 0
    dropped: int = 0
    echoes: int = 0  # VAD speech that was only the agent's echo


class TurnTaker:
    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self.stats = TurnStats()
        self._phase = _Phase.LISTENING
        self._agent_active = False
        self._holding = False
        self._onset = 0.0
        self._hold_at = 0.0
        self._vad_speaking = False
        self._silence_at: float | None = None  # first silent window of the current pause
        self._vad_end: float | None = None  # SpeechEnded.at of the current pause
        self._prepare_seq = 0
        self._prepared: str | None = None  # prepared text for _prepare_seq
        self._caller_frames = 0  # frames in a row judged more than echo (or not judged)
        self._caller_from = 0.0  # where that run of frames starts
        self._echo_wait = False  # the VAD hears speech, but so far only the agent's echo
        self._loud_since: float | None = None  # start of the current speech-like run
        self._quiet_frames = 0  # frames in a row under neg_threshold
        self._tentative = False  # holding on an early hold the VAD has not confirmed yet
        self._early_spent = False  # this run already had its early hold: no second one
        self._floor_dbfs: float | None = None  # the line's noise floor (slow-rising minimum)

    # -- state the loop reads --

    @property
    def in_utterance(self) -> bool:
        return self._phase is _Phase.UTTERANCE

    @property
    def holding(self) -> bool:
        return self._holding

    @property
    def caller_speaking(self) -> bool:
        return self._phase is _Phase.UTTERANCE and self._silence_at is None

    # -- inputs --

    def agent_active(self, now: float, active: bool) -> list[TurnAction]:
        """The agent has a reply in progress (thinking or audio queued) or not."""
        self._agent_active = active
        if not active and self._holding:
            self._holding = False  # nothing left to resume: an ordinary utterance now
            self._tentative = False
        if active and self._phase is _Phase.UTTERANCE and not self._holding:
            # A reply is ready while the caller is (again) speaking: it waits for the same
            # decision as a barge-in would.
            self._holding = True
            self._hold_at = now
            self.stats.holds += 1
            return [HoldAgent(now)]
        return []

    def frame(self, now: float, probability: float, events: Sequence[VadEvent] = (),
              echo_only: bool | None = None,
              level_dbfs: float | None = None) -> list[TurnAction]:
        """One VAD step: its events (times already on `now`'s clock) and the probability;
        `echo_only`: the echo guard found this frame no more than the agent's echo (None:
        not judged)."""
        out: list[TurnAction] = []
        cfg = self.config
        if echo_only:
            self._caller_frames = 0
            self._caller_from = now
        else:
            self._caller_frames += 1
        echo = echo_only is not None and self._caller_frames < cfg.echo_confirm_frames
        for event in events:
            if isinstance(event, SpeechStarted):
                self._vad_speaking = True
                if self._phase is _Phase.LISTENING:
                    if echo:
                        self._echo_wait = True
                    else:
                        self._open(now, event.at, out)
                else:  # speech again inside the turn's pause
                    self._silence_at = None
                    self._vad_end = None
            elif isinstance(event, SpeechEnded):
                self._vad_speaking = False
                if self._echo_wait:
                    self._echo_wait = False
                    self.stats.echoes += 1
                if self._phase is _Phase.UTTERANCE:
                    self._vad_end = event.at
        if self._echo_wait and not echo and self._phase is _Phase.LISTENING:
            # The caller came in over the echo: their speech starts with this run of frames.
            self._echo_wait = False
            self._open(now, self._caller_from, out)
        self._early_hold(now, probability, echo, self._clearly_loud(level_dbfs), out)
        if self._phase is _Phase.UTTERANCE:
            if probability >= cfg.threshold:
                if self._silence_at is not None:
                    self._silence_at = None
                    self._prepared = None
            elif probability < cfg.neg_threshold and self._silence_at is None:
                self._silence_at = now
                self._prepared = None
                self._prepare_seq += 1
                out.append(PrepareFinal(self._prepare_seq))
        self._decide(now, out)
        return out

    def prepared(self, now: float, seq: int, text: str) -> list[TurnAction]:
        """The transcript `PrepareFinal(seq)` asked for."""
        out: list[TurnAction] = []
        if seq == self._prepare_seq and self._silence_at is not None:
            self._prepared = text
            self._decide(now, out)
        return out

    def tick(self, now: float) -> list[TurnAction]:
        out: list[TurnAction] = []
        self._decide(now, out)
        return out

    def cancel(self) -> None:
        """Forget the utterance in progress (the loop dropped it, e.g. on hang-up)."""
        self._phase = _Phase.LISTENING
        self._holding = False
        self._tentative = False
        self._silence_at = None
        self._vad_end = None
        self._prepared = None
        self._echo_wait = False

    # -- internals --

    def _open(self, now: float, start_at: float, out: list[TurnAction]) -> None:
        self._phase = _Phase.UTTERANCE
        self._onset = start_at
        self._silence_at = None
        self._vad_end = None
        self._prepared = None
        out.append(OpenUtterance(start_at))
        if self._tentative:  # already paused by the early hold: now it is a real utterance
            self._tentative = False
        elif self._agent_active:
            self._holding = True
            self._hold_at = now
            self.stats.holds += 1
            out.append(HoldAgent(now))

    def _clearly_loud(self, level_dbfs: float | None) -> bool:
        """Is this frame's level clearly above the line's noise floor? Tracks the floor."""
        if level_dbfs is None:
            return False
        floor = self._floor_dbfs
        if floor is None or level_dbfs < floor:
            floor = level_dbfs
        else:  # rises slowly, so speech never becomes the floor but a noisier line does
            floor = min(level_dbfs, floor + _FLOOR_RISE_DB)
        self._floor_dbfs = floor
        cfg = self.config
        return cfg.onset_min_dbfs is not None and level_dbfs >= max(
            cfg.onset_min_dbfs, floor + cfg.onset_above_floor_db)

    def _early_hold(self, now: float, probability: float, echo: bool, onset: bool,
                    out: list[TurnAction]) -> None:
        cfg = self.config
        if (probability >= cfg.threshold or onset) and not echo:
            self._quiet_frames = 0
            if self._loud_since is None:
                self._loud_since = now - FRAME_S
        elif (probability < cfg.neg_threshold and not onset) or echo:
            self._quiet_frames += 1
            if self._quiet_frames >= _EARLY_RELEASE_FRAMES:
                self._loud_since = None
                self._early_spent = False
        if self._phase is not _Phase.LISTENING:
            return
        if self._tentative:
            # The VAD has not confirmed: a click or a short burst after all. Play on.
            if self._loud_since is None or now - self._hold_at >= _EARLY_HOLD_MAX_S - _EPS:
                self._tentative = False
                self._holding = False
                self._early_spent = self._loud_since is not None  # a steady sound: once
                self.stats.backchannels += 1
                out.append(ResumeAgent(""))
            return
        if (cfg.early_hold_s is not None and self._agent_active and not self._holding
                and self._loud_since is not None and not self._early_spent
                and now - self._loud_since >= cfg.early_hold_s - _EPS):
            self._holding = True
            self._tentative = True
            self._hold_at = now
            self.stats.holds += 1
            out.append(HoldAgent(now))

    def _decide(self, now: float, out: list[TurnAction]) -> None:
        if self._phase is not _Phase.UTTERANCE:
            return
        cfg = self.config
        if self._holding:
            if now - self._onset >= cfg.backchannel_max_s - _EPS:
                self._barge_in(now, "caller kept talking", out)
            elif now - self._hold_at >= cfg.hold_max_s - _EPS:
                self._barge_in(now, "no decision in time", out)
            elif self._silence_at is not None and self._prepared is not None:
                heard = self._prepared
                if is_backchannel(heard, cfg.backchannels):
                    self._holding = False
                    self.stats.backchannels += 1
                    out.append(ResumeAgent(heard))
                    self._close()
                    out.append(DropUtterance("backchannel" if heard.strip() else "noise",
                                             reset_vad=self._vad_speaking))
                    self._vad_speaking = False
                    return
                self._barge_in(now, "caller said more than a backchannel", out)
            if self._holding:
                return
        if self._silence_at is None:
            return
        silence = now - self._silence_at
        text = self._prepared
        if (cfg.fast_end_of_turn_s is not None and silence >= cfg.fast_end_of_turn_s - _EPS
                and text is not None and looks_complete(text)
                and len(words_of(text)) >= cfg.fast_end_min_words):
            self.stats.fast_ends += 1
            self._end(now, self._vad_end if self._vad_end is not None else self._silence_at,
                      out)
            return
        if self._vad_end is None:
            return
        if text is not None and text.strip() and looks_incomplete(text):
            if silence < cfg.end_of_turn_s + cfg.incomplete_hold_s - _EPS:
                return
            self.stats.incomplete_holds += 1
        self._end(now, self._vad_end, out)

    def _barge_in(self, now: float, reason: str, out: list[TurnAction]) -> None:
        self._holding = False
        self.stats.barge_ins += 1
        out.append(BargeIn(now, reason))

    def _end(self, now: float, speech_end: float, out: list[TurnAction]) -> None:
        self.stats.turns += 1
        out.append(EndOfTurn(speech_end, now, reset_vad=self._vad_speaking))
        self._vad_speaking = False
        self._close()

    def _close(self) -> None:
        self._phase = _Phase.LISTENING
        self._silence_at = None
        self._vad_end = None
        self._prepared = None
