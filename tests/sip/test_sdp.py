"""SDP parse/serialise and G.711 offer/answer, with offers shaped like real phones' and PBXs'."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.sip.sdp import (
    Connection,
    MediaDescription,
    NegotiatedMedia,
    NoCommonCodec,
    RtpMap,
    SdpError,
    SessionDescription,
    Timing,
    answer_offer,
    build_offer,
    parse_sdp,
    update_version,
)

# Offers written in the shape each implementation sends (addresses are documentation ones).
BARESIP = """v=0
o=- 1284462467 3316271541 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 10150 RTP/AVP 96 9 0 8 101
b=AS:80
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
a=rtcp-rsize
a=ptime:20
""".replace("\n", "\r\n")

ASTERISK = """v=0
o=- 1865326212 1865326212 IN IP4 198.51.100.7
s=Asterisk
c=IN IP4 198.51.100.7
t=0 0
m=audio 17036 RTP/AVP 8 0 3 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:3 GSM/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
m=video 0 RTP/AVP 31
"""

FREESWITCH = """v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 203.0.113.2
s=FreeSWITCH
c=IN IP4 203.0.113.2
t=0 0
m=audio 24680 RTP/AVP 102 9 0 8 103 101 13
a=rtpmap:102 opus/48000/2
a=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:103 telephone-event/48000
a=fmtp:103 0-16
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=rtcp:24681 IN IP4 203.0.113.2
m=video 24690 RTP/AVP 96
b=AS:1024
a=rtpmap:96 VP8/90000
a=sendrecv
""".replace("\n", "\r\n")

SIPP_UAC = """v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

SIPP_PCAP = """v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-11,16
"""


def _answer(offer: str | bytes, **kwargs) -> tuple[SessionDescription, NegotiatedMedia]:
    args = dict(local_address="127.0.0.1", local_port=40000, session_id=42, session_version=1)
    args.update(kwargs)
    return answer_offer(parse_sdp(offer), **args)


# ---------------------------------------------------------------- parsing and round trips


def test_parse_baresip_offer_fields() -> None:
    sdp = parse_sdp(BARESIP.encode())
    assert sdp.origin.session_id == 1284462467 and sdp.origin.session_version == 3316271541
    assert sdp.connection == Connection("192.0.2.10")
    assert sdp.timings == [Timing(0, 0)]
    (audio,) = sdp.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 10150, "RTP/AVP")
    assert audio.formats == ["96", "9", "0", "8", "101"]
    assert audio.rtpmap["96"] == RtpMap("opus", 48000, 2)
    assert audio.fmtp == {"96": "stereo=1;sprop-stereo=1", "101": "0-15"}
    assert audio.ptime == 20 and audio.direction == "sendrecv"
    assert audio.bandwidths == ["AS:80"]
    assert audio.attributes == ["label:1", "rtcp-rsize"]  # unknown attributes kept in order


@pytest.mark.parametrize("offer", [BARESIP, ASTERISK, FREESWITCH, SIPP_UAC, SIPP_PCAP])
def test_round_trip_parse_str_parse(offer: str) -> None:
    parsed = parse_sdp(offer)
    assert parse_sdp(str(parsed)) == parsed
    assert parse_sdp(parsed.to_bytes()) == parsed
    answer, _ = _answer(offer)
    assert parse_sdp(answer.to_bytes()) == answer


def test_serialisation_uses_crlf_and_rfc_order() -> None:
    sdp = parse_sdp(
        "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=talk\ni=info\nu=http://example.com\ne=a@b\np=+1 555\n"
        "c=IN IP4 192.0.2.1\nb=CT:64\nt=0 0\nr=7d 1h 0 25h\nz=2882844526 -1h\nk=prompt\n"
        "a=recvonly\na=tool:x\nm=audio 5000/2 RTP/AVP 0\ni=voice\nc=IN IP4 192.0.2.2\nb=AS:64\n"
        "k=prompt\na=sendonly\na=rtpmap:0 PCMU/8000\n"
    )
    text = sdp.to_bytes()
    assert text.endswith(b"\r\n") and b"\n" not in text.replace(b"\r\n", b"")
    kinds = [line[:1] for line in text.decode().split("\r\n") if line]
    assert kinds == list("vosiuepcbtrzkaa") + list("micbkaa")
    assert sdp.direction == "recvonly" and sdp.attributes == ["tool:x"]
    assert sdp.media[0].port_count == 2 and sdp.media[0].direction == "sendonly"
    assert sdp.timings[0].repeats == ["7d 1h 0 25h"]
    assert parse_sdp(text) == sdp


def test_lf_only_blank_lines_and_missing_t_are_tolerated() -> None:
    sdp = parse_sdp(
        "v=0\n\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n\n"
    )
    assert sdp.timings == [Timing(0, 0)] and sdp.media[0].port == 4000


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n\r\n",
        b"hello world",
        b"\x00\xff\xfe garbage",
        b"v=0\r\n",
        b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n",
        b"v=x\r\no=- 1 1 IN IP4 192.0.2.1\r\n",
        b"v=0\r\no=- 1 IN IP4 192.0.2.1\r\n",
        b"v=0\r\no=- abc 1 IN IP4 192.0.2.1\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 5000\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nthis is not sdp\r\n",
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + b"a=x\r\n" * 5000,
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + b"m=audio 1 RTP/AVP 0\r\n" * 100,
        "v=0\r\no=- \u0661 1 IN IP4 192.0.2.1\r\n".encode(),  # non-ASCII digit
    ],
)
def test_garbage_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


def test_non_sdp_type_raises_sdp_error() -> None:
    with pytest.raises(SdpError):
        parse_sdp(12345)  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_parse_raises_only_sdp_error(data: bytes) -> None:
    try:
        parse_sdp(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + data)
    except SdpError:
        pass
    try:
        parse_sdp(data)
    except SdpError:
        pass


def test_malformed_attributes_are_kept_not_fatal() -> None:
    sdp = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
        "a=rtpmap:0 nonsense\r\na=ptime:abc\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:0 PCMA/8000\r\n"
    )
    media = sdp.media[0]
    assert media.rtpmap == {"0": RtpMap("PCMU", 8000)}  # the first valid mapping wins
    assert media.ptime is None
    assert media.attributes == ["rtpmap:0 nonsense", "ptime:abc", "rtpmap:0 PCMA/8000"]
    assert parse_sdp(str(sdp)) == sdp


# ---------------------------------------------------------------- answering real-world offers


def test_answer_baresip_offer() -> None:
    answer, media = _answer(BARESIP)
    assert media == NegotiatedMedia(
        codec="PCMU", payload_type=0, clock_rate=8000, telephone_event_pt=101,
        remote_address="192.0.2.10", remote_port=10150, direction="sendrecv", ptime=20,
    )
    (stream,) = answer.media
    assert stream.port == 40000 and stream.formats == ["0", "101"]
    assert stream.fmtp == {"101": "0-15"}  # offered 0-15: answer no more than that
    assert answer.timings == [Timing(0, 0)]
    assert answer.origin.session_id == 42 and answer.origin.session_version == 1
    assert answer.origin.username == "agentd" and answer.connection == Connection("127.0.0.1")
    text = str(answer)
    assert "a=rtpmap:0 PCMU/8000\r\n" in text and "a=rtpmap:101 telephone-event/8000\r\n" in text
    assert "m=audio 40000 RTP/AVP 0 101\r\n" in text


def test_answer_asterisk_offer_uses_our_order_and_rejects_video() -> None:
    answer, media = _answer(ASTERISK)
    # Asterisk prefers PCMA, but the offer has PCMU too and our order says PCMU first.
    assert (media.codec, media.payload_type) == ("PCMU", 0)
    assert media.telephone_event_pt == 101
    assert answer.media[0].fmtp["101"] == "0-16"
    video = answer.media[1]
    assert (video.media, video.port, video.proto, video.formats) == ("video", 0, "RTP/AVP", ["31"])
    assert "m=video 0 RTP/AVP 31\r\n" in str(answer)


def test_answer_freeswitch_offer_skips_wideband_telephone_event() -> None:
    answer, media = _answer(FREESWITCH, codecs=["PCMA", "PCMU"])
    assert (media.codec, media.payload_type, media.telephone_event_pt) == ("PCMA", 8, 101)
    assert media.remote_address == "203.0.113.2" and media.remote_port == 24680
    assert [m.port for m in answer.media] == [40000, 0]
    assert answer.media[1].media == "video"
    assert answer.media[0].formats == ["8", "101"]


def test_answer_sipp_offers() -> None:
    answer, media = _answer(SIPP_UAC)
    assert (media.codec, media.telephone_event_pt) == ("PCMU", None)
    assert answer.media[0].formats == ["0"] and answer.media[0].fmtp == {}
    answer, media = _answer(SIPP_PCAP)
    assert (media.codec, media.payload_type, media.telephone_event_pt) == ("PCMA", 8, 101)
    assert answer.media[0].fmtp == {"101": "0-11,16"}  # intersection with DTMF 0-16


def test_pcma_only_offer_with_our_default_order_gives_pcma() -> None:
    offer = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 8").replace("0 PCMU", "8 PCMA")
    _, media = _answer(offer)
    assert (media.codec, media.payload_type) == ("PCMA", 8)


def test_static_payload_type_without_rtpmap() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 18 8\r\n"
    )
    _, media = _answer(offer)
    assert (media.codec, media.payload_type) == ("PCMA", 8)


@pytest.mark.parametrize("event_pt", ["96", "101", "127"])
def test_dynamic_telephone_event_payload_types(event_pt: str) -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        f"m=audio 7078 RTP/AVP 0 8 {event_pt}\r\na=rtpmap:{event_pt} telephone-event/8000\r\n"
    )
    answer, media = _answer(offer)
    assert media.telephone_event_pt == int(event_pt)
    assert answer.media[0].formats == ["0", event_pt]
    assert answer.media[0].fmtp == {event_pt: "0-15"}  # no fmtp offered means 0-15


def test_telephone_event_without_dtmf_digits_is_not_answered() -> None:
    offer = SIPP_PCAP.replace("0-11,16", "66,70")
    answer, media = _answer(offer)
    assert media.telephone_event_pt is None and answer.media[0].formats == ["8"]


def test_dynamic_payload_type_for_g711_by_rtpmap_name() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 97 98\r\na=rtpmap:97 pcmu/8000\r\na=rtpmap:98 PCMA/16000\r\n"
    )
    answer, media = _answer(offer)
    assert (media.codec, media.payload_type) == ("PCMU", 97)
    assert answer.media[0].rtpmap == {"97": RtpMap("PCMU", 8000)}


@pytest.mark.parametrize(
    "media_lines",
    [
        "m=audio 4000 RTP/AVP 9 18\r\na=rtpmap:9 G722/8000\r\n",
        "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n",
        "m=audio 4000 RTP/SAVP 0 8\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n",
        "m=audio 0 RTP/AVP 0 8\r\n",
        "m=video 4000 RTP/AVP 0\r\n",
        "m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000/2\r\na=rtpmap:8 G729/8000\r\n",
        "",
    ],
)
def test_no_common_codec(media_lines: str) -> None:
    offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    offer += media_lines
    with pytest.raises(NoCommonCodec) as info:
        _answer(offer)
    assert isinstance(info.value, SdpError)


def test_offer_limited_to_pcmu_but_we_only_do_pcma() -> None:
    with pytest.raises(NoCommonCodec):
        _answer(SIPP_UAC, codecs=["PCMA"])


def test_second_audio_stream_and_unknown_media_rejected_in_order() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=audio 4000 RTP/SAVP 0\r\n"
        "m=audio 4002 RTP/AVP 8\r\nc=IN IP4 192.0.2.9\r\n"
        "m=audio 4004 RTP/AVP 0\r\n"
        "m=application 9 UDP/BFCP *\r\n"
    )
    answer, media = _answer(offer)
    assert [(m.media, m.port) for m in answer.media] == [
        ("video", 0), ("audio", 0), ("audio", 40000), ("audio", 0), ("application", 0)
    ]
    assert media.media_index == 2 and media.remote_address == "192.0.2.9"
    assert media.remote_port == 4002 and media.codec == "PCMA"
    assert parse_sdp(str(answer)) == answer


# ---------------------------------------------------------------- hold and resume


def _with_direction(direction_lines: str, address: str = "192.0.2.1", session: str = "") -> str:
    return (
        f"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n{session}"
        f"m=audio 4000 RTP/AVP 0\r\n{direction_lines}"
    )


@pytest.mark.parametrize(
    ("offered", "address", "ours"),
    [
        ("a=sendrecv\r\n", "192.0.2.1", "sendrecv"),
        ("", "192.0.2.1", "sendrecv"),
        ("a=sendonly\r\n", "192.0.2.1", "recvonly"),
        ("a=recvonly\r\n", "192.0.2.1", "sendonly"),
        ("a=inactive\r\n", "192.0.2.1", "inactive"),
        ("", "0.0.0.0", "recvonly"),
        ("a=sendrecv\r\n", "0.0.0.0", "recvonly"),
        ("a=inactive\r\n", "0.0.0.0", "inactive"),
        ("a=recvonly\r\n", "0.0.0.0", "inactive"),
    ],
)
def test_answer_direction_mirrors_offer(offered: str, address: str, ours: str) -> None:
    answer, media = _answer(_with_direction(offered, address))
    assert media.direction == ours and answer.media[0].direction == ours
    assert f"a={ours}\r\n" in str(answer)


def test_session_level_direction_applies_unless_media_overrides() -> None:
    _, media = _answer(_with_direction("", session="a=sendonly\r\n"))
    assert media.direction == "recvonly"
    _, media = _answer(_with_direction("a=sendrecv\r\n", session="a=sendonly\r\n"))
    assert media.direction == "sendrecv"


def test_hold_then_resume_sequence() -> None:
    held, media = _answer(_with_direction("a=sendonly\r\n"), session_version=1)
    assert media.direction == "recvonly"
    resumed, media = _answer(_with_direction("a=sendrecv\r\n"), session_version=1)
    assert media.direction == "sendrecv"
    resumed = update_version(held, resumed)
    assert resumed.origin.session_version == 2


def test_ptime_from_offer_is_reported() -> None:
    _, media = _answer(SIPP_UAC.replace("PCMU/8000\n", "PCMU/8000\na=ptime:30\n"))
    assert media.ptime == 30
    answer, media = _answer(SIPP_UAC, ptime=40)
    assert media.ptime == 20 and answer.media[0].ptime == 40


def test_ipv6_local_address() -> None:
    answer, _ = _answer(SIPP_UAC, local_address="::1")
    assert answer.origin.addrtype == "IP6"
    assert answer.connection == Connection("::1", addrtype="IP6")


def test_bad_local_port_raises() -> None:
    with pytest.raises(SdpError):
        _answer(SIPP_UAC, local_port=0)


# ---------------------------------------------------------------- our offers and versions


def test_build_offer_default_and_round_trip() -> None:
    offer = build_offer(local_address="127.0.0.1", local_port=4000, session_id=9, session_version=1)
    text = str(offer)
    assert "m=audio 4000 RTP/AVP 0 8 101\r\n" in text
    assert "a=fmtp:101 0-16\r\n" in text and "a=sendrecv\r\n" in text and "a=ptime:20\r\n" in text
    assert parse_sdp(offer.to_bytes()) == offer
    # Answering our own offer picks PCMU and our telephone-event.
    _, media = answer_offer(
        offer, local_address="127.0.0.1", local_port=5000, session_id=1, session_version=1
    )
    assert (media.codec, media.telephone_event_pt, media.remote_port) == ("PCMU", 101, 4000)


def test_build_offer_hold_and_options() -> None:
    held = build_offer(
        local_address="127.0.0.1", local_port=4000, session_id=9, session_version=2,
        codecs=["PCMA"], telephone_event_pt=None, direction="sendonly",
    )
    assert held.media[0].formats == ["8"] and held.media[0].direction == "sendonly"
    _, media = answer_offer(
        held, local_address="127.0.0.1", local_port=5000, session_id=1, session_version=1
    )
    assert media.direction == "recvonly" and media.telephone_event_pt is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(direction="sideways"), dict(codecs=["G729"]), dict(codecs=[]),
        dict(telephone_event_pt=8), dict(local_port=70000),
    ],
)
def test_build_offer_rejects_bad_options(kwargs: dict) -> None:
    args = dict(local_address="127.0.0.1", local_port=4000, session_id=9, session_version=1)
    args.update(kwargs)
    with pytest.raises(SdpError):
        build_offer(**args)


def test_update_version_increments_only_on_change() -> None:
    base = dict(local_address="127.0.0.1", local_port=4000, session_id=777, session_version=5)
    previous = build_offer(**base)
    same = update_version(previous, build_offer(**{**base, "session_id": 1, "session_version": 1}))
    assert (same.origin.session_id, same.origin.session_version) == (777, 5)
    assert same == previous
    hold = update_version(previous, build_offer(**base, direction="sendonly"))
    assert (hold.origin.session_id, hold.origin.session_version) == (777, 6)
    resume = update_version(hold, build_offer(**base))
    assert resume.origin.session_version == 7
    assert previous.origin.session_version == 5  # inputs are not mutated


def test_media_description_helpers() -> None:
    media = MediaDescription(
        "audio", 4000, "RTP/AVP", ["0", "97", "13"], rtpmap={"97": RtpMap("PCMA", 8000)}
    )
    assert media.encoding_of("0") == ("PCMU", 8000)
    assert media.encoding_of("97") == ("PCMA", 8000)
    assert media.encoding_of("13") is None
