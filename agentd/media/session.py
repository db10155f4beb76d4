"""One RTP session per call over asyncio UDP: G.711 in and out, paced at 20 ms, DTMF, latching.

Receive: datagram -> `parse_rtp` (malformed: counted, dropped) -> symmetric-RTP latch ->
audio to the `JitterBuffer` (decoded there with G.711 at playout), telephone events to a
`DtmfReceiver`. Every tick of the clock the jitter buffer yields one frame, so `frames()`
delivers a steady 160-sample int16 frame every 20 ms from `start()` on: silence before the
first packet, concealment when packets are missing.

Send: `send(pcm)` encodes and queues audio; every tick one 20 ms packet goes out (queued
audio, a key press from `send_dtmf` (ahead of queued audio), or encoded silence when there is
nothing to say), so the stream never stalls and timestamps stay continuous. The marker bit
flags the first packet of each talkspurt. `played_samples` counts queued audio that went on
the wire; `flush()` drops the rest at once. A recorder, if given, gets caller frames as
played out and agent frames as sent (decoded back from G.711: what the caller hears).

Symmetric RTP: we send to, and accept packets only from, the first source that sends us
valid RTP (our codec or DTMF payload type). If that was not the address given in SDP and the
SDP address sends later, we move to the SDP address once, for good. `set_remote` (a
re-INVITE) forgets the latch.

Pacing: all sessions given the same `MediaClock` tick together from one timer (every
session's packet is sent in phase 0, then receive-side work runs in phase 1); without one, a
session makes its own. One shared clock per process is the way to run many calls.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np

from agentd.media.dtmf import DtmfDigit, DtmfReceiver, dtmf_payloads
from agentd.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from agentd.media.jitterbuffer import Frame, JitterBuffer, JitterStats
from agentd.media.pacer import MediaClock, Tick
from agentd.media.rtp import RtpParseError, parse_rtp

__all__ = [
    "PT_PCMU",
    "PT_PCMA",
    "AudioRecorder",
    "SessionStats",
    "RtpSession",
    "open_session_in_range",
]

PT_PCMU = 0
PT_PCMA = 8
FRAME_SAMPLES = 160
RATE = 8000
_HEADER = struct.Struct("!BBHII")
_CODECS = {
    PT_PCMU: (ulaw_encode, ulaw_decode, b"\xff"),
    PT_PCMA: (alaw_encode, alaw_decode, b"\xd5"),
}

Address = tuple[str, int]


class AudioRecorder(Protocol):
    """What the session needs of a recorder (agentd.media.recorder.CallRecorder fits)."""

    def write_caller(self, pcm: np.ndarray, at: float) -> None: ...

    def write_agent(self, pcm: np.ndarray, at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Counter snapshot of one session."""

    packets_sent: int
    audio_packets_sent: int
    dtmf_packets_sent: int
    packets_received: int  # valid RTP from the latched source
    malformed: int  # datagrams that are not RTP
    foreign: int  # valid RTP from a source other than the latched one
    unknown_payload: int  # RTP with a payload type we did not negotiate
    send_errors: int
    frames_dropped: int  # received frames dropped because nobody consumed them
    ticks_skipped: int  # clock ticks missed because the loop fell behind
    dtmf_received: int
    jitter: JitterStats


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self._session = session

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._session._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._session._send_errors += 1


class RtpSession:
    """One call's RTP stream; see the module docstring. Use `await start()` or `async with`."""

    def __init__(
        self,
        *,
        local_host: str = "127.0.0.1",
        local_port: int = 0,
        remote: Address | None = None,
        payload_type: int = PT_PCMU,
        dtmf_payload_type: int | None = 101,
        recorder: AudioRecorder | None = None,
        clock: MediaClock | None = None,
        ssrc: int | None = None,
        frame_queue: int = 50,
        jitter_buffer: JitterBuffer | None = None,
    ) -> None:
        if payload_type not in _CODECS:
            raise ValueError(f"payload type {payload_type} is not PCMU (0) or PCMA (8)")
        if dtmf_payload_type is not None and not 96 <= dtmf_payload_type <= 127:
            raise ValueError(f"telephone-event payload type {dtmf_payload_type} not dynamic")
        self.local_host = local_host
        self.local_port = local_port
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.recorder = recorder
        self._encode, self._decode, silence_byte = _CODECS[payload_type]
        self._silence_byte = silence_byte
        self._silence_payload = silence_byte * FRAME_SAMPLES
        self._clock = clock if clock is not None else MediaClock()
        self._clock_keys: list[int] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False

        self._remote: Address | None = None
        self._sending = True
        self._latched: Address | None = None
        self._latch_final = False
        if remote is not None:
            self.set_remote(remote)

        # Receive side.
        self.jitter_buffer = jitter_buffer or JitterBuffer(
            self._decode, frame_samples=FRAME_SAMPLES
        )
        self._dtmf_receiver = DtmfReceiver()
        self._frames: deque[Frame] = deque()
        self._frame_limit = max(1, frame_queue)
        # Consumers parked in frames()/dtmf(); a bare future each is cheaper than an Event.
        self._frames_waiters: list[asyncio.Future[None]] = []
        self._digits: deque[DtmfDigit] = deque()
        self._digits_waiters: list[asyncio.Future[None]] = []

        # Send side.
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        # Audio is G.711-encoded as it is queued (one byte per sample, vectorised over the
        # whole chunk), so a tick only slices 160 bytes off the front.
        self._send_buf = bytearray()
        self._send_pos = 0
        self._played = 0
        self._talking = False
        self._dtmf_out: deque[tuple[bytes, bool]] = deque()
        self._dtmf_pending: deque[list[tuple[bytes, bool]]] = deque()
        self._dtmf_ts = 0

        self._packets_sent = 0
        self._audio_sent = 0
        self._dtmf_sent = 0
        self._packets_received = 0
        self._malformed = 0
        self._foreign = 0
        self._unknown_payload = 0
        self._send_errors = 0
        self._frames_dropped = 0
        self._ticks_skipped = 0
        self._dtmf_received = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the UDP socket and join the clock; raises OSError if the port is taken."""
        if self._transport is not None or self._closed:
            raise RuntimeError("session already started or closed")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), local_addr=(self.local_host, self.local_port)
        )
        self._transport = transport
        self.local_port = transport.get_extra_info("sockname")[1]
        # Phase 0 sends for every session sharing the clock before any receive-side work.
        self._clock_keys = [
            self._clock.subscribe(self._send_phase, phase=0),
            self._clock.subscribe(self._receive_phase, phase=1),
        ]

    def close(self) -> None:
        """Stop sending and receiving and end the iterators; safe to call again."""
        if self._closed:
            return
        self._closed = True
        for key in self._clock_keys:
            self._clock.unsubscribe(key)
        self._clock_keys = []
        if self._transport is not None:
            self._transport.close()
        last = self._dtmf_receiver.flush()
        if last is not None:
            self._push_digit(last)
        self._wake_frames()
        self._wake_digits()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> RtpSession:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses ----------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        return (self.local_host, self.local_port)

    @property
    def remote(self) -> Address | None:
        """Where packets go: the latched source if any, else the SDP address."""
        return self._latched or self._remote

    @property
    def latched(self) -> Address | None:
        return self._latched

    def set_remote(self, remote: Address | None) -> None:
        """Set the SDP address (e.g. after a re-INVITE) and forget any latched source."""
        self._remote = (remote[0], int(remote[1])) if remote is not None else None
        self._latched = None
        self._latch_final = False

    # -- receive ------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[np.ndarray]:
        """Received audio: one int16 frame of 160 samples per 20 ms tick, until close().

        Frames queue up (at most `frame_queue`, oldest dropped) while nobody iterates; with
        several iterators each frame goes to one of them.
        """
        async for frame in self.frames_info():
            yield frame.pcm

    async def frames_info(self) -> AsyncIterator[Frame]:
        """Like frames(), but each item also says whether it was concealed (`Frame.flags`)."""
        while True:
            if self._frames:
                yield self._frames.popleft()
            elif self._closed:
                return
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._frames_waiters.append(waiter)
                await waiter

    async def dtmf(self) -> AsyncIterator[DtmfDigit]:
        """Key presses received (RFC 4733), each once, until close()."""
        while True:
            if self._digits:
                yield self._digits.popleft()
            elif self._closed:
                return
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._digits_waiters.append(waiter)
                await waiter

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        try:
            packet = parse_rtp(data)
        except RtpParseError:
            self._malformed += 1
            return
        pt = packet.payload_type
        if pt != self.payload_type and pt != self.dtmf_payload_type:
            self._unknown_payload += 1
            return
        source = (addr[0], addr[1])
        if source != self._latched:
            if self._latched is None:
                self._latched = source
                self._latch_final = source == self._remote
            elif not self._latch_final and source == self._remote:
                self._latched = source  # prefer the address SDP gave us, once
                self._latch_final = True
            else:
                self._foreign += 1
                return
        self._packets_received += 1
        now = asyncio.get_running_loop().time()
        if pt == self.payload_type:
            self.jitter_buffer.put(packet, now)
        else:
            digit = self._dtmf_receiver.feed(packet.timestamp, packet.payload, packet.marker)
            if digit is not None:
                self._push_digit(digit)

    def _push_digit(self, digit: DtmfDigit) -> None:
        self._dtmf_received += 1
        self._digits.append(digit)
        self._wake_digits()

    def _wake_frames(self) -> None:
        if self._frames_waiters:
            _wake(self._frames_waiters)
            self._frames_waiters = []

    def _wake_digits(self) -> None:
        if self._digits_waiters:
            _wake(self._digits_waiters)
            self._digits_waiters = []

    # -- send ---------------------------------------------------------------------------

    @property
    def queued_samples(self) -> int:
        """Samples queued by send() and not yet sent."""
        return len(self._send_buf) - self._send_pos

    @property
    def played_samples(self) -> int:
        """Samples of queued audio that went on the wire so far (filler not counted)."""
        return self._played

    def send(self, pcm: np.ndarray) -> None:
        """Queue int16 8 kHz audio of any length; it goes out in 20 ms packets."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"send() takes int16 PCM, got {pcm.dtype}")
        if pcm.size and not self._closed:
            self._send_buf += self._encode(pcm.reshape(-1))

    def flush(self) -> int:
        """Drop all queued audio at once (barge-in); returns how many samples were dropped."""
        dropped = self.queued_samples
        self._send_buf = bytearray()
        self._send_pos = 0
        return dropped

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send one key press (RFC 4733) ahead of queued audio, which waits meanwhile."""
        if self.dtmf_payload_type is None:
            raise RuntimeError("no telephone-event payload type negotiated")
        self._dtmf_pending.append(dtmf_payloads(digit, duration_ms=duration_ms))

    def _take_payload(self) -> tuple[bytes, int]:
        """One packet's payload from the send queue, padded with silence; and its sample count."""
        start = self._send_pos
        end = min(start + FRAME_SAMPLES, len(self._send_buf))
        payload = bytes(self._send_buf[start:end])
        if end >= len(self._send_buf):
            self._send_buf = bytearray()
            self._send_pos = 0
        else:
            self._send_pos = end
            if end > 65536:  # compact now and then, not on every packet
                del self._send_buf[:end]
                self._send_pos = 0
        count = len(payload)
        if count < FRAME_SAMPLES:
            payload += self._silence_byte * (FRAME_SAMPLES - count)
        return payload, count

    # -- per tick -----------------------------------------------------------------------

    def _send_phase(self, tick: Tick, now: float) -> None:
        if self._closed:
            return
        if tick.skipped:
            # Ticks the loop missed: the send clock jumps over them (no burst).
            self._ts = (self._ts + tick.skipped * FRAME_SAMPLES) & 0xFFFFFFFF
        ts = self._ts
        self._ts = (ts + FRAME_SAMPLES) & 0xFFFFFFFF
        if not self._dtmf_out and self._dtmf_pending:
            self._dtmf_out.extend(self._dtmf_pending.popleft())
            self._dtmf_ts = ts
        if self._dtmf_out:
            payload, marker = self._dtmf_out.popleft()
            self._emit(self.dtmf_payload_type or 0, marker, self._dtmf_ts, payload)
            self._dtmf_sent += 1
            self._talking = False
            return
        if self._send_pos < len(self._send_buf):
            payload, count = self._take_payload()
            marker = not self._talking
            self._talking = True
            if self._emit(self.payload_type, marker, ts, payload):
                self._played += count
            self._audio_sent += 1
            if self.recorder is not None:
                # What the caller hears: the encoded audio, decoded again.
                self.recorder.write_agent(self._decode(payload[:count]), now)
            return
        self._talking = False
        self._emit(self.payload_type, False, ts, self._silence_payload)

    def _receive_phase(self, tick: Tick, now: float) -> None:
        if self._closed:
            return
        if tick.skipped:
            # Keep playout in step with the sender's clock across missed ticks.
            self._ticks_skipped += tick.skipped
            for _ in range(min(tick.skipped, 50)):
                self._receive_tick(now)
        self._receive_tick(now)

    def _receive_tick(self, now: float) -> None:
        frame = self.jitter_buffer.get(now)
        if len(self._frames) >= self._frame_limit:
            self._frames.popleft()
            self._frames_dropped += 1
        self._frames.append(frame)
        self._wake_frames()
        if self.recorder is not None:
            self.recorder.write_caller(frame.pcm, now)

    def set_sending(self, sending: bool) -> None:
        """Switch our outgoing RTP on or off (off while the peer holds the call, RFC 3264
        §8.4), independently of where received packets latch us; the clock keeps running so
        timestamps stay continuous when sending resumes."""
        self._sending = sending

    @property
    def sending(self) -> bool:
        return self._sending

    def _emit(self, pt: int, marker: bool, ts: int, payload: bytes) -> bool:
        """Send one packet to the current remote; False if there is nowhere to send it."""
        target = self._latched or self._remote
        if target is None or self._transport is None or not self._sending:
            return False
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        header = _HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq, ts, self.ssrc)
        self._transport.sendto(header + payload, target)
        self._packets_sent += 1
        return True

    # -- stats --------------------------------------------------------------------------

    @property
    def stats(self) -> SessionStats:
        return SessionStats(
            packets_sent=self._packets_sent,
            audio_packets_sent=self._audio_sent,
            dtmf_packets_sent=self._dtmf_sent,
            packets_received=self._packets_received,
            malformed=self._malformed,
            foreign=self._foreign,
            unknown_payload=self._unknown_payload,
            send_errors=self._send_errors,
            frames_dropped=self._frames_dropped,
            ticks_skipped=self._ticks_skipped,
            dtmf_received=self._dtmf_received,
            jitter=self.jitter_buffer.stats,
        )


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():  # a cancelled consumer leaves a cancelled future
            waiter.set_result(None)


async def open_session_in_range(
    host: str, port_min: int, port_max: int, **kwargs: object
) -> RtpSession:
    """Start a session on the first free even port in [port_min, port_max] (RTCP gets +1)."""
    if not 0 < port_min <= port_max <= 65535:
        raise ValueError(f"bad port range {port_min}-{port_max}")
    first = port_min + (port_min % 2)
    last_error: OSError | None = None
    for port in range(first, port_max + 1, 2):
        session = RtpSession(local_host=host, local_port=port, **kwargs)  # type: ignore[arg-type]
        try:
            await session.start()
        except OSError as exc:
            last_error = exc
            session.close()
            continue
        return session
    raise OSError(f"no free even UDP port in {port_min}-{port_max}") from last_error
