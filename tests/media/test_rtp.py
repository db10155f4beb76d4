"""RTP packet parsing, serialisation and wrap-around arithmetic."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.media.rtp import (
    RtpExtension,
    RtpPacket,
    RtpParseError,
    parse_rtp,
    seq_add,
    seq_diff,
    ts_add,
    ts_diff,
)


def test_minimal_packet_wire_format() -> None:
    packet = RtpPacket(payload_type=0, sequence=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304,
                       payload=b"\xff" * 160, marker=True)
    data = packet.to_bytes()
    assert data[:12] == bytes([0x80, 0x80, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4])
    assert len(data) == 172
    assert parse_rtp(data) == packet


def test_round_trip_with_csrc_extension_and_padding() -> None:
    packet = RtpPacket(
        payload_type=101,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=7,
        payload=b"\x01\x0a\x00\xa0",
        csrcs=(1, 2, 2**32 - 1),
        extension=RtpExtension(0xBEDE, b"\x10\xff\x00\x00"),
        padding=4,
    )
    data = packet.to_bytes()
    # Header 12 + 3 CSRC 12 + ext header 4 + ext 4 + payload 4 + padding 4.
    assert len(data) == 40
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-1] == 4
    assert parse_rtp(data) == packet


def test_padding_may_fill_the_whole_payload() -> None:
    data = RtpPacket(payload_type=0, sequence=1, timestamp=2, ssrc=3, padding=8).to_bytes()
    packet = parse_rtp(data)
    assert packet.payload == b"" and packet.padding == 8


def test_empty_extension_round_trips() -> None:
    packet = RtpPacket(payload_type=8, sequence=1, timestamp=2, ssrc=3, payload=b"ab",
                       extension=RtpExtension(0x1000))
    assert parse_rtp(packet.to_bytes()) == packet


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "shorter"),
        (b"\x80\x00" + bytes(9), "shorter"),
        (b"\x40\x00" + bytes(10), "version"),
        (b"\xc0\x00" + bytes(10), "version"),
        (b"\x82\x00" + bytes(10) + bytes(4), "CSRC"),
        (b"\x90\x00" + bytes(10) + b"\x00\x00", "extension header"),
        (b"\x90\x00" + bytes(10) + b"\x00\x00\x00\x02" + bytes(4), "extension of 2"),
        (b"\xa0\x00" + bytes(10) + b"\x00\x00\x00\x00", "count of 0"),
        (b"\xa0\x00" + bytes(10) + b"\x00\x00\x00\x09", "padding of 9"),
    ],
)
def test_malformed_packets_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(RtpParseError, match=reason):
        parse_rtp(data)


def test_to_bytes_rejects_out_of_range_fields() -> None:
    for bad in (
        RtpPacket(payload_type=128, sequence=0, timestamp=0, ssrc=0),
        RtpPacket(payload_type=0, sequence=65536, timestamp=0, ssrc=0),
        RtpPacket(payload_type=0, sequence=0, timestamp=2**32, ssrc=0),
        RtpPacket(payload_type=0, sequence=0, timestamp=0, ssrc=0, csrcs=tuple(range(16))),
        RtpPacket(payload_type=0, sequence=0, timestamp=0, ssrc=0, padding=256),
        RtpPacket(payload_type=0, sequence=0, timestamp=0, ssrc=0,
                  extension=RtpExtension(1, b"abc")),
    ):
        with pytest.raises(ValueError):
            bad.to_bytes()


def _valid_packets() -> st.SearchStrategy[RtpPacket]:
    return st.builds(
        RtpPacket,
        payload_type=st.integers(0, 127),
        sequence=st.integers(0, 65535),
        timestamp=st.integers(0, 2**32 - 1),
        ssrc=st.integers(0, 2**32 - 1),
        payload=st.binary(max_size=64),
        marker=st.booleans(),
        csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
        extension=st.none() | st.builds(
            RtpExtension, st.integers(0, 0xFFFF),
            st.binary(max_size=16).map(lambda b: b[: len(b) // 4 * 4])),
        padding=st.integers(0, 255),
    )


@settings(max_examples=300, deadline=None)
@given(_valid_packets())
def test_any_valid_packet_round_trips(packet: RtpPacket) -> None:
    assert parse_rtp(packet.to_bytes()) == packet


@settings(max_examples=500, deadline=None)
@given(_valid_packets(), st.data())
def test_corrupted_packets_raise_only_parse_error(packet: RtpPacket, data: st.DataObject) -> None:
    wire = bytearray(packet.to_bytes())
    cut = data.draw(st.integers(0, len(wire)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=4))
    wire = wire[:cut]
    for index, value in flips:
        if wire:
            wire[index % len(wire)] = value
    try:
        parsed = parse_rtp(bytes(wire))
    except RtpParseError:
        return
    # Whatever parses must be self-consistent: it serialises back to the same bytes length.
    assert len(parsed.to_bytes()) == len(wire)


def test_random_bytes_raise_only_parse_error() -> None:
    rng = random.Random(1234)
    parsed = 0
    for _ in range(20000):
        data = rng.randbytes(rng.randrange(0, 80))
        try:
            parse_rtp(data)
            parsed += 1
        except RtpParseError:
            pass
    assert parsed > 0  # some random datagrams are valid RTP; the rest must raise cleanly


def test_parse_accepts_memoryview_and_bytearray() -> None:
    data = struct.pack("!BBHII", 0x80, 8, 1, 2, 3) + b"xyz"
    assert parse_rtp(memoryview(data)).payload == b"xyz"
    assert parse_rtp(bytearray(data)).payload_type == 8


def test_sequence_arithmetic_wraps() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 5) == 0
    assert seq_diff(32767, 0) == 32767
    assert seq_diff(32768, 0) == -32768
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535
    assert seq_add(100, 65536 + 3) == 103


def test_timestamp_arithmetic_wraps() -> None:
    assert ts_diff(80, 2**32 - 80) == 160
    assert ts_diff(2**32 - 80, 80) == -160
    assert ts_diff(2**31 - 1, 0) == 2**31 - 1
    assert ts_diff(2**31, 0) == -(2**31)
    assert ts_add(2**32 - 1, 161) == 160
    assert ts_add(0, -160) == 2**32 - 160


@given(st.integers(0, 65535), st.integers(-32768, 32767))
def test_seq_diff_inverts_seq_add(seq: int, step: int) -> None:
    assert seq_diff(seq_add(seq, step), seq) == step


@given(st.integers(0, 2**32 - 1), st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_inverts_ts_add(ts: int, step: int) -> None:
    assert ts_diff(ts_add(ts, step), ts) == step
