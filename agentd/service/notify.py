"""systemd's sd_notify protocol, spoken directly: one datagram to $NOTIFY_SOCKET.

The protocol (sd_notify(3)): newline-separated `KEY=value` assignments in one datagram to
the unix socket named by $NOTIFY_SOCKET; a name starting with '@' is in the abstract
namespace (a leading NUL byte). The watchdog period comes from $WATCHDOG_USEC, meant for us
only when $WATCHDOG_PID is unset or our pid. Outside systemd (no $NOTIFY_SOCKET) every call
is a no-op, so the daemon needs no "am I under systemd" branches.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("agentd.service")


class NotifyError(ValueError):
    """A notification that cannot be expressed in the protocol (newline in a value...)."""


def socket_address(value: str) -> str | bytes | None:
    """The address to sendto() for a $NOTIFY_SOCKET value; None when it is unusable."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock:... or junk: not a unix socket we can use


def encode(fields: Mapping[str, str | int]) -> bytes:
    """`{"READY": 1, "STATUS": "x"}` as the datagram `READY=1\\nSTATUS=x\\n`."""
    lines = []
    for key, value in fields.items():
        text = str(value)
        if not key or not key.isupper() or "=" in key or "\n" in key:
            raise NotifyError(f"bad notify key {key!r}")
        if "\n" in text:
            raise NotifyError(f"notify value for {key} holds a newline")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode()


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), None when not asked."""
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


class Notifier:
    """Sends notifications to systemd; every send is best effort and never raises."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram; True when systemd's socket took it."""
        if self.address is None:
            return False
        try:
            data = encode(fields)
        except NotifyError as exc:
            log.warning("not sent to systemd: %s", exc)
            self.failed += 1
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            # systemd gone or the socket full: the daemon carries on regardless.
            self.failed += 1
            if self.failed == 1:
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"READY": 1}
        if status is not None:
            fields["STATUS"] = _one_line(status)
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self, monotonic_usec: int) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = _one_line(status)
        return self.notify(**fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
