"""RTP packets (RFC 3550 §5.1), sans-IO: parse datagrams into `RtpPacket`, serialise them back.

`parse_rtp` raises only `RtpParseError` (a ValueError) for malformed input, whatever the bytes.
Sequence numbers are 16-bit and timestamps 32-bit counters that wrap; compare them only with
`seq_diff` / `ts_diff`, never with `<`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "RTP_VERSION",
    "RtpParseError",
    "RtpExtension",
    "RtpPacket",
    "parse_rtp",
    "seq_diff",
    "seq_add",
    "ts_diff",
    "ts_add",
    "SEQ_MOD",
    "TS_MOD",
]

RTP_VERSION = 2
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
_HEADER = struct.Struct("!BBHII")
_HEADER_SIZE = _HEADER.size  # 12
_EXT_HEADER = struct.Struct("!HH")


class RtpParseError(ValueError):
    """A datagram is not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """Header extension (RFC 3550 §5.3.1): 16-bit profile value and a multiple of 4 bytes."""

    profile: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. `padding` is the number of padding bytes appended (0 = P bit clear)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0
    version: int = RTP_VERSION

    def to_bytes(self) -> bytes:
        """Serialise; raises ValueError if a field does not fit its wire width."""
        if self.version != RTP_VERSION:
            raise ValueError(f"unsupported RTP version {self.version}")
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range 0..127")
        if not 0 <= self.sequence < SEQ_MOD:
            raise ValueError(f"sequence {self.sequence} out of range")
        if not 0 <= self.timestamp < TS_MOD or not 0 <= self.ssrc < TS_MOD:
            raise ValueError("timestamp or SSRC out of 32-bit range")
        if len(self.csrcs) > 15 or any(not 0 <= c < TS_MOD for c in self.csrcs):
            raise ValueError("at most 15 CSRCs, each 32-bit")
        if not 0 <= self.padding <= 255:
            raise ValueError(f"padding {self.padding} out of range 0..255")
        first = (self.version << 6) | (0x20 if self.padding else 0) | len(self.csrcs)
        if self.extension is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc)]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            ext = self.extension
            if len(ext.data) % 4 or len(ext.data) // 4 > 0xFFFF or not 0 <= ext.profile <= 0xFFFF:
                raise ValueError("extension data must be a multiple of 4 bytes, profile 16-bit")
            parts.append(_EXT_HEADER.pack(ext.profile, len(ext.data) // 4))
            parts.append(ext.data)
        parts.append(self.payload)
        if self.padding:
            # The last padding byte counts the padding, itself included.
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpPacket:
    """Parse one datagram; raises RtpParseError if it is not a valid RTP packet."""
    data = bytes(data)
    size = len(data)
    if size < _HEADER_SIZE:
        raise RtpParseError(f"datagram of {size} bytes is shorter than the RTP header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpParseError(f"RTP version {version}, expected 2")
    offset = _HEADER_SIZE
    csrc_count = first & 0x0F
    if offset + 4 * csrc_count > size:
        raise RtpParseError(f"{csrc_count} CSRCs do not fit in {size} bytes")
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, offset) if csrc_count else ()
    offset += 4 * csrc_count
    extension = None
    if first & 0x10:
        if offset + 4 > size:
            raise RtpParseError("extension header beyond the datagram")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        offset += 4
        if offset + 4 * words > size:
            raise RtpParseError(f"extension of {words} words beyond the datagram")
        extension = RtpExtension(profile, data[offset : offset + 4 * words])
        offset += 4 * words
    end = size
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0:
            raise RtpParseError("padding bit set with a padding count of 0")
        if offset + padding > size:
            raise RtpParseError(f"padding of {padding} bytes beyond the payload")
        end = size - padding
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=data[offset:end],
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
        extension=extension,
        padding=padding,
    )


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_add(seq: int, n: int) -> int:
    """Sequence number n steps after seq (n may be negative), wrapped to 16 bits."""
    return (seq + n) & 0xFFFF


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between 32-bit timestamps, in -2**31..2**31-1."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def ts_add(ts: int, n: int) -> int:
    """Timestamp n units after ts (n may be negative), wrapped to 32 bits."""
    return (ts + n) & 0xFFFFFFFF
