"""Fast unit tests of the harness's pure parts (no third-party binaries needed)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from tests.harness import audio
from tests.harness.baresip import netstring, render_account, split_netstrings
from tests.harness.kamailio import parse_ul_lookup, password_for, render_config
from tests.harness.ports import PortAllocator, is_free
from tests.harness.process import HarnessError
from tests.harness.sipp import parse_screen, parse_stat_csv, scenario


@pytest.mark.parametrize("freq", [300.0, 440.0, 880.0, 1000.0, 3400.0])
def test_dominant_frequency_of_tone(freq: float) -> None:
    samples = audio.tone(freq, seconds=0.5)
    assert abs(audio.dominant_frequency(samples, 8000) - freq) < 1.0


def test_tone_level_and_activity() -> None:
    samples = np.concatenate([np.zeros(8000, np.int16), audio.tone(660, level_dbfs=-20, seconds=1)])
    result = audio.analyse(samples, 8000)
    assert abs(result.active_rms_dbfs + 20) < 0.1
    assert abs(result.rms_dbfs + 23) < 0.2          # half the time silent: -3 dB
    assert result.active_fraction == pytest.approx(0.5, abs=0.02)
    assert abs(result.dominant_hz - 660) < 1.0


def test_silence_and_empty_input() -> None:
    assert audio.rms_dbfs(np.zeros(0, np.int16)) == audio.SILENCE_FLOOR_DBFS
    assert audio.rms_dbfs(np.zeros(800, np.int16)) == audio.SILENCE_FLOOR_DBFS
    assert audio.dominant_frequency(np.zeros(800, np.int16), 8000) == 0.0
    assert audio.analyse(np.zeros(0, np.int16), 8000).active_fraction == 0.0


def test_tone_rejects_clipping_and_bad_frequency() -> None:
    with pytest.raises(ValueError):
        audio.tone(440, level_dbfs=0.0)
    with pytest.raises(ValueError):
        audio.tone(4000, seconds=1)


def test_wav_round_trip(tmp_path: Path) -> None:
    path = audio.write_tone_wav(tmp_path / "t.wav", 1000, seconds=0.2)
    samples, rate = audio.read_wav(path)
    assert rate == 8000 and len(samples) == 1600
    assert np.array_equal(samples, audio.tone(1000, seconds=0.2))


def test_ulaw_known_codes_and_round_trip() -> None:
    codes = audio.ulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16))
    assert codes.tolist() == [0xFF, 0x7F, 0x80, 0x00]
    x = audio.tone(1000, seconds=0.5)
    decoded = audio.ulaw_decode(audio.ulaw_encode(x)).astype(float)
    noise = audio.rms_dbfs((decoded - x).astype(np.int16))
    assert audio.rms_dbfs(x) - noise > 30.0          # G.711 SNR is about 38 dB


def test_netstrings_split_and_reject_garbage() -> None:
    data = netstring(b'{"a":1}') + netstring(b"") + b"5:ab"
    payloads, rest = split_netstrings(data)
    assert payloads == [b'{"a":1}', b""] and rest == b"5:ab"
    for bad in (b"x:abc,", b"3:abcX", b"99999999999:"):
        with pytest.raises(HarnessError):
            split_netstrings(bad)


def test_account_line() -> None:
    line = render_account(extension="2000", registrar_port=25060, password=password_for("2000"))
    assert line.startswith("<sip:2000@127.0.0.1:25060;transport=udp>;auth_user=2000;auth_pass=pw2000;")
    assert "answermode=auto" in line
    with pytest.raises(ValueError):
        render_account(extension="2000", registrar_port=1, password="x", transport="tls")


def test_kamailio_config_is_fully_rendered(tmp_path: Path) -> None:
    text = render_config(port=25060, run_dir=tmp_path, ctl_socket=tmp_path / "ctl",
                         module_dir=Path("/mods"), passwords={"1000": "secret"})
    assert "%%" not in text
    assert "listen=udp:127.0.0.1:25060" in text and "listen=tcp:127.0.0.1:25060" in text
    assert f'"unix:{tmp_path}/ctl"' in text and 'mpath="/mods/"' in text
    assert '$sht(users=>1000) = "secret";' in text
    with pytest.raises(ValueError):
        render_config(port=1, run_dir=tmp_path, ctl_socket=tmp_path, module_dir=tmp_path,
                      passwords={'x";': "y"})


def test_parse_ul_lookup() -> None:
    text = ("{\n\tAoR: 2000\n\tContacts: {\n\t\tContact: {\n"
            "\t\t\tAddress: sip:2000-0x1@127.0.0.1:23862\n\t\t\tExpires: 59\n\t\t}\n\t}\n}\n")
    assert parse_ul_lookup(text) == ["sip:2000-0x1@127.0.0.1:23862"]
    assert parse_ul_lookup("error: 404 - AOR not found") == []


def test_parse_sipp_stats(tmp_path: Path) -> None:
    csv_path = tmp_path / "stat.csv"
    csv_path.write_text("ElapsedTime(C);TotalCallCreated;SuccessfulCall(C);FailedCall(C);\n"
                        "00:00:01;1;0;0;\n00:00:02;3;2;1;\n")
    stats = parse_stat_csv(csv_path)
    assert stats["SuccessfulCall(C)"] == "2" and stats["FailedCall(C)"] == "1"
    screen = "  Successful call        |        0                  |        3      \n" \
             "  Failed call            |        0                  |        1      \n"
    assert parse_screen(screen) == {"successful": 3, "failed": 1}
    assert scenario("uac_rtp_stream").is_file()
    with pytest.raises(HarnessError):
        scenario("no_such_scenario")


def test_port_allocator_gives_distinct_free_ports() -> None:
    allocator = PortAllocator()
    ports = {allocator.port() for _ in range(20)}
    assert len(ports) == 20 and all(is_free(p) for p in ports)
    start = allocator.port_range(20)
    assert start % 2 == 0 and not ports & set(range(start, start + 20))


def test_busy_port_is_not_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert not is_free(sock.getsockname()[1], tcp=False)
