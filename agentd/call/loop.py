"""The live call: RTP frames -> VAD -> streaming ASR -> end of turn -> dialog -> TTS -> RTP.

One `CallLoop` per answered call, on the event loop; engines run on threads (`workers`,
`scheduler`) and post results back, so the loop only routes audio and decides:

- Every received 20 ms frame goes to the ears (VAD thread) and, while the caller has an
  utterance open, to the ASR thread (with `preroll_s` of audio from before the VAD's onset).
- `TurnTaker` (sans-IO) turns VAD results and prepared transcripts into actions: open an
  utterance, prepare the final early, end the turn, hold/resume/cancel agent speech.
- A reply (greeting, turn, re-prompt...) is a dialog generator on its own thread; each Say
  is a clause: cached phrases are ready at once, the rest is synthesised by the shared
  `TtsScheduler` and streamed chunk by chunk into `media.send()` in clause order.
- Which words the caller heard comes from `media.played_samples` against where each
  clause's audio sits in the send queue, so `dialog.interrupted()` gets only those.
- At the end of the caller's turn a short cached acknowledgement ("Sure.") plays at once when
  the reply's own words are not expected within `ack_when_content_after_s` (an average of
  this call's recent turns); it is shorter than the usual wait, so it never holds content
  back by more than its own remaining audio. Longer dead air after that, or during a tool
  call, is covered by a cached filler. Cached phrases are sent without their silent edges.
- The dialog's `prefill` runs on the caller's partial transcripts and on the prepared final
  (first silence), so at the end of the turn the model has little or nothing left to read.
- DTMF digits are dialog input; silence re-prompts; a transfer waits until its hand-off
  line has played; a hang-up at any moment stops every worker and completes the records.

Clock: seconds of call audio (20 ms per received frame; the VAD's stream time), which the
RTP session advances in real time; tests drive it with a fake media session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from agentd.call.echo import EchoConfig, EchoGuard
from agentd.call.events import (
    BargeInRecord,
    CallObserver,
    CallSummary,
    NullObserver,
    TurnKind,
    TurnRecord,
)
from agentd.call.phrases import PhraseBook
from agentd.call.scheduler import TtsJob, TtsScheduler
from agentd.call.turns import (
    BargeIn,
    DropUtterance,
    EndOfTurn,
    HoldAgent,
    OpenUtterance,
    PrepareFinal,
    ResumeAgent,
    TurnAction,
    TurnConfig,
    TurnTaker,
)
from agentd.call.workers import AsrWorker, DialogWorker, Ears, Prefiller
from agentd.dialog.types import EndCall, Say, ToolFinished, ToolStarted, TransferRequested
from agentd.signature import accepts_keyword
from agentd.speech.interfaces import (
    FRAME_SAMPLES,
    TELEPHONE_RATE,
    AsrEngine,
    CancelToken,
    Transcript,
    VadConfig,
    VadEvent,
    VadModel,
)

log = logging.getLogger("agentd.call")

FRAME_S = FRAME_SAMPLES / TELEPHONE_RATE
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CallLoopConfig:
    turns: TurnConfig = field(default_factory=TurnConfig)
    vad: VadConfig | None = None  # None: the VAD model's defaults
    preroll_s: float = 0.3  # audio before the VAD's onset given to the ASR
    fillers: tuple[str, ...] = ("One moment.", "Let me check that.")
    filler_after_s: float = 1.0  # dead air after the caller's turn before a filler
    # Short acknowledgements said at the end of the caller's turn (used in turn); cached at
    # start-up with the fillers, or by the first call that needs them.
    acknowledgements: tuple[str, ...] = ("Sure.", "Okay.")
    # Acknowledge when this call's expected end-of-turn -> content-ready time is at least
    # this long (None: never acknowledge); the estimate starts at ack_initial_estimate_s and
    # follows each turn's measured time (exponential average with weight content_ewma_alpha).
    ack_when_content_after_s: float | None = 0.5
    ack_initial_estimate_s: float = 1.0
    content_ewma_alpha: float = 0.5
    filler_after_ack_s: float = 1.1  # dead air after an acknowledgement before a filler
    phrase_edge_s: float = 0.03  # silence kept at each end of a cached filler/acknowledgement
    prefill: bool = True  # run the dialog's prefill on partial and prepared transcripts
    echo: EchoConfig = field(default_factory=EchoConfig)  # the agent's own voice coming back
    tool_filler_after_s: float = 0.3  # dead air while a tool runs before a filler
    max_fillers_per_turn: int = 2
    dtmf_gap_s: float = 1.5  # digits are collected until '#', a mapped key or this gap
    reprompt_after_s: float | None = None  # None: the policy's silence_reprompt_seconds
    max_call_s: float | None = None  # None: the policy's max_call_seconds + 30 s
    stop_grace_s: float = 2.0  # how long a cancelled dialog thread may take to stop
    transfer_timeout_s: float = 32.0


@dataclass
class AgentServices:
    """What every call shares; built once at start-up (models loaded once)."""

    vad: VadModel
    asr: AsrEngine
    tts: TtsScheduler
    phrases: PhraseBook
    dialog: Any  # DialogEngine-like: new_session(caller_id=..., call_ref=...)
    config: CallLoopConfig = field(default_factory=CallLoopConfig)
    observer: CallObserver = field(default_factory=NullObserver)


def frame_dbfs(pcm: np.ndarray) -> float:
    """RMS level of a frame in dBFS (digital silence reads -100)."""
    samples = np.asarray(pcm, dtype=np.float64).reshape(-1)
    if not samples.size:
        return -100.0
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20.0 * np.log10(max(rms, 0.328) / 32768.0)


def _guarded(method: F) -> F:
    """Callbacks posted from threads: a bug is logged, never lost in the loop."""

    @functools.wraps(method)
    def wrapper(self: CallLoop, *args: Any) -> Any:
        if self._closing:
            return None
        try:
            return method(self, *args)
        except Exception:
            log.exception("call %s: %s failed", self.call_ref, method.__name__)
            return None

    return wrapper  # type: ignore[return-value]


# ---- a reply and its clauses -------------------------------------------------------------


@dataclass
class _Clause:
    text: str
    spoken: bool  # the dialog's words (count toward what was heard); False for fillers
    chunks: list[np.ndarray] = field(default_factory=list)
    complete: bool = False
    sent: int = 0  # chunks passed to media.send
    spans: list[tuple[int, int]] = field(default_factory=list)  # send-queue positions

    @property
    def samples(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def heard(self) -> int:
        return min(self.samples, sum(end - start for start, end in self.spans))


@dataclass
class _Reply:
    kind: TurnKind
    index: int
    ref_at: float  # what the latencies count from
    caller_text: str = ""
    confidence: float | None = None
    end_of_turn_ms: float | None = None
    asr_final_ms: float | None = None
    clauses: list[_Clause] = field(default_factory=list)
    token: CancelToken = field(default_factory=CancelToken)
    worker: DialogWorker | None = None
    started: bool = False  # the dialog thread was started
    dialog_done: bool = False
    cancelled: bool = False
    held: bool = False
    terminal: TransferRequested | EndCall | None = None
    tools: list[str] = field(default_factory=list)
    tool_running: bool = False
    fillers: list[str] = field(default_factory=list)
    first_audio_at: float | None = None
    first_content_at: float | None = None
    decided_at: float | None = None  # the end-of-turn decision (speech turns)
    first_say_at: float | None = None  # the dialog's first clause reached the loop
    first_chunk_at: float | None = None  # its first synthesised (or cached) audio was ready
    content_ready_at: float | None = None  # the reply's own first audio could be sent
    idle_since: float | None = None
    outcome: str = "spoken"
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # the dialog is free again

    @property
    def interruptible(self) -> bool:
        return self.terminal is None

    def played_text(self) -> str:
        parts: list[str] = []
        for clause in self.clauses:
            if not clause.spoken:
                continue
            total, heard = clause.samples, clause.heard
            if heard <= 0 or total <= 0:
                continue
            if heard >= total and clause.complete:
                parts.append(clause.text)
                continue
            words = clause.text.split()
            count = int(len(words) * heard / total)
            if count:
                parts.append(" ".join(words[:count]))
        return " ".join(parts)

    def reply_text(self) -> str:
        return " ".join(c.text for c in self.clauses if c.spoken)


# ---- the loop --------------------------------------------------------------------------------


class CallLoop:
    def __init__(self, leg: Any, services: AgentServices) -> None:
        self.leg = leg
        self.media = leg.media
        self.services = services
        self.config = services.config
        self.call_ref: str = str(getattr(leg, "reference", "call"))
        self.observer = services.observer
        self.turns = TurnTaker(self.config.turns)
        # Line echo of the agent's voice must not read as the caller barging in: each
        # received frame is judged against what we sent, and its level taken (the VAD
        # thread reports later, so these wait here, keyed by the frame's time on the call
        # clock).
        self._echo = EchoGuard(self.config.echo)
        self._received: deque[tuple[float, bool | None, float]] = deque(maxlen=500)
        self.session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._done = asyncio.Event()
        self._end_reason: str | None = None
        self._now = 0.0  # call audio clock: frames received x 20 ms
        self._vad_now = 0.0
        self._frames: deque[tuple[float, np.ndarray]] = deque(
            maxlen=int((1.5 + self.config.preroll_s) / FRAME_S))
        self._ears: Ears | None = None
        self._asr: AsrWorker | None = None
        self._utterance = 0
        self._asr_open = False
        self._asr_quiet = False
        self._eot: EndOfTurn | None = None  # the turn whose final transcript is awaited
        self._eot_utterance = 0
        self._eot_loop_delay = 0.0
        self._reply: _Reply | None = None
        self._last_reply: _Reply | None = None
        self._replies = 0
        self._records: list[TurnRecord] = []
        self._digits = ""
        self._digits_due: float | None = None
        self._digits_at = 0.0
        self._last_activity = 0.0
        self._transferring = False
        self._transferred_to: str | None = None
        self._transfer: TransferRequested | None = None  # REFER in flight
        self._barge_ins = 0
        self._backchannels = 0
        self._hold_started: float | None = None
        self._hold_stop_ms = 0.0
        self._prefiller: Prefiller | None = None
        # The prepared final of the open (or just ended) utterance; None: none arrived yet.
        self._prepared_text: str | None = None
        self._ack: _Clause | None = None  # acknowledgement sent at the end of turn
        self._ack_at = 0.0
        self._acks = 0
        self._content_estimate = self.config.ack_initial_estimate_s
        self._trimmed: dict[str, np.ndarray | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_wall = 0.0

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started_wall = loop.time()
        cfg = self.config
        self.session = self.services.dialog.new_session(
            caller_id=getattr(self.leg, "caller", None), call_ref=self.call_ref)
        vad_stream = self.services.vad.stream(cfg.vad) if cfg.vad else self.services.vad.stream()
        self._ears = Ears(loop, vad_stream, self._on_vad, name=f"ears-{self.call_ref}")
        self._asr = AsrWorker(loop, self.services.asr, on_partial=self._on_partial,
                              on_prepared=self._on_prepared, on_final=self._on_final,
                              name=f"asr-{self.call_ref}")
        self._notify("call_started", self.call_ref, str(getattr(self.leg, "caller", "")), 0.0,
                     call_id=str(getattr(self.leg, "call_id", "")))
        prefill = getattr(self.session, "prefill", None)
        if cfg.prefill and callable(prefill):
            self._prefiller = Prefiller(prefill, final_kw=accepts_keyword(prefill, "final"),
                                        stop_kw=accepts_keyword(prefill, "stop"),
                                        name=f"prefill-{self.call_ref}")
        missing = [text for text in cfg.acknowledgements if self.services.phrases.get(text) is None]
        if missing and cfg.ack_when_content_after_s is not None:
            self._spawn(self._warm_phrases(missing), "warm")
        opening = getattr(self.session, "opening", None)
        produce = opening if callable(opening) else (lambda: iter([Say(self.session.greeting())]))
        self._start_reply("greeting", produce, ref_at=0.0)
        frames = asyncio.ensure_future(self._frames_loop())
        digits = asyncio.ensure_future(self._dtmf_loop())
        ended = asyncio.ensure_future(self.leg.ended.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({frames, ended, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (frames, digits, ended, done):
                task.cancel()
            await asyncio.gather(frames, digits, ended, done, return_exceptions=True)
            reason = self._end_reason or getattr(self.leg, "end_reason", None) or "ended"
            await self._shutdown(reason)
            if not self.leg.ended.is_set():
                await self.leg.hangup(reason)

    async def _frames_loop(self) -> None:
        assert self._ears is not None and self._asr is not None
        async for pcm in self.media.frames():
            self._now += FRAME_S
            self._frames.append((self._now, pcm))
            echo_only = (not self._echo.near_end(pcm, self._now)
                         if self.config.echo.enabled else None)
            self._received.append((self._now, echo_only, frame_dbfs(pcm)))
            if self._asr_open:
                self._asr.audio(pcm)
            self._ears.feed(pcm)
            self._tick()
            if self._closing:
                return

    async def _dtmf_loop(self) -> None:
        while True:
            digit = await self.leg.dtmf.get()
            self._on_digit(str(digit))

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.call_ref}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: %s failed: %r", self.call_ref, task.get_name(),
                      task.exception())

    # -- hearing -----------------------------------------------------------------------------

    @_guarded
    def _on_vad(self, t: float, probability: float, events: list[VadEvent]) -> None:
        self._vad_now = t
        echo_only, level = self._received_at(t)
        self._act(self.turns.frame(t, probability, events, echo_only=echo_only,
                                   level_dbfs=level))
        if self._asr_open and self._asr_quiet and self.turns.caller_speaking:
            self._asr_quiet = False
            assert self._asr is not None
            self._asr.speech()

    def _received_at(self, t: float) -> tuple[bool | None, float | None]:
        """The echo guard's verdict (None: not judged) and the level of the received frame
        the VAD reports at `t`."""
        received = self._received
        while received and received[0][0] < t - 1e-6:
            received.popleft()
        if received and abs(received[0][0] - t) <= 1e-6:
            _, echo_only, level = received.popleft()
            return echo_only, level
        return None, None

    @_guarded
    def _on_partial(self, utterance: int, text: str) -> None:
        if utterance != self._utterance or not self._asr_open:
            return
        log.debug("call %s: partial at %.2f s: %r", self.call_ref, self._vad_now, text)
        # Understanding starts while the caller still talks: the model reads their words.
        if self._prefiller is not None and self._may_answer():
            self._prefiller.request(text)

    @_guarded
    def _on_prepared(self, utterance: int, seq: int, text: str, ms: float) -> None:
        if utterance != self._utterance:
            return
        self._prepared_text = text
        log.debug("call %s: prepared final at %.2f s (%.0f ms decode): %r", self.call_ref,
                  self._vad_now, ms, text)
        if (self._prefiller is not None and text.strip() and self._may_answer()
                and self._asr_open):
            # Most likely the whole turn: the model reads it as it will answer it.
            self._prefiller.request(text, final=True)
        self._act(self.turns.prepared(self._vad_now, seq, text))

    @_guarded
    def _on_final(self, utterance: int, transcript: Transcript, ms: float) -> None:
        eot = self._eot
        if eot is None or utterance != self._eot_utterance:
            return
        self._eot = None
        ack, self._ack = self._ack, None
        text = transcript.text.strip()
        self._last_activity = self._now
        if not text or not self._may_answer():
            return
        reply = self._start_reply(
            "speech", functools.partial(self.session.turn, text,
                                        confidence=transcript.confidence),
            ref_at=eot.speech_end_at, caller_text=text, confidence=transcript.confidence)
        reply.end_of_turn_ms = (eot.decided_at - eot.speech_end_at) * 1000.0
        reply.asr_final_ms = max(0.0, self._now - eot.decided_at - self._eot_loop_delay) * 1000.0
        reply.decided_at = eot.decided_at + self._eot_loop_delay
        if ack is not None:  # already playing: the reply's first audio
            reply.clauses.insert(0, ack)
            reply.fillers.append(ack.text)
            reply.first_audio_at = self._ack_at

    def _act(self, actions: list[TurnAction]) -> None:
        assert self._asr is not None and self._ears is not None
        for action in actions:
            if isinstance(action, OpenUtterance):
                self._utterance += 1
                since = action.start_at - self.config.preroll_s
                audio = [pcm for end, pcm in self._frames if end > since]
                preroll = np.concatenate(audio) if audio else np.zeros(0, np.int16)
                self._asr.open(self._utterance, preroll)
                self._asr_open = True
                self._asr_quiet = False
                self._prepared_text = None
            elif isinstance(action, PrepareFinal):
                self._asr_quiet = True
                self._asr.prepare(action.seq)
                if self._prefiller is not None:
                    # The final transcript decides when the turn ends: give it the CPU.
                    self._prefiller.interrupt()
            elif isinstance(action, EndOfTurn):
                self._asr.finish()
                self._asr_open = False
                self._eot = action
                log.debug("call %s: end of turn at %.2f s (speech end %.2f s)", self.call_ref,
                          action.decided_at, action.speech_end_at)
                self._eot_utterance = self._utterance
                self._eot_loop_delay = max(0.0, self._now - self._vad_now)
                self._last_activity = self._now
                if action.reset_vad:
                    self._ears.reset()
                self._maybe_acknowledge()
            elif isinstance(action, DropUtterance):
                self._asr.cancel()
                self._asr_open = False
                self._last_activity = self._now
                if action.reset_vad:
                    self._ears.reset()
            elif isinstance(action, HoldAgent):
                reply = self._reply
                if reply is not None and reply.interruptible and not reply.cancelled:
                    self._hold(reply)
                    self._hold_started = action.at
                    # Confirmation -> flush, plus the packet already on its way.
                    self._hold_stop_ms = (max(0.0, self._now - action.at) + FRAME_S) * 1000.0
            elif isinstance(action, ResumeAgent):
                reply = self._reply
                self._backchannels += 1
                self._report_barge_in(resumed=True, heard=action.heard)
                if reply is not None and reply.held and not reply.cancelled:
                    reply.held = False
                    self._pump(reply)
            elif isinstance(action, BargeIn):
                reply = self._reply
                if reply is not None and reply.interruptible and not reply.cancelled:
                    self._barge_ins += 1
                    self._report_barge_in(resumed=False, heard="")
                    self._interrupt(reply, "barge-in")

    def _report_barge_in(self, *, resumed: bool, heard: str) -> None:
        at = self._hold_started if self._hold_started is not None else self._vad_now
        self._hold_started = None
        self._notify("barge_in", BargeInRecord(self.call_ref, at, self._hold_stop_ms,
                                               resumed, heard))

    # -- DTMF --------------------------------------------------------------------------------

    def _on_digit(self, digit: str) -> None:
        if self._closing or self._transferring:
            return
        reply = self._reply
        if reply is not None and reply.interruptible and not reply.cancelled:
            self._hold(reply)  # a key press cuts the agent off like speech does
            self._interrupt(reply, "keypad")
        if not self._digits:
            self._digits_at = self._now
        self._digits += digit
        if digit == "#" or (len(self._digits) == 1 and self._mapped_key(digit)):
            self._submit_digits()
        else:
            self._digits_due = self._now + self.config.dtmf_gap_s

    def _mapped_key(self, key: str) -> bool:
        policy = getattr(self.session, "policy", None)
        lookup = getattr(policy, "dtmf_action", None)
        try:
            return callable(lookup) and lookup(key) is not None
        except Exception:
            return False

    def _may_answer(self) -> bool:
        """False while a transfer or the call's last words are under way."""
        reply = self._reply
        return not self._transferring and (reply is None or reply.interruptible)

    def _submit_digits(self) -> None:
        digits = self._digits.rstrip("#") or self._digits
        self._digits, self._digits_due = "", None
        self._last_activity = self._now
        if not self._may_answer():
            return
        self._start_reply("dtmf", functools.partial(self.session.turn, digits, dtmf=True),
                          ref_at=self._now, caller_text=digits)

    # -- replies -----------------------------------------------------------------------------

    def _start_reply(self, kind: TurnKind, produce: Callable[[], Iterator[Any]], *,
                     ref_at: float, caller_text: str = "",
                     confidence: float | None = None) -> _Reply:
        previous = self._reply
        if previous is not None and not previous.cancelled:
            self._hold(previous)
            self._interrupt(previous, "superseded")
        reply = _Reply(kind, self._replies, ref_at, caller_text, confidence)
        self._replies += 1
        self._reply = reply
        self._act(self.turns.agent_active(self._vad_now, True))
        waits_for = previous if previous is not None else self._last_reply
        self._spawn(self._launch(reply, waits_for, produce), "reply")
        return reply

    async def _launch(self, reply: _Reply, previous: _Reply | None,
                      produce: Callable[[], Iterator[Any]]) -> None:
        """Start the dialog thread once the previous reply has released the session."""
        if previous is not None:  # every reply sets it: done, cancelled, or never started
            await previous.settled.wait()
        if reply.cancelled or self._closing:
            reply.settled.set()
            return
        assert self._loop is not None
        reply.started = True
        reply.worker = DialogWorker(
            self._loop, produce,
            on_event=functools.partial(self._on_dialog_event, reply),
            on_done=functools.partial(self._on_dialog_done, reply),
            name=f"dialog-{self.call_ref}",
        )

    def _on_dialog_event(self, reply: _Reply, event: Any) -> None:
        if self._closing or reply.cancelled:
            return
        try:
            if isinstance(event, Say):
                if reply.first_say_at is None:
                    reply.first_say_at = self._now
                self._add_clause(reply, event.text)
            elif isinstance(event, ToolStarted):
                reply.tools.append(event.name)
                reply.tool_running = True
            elif isinstance(event, ToolFinished):
                reply.tool_running = False
            elif isinstance(event, TransferRequested | EndCall):
                reply.terminal = event
        except Exception:
            log.exception("call %s: dialog event %r failed", self.call_ref, event)

    def _on_dialog_done(self, reply: _Reply, error: BaseException | None) -> None:
        reply.dialog_done = True
        if not reply.cancelled:
            reply.settled.set()
            if not self._closing:
                self._tick()

    def _add_clause(self, reply: _Reply, text: str) -> None:
        clause = _Clause(text, spoken=True)
        reply.clauses.append(clause)
        cached = self.services.phrases.get(text)
        if cached is not None:
            if reply.first_chunk_at is None:
                reply.first_chunk_at = self._now
            clause.chunks.append(cached)
            clause.complete = True
            self._pump(reply)
            return
        assert self._loop is not None
        loop = self._loop

        def on_chunk(pcm: np.ndarray) -> None:
            loop.call_soon_threadsafe(self._on_tts_chunk, reply, clause, pcm)

        def on_done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(self._on_tts_done, reply, clause)

        self.services.tts.submit(TtsJob(self.call_ref, text, reply.token, on_chunk, on_done))

    @_guarded
    def _on_tts_chunk(self, reply: _Reply, clause: _Clause, pcm: np.ndarray) -> None:
        if reply.cancelled or clause.complete:
            return
        if reply.first_chunk_at is None:
            reply.first_chunk_at = self._now
        if (not clause.chunks and reply.content_ready_at is None
                and clause is next((c for c in reply.clauses if c.spoken), None)):
            # The reply's first words: no dead air in front of them.
            pcm = _trim_silence(pcm, lead_s=self.config.phrase_edge_s, tail_s=None)
        clause.chunks.append(pcm)
        self._pump(reply)

    @_guarded
    def _on_tts_done(self, reply: _Reply, clause: _Clause) -> None:
        clause.complete = True
        if not reply.cancelled:
            self._pump(reply)
            self._tick()

    def _send(self, pcm: np.ndarray) -> float:
        """Queue agent audio; returns when the caller will hear it (now, plus the audio
        queued ahead of it), which the echo guard notes too."""
        heard_at = self._now + int(self.media.queued_samples) / TELEPHONE_RATE
        self.media.send(pcm)
        self._echo.far_end(pcm, heard_at)
        return heard_at

    def _position(self) -> int:
        return int(self.media.played_samples) + int(self.media.queued_samples)

    def _pump(self, reply: _Reply) -> None:
        """Send whatever audio is ready, in clause order (never past an unfinished clause)."""
        if reply.held or reply.cancelled or reply is not self._reply:
            return
        for clause in reply.clauses:
            while clause.sent < len(clause.chunks):
                chunk = clause.chunks[clause.sent]
                clause.sent += 1
                if not chunk.size:
                    continue
                start = self._position()
                heard_at = self._send(chunk)
                clause.spans.append((start, start + chunk.size))
                reply.idle_since = None
                if reply.first_audio_at is None:
                    reply.first_audio_at = heard_at
                if clause.spoken and reply.first_content_at is None:
                    reply.first_content_at = heard_at
                    reply.content_ready_at = self._now
                    self._learn_content_time(reply)
            if not clause.complete:
                return

    def _hold(self, reply: _Reply) -> None:
        """Stop the agent's audio now; what was not heard is re-sent from its clause start
        if the reply resumes."""
        reply.held = True
        self.media.flush()
        self._echo.flush(self._now + FRAME_S)
        played = int(self.media.played_samples)
        for clause in reply.clauses:
            clause.spans = [(s, min(e, played)) for s, e in clause.spans if s < played]
            if clause.sent and clause.spoken and not (clause.complete
                                                      and clause.heard >= clause.samples):
                clause.sent = 0

    def _interrupt(self, reply: _Reply, why: str) -> None:
        """Cancel a reply at once (audio already flushed by _hold); the dialog learns what
        was heard once its thread has stopped."""
        if reply.cancelled:
            return
        reply.cancelled = True
        reply.outcome = "interrupted"
        reply.token.cancel()
        self.services.tts.cancel_call(self.call_ref)
        if reply.worker is not None:
            reply.worker.stop()
        cancel_turn = getattr(self.session, "cancel_turn", None)
        if callable(cancel_turn) and reply.started:
            cancel_turn()
        played = reply.played_text()
        self._finish_reply(reply, interrupted=True, played=played)
        self._spawn(self._settle(reply, played), "interrupt")

    async def _settle(self, reply: _Reply, played: str) -> None:
        worker = reply.worker
        if worker is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.stop_grace_s
            while not worker.finished.is_set() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if not worker.finished.is_set():
                log.warning("call %s: dialog thread still busy after cancel", self.call_ref)
        if reply.started and not self._closing:
            try:
                self.session.interrupted(played)
            except Exception:
                log.exception("call %s: dialog.interrupted failed", self.call_ref)
        reply.settled.set()

    def _finish_reply(self, reply: _Reply, *, interrupted: bool, played: str) -> None:
        if self._reply is reply:
            self._reply = None
            self._act(self.turns.agent_active(self._vad_now, False))
        self._last_reply = reply
        self._last_activity = self._now
        if interrupted:
            outcome = "interrupted"
        elif isinstance(reply.terminal, TransferRequested):
            outcome = "transfer"
        elif isinstance(reply.terminal, EndCall):
            outcome = "end_call"
        else:
            outcome = reply.outcome
        if self._closing and not interrupted:
            outcome = "hangup"

        def since(at: float | None) -> float | None:
            return None if at is None else max(0.0, at - reply.ref_at) * 1000.0

        record = TurnRecord(
            call_ref=self.call_ref, index=reply.index, kind=reply.kind,
            caller_text=reply.caller_text, confidence=reply.confidence,
            started_at=reply.ref_at, end_of_turn_ms=reply.end_of_turn_ms,
            asr_final_ms=reply.asr_final_ms, first_audio_ms=since(reply.first_audio_at),
            first_content_ms=since(reply.first_content_at), fillers=tuple(reply.fillers),
            llm_first_token_ms=since(reply.first_say_at),
            tts_first_chunk_ms=since(reply.first_chunk_at),
            first_rtp_ms=since(reply.content_ready_at),
            reply_text=reply.reply_text(), played_text=played, interrupted=interrupted,
            tools=tuple(reply.tools), outcome=outcome,
        )
        self._records.append(record)
        self._notify("turn_finished", record)

    # -- the per-frame tick --------------------------------------------------------------------

    def _tick(self) -> None:
        if self._closing:
            return
        now = self._now
        reply = self._reply
        if reply is not None and not reply.cancelled and not reply.held:
            pending = any(not c.complete or c.sent < len(c.chunks) for c in reply.clauses)
            queued = int(self.media.queued_samples)
            if reply.dialog_done and not pending and queued == 0:
                self._finish_reply(reply, interrupted=False, played=reply.played_text())
                if reply.terminal is not None:
                    self._spawn(self._follow(reply.terminal), "terminal")
            elif queued == 0 and not self._transferring:
                if reply.idle_since is None:
                    reply.idle_since = now
                self._maybe_filler(reply, now)
        if self._digits_due is not None and now >= self._digits_due:
            self._submit_digits()
        if (self._reply is None and not self.turns.in_utterance and self._eot is None
                and not self._digits and not self._transferring
                and now - self._last_activity >= self._reprompt_after()):
            self._last_activity = now
            self._start_reply("silence", self.session.silence, ref_at=now)
        if now >= self._max_call_s():
            self._end_reason = "max call length"
            self._closing_soon("max call length")

    def _maybe_filler(self, reply: _Reply, now: float) -> None:
        cfg = self.config
        if reply.kind not in ("speech", "dtmf") or len(reply.fillers) >= min(
                cfg.max_fillers_per_turn, len(cfg.fillers)) + (1 if self._acked(reply) else 0):
            return
        if reply.tool_running:
            due = (reply.idle_since or now) + cfg.tool_filler_after_s
        elif reply.first_audio_at is None:
            due = reply.ref_at + cfg.filler_after_s
        elif reply.first_content_at is None and reply.idle_since is not None:
            # Only an acknowledgement (or a filler) so far, and the line has gone quiet.
            due = max(reply.idle_since + cfg.filler_after_ack_s, reply.ref_at + cfg.filler_after_s)
        else:
            return  # between clauses of a streaming reply: the next one is coming
        if now < due:
            return
        # Never inside a clause that is half sent: only before one not started yet.
        index = next((i for i, c in enumerate(reply.clauses)
                      if not (c.complete and c.sent >= len(c.chunks))), len(reply.clauses))
        if index < len(reply.clauses) and reply.clauses[index].sent > 0:
            return
        choice = cfg.fillers[1 % len(cfg.fillers)] if reply.tool_running else cfg.fillers[0]
        if choice in reply.fillers:
            choice = next((f for f in cfg.fillers if f not in reply.fillers), choice)
        audio = self._phrase(choice)
        if audio is None or choice in reply.fillers:
            return
        reply.fillers.append(choice)
        reply.clauses.insert(index, _Clause(choice, spoken=False, chunks=[audio], complete=True))
        self._pump(reply)

    def _acked(self, reply: _Reply) -> bool:
        return bool(reply.fillers) and reply.fillers[0] in self.config.acknowledgements

    # -- acknowledgements ------------------------------------------------------------------

    def _maybe_acknowledge(self) -> None:
        """At the end of the caller's turn: "Sure." now, when the reply's words are expected
        late and nothing else is playing."""
        cfg = self.config
        threshold = cfg.ack_when_content_after_s
        if (threshold is None or not cfg.acknowledgements or self._reply is not None
                or self._transferring or int(self.media.queued_samples) > 0
                or self._content_estimate < threshold
                or (self._prepared_text is not None and not self._prepared_text.strip())):
            return
        for offset in range(len(cfg.acknowledgements)):
            text = cfg.acknowledgements[(self._acks + offset) % len(cfg.acknowledgements)]
            audio = self._phrase(text)
            if audio is not None:
                break
        else:
            return
        self._acks += 1
        start = self._position()
        self._send(audio)
        self._ack = _Clause(text, spoken=False, chunks=[audio], complete=True, sent=1,
                            spans=[(start, start + audio.size)])
        self._ack_at = self._now

    def _learn_content_time(self, reply: _Reply) -> None:
        """Follow how long the reply's words take to be ready after the end of the turn."""
        if reply.kind != "speech" or reply.decided_at is None or reply.content_ready_at is None:
            return
        seconds = max(0.0, reply.content_ready_at - reply.decided_at)
        alpha = self.config.content_ewma_alpha
        self._content_estimate += alpha * (seconds - self._content_estimate)

    def _phrase(self, text: str) -> np.ndarray | None:
        """A cached phrase without its silent edges (a filler must not add dead air)."""
        if text not in self._trimmed:
            audio = self.services.phrases.get(text)
            if audio is None:
                return None  # not cached (yet): asked again next time
            edge = self.config.phrase_edge_s
            self._trimmed[text] = _trim_silence(audio, lead_s=edge, tail_s=edge)
        return self._trimmed[text]

    async def _warm_phrases(self, texts: list[str]) -> None:
        """Synthesise phrases the start-up did not cache, through the shared TTS queue."""
        assert self._loop is not None
        loop = self._loop
        for text in texts:
            done = asyncio.Event()
            chunks: list[np.ndarray] = []

            def on_chunk(pcm: np.ndarray, chunks: list[np.ndarray] = chunks) -> None:
                chunks.append(pcm)

            def on_done(error: BaseException | None, done: asyncio.Event = done) -> None:
                try:
                    loop.call_soon_threadsafe(done.set)
                except RuntimeError:
                    pass

            self.services.tts.submit(TtsJob(f"{self.call_ref}-warm", text, CancelToken(),
                                            on_chunk, on_done))
            await done.wait()
            if chunks and self.services.phrases.get(text) is None:
                self.services.phrases.add(text, np.concatenate(chunks))

    def _reprompt_after(self) -> float:
        if self.config.reprompt_after_s is not None:
            return self.config.reprompt_after_s
        limits = getattr(getattr(self.session, "policy", None), "limits", None)
        return float(getattr(limits, "silence_reprompt_seconds", 7.0))

    def _max_call_s(self) -> float:
        if self.config.max_call_s is not None:
            return self.config.max_call_s
        limits = getattr(getattr(self.session, "policy", None), "limits", None)
        return float(getattr(limits, "max_call_seconds", 870)) + 30.0

    # -- transfer and the end ------------------------------------------------------------------

    async def _follow(self, terminal: TransferRequested | EndCall) -> None:
        if isinstance(terminal, EndCall):
            self._end_reason = f"agent: {terminal.reason}"
            self._closing_soon(self._end_reason)
            return
        self._transferring = True
        # A successful REFER makes the leg hang up, which may end this loop before the
        # await below returns: the shutdown reads the transfer from here.
        self._transfer = terminal
        result = await self.leg.transfer(terminal.uri, reason=terminal.reason,
                                         timeout=self.config.transfer_timeout_s)
        if result.ok:
            self._transferred_to = terminal.target
            self._end_reason = "transferred"
            self._closing_soon("transferred")
            return
        log.warning("call %s: transfer to %s failed: %s %s", self.call_ref, terminal.target,
                    result.status, result.reason)
        self._transferring = False
        self._transfer = None
        self._last_activity = self._now
        self._start_reply("transfer_failed",
                          functools.partial(self.session.transfer_failed, result.reason),
                          ref_at=self._now)

    def _closing_soon(self, reason: str) -> None:
        self._end_reason = self._end_reason or reason
        self._done.set()

    async def _shutdown(self, reason: str) -> None:
        """Stop everything (idempotent): workers, TTS, the reply; then the call record."""
        if self._closing:
            return
        reply = self._reply
        if reply is not None and not reply.cancelled:
            reply.cancelled = True
            reply.token.cancel()
            if reply.worker is not None:
                reply.worker.stop()
            cancel_turn = getattr(self.session, "cancel_turn", None)
            if callable(cancel_turn) and reply.started:
                cancel_turn()
            self._closing = True
            self._finish_reply(reply, interrupted=False, played=reply.played_text())
        self._closing = True
        self.services.tts.cancel_call(self.call_ref)
        self.turns.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._prefiller is not None:
            self._prefiller.stop()
        if self._asr is not None:
            self._asr.stop()
        if self._ears is not None:
            self._ears.stop()
        handoff = None
        transfer = self._transfer
        if transfer is not None and getattr(self.leg, "end_reason", None) == "transferred":
            self._transferred_to = transfer.target
            reason = "transferred"
        try:
            if self._transferred_to is not None and transfer is not None:
                handoff = transfer.handoff  # with the escalation's reason, as sent
            elif self.session is not None:
                handoff = self.session.handoff(reason)
        except Exception:
            log.exception("call %s: hand-off record failed", self.call_ref)
        assert self._loop is not None
        self._notify("call_finished", CallSummary(
            call_ref=self.call_ref, caller=str(getattr(self.leg, "caller", "")),
            started_at=0.0, ended_at=self._now, end_reason=reason,
            turns=sum(1 for r in self._records if r.kind in ("speech", "dtmf")),
            barge_ins=self._barge_ins, backchannels=self._backchannels,
            transferred_to=self._transferred_to, handoff=handoff,
            turn_records=tuple(self._records),
            transfer_uri=transfer.uri if transfer is not None and self._transferred_to else None,
        ))

    def _notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self.observer, method)(*args, **kwargs)
        except Exception:
            log.exception("call %s: observer %s failed", self.call_ref, method)

    @property
    def records(self) -> list[TurnRecord]:
        return list(self._records)


def _trim_silence(pcm: np.ndarray, *, lead_s: float | None, tail_s: float | None,
                  floor: float = 100.0) -> np.ndarray:
    """`pcm` without leading/trailing 10 ms blocks quieter than `floor` RMS (~-50 dBFS),
    keeping `lead_s`/`tail_s` of them at each end (None: leave that end alone)."""
    block = TELEPHONE_RATE // 100
    count = pcm.size // block
    if count == 0:
        return pcm
    blocks = pcm[:count * block].astype(np.float32).reshape(count, block)
    loud = np.nonzero(np.sqrt(np.mean(blocks * blocks, axis=1)) > floor)[0]
    if loud.size == 0:
        return pcm
    start, end = 0, pcm.size
    if lead_s is not None:
        start = max(0, int(loud[0]) * block - int(lead_s * TELEPHONE_RATE))
    if tail_s is not None:
        end = min(pcm.size, (int(loud[-1]) + 1) * block + int(tail_s * TELEPHONE_RATE))
    return pcm[start:end] if (start, end) != (0, pcm.size) else pcm


def agent_handler(services: AgentServices) -> Callable[[Any], Awaitable[None]]:
    """The UA's call handler: one CallLoop per answered call."""

    async def handle(leg: Any) -> None:
        if leg.media is None:
            return
        await CallLoop(leg, services).run()

    return handle
