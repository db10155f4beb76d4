"""Fakes for the call loop: a lock-step media session, amplitude-coded speech engines, a
scripted dialog session and a leg. Caller "speech" is a constant amplitude; the fake ASR
maps each amplitude to a phrase, so a test says what the caller said by how loud it is."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentd.call.events import BargeInRecord, CallSummary, TurnRecord
from agentd.dialog.types import DialogEvent, HandoffRecord, Say
from agentd.sip.callleg import TransferResult
from agentd.speech.interfaces import (
    CancelToken,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    VadConfig,
    VadEvent,
)

FRAME = 160
RATE = 8000
SAMPLES_PER_WORD = 2400  # the fake TTS speaks 0.3 s per word


# ---- speech engines ---------------------------------------------------------------------------


class FakeVadStream:
    """Speech = frames louder than 100; SpeechStarted after min_speech_ms (dated back),
    SpeechEnded after end_of_turn_ms of quiet. Counts frames fed (for lock-step media)."""

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self.fed = 0
        self.samples = 0
        self._probability = 0.0
        self._run_start: float | None = None
        self._speaking = False
        self._quiet_since: float | None = None
        self.confirmed: list[float] = []  # stream times of SpeechStarted decisions

    @property
    def probability(self) -> float:
        return self._probability

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def time(self) -> float:
        return self.samples / RATE

    def reset(self) -> None:
        self._run_start = None
        self._speaking = False
        self._quiet_since = None

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        start = self.time
        self.samples += pcm.size
        self.fed += 1
        now = self.time
        loud = float(np.abs(pcm.astype(np.int32)).mean()) > 100
        self._probability = 0.9 if loud else 0.05
        events: list[VadEvent] = []
        if loud:
            self._quiet_since = None
            if self._run_start is None:
                self._run_start = start
            min_speech = self.config.min_speech_ms / 1000 - 1e-6
            if not self._speaking and now - self._run_start >= min_speech:
                self._speaking = True
                self.confirmed.append(now)
                events.append(SpeechStarted(at=self._run_start, probability=0.9))
        else:
            if not self._speaking:
                self._run_start = None
            else:
                if self._quiet_since is None:
                    self._quiet_since = start
                if now - self._quiet_since >= self.config.end_of_turn_ms / 1000 - 1e-6:
                    events.append(SpeechEnded(at=self._quiet_since,
                                              duration=self._quiet_since - (self._run_start or 0)))
                    self._speaking = False
                    self._run_start = None
                    self._quiet_since = None
        return events


class FakeVad:
    name = "fake-vad"

    def __init__(self) -> None:
        self.streams: list[FakeVadStream] = []

    def stream(self, config: VadConfig | None = None) -> FakeVadStream:
        stream = FakeVadStream(config or VadConfig())
        self.streams.append(stream)
        return stream


class FakeAsrStream:
    def __init__(self, engine: FakeAsr) -> None:
        self.engine = engine
        self.audio: list[np.ndarray] = []
        self.cancelled = False

    def _text(self) -> str:
        if not self.audio:
            return ""
        pcm = np.abs(np.concatenate(self.audio).astype(np.int32))
        loud = pcm[pcm > 100]
        if not loud.size:
            return ""
        level = int(np.bincount(loud).argmax())
        return self.engine.phrases.get(level, "")

    def accept(self, pcm: np.ndarray) -> Transcript | None:
        self.audio.append(np.asarray(pcm))
        return None

    def prepare_final(self) -> Transcript | None:
        time.sleep(self.engine.decode_s)
        return None if self.cancelled else Transcript(self._text(), final=False)

    def finish(self) -> Transcript:
        time.sleep(self.engine.decode_s / 4)
        return Transcript("" if self.cancelled else self._text(), final=True, confidence=0.9)

    def cancel(self) -> None:
        self.cancelled = True


class FakeAsr:
    name = "fake-asr"
    language = "en"

    def __init__(self, phrases: dict[int, str], decode_s: float = 0.005) -> None:
        self.phrases = phrases
        self.decode_s = decode_s
        self.streams: list[FakeAsrStream] = []

    def open_stream(self) -> FakeAsrStream:
        stream = FakeAsrStream(self)
        self.streams.append(stream)
        return stream


class FakeTts:
    name = "fake-tts"
    voice = "v"
    native_rate = RATE

    def __init__(self) -> None:
        self.texts: list[str] = []

    def synthesize(self, text: str, cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
        self.texts.append(text)
        total = max(1, len(text.split())) * SAMPLES_PER_WORD
        for start in range(0, total, 800):
            if cancel is not None and cancel.cancelled:
                return
            yield np.full(min(800, total - start), 500, dtype=np.int16)


def tts_samples(text: str) -> int:
    return max(1, len(text.split())) * SAMPLES_PER_WORD


# ---- media and leg ------------------------------------------------------------------------------


class FakeMedia:
    """Plays 160 queued samples per frame tick and yields one caller frame per tick, in lock
    step with the VAD (the next frame waits until the previous one was analysed)."""

    def __init__(self, vad: FakeVad, pace_s: float = 0.002, max_frames: int = 3000,
                 echo_gain: float = 0.0) -> None:
        self.vad = vad
        self.echo_gain = echo_gain  # the line returns this share of what was played
        self.pace_s = pace_s
        self.max_frames = max_frames
        self.caller: deque[np.ndarray] = deque()
        self.queue: deque[np.ndarray] = deque()
        self.played_samples = 0
        self.tick = 0
        self.played_at: list[int] = []  # agent samples played per tick
        self.sends: list[tuple[int, int]] = []  # (tick, samples)
        self.flushes: list[int] = []  # ticks
        self.closed = False
        self.last_played = np.zeros(FRAME, np.int16)

    # caller script
    def say(self, amplitude: int, seconds: float) -> None:
        self._caller(np.full(int(seconds * RATE), amplitude, dtype=np.int16))

    def pause(self, seconds: float) -> None:
        self._caller(np.zeros(int(seconds * RATE), dtype=np.int16))

    def _caller(self, pcm: np.ndarray) -> None:
        for start in range(0, pcm.size, FRAME):
            frame = pcm[start:start + FRAME]
            if frame.size < FRAME:
                frame = np.concatenate([frame, np.zeros(FRAME - frame.size, np.int16)])
            self.caller.append(frame)

    # RtpSession's surface
    @property
    def queued_samples(self) -> int:
        return sum(c.size for c in self.queue)

    def send(self, pcm: np.ndarray) -> None:
        assert pcm.dtype == np.int16
        if pcm.size and not self.closed:
            self.queue.append(pcm.reshape(-1).copy())
            self.sends.append((self.tick, pcm.size))

    def flush(self) -> int:
        dropped = self.queued_samples
        self.queue.clear()
        self.flushes.append(self.tick)
        return dropped

    def close(self) -> None:
        self.closed = True

    def _play(self) -> None:
        need, played = FRAME, 0
        out = np.zeros(FRAME, np.int16)
        while need and self.queue:
            head = self.queue[0]
            take = min(need, head.size)
            out[played:played + take] = head[:take]
            if take == head.size:
                self.queue.popleft()
            else:
                self.queue[0] = head[take:]
            need -= take
            played += take
        self.played_samples += played
        self.played_at.append(played)
        self.last_played = out

    async def frames(self) -> Any:
        while not self.closed and self.tick < self.max_frames:
            stream = self.vad.streams[-1] if self.vad.streams else None
            deadline = time.monotonic() + 2.0
            while stream is not None and stream.fed < self.tick and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(self.pace_s)
            if self.closed:
                return
            self._play()
            self.tick += 1
            frame = self.caller.popleft() if self.caller else np.zeros(FRAME, np.int16)
            if self.echo_gain:
                echo = self.last_played.astype(np.float64) * self.echo_gain
                frame = np.clip(frame + echo, -32768, 32767).astype(np.int16)
            yield frame

    def last_audio_tick(self, before: int | None = None) -> int:
        ticks = [i for i, n in enumerate(self.played_at) if n and (before is None or i < before)]
        return ticks[-1] if ticks else -1


class FakeLeg:
    def __init__(self, media: FakeMedia, transfer_ok: bool = True) -> None:
        self.media = media
        self.dtmf: asyncio.Queue[str] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.caller = "5551234"
        self.reference = "ref1"
        self.transfer_ok = transfer_ok
        # The real leg sends BYE after a successful REFER and waits for its answer: the
        # call has ended well before transfer() returns.
        self.bye_wait_s = 0.0
        self.transfers: list[tuple[str, str | None, int, int]] = []  # uri, reason, queued, played
        self.hangups: list[str] = []

    async def transfer(self, target: str, *, reason: str | None = None,
                       timeout: float = 32.0) -> TransferResult:
        self.transfers.append((target, reason, self.media.queued_samples,
                               self.media.played_samples))
        await asyncio.sleep(0.01)
        if self.transfer_ok:
            self.remote_hangup("transferred")
            await asyncio.sleep(self.bye_wait_s)
            return TransferResult(True, 200, "OK")
        return TransferResult(False, 486, "Busy Here")

    async def hangup(self, reason: str = "normal") -> None:
        self.hangups.append(reason)
        self.remote_hangup(reason)

    def remote_hangup(self, reason: str = "remote hangup") -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            self.media.close()


# ---- dialog -------------------------------------------------------------------------------------

Script = list[DialogEvent | Callable[[], None]]


@dataclass
class FakeLimits:
    silence_reprompt_seconds: float = 30.0
    max_call_seconds: int = 600


@dataclass
class FakeDtmfPolicy:
    mapped: set[str] = field(default_factory=set)
    limits: FakeLimits = field(default_factory=FakeLimits)

    def dtmf_action(self, key: str) -> object | None:
        return object() if key in self.mapped else None


class FakeSession:
    """Scripted replies: each turn pops the next script (events, or callables run in the
    dialog thread, e.g. to block until the test releases them)."""

    def __init__(self, greeting: str = "Hello, how can I help?") -> None:
        self.greeting_line = greeting
        self.scripts: deque[Script] = deque()
        self.turns: list[tuple[str, bool]] = []
        self.interruptions: list[str] = []
        self.silences = 0
        self.transfer_failures: list[str] = []
        self.failure_script: Script = [Say("Sorry, nobody is free.")]
        self.cancelled = threading.Event()
        self.policy = FakeDtmfPolicy()

    def greeting(self) -> str:
        return self.greeting_line

    def _play(self, script: Script) -> Iterator[DialogEvent]:
        for item in script:
            if callable(item) and not isinstance(item, Say):
                item()
                if self.cancelled.is_set():
                    return
                continue
            yield item  # type: ignore[misc]

    def turn(self, caller_text: str, *, confidence: float | None = None,
             dtmf: bool = False) -> Iterator[DialogEvent]:
        self.turns.append((caller_text, dtmf))
        self.cancelled.clear()
        script = self.scripts.popleft() if self.scripts else [Say("Okay.")]
        return self._play(script)

    def interrupted(self, played_text: str) -> None:
        self.interruptions.append(played_text)

    def silence(self) -> Iterator[DialogEvent]:
        self.silences += 1
        yield Say("Are you still there?")

    def transfer_failed(self, reason: str) -> Iterator[DialogEvent]:
        self.transfer_failures.append(reason)
        return self._play(self.failure_script)

    def cancel_turn(self) -> None:
        self.cancelled.set()

    def handoff(self, reason: str | None = None) -> HandoffRecord:
        return HandoffRecord("ref1", "5551234", "summary", reason, (), {}, ())


class FakeEngine:
    def __init__(self, session: FakeSession) -> None:
        self.session = session

    def new_session(self, *, caller_id: str | None = None,
                    call_ref: str | None = None) -> FakeSession:
        return self.session


class Observer:
    def __init__(self) -> None:
        self.turns: list[TurnRecord] = []
        self.barge_ins: list[BargeInRecord] = []
        self.finished: list[CallSummary] = []
        self.started: list[str] = []

    def call_started(self, call_ref: str, caller: str, at: float, *, call_id: str = "") -> None:
        self.started.append(call_ref)

    def turn_finished(self, record: TurnRecord) -> None:
        self.turns.append(record)

    def barge_in(self, record: BargeInRecord) -> None:
        self.barge_ins.append(record)

    def call_finished(self, summary: CallSummary) -> None:
        self.finished.append(summary)


def wait_block() -> tuple[threading.Event, Callable[[], None]]:
    """An event and a script step that blocks the dialog thread until it is set."""
    release = threading.Event()

    def block() -> None:
        release.wait(10)

    return release, block
