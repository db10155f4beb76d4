"""SIP message parser and stream framer."""

from __future__ import annotations

import pytest

from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.parser import SipParseError, StreamFramer, parse_message

SDP = (
    b"v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8\r\n"
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


INVITE = crlf(
    "INVITE sip:agent@127.0.0.1:5070 SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1a2b;rport\n"
    "Max-Forwards: 70\n"
    'From: "Caller" <sip:1001@127.0.0.1>;tag=f1\n'
    "To: <sip:agent@127.0.0.1>\n"
    "Call-ID: c1@127.0.0.1\n"
    "CSeq: 1 INVITE\n"
    "Contact: <sip:1001@127.0.0.1:5060>\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n\n"
) + SDP
REGISTER = crlf(
    "REGISTER sip:127.0.0.1 SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg1\n"
    "Max-Forwards: 70\n"
    "From: <sip:agent@127.0.0.1>;tag=r1\n"
    "To: <sip:agent@127.0.0.1>\n"
    "Call-ID: reg1@127.0.0.1\n"
    "CSeq: 2 REGISTER\n"
    "Contact: <sip:agent@127.0.0.1:5070>;expires=300\n"
    "Authorization: Digest username=\"agent\", realm=\"pbx\", nonce=\"abc\", "
    'uri="sip:127.0.0.1", response="0123456789abcdef0123456789abcdef"\n'
    "Expires: 300\n"
    "Content-Length: 0\n\n"
)
OK_200 = crlf(
    "SIP/2.0 200 OK\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg1;received=127.0.0.1;rport=5070\n"
    "From: <sip:agent@127.0.0.1>;tag=r1\n"
    "To: <sip:agent@127.0.0.1>;tag=srv9\n"
    "Call-ID: reg1@127.0.0.1\n"
    "CSeq: 2 REGISTER\n"
    "Contact: <sip:agent@127.0.0.1:5070>;expires=300\n"
    "Content-Length: 0\n\n"
)
UNAUTHORIZED_401 = crlf(
    "SIP/2.0 401 Unauthorized\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKreg0\n"
    "From: <sip:agent@127.0.0.1>;tag=r1\n"
    "To: <sip:agent@127.0.0.1>;tag=srv9\n"
    "Call-ID: reg1@127.0.0.1\n"
    "CSeq: 1 REGISTER\n"
    'WWW-Authenticate: Digest realm="pbx", nonce="5f1e", algorithm=MD5, qop="auth"\n'
    "Content-Length: 0\n\n"
)
TYPICAL = {"invite": INVITE, "register": REGISTER, "200": OK_200, "401": UNAUTHORIZED_401}


def _bad(data: bytes, **kwargs: object) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def _replace(data: bytes, old: str, new: str) -> bytes:
    assert old.encode() in data
    return data.replace(old.encode(), new.encode(), 1)


# --- well-formed messages ---------------------------------------------------------------


def test_invite() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert (msg.method, msg.uri, msg.version) == ("INVITE", "sip:agent@127.0.0.1:5070", "SIP/2.0")
    assert msg.call_id == "c1@127.0.0.1" and msg.cseq == (1, "INVITE")
    assert msg.body == SDP
    assert msg.headers.get("v") == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1a2b;rport"


def test_responses() -> None:
    ok = parse_message(OK_200)
    assert isinstance(ok, SipResponse) and (ok.status, ok.reason) == (200, "OK")
    challenge = parse_message(UNAUTHORIZED_401)
    assert challenge.status == 401
    assert challenge.headers.values("WWW-Authenticate") == [
        'Digest realm="pbx", nonce="5f1e", algorithm=MD5, qop="auth"'
    ]


@pytest.mark.parametrize("name", sorted(TYPICAL))
def test_typical_messages_round_trip(name: str) -> None:
    msg = parse_message(TYPICAL[name])
    assert parse_message(msg.to_bytes()) == msg
    assert msg.to_bytes() == TYPICAL[name]


def test_folding_case_and_compact_forms() -> None:
    data = crlf(
        "OPTIONS sip:a@h SIP/2.0\n"
        "v: SIP/2.0/UDP h;branch=z9hG4bK1\n"
        "f: <sip:b@h>;tag=1\n"
        "T  :  <sip:a@h>\n"
        "i: x\n"
        "cseq:  5\n"
        "\t   OPTIONS\n"
        "X-Folded: one\n"
        "   two\n"
        "\tthree\n"
        "Subject:\n"
        "l: 0\n\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Via") == "SIP/2.0/UDP h;branch=z9hG4bK1"
    assert msg.headers.get("to") == "<sip:a@h>"
    assert msg.cseq == (5, "OPTIONS")
    assert msg.headers.get("X-Folded") == "one two three"
    assert msg.headers.get("Subject") == ""
    assert [name for name, _ in msg.headers][:4] == ["Via", "From", "To", "Call-ID"]


def test_version_and_leading_crlf_tolerated() -> None:
    msg = parse_message(b"\r\n\r\n" + _replace(INVITE, "SIP/2.0\r\n", "sip/2.0\r\n"))
    assert msg.version == "SIP/2.0"


def test_body_is_exactly_content_length_and_trailing_octets_are_ignored() -> None:
    msg = parse_message(INVITE + b"garbage after the body")
    assert msg.body == SDP
    short = _replace(INVITE, f"Content-Length: {len(SDP)}", "Content-Length: 10")
    assert parse_message(short).body == SDP[:10]


def test_no_content_length_on_a_datagram_takes_the_rest() -> None:
    data = _replace(INVITE, f"Content-Length: {len(SDP)}\r\n", "")
    assert parse_message(data).body == SDP
    assert _bad(data, require_content_length=True).status == 400


def test_identical_duplicate_content_length_is_folded() -> None:
    data = _replace(INVITE, "Max-Forwards: 70", f"Content-Length: {len(SDP)}\r\nMax-Forwards: 70")
    msg = parse_message(data)
    assert msg.headers.get_all("Content-Length") == [str(len(SDP))]
    assert parse_message(msg.to_bytes()) == msg


def test_empty_reason_phrase_with_or_without_space() -> None:
    assert parse_message(_replace(OK_200, "200 OK", "200 ")).reason == ""
    assert parse_message(_replace(OK_200, "200 OK", "200")).reason == ""


# --- malformed messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    "old,new,reason_part",
    [
        (f"Content-Length: {len(SDP)}", "Content-Length: 500", "larger than the data"),
        (f"Content-Length: {len(SDP)}", "Content-Length: -1", "not a number"),
        (f"Content-Length: {len(SDP)}", "Content-Length: 1e2", "not a number"),
        (f"Content-Length: {len(SDP)}", "Content-Length: " + "9" * 5000, "too large"),
        (f"Content-Length: {len(SDP)}", "Content-Length: 10\r\nl: 11", "differing"),
        ("CSeq: 1 INVITE", "CSeq: 1 BYE", "differs"),
        ("CSeq: 1 INVITE", "CSeq: 1 invite", "differs"),
        ("CSeq: 1 INVITE", "CSeq: 2147483648 INVITE", "2**31"),
        ("CSeq: 1 INVITE", "CSeq: INVITE", "CSeq"),
        ("Max-Forwards: 70", "Max-Forwards: 256", "too large"),
        ("Max-Forwards: 70", "Max-Forwards: seventy", "not a number"),
        ("Max-Forwards: 70", "Expires: 4294967296", "too large"),
        ("Max-Forwards: 70", "Retry-After: 99999999999 (x)", "too large"),
        ('From: "Caller"', 'From: "Caller', "unterminated"),
        ("To: <sip:agent@127.0.0.1>", "To: <sip:agent@127.0.0.1 >", "whitespace"),
        ("To: <sip:agent@127.0.0.1>", "To: Mr, X <sip:agent@127.0.0.1>", "display name"),
        ("Contact: <sip:1001@127.0.0.1:5060>", "Contact: sip:a@h?x=y", "<>"),
        ("Via: SIP/2.0/UDP", "Via: SIP/2.0/UDP 127.0.0.1;;,", "empty parameter"),
        ("Call-ID: c1@127.0.0.1", "Call-ID: c1 c2", "Call-ID"),
        ("Call-ID: c1@127.0.0.1", "Call-ID: a@b@c", "Call-ID"),
        ("Content-Type: application/sdp", "Content-Type: sdp", "media type"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE  sip:a@h SIP/2.0", "request line"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE sip:a@h SIP/2.0 ", "request line"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE <sip:a@h> SIP/2.0", "<>"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE sip:a@h?X=1 SIP/2.0", "headers"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE sip:a@h;x=1;x=2 SIP/2.0", "Request-URI"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE sip:a@h HTTP/1.1", "version"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INV(TE sip:a@h SIP/2.0", "method"),
        ("INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "INVITE sip:a@h\x01 SIP/2.0", "control"),
        ("Max-Forwards: 70", "Bad Header: x", "header line"),
        ("Max-Forwards: 70", "NoColon", "header line"),
        ("Max-Forwards: 70", "Max-Forwards: 70\nX: bare LF", "bare CR or LF"),
    ],
)
def test_malformed_requests_get_400(old: str, new: str, reason_part: str) -> None:
    error = _bad(_replace(INVITE, old, new))
    assert reason_part.lower() in error.reason.lower()
    assert error.status == 400


def test_bad_version_gets_505_with_a_partial_request() -> None:
    error = _bad(_replace(INVITE, "SIP/2.0\r\n", "SIP/3.0\r\n"))
    assert error.status == 505
    assert error.request is not None
    assert error.request.method == "INVITE" and error.request.call_id == "c1@127.0.0.1"


def test_partial_request_carries_headers_to_answer_from() -> None:
    error = _bad(_replace(INVITE, "CSeq: 1 INVITE", "CSeq: 1 BYE"))
    assert error.request is not None
    assert error.request.headers.get("Via").startswith("SIP/2.0/UDP 127.0.0.1:5060")
    assert error.request.headers.get("From") == '"Caller" <sip:1001@127.0.0.1>;tag=f1'


def test_unreadable_header_section_has_no_partial_request() -> None:
    error = _bad(_replace(INVITE, "Max-Forwards: 70", " folded first?\r\nX y: z"))
    assert error.request is None


@pytest.mark.parametrize(
    "old,new",
    [
        ("200 OK", "099 Too Low"),
        ("200 OK", "700 Too High"),
        ("200 OK", "2000 OK"),
        ("200 OK", "20x OK"),
        ("SIP/2.0 200", "SIP/2.1 200"),
        ("CSeq: 2 REGISTER", "CSeq: 99999999999 REGISTER"),
        ("200 OK", "200 O\x00K"),
    ],
)
def test_malformed_responses_are_discarded(old: str, new: str) -> None:
    error = _bad(_replace(OK_200, old, new))
    assert error.status is None and error.request is None


def test_size_limit_and_encoding_and_empty() -> None:
    big = _replace(INVITE, "Max-Forwards: 70", "X-Pad: " + "a" * 70000 + "\r\nMax-Forwards: 70")
    assert _bad(big).status == 513
    assert parse_message(INVITE, max_size=len(INVITE)).body == SDP
    assert _bad(INVITE, max_size=len(INVITE) - 1).status == 513
    assert "UTF-8" in _bad(INVITE.replace(b"Caller", b"Call\xff")).reason
    assert _bad(b"").status is None
    assert _bad(b"\r\n\r\n").status is None
    assert "empty line" in _bad(INVITE[: INVITE.index(b"\r\n\r\n")]).reason
    assert _bad(b"x").reason
    with pytest.raises(SipParseError):
        parse_message("INVITE sip:a@h SIP/2.0\r\n\r\n")  # type: ignore[arg-type]


def test_utf8_header_values_and_binary_body() -> None:
    body = bytes(range(256))
    data = _replace(INVITE, 'From: "Caller"', 'From: "Zoë 日本"')
    data = data[: data.index(b"Content-Length")] + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    msg = parse_message(data)
    assert msg.headers.get("From").startswith('"Zoë 日本"') and msg.body == body
    assert parse_message(msg.to_bytes()) == msg


# --- stream framer ----------------------------------------------------------------------


def test_framer_every_split_point() -> None:
    stream = INVITE + REGISTER + OK_200
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        got = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert [type(m).__name__ for m in got] == ["SipRequest", "SipRequest", "SipResponse"]
        assert got[0].body == SDP and framer.buffered == 0


def test_framer_byte_by_byte_and_keepalives() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + b"\r\n\r\n\r\n\r\n" + UNAUTHORIZED_401
    got = []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])
    assert [getattr(m, "method", None) or m.status for m in got] == ["INVITE", 401]
    assert framer.keepalives == 3


def test_framer_requires_content_length_and_then_stays_failed() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError, match="Content-Length"):
        framer.feed(_replace(REGISTER, "Content-Length: 0\r\n", ""))
    assert framer.failed
    with pytest.raises(SipParseError):
        framer.feed(REGISTER)


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01\x02\x03\r\n", b"<html>\r\n", b"\r\x00", b"x" * 200]
)
def test_framer_rejects_garbage(garbage: bytes) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(garbage)
    assert framer.failed


def test_framer_bounds_the_buffer() -> None:
    framer = StreamFramer(max_size=2048)
    with pytest.raises(SipParseError, match="longer"):
        for _ in range(100):
            framer.feed(b"OPTIONS sip:a@h SIP/2.0\r\nX: " + b"a" * 100)
    assert framer.buffered == 0
    framer = StreamFramer(max_size=2048)
    with pytest.raises(SipParseError, match="larger"):
        framer.feed(_replace(REGISTER, "Content-Length: 0", "Content-Length: 999999"))


def test_framer_goes_on_after_a_framed_but_malformed_message() -> None:
    bad = _replace(REGISTER, "CSeq: 2 REGISTER", "CSeq: 2 INVITE")
    framer = StreamFramer()
    got = framer.feed(INVITE + bad + OK_200)
    assert [m.method for m in got] == ["INVITE"]  # error comes on the next call
    with pytest.raises(SipParseError) as info:
        framer.feed(b"")
    assert info.value.status == 400 and info.value.request.method == "REGISTER"
    assert not framer.failed
    assert [m.status for m in framer.feed(b"")] == [200]


def test_framer_with_several_messages_in_one_feed() -> None:
    framer = StreamFramer()
    got = framer.feed(REGISTER * 5 + OK_200[:10])
    assert len(got) == 5 and framer.buffered == 10
    assert framer.feed(OK_200[10:])[0].status == 200
