"""RFC 4733 telephone-event payloads (DTMF), sans-IO.

Payload layout (4 bytes): event (8 bits), E end bit, R reserved bit, volume (6 bits,
-dBm0 attenuation), duration (16 bits, RTP timestamp units). All packets of one key press
share the RTP timestamp of its start; the final packet is sent three times with E set.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = [
    "DIGITS",
    "DtmfDigit",
    "DtmfReceiver",
    "TelephoneEvent",
    "build_telephone_event",
    "digit_to_event",
    "dtmf_payloads",
    "event_to_digit",
    "parse_telephone_event",
]

DIGITS = "0123456789*#ABCD"
"""Key for each DTMF event code 0-15."""

END_PACKET_REPEATS = 3
_MAX_DURATION = 0xFFFF
_MAX_VOLUME = 0x3F


@dataclass(frozen=True)
class TelephoneEvent:
    """One decoded telephone-event payload."""

    event: int
    end: bool
    volume: int
    duration: int


@dataclass(frozen=True)
class DtmfDigit:
    """One complete key press: its RTP start timestamp and duration in timestamp units."""

    digit: str
    timestamp: int
    duration: int


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Decode the first 4 bytes of a telephone-event payload; raise ValueError if shorter."""
    if len(payload) < 4:
        raise ValueError(f"telephone-event payload needs 4 bytes, got {len(payload)}")
    flags = payload[1]
    return TelephoneEvent(
        event=payload[0],
        end=bool(flags & 0x80),
        volume=flags & _MAX_VOLUME,
        duration=(payload[2] << 8) | payload[3],
    )


def build_telephone_event(ev: TelephoneEvent) -> bytes:
    """Encode a telephone-event payload; raise ValueError for out-of-range fields."""
    if not 0 <= ev.event <= 0xFF:
        raise ValueError(f"event {ev.event} out of range 0-255")
    if not 0 <= ev.volume <= _MAX_VOLUME:
        raise ValueError(f"volume {ev.volume} out of range 0-63")
    if not 0 <= ev.duration <= _MAX_DURATION:
        raise ValueError(f"duration {ev.duration} out of range 0-65535")
    flags = (0x80 if ev.end else 0) | ev.volume
    return bytes((ev.event, flags, ev.duration >> 8, ev.duration & 0xFF))


def digit_to_event(digit: str) -> int:
    """Event code of a DTMF key (case-insensitive for A-D); raise ValueError otherwise."""
    if len(digit) != 1 or digit.upper() not in DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return DIGITS.index(digit.upper())


def event_to_digit(event: int) -> str | None:
    """DTMF key of an event code, or None for codes that are not DTMF (above 15)."""
    if 0 <= event < len(DIGITS):
        return DIGITS[event]
    return None


def dtmf_payloads(
    digit: str,
    duration_ms: int = 100,
    volume: int = 10,
    ptime_ms: int = 20,
    rate: int = 8000,
) -> list[tuple[bytes, bool]]:
    """Payload and marker bit of every packet for one key press, in sending order.

    All packets share one RTP timestamp (assigned by the sender). The first carries the
    marker; durations grow by one ptime per packet; the final duration is sent three times
    with the end bit set.
    """
    event = digit_to_event(digit)
    if duration_ms <= 0 or ptime_ms <= 0 or rate <= 0:
        raise ValueError("duration_ms, ptime_ms and rate must be positive")
    total = duration_ms * rate // 1000
    step = ptime_ms * rate // 1000
    if not 0 < total <= _MAX_DURATION or step <= 0:
        raise ValueError(f"duration of {total} timestamp units does not fit a single event")
    durations = list(range(step, total, step))
    packets = [TelephoneEvent(event, False, volume, d) for d in durations]
    packets += [TelephoneEvent(event, True, volume, total)] * END_PACKET_REPEATS
    return [(build_telephone_event(ev), index == 0) for index, ev in enumerate(packets)]


@dataclass
class _OpenPress:
    timestamp: int
    digit: str
    duration: int


class DtmfReceiver:
    """Turns a stream of telephone-event packets into key presses, each reported once.

    A press is identified by its RTP timestamp. It is reported on its first end packet;
    redundant end packets are ignored. If every end packet was lost, the press is reported
    when a packet with a new timestamp arrives, or by flush() at end of stream.
    """

    # Remember this many finished presses so late or repeated end packets stay silent.
    _FINISHED_MEMORY = 16

    def __init__(self) -> None:
        self.malformed = 0
        self.ignored = 0
        self._open: _OpenPress | None = None
        self._finished: deque[int] = deque(maxlen=self._FINISHED_MEMORY)

    def feed(self, timestamp: int, payload: bytes, marker: bool = False) -> DtmfDigit | None:
        """Process one packet; return a key press that completed (or was superseded) now."""
        # The marker only flags a new event; the timestamp alone identifies it.
        del marker
        try:
            ev = parse_telephone_event(payload)
        except ValueError:
            self.malformed += 1
            return None
        digit = event_to_digit(ev.event)
        if digit is None or timestamp in self._finished:
            self.ignored += 1
            return None

        current = self._open
        if current is not None and current.timestamp == timestamp:
            current.duration = max(current.duration, ev.duration)
            if ev.end:
                return self._finish(current)
            return None

        # A new press: whatever was open lost all its end packets and is over now.
        superseded = self._finish(current) if current is not None else None
        self._open = _OpenPress(timestamp, digit, ev.duration)
        if ev.end and superseded is None:
            return self._finish(self._open)
        # If this packet also ends the new press, two presses complete at once: report the
        # older now and the new one on its next (redundant) end packet, the next new press,
        # or flush().
        return superseded

    def flush(self) -> DtmfDigit | None:
        """Report a press still open at end of stream (its end packets never arrived)."""
        if self._open is None:
            return None
        return self._finish(self._open)

    def _finish(self, press: _OpenPress) -> DtmfDigit:
        self._open = None
        self._finished.append(press.timestamp)
        return DtmfDigit(press.digit, press.timestamp, press.duration)
