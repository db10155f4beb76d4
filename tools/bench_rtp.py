#!/usr/bin/env python3
"""Benchmark: N concurrent RTP sessions in one process over loopback.

Sessions are paired (A<->B); every session sends a continuous tone and receives its peer's
stream, and a consumer task drains its frames() as an ASR would. For each N it prints
|interval - 20 ms| between consecutive packets of each stream, p50 / p99 / max pooled over
all sessions, measured two ways:
- sent: at the sender, time.monotonic() just before each sendto (what goes on the wire;
  on loopback the kernel delivers during the sendto call);
- read: at the receiver, when the event loop hands the datagram to the session (adds the
  receiving loop's own scheduling delays, which the jitter buffer absorbs);
and CPU % of the process (time.process_time over wall time) in total and per session, lost
packets (sequence gaps at the receivers), jitter-buffer late packets and skipped ticks.

Usage: tools/bench_rtp.py [--sessions 50 100 200] [--seconds 4] [--private-clocks]
       [--spin 0.001] [--no-consume] [--no-gc-freeze] [--cpu 0]
--private-clocks gives each session its own timer instead of one shared MediaClock, to show
why the shared clock exists. Timings are only meaningful on an otherwise idle machine. The
whole run bounds itself (about 15 s by default, --seconds is capped at 10).
"""

from __future__ import annotations

import argparse
import asyncio
import gc

import os
import sys
import time
from array import array
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentd.media.pacer import MediaClock  # noqa: E402
from agentd.media.session import RtpSession  # noqa: E402

HOST = "127.0.0.1"


class TimedSession(RtpSession):
    """Session that records when each packet was sent and when each datagram was read."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        # Flat arrays, not lists of tuples: millions of tracked tuples would make the
        # garbage collector's full passes (and so the timings) much worse than the agent's.
        self.arrivals = (array("d"), array("l"))
        self.departures = (array("d"), array("l"))
        self.recording = False

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.recording:
            self.arrivals[0].append(time.monotonic())
            self.arrivals[1].append((data[2] << 8) | data[3])
        super()._on_datagram(data, addr)

    def _emit(self, pt: int, marker: bool, ts: int, payload: bytes) -> bool:
        if self.recording:
            self.departures[0].append(time.monotonic())
            self.departures[1].append(self._seq)
        return super()._emit(pt, marker, ts, payload)


def interval_deviations(sessions: list[TimedSession], attr: str) -> np.ndarray:
    """|interval - 20 ms| in ms between consecutive sequence numbers, all sessions pooled."""
    pooled = []
    for s in sessions:
        times, seqs = (np.asarray(a) for a in getattr(s, attr))
        if times.size < 2:
            continue
        consecutive = (np.diff(seqs) % 65536) == 1
        pooled.append(np.abs(np.diff(times)[consecutive] - 0.02))
    return np.concatenate(pooled) * 1000 if pooled else np.zeros(1)


def lost_packets(sessions: list[TimedSession]) -> int:
    """Sequence numbers missing between the first and last packet each receiver recorded."""
    lost = 0
    for s in sessions:
        seqs = np.asarray(s.arrivals[1], dtype=np.int64)
        if not seqs.size:
            continue
        steps = (np.diff(seqs) + 32768) % 65536 - 32768  # signed 16-bit differences
        extended = seqs[0] + np.cumsum(np.concatenate([[0], steps]))
        lost += int(extended.max() - extended.min() + 1 - np.unique(extended).size)
    return lost


async def drain(session: RtpSession) -> None:
    async for _ in session.frames():
        pass


async def run_once(
    n: int, seconds: float, private_clocks: bool, consume: bool, spin: float, freeze_gc: bool
) -> dict:
    shared = MediaClock(spin=spin)
    sessions: list[TimedSession] = []
    for _ in range(n):
        session = TimedSession(local_host=HOST, clock=None if private_clocks else shared)
        await session.start()
        sessions.append(session)
    for a, b in zip(sessions[::2], sessions[1::2]):
        a.set_remote(b.local_address)
        b.set_remote(a.local_address)
    t = np.arange(int(8000 * (seconds + 3))) / 8000
    speech = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for session in sessions:
        session.send(speech)
    consumers = [asyncio.create_task(drain(s)) for s in sessions] if consume else []

    await asyncio.sleep(0.5)  # warm-up: sockets, jitter buffers settle
    late_before = sum(s.stats.jitter.late for s in sessions)
    sent_before = sum(s.stats.packets_sent for s in sessions)
    for s in sessions:
        s.recording = True
    gc.collect()
    if freeze_gc:
        # What a long-running agent should do after start-up: move everything that exists
        # now out of the collector's sight, so full passes stay short (see the report).
        gc.freeze()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    for s in sessions:
        s.recording = False
    sent = sum(s.stats.packets_sent for s in sessions) - sent_before
    late = sum(s.stats.jitter.late for s in sessions) - late_before
    skipped = max(s.stats.ticks_skipped for s in sessions)
    recv_dev = interval_deviations(sessions, "arrivals")
    send_dev = interval_deviations(sessions, "departures")

    gc.unfreeze()
    for task in consumers:
        task.cancel()
    for s in sessions:
        s.close()
    await asyncio.gather(*consumers, return_exceptions=True)
    return {
        "n": n,
        "send": [float(np.percentile(send_dev, 50)), float(np.percentile(send_dev, 99)),
                 float(send_dev.max())],
        "recv": [float(np.percentile(recv_dev, 50)), float(np.percentile(recv_dev, 99)),
                 float(recv_dev.max())],
        "cpu": 100 * cpu / wall,
        "per_session": 100 * cpu / wall / n,
        "sent": sent,
        "lost": lost_packets(sessions),
        "late": late,
        "skipped": skipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--private-clocks", action="store_true")
    parser.add_argument("--no-consume", action="store_true")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave start-up objects to the garbage collector's full passes")
    parser.add_argument("--spin", type=float, default=0.001,
                        help="shared clock busy-wait before each tick, seconds (0: none)")
    parser.add_argument("--cpu", type=int, default=0, help="pin to this core (-1: no pinning)")
    args = parser.parse_args()
    if any(n % 2 or n <= 0 for n in args.sessions):
        parser.error("session counts must be positive and even (sessions are paired)")
    args.seconds = min(args.seconds, 10.0)  # keep the whole run bounded
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    clocks = ("one timer per session" if args.private_clocks
              else f"one shared MediaClock (spin {args.spin * 1000:.1f} ms)")
    print(f"RTP loopback benchmark: {clocks}, {args.seconds:.0f} s per run, "
          f"frames consumed: {not args.no_consume}, gc.freeze: {not args.no_gc_freeze}, "
          f"pinned to core: {args.cpu}")
    print("|interval - 20 ms| in ms, p50/p99/max; 'sent': at the sender, from the time of each")
    print("sendto; 'read': at the receiver, when the event loop handed it the datagram")
    print(f"{'sessions':>8} {'sent p50/p99/max':>22} {'read p50/p99/max':>22} {'cpu%':>6} "
          f"{'cpu%/sess':>9} {'packets':>8} {'lost':>5} {'late':>5} {'skipped':>7}")
    for n in args.sessions:
        r = asyncio.run(
            run_once(n, args.seconds, args.private_clocks, not args.no_consume, args.spin,
                     not args.no_gc_freeze))
        send = "/".join(f"{v:.2f}" for v in r["send"])
        recv = "/".join(f"{v:.2f}" for v in r["recv"])
        print(f"{r['n']:>8} {send:>22} {recv:>22} {r['cpu']:>6.1f} {r['per_session']:>9.3f} "
              f"{r['sent']:>8} {r['lost']:>5} {r['late']:>5} {r['skipped']:>7}")


if __name__ == "__main__":
    main()
