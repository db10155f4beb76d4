"""agentd against real Kamailio, baresip and SIPp on loopback (issue "SIP user agent", part 5).

agentd runs as `python -m agentd run -c <config>` (tests/harness/agentd.py), registered at
the test Kamailio as 2001 with the echo line-test app; baresip phones and SIPp call it.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import sipp
from tests.harness.agentd import (
    Agentd,
    LoopbackRtpCapture,
    established_tcp,
    summarise_streams,
    write_rtp_pcap,
)
from tests.harness.audio import analyse_wav, tone
from tests.harness.baresip import Baresip
from tests.harness.kamailio import Kamailio
from tests.harness.ports import PortAllocator

from .conftest import PhoneFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FREQ_TOLERANCE_HZ = 5.0
TONE_LEVEL_DBFS = -12.0      # what the phones and the SIPp capture send
LEVEL_TOLERANCE_DB = 4.0     # G.711 twice (there and back) plus jitter-buffer edges
EXTENSION = "2001"

AgentdFactory = Callable[..., Agentd]


@pytest.fixture
def agentd_factory(tmp_path: Path, kamailio: Kamailio,
                   port_allocator: PortAllocator) -> Iterator[AgentdFactory]:
    """make(start=True, wait_registration=True, **Agentd kwargs) -> agentd at `kamailio`.

    Every agentd made is stopped (SIGTERM, then SIGKILL) at teardown, pass or fail.
    """
    made: list[Agentd] = []

    def make(*, start: bool = True, wait_registration: bool = True,
             rtp_port_count: int = 40, **kwargs: Any) -> Agentd:
        agent = Agentd(tmp_path / f"agentd-{len(made)}", registrar_port=kamailio.port,
                       sip_port=port_allocator.port(),
                       rtp_port_min=port_allocator.port_range(rtp_port_count),
                       rtp_port_count=rtp_port_count, **kwargs)
        made.append(agent)
        if start:
            agent.start(kamailio, wait_registration=wait_registration)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            agent.stop()


def assert_hears(phone: Baresip, freq_hz: float, *, recording: int = -1,
                 min_active: float = 0.6) -> None:
    """The phone's received recording is the tone `freq_hz` at the phones' level."""
    wavs = phone.received_wavs()
    assert wavs, f"phone {phone.extension} recorded nothing"
    result = analyse_wav(wavs[recording])
    assert result.duration_s > 0.5, result
    assert result.active_fraction > min_active, result
    assert abs(result.dominant_hz - freq_hz) < FREQ_TOLERANCE_HZ, result
    assert abs(result.active_rms_dbfs - TONE_LEVEL_DBFS) < LEVEL_TOLERANCE_DB, result


def register_requests(kamailio: Kamailio, extension: str = EXTENSION) -> int:
    """REGISTERs for `extension` that reached Kamailio (its route logs each request)."""
    return len(re.findall(rf"REQ REGISTER \S+ from .*\(sip:{extension}@",
                          kamailio.log_text()))


def call_agent(phone: Baresip, agent: Agentd, *, talk_s: float) -> None:
    """Dial agentd, check both sides set the call up, let audio flow for `talk_s`."""
    phone.dial(EXTENSION)
    established = phone.wait_event("CALL_ESTABLISHED", timeout=10)
    assert f"{EXTENSION}@" in established["peeruri"]
    assert agent.wait_log(r"call \w+ answered: .* from 2000 ", timeout=5), agent.log_text()
    time.sleep(talk_s)


def test_registers_with_digest_auth(kamailio: Kamailio, agentd_factory: AgentdFactory) -> None:
    agent = agentd_factory()
    contacts = kamailio.registered(EXTENSION)
    assert len(contacts) == 1 and contacts[0].endswith(agent.contact_suffix), contacts
    # The first REGISTER was challenged (401) and the second carried our digest answer.
    assert register_requests(kamailio) >= 2
    assert "registration registered" in agent.log_text()
    assert "pw2001" not in agent.log_text()  # the secret is never logged


def test_wrong_password_backs_off(kamailio: Kamailio, agentd_factory: AgentdFactory) -> None:
    agent = agentd_factory(password="wrong", wait_registration=False)
    started = time.monotonic()
    # Watch Kamailio's log for ~7 s, noting when each REGISTER arrives (bounded loop).
    arrivals: list[float] = []
    while time.monotonic() < started + 7.0:
        seen = register_requests(kamailio)
        arrivals += [time.monotonic() - started] * (seen - len(arrivals))
        time.sleep(0.05)
    log = agent.log_text()
    assert re.search(r"registration failing: 401 ", log), log
    assert kamailio.registered(EXTENSION) == []
    assert agent.running()
    # Each attempt is REGISTER -> 401 -> REGISTER with our digest -> 401 (wrong password), so
    # attempts start at every other REGISTER. Backoff 2, 4, 8 s puts them near 0, 2 and 6 s
    # in the first 7 s; a tight loop would show dozens. One spare for a slow machine.
    starts = arrivals[::2]
    assert 2 <= len(starts) <= 4, (arrivals, kamailio.log_text()[-2000:])
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] > 1.5, arrivals                 # 2 s, not a retry storm
    assert all(later > 1.5 * earlier for earlier, later in zip(gaps, gaps[1:])), arrivals


def test_two_way_audio_then_bye_from_phone_and_bye_from_agentd(
        kamailio: Kamailio, agentd_factory: AgentdFactory,
        phone_factory: PhoneFactory) -> None:
    agent = agentd_factory()
    phone = phone_factory("2000", tone_hz=440.0)

    # Call 1: the phone hangs up.
    call_agent(phone, agent, talk_s=2.5)
    phone.hangup()
    phone.wait_event("CALL_CLOSED", timeout=5)
    assert agent.wait_log(r"call \w+ ended: remote hangup", timeout=5), agent.log_text()
    # The phone hears its own 440 Hz tone echoed: audio went there and back through agentd.
    assert_hears(phone, 440.0)

    # Call 2: agentd is told to stop (SIGTERM) and hangs the live call up with BYE first.
    call_agent(phone, agent, talk_s=1.0)
    agent.signal(signal.SIGTERM)
    closed = phone.wait_event("CALL_CLOSED", timeout=10)
    assert agent.wait_exit(timeout=10) == 0, agent.log_text()
    log = agent.log_text()
    assert re.search(r"call \w+ ended: shutdown", log), log
    assert "no answer to BYE" not in log, log
    # baresip reports a peer's BYE as ECONNRESET; its SIP trace shows the BYE itself.
    assert "Connection reset by peer" in closed.get("param", ""), closed
    assert re.search(r"^BYE sip:2000\S* SIP/2.0", phone.log_text(), re.MULTILINE)
    assert kamailio.registered(EXTENSION) == []  # un-REGISTERed on the way out
    assert phone.active_calls() == 0


def test_dtmf_transfer_with_refer(kamailio: Kamailio, agentd_factory: AgentdFactory,
                                  phone_factory: PhoneFactory) -> None:
    agent = agentd_factory(app={"dtmf_transfer": {"9": "4000"}})
    target = phone_factory("4000", tone_hz=660.0)
    caller = phone_factory("2000", tone_hz=440.0)
    call_agent(caller, agent, talk_s=0.5)
    caller.command("sndcode 9")  # baresip 1.0 sends it as RFC 4733 telephone-event
    assert agent.wait_log(r"call \w+: DTMF 9", timeout=5), agent.log_text()
    refer = caller.wait_event("TRANSFER", timeout=10)  # agentd's REFER, via Kamailio
    assert "4000@" in refer["param"], refer
    established = target.wait_event("CALL_ESTABLISHED", timeout=10)
    assert "2000@" in established["peeruri"], established
    assert agent.wait_log(r"call \w+ ended: transferred", timeout=10), agent.log_text()
    time.sleep(1.5)
    caller.hangup()
    target.wait_event("CALL_CLOSED", timeout=5)
    assert_hears(target, 440.0)
    assert "no answer to BYE" not in agent.log_text()


def test_registers_again_after_kamailio_restart(kamailio: Kamailio,
                                                agentd_factory: AgentdFactory) -> None:
    agent = agentd_factory(register_expires=30)  # refresh every 15 s
    assert agent.registered_at(kamailio)
    kamailio.restart()
    assert kamailio.registered(EXTENSION) == []  # the new Kamailio forgot everyone
    assert agent.wait_registered(kamailio, timeout=25), (agent.log_text(),
                                                         kamailio.log_text()[-2000:])


def test_tcp_registers_and_answers(kamailio: Kamailio, agentd_factory: AgentdFactory,
                                   phone_factory: PhoneFactory) -> None:
    agent = agentd_factory(transport="tcp")
    contacts = kamailio.registered(EXTENSION)
    assert contacts and contacts[0].endswith(";transport=tcp"), contacts
    phone = phone_factory("2000", tone_hz=440.0, transport="tcp")
    call_agent(phone, agent, talk_s=2.0)
    # Kamailio delivered the INVITE over TCP: it holds a connection to agentd's SIP port.
    assert established_tcp(agent.sip_port), "no TCP connection to agentd's SIP port"
    phone.hangup()
    phone.wait_event("CALL_CLOSED", timeout=5)
    assert agent.wait_log(r"call \w+ ended: remote hangup", timeout=5), agent.log_text()
    assert_hears(phone, 440.0)


SIPP_CALLS = 50
SIPP_CONCURRENCY = 10
SIPP_CALL_MS = 2000
SIPP_TONE_S = 1.6
MIN_AUDIBLE_ECHO_PACKETS = 40   # of the ~80 tone frames each call sends


def sipp_media_ports(ports: PortAllocator, calls: int) -> int:
    """SIPp's -mp for `calls` calls: [auto_media_port] gives call n the port mp + 4(n-1), so
    all of them are reserved, or a call's RTP may land on another process's port."""
    return ports.port_range(4 * calls)


def test_sipp_load_with_rtp_echo(tmp_path: Path, kamailio: Kamailio,
                                 agentd_factory: AgentdFactory, port_allocator: PortAllocator,
                                 sipp_available: None) -> None:
    agent = agentd_factory(max_calls=SIPP_CONCURRENCY + 4, rtp_port_count=40,
                           log_level="info")
    uac_dir = tmp_path / "uac"
    uac_dir.mkdir()
    write_rtp_pcap(uac_dir / "audio.pcap", tone(440.0, level_dbfs=TONE_LEVEL_DBFS,
                                                seconds=SIPP_TONE_S))
    in_range = range(agent.rtp_port_min, agent.rtp_port_max)
    try:
        capture = LoopbackRtpCapture(lambda src, dst: src in in_range).start()
    except PermissionError:
        pytest.skip("capturing loopback RTP needs root or CAP_NET_RAW")
    try:
        result = sipp.Sipp(uac_dir, sipp.scenario("uac_pcap_agentd"), remote=kamailio.address,
                           service=EXTENSION, local_port=port_allocator.port(),
                           media_port=sipp_media_ports(port_allocator, SIPP_CALLS), calls=SIPP_CALLS,
                           concurrency=SIPP_CONCURRENCY, rate=20, duration_ms=SIPP_CALL_MS,
                           timeout_s=60).run()
        time.sleep(0.3)  # the last echoes are still in flight when SIPp exits
    finally:
        packets = capture.stop()
    assert result.ok, result.log_text()
    assert (result.successful, result.failed, result.created) == (SIPP_CALLS, 0, SIPP_CALLS)
    # One RTP stream (SSRC) per call came back from agentd, each with SIPp's tone in it.
    evidence = summarise_streams(packets)
    assert len(evidence.streams) == SIPP_CALLS, evidence.streams[:3]
    echoed = evidence.audible_streams(MIN_AUDIBLE_ECHO_PACKETS, 440.0, FREQ_TOLERANCE_HZ)
    assert len(echoed) == SIPP_CALLS, [s for s in evidence.streams if s not in echoed][:5]
    assert all(abs(s.active_rms_dbfs - TONE_LEVEL_DBFS) < LEVEL_TOLERANCE_DB for s in echoed)
    log = agent.log_text()
    assert len(re.findall(r"call \w+ ended: remote hangup", log)) == SIPP_CALLS, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# ----- the harness's own pure parts (no processes) -----

def test_rendered_config_is_valid_for_agentd(tmp_path: Path) -> None:
    from agentd.config import load_config

    agent = Agentd(tmp_path, registrar_port=25060, sip_port=25062, rtp_port_min=26000,
                   transport="tcp", app={"dtmf_transfer": {"9": "4000"}}, max_calls=8)
    config = load_config(agent.config_path)
    assert (config.sip.registrar.port, config.sip.local_port) == (25060, 25062)
    assert config.sip.extension == EXTENSION and config.sip.transport == "tcp"
    assert config.sip.password is not None
    assert config.sip.password.get_secret_value() == "pw2001"
    assert (config.media.rtp_port_min, config.media.rtp_port_max) == (26000, 26040)
    assert dict(config.app.dtmf_transfer) == {"9": "4000"}


def test_pcap_tone_parses_back_and_summarises(tmp_path: Path) -> None:
    from tests.harness.agentd import parse_rtp_frame

    path = write_rtp_pcap(tmp_path / "t.pcap", tone(440.0, seconds=0.5), ssrc=7)
    data = path.read_bytes()
    offset, frames = 24, []
    while offset < len(data):
        length = int.from_bytes(data[offset + 8:offset + 12], "little")
        frames.append(data[offset + 16:offset + 16 + length])
        offset += 16 + length
    packets = [parse_rtp_frame(frame) for frame in frames]
    assert len(packets) == 25 and all(p is not None for p in packets)
    assert [p.sequence for p in packets if p] == list(range(25))
    evidence = summarise_streams([p for p in packets if p])
    [stream] = evidence.streams
    assert stream.ssrc == 7 and stream.packets == 25 and stream.audible_packets == 25
    assert abs(stream.dominant_hz - 440.0) < 2.0
    assert abs(stream.active_rms_dbfs - TONE_LEVEL_DBFS) < 1.0
    # Junk and truncated frames are refused, never raised on.
    for junk in (b"", frames[0][:40], frames[0][:14] + b"\x60" + frames[0][15:], b"\xff" * 80):
        assert parse_rtp_frame(junk) is None
