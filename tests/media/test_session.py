"""RTP session over loopback: audio both ways, pacing, flush, filler, latching, DTMF, recorder."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agentd.media.g711 import ulaw_decode
from agentd.media.jitterbuffer import FrameFlag
from agentd.media.pacer import MediaClock
from agentd.media.recorder import CallRecorder
from agentd.media.rtp import RtpPacket, parse_rtp, seq_diff, ts_diff
from agentd.media.session import PT_PCMA, PT_PCMU, RtpSession, open_session_in_range

HOST = "127.0.0.1"


def tone(freq: float, seconds: float, amplitude: float = 8000.0, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


class Sink(asyncio.DatagramProtocol):
    """A bare UDP socket that records what it receives and can send raw datagrams."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data, addr))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def packets(self) -> list[RtpPacket]:
        return [parse_rtp(data) for _, data, _ in self.received]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_sink() -> Sink:
    _, sink = await asyncio.get_running_loop().create_datagram_endpoint(
        Sink, local_addr=(HOST, 0))
    return sink


async def collect_frames(session: RtpSession, count: int) -> list[np.ndarray]:
    frames = []
    async for frame in session.frames():
        frames.append(frame)
        if len(frames) >= count:
            break
    return frames


async def test_two_sessions_carry_a_tone_with_the_right_frequency_and_level() -> None:
    clock = MediaClock()
    async with RtpSession(local_host=HOST, clock=clock) as a, \
            RtpSession(local_host=HOST, clock=clock) as b:
        a.set_remote(b.local_address)
        b.set_remote(a.local_address)
        a.send(tone(1000.0, 1.0))
        b.send(tone(440.0, 1.0, amplitude=4000.0))
        got_b, got_a = await asyncio.gather(collect_frames(b, 60), collect_frames(a, 60))
    for frames, freq, amplitude in ((got_b, 1000.0, 8000.0), (got_a, 440.0, 4000.0)):
        audio = np.concatenate(frames).astype(np.float64)
        # Skip the start (silence before the first packet, jitter buffer pre-roll).
        voiced = audio[np.nonzero(np.abs(audio) > 100)[0][0]:][:4000]
        assert voiced.size == 4000
        spectrum = np.abs(np.fft.rfft(voiced * np.hanning(voiced.size)))
        peak = np.argmax(spectrum) * 8000 / voiced.size
        assert abs(peak - freq) <= 4
        rms = np.sqrt(np.mean(voiced**2))
        assert rms == pytest.approx(amplitude / np.sqrt(2), rel=0.05)
    assert a.closed and b.closed


async def test_frames_are_silence_before_the_first_packet() -> None:
    async with RtpSession(local_host=HOST) as session:
        frames = []
        async for frame in session.frames_info():
            frames.append(frame)
            if len(frames) == 5:
                break
    assert all(f.flags == FrameFlag.SILENCE and f.pcm.shape == (160,) for f in frames)
    assert all(f.pcm.dtype == np.int16 and not f.pcm.any() for f in frames)


async def test_pacing_sequence_timestamps_and_marker_over_two_seconds() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address) as session:
            await asyncio.sleep(0.2)
            session.send(tone(800.0, 0.5))
            await asyncio.sleep(1.85)
            assert session.played_samples == 4000
            assert session.queued_samples == 0
    finally:
        sink.close()
    times = np.array([t for t, _, _ in sink.received])
    packets = sink.packets()
    assert len(packets) >= 95
    intervals = np.diff(times)
    # The mean cannot drift; single intervals may be off on a busy machine.
    assert np.mean(intervals) == pytest.approx(0.02, abs=0.001)
    assert np.median(intervals) == pytest.approx(0.02, abs=0.003)
    assert len({p.ssrc for p in packets}) == 1
    assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in zip(packets, packets[1:]))
    assert all(ts_diff(b.timestamp, a.timestamp) == 160 for a, b in zip(packets, packets[1:]))
    assert all(p.payload_type == PT_PCMU and len(p.payload) == 160 for p in packets)
    # Filler silence, then 25 packets of tone with the marker on the first only, then filler.
    audio = [i for i, p in enumerate(packets) if p.payload != b"\xff" * 160]
    assert len(audio) == 25 and audio == list(range(audio[0], audio[0] + 25))
    assert [i for i, p in enumerate(packets) if p.marker] == [audio[0]]
    sent = np.concatenate([ulaw_decode(packets[i].payload) for i in audio])
    assert np.max(np.abs(sent)) > 7000


async def test_partial_frame_is_padded_and_counted_exactly() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address, payload_type=PT_PCMA) as s:
            s.send(np.full(100, 3000, np.int16))
            s.send(np.full(100, 3000, np.int16))
            await asyncio.sleep(0.15)
            assert s.played_samples == 200 and s.queued_samples == 0
    finally:
        sink.close()
    audio = [p for p in sink.packets() if p.payload != b"\xd5" * 160]
    assert len(audio) == 2
    assert all(p.payload_type == PT_PCMA for p in sink.packets())


async def test_flush_stops_audio_at_once_and_reports_dropped_samples() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address) as session:
            session.send(tone(1000.0, 5.0))
            await asyncio.sleep(0.3)
            played_before = session.played_samples
            dropped = session.flush()
            flushed_at = asyncio.get_running_loop().time()
            assert session.queued_samples == 0
            assert dropped + session.played_samples == 40000
            assert played_before <= session.played_samples <= played_before + 160
            assert 40000 - 0.5 * 8000 <= dropped <= 40000 - 0.15 * 8000
            await asyncio.sleep(0.3)
            assert session.played_samples == 40000 - dropped
    finally:
        sink.close()
    after = [data for t, data, _ in sink.received if t > flushed_at + 0.001]
    assert len(after) >= 10  # the filler keeps the stream going
    assert all(parse_rtp(d).payload == b"\xff" * 160 for d in after)


async def test_filler_keeps_packets_flowing_with_continuous_timestamps() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address):
            await asyncio.sleep(0.5)
    finally:
        sink.close()
    packets = sink.packets()
    assert 20 <= len(packets) <= 27
    assert all(p.payload == b"\xff" * 160 and not p.marker for p in packets)
    assert all(ts_diff(b.timestamp, a.timestamp) == 160 for a, b in zip(packets, packets[1:]))


def rtp_bytes(seq: int, ssrc: int = 42, pt: int = PT_PCMU, fill: int = 0x00) -> bytes:
    return RtpPacket(pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc,
                     bytes([fill]) * 160).to_bytes()


async def test_latches_to_first_source_and_ignores_others() -> None:
    first, second = await open_sink(), await open_sink()
    try:
        async with RtpSession(local_host=HOST) as session:
            assert session.remote is None
            for seq in range(5):
                first.transport.sendto(rtp_bytes(seq), session.local_address)
                await asyncio.sleep(0.005)
            for seq in range(5):
                second.transport.sendto(rtp_bytes(100 + seq, ssrc=7), session.local_address)
            await asyncio.sleep(0.15)
            assert session.latched == first.address
            assert session.remote == first.address
            stats = session.stats
            assert stats.packets_received == 5
            assert stats.foreign == 5
            assert stats.jitter.resyncs == 0
    finally:
        first.close()
        second.close()
    assert len(first.received) >= 5  # our stream goes back to where the caller sends from
    assert second.received == []


async def test_sdp_address_wins_over_an_earlier_source_once() -> None:
    stray, sdp, third = await open_sink(), await open_sink(), await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sdp.address) as session:
            stray.transport.sendto(rtp_bytes(1), session.local_address)
            await asyncio.sleep(0.05)
            assert session.latched == stray.address
            sdp.transport.sendto(rtp_bytes(2), session.local_address)
            await asyncio.sleep(0.05)
            assert session.latched == sdp.address
            # Latched to the SDP address for good: neither the stray nor a third moves it.
            stray.transport.sendto(rtp_bytes(3), session.local_address)
            third.transport.sendto(rtp_bytes(4), session.local_address)
            await asyncio.sleep(0.05)
            assert session.latched == sdp.address
            assert session.stats.foreign == 2
            # A re-INVITE names a new address: the latch is forgotten.
            session.set_remote(third.address)
            assert session.latched is None and session.remote == third.address
            third.transport.sendto(rtp_bytes(5), session.local_address)
            await asyncio.sleep(0.05)
            assert session.latched == third.address
    finally:
        for sink in (stray, sdp, third):
            sink.close()


async def test_malformed_and_unknown_datagrams_are_counted_not_raised() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST) as session:
            garbage = [b"\x00", b"hello world, not rtp", b"\x80" * 11,
                       b"\x8f\x00" + bytes(10), b"\xa0\x00" + bytes(10) + b"\x00"]
            for data in garbage:
                sink.transport.sendto(data, session.local_address)
            sink.transport.sendto(rtp_bytes(1, pt=18), session.local_address)  # G.729
            await asyncio.sleep(0.05)
            stats = session.stats
            assert stats.malformed == len(garbage)
            assert stats.unknown_payload == 1
            assert session.latched is None  # nothing valid for us yet
            sink.transport.sendto(rtp_bytes(2), session.local_address)
            await asyncio.sleep(0.05)
            assert session.latched == sink.address
            assert session.stats.packets_received == 1
    finally:
        sink.close()


async def test_dtmf_both_ways() -> None:
    clock = MediaClock()
    async with RtpSession(local_host=HOST, clock=clock) as a, \
            RtpSession(local_host=HOST, clock=clock) as b:
        a.set_remote(b.local_address)
        b.set_remote(a.local_address)
        a.send(tone(500.0, 0.3))
        a.send_dtmf("5")
        a.send_dtmf("#", duration_ms=60)
        b.send_dtmf("A")

        async def digits(session: RtpSession, count: int) -> list[str]:
            out = []
            async for digit in session.dtmf():
                out.append(digit.digit)
                if len(out) == count:
                    break
            return out

        got_b, got_a = await asyncio.wait_for(
            asyncio.gather(digits(b, 2), digits(a, 1)), timeout=3.0)
        assert got_b == ["5", "#"]
        assert got_a == ["A"]
        # Key presses go out ahead of queued audio, which follows them in full.
        assert a.played_samples == 0
        await asyncio.sleep(0.4)
        assert a.played_samples == 2400
        # 100 ms press: 4 packets + 3 end packets; 60 ms press: 2 + 3.
        assert a.stats.dtmf_packets_sent == 7 + 5


async def test_dtmf_packets_share_one_timestamp_and_audio_resumes_in_step() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address, dtmf_payload_type=96) as s:
            s.send_dtmf("1")
            s.send(tone(500.0, 0.1))
            await asyncio.sleep(0.4)
    finally:
        sink.close()
    packets = sink.packets()
    events = [p for p in packets if p.payload_type == 96]
    assert len(events) == 7 and len({p.timestamp for p in events}) == 1
    assert events[0].marker and not any(p.marker for p in events[1:])
    start = packets.index(events[0])
    after = packets[start + 7]
    assert after.payload_type == PT_PCMU and after.marker
    assert ts_diff(after.timestamp, events[0].timestamp) == 7 * 160
    assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in zip(packets, packets[1:]))


async def test_close_is_idempotent_and_ends_iterators() -> None:
    session = RtpSession(local_host=HOST)
    await session.start()

    async def drain() -> int:
        count = 0
        async for _ in session.frames():
            count += 1
        return count

    async def drain_digits() -> int:
        return len([d async for d in session.dtmf()])

    frames_task = asyncio.create_task(drain())
    digits_task = asyncio.create_task(drain_digits())
    await asyncio.sleep(0.1)
    session.close()
    session.close()
    frames, digits = await asyncio.wait_for(asyncio.gather(frames_task, digits_task), 1.0)
    assert frames >= 2 and digits == 0
    session.send(np.zeros(160, np.int16))  # ignored after close
    assert session.queued_samples == 0


async def test_send_rejects_non_int16() -> None:
    session = RtpSession(local_host=HOST)
    with pytest.raises(TypeError):
        session.send(np.zeros(160, np.float32))
    with pytest.raises(ValueError):
        RtpSession(payload_type=9)


async def test_open_in_range_takes_the_first_free_even_port() -> None:
    first = await open_session_in_range(HOST, 41001, 41100)
    try:
        assert first.local_port % 2 == 0 and 41002 <= first.local_port <= 41100
        second = await open_session_in_range(HOST, first.local_port, 41100)
        try:
            assert second.local_port % 2 == 0 and second.local_port > first.local_port
        finally:
            second.close()
    finally:
        first.close()
    with pytest.raises(OSError):
        blocker = await open_session_in_range(HOST, 41200, 41201)
        try:
            await open_session_in_range(HOST, 41200, 41201)
        finally:
            blocker.close()


async def test_recorder_gets_both_sides(tmp_path: Path) -> None:
    clock = MediaClock()
    path = tmp_path / "call.wav"
    loop = asyncio.get_running_loop()
    recorder = CallRecorder(path, rate=8000, start=loop.time())
    async with RtpSession(local_host=HOST, clock=clock, recorder=recorder) as agent, \
            RtpSession(local_host=HOST, clock=clock) as caller:
        agent.set_remote(caller.local_address)
        caller.set_remote(agent.local_address)
        caller.send(tone(300.0, 0.4))
        await asyncio.sleep(0.5)
        agent.send(tone(700.0, 0.4))
        await asyncio.sleep(0.5)
    recorder.close()
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        audio = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
    caller_side, agent_side = audio[:, 0].astype(float), audio[:, 1].astype(float)
    # Each side has about 0.4 s of loud tone, and the caller speaks before the agent.
    loud_caller = np.nonzero(np.abs(caller_side) > 1000)[0]
    loud_agent = np.nonzero(np.abs(agent_side) > 1000)[0]
    assert loud_caller.size > 1000 and loud_agent.size > 1000
    assert loud_caller[0] < loud_agent[0]
    assert 0.3 * 8000 <= loud_agent[-1] - loud_agent[0] <= 0.45 * 8000


async def test_a_stalled_loop_skips_ticks_instead_of_bursting() -> None:
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address) as session:
            await asyncio.sleep(0.1)
            time.sleep(0.25)  # block the event loop: ~12 ticks go by
            await asyncio.sleep(0.1)
            skipped = session.stats.ticks_skipped
    finally:
        sink.close()
    assert skipped >= 5
    packets = sink.packets()
    gaps = [ts_diff(b.timestamp, a.timestamp) for a, b in zip(packets, packets[1:])]
    # Timestamps jump over the skipped ticks (real time stays in step) ...
    assert sum(gaps) == pytest.approx(len(gaps) * 160 + skipped * 160)
    assert max(gaps) == (skipped + 1) * 160
    # ... and sequence numbers stay contiguous: nothing was lost, nothing bursts beyond 3.
    assert all(seq_diff(b.sequence, a.sequence) == 1 for a, b in zip(packets, packets[1:]))
    times = [t for t, _, _ in sink.received]
    bunched = max(sum(1 for u in times if t <= u < t + 0.002) for t in times)
    assert bunched <= 3


async def test_a_cancelled_consumer_does_not_stop_another() -> None:
    async with RtpSession(local_host=HOST) as session:
        async def consume(limit: int) -> int:
            count = 0
            async for _ in session.frames():
                count += 1
                if count == limit:
                    break
            return count

        doomed = asyncio.create_task(consume(1000))
        survivor = asyncio.create_task(consume(1000))
        await asyncio.sleep(0.1)
        doomed.cancel()
        await asyncio.sleep(0.2)
        assert not survivor.done()
        session.close()
        assert await asyncio.wait_for(survivor, 1.0) >= 5


async def test_sending_can_be_switched_off_and_on_with_continuous_timestamps() -> None:
    """Hold: nothing goes out while sending is off, though the clock keeps running."""
    sink = await open_sink()
    try:
        async with RtpSession(local_host=HOST, remote=sink.address) as session:
            await asyncio.sleep(0.2)
            session.set_sending(False)
            await asyncio.sleep(0.05)
            held_from = len(sink.received)
            await asyncio.sleep(0.3)
            assert len(sink.received) == held_from
            assert not session.sending
            session.set_sending(True)
            await asyncio.sleep(0.2)
    finally:
        sink.close()
    packets = sink.packets()
    assert len(packets) > held_from
    gap = ts_diff(packets[held_from].timestamp, packets[held_from - 1].timestamp)
    # ~0.35 s of clock passed while held: the timestamp jumps by it, not by one frame.
    assert 160 * 12 <= gap <= 160 * 30
