"""A hand-driven SIP peer for UA tests: raw UDP on loopback, hand-written messages, bounded waits.

`SipPeer` sends text we write ourselves and parses what comes back with the project parser,
so tests read fields rather than grep bytes. Every wait has a timeout; nothing loops forever.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
from dataclasses import dataclass, field

from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.parser import parse_message
from agentd.sip.uri import tag_of

Address = tuple[str, int]
_branches = itertools.count(1)


def branch() -> str:
    return f"z9hG4bKpeer{next(_branches)}{secrets.token_hex(3)}"


class _Queue(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.items: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.items.put_nowait((data, (addr[0], addr[1])))


class UdpSocket:
    """A loopback UDP socket with a receive queue (used for SIP and for RTP)."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Queue) -> None:
        self.transport = transport
        self._protocol = protocol

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> UdpSocket:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            _Queue, local_addr=(host, 0))
        return cls(transport, protocol)

    @property
    def address(self) -> Address:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def sendto(self, data: bytes, destination: Address) -> None:
        self.transport.sendto(data, destination)

    async def recv(self, timeout: float) -> tuple[bytes, Address] | None:
        try:
            return await asyncio.wait_for(self._protocol.items.get(), timeout)
        except TimeoutError:
            return None

    def drain(self) -> list[bytes]:
        got = []
        while not self._protocol.items.empty():
            got.append(self._protocol.items.get_nowait()[0])
        return got

    async def count_for(self, seconds: float) -> int:
        """Datagrams that arrive within `seconds` (earlier ones are discarded first)."""
        self.drain()
        await asyncio.sleep(seconds)
        return len(self.drain())

    def close(self) -> None:
        self.transport.close()


@dataclass
class Call:
    """What the peer remembers about one call it placed."""

    call_id: str
    from_tag: str
    cseq: int = 1
    to_tag: str | None = None
    invite_branch: str = ""
    invite_text: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class SipPeer:
    """A SIP phone/PBX stand-in talking to `target` over UDP."""

    def __init__(self, sock: UdpSocket, target: Address) -> None:
        self.sock = sock
        self.target = target

    @classmethod
    async def open(cls, target: Address, host: str = "127.0.0.1") -> SipPeer:
        return cls(await UdpSocket.open(host), target)

    @property
    def address(self) -> Address:
        return self.sock.address

    @property
    def contact(self) -> str:
        host, port = self.address
        return f"<sip:caller@{host}:{port}>"

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.sock.sendto(data, self.target)

    async def recv(self, timeout: float = 2.0) -> SipRequest | SipResponse | None:
        """The next SIP message (datagrams that do not parse are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            got = await self.sock.recv(remaining)
            if got is None:
                return None
            try:
                return parse_message(got[0])
            except ValueError:
                continue
        return None

    async def response(self, status: int | None = None, method: str | None = None,
                       timeout: float = 2.0, final: bool = False) -> SipResponse:
        """The next response matching; other messages are skipped. Fails on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            message = await self.recv(remaining)
            if not isinstance(message, SipResponse):
                continue
            if final and message.status < 200:
                continue
            if method is not None and (message.cseq or (0, ""))[1] != method:
                continue
            if status is None or message.status == status:
                return message
        raise AssertionError(f"no {status or ''} response to {method or 'any'} "
                             f"within {timeout} s")

    async def request(self, method: str, timeout: float = 2.0) -> SipRequest:
        """The next request with this method; other messages are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            message = await self.recv(remaining)
            if isinstance(message, SipRequest) and message.method == method:
                return message
        raise AssertionError(f"no {method} within {timeout} s")

    # ---- writing messages ------------------------------------------------------------

    def via(self, branch_id: str) -> str:
        host, port = self.address
        return f"SIP/2.0/UDP {host}:{port};branch={branch_id};rport"

    def build(
        self,
        method: str,
        call: Call,
        *,
        uri: str | None = None,
        branch_id: str | None = None,
        cseq: int | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | str = b"",
        content_type: str | None = None,
        to_tag: str | None = None,
    ) -> str:
        host, port = self.target
        body_bytes = body.encode() if isinstance(body, str) else body
        to = f"<sip:2001@{host}>"
        tag = to_tag if to_tag is not None else call.to_tag
        if tag:
            to += f";tag={tag}"
        lines = [
            f"{method} {uri or f'sip:2001@{host}:{port}'} SIP/2.0",
            f"Via: {self.via(branch_id or branch())}",
            "Max-Forwards: 70",
            f"From: \"Caller\" <sip:caller@127.0.0.1>;tag={call.from_tag}",
            f"To: {to}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {cseq if cseq is not None else call.cseq} {method}",
            f"Contact: {self.contact}",
        ]
        lines += [f"{name}: {value}" for name, value in headers or []]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body_bytes)}")
        return "\r\n".join(lines) + "\r\n\r\n" + body_bytes.decode("latin-1")

    def new_call(self) -> Call:
        return Call(call_id=f"{secrets.token_hex(6)}@peer", from_tag=secrets.token_hex(4))

    def invite(self, call: Call, body: str = "", headers: list[tuple[str, str]] | None = None,
               content_type: str | None = "application/sdp") -> None:
        call.invite_branch = branch()
        call.invite_text = self.build("INVITE", call, branch_id=call.invite_branch,
                                      headers=headers, body=body,
                                      content_type=content_type if body else None)
        self.send(call.invite_text)

    def ack(self, call: Call, response: SipResponse) -> None:
        """ACK a final response: same branch for a non-2xx, a new one for a 2xx (§17.1.1.3)."""
        call.to_tag = tag_of(response.headers.get("To"))
        same = response.status >= 300
        self.send(self.build("ACK", call, branch_id=call.invite_branch if same else branch(),
                             cseq=(response.cseq or (call.cseq, ""))[0]))

    def in_dialog(self, method: str, call: Call, **kwargs: object) -> None:
        call.cseq += 1
        self.send(self.build(method, call, **kwargs))  # type: ignore[arg-type]

    def answer(self, request: SipRequest, status: int, reason: str,
               headers: list[tuple[str, str]] | None = None) -> None:
        """Respond to a request the UA sent us."""
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in request.headers.get_all(name):
                lines.append(f"{name}: {value}")
        lines += [f"{name}: {value}" for name, value in headers or []]
        lines.append("Content-Length: 0")
        self.send("\r\n".join(lines) + "\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def sdp_offer(rtp_port: int, formats: str = "0 8 101", *, direction: str | None = None,
              host: str = "127.0.0.1", version: int = 1) -> str:
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "18": "G729/8000", "9": "G722/8000",
             "101": "telephone-event/8000"}
    lines = [
        "v=0", f"o=peer 42 {version} IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {rtp_port} RTP/AVP {formats}",
    ]
    lines += [f"a=rtpmap:{fmt} {names[fmt]}" for fmt in formats.split()]
    if "101" in formats.split():
        lines.append("a=fmtp:101 0-16")
    if direction:
        lines.append(f"a={direction}")
    return "\r\n".join(lines) + "\r\n"


def rtp_packet(seq: int, ts: int, payload: bytes, *, pt: int = 0, marker: bool = False,
               ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


def telephone_event(event: int, end: bool, duration: int, volume: int = 10) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)
