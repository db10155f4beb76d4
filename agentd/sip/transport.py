"""Asyncio SIP transports: UDP and TCP on one local address.

The thin IO edge around the sans-IO core: bytes in, bytes out. Parsing happens here so each
transport can frame its own way (one message per datagram on UDP; Content-Length framing on a
TCP stream), and a message that cannot be parsed never reaches the core — it is counted and,
where it is a request we can still answer, the caller's `on_malformed` decides what to send.

TCP connections are reused (RFC 3261 §18): one connection per remote address, opened on demand
by `send`, kept after an inbound connection so responses and in-dialog requests go back on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.parser import SipParseError, StreamFramer, parse_message

log = logging.getLogger("agentd.sip.transport")
_PORT_ATTEMPTS = 8  # port 0: tries for a number free for both UDP and TCP

Address = tuple[str, int]
SipMessage = SipRequest | SipResponse

# A datagram larger than this is not SIP we want (RFC 3261 §18.1.1 suggests 1300 on UDP
# without congestion control; we accept more but bound it).
MAX_DATAGRAM = 65_535
# Feed passes per TCP read (messages and errors taken out of one chunk); bounds the loop.
MAX_MESSAGES_PER_READ = 1000
# Connections peers open to us: at most this many at once (each costs a socket and a buffer;
# a PBX needs a handful), and one idle this long is closed (the peer reconnects on demand,
# RFC 3261 §18). Connections we opened (to the registrar) are never closed for idleness:
# the PBX may send the next INVITE over the one we registered on.
MAX_INBOUND_TCP = 256
TCP_IDLE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Inbound:
    """A parsed message as it arrived."""

    message: SipMessage
    source: Address
    transport: str  # "udp" | "tcp"

    @property
    def reliable(self) -> bool:
        return self.transport == "tcp"


@dataclass
class TransportStats:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    send_errors: int = 0
    refused: int = 0  # dropped unparsed because `admit` said no
    tcp_refused: int = 0  # inbound connections closed at once: MAX_INBOUND_TCP reached
    tcp_idle_closed: int = 0  # inbound connections closed after TCP_IDLE_TIMEOUT_S idle


MessageHandler = Callable[[Inbound], None]
MalformedHandler = Callable[[bytes, Address, str, SipParseError], None]
# Asked before any parsing: False drops the bytes (rate limiting of strangers).
AdmitHandler = Callable[[Address], bool]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self._owner._on_bytes(data, (addr[0], addr[1]), "udp")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction layer's timers handle it.
        log.debug("udp error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    def __init__(self, owner: SipTransport, remote: Address | None = None) -> None:
        self._owner = owner
        self._framer = StreamFramer()
        self.remote: Address | None = remote
        self.inbound = remote is None  # the peer connected to us (we did not dial it)
        self.transport: asyncio.Transport | None = None
        self.last_used = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.inbound and not self._owner._accept_inbound(self):
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if self.remote is None and peer:
            self.remote = (peer[0], peer[1])
        if self.remote is not None:
            self._owner._tcp_connections.setdefault(self.remote, self)
        self.last_used = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        assert self.remote is not None
        self.last_used = asyncio.get_running_loop().time()
        if not self._owner._admitted(self.remote):
            # Over its rate: a stream cannot skip bytes and stay framed, so it is closed.
            if self.transport is not None:
                self.transport.close()
            return
        framer = self._framer
        pings = framer.keepalives
        chunk = data
        # Bounded: each pass takes a message or an error out of the buffer, or ends.
        for _ in range(MAX_MESSAGES_PER_READ):
            try:
                messages = framer.feed(chunk)
            except SipParseError as exc:
                self._owner._count_malformed(data, self.remote, "tcp", exc)
                if framer.failed:
                    # Framing is lost (garbage, bad Content-Length): drop the connection.
                    if self.transport is not None:
                        self.transport.close()
                    return
                chunk = b""  # a framed but malformed message: answered, go on after it
                continue
            chunk = b""
            for message in messages:
                self._owner._deliver(Inbound(message, self.remote, "tcp"))
            if not messages:
                break  # else the framer may hold an error raised on the next feed
        # RFC 5626 §4.4.1: answer each double-CRLF ping with a CRLF pong.
        if framer.keepalives > pings and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.write(b"\r\n" * (framer.keepalives - pings))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound_tcp.discard(self)
        if self.remote is not None and self._owner._tcp_connections.get(self.remote) is self:
            del self._owner._tcp_connections[self.remote]

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.last_used = asyncio.get_running_loop().time()
        self.transport.write(data)


class SipTransport:
    """UDP and (optionally) TCP listeners on one address, with a single inbound callback."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        tcp: bool = True,
        on_malformed: MalformedHandler | None = None,
        admit: AdmitHandler | None = None,
        max_message_size: int = MAX_DATAGRAM,
        max_inbound_tcp: int = MAX_INBOUND_TCP,
        tcp_idle_timeout_s: float = TCP_IDLE_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self._on_message = on_message
        self._on_malformed = on_malformed
        self._admit = admit
        self._tcp_enabled = tcp
        self._max_size = max_message_size
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_connections: dict[Address, _TcpConnection] = {}
        self._inbound_tcp: set[_TcpConnection] = set()
        self._max_inbound_tcp = max_inbound_tcp
        self._tcp_idle_timeout_s = tcp_idle_timeout_s
        self._idle_sweeper: asyncio.Task[None] | None = None
        self._connecting: dict[Address, asyncio.Future[_TcpConnection]] = {}
        self._send_tasks: set[asyncio.Task[None]] = set()  # held so they are not collected
        self.stats = TransportStats()

    @property
    def local_address(self) -> Address:
        return (self.host, self.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        requested = self.port
        # Port 0 asks the OS; TCP then listens on the same number UDP got. That number can
        # be taken for TCP (another socket, a connection in TIME_WAIT): then ask again.
        attempts = _PORT_ATTEMPTS if requested == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, requested)
            )
            self._udp = udp
            self.port = udp.get_extra_info("sockname")[1]
            if not self._tcp_enabled:
                return
            try:
                self._tcp_server = await loop.create_server(
                    lambda: _TcpConnection(self), host=self.host, port=self.port,
                    reuse_address=True,
                )
            except OSError:
                udp.close()
                self._udp = None
                if attempt == attempts - 1:
                    raise
                continue
            self._idle_sweeper = loop.create_task(self._sweep_idle_tcp())
            return

    async def close(self) -> None:
        if self._idle_sweeper is not None:
            self._idle_sweeper.cancel()
            self._idle_sweeper = None
        pending = list(self._send_tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for conn in list(self._tcp_connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        self._tcp_connections.clear()
        for conn in list(self._inbound_tcp):
            if conn.transport is not None:
                conn.transport.close()
        self._inbound_tcp.clear()
        if self._tcp_server is not None:
            self._tcp_server.close()
            await self._tcp_server.wait_closed()
            self._tcp_server = None

    def send(self, data: bytes, destination: Address, transport: str = "udp") -> None:
        """Queue bytes for `destination`; TCP opens (or reuses) a connection."""
        if transport == "tcp":
            conn = self._tcp_connections.get(destination)
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                conn.write(data)
                self.stats.sent += 1
                return
            task = asyncio.get_running_loop().create_task(self._send_tcp_later(data, destination))
            self._send_tasks.add(task)
            task.add_done_callback(self._send_tasks.discard)
            return
        if self._udp is None:
            raise RuntimeError("transport is not started")
        try:
            self._udp.sendto(data, destination)
            self.stats.sent += 1
        except OSError as exc:
            self.stats.send_errors += 1
            log.warning("udp send to %s:%s failed: %s", destination[0], destination[1], exc)

    async def _send_tcp_later(self, data: bytes, destination: Address) -> None:
        try:
            conn = await self._connect(destination)
        except OSError as exc:
            self.stats.send_errors += 1
            log.warning("tcp connect to %s:%s failed: %s", destination[0], destination[1], exc)
            return
        conn.write(data)
        self.stats.sent += 1

    async def _connect(self, destination: Address) -> _TcpConnection:
        pending = self._connecting.get(destination)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_TcpConnection] = loop.create_future()
        self._connecting[destination] = future
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _TcpConnection(self, destination),
                    host=destination[0],
                    port=destination[1],
                    local_addr=(self.host, 0),
                ),
                timeout=5.0,
            )
            future.set_result(conn)
            return conn
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, OSError) else OSError(str(exc)))
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._connecting[destination]

    # ---- inbound ---------------------------------------------------------------------------

    def _accept_inbound(self, conn: _TcpConnection) -> bool:
        if len(self._inbound_tcp) >= self._max_inbound_tcp:
            self.stats.tcp_refused += 1
            log.warning("tcp: %d inbound connections open, refusing another",
                        len(self._inbound_tcp))
            return False
        self._inbound_tcp.add(conn)
        return True

    def close_idle_tcp(self, now: float) -> int:
        """Close inbound connections idle for longer than the timeout; returns how many."""
        closed = 0
        for conn in list(self._inbound_tcp):
            if now - conn.last_used >= self._tcp_idle_timeout_s and conn.transport is not None:
                conn.transport.close()
                self._inbound_tcp.discard(conn)
                closed += 1
        self.stats.tcp_idle_closed += closed
        return closed

    async def _sweep_idle_tcp(self) -> None:
        # Lives as long as the transport (cancelled in close); one cheap pass per period.
        period = max(0.05, min(30.0, self._tcp_idle_timeout_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            self.close_idle_tcp(loop.time())

    def _admitted(self, source: Address) -> bool:
        if self._admit is None or self._admit(source):
            return True
        self.stats.refused += 1
        return False

    def _on_bytes(self, data: bytes, source: Address, transport: str) -> None:
        if not self._admitted(source):
            return  # refused before parsing: a flood costs us a lookup, not a parse
        if len(data) > self._max_size:
            self._count_malformed(data, source, transport, SipParseError("message too large"))
            return
        if not data.strip(b"\r\n"):
            return  # CRLF keep-alive (RFC 5626 §3.5.1)
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self._count_malformed(data, source, transport, exc)
            return
        self._deliver(Inbound(message, source, transport))

    def _count_malformed(
        self, data: bytes, source: Address, transport: str, exc: SipParseError
    ) -> None:
        self.stats.malformed += 1
        log.info("malformed SIP from %s:%s (%s): %s", source[0], source[1], transport, exc)
        if self._on_malformed is not None:
            self._on_malformed(data, source, transport, exc)

    def _deliver(self, inbound: Inbound) -> None:
        self.stats.received += 1
        try:
            self._on_message(inbound)
        except Exception:  # one bad message must never take the listener down
            log.exception("error handling SIP message from %s:%s", *inbound.source)
