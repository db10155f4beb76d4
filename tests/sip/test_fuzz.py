"""Fuzzing: the parser, framer, grammar helpers and check_request never raise anything but
their documented error, never hang, and whatever parses still round-trips.

A bounded deterministic mutation run (byte flips, truncations, insertions, duplicated,
dropped and swapped lines) over every message we have, plus hypothesis properties.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.sip.message import SipRequest
from agentd.sip.parser import SipParseError, StreamFramer, parse_message
from agentd.sip.uri import (
    UriError,
    parse_absolute_uri,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_via,
)
from agentd.sip.validate import check_request
from tests.sip.test_parser import TYPICAL

OWN = Path(__file__).resolve().parent / "torture"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "rfc4475"


def _corpus() -> list[bytes]:
    messages = list(TYPICAL.values())
    messages += [p.read_bytes() for p in sorted(OWN.glob("*.sip"))]
    if SHARED.is_dir():
        messages += [p.read_bytes() for p in sorted(SHARED.glob("*.dat"))]
    return messages


CORPUS = _corpus()
INTERESTING = [
    b"\r\n", b"\r\n ", b"\n", b"\r", b" ", b"\t", b";", b",", b":", b'"', b"\\", b"<", b">",
    b"%", b"%0", b"@", b"?", b"=", b"[", b"]", b"\x00", b"\xff", b"\xc3", b"0", b"-1",
    b"99999999999999999999", b"SIP/2.0", b"Content-Length: 5\r\n", b"l: 99999\r\n",
    b"Via: SIP/2.0/UDP h\r\n", b"CSeq: 1 BYE\r\n", b"\r\n\r\n",
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if not data:
        return rng.choice(INTERESTING)
    pos = rng.randrange(len(data) + 1)
    if kind == 0:  # flip a byte
        buf = bytearray(data)
        i = min(pos, len(buf) - 1)
        buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:  # truncate
        return data[:pos]
    if kind == 2:  # insert something with meaning to the grammar
        return data[:pos] + rng.choice(INTERESTING) + data[pos:]
    if kind == 3:  # delete a span
        return data[:pos] + data[pos + rng.randrange(1, 20) :]
    lines = data.split(b"\r\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if kind == 4:  # duplicate a line
        lines.insert(j, lines[i])
    elif kind == 5:  # drop a line
        del lines[i]
    else:  # swap two lines
        lines[i], lines[j] = lines[j], lines[i]
    return b"\r\n".join(lines)


def _exercise(data: bytes) -> None:
    """Everything a received datagram goes through; only SipParseError may come out."""
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert exc.status in (None, 400, 505, 513)
        if exc.request is not None:
            check_request(exc.request)
        return
    again = parse_message(msg.to_bytes())
    if "Content-Length" not in msg.headers:
        again.headers.remove("Content-Length")
    assert again == msg
    if isinstance(msg, SipRequest):
        check_request(msg)


def _exercise_framer(data: bytes, rng: random.Random) -> None:
    framer = StreamFramer(max_size=8192)
    pos = 0
    for _ in range(64):  # bounded: at most 64 chunks, then one final drain
        if pos >= len(data) or framer.failed:
            break
        step = rng.randrange(1, 400)
        chunk, pos = data[pos : pos + step], pos + step
        try:
            framer.feed(chunk)
        except SipParseError:
            pass
    assert framer.buffered <= 8192 + 400


@pytest.mark.timeout(120)
def test_deterministic_mutation_run() -> None:
    rng = random.Random(4475)
    runs = 0
    for original in CORPUS:
        for _ in range(40):
            data = original
            for _ in range(rng.randrange(1, 4)):
                data = _mutate(data, rng)
            _exercise(data)
            _exercise_framer(data + original, rng)
            runs += 1
    assert runs == 40 * len(CORPUS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    _exercise(data)
    _exercise_framer(data, random.Random(len(data)))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(CORPUS),
    st.lists(st.tuples(st.integers(0, 4000), st.sampled_from(INTERESTING)), max_size=4),
    st.integers(0, 4000),
)
def test_inserted_tokens(original: bytes, inserts: list[tuple[int, bytes]], cut: int) -> None:
    data = original
    for pos, piece in inserts:
        pos %= len(data) + 1
        data = data[:pos] + piece + data[pos:]
    _exercise(data)
    _exercise(data[: cut % (len(data) + 1)])


GRAMMAR = [parse_absolute_uri, parse_name_addr, parse_name_addr_list, parse_via, parse_cseq,
           parse_media_type]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(GRAMMAR),
    st.text(
        alphabet=st.sampled_from(list("sip:tel@<>\";,?=&%[]/ \t\\abc0129.-_+!~*'()\x00\xe9")),
        max_size=80,
    ),
)
def test_grammar_helpers_raise_only_urierror(parser, text: str) -> None:  # type: ignore[no-untyped-def]
    try:
        result = parser(text)
    except UriError:
        return
    if parser in (parse_absolute_uri, parse_name_addr, parse_via, parse_media_type):
        assert parser(str(result)) == result
