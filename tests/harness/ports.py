"""Free loopback ports for test processes, so parallel tests and test runs don't collide.

Ports are probed by binding them; they are picked at random below the kernel's ephemeral
range so the OS does not hand them to outgoing sockets in the meantime.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
# Below Linux's default ephemeral range (32768-60999) and above the well-known 5060 family.
PORT_LOW = 20000
PORT_HIGH = 32000
MAX_TRIES = 500


class NoFreePortError(RuntimeError):
    """No free port (range) found within the bounded number of tries."""


def _can_bind(port: int, kind: int) -> bool:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Same option servers use, so a port in TIME_WAIT still counts as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def is_free(port: int, *, udp: bool = True, tcp: bool = True) -> bool:
    """True if `port` can be bound on 127.0.0.1 for the requested transports right now."""
    return (not udp or _can_bind(port, socket.SOCK_DGRAM)) and (
        not tcp or _can_bind(port, socket.SOCK_STREAM)
    )


@dataclass
class PortAllocator:
    """Hands out loopback ports that are free now and never handed out twice by this object."""

    low: int = PORT_LOW
    high: int = PORT_HIGH
    rng: random.Random = field(default_factory=random.Random)
    _taken: set[int] = field(default_factory=set)

    def port(self, *, udp: bool = True, tcp: bool = True) -> int:
        """One port free for UDP and/or TCP."""
        return self.port_range(1, udp=udp, tcp=tcp)

    def port_range(self, count: int, *, udp: bool = True, tcp: bool = False, align: int = 2) -> int:
        """First port of `count` consecutive free ports (start aligned to `align`, e.g. even RTP)."""
        if count < 1 or count > self.high - self.low:
            raise ValueError(f"bad port count {count}")
        for _ in range(MAX_TRIES):
            start = self.rng.randrange(self.low, self.high - count)
            start -= start % max(1, align)
            ports = range(start, start + count)
            if any(p in self._taken for p in ports):
                continue
            if all(is_free(p, udp=udp, tcp=tcp) for p in ports):
                self._taken.update(ports)
                return start
        raise NoFreePortError(f"no {count} free consecutive ports in {self.low}-{self.high}")

    def release(self, start: int, count: int = 1) -> None:
        """Allow ports to be handed out again (e.g. after the process using them stopped)."""
        self._taken.difference_update(range(start, start + count))


def free_port(*, udp: bool = True, tcp: bool = True) -> int:
    """One-shot helper: a port free now for UDP and/or TCP on 127.0.0.1."""
    return PortAllocator().port(udp=udp, tcp=tcp)
