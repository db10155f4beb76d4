"""A scripted SIP caller for end-to-end tests and the latency bench (asyncio, loopback only).

`ScriptedCaller` places one call through the PBX (as an unauthenticated trunk when its From
user is not an extension, or with digest credentials), keeps sending 20 ms G.711 mu-law RTP
in real time like a phone (digital silence between utterances), sends pre-recorded caller
utterances, and records every packet the agent sends with its arrival time and level.
It answers in-dialog requests (BYE, REFER, NOTIFY, OPTIONS), can follow a REFER as the
transferee (INVITE the target through the PBX, report progress with NOTIFY sipfrag), barge
in while the agent talks and hang up mid-reply.

Times are `time.monotonic()`. Every wait is bounded; nothing loops forever.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agentd.media.g711 import ulaw_decode, ulaw_encode
from agentd.sip.auth import DigestClient
from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.parser import parse_message
from agentd.sip.sdp import parse_sdp
from agentd.sip.uri import parse_name_addr, parse_name_addr_list, tag_of

Address = tuple[str, int]
FRAME = 160                 # 20 ms at 8 kHz
FRAME_S = 0.02
VOICED_RMS = 300.0          # ~ -40 dBFS: a packet above this carries speech, not comfort noise
SILENCE_BYTE = b"\xff" * FRAME  # mu-law digital silence


class CallerError(RuntimeError):
    """The call could not be placed or a SIP exchange failed."""


@dataclass(frozen=True)
class HeardPacket:
    """One RTP packet from the agent."""

    time: float
    rms: float
    sequence: int

    @property
    def voiced(self) -> bool:
        return self.rms > VOICED_RMS


@dataclass(frozen=True)
class SaidUtterance:
    """When an utterance went out: first packet, first and last voiced packet, last packet."""

    started: float
    first_voiced: float
    last_voiced: float
    ended: float
    interrupted: bool = False  # stopped early by `stop_saying`


def voiced_frames(pcm: np.ndarray) -> np.ndarray:
    """Boolean per 20 ms frame: RMS above VOICED_RMS (after a G.711 round trip)."""
    count = len(pcm) // FRAME
    frames = ulaw_decode(ulaw_encode(np.asarray(pcm[:count * FRAME], np.int16)))
    frames = frames.astype(np.float64).reshape(count, FRAME)
    return np.sqrt(np.mean(frames ** 2, axis=1)) > VOICED_RMS


def _rms(payload: bytes) -> float:
    pcm = ulaw_decode(payload).astype(np.float64)
    return float(np.sqrt(np.mean(pcm ** 2))) if len(pcm) else 0.0


def _branch() -> str:
    return "z9hG4bKcaller" + secrets.token_hex(6)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: object) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.on_datagram(data, (addr[0], addr[1]))  # type: ignore[operator]


@dataclass
class _Dialog:
    call_id: str
    from_tag: str
    to_uri: str
    cseq: int = 1
    to_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)


class ScriptedCaller:
    """One scripted call to `target` through the PBX at `pbx` (see module doc)."""

    def __init__(self, pbx: Address, target: str = "2001", *,
                 from_user: str = "+447700900102", password: str | None = None,
                 host: str = "127.0.0.1", extra_headers: Sequence[tuple[str, str]] = (),
                 max_packets: int = 200_000) -> None:
        self.pbx = pbx
        self.target = target
        self.from_user = from_user
        self.host = host
        self.extra_headers = list(extra_headers)
        self.auth = DigestClient(from_user, password) if password is not None else None
        self.max_packets = max_packets
        self.heard: list[HeardPacket] = []
        self.requests: list[SipRequest] = []   # in-dialog requests the far end sent us
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.refer_to: str | None = None       # Refer-To of the last REFER we accepted
        self.transferee: ScriptedCaller | None = None  # the call made to follow a REFER
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        self._dialog: _Dialog | None = None
        self._agent_rtp: Address | None = None
        self._sender: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []        # mu-law frames queued to send
        self._said: asyncio.Queue[int] = asyncio.Queue()
        self._stop_saying = False
        self._seq = secrets.randbelow(1 << 15)
        self._ts = secrets.randbelow(1 << 30)
        self._ssrc = secrets.randbits(32)
        self._tasks: list[asyncio.Task[None]] = []
        self.answered_at: float | None = None

    # ---- set-up ----------------------------------------------------------------------

    @property
    def call_id(self) -> str | None:
        return self._dialog.call_id if self._dialog else None

    @property
    def sip_address(self) -> Address:
        assert self._sip is not None
        return self._sip.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    @property
    def rtp_address(self) -> Address:
        assert self._rtp is not None
        return self._rtp.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_sip), local_addr=(self.host, 0))
        for _ in range(20):  # an even RTP port, as phones use
            rtp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._on_rtp), local_addr=(self.host, 0))
            if rtp.get_extra_info("sockname")[1] % 2 == 0:
                self._rtp = rtp
                break
            rtp.close()
        if self._rtp is None:
            raise CallerError("no even RTP port")

    def _sdp(self) -> bytes:
        port = self.rtp_address[1]
        return ("v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
                "a=sendrecv\r\n").encode()

    async def dial(self, timeout: float = 15.0) -> None:
        """INVITE the target through the PBX (answering one digest challenge), ACK the 200.

        Raises CallerError on a final failure or no answer within `timeout`.
        """
        if self._sip is None:
            await self._open()
        pbx_host, pbx_port = self.pbx
        dialog = _Dialog(call_id=f"{secrets.token_hex(8)}@caller", from_tag=secrets.token_hex(4),
                         to_uri=f"sip:{self.target}@{pbx_host}:{pbx_port}")
        self._dialog = dialog
        body = self._sdp()
        auth_headers: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout
        for _attempt in range(3):
            branch = _branch()
            self._send_invite(dialog, branch, body, auth_headers)
            response = await self._final_response("INVITE", dialog.cseq, deadline)
            if response.status in (401, 407) and self.auth is not None:
                self._ack_failure(dialog, branch, response)
                name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
                answer = self.auth.respond(response.status, response.headers.get_all(name),
                                           "INVITE", dialog.to_uri, body)
                if answer is None:
                    raise CallerError(f"credentials refused: {self.auth.last_failure}")
                auth_headers = [answer]
                dialog.cseq += 1
                continue
            if response.status >= 300:
                self._ack_failure(dialog, branch, response)
                raise CallerError(f"call refused: {response.status} {response.reason}")
            break
        else:
            raise CallerError("too many challenges")
        dialog.to_tag = tag_of(response.headers.get("To"))
        contact = response.headers.get("Contact")
        dialog.remote_target = str(parse_name_addr(contact).uri) if contact else dialog.to_uri
        routes = [na for v in response.headers.get_all("Record-Route")
                  for na in parse_name_addr_list(v)]
        dialog.route_set = [f"<{na.uri}>" for na in reversed(routes)]
        self._send_in_dialog("ACK", cseq=dialog.cseq)
        sdp = parse_sdp(response.body)
        media = sdp.media[0]
        address = media.connection.address if media.connection else (
            sdp.connection.address if sdp.connection else "127.0.0.1")
        self._agent_rtp = (address, media.port)
        self.answered_at = time.monotonic()
        self._sender = asyncio.ensure_future(self._send_rtp())

    def _send_invite(self, dialog: _Dialog, branch: str, body: bytes,
                     auth: list[tuple[str, str]]) -> None:
        host, port = self.sip_address
        headers = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.from_user}@{self.pbx[0]}>;tag={dialog.from_tag}"),
            ("To", f"<sip:{self.target}@{self.pbx[0]}>"),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{dialog.cseq} INVITE"),
            ("Contact", f"<sip:caller@{host}:{port}>"),
            ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY"),
            *self.extra_headers, *auth,
            ("Content-Type", "application/sdp"),
        ]
        self._send_raw(f"INVITE {dialog.to_uri} SIP/2.0", headers, body, self.pbx)

    def _ack_failure(self, dialog: _Dialog, branch: str, response: SipResponse) -> None:
        host, port = self.sip_address
        headers = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.from_user}@{self.pbx[0]}>;tag={dialog.from_tag}"),
            ("To", response.headers.get("To") or f"<{dialog.to_uri}>"),
            ("Call-ID", dialog.call_id), ("CSeq", f"{dialog.cseq} ACK"),
        ]
        self._send_raw(f"ACK {dialog.to_uri} SIP/2.0", headers, b"", self.pbx)

    async def _final_response(self, method: str, cseq: int, deadline: float) -> SipResponse:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                response = await asyncio.wait_for(self._responses.get(), remaining)
            except TimeoutError:
                break
            if response.cseq == (cseq, method) and response.status >= 200:
                return response
        raise CallerError(f"no final response to {method}")

    # ---- SIP plumbing ----------------------------------------------------------------

    def _send_raw(self, start: str, headers: list[tuple[str, str]], body: bytes,
                  destination: Address) -> None:
        assert self._sip is not None
        lines = [start, *(f"{n}: {v}" for n, v in headers), f"Content-Length: {len(body)}"]
        self._sip.sendto("\r\n".join(lines).encode() + b"\r\n\r\n" + body, destination)

    def _send_in_dialog(self, method: str, *, cseq: int | None = None,
                        headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> int:
        dialog = self._dialog
        assert dialog is not None and dialog.to_tag is not None
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        host, port = self.sip_address
        all_headers = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch={_branch()};rport"),
            ("Max-Forwards", "70"),
            *(("Route", route) for route in dialog.route_set),
            ("From", f"<sip:{self.from_user}@{self.pbx[0]}>;tag={dialog.from_tag}"),
            ("To", f"<sip:{self.target}@{self.pbx[0]}>;tag={dialog.to_tag}"),
            ("Call-ID", dialog.call_id), ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:caller@{host}:{port}>"), *headers,
        ]
        self._send_raw(f"{method} {dialog.remote_target} SIP/2.0", all_headers, body, self.pbx)
        return cseq

    def _answer(self, request: SipRequest, status: int, reason: str,
                destination: Address) -> None:
        headers = [(name, value) for name in ("Via", "From", "To", "Call-ID", "CSeq")
                   for value in request.headers.get_all(name)]
        self._send_raw(f"SIP/2.0 {status} {reason}", headers, b"", destination)

    def _on_sip(self, data: bytes, source: Address) -> None:
        try:
            message = parse_message(data)
        except ValueError:
            return
        if isinstance(message, SipResponse):
            self._responses.put_nowait(message)
            return
        dialog = self._dialog
        if dialog is None or message.call_id != dialog.call_id:
            if message.method != "ACK":
                self._answer(message, 481, "Call Does Not Exist", source)
            return
        self.requests.append(message)
        if message.method == "BYE":
            self._answer(message, 200, "OK", source)
            self._finish("remote BYE")
        elif message.method == "REFER":
            self.refer_to = message.headers.get("Refer-To")
            self._answer(message, 202, "Accepted", source)
        elif message.method in ("NOTIFY", "OPTIONS", "INFO", "UPDATE", "INVITE"):
            self._answer(message, 200, "OK", source)
        elif message.method != "ACK":
            self._answer(message, 405, "Method Not Allowed", source)

    def _finish(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    # ---- RTP -------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, source: Address) -> None:
        if len(data) < 12 or data[0] >> 6 != 2 or (data[1] & 0x7F) != 0:
            return
        if len(self.heard) >= self.max_packets:
            return
        start = 12 + 4 * (data[0] & 0x0F)
        sequence = int.from_bytes(data[2:4], "big")
        self.heard.append(HeardPacket(time.monotonic(), _rms(data[start:]), sequence))

    async def _send_rtp(self) -> None:
        """One packet every 20 ms on an absolute schedule (no drift); silence when idle."""
        assert self._rtp is not None and self._agent_rtp is not None
        started = time.monotonic()
        index = 0
        while not self.ended.is_set():
            index += 1
            delay = started + index * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._stop_saying and self._pending:
                self._pending.clear()
                self._said.put_nowait(-1)
            payload = self._pending.pop(0) if self._pending else SILENCE_BYTE
            header = bytes([0x80, 0x80 if index == 1 else 0]) + \
                self._seq.to_bytes(2, "big") + self._ts.to_bytes(4, "big") + \
                self._ssrc.to_bytes(4, "big")
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            self._rtp.sendto(header + payload, self._agent_rtp)
            if payload is not SILENCE_BYTE:
                self._said.put_nowait(index)

    async def say(self, pcm: np.ndarray, *, timeout: float = 60.0) -> SaidUtterance:
        """Send `pcm` (int16, 8 kHz) in real time; returns when its last packet went out.

        `stop_saying()` from another task cuts it short (interrupted=True).
        """
        if self._sender is None:
            raise CallerError("not in a call")
        voiced = voiced_frames(pcm)
        count = len(voiced)
        payload = ulaw_encode(np.asarray(pcm[:count * FRAME], np.int16))
        while not self._said.empty():
            self._said.get_nowait()
        self._stop_saying = False
        self._pending.extend(payload[i * FRAME:(i + 1) * FRAME] for i in range(count))
        sent: list[float] = []
        interrupted = False
        deadline = time.monotonic() + timeout
        while len(sent) < count and not self.ended.is_set():
            try:
                got = await asyncio.wait_for(self._said.get(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            if got < 0:
                interrupted = True
                break
            sent.append(time.monotonic())
        self._stop_saying = False
        if not sent:
            raise CallerError("nothing was sent")
        voiced_times = [t for t, v in zip(sent, voiced, strict=False) if v]
        if not voiced_times:
            voiced_times = [sent[0]]
        return SaidUtterance(sent[0], voiced_times[0], voiced_times[-1], sent[-1], interrupted)

    def stop_saying(self) -> None:
        """Cut the utterance in progress short (the rest is dropped, silence follows)."""
        self._stop_saying = True

    # ---- listening -------------------------------------------------------------------

    def voiced_after(self, after: float) -> list[HeardPacket]:
        return [p for p in self.heard if p.voiced and p.time > after]

    async def wait_voice(self, after: float, timeout: float) -> HeardPacket | None:
        """The first voiced agent packet arriving after `after` (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.ended.is_set():
            found = self.voiced_after(after)
            if found:
                return found[0]
            await asyncio.sleep(0.01)
        found = self.voiced_after(after)
        return found[0] if found else None

    async def wait_quiet(self, after: float, quiet_s: float = 1.0,
                         timeout: float = 30.0) -> float | None:
        """Wait until the agent spoke after `after` and then was quiet for `quiet_s`.

        Returns the arrival of its last voiced packet, or None on timeout/no speech.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.ended.is_set():
            voiced = self.voiced_after(after)
            if voiced and time.monotonic() - voiced[-1].time >= quiet_s:
                return voiced[-1].time
            await asyncio.sleep(0.02)
        voiced = self.voiced_after(after)
        return voiced[-1].time if voiced and self.ended.is_set() else None

    async def wait_silent_from(self, after: float, quiet_s: float = 0.1,
                               timeout: float = 5.0) -> float | None:
        """Arrival of the last voiced packet after `after` that is followed by `quiet_s` of
        unvoiced (or no) packets: when the agent went silent. None if it never did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            voiced = self.voiced_after(after)
            last = voiced[-1].time if voiced else after
            if time.monotonic() - last >= quiet_s:
                return last
            await asyncio.sleep(0.01)
        return None

    def heard_audio_s(self, after: float, before: float | None = None) -> float:
        """Seconds of voiced agent audio between two instants."""
        return FRAME_S * sum(1 for p in self.heard if p.voiced and p.time > after and (
            before is None or p.time <= before))

    # ---- transfer and hang-up --------------------------------------------------------

    async def wait_refer(self, timeout: float) -> str | None:
        """The Refer-To of a REFER the agent sent (bounded wait)."""
        deadline = time.monotonic() + timeout
        while self.refer_to is None and time.monotonic() < deadline and not self.ended.is_set():
            await asyncio.sleep(0.02)
        return self.refer_to

    def _notify(self, sipfrag: str, terminated: bool) -> None:
        state = "terminated;reason=noresource" if terminated else "active;expires=60"
        self._send_in_dialog("NOTIFY", headers=[
            ("Event", "refer"), ("Subscription-State", state),
            ("Content-Type", "message/sipfrag;version=2.0")], body=sipfrag.encode())

    async def follow_refer(self, timeout: float = 15.0) -> ScriptedCaller:
        """Act as the transferee: INVITE the Refer-To target through the PBX and tell the
        agent how it went (NOTIFY sipfrag 100, then 200 or the failure). Returns the new call."""
        if self.refer_to is None:
            raise CallerError("no REFER to follow")
        uri = parse_name_addr(self.refer_to).uri
        user = getattr(uri, "user", None)
        if not user:
            raise CallerError(f"cannot follow Refer-To {self.refer_to!r}")
        headers = [(name, value) for name, value in getattr(uri, "headers", {}).items()]
        self._notify("SIP/2.0 100 Trying", False)
        new_call = ScriptedCaller(self.pbx, user, from_user=self.from_user, host=self.host,
                                  extra_headers=headers)
        self.transferee = new_call
        try:
            await new_call.dial(timeout)
        except CallerError as exc:
            self._notify("SIP/2.0 503 Service Unavailable", True)
            raise CallerError(f"transfer target did not answer: {exc}") from exc
        self._notify("SIP/2.0 200 OK", True)
        return new_call

    async def hangup(self, timeout: float = 5.0) -> bool:
        """BYE (if the call is up) and stop sending; True if the far end said 200."""
        ok = False
        if self._dialog is not None and self._dialog.to_tag and not self.ended.is_set():
            cseq = self._send_in_dialog("BYE")
            self._finish("local BYE")
            try:
                response = await self._final_response("BYE", cseq, time.monotonic() + timeout)
                ok = response.status == 200
            except CallerError:
                ok = False
        self._finish(self.end_reason or "local BYE")
        await self.close()
        return ok

    async def close(self) -> None:
        """Stop the sender and close both sockets (no BYE). Idempotent."""
        self._finish(self.end_reason or "closed")
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        for transport in (self._sip, self._rtp):
            if transport is not None:
                transport.close()
        self._sip = self._rtp = None
