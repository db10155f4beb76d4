"""Blind transfer helpers: Refer-To with URI headers, NOTIFY sipfrag progress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.sip.refer import (
    TransferProgress,
    build_refer_to,
    parse_notify,
    sanitize_header_text,
    uri_header_text,
    user_to_user_value,
)
from agentd.sip.uri import parse_name_addr


def refer_uri(value: str):  # noqa: ANN201 - SipUri
    name_addr = parse_name_addr(value)
    return name_addr.uri


def test_extension_becomes_uri_in_our_domain() -> None:
    value = build_refer_to("4000", domain="pbx.example", reason=None, call_ref=None)
    assert value == "<sip:4000@pbx.example>"


def test_full_uri_target_keeps_its_params() -> None:
    value = build_refer_to("sip:4000@10.0.0.9:5080;user=phone", domain="pbx.example",
                           reason=None, call_ref=None)
    uri = refer_uri(value)
    assert (uri.user, uri.host, uri.port, uri.params.get("user")) == ("4000", "10.0.0.9",
                                                                      5080, "phone")


def test_reason_and_reference_ride_as_plain_uri_headers() -> None:
    reason = "caller wants billing; refund=yes & more? ünï"
    value = build_refer_to("4000", domain="pbx.example", reason=reason, call_ref="ab12")
    assert value.startswith("<sip:4000@pbx.example?") and value.endswith(">")
    query = value[1:-1].split("?", 1)[1]
    # No %-escapes at all (some transferees mangle them) and nothing that would split the URI.
    assert "%" not in query
    for pair in query.split("&"):
        name, _, hvalue = pair.partition("=")
        assert name and hvalue and all(c.isalnum() or c in "._~-" for c in hvalue)
    headers = refer_uri(value).headers
    assert headers["X-Agentd-Reason"] == uri_header_text(reason)
    assert headers["X-Agentd-Reason"].startswith("caller_wants_billing")
    assert headers["X-Agentd-Call-Ref"] == "ab12"
    # The exact text travels hex-encoded in User-to-User (RFC 7433: hex is the default).
    assert bytes.fromhex(headers["User-to-User"]) == ("ab12;" + reason).encode()


def test_header_injection_is_neutralised() -> None:
    value = build_refer_to("4000", domain="pbx", reason="x\r\nVia: evil\r\n\r\n", call_ref=None)
    assert "\r" not in value and "\n" not in value
    assert "\r" not in refer_uri(value).headers["X-Agentd-Reason"]


@given(st.text(max_size=300))
def test_any_reason_makes_a_parseable_refer_to(reason: str) -> None:
    value = build_refer_to("4000", domain="pbx.example", reason=reason, call_ref="r1")
    assert value.isascii() and "\r" not in value and "\n" not in value
    uri = refer_uri(value)
    assert uri.user == "4000"
    assert len(uri.headers.get("X-Agentd-Reason", "")) <= 120


def test_bad_target_is_value_error() -> None:
    with pytest.raises(ValueError):
        build_refer_to("sip:", domain="pbx", reason=None, call_ref=None)


def test_user_to_user_is_bounded_hex() -> None:
    value = user_to_user_value("ref", "x" * 500)
    payload, _, encoding = value.partition(";")
    assert encoding == "encoding=hex"
    assert len(bytes.fromhex(payload)) == 128


@pytest.mark.parametrize(
    ("body", "ctype", "state", "expected"),
    [
        (b"SIP/2.0 100 Trying\r\n", "message/sipfrag;version=2.0", "active;expires=60",
         TransferProgress(100, "Trying", False)),
        (b"SIP/2.0 180 Ringing", "message/sipfrag", "active", TransferProgress(180, "Ringing",
                                                                               False)),
        (b"SIP/2.0 200 OK\r\n", "message/sipfrag", "terminated;reason=noresource",
         TransferProgress(200, "OK", True)),
        (b"SIP/2.0 486 Busy Here\r\n\r\n", "Message/SIPfrag", "Terminated",
         TransferProgress(486, "Busy Here", True)),
        (b"SIP/2.0 603\r\n", None, None, TransferProgress(603, "", False)),
    ],
)
def test_sipfrag_progress(body: bytes, ctype: str | None, state: str | None,
                          expected: TransferProgress) -> None:
    assert parse_notify(body, ctype, state) == expected


def test_progress_verdicts() -> None:
    assert TransferProgress(200, "OK", True).succeeded
    assert TransferProgress(486, "Busy", True).failed
    trying = TransferProgress(100, "Trying", False)
    assert not trying.succeeded and not trying.failed


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"", "message/sipfrag"),
        (b"hello", "message/sipfrag"),
        (b"SIP/2.0 200 OK", "text/plain"),
        (b"SIP/2.0 099 Low", "message/sipfrag"),
        (b"SIP/2.0 700 High", "message/sipfrag"),
        (b"SIP/2.0 2000 OK", "message/sipfrag"),  # four digits is not a status code
        (b"SIP/2.0 20 OK", "message/sipfrag"),
        (b"SIP/3.0 200 OK", "message/sipfrag"),
        (b"INVITE sip:a@b SIP/2.0", "message/sipfrag"),
        (b"\xff\xfe\x00garbage", "message/sipfrag"),
    ],
)
def test_junk_notify_bodies_are_not_progress(body: bytes, ctype: str) -> None:
    assert parse_notify(body, ctype, "active") is None


@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=40)),
       st.one_of(st.none(), st.text(max_size=40)))
def test_parse_notify_never_raises(body: bytes, ctype: str | None, state: str | None) -> None:
    result = parse_notify(body, ctype, state)
    assert result is None or 100 <= result.status <= 699


def test_sanitize_header_text_is_one_bounded_printable_line() -> None:
    text = sanitize_header_text('a\r\nb"c<d>\x00é' + "x" * 300)
    assert text.startswith("a  bcd")
    assert all(32 <= ord(c) < 127 for c in text) and len(text) <= 200
