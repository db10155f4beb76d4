"""RFC 4733 telephone-event payloads and the DTMF receiver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.media.dtmf import (
    DIGITS,
    DtmfDigit,
    DtmfReceiver,
    TelephoneEvent,
    build_telephone_event,
    digit_to_event,
    dtmf_payloads,
    event_to_digit,
    parse_telephone_event,
)


def test_known_payload_bytes() -> None:
    # Event 5, end bit, volume 10, duration 800 (RFC 4733 figure layout).
    ev = TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert build_telephone_event(ev) == b"\x05\x8a\x03\x20"
    assert parse_telephone_event(b"\x05\x8a\x03\x20") == ev


@given(
    event=st.integers(0, 255),
    end=st.booleans(),
    volume=st.integers(0, 63),
    duration=st.integers(0, 0xFFFF),
)
def test_round_trip(event: int, end: bool, volume: int, duration: int) -> None:
    ev = TelephoneEvent(event, end, volume, duration)
    assert parse_telephone_event(build_telephone_event(ev)) == ev


def test_parse_ignores_reserved_bit_and_extra_bytes() -> None:
    assert parse_telephone_event(b"\x0b\x4a\x00\xa0extra") == TelephoneEvent(11, False, 10, 160)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_parse_short_payload_raises(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_telephone_event(payload)


@pytest.mark.parametrize(
    "ev",
    [
        TelephoneEvent(256, False, 0, 0),
        TelephoneEvent(-1, False, 0, 0),
        TelephoneEvent(1, False, 64, 0),
        TelephoneEvent(1, False, 0, 0x10000),
        TelephoneEvent(1, False, 0, -1),
    ],
)
def test_build_rejects_out_of_range(ev: TelephoneEvent) -> None:
    with pytest.raises(ValueError):
        build_telephone_event(ev)


def test_digit_mapping() -> None:
    assert [digit_to_event(d) for d in DIGITS] == list(range(16))
    assert [event_to_digit(e) for e in range(16)] == list(DIGITS)
    assert digit_to_event("a") == 12
    assert event_to_digit(16) is None
    assert event_to_digit(-1) is None
    for bad in ("", "E", "12", "x"):
        with pytest.raises(ValueError):
            digit_to_event(bad)


def test_payloads_for_one_press() -> None:
    packets = dtmf_payloads("7", duration_ms=100, volume=10)
    events = [parse_telephone_event(p) for p, _ in packets]
    assert [m for _, m in packets] == [True] + [False] * 6
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {7}
    assert {e.volume for e in events} == {10}


def test_payloads_short_and_uneven_durations() -> None:
    short = dtmf_payloads("#", duration_ms=10)
    assert [m for _, m in short] == [True, False, False]
    assert all(parse_telephone_event(p) == TelephoneEvent(11, True, 10, 80) for p, _ in short)
    uneven = [parse_telephone_event(p).duration for p, _ in dtmf_payloads("1", duration_ms=50)]
    assert uneven == [160, 320, 400, 400, 400]
    wideband = [parse_telephone_event(p).duration for p, _ in dtmf_payloads("1", 40, rate=16000)]
    assert wideband == [320, 640, 640, 640]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"digit": "E"},
        {"digit": "1", "duration_ms": 0},
        {"digit": "1", "ptime_ms": 0},
        {"digit": "1", "duration_ms": 9000},  # exceeds 16-bit duration at 8 kHz
        {"digit": "1", "volume": 64},
    ],
)
def test_payloads_reject_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        dtmf_payloads(**kwargs)


def feed_all(rx: DtmfReceiver, packets: list[tuple[int, bytes, bool]]) -> list[DtmfDigit]:
    found = [rx.feed(ts, payload, marker) for ts, payload, marker in packets]
    return [d for d in found if d is not None]


def press(digit: str, ts: int, duration_ms: int = 100) -> list[tuple[int, bytes, bool]]:
    return [(ts, p, m) for p, m in dtmf_payloads(digit, duration_ms)]


def test_receiver_reports_each_press_once_despite_redundant_ends() -> None:
    rx = DtmfReceiver()
    packets = press("1", 1000) + press("2", 5000) + press("#", 9000, 60)
    assert feed_all(rx, packets) == [
        DtmfDigit("1", 1000, 800),
        DtmfDigit("2", 5000, 800),
        DtmfDigit("#", 9000, 480),
    ]
    assert rx.flush() is None


def test_receiver_reports_on_first_end_packet() -> None:
    rx = DtmfReceiver()
    results = [rx.feed(ts, p, m) for ts, p, m in press("9", 42)]
    assert results[:4] == [None] * 4
    assert results[4] == DtmfDigit("9", 42, 800)
    assert results[5:] == [None, None]


def test_same_digit_twice_is_two_presses() -> None:
    rx = DtmfReceiver()
    digits = feed_all(rx, press("5", 100) + press("5", 2000))
    assert [(d.digit, d.timestamp) for d in digits] == [("5", 100), ("5", 2000)]


def test_lost_end_packets_reported_when_next_press_starts() -> None:
    rx = DtmfReceiver()
    first = [p for p in press("3", 100) if not parse_telephone_event(p[1]).end]
    assert feed_all(rx, first) == []
    second = press("4", 3000)
    # The first packet of the new press reports the older one, with its last known duration.
    assert rx.feed(*second[0]) == DtmfDigit("3", 100, 640)
    assert feed_all(rx, second[1:]) == [DtmfDigit("4", 3000, 800)]


def test_lost_end_packets_and_new_press_arriving_as_end_only() -> None:
    rx = DtmfReceiver()
    rx.feed(100, build_telephone_event(TelephoneEvent(1, False, 10, 160)), True)
    ends = [(3000, p, m) for p, m in dtmf_payloads("2", 10)]
    # Both presses complete on one packet: older now, newer on the redundant end packet.
    assert rx.feed(*ends[0]) == DtmfDigit("1", 100, 160)
    assert rx.feed(*ends[1]) == DtmfDigit("2", 3000, 80)
    assert rx.feed(*ends[2]) is None


def test_new_press_arriving_as_single_end_packet_is_flushed() -> None:
    rx = DtmfReceiver()
    rx.feed(100, build_telephone_event(TelephoneEvent(1, False, 10, 160)), True)
    assert rx.feed(3000, build_telephone_event(TelephoneEvent(2, True, 10, 80))) == DtmfDigit(
        "1", 100, 160
    )
    assert rx.flush() == DtmfDigit("2", 3000, 80)
    assert rx.flush() is None


def test_flush_reports_open_press_once() -> None:
    rx = DtmfReceiver()
    feed_all(rx, press("*", 700)[:2])
    assert rx.flush() == DtmfDigit("*", 700, 320)
    assert rx.flush() is None
    # Late end packets of the flushed press stay silent.
    assert feed_all(rx, press("*", 700)[4:]) == []


def test_duplicate_start_packets_do_not_duplicate() -> None:
    rx = DtmfReceiver()
    packets = press("6", 500)
    packets = [packets[0], packets[0], packets[0]] + packets[1:]
    assert feed_all(rx, packets) == [DtmfDigit("6", 500, 800)]


def test_reordered_continuation_keeps_longest_duration() -> None:
    rx = DtmfReceiver()
    packets = press("8", 500)
    packets[1], packets[2] = packets[2], packets[1]
    assert feed_all(rx, packets[:4]) == []
    assert rx.flush() == DtmfDigit("8", 500, 640)


def test_malformed_and_unknown_events_are_ignored_and_counted() -> None:
    rx = DtmfReceiver()
    assert rx.feed(100, b"") is None
    assert rx.feed(100, b"\x01\x8a") is None
    assert rx.malformed == 2
    # Event 16+ (e.g. flash hook, tones) is not DTMF.
    assert rx.feed(200, build_telephone_event(TelephoneEvent(16, True, 10, 800))) is None
    assert rx.ignored == 1
    assert rx.flush() is None
    # The receiver still works afterwards.
    assert feed_all(rx, press("0", 300)) == [DtmfDigit("0", 300, 800)]


# Few distinct timestamps, so repeats are common but the receiver's memory (16) never evicts.
FEW_TIMESTAMPS = st.sampled_from([0, 1, 160, 2**32 - 1])


@given(st.lists(st.tuples(FEW_TIMESTAMPS, st.binary(max_size=8), st.booleans())))
def test_receiver_never_raises_and_never_repeats_a_timestamp(
    packets: list[tuple[int, bytes, bool]],
) -> None:
    rx = DtmfReceiver()
    digits = feed_all(rx, packets)
    tail = rx.flush()
    if tail is not None:
        digits.append(tail)
    stamps = [d.timestamp for d in digits]
    assert len(stamps) == len(set(stamps))
    assert all(d.digit in DIGITS for d in digits)
