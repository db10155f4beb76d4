"""Per-call worker threads: the ears (VAD), the ASR stream, and one dialog reply.

Each runs blocking engine code off the event loop and posts results back with
`loop.call_soon_threadsafe`. Queues are unbounded but fed at most once per 20 ms frame;
every thread ends when told to stop (or when its owner drops it: daemon threads).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from agentd.signature import accepts_keyword
from agentd.speech.interfaces import AsrEngine, AsrStream, Transcript, VadEvent, VadStream

log = logging.getLogger("agentd.call")

_STOP = object()


def post(loop: Any, callback: Callable[..., None], *args: Any) -> bool:
    """Run `callback(*args)` on the loop; False once the loop is gone."""
    try:
        loop.call_soon_threadsafe(callback, *args)
        return True
    except RuntimeError:  # the loop closed: the call is over
        return False


class Ears:
    """VAD on a thread: frames in, (stream time, probability, events) out per frame."""

    def __init__(self, loop: Any, vad: VadStream,
                 on_result: Callable[[float, float, list[VadEvent]], None],
                 name: str = "ears") -> None:
        self._loop = loop
        self._vad = vad
        self._on_result = on_result
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def feed(self, pcm: np.ndarray) -> None:
        self._inbox.put(pcm)

    def reset(self) -> None:
        self._inbox.put("reset")

    def stop(self) -> None:
        self._inbox.put(_STOP)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            if isinstance(item, str):
                self._vad.reset()
                continue
            try:
                events = self._vad.feed(item)
                probability = float(self._vad.probability)
            except Exception as exc:  # a broken VAD: report once, then hear nothing
                self.failed = exc
                log.exception("VAD failed; the call can no longer hear speech")
                return
            if not post(self._loop, self._on_result, float(self._vad.time), probability,
                        events):
                return


class AsrWorker:
    """One ASR stream at a time on a thread, in command order: open, audio, prepare,
    finish, cancel. Audio queued behind a decode is fed in one piece afterwards."""

    def __init__(self, loop: Any, engine: AsrEngine, *,
                 on_partial: Callable[[int, str], None],
                 on_prepared: Callable[[int, int, str, float], None],
                 on_final: Callable[[int, Transcript, float], None],
                 name: str = "asr") -> None:
        self._loop = loop
        self._engine = engine
        self._on_partial = on_partial
        self._on_prepared = on_prepared
        self._on_final = on_final
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stream: AsrStream | None = None
        self._stream_id = 0
        self._quiet = False  # a final is being prepared: skip partial decodes meanwhile
        self._partial_kw: bool | None = None
        self._pushed_back: list[tuple[str, Any]] = []  # at most one command read too early
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- commands (event loop side) --

    def open(self, utterance: int, preroll: np.ndarray) -> None:
        self._inbox.put(("open", (utterance, preroll)))

    def audio(self, pcm: np.ndarray) -> None:
        self._inbox.put(("audio", pcm))

    def speech(self) -> None:
        """The caller speaks again: partials are worth decoding."""
        self._inbox.put(("speech", None))

    def prepare(self, seq: int) -> None:
        self._inbox.put(("prepare", seq))

    def finish(self) -> None:
        self._inbox.put(("finish", None))

    def cancel(self) -> None:
        """Drop the utterance now (a decode in progress is abandoned where it can be)."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.cancel()
            except Exception:
                pass
        self._inbox.put(("cancel", None))

    def stop(self) -> None:
        self.cancel()
        self._inbox.put(("stop", None))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the thread --

    def _run(self) -> None:
        while True:
            kind, value = self._next()
            if kind == "stop":
                return
            try:
                if kind == "audio":
                    self._accept(self._gather_audio(value))
                else:
                    self._command(kind, value)
            except Exception:
                log.exception("ASR failed; the utterance is dropped")
                self._close(cancel=True)

    def _next(self) -> tuple[str, Any]:
        if self._pushed_back:
            return self._pushed_back.pop()
        return self._inbox.get()

    def _gather_audio(self, first: np.ndarray) -> np.ndarray:
        """This chunk plus any audio queued right behind it (one accept for all)."""
        parts = [first]
        while not self._pushed_back:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] != "audio":
                self._pushed_back.append(item)  # handled next, in order
                break
            parts.append(item[1])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _command(self, kind: str, value: Any) -> None:
        if kind == "open":
            self._close(cancel=True)
            utterance, preroll = value
            stream = self._engine.open_stream()
            with self._lock:
                self._stream = stream
                self._stream_id = utterance
            self._quiet = False
            if preroll.size:
                self._accept(preroll)
        elif kind == "speech":
            self._quiet = False
        elif kind == "prepare":
            self._quiet = True
            stream = self._stream
            if stream is None:
                return
            started = time.perf_counter()
            prepare = getattr(stream, "prepare_final", None)
            result = prepare() if callable(prepare) else None
            text = result.text if result is not None else ""
            if result is None and not callable(prepare):
                text = ""  # engines without it: the turn ends on the VAD's timing alone
            post(self._loop, self._on_prepared, self._stream_id, int(value), text,
                 (time.perf_counter() - started) * 1000.0)
        elif kind == "finish":
            stream = self._stream
            if stream is None:
                return
            started = time.perf_counter()
            transcript = stream.finish()
            utterance = self._stream_id
            with self._lock:
                self._stream = None
            post(self._loop, self._on_final, utterance, transcript,
                 (time.perf_counter() - started) * 1000.0)
        elif kind == "cancel":
            self._close(cancel=True)

    def _accept(self, pcm: np.ndarray) -> None:
        stream = self._stream
        if stream is None or not pcm.size:
            return
        if self._partial_kw is None:
            self._partial_kw = accepts_keyword(stream.accept, "partial")
        if self._partial_kw:
            partial = stream.accept(pcm, partial=not self._quiet)  # type: ignore[call-arg]
        else:
            partial = stream.accept(pcm)
        if partial is not None and partial.text:
            post(self._loop, self._on_partial, self._stream_id, partial.text)

    def _close(self, *, cancel: bool) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None and cancel:
            try:
                stream.cancel()
            except Exception:
                pass


class DialogWorker:
    """Runs one dialog generator (a turn, a re-prompt...) on a thread, posting each event."""

    def __init__(self, loop: Any, produce: Callable[[], Iterator[Any]],
                 on_event: Callable[[Any], None],
                 on_done: Callable[[BaseException | None], None],
                 name: str = "dialog") -> None:
        self._loop = loop
        self._produce = produce
        self._on_event = on_event
        self._on_done = on_done
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            events = self._produce()
            try:
                for event in events:
                    if self._stop.is_set():
                        break
                    post(self._loop, self._on_event, event)
                    if self._stop.is_set():
                        break
            finally:
                close = getattr(events, "close", None)
                if callable(close):
                    close()
        except Exception as exc:  # the dialog's own failures are reported, never lost
            error = exc
            log.exception("dialog failed")
        finally:
            self.finished.set()
            post(self._loop, self._on_done, error)


class Prefiller:
    """Runs the dialog's `prefill(text)` on one thread, newest request first.

    Partial transcripts arrive faster than a small CPU evaluates them: a request that comes
    while one runs replaces any still waiting (only the latest words matter), and a final
    request (the prepared transcript) is never replaced by a partial, whatever the prefill
    does with it (`final=True` is passed only to a prefill that takes `final`, where
    `final_kw`). `interrupt()` stops the running one at its next step (where the prefill
    takes `stop`) and drops a waiting partial: the CPU is wanted elsewhere (the final
    transcript is being decoded)."""

    def __init__(self, prefill: Callable[..., None], *, final_kw: bool, stop_kw: bool = False,
                 name: str = "prefill") -> None:
        self._prefill = prefill
        self._final_kw = final_kw
        self._stop_kw = stop_kw
        self._interrupted = threading.Event()
        self._cond = threading.Condition()
        self._next: tuple[str, bool] | None = None
        self._stopped = False
        self.done = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self, text: str, *, final: bool = False) -> None:
        with self._cond:
            if self._next is not None and self._next[1] and not final:
                return  # a final request waits: the partial is older news
            self._next = (text, final)
            self._cond.notify()

    def interrupt(self) -> None:
        with self._cond:
            if self._next is not None and not self._next[1]:
                self._next = None
            self._interrupted.set()

    def stop(self) -> None:
        self._interrupted.set()
        with self._cond:
            self._stopped = True
            self._next = None
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._next is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                assert self._next is not None
                text, final = self._next
                self._next = None
                self._interrupted.clear()
            kwargs: dict[str, Any] = {"final": True} if final and self._final_kw else {}
            if self._stop_kw:
                kwargs["stop"] = self._interrupted.is_set
            try:
                self._prefill(text, **kwargs)
            except Exception as exc:  # speculative work: a failure costs only the speed-up
                log.debug("prefill failed: %s", exc)
            self.done += 1
