"""One real call on loopback with the real engines: Silero VAD, Whisper, hibari (or espeak)
TTS, and the real DialogEngine with a scripted LLM. A raw UDP peer places the call, waits for
the greeting, says a sentence as G.711 RTP in real time and listens for the agent's reply.
Skips when a model or engine is missing. Prints the latency from the true end of the
caller's speech to the first agent audio on the wire."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from agentd.call.loop import AgentServices, CallLoopConfig, agent_handler
from agentd.call.phrases import PhraseBook, policy_phrases
from agentd.call.scheduler import ScheduledLlm, TtsScheduler
from agentd.call.turns import TurnConfig
from agentd.dialog.agent import DialogEngine, ScriptedLlm
from agentd.dialog.policy import parse_policy
from agentd.media.g711 import ulaw_decode, ulaw_encode
from agentd.sip.sdp import parse_sdp
from agentd.sip.security import parse_networks
from agentd.sip.transaction import TransactionConfig
from agentd.sip.ua import UaSettings, UserAgent
from agentd.speech.interfaces import VadConfig
from tests.call.fakes import Observer
from tests.sip.peer import SipPeer, UdpSocket, rtp_packet, sdp_offer
from tests.speech.conftest import require_model, speak_espeak, speech_edges

pytestmark = pytest.mark.timeout(120)

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
REPLY = {"say": "Sure, which day would suit you?", "action": {"type": "none"}}
UTTERANCE = "I would like to book an appointment please."
FAST = TransactionConfig(t1=0.05, t2=0.4, t4=0.2, timer_d=0.2, trying_delay=0.2)
SETTINGS = UaSettings(
    extension="2001", registrar=("127.0.0.1", 9), domain="127.0.0.1", auth_user="2001",
    password="secret", local_host="127.0.0.1", local_port=0, register=False,
    trusted_sources=parse_networks(["127.0.0.1/32"]), rtp_port_min=43000,
    rtp_port_max=43999, codecs=("PCMU",),
)
AUDIBLE_RMS = 300.0


def _tts():  # type: ignore[no-untyped-def]
    try:
        from agentd.speech.tts_hibari import HibariTts

        return HibariTts(1)
    except Exception:
        import shutil

        from agentd.speech.tts_espeak import EspeakTts

        if shutil.which("espeak-ng") is None:
            pytest.skip("no TTS engine: install hibari-tts or espeak-ng")
        return EspeakTts("en-us")


@pytest.fixture(scope="module")
def engines():  # type: ignore[no-untyped-def]
    from agentd.speech.asr_whisper import WhisperAsr
    from agentd.speech.vad_silero import SileroVad

    vad = SileroVad(require_model("silero-vad", "silero_vad.onnx"))
    asr = WhisperAsr(require_model("whisper-tiny-en"))
    tts = _tts()
    return vad, asr, tts


async def test_caller_sentence_gets_a_spoken_reply(  # type: ignore[no-untyped-def]
        engines, capsys) -> None:
    vad, asr, tts_engine = engines
    policy = parse_policy(POLICY)
    llm = ScriptedLlm([REPLY])
    dialog = DialogEngine(policy, ScheduledLlm(llm), {})
    config = CallLoopConfig(vad=VadConfig(min_speech_ms=200, end_of_turn_ms=400),
                            turns=TurnConfig(end_of_turn_s=0.4))
    phrases = PhraseBook(tts_engine)
    phrases.warm([*policy_phrases(policy), *config.fillers])
    observer = Observer()
    tts = TtsScheduler(tts_engine)
    services = AgentServices(vad=vad, asr=asr, tts=tts, phrases=phrases, dialog=dialog,
                             config=config, observer=observer)
    ua = UserAgent(replace(SETTINGS), agent_handler(services), transaction_config=FAST)
    await ua.start()
    peer = await SipPeer.open(ua.local_address)
    rtp = await UdpSocket.open()
    heard: list[tuple[float, float]] = []  # (arrival, RMS) of each agent packet

    async def listen() -> None:
        while True:
            got = await rtp.recv(timeout=5.0)
            if got is None:
                continue
            pcm = ulaw_decode(np.frombuffer(got[0][12:], dtype=np.uint8))
            rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
            heard.append((time.monotonic(), rms))

    listener = asyncio.ensure_future(listen())
    try:
        call = peer.new_call()
        peer.invite(call, sdp_offer(rtp.address[1], "0 101"))
        ok = await peer.response(200, "INVITE", timeout=5)
        peer.ack(call, ok)
        agent_rtp = ("127.0.0.1", parse_sdp(ok.body).media[0].port)
        # Wait for the greeting to play out (audio, then 0.6 s of quiet).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            loud = [t for t, rms in heard if rms > AUDIBLE_RMS]
            if loud and time.monotonic() - loud[-1] > 0.6:
                break
        assert any(rms > AUDIBLE_RMS for _, rms in heard), "no greeting heard"
        greeting_end = len(heard)

        clip = np.concatenate([np.zeros(2400, np.int16), speak_espeak(UTTERANCE),
                               np.zeros(8000 * 4, np.int16)])
        _, speech_end_s = speech_edges(clip)
        payload = ulaw_encode(clip)
        started = time.monotonic()
        for i in range(len(clip) // 160):
            target = started + i * 0.02
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rtp.sendto(rtp_packet(i + 1, i * 160, bytes(payload[i * 160:(i + 1) * 160]),
                                  pt=0, marker=i == 0), agent_rtp)
            if any(rms > AUDIBLE_RMS for _, rms in heard[greeting_end:]) and \
                    time.monotonic() - started > speech_end_s + 2.5:
                break
        speech_end = started + speech_end_s
        replies = [(t, rms) for t, rms in heard[greeting_end:] if rms > AUDIBLE_RMS]
        assert replies, "the agent did not answer"
        latency_ms = (replies[0][0] - speech_end) * 1000.0
        await asyncio.sleep(0.3)
        speech = [r for r in observer.turns if r.kind == "speech"]
        assert speech, "no turn record"
        record = speech[0]
        assert "appointment" in record.caller_text.lower()
        assert llm.calls and "appointment" in llm.calls[0][-1].content.lower()
        assert 0 < latency_ms < 3000
        with capsys.disabled():
            print(f"\nlive call: caller said {record.caller_text!r}; end of speech -> first "
                  f"agent audio on the wire {latency_ms:.0f} ms (loop's record: end of turn "
                  f"{record.end_of_turn_ms:.0f} ms, first audio {record.first_audio_ms:.0f} "
                  f"ms, first content {record.first_content_ms:.0f} ms; "
                  f"TTS {tts_engine.name})")
        peer.in_dialog("BYE", call)
        await peer.response(method="BYE", final=True, timeout=5)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await asyncio.wait_for(ua.stop(), 10)
        peer.close()
        rtp.close()
        tts.close()
