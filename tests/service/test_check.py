"""`agentd check`: exit codes and messages, with loopback stand-ins for the registrar."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.config import parse_config
from agentd.service.check import (
    check_port,
    options_request,
    probe_registrar,
    required_models,
    response_status,
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_text(registrar_port: int, sip_port: int = 0, extra: str = "") -> str:
    return (f"sip:\n  registrar: 127.0.0.1:{registrar_port}\n  extension: '2001'\n"
            f"  password: pw\n  local_port: {sip_port}\n{extra}")


def agentd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentd", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def sip_responder() -> Iterator[int]:
    """A UDP 'registrar' answering every OPTIONS with 200 OK, echoing the Call-ID."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            call_id = next(line for line in data.decode().split("\r\n")
                           if line.startswith("Call-ID:"))
            sock.sendto(f"SIP/2.0 200 OK\r\n{call_id}\r\nContent-Length: 0\r\n\r\n".encode(),
                        source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    sock.close()


def test_options_request_and_response_matching() -> None:
    data = options_request(domain="pbx", extension="2001", local=("127.0.0.1", 5062),
                           transport="udp", user_agent="agentd", call_id="abc@x",
                           branch="z9hG4bKx", tag="t")
    assert data.startswith(b"OPTIONS sip:pbx SIP/2.0\r\n") and data.endswith(b"\r\n\r\n")
    assert b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKx;rport" in data
    assert response_status(b"SIP/2.0 404 Not Found\r\nCall-ID: abc@x\r\n\r\n", "abc@x") == 404
    assert response_status(b"SIP/2.0 200 OK\r\ni: abc@x\r\n\r\n", "abc@x") == 200
    assert response_status(b"SIP/2.0 200 OK\r\nCall-ID: other\r\n\r\n", "abc@x") is None
    assert response_status(b"\x00\xff garbage", "abc@x") is None
    assert response_status(b"", "abc@x") is None


def test_probe_answered_and_unanswered(sip_responder: int) -> None:
    ok = probe_registrar(parse_config(config_text(sip_responder)), timeout=2.0)
    assert ok.ok and "answered OPTIONS with 200" in ok.detail
    # A UDP socket that never answers: a timeout, reported with the address.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = probe_registrar(parse_config(config_text(port)), timeout=0.6)
    assert not result.ok and f"no answer from 127.0.0.1:{port} (udp)" in result.detail


def test_port_in_use_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = check_port("127.0.0.1", port, "udp")
    assert not result.ok and "in use" in result.detail
    assert check_port("127.0.0.1", free_udp_port(), "udp").ok
    assert "not an address of this machine" in check_port("192.0.2.77", 5060, "udp").detail


def test_required_models_follow_the_config(tmp_path: Path) -> None:
    assert required_models(parse_config(config_text(5060))) == []


def test_cli_all_good_exits_0(tmp_path: Path, sip_responder: int) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(sip_responder, free_udp_port()))
    result = agentd("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    registrar" in result.stdout and "all checks passed" in result.stdout


def test_cli_bad_yaml_exits_2_with_file_line_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(5060) + "  max_calls: lots\n")
    result = agentd("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:6: sip.max_calls" in result.stdout


def test_cli_unreachable_registrar_and_port_in_use_exit_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(config_text(free_udp_port(), port))
        result = agentd("check", "-c", str(config), "--timeout", "0.5")
    assert result.returncode == 1, result.stdout
    assert f"FAIL  sip port: 127.0.0.1:{port}/udp is in use" in result.stdout
    assert "FAIL  registrar: 127.0.0.1:" in result.stdout
    assert "2 problem(s) found" in result.stdout


def test_cli_missing_model_names_the_fetch_command(tmp_path: Path) -> None:
    import examples

    # A seeded copy: the checkout holds the example's CSVs, not its built SQLite files.
    policy = examples.prepare("dental", tmp_path / "example")
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(config_text(5060, free_udp_port(),
                                  f"speech:\n  models_dir: {empty_models}\n"
                                  f"dialog:\n  policy_file: {policy}\n"))
    result = agentd("check", "-c", str(config), "--no-network")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  model silero-vad" in result.stdout
    assert "agentd models fetch silero-vad" in result.stdout
    assert "agentd models fetch qwen2.5-coder-1.5b-instruct-q4_k_m" in result.stdout
