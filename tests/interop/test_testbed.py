"""Smoke tests of the interop harness itself: real Kamailio, baresip and SIPp on loopback."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import sipp
from tests.harness.audio import analyse_wav
from tests.harness.baresip import Baresip
from tests.harness.kamailio import Kamailio
from tests.harness.ports import PortAllocator
from tests.harness.process import HarnessError

from .conftest import PhoneFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FREQ_TOLERANCE_HZ = 5.0
TONE_LEVEL_DBFS = -12.0      # what the phones send (harness default)
LEVEL_TOLERANCE_DB = 4.0     # G.711 round trip plus jitter-buffer edges


def send_options(port: int, *, timeout: float = 3.0) -> str:
    """Send an out-of-dialog OPTIONS to 127.0.0.1:`port` over UDP; return the reply text."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        request = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{call_id[:12]}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@127.0.0.1:{local_port}>;tag={call_id[:8]}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + timeout
        for _ in range(3):  # UDP: resend a few times, bounded by the deadline
            sock.sendto(request, ("127.0.0.1", port))
            sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            try:
                data, _ = sock.recvfrom(65535)
                return data.decode(errors="replace")
            except socket.timeout:
                if time.monotonic() >= deadline:
                    break
        return ""
    finally:
        sock.close()


def assert_hears(phone: Baresip, freq_hz: float, *, recording: int = -1) -> None:
    wavs = phone.received_wavs()
    assert wavs, f"phone {phone.extension} recorded nothing"
    result = analyse_wav(wavs[recording])
    assert result.duration_s > 0.5, result
    assert result.active_fraction > 0.7, result
    assert abs(result.dominant_hz - freq_hz) < FREQ_TOLERANCE_HZ, result
    assert abs(result.active_rms_dbfs - TONE_LEVEL_DBFS) < LEVEL_TOLERANCE_DB, result


def test_kamailio_answers_options(kamailio: Kamailio) -> None:
    reply = send_options(kamailio.port)
    assert reply.startswith("SIP/2.0 200"), reply


def test_phone_registers_with_digest_auth(kamailio: Kamailio,
                                          phone_factory: PhoneFactory) -> None:
    phone = phone_factory("2000")
    contacts = kamailio.registered("2000")
    assert len(contacts) == 1
    assert contacts[0].endswith(f"@127.0.0.1:{phone.sip_port}"), contacts
    # Kamailio challenged first: the digest exchange really happened.
    log = phone.log_text()
    assert "401 Unauthorized" in log
    assert log.index("401 Unauthorized") < log.rindex("200 OK")
    assert kamailio.registered("3000") == []


def test_wrong_password_does_not_register(kamailio: Kamailio,
                                          phone_factory: PhoneFactory) -> None:
    phone = phone_factory("4000", password="wrong", register=False)
    assert not phone.wait_registered(timeout=5.0)
    assert "401 Unauthorized" in phone.log_text()
    assert kamailio.registered("4000") == []


def test_call_with_two_way_audio_and_bye(kamailio: Kamailio,
                                         phone_factory: PhoneFactory) -> None:
    callee = phone_factory("3000", tone_hz=880.0)
    caller = phone_factory("2000", tone_hz=440.0)
    caller.dial("3000")
    caller.wait_event("CALL_ESTABLISHED", timeout=10)
    incoming = callee.wait_event("CALL_ESTABLISHED", timeout=10)
    assert incoming["direction"] == "incoming"
    assert "2000@" in incoming["peeruri"]
    time.sleep(2.0)
    caller.hangup()
    caller.wait_event("CALL_CLOSED", timeout=5)
    callee.wait_event("CALL_CLOSED", timeout=5)  # the BYE went through Kamailio
    assert_hears(callee, 440.0)
    assert_hears(caller, 880.0)
    # BYE cleaned up: neither phone has a call left, both stay registered.
    assert caller.active_calls() == 0 and callee.active_calls() == 0
    assert kamailio.registered("2000") and kamailio.registered("3000")


def test_manual_answer_with_accept(kamailio: Kamailio, phone_factory: PhoneFactory) -> None:
    callee = phone_factory("3000", answermode="manual")
    caller = phone_factory("2000")
    caller.dial("3000")
    callee.wait_event("CALL_INCOMING", timeout=10)
    with pytest.raises(HarnessError):
        caller.wait_event("CALL_ESTABLISHED", timeout=0.3)  # still ringing
    callee.accept()
    callee.wait_event("CALL_ESTABLISHED", timeout=5)
    caller.wait_event("CALL_ESTABLISHED", timeout=5)
    callee.hangup()
    caller.wait_event("CALL_CLOSED", timeout=5)


def test_blind_transfer_with_refer(kamailio: Kamailio, phone_factory: PhoneFactory) -> None:
    target = phone_factory("4000", tone_hz=660.0)
    transferor = phone_factory("3000", tone_hz=880.0)
    transferee = phone_factory("2000", tone_hz=440.0)
    transferee.dial("3000")
    transferee.wait_event("CALL_ESTABLISHED", timeout=10)
    transferor.wait_event("CALL_ESTABLISHED", timeout=10)
    transferor.transfer("4000")
    refer = transferee.wait_event("TRANSFER", timeout=10)  # REFER arrived via Kamailio
    assert "4000@" in refer["param"]
    transferor.wait_event("CALL_CLOSED", timeout=10)
    established = target.wait_event("CALL_ESTABLISHED", timeout=10)
    assert "2000@" in established["peeruri"]
    time.sleep(1.5)
    transferee.hangup()
    target.wait_event("CALL_CLOSED", timeout=5)
    assert_hears(target, 440.0)


def test_kamailio_restart(kamailio: Kamailio, phone_factory: PhoneFactory) -> None:
    phone_factory("2000")
    assert kamailio.registered("2000")
    old_pid = kamailio.pid
    kamailio.restart()
    assert kamailio.pid != old_pid
    assert send_options(kamailio.port).startswith("SIP/2.0 200")
    assert kamailio.registered("2000") == []  # in-memory location table starts empty
    phone_factory("3000")
    assert kamailio.registered("3000")
    assert kamailio.log_text().count("=== start:") == 2


def _sipp_uas(workdir: Path, ports: PortAllocator, kamailio: Kamailio, *, calls: int,
              extension: str = "5000") -> sipp.Sipp:
    """A SIPp UAS echoing RTP, registered at Kamailio as `extension`."""
    uas = sipp.Sipp(workdir / "uas", sipp.scenario("uas_echo"), local_port=ports.port(),
                    media_port=ports.port_range(4), calls=calls, rtp_echo=True,
                    timeout_s=30, keys={"pt": "8", "codec": "PCMA"}).start()
    reg = sipp.register_contact(workdir / "register", registrar_port=kamailio.port,
                                extension=extension, password=f"pw{extension}",
                                contact_port=uas.local_port, local_port=ports.port())
    assert reg.ok, reg.log_text()
    return uas


def test_sipp_calls_through_kamailio(tmp_path: Path, kamailio: Kamailio,
                                     port_allocator: PortAllocator,
                                     sipp_available: None) -> None:
    uas = _sipp_uas(tmp_path, port_allocator, kamailio, calls=3)
    try:
        sipp.prepare_pcap(tmp_path / "uac")
        uac = sipp.Sipp(tmp_path / "uac", sipp.scenario("uac_pcap"), remote=kamailio.address,
                        service="5000", local_port=port_allocator.port(),
                        media_port=port_allocator.port_range(4), calls=3, concurrency=3,
                        rate=10, duration_ms=1500, timeout_s=30)
        result = uac.run()
        assert result.ok, result.log_text()
        assert (result.successful, result.failed, result.created) == (3, 0, 3)
        uas_result = uas.wait(timeout=15)
        assert uas_result.ok and uas_result.successful == 3, uas_result.log_text()
    finally:
        uas.stop()


def test_sipp_rtp_stream_reaches_phone(tmp_path: Path, kamailio: Kamailio,
                                       phone_factory: PhoneFactory,
                                       port_allocator: PortAllocator,
                                       sipp_available: None) -> None:
    phone = phone_factory("3000", tone_hz=880.0)
    sipp.prepare_tone(tmp_path / "uac", 1000.0, level_dbfs=TONE_LEVEL_DBFS)
    result = sipp.Sipp(tmp_path / "uac", sipp.scenario("uac_rtp_stream"),
                       remote=kamailio.address, service="3000",
                       local_port=port_allocator.port(), media_port=port_allocator.port_range(4),
                       calls=1, duration_ms=2000, timeout_s=20).run()
    assert result.ok, result.log_text()
    phone.wait_event("CALL_CLOSED", timeout=5)
    assert_hears(phone, 1000.0)


def test_rtp_echoed_by_sipp_uas_returns_to_phone(tmp_path: Path, kamailio: Kamailio,
                                                 phone_factory: PhoneFactory,
                                                 port_allocator: PortAllocator,
                                                 sipp_available: None) -> None:
    uas = _sipp_uas(tmp_path, port_allocator, kamailio, calls=1)
    try:
        phone = phone_factory("2000", tone_hz=440.0)
        phone.dial("5000")
        phone.wait_event("CALL_ESTABLISHED", timeout=10)
        time.sleep(2.0)
        phone.hangup()
        phone.wait_event("CALL_CLOSED", timeout=5)
        assert uas.wait(timeout=15).ok
        assert_hears(phone, 440.0)  # its own tone, echoed back by SIPp
    finally:
        uas.stop()
