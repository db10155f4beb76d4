"""UAS dialogs (RFC 3261 §12): creation from an INVITE, route set, CSeq order, requests."""

from __future__ import annotations

import pytest

from agentd.sip.dialog import Dialog, DialogError, uri_destination
from agentd.sip.message import Headers, SipRequest
from agentd.sip.uri import parse_name_addr, parse_uri, tag_of


def invite(
    *,
    contact: str | list[str] | None = "<sip:alice@192.0.2.5:5070;transport=udp>",
    record_route: list[str] | None = None,
    to: str = '"Agent" <sip:2001@pbx.example>',
    from_: str = '"Alice" <sip:alice@pbx.example>;tag=rt1',
    cseq: str = "314 INVITE",
    call_id: str | None = "c1@pbx",
) -> SipRequest:
    fields: list[tuple[str, str]] = [("Via", "SIP/2.0/UDP 192.0.2.5:5070;branch=z9hG4bKx1")]
    for value in record_route or []:
        fields.append(("Record-Route", value))
    fields += [("From", from_), ("To", to), ("CSeq", cseq)]
    if call_id is not None:
        fields.append(("Call-ID", call_id))
    contacts = [contact] if isinstance(contact, str) else (contact or [])
    for value in contacts:
        fields.append(("Contact", value))
    return SipRequest("INVITE", "sip:2001@192.0.2.10", Headers(fields))


def in_dialog(method: str, cseq: int, *, to_tag: str = "lt1", from_tag: str = "rt1",
              call_id: str = "c1@pbx") -> SipRequest:
    return SipRequest(method, "sip:2001@192.0.2.10", Headers([
        ("Via", "SIP/2.0/UDP 192.0.2.5:5070;branch=z9hG4bKy"),
        ("From", f"<sip:alice@pbx.example>;tag={from_tag}"),
        ("To", f"<sip:2001@pbx.example>;tag={to_tag}"),
        ("Call-ID", call_id), ("CSeq", f"{cseq} {method}"),
    ]))


def test_from_invite_fields() -> None:
    d = Dialog.from_invite(invite(), "lt1")
    assert d.id == ("c1@pbx", "lt1", "rt1")
    assert d.remote_target == "sip:alice@192.0.2.5:5070;transport=udp"
    assert d.remote_cseq == 314 and d.local_cseq == 0
    assert d.route_set == []
    # Tags are kept apart from the URIs; display names survive.
    assert "tag=" not in d.local_uri and "tag=" not in d.remote_uri
    assert parse_name_addr(d.local_uri).display_name == "Agent"
    assert str(parse_name_addr(d.remote_uri).uri) == "sip:alice@pbx.example"


def test_from_invite_addr_spec_forms() -> None:
    d = Dialog.from_invite(invite(to="sip:2001@pbx.example", from_="sip:alice@pbx.example;tag=9",
                                  contact="sip:alice@192.0.2.5"), "lt")
    assert d.remote_tag == "9"
    request = d.build_request("BYE", via="SIP/2.0/UDP h;branch=z9hG4bKb")
    assert tag_of(request.headers.get("To")) == "9"
    assert tag_of(request.headers.get("From")) == "lt"
    assert d.next_hop() == ("192.0.2.5", 5060)


@pytest.mark.parametrize(
    "broken",
    [
        dict(contact=None),
        dict(contact=["<sip:a@h1>", "<sip:b@h2>"]),
        dict(call_id=None),
        dict(cseq="x INVITE"),
        dict(contact="<http://example.com>"),
        dict(from_="<sip:alice@pbx.example;tag=1"),
    ],
)
def test_from_invite_refuses_what_cannot_make_a_dialog(broken: dict[str, object]) -> None:
    with pytest.raises(DialogError):
        Dialog.from_invite(invite(**broken), "lt1")  # type: ignore[arg-type]


def test_route_set_in_record_route_order_and_next_hop() -> None:
    d = Dialog.from_invite(invite(record_route=[
        "<sip:10.0.0.1:5080;lr>, <sip:10.0.0.2;lr>", "<sip:10.0.0.3;lr;transport=tcp>"]), "lt1")
    assert [str(parse_name_addr(r).uri) for r in d.route_set] == [
        "sip:10.0.0.1:5080;lr", "sip:10.0.0.2;lr", "sip:10.0.0.3;lr;transport=tcp"]
    # With a route set, requests go to the first route, not the remote target.
    assert d.next_hop() == ("10.0.0.1", 5080)
    assert d.next_transport() == "udp"
    request = d.build_request("BYE", via="SIP/2.0/UDP h;branch=z9hG4bKb")
    assert request.uri == d.remote_target  # loose routing keeps the target in the R-URI
    assert request.headers.get_all("Route") == d.route_set


def test_next_hop_without_record_route_is_remote_target() -> None:
    d = Dialog.from_invite(invite(contact="<sip:alice@192.0.2.5:5070;transport=TCP>"), "lt1")
    assert d.next_hop() == ("192.0.2.5", 5070)
    assert d.next_transport() == "tcp"
    assert d.build_request("BYE", via="v;branch=z9hG4bKb").headers.get("Route") is None


def test_uri_destination_defaults_maddr_and_ipv6() -> None:
    assert uri_destination(parse_uri("sip:a@h")) == ("h", 5060)
    assert uri_destination(parse_uri("sips:a@h")) == ("h", 5061)
    assert uri_destination(parse_uri("sip:a@h:7000;maddr=10.1.1.1")) == ("10.1.1.1", 7000)
    assert uri_destination(parse_uri("sip:a@[2001:db8::1]:5070")) == ("2001:db8::1", 5070)


def test_build_request_fields_and_local_cseq_order() -> None:
    d = Dialog.from_invite(invite(), "lt1", initial_cseq=100)
    bye = d.build_request(
        "REFER", via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKr1",
        contact="<sip:2001@192.0.2.10>", headers=[("Refer-To", "<sip:4000@pbx>")],
        body=b"x", content_type="text/plain",
    )
    h = bye.headers
    assert bye.method == "REFER" and bye.uri == "sip:alice@192.0.2.5:5070;transport=udp"
    assert h.get("Via") == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKr1"
    assert h.get("Max-Forwards") == "70"
    assert tag_of(h.get("From")) == "lt1" and tag_of(h.get("To")) == "rt1"
    assert str(parse_name_addr(h.get("From") or "").uri) == "sip:2001@pbx.example"
    assert str(parse_name_addr(h.get("To") or "").uri) == "sip:alice@pbx.example"
    assert h.get("Call-ID") == "c1@pbx"
    assert h.get("CSeq") == "100 REFER"
    assert h.get("Contact") == "<sip:2001@192.0.2.10>"
    assert h.get("Refer-To") == "<sip:4000@pbx>"
    assert h.get("Content-Type") == "text/plain" and bye.body == b"x"
    second = d.build_request("BYE", via="v;branch=z9hG4bKb")
    assert second.cseq == (101, "BYE")
    ack = d.build_request("ACK", via="v;branch=z9hG4bKc")
    assert ack.cseq == (101, "ACK")  # ACK does not take a new number


def test_remote_cseq_order() -> None:
    d = Dialog.from_invite(invite(cseq="10 INVITE"), "lt1")
    assert not d.accept_remote_cseq(in_dialog("BYE", 9))  # lower: 500
    assert not d.accept_remote_cseq(in_dialog("INFO", 10))  # equal: refused too
    assert d.accept_remote_cseq(in_dialog("INFO", 11))
    assert d.accept_remote_cseq(in_dialog("INFO", 50))  # gaps are fine (§12.2.2)
    assert not d.accept_remote_cseq(in_dialog("INFO", 49))
    assert d.accept_remote_cseq(in_dialog("ACK", 10))  # ACK/CANCEL carry the INVITE's
    assert d.accept_remote_cseq(in_dialog("CANCEL", 1))
    assert d.remote_cseq == 50


def test_matches_on_call_id_and_both_tags() -> None:
    d = Dialog.from_invite(invite(), "lt1")
    assert d.matches(in_dialog("BYE", 400))
    assert not d.matches(in_dialog("BYE", 400, to_tag="other"))
    assert not d.matches(in_dialog("BYE", 400, from_tag="other"))
    assert not d.matches(in_dialog("BYE", 400, call_id="c2@pbx"))


def test_target_refresh_moves_remote_target_only_when_valid() -> None:
    d = Dialog.from_invite(invite(), "lt1")
    reinvite = in_dialog("INVITE", 315)
    reinvite.headers.add("Contact", "<sip:alice@192.0.2.99:6000>")
    d.refresh_target(reinvite)
    assert d.next_hop() == ("192.0.2.99", 6000)
    broken = in_dialog("INVITE", 316)
    broken.headers.add("Contact", "<sip:alice@192.0.2.99:6000")
    d.refresh_target(broken)
    assert d.remote_target == "sip:alice@192.0.2.99:6000"
