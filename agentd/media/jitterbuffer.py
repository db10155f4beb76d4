"""Adaptive jitter buffer for one RTP stream of 20 ms frames, sans-IO.

Drive it with `put(packet, arrival)` for every received audio packet and `get(now)` once per
playout tick (every 20 ms); times are monotonic seconds passed in, never read here.

Design choices:
- Playout is by RTP timestamp, not sequence number: the frame played at each tick is the one
  whose timestamp is due, so a sender that stops sending during silence (DTX) resumes at the
  right moment, and sequence gaps only feed the loss counter.
- Packets hold payload bytes until they are played; `decode` (a G.711 decoder, say) turns
  them into PCM at playout, so late and duplicate packets are never decoded. Concealment
  works on the decoded PCM: the last frame is repeated, attenuated, for `conceal_frames`
  ticks, then silence follows.
- Depth adapts between `min_depth` and `max_depth`: the RFC 3550 A.8 interarrival jitter J
  sets the safety margin (3 J + `margin`); over each window of packets the smallest time a
  packet waited before its playout is compared with that margin, and the playout point is
  moved by one frame: a repeated frame deepens it (at once after a late packet), a skipped
  frame shrinks it, only after `shrink_windows` windows in a row had a frame to spare, and
  preferably at a quiet frame (peak below `quiet_level`) so speech is not cut.
- A new SSRC, or two consecutive packets whose timestamps jump by more than `resync_after`,
  re-anchor the buffer on the new stream instead of concealing for ever. After `idle_after`
  seconds with nothing to play the stream goes idle and the next packet re-anchors it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agentd.media.rtp import RtpPacket, seq_diff, ts_diff

__all__ = ["FrameFlag", "Frame", "JitterStats", "JitterBuffer"]

# A sequence jump larger than this re-bases loss/duplicate tracking (RFC 3550 A.1 MAX_DROPOUT).
_MAX_SEQ_JUMP = 3000
_RECENT_SEQS = 256


class FrameFlag(enum.Flag):
    """What a played frame is made of."""

    NONE = 0
    CONCEALED = enum.auto()  # no packet for this slot: repeated/attenuated or silent filler
    SILENCE = enum.auto()  # all zeros (before the stream starts, idle, or concealment ran out)
    RESYNC = enum.auto()  # first packet played after (re-)anchoring on a stream


@dataclass(frozen=True, slots=True)
class Frame:
    """One playout tick of audio: `pcm` is int16, `frame_samples` long."""

    pcm: np.ndarray
    flags: FrameFlag
    timestamp: int | None = None  # RTP timestamp of this slot; None while no stream
    sequence: int | None = None  # sequence number of the packet played; None if none


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counter snapshot. `lost` counts packets that never played (missing or too late)."""

    received: int
    lost: int
    duplicates: int
    late: int
    concealed: int
    discarded: int  # buffered packets dropped to shrink the depth or on a jump
    resyncs: int
    jitter: float  # RFC 3550 interarrival jitter, seconds
    depth: float  # audio currently buffered ahead of the playout point, seconds
    target_depth: float  # depth the jitter estimate asks for, seconds


@dataclass(slots=True)
class _Slot:
    ext_seq: int
    packet: RtpPacket


class JitterBuffer:
    """Reorders, de-duplicates and conceals one stream; see the module docstring."""

    def __init__(
        self,
        decode: Callable[[bytes], np.ndarray],
        *,
        frame_samples: int = 160,
        rate: int = 8000,
        min_depth: float = 0.02,
        max_depth: float = 0.2,
        start_depth: float = 0.04,
        margin: float = 0.002,
        conceal_frames: int = 3,
        conceal_gain: float = 0.5,
        idle_after: float = 1.0,
        resync_after: float = 1.0,
        window: int = 50,
        shrink_windows: int = 2,
        quiet_level: int = 300,
    ) -> None:
        if frame_samples <= 0 or rate <= 0:
            raise ValueError("frame_samples and rate must be positive")
        self._decode = decode
        self._fs = frame_samples
        self._rate = rate
        self._fd = frame_samples / rate
        self._min_frames = max(1, round(min_depth / self._fd))
        self._max_frames = max(self._min_frames, round(max_depth / self._fd))
        start_frames = round(start_depth / self._fd)
        self._start_frames = min(self._max_frames, max(self._min_frames, start_frames))
        self._margin = margin
        self._conceal_frames = conceal_frames
        self._conceal_gain = conceal_gain
        self._idle_frames = max(1, round(idle_after / self._fd))
        self._jump = max(self._max_frames * frame_samples, round(resync_after * rate))
        self._window = window
        self._shrink_windows = max(1, shrink_windows)
        self._quiet_level = quiet_level

        self._active = False
        self._ssrc: int | None = None
        self._anchor = 0  # extended timestamp of slot 0
        self._play = 0  # next slot to play
        self._first_slot = 0  # slots before this are pre-roll: silence, not concealment
        self._slots: dict[int, _Slot] = {}
        self._max_seq = 0  # highest extended sequence number seen
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        self._last_played_seq: int | None = None
        self._last_pcm: np.ndarray | None = None
        self._missing_run = 0
        self._jitter = 0.0  # in timestamp units
        self._prev_transit: float | None = None
        self._last_tick: float | None = None
        self._lead_min = float("inf")
        self._lead_count = 0
        self._hold = False
        self._skip = False
        self._skip_wait = 0  # ticks a pending skip has waited for a quiet frame
        self._surplus_windows = 0
        self._probation: RtpPacket | None = None
        self._resync_pending = False

        self._received = 0
        self._lost = 0
        self._duplicates = 0
        self._late = 0
        self._concealed = 0
        self._discarded = 0
        self._resyncs = 0

    # -- public -------------------------------------------------------------------------

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            received=self._received,
            lost=self._lost,
            duplicates=self._duplicates,
            late=self._late,
            concealed=self._concealed,
            discarded=self._discarded,
            resyncs=self._resyncs,
            jitter=self._jitter / self._rate,
            depth=self.depth,
            target_depth=self.target_depth,
        )

    @property
    def jitter(self) -> float:
        """RFC 3550 interarrival jitter estimate, seconds."""
        return self._jitter / self._rate

    @property
    def depth(self) -> float:
        """Audio buffered from the playout point to the newest packet, seconds."""
        if not self._slots:
            return 0.0
        return (max(self._slots) + 1 - self._play) * self._fd

    @property
    def target_depth(self) -> float:
        """Depth the current jitter estimate calls for, seconds."""
        want = self._fd + self._needed_margin()
        frames = -(-want // self._fd)
        return min(self._max_frames, max(self._min_frames, int(frames))) * self._fd

    def put(self, packet: RtpPacket, arrival: float) -> None:
        """Accept one audio packet that arrived at monotonic time `arrival` (seconds)."""
        self._received += 1
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._anchor_on(packet, arrival, new_source=True)
            return
        if not self._active:
            self._anchor_on(packet, arrival, new_source=self._ssrc is None)
            return

        play_ts = self._anchor + self._play * self._fs
        offset = ts_diff(packet.timestamp, play_ts & 0xFFFFFFFF)
        if offset > self._jump or offset < -self._jump:
            self._on_jump(packet, arrival)
            return
        if self._probation is not None:
            self._discarded += 1
            self._probation = None

        step = seq_diff(packet.sequence, self._max_seq & 0xFFFF)
        if abs(step) > _MAX_SEQ_JUMP:
            # The sender restarted its sequence numbers: start loss/duplicate tracking afresh.
            self._recent.clear()
            self._recent_order.clear()
            self._max_seq = packet.sequence
            self._last_played_seq = None
            ext_seq = packet.sequence
        else:
            ext_seq = self._max_seq + step
            if ext_seq in self._recent:
                self._duplicates += 1
                return
        self._remember_seq(ext_seq)

        ext_ts = play_ts + offset
        transit = arrival * self._rate - ext_ts
        if self._prev_transit is not None:
            self._jitter += (abs(transit - self._prev_transit) - self._jitter) / 16.0
        self._prev_transit = transit

        slot = self._play + (offset + self._fs // 2) // self._fs
        if slot < self._play:
            self._late += 1
            self._hold = True
            return
        if slot in self._slots:
            self._duplicates += 1  # same timestamp under another sequence number
            return
        if slot - self._play >= self._max_frames:
            self._jump_ahead(slot - self._max_frames + 1)
        self._slots[slot] = _Slot(ext_seq, packet)
        self._observe_lead(slot, arrival)

    def get(self, now: float) -> Frame:
        """The frame due at this playout tick (call once per frame period)."""
        self._last_tick = now
        if not self._active:
            return Frame(np.zeros(self._fs, np.int16), FrameFlag.SILENCE)
        if self._skip and self._play + 1 in self._slots and self._may_skip(self._play):
            self._skip = False
            self._drop_slot(self._play)
            self._play += 1
        if self._hold:
            self._hold = False
            if self._buffered_frames() + 1 <= self._max_frames:
                self._concealed += 1
                self._reset_window()
                return self._conceal_frame(None, repeat=1)
        slot = self._play
        self._play += 1
        timestamp = (self._anchor + slot * self._fs) & 0xFFFFFFFF
        entry = self._slots.pop(slot, None)
        if entry is None:
            return self._missing(slot, timestamp)
        self._missing_run = 0
        pcm = self._decode_payload(entry.packet.payload)
        self._last_pcm = pcm
        self._count_gap(entry.ext_seq)
        flags = FrameFlag.NONE
        if self._resync_pending:
            self._resync_pending = False
            flags = FrameFlag.RESYNC
        return Frame(pcm, flags, timestamp, entry.packet.sequence)

    # -- internals ----------------------------------------------------------------------

    def _needed_margin(self) -> float:
        return 3.0 * self._jitter / self._rate + self._margin

    def _buffered_frames(self) -> int:
        return (max(self._slots) + 1 - self._play) if self._slots else 0

    def _anchor_on(self, packet: RtpPacket, arrival: float, *, new_source: bool) -> None:
        """Start playing a stream (first packet, new SSRC, jump, or after idle)."""
        if self._ssrc is not None:
            self._resyncs += 1
        self._discarded += len(self._slots)
        self._slots.clear()
        self._ssrc = packet.ssrc
        self._anchor = packet.timestamp
        self._play = 1 - self._start_frames
        self._first_slot = 0
        self._recent.clear()
        self._recent_order.clear()
        self._max_seq = packet.sequence
        self._remember_seq(packet.sequence)
        self._last_played_seq = None
        self._missing_run = 0
        if new_source:
            self._jitter = 0.0
            self._last_pcm = None
        self._prev_transit = arrival * self._rate - packet.timestamp
        self._reset_window()
        self._hold = False
        self._skip = False
        self._surplus_windows = 0
        self._probation = None
        self._active = True
        self._resync_pending = True
        self._slots[0] = _Slot(packet.sequence, packet)

    def _on_jump(self, packet: RtpPacket, arrival: float) -> None:
        """Timestamp far from the playout point: re-anchor once a second packet confirms it."""
        candidate = self._probation
        if (
            candidate is not None
            and seq_diff(packet.sequence, candidate.sequence) == 1
            and 0 < ts_diff(packet.timestamp, candidate.timestamp) <= self._max_frames * self._fs
        ):
            self._anchor_on(candidate, arrival, new_source=False)
            self._received -= 1  # put() below counts this packet again
            self.put(packet, arrival)
            return
        if candidate is not None:
            self._discarded += 1
        self._probation = packet

    def _jump_ahead(self, new_play: int) -> None:
        """Move the playout point forward so nothing waits longer than max_depth."""
        for slot in [s for s in self._slots if s < new_play]:
            self._drop_slot(slot)
        self._play = new_play
        self._reset_window()

    def _drop_slot(self, slot: int) -> None:
        entry = self._slots.pop(slot, None)
        if entry is not None:
            self._discarded += 1
            # Dropped on purpose, so not counted as lost by the next played packet.
            if self._last_played_seq is None or entry.ext_seq > self._last_played_seq:
                self._last_played_seq = entry.ext_seq

    def _remember_seq(self, ext_seq: int) -> None:
        if ext_seq > self._max_seq:
            self._max_seq = ext_seq
        self._recent.add(ext_seq)
        self._recent_order.append(ext_seq)
        if len(self._recent_order) > _RECENT_SEQS:
            self._recent.discard(self._recent_order.popleft())

    def _count_gap(self, ext_seq: int) -> None:
        last = self._last_played_seq
        if last is not None:
            gap = ext_seq - last - 1
            if 0 < gap <= _MAX_SEQ_JUMP:
                self._lost += gap
        if last is None or ext_seq > last:
            self._last_played_seq = ext_seq

    def _observe_lead(self, slot: int, arrival: float) -> None:
        """Track how long packets wait before playout; adjust depth once per window."""
        if self._last_tick is None:
            return
        due = self._last_tick + (slot - self._play + 1) * self._fd
        lead = due - arrival
        if lead < self._lead_min:
            self._lead_min = lead
        self._lead_count += 1
        if self._lead_count < self._window:
            return
        needed = self._needed_margin()
        frames = self._buffered_frames()
        if self._lead_min - self._fd > needed and frames > self._min_frames:
            self._surplus_windows += 1
            if self._surplus_windows >= self._shrink_windows:
                self._surplus_windows = 0
                self._skip = True
                self._skip_wait = 0
        else:
            self._surplus_windows = 0
            if self._lead_min < needed and frames < self._max_frames:
                self._hold = True
        self._reset_window()

    def _may_skip(self, slot: int) -> bool:
        """Whether the frame in `slot` (missing counts as quiet) may be dropped to shrink."""
        self._skip_wait += 1
        entry = self._slots.get(slot)
        if entry is None or self._skip_wait > self._window:
            return True
        pcm = self._decode_payload(entry.packet.payload)
        return int(np.abs(pcm.astype(np.int32)).max(initial=0)) < self._quiet_level

    def _reset_window(self) -> None:
        self._lead_min = float("inf")
        self._lead_count = 0

    def _missing(self, slot: int, timestamp: int) -> Frame:
        if slot < self._first_slot:
            return Frame(np.zeros(self._fs, np.int16), FrameFlag.SILENCE, timestamp)
        self._missing_run += 1
        if self._missing_run >= self._idle_frames and not self._slots:
            self._active = False  # the next packet re-anchors
            self._last_pcm = None
            return Frame(np.zeros(self._fs, np.int16), FrameFlag.SILENCE, timestamp)
        self._concealed += 1
        return self._conceal_frame(timestamp, repeat=self._missing_run)

    def _conceal_frame(self, timestamp: int | None, *, repeat: int) -> Frame:
        if self._last_pcm is None or repeat > self._conceal_frames:
            return Frame(
                np.zeros(self._fs, np.int16), FrameFlag.CONCEALED | FrameFlag.SILENCE, timestamp
            )
        gain = self._conceal_gain**repeat
        pcm = (self._last_pcm.astype(np.float32) * gain).astype(np.int16)
        return Frame(pcm, FrameFlag.CONCEALED, timestamp)

    def _decode_payload(self, payload: bytes) -> np.ndarray:
        pcm = np.asarray(self._decode(payload), dtype=np.int16)
        if pcm.shape != (self._fs,):
            fixed = np.zeros(self._fs, np.int16)
            flat = pcm.reshape(-1)[: self._fs]
            fixed[: flat.size] = flat
            pcm = fixed
        return pcm
