"""Fixtures for the service tests: the interop testbed's Kamailio and phones, and a fake
systemd notify socket the test listens on."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# The real Kamailio/baresip fixtures (they skip when the binaries are missing).
from tests.interop.conftest import kamailio, phone_factory, port_allocator  # noqa: F401


@dataclass
class Datagram:
    at: float
    fields: dict[str, str]


@dataclass
class NotifyListener:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    address: str  # as $NOTIFY_SOCKET spells it ('@' = abstract namespace)
    datagrams: list[Datagram] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def with_key(self, key: str, value: str | None = None) -> list[Datagram]:
        with self._lock:
            return [d for d in self.datagrams
                    if key in d.fields and (value is None or d.fields[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0,
                 count: int = 1) -> list[Datagram]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.with_key(key, value)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.with_key(key, value)

    def statuses(self) -> list[str]:
        return [d.fields["STATUS"] for d in self.with_key("STATUS")]


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    name = f"agentd-test-{os.getpid()}-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(0.1)
    listener = NotifyListener("@" + name)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with listener._lock:
                listener.datagrams.append(Datagram(time.monotonic(), fields))

    thread = threading.Thread(target=read, name="notify-listener", daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=2.0)
        sock.close()
