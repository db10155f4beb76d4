"""Jitter buffer: reorder, duplicates, late, loss and concealment, wrap-around, resync, depth."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np

from agentd.media.jitterbuffer import Frame, FrameFlag, JitterBuffer
from agentd.media.rtp import RtpPacket

FD = 0.02


def decode(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.int16)


def value_of(n: int) -> int:
    """Sample value that identifies frame n of a test stream."""
    return 1000 + n % 20000


def packet(n: int, *, seq0: int = 100, ts0: int = 5000, ssrc: int = 1) -> RtpPacket:
    return RtpPacket(
        payload_type=0,
        sequence=(seq0 + n) & 0xFFFF,
        timestamp=(ts0 + 160 * n) & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=np.full(160, value_of(n), np.int16).tobytes(),
    )


class Run:
    """Feeds (arrival, packet) pairs and ticks the playout clock every 20 ms."""

    def __init__(self, arrivals: Iterable[tuple[float, RtpPacket]], jb: JitterBuffer) -> None:
        self.jb = jb
        self.pending = sorted(arrivals, key=lambda item: item[0])
        self.index = 0
        self.tick = 0
        self.frames: list[Frame] = []
        self.depths: list[float] = []  # depth just before each tick, after the arrivals

    def advance(self, ticks: int) -> Run:
        for _ in range(ticks):
            now = self.tick * FD
            while self.index < len(self.pending) and self.pending[self.index][0] <= now:
                self.jb.put(self.pending[self.index][1], self.pending[self.index][0])
                self.index += 1
            self.depths.append(self.jb.depth)
            self.frames.append(self.jb.get(now))
            self.tick += 1
        return self


def run(
    arrivals: Iterable[tuple[float, RtpPacket]], ticks: int, jb: JitterBuffer | None = None
) -> tuple[JitterBuffer, list[Frame]]:
    """Play a scenario; by default the buffer starts at its minimum depth (20 ms)."""
    result = Run(arrivals, jb or JitterBuffer(decode, start_depth=0.02)).advance(ticks)
    return result.jb, result.frames


def played_values(frames: list[Frame]) -> list[int]:
    """Frame numbers of frames played from packets, in output order."""
    return [int(f.pcm[0]) - 1000 for f in frames if not f.flags & FrameFlag.CONCEALED
            and not f.flags & FrameFlag.SILENCE]


def steady(n: int, delay: Callable[[int], float] = lambda n: 0.005, **kw: int):
    return [(i * FD + delay(i), packet(i, **kw)) for i in range(n)]


def test_silence_before_the_first_packet() -> None:
    jb = JitterBuffer(decode)
    frame = jb.get(0.0)
    assert frame.flags == FrameFlag.SILENCE
    assert frame.pcm.dtype == np.int16 and frame.pcm.shape == (160,)
    assert not frame.pcm.any()
    assert jb.stats.concealed == 0


def test_in_order_stream_plays_every_frame_once() -> None:
    jb, frames = run(steady(100), 101)
    assert played_values(frames) == list(range(100))
    stats = jb.stats
    assert stats.received == 100
    assert (stats.lost, stats.duplicates, stats.late) == (0, 0, 0)
    # The first packet played is flagged, its RTP timestamp reported.
    first = next(f for f in frames if f.sequence is not None)
    assert first.flags == FrameFlag.RESYNC and first.timestamp == 5000 and first.sequence == 100
    # Latency: frame n arrives at 20n+5 ms and plays at the next tick.
    assert [f.sequence for f in frames[1:101]] == list(range(100, 200))


def test_default_start_depth_shrinks_at_a_quiet_frame() -> None:
    # Frames 0-79 are loud, 80-199 quiet: the spare frame of the 40 ms start depth is
    # dropped only once a quiet frame comes up.
    def quiet(n: int) -> RtpPacket:
        p = packet(n)
        return RtpPacket(0, p.sequence, p.timestamp, p.ssrc,
                         np.full(160, 5 if n >= 80 else value_of(n), np.int16).tobytes())
    r = Run([(n * FD + 0.005, quiet(n)) for n in range(200)], JitterBuffer(decode))
    r.advance(205)
    assert r.depths[10] == 0.04
    assert r.depths[190] == 0.02
    assert r.jb.stats.discarded == 1
    loud = [f.sequence - 100 for f in r.frames if f.sequence is not None and f.pcm[0] > 300]
    assert loud == list(range(80))  # no loud frame was cut


def test_reordered_packets_play_in_order() -> None:
    arrivals = [(0.005, packet(0)), (0.025, packet(1))]
    for i in range(2, 100, 2):
        arrivals.append((i * FD + 0.004, packet(i + 1)))
        arrivals.append((i * FD + 0.006, packet(i)))
    jb, frames = run(arrivals, 110)
    assert played_values(frames) == list(range(100))
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_duplicates_are_dropped_and_counted() -> None:
    arrivals = steady(50) + [(t + 0.001, p) for t, p in steady(50)]
    # A duplicate of an already played packet is a duplicate too, not late.
    arrivals.append((0.5, packet(3)))
    jb, frames = run(arrivals, 60)
    assert played_values(frames) == list(range(50))
    assert jb.stats.duplicates == 51
    assert jb.stats.late == 0


def test_late_packet_is_dropped_counted_and_deepens_the_buffer_for_a_while() -> None:
    arrivals = steady(500, lambda n: 0.15 if n == 100 else 0.005)
    r = Run(arrivals, JitterBuffer(decode, start_depth=0.02)).advance(130)
    stats = r.jb.stats
    assert stats.late == 1
    assert stats.lost == 1
    assert 100 not in played_values(r.frames)
    assert r.depths[100] == 0.02
    # After the late packet the buffer holds one more frame ...
    assert r.depths[125] == 0.04
    # ... and, with no more late packets, gives it back within a few seconds.
    r.advance(300)
    assert r.depths[-1] == 0.02
    assert r.jb.stats.late == 1


def test_loss_is_concealed_by_attenuated_repeats_then_silence() -> None:
    dropped = set(range(20, 26))
    arrivals = [(t, p) for t, p in steady(60) if (p.sequence - 100) not in dropped]
    jb, frames = run(arrivals, 61)
    by_slot = {f.timestamp: f for f in frames if f.timestamp is not None}
    last_good = by_slot[5000 + 160 * 19]
    assert int(last_good.pcm[0]) == value_of(19)
    conceal = [by_slot[5000 + 160 * n] for n in range(20, 26)]
    for k, frame in enumerate(conceal[:3], start=1):
        assert frame.flags == FrameFlag.CONCEALED
        assert int(frame.pcm[0]) == int(value_of(19) * 0.5**k)
    for frame in conceal[3:]:
        assert frame.flags == FrameFlag.CONCEALED | FrameFlag.SILENCE
        assert not frame.pcm.any()
    assert played_values(frames) == [n for n in range(60) if n not in dropped]
    assert jb.stats.lost == 6
    assert jb.stats.concealed == 6


def test_sequence_and_timestamp_wrap_around() -> None:
    arrivals = steady(100, seq0=65500, ts0=2**32 - 160 * 40)
    # Reorder two packets across the sequence wrap (seq 65535 and 0) for good measure.
    arrivals[35] = (35 * FD + 0.006, arrivals[35][1])
    arrivals[36] = (35 * FD + 0.004, arrivals[36][1])
    jb, frames = run(arrivals, 110)
    assert played_values(frames) == list(range(100))
    stats = jb.stats
    assert (stats.lost, stats.late, stats.duplicates, stats.resyncs) == (0, 0, 0, 0)
    stamps = [f.timestamp for f in frames if f.sequence is not None]
    assert stamps[39] == 2**32 - 160 and stamps[40] == 0


def test_new_ssrc_resyncs_instead_of_concealing() -> None:
    first = steady(50)
    second = [(t + 50 * FD, packet(i, seq0=9, ts0=123456789, ssrc=2)) for t, p, i in
              ((t, p, i) for i, (t, p) in enumerate(steady(50)))]
    jb, frames = run(first + second, 101)
    assert jb.stats.resyncs == 1
    assert played_values(frames) == list(range(50)) + list(range(50))
    assert jb.stats.concealed == 0
    assert jb.stats.lost == 0
    assert sum(bool(f.flags & FrameFlag.RESYNC) for f in frames) == 2


def test_timestamp_jump_on_the_same_ssrc_resyncs_after_two_packets() -> None:
    first = steady(50)
    # Sender restarts: same SSRC, sequence and timestamp far from the old ones.
    second = [(50 * FD + i * FD + 0.005, packet(i, seq0=40000, ts0=999_999_999)) for i in range(50)]
    jb, frames = run(first + second, 102)
    assert jb.stats.resyncs == 1
    values = played_values(frames)
    # The first packet of the new stream confirms nothing yet; both then play.
    assert values == list(range(50)) + list(range(50))
    assert jb.stats.concealed <= 2


def test_sequence_jump_with_continuous_timestamps_keeps_playing() -> None:
    arrivals = [(t, p) for t, p in steady(40)]
    arrivals += [(t, RtpPacket(0, (p.sequence + 20000) & 0xFFFF, p.timestamp, p.ssrc, p.payload))
                 for t, p in steady(80)[40:]]
    jb, frames = run(arrivals, 81)
    assert played_values(frames) == list(range(80))
    assert jb.stats.lost == 0
    assert jb.stats.resyncs == 0


def test_silence_suppression_gap_resumes_at_the_right_time() -> None:
    # Talkspurt, 0.6 s with no packets (timestamps keep counting, sequence numbers do not,
    # as with DTX), talkspurt again with the marker bit.
    arrivals = []
    for t, p in steady(100):
        n = p.sequence - 100
        if n < 20:
            arrivals.append((t, p))
        elif n >= 50:
            arrivals.append((t, RtpPacket(0, p.sequence - 30, p.timestamp, 1, p.payload,
                                          marker=n == 50)))
    jb, frames = run(arrivals, 101)
    assert played_values(frames) == [n for n in range(100) if not 20 <= n < 50]
    assert jb.stats.lost == 0
    assert jb.stats.resyncs == 0
    tick_of = {f.timestamp: i for i, f in enumerate(frames) if f.sequence is not None}
    # Frame 50 plays exactly 31 ticks after frame 19: the pause keeps its length.
    assert tick_of[5000 + 160 * 50] - tick_of[5000 + 160 * 19] == 31


def test_long_gap_goes_idle_and_restarts() -> None:
    arrivals = [(t, p) for t, p in steady(200) if not 20 <= p.sequence - 100 < 150]
    jb, frames = run(arrivals, 201)
    assert played_values(frames) == [n for n in range(200) if not 20 <= n < 150]
    # Concealment stops once the stream is idle: 1 s of it, not the whole 2.6 s gap.
    assert jb.stats.concealed == 49
    assert all(f.flags == FrameFlag.SILENCE for f in frames[100:140])
    assert jb.stats.resyncs == 1


def test_burst_is_capped_at_max_depth() -> None:
    # 1 s of audio arrives at once (a stalled network path catching up).
    arrivals = steady(20) + [(1.0, packet(i)) for i in range(20, 70)] + \
        [(i * FD + 0.005, packet(i)) for i in range(70, 120)]
    jb = JitterBuffer(decode, max_depth=0.2)
    depths = []
    pending = sorted(arrivals, key=lambda a: a[0])
    index = 0
    for i in range(130):
        now = i * FD
        while index < len(pending) and pending[index][0] <= now:
            jb.put(pending[index][1], pending[index][0])
            index += 1
            depths.append(jb.depth)
        jb.get(now)
    assert max(depths) <= 0.2 + 1e-9
    assert jb.stats.discarded > 0


def test_depth_grows_with_jitter_and_shrinks_when_it_stops() -> None:
    rng = random.Random(7)
    n_jittery, n_calm = 400, 600
    delays = [0.005 + rng.uniform(0.0, 0.06) for _ in range(n_jittery)]
    delays += [0.005] * n_calm
    jb = JitterBuffer(decode)
    arrivals = sorted(((i * FD + d, packet(i)) for i, d in enumerate(delays)), key=lambda a: a[0])
    index = 0
    late_at_200 = None
    target_in_jitter = 0.0
    for i in range(n_jittery + n_calm + 10):
        now = i * FD
        while index < len(arrivals) and arrivals[index][0] <= now:
            jb.put(arrivals[index][1], arrivals[index][0])
            index += 1
        jb.get(now)
        if i == 200:
            late_at_200 = jb.stats.late
            target_in_jitter = jb.target_depth
        if i == n_jittery:
            late_at_400 = jb.stats.late
            depth_in_jitter = jb.depth
    assert jb.stats.jitter < 0.005
    assert target_in_jitter >= 0.06
    assert depth_in_jitter >= 0.04
    # Once adapted, late packets become rare (the first seconds may lose a few).
    assert late_at_400 - late_at_200 <= 4
    # When jitter stops the buffer shrinks back towards the minimum.
    assert jb.depth <= 0.04


def test_depth_never_exceeds_max_under_huge_jitter() -> None:
    rng = random.Random(3)
    arrivals = steady(500, lambda n: rng.uniform(0.0, 0.5))
    jb = JitterBuffer(decode, max_depth=0.2)
    pending = sorted(arrivals, key=lambda a: a[0])
    index = 0
    worst = 0.0
    for i in range(520):
        now = i * FD
        while index < len(pending) and pending[index][0] <= now:
            jb.put(pending[index][1], pending[index][0])
            index += 1
            worst = max(worst, jb.depth)
        jb.get(now)
    assert worst <= 0.2 + 1e-9
    assert jb.stats.target_depth == 0.2


def test_short_payload_is_padded_to_a_frame() -> None:
    jb = JitterBuffer(decode)
    jb.put(RtpPacket(0, 1, 0, 1, np.full(10, 7, np.int16).tobytes()), 0.0)
    frames = [jb.get(t * FD) for t in range(3)]
    played = [f for f in frames if f.sequence is not None]
    assert played and played[0].pcm.shape == (160,)
    assert played[0].pcm[:10].tolist() == [7] * 10 and not played[0].pcm[10:].any()


def test_random_packet_soup_never_raises() -> None:
    rng = random.Random(11)
    jb = JitterBuffer(decode)
    for i in range(3000):
        now = i * 0.007
        for _ in range(rng.randrange(3)):
            jb.put(RtpPacket(0, rng.randrange(65536), rng.randrange(2**32), rng.choice((1, 2)),
                             rng.randbytes(rng.randrange(0, 400) // 2 * 2)), now)
        frame = jb.get(now)
        assert frame.pcm.shape == (160,) and frame.pcm.dtype == np.int16
    assert jb.depth <= 0.2 + 1e-9
