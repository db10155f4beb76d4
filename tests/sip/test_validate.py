"""UA-level request checks (check_request)."""

from __future__ import annotations

import pytest

from agentd.sip.message import Headers, SipRequest
from agentd.sip.parser import parse_message
from agentd.sip.validate import Rejection, check_request
from tests.sip.test_parser import INVITE, REGISTER


def _invite(**changes: str | None) -> SipRequest:
    """The sample INVITE with headers replaced (value) or removed (None)."""
    req = parse_message(INVITE)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            req.headers.remove(name)
        else:
            req.headers.set(name, value)
    return req


def test_good_requests_pass() -> None:
    assert check_request(parse_message(INVITE)) is None
    assert check_request(parse_message(REGISTER)) is None


def test_version() -> None:
    req = _invite()
    req.version = "SIP/3.0"
    assert check_request(req) == Rejection(505, "Version Not Supported")


@pytest.mark.parametrize("name", ["To", "From", "Call-ID", "CSeq", "Via"])
def test_missing_mandatory_header(name: str) -> None:
    rejection = check_request(_invite(**{name.replace("-", "_"): None}))
    assert rejection is not None and rejection.status == 400 and name in rejection.reason


def test_max_forwards_is_optional_and_zero_is_fine_for_a_ua() -> None:
    assert check_request(_invite(Max_Forwards=None)) is None
    assert check_request(_invite(Max_Forwards="0")) is None


@pytest.mark.parametrize("name", ["To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Type"])
def test_repeated_single_value_header(name: str) -> None:
    req = _invite()
    req.headers.add(name, req.headers.get(name))
    rejection = check_request(req)
    assert rejection is not None and rejection.status == 400 and name in rejection.reason


def test_several_vias_and_contacts_are_fine() -> None:
    req = _invite()
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKx")
    req.headers.add("Record-Route", "<sip:p1;lr>, <sip:p2;lr>")
    assert check_request(req) is None


def test_cseq_checked_for_constructed_requests() -> None:
    assert check_request(_invite(CSeq="1 BYE")).status == 400
    assert check_request(_invite(CSeq="many INVITE")).status == 400


@pytest.mark.parametrize("uri", ["tel:+15550100", "http://x", "urn:x:y", "noscheme"])
def test_unsupported_request_uri_scheme(uri: str) -> None:
    req = _invite()
    req.uri = uri
    assert check_request(req) == Rejection(416, "Unsupported URI Scheme")


def test_schemes_are_configurable() -> None:
    req = _invite()
    req.uri = "tel:+15550100"
    assert check_request(req, supported_schemes=frozenset({"sip", "tel"})) is None
    req.uri = "SIPS:agent@h"
    assert check_request(req) is None


def test_require_lists_unsupported_option_tags() -> None:
    req = _invite(Require="timer, FooBar, replaces, 100rel")
    rejection = check_request(req)
    assert rejection == Rejection(420, "Bad Extension", (("Unsupported", "FooBar, 100rel"),))
    assert check_request(req, supported_extensions=frozenset({"timer", "foobar", "replaces", "100rel"})) is None
    # Proxy-Require is for proxies; a UA ignores it.
    assert check_request(_invite(Proxy_Require="whatever")) is None


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_require_is_ignored_on_ack_and_cancel(method: str) -> None:
    req = _invite(Require="FooBar", CSeq=f"1 {method}")
    req.method = method
    assert check_request(req) is None


def test_unsupported_body_type_on_invite() -> None:
    rejection = check_request(_invite(Content_Type="application/x-unknown"))
    assert rejection == Rejection(415, "Unsupported Media Type", (("Accept", "application/sdp"),))
    assert check_request(_invite(Content_Type="Application/SDP; charset=utf-8")) is None
    mixed = _invite(Content_Type="multipart/mixed;boundary=x")
    assert check_request(mixed).status == 415
    accepted = frozenset({"application/sdp", "multipart/mixed"})
    assert check_request(mixed, accepted_content_types=accepted) is None
    assert check_request(_invite(Content_Type=None)) == Rejection(400, "Missing Content-Type")
    assert check_request(_invite(Content_Type="garbage")).status == 400


def test_body_types_of_other_methods_are_not_checked_here() -> None:
    req = _invite(Content_Type="application/dtmf-relay", CSeq="2 INFO")
    req.method = "INFO"
    assert check_request(req) is None


def test_unknown_content_encoding() -> None:
    rejection = check_request(_invite(Content_Encoding="gzip"))
    assert rejection == Rejection(415, "Unsupported Media Type", (("Accept-Encoding", "identity"),))
    assert check_request(_invite(Content_Encoding="identity")) is None


@pytest.mark.parametrize(
    "accept,ok",
    [
        ("application/sdp", True),
        ("text/plain, application/sdp;q=0.5", True),
        ("*/*", True),
        ("application/*", True),
        ("text/plain", False),
        ("", False),
        ("application/sdp;q=0", False),
        ("*/*, application/sdp;q=0", False),
        ("application/*;q=0, application/sdp", True),
        ("bad, application/sdp", True),
    ],
)
def test_accept_on_invite(accept: str, ok: bool) -> None:
    rejection = check_request(_invite(Accept=accept))
    if ok:
        assert rejection is None
    else:
        assert rejection == Rejection(406, "Not Acceptable", (("Accept", "application/sdp"),))


def test_accept_only_matters_for_invite() -> None:
    req = parse_message(REGISTER)
    req.headers.add("Accept", "text/plain")
    assert check_request(req) is None


def test_order_follows_rfc3261() -> None:
    # Missing headers are found before the scheme, the scheme before Require, and so on.
    req = _invite(To=None, Require="FooBar", Content_Type="x/y")
    req.uri = "http://x"
    assert check_request(req).status == 400
    req.headers.add("To", "<sip:a@h>")
    assert check_request(req).status == 416
    req.uri = "sip:a@h"
    assert check_request(req).status == 420
    req.headers.remove("Require")
    assert check_request(req).status == 415


def test_empty_request() -> None:
    assert check_request(SipRequest("OPTIONS", "sip:a@h", Headers())).status == 400
