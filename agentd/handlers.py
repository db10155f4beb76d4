"""Which call handler answers calls: the AI agent (a `dialog:` section) or a line test.

`CallHandlers` builds the handler for a config and keeps what is expensive across reloads:
the loaded models (speech engines, the LLM), the call-records store with its retention task,
and the metrics endpoint. A reload that changes only the policy builds a new dialog engine
around the same models, so it costs milliseconds and never stalls calls in progress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agentd.config import Config
from agentd.linetest import echo_handler, playback_handler
from agentd.sip.callleg import CallLeg
from agentd.sip.ua import UserAgent

log = logging.getLogger("agentd.handlers")

CallHandler = Callable[[CallLeg], Awaitable[None]]


def line_test_handler(config: Config) -> CallHandler:
    app = config.app
    transfers = dict(app.dtmf_transfer)
    if app.mode == "playback":
        assert app.playback_file is not None
        return playback_handler(app.playback_file, transfers)
    return echo_handler(app.echo_delay_ms, transfers)


class AgentHandler:
    """The AI agent as the UA's call handler: one call loop per answered call."""

    def __init__(self, services: Any, owner: CallHandlers) -> None:
        self.services = services
        self._owner = owner

    async def __call__(self, leg: CallLeg) -> None:
        from agentd.call.loop import CallLoop

        if leg.media is None:
            return
        recorder = self._owner.open_recorder(leg)
        try:
            await CallLoop(leg, self.services).run()
        finally:
            if recorder is not None:
                leg.media.recorder = None
                recorder.close()

    async def say_goodbye(self, leg: CallLeg) -> None:
        """Shutdown: say the policy's goodbye line, then return once it has played."""
        if leg.media is None:
            return
        text = self.services.dialog.policy.agent.goodbye
        phrases = self.services.phrases
        if phrases.get(text) is None:  # warmed at start-up; made now only if that failed
            await asyncio.to_thread(phrases.warm, [text])
        pcm = phrases.get(text)
        if pcm is None:
            return
        leg.media.flush()
        leg.media.send(pcm)
        while leg.media.queued_samples > 0 and not leg.ended.is_set():
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self._owner.close()


class CallHandlers:
    """Builds call handlers for successive configs (start-up, reloads); see module doc."""

    def __init__(self) -> None:
        self._services: Any = None
        self._speech_key: str | None = None
        self._llm_key: str | None = None
        self.records: Any = None
        self.metrics: Any = None
        self._observer: Any = None
        self._retention: asyncio.Task[None] | None = None
        self._closed = False

    # ---- building ----------------------------------------------------------------------

    def build(self, config: Config) -> CallHandler:
        """The handler for `config` (blocking when models must load: run in a thread)."""
        self._open_observers(config)
        if not config.dialog.enabled:
            return line_test_handler(config)
        from agentd.call.app import build_services, cached_phrases, loop_config
        from agentd.dialog.agent import DialogEngine

        speech_key = config.speech.model_dump_json()
        llm_key = config.dialog.llm.model_dump_json()
        if self._services is None or speech_key != self._speech_key:
            services = build_services(config, observer=self._observer)
        else:
            # Same speech models: a new policy (and tools) around the loaded engines; the
            # LLM too unless its settings changed.
            from agentd.speech.factory import speech_store

            old = self._services
            llm = old.dialog.llm if llm_key == self._llm_key else None
            engine = DialogEngine.from_config(
                config.dialog, model_store=speech_store(config.speech), llm=llm
            )
            if llm is None:
                from agentd.call.scheduler import ScheduledLlm

                engine.llm = ScheduledLlm(engine.llm)
            engine.warm_cache()  # a new policy means a new system prompt to cache
            call_config = loop_config(config)
            old.phrases.warm(cached_phrases(engine.policy, call_config))
            services = dataclasses.replace(old, dialog=engine, config=call_config)
        self._services, self._speech_key, self._llm_key = services, speech_key, llm_key
        if self.metrics is not None:
            self.metrics.watch_llm(services.dialog.llm)
        return AgentHandler(services, self)

    def _open_observers(self, config: Config) -> None:
        """Records and metrics open once, from the first config (a reload keeps them)."""
        if self._observer is not None:
            return
        from agentd.call.events import LogObserver, ObserverFanout
        from agentd.metrics import start_metrics
        from agentd.records.observer import open_records
        from agentd.records.store import RecordError

        observers: list[Any] = [LogObserver()]
        try:
            self.records = open_records(config.records)
            observers.append(self.records)
        except RecordError as exc:
            # Calls are still answered; the operator sees why nothing is recorded.
            log.error("call records are off: %s", exc)
        self.metrics = start_metrics(config.metrics)
        if self.metrics is not None:
            observers.append(self.metrics)
        self._observer = ObserverFanout(observers)
        self._retention_args = (config.records.retention_days, config.records.recordings_path)

    def attach(self, ua: UserAgent) -> None:
        """The UA exists: export its counters and registration state, start retention."""
        from agentd.records.retention import run_retention

        if self.metrics is not None:
            self.metrics.watch_user_agent(ua)
            ua.add_registration_listener(self.metrics.on_registration)
        if self.records is not None and self._retention is None:
            days, directory = self._retention_args
            self._retention = asyncio.get_running_loop().create_task(
                run_retention(self.records.store, days, directory)
            )

    def open_recorder(self, leg: CallLeg) -> Any:
        """A stereo WAV recorder for the call when `records.recording` is on."""
        if self.records is None or leg.media is None:
            return None
        recorder = self.records.open_recorder(
            leg.reference, asyncio.get_running_loop().time()
        )
        if recorder is not None:
            leg.media.recorder = recorder
        return recorder

    # ---- end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release shared engines, the records store and the metrics endpoint (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._retention is not None:
            self._retention.cancel()
        if self._services is not None:
            self._services.tts.close()
        if self.metrics is not None:
            self.metrics.stop_http()
        if self.records is not None:
            self.records.store.close()
