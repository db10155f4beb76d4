"""sd_notify over a real unix datagram socket, and the protocol's edge cases."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agentd.service.notify import Notifier, NotifyError, encode, socket_address, watchdog_interval


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    assert socket_address("@") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_encode_is_newline_separated_assignments() -> None:
    assert encode({"READY": 1, "STATUS": "registered"}) == b"READY=1\nSTATUS=registered\n"
    with pytest.raises(NotifyError):
        encode({"STATUS": "two\nlines"})
    with pytest.raises(NotifyError):
        encode({"lower": 1})


def test_watchdog_interval_is_half_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"agentd-notify-test-{os.getpid()}"
        listener.bind(b"\0" + name.encode())
        env_value = "@" + name
    else:
        path = tmp_path / "notify"
        listener.bind(str(path))
        env_value = str(path)
    listener.settimeout(2.0)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": env_value})
    try:
        assert notifier.enabled
        assert notifier.ready("registered as 2001\nand more")
        assert listener.recv(4096) == b"READY=1\nSTATUS=registered as 2001 and more\n"
        assert notifier.watchdog()
        assert listener.recv(4096) == b"WATCHDOG=1\n"
        assert notifier.stopping("bye")
        assert listener.recv(4096) == b"STOPPING=1\nSTATUS=bye\n"
        assert notifier.sent == 3
    finally:
        notifier.close()
        listener.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.sent == 0


def test_a_dead_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.failed == 2
