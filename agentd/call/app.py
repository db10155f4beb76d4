"""Start-up wiring: build the shared engines once (VAD, ASR, TTS, phrases, dialog with a
scheduled LLM) from the config and hand out the per-call handler."""

from __future__ import annotations

import logging
from typing import Any

from agentd.call.echo import EchoConfig
from agentd.call.events import CallObserver, LogObserver
from agentd.call.loop import AgentServices, CallLoopConfig, agent_handler
from agentd.call.phrases import PhraseBook, policy_phrases
from agentd.call.scheduler import ScheduledLlm, TtsScheduler
from agentd.call.turns import TurnConfig

log = logging.getLogger("agentd.call")

__all__ = ["agent_handler", "build_services", "cached_phrases", "loop_config"]


def loop_config(config: Any) -> CallLoopConfig:
    """The call loop's settings: the `call:` section, with the turn-taking thresholds from
    `speech.vad` (the VAD and the turn logic must agree)."""
    from agentd.speech.factory import vad_config

    vad = vad_config(config.speech)
    call = config.call
    return CallLoopConfig(
        vad=vad,
        turns=TurnConfig(
            threshold=vad.threshold,
            neg_threshold=vad.neg_threshold,
            end_of_turn_s=vad.end_of_turn_ms / 1000,
            fast_end_of_turn_s=call.fast_end_of_turn_s,
            fast_end_min_words=call.fast_end_min_words,
            incomplete_hold_s=call.incomplete_hold_s,
            backchannel_max_s=call.backchannel_max_s,
            hold_max_s=call.hold_max_s,
            early_hold_s=call.early_hold_s,
            backchannels=frozenset(call.backchannels),
        ),
        preroll_s=call.preroll_s,
        fillers=tuple(call.fillers),
        filler_after_s=call.filler_after_s,
        tool_filler_after_s=call.tool_filler_after_s,
        max_fillers_per_turn=call.max_fillers_per_turn,
        acknowledgements=tuple(call.acknowledgements),
        ack_when_content_after_s=call.ack_when_content_after_s,
        filler_after_ack_s=call.filler_after_ack_s,
        prefill=call.prefill,
        echo=EchoConfig(enabled=call.echo_guard, max_delay_ms=call.echo_max_delay_ms),
        dtmf_gap_s=call.dtmf_gap_s,
        reprompt_after_s=call.reprompt_after_s,
    )


def cached_phrases(policy: Any, call_config: CallLoopConfig) -> list[str]:
    """Every fixed line a call may say: synthesised once, played from the cache."""
    return [*policy_phrases(policy), *call_config.fillers, *call_config.acknowledgements]


def build_services(config: Any, observer: CallObserver | None = None,
                   call_config: CallLoopConfig | None = None) -> AgentServices:
    """Load every model once (blocking: call it in a thread at start-up) and warm the
    phrases (greeting, fillers, the policy's fixed lines)."""
    from agentd.dialog.agent import DialogEngine
    from agentd.speech.factory import (
        build_asr,
        build_phrase_cache,
        build_tts,
        build_vad,
        speech_store,
    )

    store = speech_store(config.speech)
    vad = build_vad(config.speech, store)
    asr = build_asr(config.speech, store)
    tts_engine = build_tts(config.speech, store)
    phrases = PhraseBook(tts_engine, build_phrase_cache(config.speech, tts_engine))
    engine = DialogEngine.from_config(config.dialog, model_store=store)
    engine.llm = ScheduledLlm(engine.llm)  # one generation at a time across calls
    engine.warm_cache()  # the shared prompt prefix, so no call's first turn evaluates it
    call_config = call_config or loop_config(config)
    made = phrases.warm(cached_phrases(engine.policy, call_config))
    log.info("agent ready: %s VAD, %s ASR, %s TTS, %d phrases synthesised", vad.name,
             asr.name, tts_engine.name, made)
    return AgentServices(vad=vad, asr=asr, tts=TtsScheduler(tts_engine), phrases=phrases,
                         dialog=engine, config=call_config,
                         observer=observer if observer is not None else LogObserver())
