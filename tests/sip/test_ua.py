"""The SIP user agent end to end on loopback, driven by a raw UDP peer with hand-written SIP.

Each test starts a real `UserAgent` (no registration) on 127.0.0.1 port 0 with short
transaction timers, talks to it from `SipPeer`, and stops it; the fixture then checks that
no task is left running and that nothing was logged as an error or escaped to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from agentd.sip.callleg import CallLeg, TransferResult
from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.sdp import parse_sdp
from agentd.sip.security import parse_networks
from agentd.sip.transaction import TransactionConfig
from agentd.sip.ua import UaSettings, UserAgent
from agentd.sip.uri import parse_name_addr, tag_of
from tests.sip.peer import Call, SipPeer, UdpSocket, rtp_packet, sdp_offer, telephone_event

pytestmark = pytest.mark.timeout(30)

FAST = TransactionConfig(t1=0.05, t2=0.4, t4=0.2, timer_d=0.2, trying_delay=0.2)
BASE = UaSettings(
    extension="2001",
    registrar=("127.0.0.1", 9),
    domain="127.0.0.1",
    auth_user="2001",
    password="secret",
    local_host="127.0.0.1",
    local_port=0,
    register=False,
    trusted_sources=parse_networks(["127.0.0.1/32"]),
    rtp_port_min=41000,
    rtp_port_max=41999,
    rate_per_second=5.0,
    rate_burst=10,
)

App = Callable[[CallLeg], Awaitable[None]]


class Harness:
    """A running UA plus what its app saw."""

    def __init__(self) -> None:
        self.ua: UserAgent | None = None
        self.legs: asyncio.Queue[CallLeg] = asyncio.Queue()
        self.peers: list[SipPeer] = []
        self.sockets: list[UdpSocket] = []

    async def start(self, app: App | None = None, **overrides: object) -> UserAgent:
        async def default_app(leg: CallLeg) -> None:
            await leg.ended.wait()

        chosen = app or default_app

        async def on_call(leg: CallLeg) -> None:
            self.legs.put_nowait(leg)
            await chosen(leg)

        self.ua = UserAgent(replace(BASE, **overrides), on_call,  # type: ignore[arg-type]
                            transaction_config=FAST)
        await self.ua.start()
        return self.ua

    async def peer(self, host: str = "127.0.0.1") -> SipPeer:
        assert self.ua is not None
        peer = await SipPeer.open(self.ua.local_address, host)
        self.peers.append(peer)
        return peer

    async def rtp_socket(self) -> UdpSocket:
        sock = await UdpSocket.open()
        self.sockets.append(sock)
        return sock

    async def leg(self, timeout: float = 2.0) -> CallLeg:
        return await asyncio.wait_for(self.legs.get(), timeout)


@pytest.fixture
async def harness(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Harness]:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    h = Harness()
    try:
        yield h
    finally:
        if h.ua is not None:
            await asyncio.wait_for(h.ua.stop(), 10.0)
        for peer in h.peers:
            peer.close()
        for sock in h.sockets:
            sock.close()
        await asyncio.sleep(0.05)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        assert not left, f"tasks left running after stop(): {left}"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, f"errors logged: {[r.getMessage() for r in errors]}"
        assert not loop_errors, f"exceptions reached the loop: {loop_errors}"
        loop.set_exception_handler(None)


# ---- helpers -------------------------------------------------------------------------


def allow_of(response: SipResponse) -> set[str]:
    return {m.strip() for v in response.headers.get_all("Allow") for m in v.split(",")}


async def place_call(h: Harness, peer: SipPeer, rtp: UdpSocket, formats: str = "8 0 101",
                     headers: list[tuple[str, str]] | None = None
                     ) -> tuple[Call, SipResponse, CallLeg]:
    """INVITE, wait for the 200 and ACK it; returns the call, the 200 and the app's leg."""
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1], formats), headers=headers)
    ok = await peer.response(200, "INVITE")
    peer.ack(call, ok)
    return call, ok, await h.leg()


def answer_media(ok: SipResponse) -> tuple[list[str], str, int]:
    sdp = parse_sdp(ok.body)
    media = sdp.media[0]
    connection = sdp.media_connection(0)
    assert connection is not None
    return media.formats, media.direction or "sendrecv", media.port


# ---- requests outside a call -----------------------------------------------------------


async def test_options_answered_with_allow_and_accept(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    peer.send(peer.build("OPTIONS", peer.new_call()))
    ok = await peer.response(200, "OPTIONS")
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO"} <= allow_of(ok)
    assert "application/sdp" in (ok.headers.get("Accept") or "")
    assert tag_of(ok.headers.get("To"))


async def test_unknown_method_is_501(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    peer.send(peer.build("FROBNICATE", peer.new_call()))
    answer = await peer.response(method="FROBNICATE", final=True)
    assert answer.status == 501
    assert "INVITE" in allow_of(answer)


@pytest.mark.parametrize("method", ["SUBSCRIBE", "REGISTER", "MESSAGE"])
async def test_known_methods_we_do_not_take_are_405_with_allow(harness: Harness,
                                                               method: str) -> None:
    await harness.start()
    peer = await harness.peer()
    peer.send(peer.build(method, peer.new_call(), headers=[("Event", "presence")]
                         if method == "SUBSCRIBE" else None))
    answer = await peer.response(method=method, final=True)
    assert answer.status == 405
    assert "INVITE" in allow_of(answer) and method not in allow_of(answer)


@pytest.mark.parametrize("to_tag", ["nosuchdialog", None])
async def test_bye_for_unknown_dialog_is_481(harness: Harness, to_tag: str | None) -> None:
    await harness.start()
    peer = await harness.peer()
    peer.send(peer.build("BYE", peer.new_call(), to_tag=to_tag))
    answer = await peer.response(method="BYE", final=True)
    assert answer.status == 481


async def test_invite_from_untrusted_address_is_403(harness: Harness) -> None:
    ua = await harness.start(trusted_sources=parse_networks(["127.0.0.2/32"]))
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]))
    answer = await peer.response(method="INVITE", final=True)
    assert answer.status == 403
    peer.ack(call, answer)
    assert ua.stats.calls_rejected_untrusted == 1
    assert ua.stats.calls_answered == 0 and not ua.legs
    # OPTIONS from the same stranger is still answered (it reveals nothing and costs little).
    peer.send(peer.build("OPTIONS", peer.new_call()))
    assert (await peer.response(method="OPTIONS", final=True)).status == 200


async def test_over_max_calls_is_486(harness: Harness) -> None:
    ua = await harness.start(max_calls=1)
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    first, _, leg = await place_call(harness, peer, rtp)
    second = peer.new_call()
    peer.invite(second, sdp_offer(rtp.address[1]))
    busy = await peer.response(method="INVITE", final=True)
    assert busy.status == 486 and busy.call_id == second.call_id
    peer.ack(second, busy)
    assert ua.stats.calls_rejected_busy == 1
    assert ua.legs == [leg]
    peer.in_dialog("BYE", first)
    await peer.response(200, "BYE")


async def test_invite_without_sdp_is_488(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    call = peer.new_call()
    peer.invite(call, "")
    answer = await peer.response(method="INVITE", final=True)
    assert answer.status == 488
    peer.ack(call, answer)


async def test_invite_without_common_codec_is_488(harness: Harness) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1], "18 9 101"))
    answer = await peer.response(method="INVITE", final=True)
    assert answer.status == 488
    peer.ack(call, answer)
    assert ua.stats.calls_rejected_media == 1 and not ua.legs


# ---- a whole call ----------------------------------------------------------------------


async def test_full_call_answer_retransmit_rtp_and_remote_bye(harness: Harness) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1], "8 0 101"))
    ringing = await peer.response(180, "INVITE")
    ok = await peer.response(200, "INVITE")
    to_tag = tag_of(ok.headers.get("To"))
    assert to_tag and tag_of(ringing.headers.get("To")) == to_tag
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert parse_name_addr(ok.headers.get("Contact") or "").uri.port == ua.local_address[1]
    formats, direction, our_port = answer_media(ok)
    assert formats == ["0", "101"]  # our codec order (PCMU first), DTMF because offered
    assert direction == "sendrecv" and our_port > 0
    # No ACK yet: the 200 comes again (T1, 2*T1 ...), same tag and body.
    again = await peer.response(200, "INVITE", timeout=1.0)
    assert tag_of(again.headers.get("To")) == to_tag and again.body == ok.body
    peer.ack(call, ok)
    leg = await harness.leg()
    assert leg.confirmed.is_set() and leg.caller == "caller"
    await asyncio.sleep(0.05)
    peer.sock.drain()
    assert await peer.recv(timeout=0.4) is None  # retransmissions stopped at the ACK
    # RTP reaches the port our peer offered, as PCMU.
    got = await rtp.recv(timeout=1.0)
    assert got is not None and got[0][1] & 0x7F == 0 and got[1][1] == our_port
    assert ua.stats.calls_answered == 1
    peer.in_dialog("BYE", call)
    bye_ok = await peer.response(method="BYE", final=True)
    assert bye_ok.status == 200
    await asyncio.wait_for(leg.ended.wait(), 1.0)
    assert leg.end_reason == "remote hangup"
    assert not ua.legs
    await asyncio.sleep(0.1)
    rtp.drain()
    assert await rtp.count_for(0.2) == 0  # media stopped with the call


async def test_answer_has_no_telephone_event_unless_offered(harness: Harness) -> None:
    await harness.start(codecs=("PCMA", "PCMU"))
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, ok, leg = await place_call(harness, peer, rtp, formats="0 8")
    formats, _, _ = answer_media(ok)
    assert formats == ["8"]
    assert b"telephone-event" not in ok.body
    got = await rtp.recv(timeout=1.0)
    assert got is not None and got[0][1] & 0x7F == 8
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


async def test_hangup_from_us_sends_bye_to_the_peer(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, ok, leg = await place_call(harness, peer, rtp)
    hangup = asyncio.ensure_future(leg.hangup("done"))
    bye = await peer.request("BYE")
    assert bye.call_id == call.call_id
    assert tag_of(bye.headers.get("To")) == call.from_tag
    assert tag_of(bye.headers.get("From")) == tag_of(ok.headers.get("To"))
    assert bye.uri == parse_name_addr(peer.contact).uri.__str__()
    assert bye.cseq is not None and bye.cseq[1] == "BYE"
    peer.answer(bye, 200, "OK")
    await asyncio.wait_for(hangup, 1.0)  # returns once the BYE is answered
    assert leg.ended.is_set() and leg.end_reason == "done"


async def test_app_returning_hangs_up(harness: Harness) -> None:
    async def short_app(leg: CallLeg) -> None:
        await asyncio.sleep(0.05)

    await harness.start(short_app)
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    await place_call(harness, peer, rtp)
    bye = await peer.request("BYE")
    peer.answer(bye, 200, "OK")


async def test_lost_ack_hangs_up(harness: Harness) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]))
    await peer.response(200, "INVITE")
    bye = await peer.request("BYE", timeout=64 * FAST.t1 + 2.0)  # no ACK by 64*T1
    peer.answer(bye, 200, "OK")
    assert not ua.legs and ua.stats.calls_answered == 0


async def test_cancel_before_answer_gets_487(harness: Harness) -> None:
    ua = await harness.start(answer_delay=1.0)
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]))
    await peer.response(180, "INVITE")
    cancel = peer.build("CANCEL", call, branch_id=call.invite_branch, cseq=call.cseq)
    peer.send(cancel)
    cancel_ok = await peer.response(method="CANCEL", final=True)
    assert cancel_ok.status == 200
    terminated = await peer.response(method="INVITE", final=True)
    assert terminated.status == 487
    peer.ack(call, terminated)
    assert ua.stats.calls_cancelled == 1 and not ua.legs
    await asyncio.sleep(1.2)  # past the answer delay: no 200 after all
    assert all(not isinstance(m, SipResponse) or m.status != 200
               for m in [await peer.recv(timeout=0.1)] if m is not None)
    assert ua.stats.calls_answered == 0


async def test_cancel_racing_an_immediate_answer(harness: Harness) -> None:
    """Answering at once (the default), a CANCEL sent right behind the INVITE either wins
    (487) or loses (200 then a normal call); either way every transaction gets one final."""
    ua = await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]))
    peer.send(peer.build("CANCEL", call, branch_id=call.invite_branch, cseq=call.cseq))
    finals: dict[str, SipResponse] = {}
    while len(finals) < 2:
        message = await peer.response(final=True)
        finals.setdefault((message.cseq or (0, ""))[1], message)
    assert finals["CANCEL"].status == 200
    final = finals["INVITE"]
    peer.ack(call, final)
    if final.status == 487:
        assert ua.stats.calls_cancelled == 1
    else:
        assert final.status == 200
        peer.in_dialog("BYE", call)
        await peer.response(200, "BYE")
    await asyncio.sleep(0.05)
    assert not ua.legs


async def test_bye_before_answer_ends_the_invite(harness: Harness) -> None:
    """A BYE in the early dialog (after 180) ends the call; the INVITE gets 487."""
    ua = await harness.start(answer_delay=1.0)
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]))
    ringing = await peer.response(180, "INVITE")
    call.to_tag = tag_of(ringing.headers.get("To"))
    peer.in_dialog("BYE", call)
    responses = {}
    for _ in range(2):
        message = await peer.response(final=True)
        responses[(message.cseq or (0, ""))[1]] = message.status
    assert responses == {"BYE": 200, "INVITE": 487}
    assert not ua.legs


# ---- in-dialog requests ------------------------------------------------------------------


async def test_reinvite_hold_stops_our_rtp_and_resume_restarts_it(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, ok, leg = await place_call(harness, peer, rtp)
    assert await rtp.count_for(0.2) >= 3
    peer.in_dialog("INVITE", call, body=sdp_offer(rtp.address[1], direction="sendonly",
                                                 version=2), content_type="application/sdp")
    held = await peer.response(200, "INVITE")
    peer.ack(call, held)
    _, direction, _ = answer_media(held)
    assert direction == "recvonly"
    assert parse_sdp(held.body).origin.session_version > parse_sdp(ok.body).origin.session_version
    assert leg.on_hold
    await asyncio.sleep(0.05)
    assert await rtp.count_for(0.3) == 0
    peer.in_dialog("INVITE", call, body=sdp_offer(rtp.address[1], version=3),
                   content_type="application/sdp")
    resumed = await peer.response(200, "INVITE")
    peer.ack(call, resumed)
    assert answer_media(resumed)[1] == "sendrecv" and not leg.on_hold
    assert await rtp.count_for(0.3) >= 5
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


async def test_hold_stays_silent_while_the_holder_plays_music(harness: Harness) -> None:
    """The usual hold: the peer goes sendonly and keeps sending RTP (music on hold). Our
    RTP must stay off although its packets arrive (symmetric-RTP latching must not undo it)."""
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, _, leg = await place_call(harness, peer, rtp)
    assert leg.media is not None
    ours = ("127.0.0.1", leg.media.local_address[1])
    peer.in_dialog("INVITE", call, body=sdp_offer(rtp.address[1], direction="sendonly",
                                                 version=2), content_type="application/sdp")
    held = await peer.response(200, "INVITE")
    peer.ack(call, held)
    await asyncio.sleep(0.05)
    rtp.drain()
    for seq in range(15):  # 300 ms of music on hold
        rtp.sendto(rtp_packet(seq, seq * 160, b"\xff" * 160), ours)
        await asyncio.sleep(0.02)
    assert len(rtp.drain()) == 0
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


async def test_info_dtmf_relay_reaches_the_app(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, _, leg = await place_call(harness, peer, rtp)
    peer.in_dialog("INFO", call, body="Signal=5\r\nDuration=160\r\n",
                   content_type="application/dtmf-relay")
    assert (await peer.response(method="INFO", final=True)).status == 200
    assert await asyncio.wait_for(leg.dtmf.get(), 1.0) == "5"
    peer.in_dialog("INFO", call, body="#", content_type="application/dtmf")
    assert (await peer.response(method="INFO", final=True)).status == 200
    assert await asyncio.wait_for(leg.dtmf.get(), 1.0) == "#"
    peer.in_dialog("INFO", call, body="<xml/>", content_type="application/xml")
    assert (await peer.response(method="INFO", final=True)).status == 415
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


async def test_rfc4733_dtmf_reaches_the_app(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, _, leg = await place_call(harness, peer, rtp)
    assert leg.media is not None
    ours = ("127.0.0.1", leg.media.local_address[1])
    ts = 8000
    packets = [telephone_event(7, False, d) for d in (160, 320, 480)]
    packets += [telephone_event(7, True, 640)] * 3
    for i, payload in enumerate(packets):
        rtp.sendto(rtp_packet(100 + i, ts, payload, pt=101, marker=i == 0), ours)
        await asyncio.sleep(0.005)
    assert await asyncio.wait_for(leg.dtmf.get(), 1.0) == "7"
    await asyncio.sleep(0.05)
    assert leg.dtmf.empty()  # the three end packets make one digit
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


async def test_out_of_order_cseq_in_dialog_is_500(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, _, _ = await place_call(harness, peer, rtp)
    peer.send(peer.build("INFO", call, cseq=call.cseq - 0))
    answer = await peer.response(method="INFO", final=True)
    assert answer.status == 500 and answer.headers.get("Retry-After")
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


# ---- session timers (RFC 4028) -----------------------------------------------------------


async def test_session_interval_below_min_se_is_422(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call = peer.new_call()
    peer.invite(call, sdp_offer(rtp.address[1]),
                headers=[("Session-Expires", "60"), ("Supported", "timer")])
    answer = await peer.response(method="INVITE", final=True)
    assert answer.status == 422 and answer.headers.get("Min-SE") == "90"
    peer.ack(call, answer)


async def test_session_timer_negotiated_in_200(harness: Harness) -> None:
    await harness.start()
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, ok, leg = await place_call(harness, peer, rtp,
                                     headers=[("Session-Expires", "120"),
                                              ("Supported", "timer")])
    expires = ok.headers.get("Session-Expires") or ""
    assert re.fullmatch(r"120;refresher=(uac|uas)", expires)
    assert expires.endswith("uac")  # the caller supports timers and will refresh
    assert "timer" in (ok.headers.get("Require") or "")
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


# ---- malformed and RFC 4475 semantic cases ------------------------------------------------


async def test_bad_cseq_is_400_and_the_ua_goes_on(harness: Harness) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    text = peer.build("OPTIONS", peer.new_call()).replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS")
    peer.send(text)
    # Read raw: the 400 echoes the broken CSeq (§8.2.6.2), which our parser rightly refuses.
    got = await peer.sock.recv(timeout=2.0)
    assert got is not None and got[0].startswith(b"SIP/2.0 400 ")
    assert b"CSeq: one OPTIONS" in got[0]
    peer.send(peer.build("OPTIONS", peer.new_call()))
    assert (await peer.response(method="OPTIONS", final=True)).status == 200
    assert ua.transport.stats.malformed + ua.stats.requests_rejected >= 1


async def test_broken_request_line_with_parseable_via_is_400(harness: Harness) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    good = peer.build("OPTIONS", peer.new_call())
    peer.send(good.replace(" SIP/2.0\r\n", "  SIP/2.0 extra\r\n", 1))
    answer = await peer.response(final=True)
    assert answer.status == 400
    assert ua.transport.stats.malformed >= 1
    peer.send(peer.build("OPTIONS", peer.new_call()))
    assert (await peer.response(method="OPTIONS", final=True)).status == 200


def _torture(peer: SipPeer, case: str) -> str:
    """Our own messages with the point of RFC 4475's semantic cases."""
    call = peer.new_call()
    rtp_port = 49170
    if case == "insuf":  # no Call-ID, From or Max-Forwards
        text = peer.build("INVITE", call, body=sdp_offer(rtp_port),
                          content_type="application/sdp")
        return "\r\n".join(line for line in text.split("\r\n")
                           if not line.startswith(("Call-ID:", "From:")))
    if case == "unkscm":
        return peer.build("OPTIONS", call, uri="nobodyKnowsThisScheme:totallyopaquecontent")
    if case == "bext01":
        return peer.build("OPTIONS", call, headers=[("Require", "nothingSupportsThis, "
                                                               "nothingSupportsThisEither")])
    if case == "invut":
        return peer.build("INVITE", call, body="<audio> <pcmu port=\"443\"/> </audio>",
                          content_type="application/unknownformat")
    if case == "sdp01":
        return peer.build("INVITE", call, body=sdp_offer(rtp_port),
                          content_type="application/sdp",
                          headers=[("Accept", "text/nobodyKnowsThis")])
    raise ValueError(case)


@pytest.mark.parametrize(
    ("case", "statuses"),
    [("insuf", {400}), ("unkscm", {416}), ("bext01", {420}), ("invut", {415}),
     ("sdp01", {406, 488})],
)
async def test_rfc4475_semantic_cases(harness: Harness, case: str, statuses: set[int]) -> None:
    ua = await harness.start()
    peer = await harness.peer()
    peer.send(_torture(peer, case))
    answer = await peer.response(final=True)
    assert answer.status in statuses
    if case == "bext01":
        unsupported = {t.strip() for v in answer.headers.get_all("Unsupported")
                       for t in v.split(",")}
        assert unsupported == {"nothingSupportsThis", "nothingSupportsThisEither"}
    if case == "invut":
        assert "application/sdp" in (answer.headers.get("Accept") or "")
    assert not ua.legs


# ---- blind transfer ----------------------------------------------------------------------


async def _transfer(h: Harness, final_frag: str
                    ) -> tuple[asyncio.Queue[TransferResult], CallLeg, SipPeer, Call]:
    """A call whose app transfers it to 4000; the peer accepts the REFER and reports
    100 then `final_frag` by NOTIFY. Returns where the app's TransferResult will appear."""
    results: asyncio.Queue[TransferResult] = asyncio.Queue()

    async def app(leg: CallLeg) -> None:
        results.put_nowait(await leg.transfer("4000", reason="x", timeout=3.0))
        await leg.ended.wait()

    await h.start(app)
    peer = await h.peer()
    rtp = await h.rtp_socket()
    call, _, leg = await place_call(h, peer, rtp)
    refer = await peer.request("REFER")
    refer_to = parse_name_addr(refer.headers.get("Refer-To") or "").uri
    assert (refer_to.user, refer_to.host) == ("4000", "127.0.0.1")
    assert refer_to.headers.get("X-Agentd-Reason") == "x"
    assert refer.headers.get("Referred-By")
    assert tag_of(refer.headers.get("To")) == call.from_tag
    assert tag_of(refer.headers.get("From")) == call.to_tag
    peer.answer(refer, 202, "Accepted")
    for fragment, state in (("SIP/2.0 100 Trying", "active;expires=60"),
                            (final_frag, "terminated;reason=noresource")):
        peer.in_dialog("NOTIFY", call, body=fragment + "\r\n",
                       content_type="message/sipfrag;version=2.0",
                       headers=[("Event", "refer"), ("Subscription-State", state)])
        assert (await peer.response(method="NOTIFY", final=True)).status == 200
    return results, leg, peer, call


async def test_transfer_succeeds_and_we_hang_up(harness: Harness) -> None:
    results, leg, peer, call = await _transfer(harness, "SIP/2.0 200 OK")
    bye = await peer.request("BYE")
    assert tag_of(bye.headers.get("To")) == call.from_tag
    peer.answer(bye, 200, "OK")
    result = await asyncio.wait_for(results.get(), 3.0)
    assert result.ok and result.status == 200
    assert leg.ended.is_set() and leg.end_reason == "transferred"


async def test_failed_transfer_keeps_the_call(harness: Harness) -> None:
    results, leg, peer, call = await _transfer(harness, "SIP/2.0 486 Busy Here")
    result = await asyncio.wait_for(results.get(), 3.0)
    assert not result.ok and result.status == 486
    assert not leg.ended.is_set()
    peer.sock.drain()
    assert await peer.recv(timeout=0.3) is None  # no BYE
    peer.in_dialog("BYE", call)
    assert (await peer.response(method="BYE", final=True)).status == 200


async def test_refer_refused_keeps_the_call(harness: Harness) -> None:
    results: asyncio.Queue[TransferResult] = asyncio.Queue()

    async def app(leg: CallLeg) -> None:
        results.put_nowait(await leg.transfer("4000", timeout=2.0))
        await leg.ended.wait()

    await harness.start(app)
    peer = await harness.peer()
    rtp = await harness.rtp_socket()
    call, _, leg = await place_call(harness, peer, rtp)
    refer = await peer.request("REFER")
    peer.answer(refer, 603, "Declined")
    result = await asyncio.wait_for(results.get(), 2.0)
    assert not result.ok and result.status == 603
    assert not leg.ended.is_set()
    peer.in_dialog("BYE", call)
    await peer.response(200, "BYE")


# ---- admission control -----------------------------------------------------------------


async def test_garbage_flood_from_stranger_is_rate_limited_pbx_still_served(
    harness: Harness,
) -> None:
    ua = await harness.start(trusted_sources=parse_networks(["127.0.0.2/32"]),
                             rate_per_second=5.0, rate_burst=10)
    stranger = await harness.peer("127.0.0.1")
    pbx = await harness.peer("127.0.0.2")
    answered = 0
    for burst in range(10):
        for i in range(30):
            stranger.send(b"\x16\x03\x01garbage " + str(burst * 30 + i).encode() * 20)
        # Paced so the kernel's socket buffer, not the UA, is never what drops the PBX.
        await asyncio.sleep(0.005)
        text = pbx.build("OPTIONS", pbx.new_call())
        for _attempt in range(3):  # UDP: the PBX retransmits an unanswered OPTIONS
            pbx.send(text)
            try:
                reply = await pbx.response(method="OPTIONS", final=True, timeout=0.5)
            except AssertionError:
                continue
            answered += reply.status == 200
            break
    assert answered == 10
    # The stranger's well-formed request is refused too while its bucket is empty.
    stranger.sock.drain()
    stranger.send(stranger.build("OPTIONS", stranger.new_call()))
    assert await stranger.recv(timeout=0.2) is None
    assert ua.stats.requests_rate_limited >= 250
    # What was refused was not even parsed: the limiter runs before the parser.
    assert ua.transport.stats.malformed <= 20


# ---- registration through the UA (fake registrar socket) ----------------------------------


async def test_registers_with_digest_refreshes_and_unregisters(harness: Harness) -> None:
    registrar = await harness.rtp_socket()  # any loopback UDP socket will do as registrar
    states: list[str] = []

    async def read_register(timeout: float = 2.0) -> SipRequest:
        got = await registrar.recv(timeout)
        assert got is not None, "no REGISTER"
        from agentd.sip.parser import parse_message

        message = parse_message(got[0])
        assert isinstance(message, SipRequest) and message.method == "REGISTER"
        return message

    def answer(request: SipRequest, status: int, reason: str,
               headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            lines += [f"{name}: {v}" for v in request.headers.get_all(name)]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("Content-Length: 0")
        registrar.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), ua.local_address)

    ua = UserAgent(replace(BASE, register=True, registrar=registrar.address,
                           register_expires=2, registration_max_refresh=2.0),
                   lambda leg: leg.ended.wait(), transaction_config=FAST,
                   on_registration=lambda state: states.append(state.status.value))
    harness.ua = ua
    await ua.start()
    first = await read_register()
    assert first.headers.get("Expires") == "2" and first.headers.get("Authorization") is None
    answer(first, 401, "Unauthorized",
           [("WWW-Authenticate", 'Digest realm="lab", nonce="abc", qop="auth"')])
    second = await read_register()
    assert 'username="2001"' in (second.headers.get("Authorization") or "")
    contact = second.headers.get("Contact") or ""
    answer(second, 200, "OK", [("Contact", f"{contact};expires=2")])
    assert await ua.wait_registered(2.0)
    assert states[-1] == "registered"
    # Refresh before the 2 s binding lapses (at 1 s: expiry minus half).
    refresh = await read_register(timeout=2.0)
    assert refresh.headers.get("Call-ID") == first.headers.get("Call-ID")
    answer(refresh, 200, "OK", [("Contact", f"{contact};expires=2")])
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(ua.stop())
    unregister = await read_register()
    assert unregister.headers.get("Expires") == "0"
    answer(unregister, 200, "OK")
    await asyncio.wait_for(stopping, 3.0)
    assert ua.registration_state.status.value == "unregistered"
