"""SIP URI, name-addr, Via, CSeq and media-type grammar."""

from __future__ import annotations

import pytest

from agentd.sip.uri import (
    AbsoluteUri,
    NameAddr,
    Params,
    SipUri,
    UnsupportedSchemeError,
    UriError,
    parse_absolute_uri,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    parse_via,
    tag_of,
    unquote,
)


def test_full_sip_uri() -> None:
    uri = parse_uri("sips:alice:secret@pbx.example.org:5061;transport=TLS;lr?Subject=hi&X=1")
    assert uri == SipUri(
        "sips", "alice", "secret", "pbx.example.org", 5061,
        Params({"transport": "TLS", "lr": None}), {"Subject": "hi", "X": "1"},
    )
    assert uri.transport == "tls" and uri.lr and uri.hostport == "pbx.example.org:5061"
    assert str(uri) == "sips:alice:secret@pbx.example.org:5061;transport=TLS;lr?Subject=hi&X=1"


def test_minimal_uri_and_scheme_case() -> None:
    uri = parse_uri("SIP:198.51.100.1")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", None, "198.51.100.1", None)
    assert str(uri) == "sip:198.51.100.1"


def test_parameter_names_are_case_insensitive() -> None:
    uri = parse_uri("sip:a@h;Transport=udp;MADDR=192.0.2.1")
    assert uri.params["transport"] == "udp" and uri.params["TRANSPORT"] == "udp"
    assert "Maddr" in uri.params and uri.maddr == "192.0.2.1"
    uri.params["New"] = "x"
    assert uri.params.get("NEW") == "x" and list(uri.params) == ["transport", "maddr", "new"]


def test_escapes_decoded_and_reescaped() -> None:
    uri = parse_uri("sip:a%3Bb%00c%40d:p%41ss@h;n%61me=v%25%34%31?H%65ader=%3Cx%3E")
    assert uri.user == "a;b\x00c@d" and uri.password == "pAss"
    assert uri.params == {"name": "v%41"}  # never unescaped twice
    assert uri.headers == {"Header": "<x>"}
    again = parse_uri(str(uri))
    assert again == uri
    assert str(again) == str(uri)
    assert "%00" in str(uri) and "%40" in str(uri)


def test_non_utf8_escape_survives_round_trip() -> None:
    uri = parse_uri("sip:%FF%FE@h")
    assert parse_uri(str(uri)) == uri and str(uri) == "sip:%FF%FE@h"


def test_user_part_may_hold_semicolon_and_question_mark() -> None:
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net" and uri.host == "example.com" and not uri.params
    assert parse_uri("sip:a?b@h").user == "a?b"


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:u@[2001:db8::1]:5070;transport=tcp", "[2001:db8::1]", 5070),
        ("sip:u@[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]", None),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host) == ("tel", "+1-201-555-0123", "")
    assert uri.params["phone-context"] == "example.com"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_other_schemes() -> None:
    with pytest.raises(UnsupportedSchemeError) as info:
        parse_uri("http://example.com/x")
    assert info.value.scheme == "http"
    assert isinstance(info.value, UriError)
    uri = parse_absolute_uri("soap.beep://192.0.2.103:3002")
    assert uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")
    assert str(uri) == "soap.beep://192.0.2.103:3002"


@pytest.mark.parametrize(
    "text",
    [
        "", "sip:", "sip:@h", "sip:u@", "sip:u@h:", "sip:u@h:99999", "sip:u@h:5x",
        "sip:u@h;", "sip:u@h;;lr", "sip:u@h;a=", "sip:u@h;a;a", "sip:u@h?x", "sip:u@h?=1",
        "sip:u@h?a=1&a=2", "sip:u%4@h", "sip:u%zz@h", "sip:u @h", "sip:u@h h", "sip:a@b@c",
        "sip:u@[::1", "sip:u@[nothex]", "sip:u@h]", "sip:u@-", "sip:<u>@h", "tel:", "tel:12;",
        "tel:12 34", "1sip:u@h", "nocolon", "x:", "x:a b", "x:%zz", "sip:u@h;p=a b",
    ],
)
def test_malformed_uris_raise_urierror(text: str) -> None:
    with pytest.raises(UriError):
        parse_absolute_uri(text)


def test_name_addr_forms() -> None:
    addr = parse_name_addr('"Bob \\"B\\" \\\\ Smith" <sip:bob@example.org;lr>;tag=abc;q=0.5')
    assert addr.display_name == 'Bob "B" \\ Smith'
    assert addr.uri.params == {"lr": None} and addr.params == {"tag": "abc", "q": "0.5"}
    assert addr.tag == "abc"
    assert parse_name_addr(str(addr)) == addr

    token = parse_name_addr("  Bob   Smith   <sip:bob@example.org>")
    assert token.display_name == "Bob Smith"
    assert parse_name_addr("bob<sip:bob@h>").display_name == "bob"
    assert parse_name_addr("<sip:bob@h>").display_name is None
    assert parse_name_addr('""<sip:bob@h>').display_name == ""


def test_addr_spec_params_belong_to_the_header() -> None:
    addr = parse_name_addr("sip:bob@example.org;tag=xyz;transport=tcp")
    assert addr.uri.params == {} and addr.params == {"tag": "xyz", "transport": "tcp"}
    inside = parse_name_addr("<sip:bob@example.org;transport=tcp>;tag=xyz")
    assert inside.uri.params == {"transport": "tcp"} and inside.params == {"tag": "xyz"}


def test_header_params_with_lws_and_quoted_values() -> None:
    addr = parse_name_addr('<sip:h> ;  a = 1 ;b;  c="x; y, z" ; d=[2001:db8::1]')
    assert addr.params == {"a": "1", "b": None, "c": '"x; y, z"', "d": "[2001:db8::1]"}
    assert unquote(addr.params["c"]) == "x; y, z" and unquote(addr.params["a"]) == "1"


def test_unknown_schemes_in_name_addr() -> None:
    assert parse_name_addr("isbn:2983792873").uri == AbsoluteUri("isbn", "2983792873")
    assert parse_name_addr("<http://www.example.com>;tag=1").uri.scheme == "http"


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@h>',
        "Bell, Alexander <sip:a@h>",
        "Name (x) <sip:a@h>",
        "< sip:a@h>",
        "<sip:a@h >",
        "<sip:a@h",
        "sip:a@h?Route=x",
        "sip:a@h, sip:b@h",
        "<sip:a@h>;;",
        "<sip:a@h>;tag",
        "<sip:a@h>;=1",
        "<sip:a@h>;t=",
        "<sip:a@h> junk",
        "<sip:a@h>;a=1;A=2",
        '"name" sip:a@h',
        "",
        "   ",
        '<sip:a@h>;x="open',
        '"ctl \x01" <sip:a@h>',
    ],
)
def test_malformed_name_addrs(text: str) -> None:
    with pytest.raises(UriError):
        parse_name_addr(text)


def test_name_addr_list_and_tag_helper() -> None:
    contacts = parse_name_addr_list('"A, B" <sip:a@h>;q=1, <sip:b@h>;expires=60,sip:c@h')
    assert [c.uri.user for c in contacts] == ["a", "b", "c"]
    assert contacts[0].display_name == "A, B"
    assert tag_of("<sip:a@h>;tag=77") == "77"
    assert tag_of("<sip:a@h>") is None and tag_of(None) is None and tag_of("<<bad") is None


def test_display_name_with_control_characters_round_trips() -> None:
    addr = NameAddr("bell\x07 nul\x00 \"q\"", parse_uri("sip:a@h"))
    assert parse_name_addr(str(addr)) == addr


def test_via() -> None:
    via = parse_via("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK776;rport;received=192.0.2.9")
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0", "UDP", "198.51.100.1", 5060)
    assert via.branch == "z9hG4bK776" and via.received == "192.0.2.9"
    assert via.has_rport and via.rport is None
    assert parse_via(str(via)) == via
    filled = parse_via("SIP/2.0/TCP h;rport=40000;branch=z9hG4bKx")
    assert filled.rport == 40000
    spaced = parse_via("sip / 2.0 / tls   [2001:db8::2] : 5061 ; branch = z9hG4bKy")
    assert (spaced.protocol, spaced.transport, spaced.host, spaced.port, spaced.branch) == (
        "SIP/2.0", "TLS", "[2001:db8::2]", 5061, "z9hG4bKy")
    assert parse_via("SIP/2.0/UDP h").branch is None


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0 UDP h", "SIP/2.0/UDP", "SIP/2.0/UDP h;;", "SIP/2.0/UDP h;branch",
        "SIP/2.0/UDP h:0x1", "SIP/2.0/UDP h extra", "SIP/2.0/U@P h", "", "SIP/2.0/UDP [::1",
    ],
)
def test_malformed_vias(text: str) -> None:
    with pytest.raises(UriError):
        parse_via(text)


def test_cseq() -> None:
    assert parse_cseq("314159 INVITE") == (314159, "INVITE")
    assert parse_cseq(" 0009   ACK ") == (9, "ACK")
    assert parse_cseq(f"{2**31 - 1} BYE") == (2**31 - 1, "BYE")
    for bad in (f"{2**31} BYE", "1", "x BYE", "-1 BYE", "1 BY E", "1 B@YE", "²3 BYE", "9" * 5000 + " A"):
        with pytest.raises(UriError):
            parse_cseq(bad)


def test_media_type() -> None:
    media = parse_media_type("Multipart/Mixed ; boundary=\"x y\";charset=utf-8")
    assert media.mime == "multipart/mixed"
    assert media.params == {"boundary": '"x y"', "charset": "utf-8"}
    assert parse_media_type(str(media)) == media
    for bad in ("application", "a/b/c", "a /", "a/b;", "a@/b"):
        with pytest.raises(UriError):
            parse_media_type(bad)
