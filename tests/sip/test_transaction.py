"""SIP transaction layer (RFC 3261 §17, RFC 6026): timers with a fake clock, matching,
CANCEL, RFC 2543 fallback, and randomised invariants."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.sip.message import Headers, SipRequest, SipResponse
from agentd.sip.parser import parse_message
from agentd.sip.transaction import (
    AckReceived,
    AckTimeout,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    StrayResponse,
    TransactionConfig,
    TransactionError,
    TransactionId,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailure,
    TxState,
    build_ack,
    build_cancel,
    new_branch,
    response_destination,
    response_to,
)
from agentd.sip.transaction.matching import header_tag, parse_via_value, top_via

PEER = ("127.0.0.1", 5070)
PBX = ("127.0.0.1", 5060)


def request(
    method: str = "INVITE",
    branch: str | None = "z9hG4bKabc1",
    cseq: int = 1,
    cseq_method: str | None = None,
    sent_by: str = "127.0.0.1:5070",
    uri: str = "sip:agent@127.0.0.1",
    to_tag: str | None = None,
    from_tag: str = "caller1",
    call_id: str = "call-1@127.0.0.1",
    via_params: str = "",
    route: str | None = None,
) -> SipRequest:
    via = f"SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch is not None else "")
    headers = Headers([("Via", via + via_params), ("Max-Forwards", "70")])
    if route is not None:
        headers.add("Route", route)
    headers.add("From", f'"Caller" <sip:caller@127.0.0.1>;tag={from_tag}')
    headers.add("To", "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} {cseq_method or method}")
    return SipRequest(method, uri, headers)


def reply(req: SipRequest, status: int, to_tag: str | None = "uas1") -> SipResponse:
    return response_to(req, status, f"Status {status}", to_tag if status != 100 else None)


def of(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, Event]]:
    """Fire timers exactly at their deadlines up to `end`; (time, event) pairs."""
    out: list[tuple[float, Event]] = []
    for _ in range(10_000):
        deadline = layer.next_deadline()
        if deadline is None or deadline > end:
            break
        out.extend((deadline, e) for e in layer.handle_timeouts(deadline))
    return out


def send_times(timed: list[tuple[float, Event]]) -> list[float]:
    return [t for t, e in timed if isinstance(e, SendMessage)]


def intervals(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:])]


# ---- client INVITE -------------------------------------------------------------------------


def test_invite_over_udp_retransmits_with_t1_doubling_until_timer_b() -> None:
    layer = TransactionLayer()
    invite = request()
    tx, events = layer.send_request(invite, PBX, now=0.0)
    assert [type(e) for e in events] == [SendMessage]
    assert events[0].destination == PBX and events[0].data == invite.to_bytes()
    assert layer.state(tx) is TxState.CALLING

    timed = run_until(layer, 100.0)
    times = [0.0, *send_times(timed)]
    assert intervals(times) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert all(e.data == invite.to_bytes() for _, e in timed if isinstance(e, SendMessage))
    timeouts = [(t, e) for t, e in timed if isinstance(e, TransactionTimeout)]
    assert timeouts == [(32.0, TransactionTimeout(tx, "B"))]
    assert isinstance(timed[-1][1], TransactionTerminated) and timed[-1][1].key == tx
    assert layer.state(tx) is None and layer.next_deadline() is None and len(layer) == 0


def test_timers_scale_with_configured_t1() -> None:
    layer = TransactionLayer(TransactionConfig(t1=0.1, t2=0.4))
    tx, _ = layer.send_request(request(), PBX, now=10.0)
    timed = run_until(layer, 100.0)
    assert intervals([10.0, *send_times(timed)])[:3] == [0.1, 0.2, 0.4]
    assert [t for t, e in timed if isinstance(e, TransactionTimeout)] == [pytest.approx(16.4)]


def test_provisional_stops_timer_a_and_timer_b() -> None:
    layer = TransactionLayer()
    invite = request()
    tx, _ = layer.send_request(invite, PBX, now=0.0)
    assert send_times(run_until(layer, 0.6)) == [0.5]
    events = layer.receive(reply(invite, 180), PBX, now=0.7)
    assert of(events, ResponseReceived)[0].response.status == 180
    assert layer.state(tx) is TxState.PROCEEDING
    assert run_until(layer, 1000.0) == []  # no retransmission, no timer B: the TU CANCELs
    assert layer.state(tx) is TxState.PROCEEDING


def test_ack_for_486_is_built_and_resent_by_the_transaction() -> None:
    layer = TransactionLayer()
    invite = request(route="<sip:proxy.example;lr>")
    tx, _ = layer.send_request(invite, PBX, now=0.0)
    busy = reply(invite, 486, to_tag="busy9")
    events = layer.receive(busy, PBX, now=0.2)

    (ack_send,) = of(events, SendMessage)
    ack = ack_send.message
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.uri == invite.uri
    assert ack_send.destination == PBX and ack_send.transaction == tx
    assert ack.headers.values("Via") == [invite.headers.values("Via")[0]]
    assert header_tag(ack.headers.get("To")) == "busy9"
    assert ack.headers.get("CSeq") == "1 ACK"
    assert ack.headers.get("Route") == "<sip:proxy.example;lr>"
    for name in ("From", "Call-ID", "Max-Forwards"):
        assert ack.headers.get(name) == invite.headers.get(name)
    assert [e.response.status for e in of(events, ResponseReceived)] == [486]
    assert layer.state(tx) is TxState.COMPLETED

    again = layer.receive(busy, PBX, now=0.6)  # retransmitted 486: re-ACK, TU not told
    assert [type(e) for e in again] == [SendMessage] and again[0].data == ack_send.data
    assert run_until(layer, 32.1) == []  # timer D still running (32 s from 0.2)
    timed = run_until(layer, 33.0)
    assert [type(e) for _, e in timed] == [TransactionTerminated]
    assert timed[0][0] == pytest.approx(32.2)


def test_2xx_goes_up_without_ack_and_retransmissions_pass_up_in_accepted() -> None:
    layer = TransactionLayer()
    invite = request()
    tx, _ = layer.send_request(invite, PBX, now=0.0)
    ok = reply(invite, 200, to_tag="a")
    first = layer.receive(ok, PBX, now=0.1)
    assert first == [ResponseReceived(ok, tx, retransmission=False)]  # no ACK: the TU sends it
    assert layer.state(tx) is TxState.ACCEPTED
    assert layer.receive(ok, PBX, now=0.6) == [ResponseReceived(ok, tx, retransmission=True)]
    fork = reply(invite, 200, to_tag="b")
    assert layer.receive(fork, PBX, now=0.7) == [ResponseReceived(fork, tx, retransmission=False)]
    assert layer.receive(reply(invite, 486), PBX, now=0.8) == []  # a late non-2xx is dropped
    assert send_times(run_until(layer, 32.0)) == []

    timed = run_until(layer, 33.0)  # timer M (64*T1 from the first 2xx)
    assert [type(e) for _, e in timed] == [TransactionTerminated]
    assert layer.receive(ok, PBX, now=40.0) == [StrayResponse(ok, PBX)]


def test_client_cancel_is_its_own_transaction_matched_by_cseq_method() -> None:
    layer = TransactionLayer()
    invite = request()
    invite_tx, _ = layer.send_request(invite, PBX, now=0.0)
    layer.receive(reply(invite, 180), PBX, now=0.1)
    cancel = build_cancel(invite)
    assert cancel.headers.get("CSeq") == "1 CANCEL"
    assert cancel.headers.values("Via") == invite.headers.values("Via")
    cancel_tx, events = layer.send_request(cancel, PBX, now=0.2)
    assert cancel_tx != invite_tx and of(events, SendMessage)[0].message is cancel

    events = layer.receive(reply(cancel, 200), PBX, now=0.3)
    assert [e.client_tx for e in of(events, ResponseReceived)] == [cancel_tx]
    assert layer.state(invite_tx) is TxState.PROCEEDING
    events = layer.receive(reply(invite, 487), PBX, now=0.4)
    assert [e.client_tx for e in of(events, ResponseReceived)] == [invite_tx]
    assert of(events, SendMessage)[0].message.method == "ACK"


def test_reliable_client_never_retransmits_and_ends_without_linger() -> None:
    layer = TransactionLayer()
    invite = request()
    tx, _ = layer.send_request(invite, PBX, now=0.0, reliable=True)
    timed = run_until(layer, 100.0)
    assert [type(e) for _, e in timed] == [TransactionTimeout, TransactionTerminated]
    assert timed[0][0] == 32.0

    tx, _ = layer.send_request(request(branch="z9hG4bKtcp2"), PBX, now=0.0, reliable=True)
    events = layer.receive(reply(request(branch="z9hG4bKtcp2"), 486), PBX, now=1.0)
    assert [type(e) for e in events] == [SendMessage, ResponseReceived, TransactionTerminated]
    assert events[0].reliable  # the ACK, and timer D is zero

    options = request("OPTIONS", branch="z9hG4bKopt")
    tx, _ = layer.send_request(options, PBX, now=0.0, reliable=True)
    events = layer.receive(reply(options, 200), PBX, now=1.0)
    assert [type(e) for e in events] == [ResponseReceived, TransactionTerminated]
    assert len(layer) == 0


# ---- client non-INVITE ---------------------------------------------------------------------


def test_non_invite_retransmissions_cap_at_t2_until_timer_f() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    tx, _ = layer.send_request(options, PBX, now=0.0)
    timed = run_until(layer, 100.0)
    gaps = intervals([0.0, *send_times(timed)])
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]
    assert set(gaps[3:]) == {4.0} and len(gaps) == 10  # 0.5+1+2+4*7 = 31.5 < 32
    assert [(t, e) for t, e in timed if not isinstance(e, SendMessage)] == [
        (32.0, TransactionTimeout(tx, "F")),
        (32.0, TransactionTerminated(tx)),
    ]


def test_non_invite_proceeding_retransmits_at_t2() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    tx, _ = layer.send_request(options, PBX, now=0.0)
    layer.receive(reply(options, 100), PBX, now=0.2)
    assert layer.state(tx) is TxState.PROCEEDING
    times = send_times(run_until(layer, 9.0))
    assert times == [0.5, 4.5, 8.5]


def test_non_invite_final_once_then_timer_k() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    tx, _ = layer.send_request(options, PBX, now=0.0)
    ok = reply(options, 200)
    assert layer.receive(ok, PBX, now=0.1) == [ResponseReceived(ok, tx)]
    assert layer.receive(ok, PBX, now=0.2) == []
    assert layer.receive(reply(options, 180), PBX, now=0.3) == []
    timed = run_until(layer, 100.0)
    assert timed == [(pytest.approx(5.1), TransactionTerminated(tx))]


# ---- server INVITE -------------------------------------------------------------------------


def test_server_invite_announces_once_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    invite = request()
    events = layer.receive(invite, PEER, now=0.0)
    (received,) = of(events, RequestReceived)
    tx = received.server_tx
    assert received.request is invite and received.source == PEER and not of(events, SendMessage)

    trying = run_until(layer, 0.3)  # TU silent for 200 ms: the transaction sends 100
    assert [(t, e.message.status) for t, e in trying] == [(pytest.approx(0.2), 100)]
    assert header_tag(trying[0][1].message.headers.get("To")) is None

    ringing = reply(invite, 180)
    (sent,) = layer.send_response(ringing, now=0.4)
    assert sent.message is ringing and sent.destination == PEER and sent.transaction == tx
    again = layer.receive(invite, PEER, now=0.5)
    assert [e.data for e in again] == [sent.data]

    busy = reply(invite, 486)
    (final,) = layer.send_response(busy, now=1.0)
    again = layer.receive(invite, PEER, now=1.1)
    assert [e.data for e in again] == [final.data]
    assert not of(again, RequestReceived)


def test_server_sends_100_at_once_when_the_invite_is_retransmitted_early() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, PEER, now=0.0)
    events = layer.receive(invite, PEER, now=0.1)
    assert [e.message.status for e in events] == [100]
    assert run_until(layer, 1.0) == []  # the 200 ms timer was cancelled

    layer = TransactionLayer(TransactionConfig(trying_delay=0))
    events = layer.receive(invite, PEER, now=0.0)
    assert [type(e) for e in events] == [SendMessage, RequestReceived]
    layer = TransactionLayer(TransactionConfig(trying_delay=None))
    layer.receive(invite, PEER, now=0.0)
    assert layer.receive(invite, PEER, now=0.1) == [] and run_until(layer, 1.0) == []


def test_server_invite_timer_g_schedule_then_timer_h_without_ack() -> None:
    layer = TransactionLayer()
    invite = request()
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    (final,) = layer.send_response(reply(invite, 486), now=0.0)
    assert layer.state(tx) is TxState.COMPLETED
    timed = run_until(layer, 100.0)
    sends = [e for _, e in timed if isinstance(e, SendMessage)]
    assert all(e.data == final.data for e in sends)
    gaps = intervals([0.0, *send_times(timed)])
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and set(gaps[3:]) == {4.0}
    assert [(t, e) for t, e in timed if not isinstance(e, SendMessage)] == [
        (32.0, AckTimeout(tx)),
        (32.0, TransactionTerminated(tx)),
    ]
    assert layer.receive(invite, PEER, now=33.0)  # a late copy is a new request now


def test_ack_confirms_stops_timer_g_and_timer_i_absorbs_ack_copies() -> None:
    layer = TransactionLayer()
    invite = request()
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    busy = reply(invite, 486, to_tag="t486")
    layer.send_response(busy, now=0.0)
    assert send_times(run_until(layer, 0.6)) == [0.5]
    ack = build_ack(invite, busy)
    assert layer.receive(ack, PEER, now=0.7) == []
    assert layer.state(tx) is TxState.CONFIRMED
    assert layer.receive(ack, PEER, now=0.8) == []  # absorbed, not an AckReceived
    assert layer.receive(invite, PEER, now=0.9) == []  # absorbed in Confirmed
    timed = run_until(layer, 100.0)
    assert timed == [(pytest.approx(5.7), TransactionTerminated(tx))]


def test_server_2xx_enters_accepted_and_the_2xx_ack_goes_to_the_tu() -> None:
    layer = TransactionLayer()
    invite = request()
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    ok = reply(invite, 200)
    (sent,) = layer.send_response(ok, now=0.1)
    assert layer.state(tx) is TxState.ACCEPTED
    assert layer.receive(invite, PEER, now=0.2) == []  # absorbed: no resend, no new request
    assert [e.data for e in layer.send_response(ok, now=0.6)] == [sent.data]  # TU's retransmit
    assert layer.send_response(reply(invite, 486), now=0.7) == []
    assert layer.counters["discarded_tu_response"] == 1

    ack = request("ACK", branch="z9hG4bKack2", to_tag="uas1")  # 2xx ACK: a new branch
    assert layer.receive(ack, PEER, now=0.8) == [AckReceived(ack, PEER)]
    timed = run_until(layer, 100.0)
    assert timed == [(pytest.approx(32.1), TransactionTerminated(tx))]
    with pytest.raises(TransactionError):
        layer.send_response(ok, now=40.0)
    assert of(layer.send_stateless(ok, PEER), SendMessage)[0].data == sent.data


def test_reliable_server_transactions_skip_g_and_end_without_linger() -> None:
    layer = TransactionLayer()
    invite = request()
    tx = of(layer.receive(invite, PEER, now=0.0, reliable=True), RequestReceived)[0].server_tx
    busy = reply(invite, 486)
    layer.send_response(busy, now=0.0)
    assert send_times(run_until(layer, 10.0)) == []  # no timer G (and no 100: TU was quick)
    events = layer.receive(build_ack(invite, busy), PEER, now=11.0, reliable=True)
    assert events == [TransactionTerminated(tx)]  # timer I is zero

    options = request("OPTIONS", branch="z9hG4bKo2")
    tx = of(layer.receive(options, PEER, now=0.0, reliable=True), RequestReceived)[0].server_tx
    events = layer.send_response(reply(options, 200), now=0.1)
    assert [type(e) for e in events] == [SendMessage, TransactionTerminated]
    assert len(layer) == 0


# ---- server non-INVITE ---------------------------------------------------------------------


def test_server_non_invite_retransmissions_get_the_last_response() -> None:
    layer = TransactionLayer()
    options = request("OPTIONS")
    tx = of(layer.receive(options, PEER, now=0.0), RequestReceived)[0].server_tx
    assert layer.receive(options, PEER, now=0.5) == []  # Trying: nothing to resend yet
    (prov,) = layer.send_response(reply(options, 183), now=0.6)
    assert [e.data for e in layer.receive(options, PEER, now=0.7)] == [prov.data]
    (final,) = layer.send_response(reply(options, 200), now=0.8)
    assert [e.data for e in layer.receive(options, PEER, now=1.5)] == [final.data]
    assert layer.send_response(reply(options, 500), now=1.6) == []
    timed = run_until(layer, 100.0)
    assert timed == [(pytest.approx(32.8), TransactionTerminated(tx))]


def test_response_destination_follows_via_rport_and_transport() -> None:
    via = top_via(request(sent_by="10.0.0.9:5999").headers)
    assert via is not None
    assert response_destination(via, ("10.0.0.1", 4000), reliable=False) == ("10.0.0.1", 5999)
    assert response_destination(via, ("10.0.0.1", 4000), reliable=True) == ("10.0.0.1", 4000)
    rport = top_via(request(via_params=";rport").headers)
    assert rport is not None
    assert response_destination(rport, ("10.0.0.1", 4000), reliable=False) == ("10.0.0.1", 4000)
    bare = top_via(request(sent_by="pbx.local").headers)
    assert bare is not None
    assert response_destination(bare, ("10.0.0.1", 4000), reliable=False) == ("10.0.0.1", 5060)


# ---- CANCEL --------------------------------------------------------------------------------


def test_cancel_of_a_pending_invite_is_answered_and_reported() -> None:
    layer = TransactionLayer()
    invite = request()
    invite_tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    layer.send_response(reply(invite, 180, to_tag="dlg7"), now=0.1)
    cancel = build_cancel(invite)

    events = layer.receive(cancel, PEER, now=1.0)
    (answer,) = of(events, SendMessage)
    assert answer.message.status == 200 and answer.message.headers.get("CSeq") == "1 CANCEL"
    assert header_tag(answer.message.headers.get("To")) == "dlg7"  # same tag as the INVITE's
    assert of(events, CancelReceived) == [CancelReceived(cancel, invite_tx)]
    assert not of(events, RequestReceived)

    again = layer.receive(cancel, PEER, now=1.2)  # retransmitted CANCEL: same 200 only
    assert [e.data for e in again] == [answer.data]

    terminated = reply(invite, 487, to_tag="dlg7")
    layer.send_response(terminated, now=1.3)
    assert layer.state(invite_tx) is TxState.COMPLETED
    layer.receive(build_ack(invite, terminated), PEER, now=1.4)
    assert layer.state(invite_tx) is TxState.CONFIRMED



@pytest.mark.parametrize("reliable", [False, True])
def test_a_late_cancel_copy_is_answered_again_but_reported_once(reliable: bool) -> None:
    layer = TransactionLayer()
    invite = request()
    invite_tx = of(layer.receive(invite, PEER, 0.0, reliable), RequestReceived)[0].server_tx
    cancel = build_cancel(invite)
    assert of(layer.receive(cancel, PEER, 1.0, reliable), CancelReceived)
    run_until(layer, 40.0)  # the CANCEL's transaction is gone (timer J, or at once on TCP)
    events = layer.receive(cancel, PEER, 41.0, reliable)
    assert [e.message.status for e in of(events, SendMessage)] == [200]
    assert not of(events, CancelReceived)
    assert layer.state(invite_tx) is TxState.PROCEEDING


def test_cancel_after_final_gets_200_without_event_and_unknown_cancel_gets_481() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.receive(invite, PEER, now=0.0)
    layer.send_response(reply(invite, 486), now=0.1)
    events = layer.receive(build_cancel(invite), PEER, now=0.2)
    assert [e.message.status for e in of(events, SendMessage)] == [200]
    assert not of(events, CancelReceived)

    stranger = build_cancel(request(branch="z9hG4bKnothere"))
    events = layer.receive(stranger, PEER, now=0.3)
    assert [e.message.status for e in of(events, SendMessage)] == [481]
    assert not of(events, CancelReceived)
    other_host = build_cancel(request(sent_by="127.0.0.2:5070"))  # same branch, other sent-by
    events = layer.receive(other_host, ("127.0.0.2", 5070), now=0.4)
    assert [e.message.status for e in of(events, SendMessage)] == [481]


# ---- RFC 2543 fallback ---------------------------------------------------------------------


@pytest.mark.parametrize("branch", ["z9hG4bK", None, "1234abcd"], ids=["badbranch", "none", "old"])
def test_rfc2543_matching_without_a_usable_branch(branch: str | None) -> None:
    layer = TransactionLayer()
    invite = request(branch=branch)
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    assert of(layer.receive(invite, PEER, now=0.1), SendMessage)  # retransmission -> 100
    assert not of(layer.receive(invite, PEER, now=0.15), RequestReceived)

    # Same branch text but another From tag or CSeq is another transaction under RFC 2543.
    assert of(layer.receive(request(branch=branch, from_tag="other"), PEER, 0.2), RequestReceived)
    assert of(layer.receive(request(branch=branch, cseq=2), PEER, 0.2), RequestReceived)

    busy = reply(invite, 486, to_tag="t2543")
    (sent,) = layer.send_response(busy, now=0.3)  # found by Via + Call-ID + From tag + CSeq
    assert sent.transaction == tx
    assert layer.receive(build_ack(invite, busy), PEER, now=0.4) == []  # ACK with our To tag
    assert layer.state(tx) is TxState.CONFIRMED


@pytest.mark.parametrize("case", ["badbranch", "inv2543"])
def test_rfc4475_torture_requests_match_by_rfc2543_rules(case: str) -> None:
    data = (Path(__file__).parent / "torture" / f"{case}.sip").read_bytes()
    if b"\r\n" not in data:
        data = data.replace(b"\n", b"\r\n")
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    layer = TransactionLayer(TransactionConfig(trying_delay=None))
    source = ("198.51.100.12", 5060)
    (received,) = layer.receive(message, source, now=0.0)
    assert isinstance(received, RequestReceived)
    assert layer.receive(parse_message(data), source, now=0.5) == []  # absorbed copy
    (sent,) = layer.send_response(reply(message, 486), now=1.0)
    assert sent.transaction == received.server_tx and sent.destination == source
    assert [e.data for e in layer.receive(parse_message(data), source, now=1.5)] == [sent.data]


def test_rfc2543_cancel_finds_its_invite() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    events = layer.receive(build_cancel(invite), PEER, now=0.5)
    assert of(events, CancelReceived) == [CancelReceived(build_cancel(invite), tx)]


def test_rfc2543_ack_with_a_foreign_to_tag_goes_to_the_tu() -> None:
    layer = TransactionLayer()
    invite = request(branch=None)
    tx = of(layer.receive(invite, PEER, now=0.0), RequestReceived)[0].server_tx
    layer.send_response(reply(invite, 486, to_tag="mine"), now=0.1)
    stranger = build_ack(invite, reply(invite, 486, to_tag="notmine"))
    assert layer.receive(stranger, PEER, now=0.2) == [AckReceived(stranger, PEER)]
    assert layer.state(tx) is TxState.COMPLETED


# ---- bad input, misuse, limits -------------------------------------------------------------


def test_bad_requests_are_answered_400_or_dropped_never_raised() -> None:
    layer = TransactionLayer()
    no_via = request()
    no_via.headers.remove("Via")
    assert layer.receive(no_via, PEER, now=0.0) == []
    assert layer.counters["request_without_via"] == 1

    mismatch = request("INVITE", cseq_method="OPTIONS")
    (answer,) = layer.receive(mismatch, PEER, now=0.0)
    assert answer.message.status == 400 and answer.transaction is None
    no_call_id = request()
    no_call_id.headers.remove("Call-ID")
    assert [e.message.status for e in layer.receive(no_call_id, PEER, now=0.0)] == [400]
    bad_ack = request("ACK", cseq_method="INVITE")
    assert layer.receive(bad_ack, PEER, now=0.0) == []
    assert layer.receive("not a message", PEER, now=0.0) == []  # type: ignore[arg-type]
    assert len(layer) == 0

    assert layer.receive(SipResponse(99, "Odd"), PEER, now=0.0) == []
    assert layer.receive(SipResponse(200, "No Via"), PEER, now=0.0) == []
    stray = reply(request("OPTIONS"), 200)
    assert layer.receive(stray, PEER, now=0.0) == []
    assert layer.counters["stray_response"] == 1


def test_tu_misuse_raises_transaction_error() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError):
        layer.send_request(request(branch="oldstyle"), PBX, now=0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request("ACK"), PBX, now=0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request(cseq_method="BYE"), PBX, now=0.0)
    layer.send_request(request(), PBX, now=0.0)
    with pytest.raises(TransactionError):
        layer.send_request(request(), PBX, now=0.0)
    with pytest.raises(TransactionError):
        layer.send_response(reply(request(branch="z9hG4bKnone"), 200), now=0.0)
    with pytest.raises(TransactionError):
        layer.send_response(SipResponse(700, "Bad"), now=0.0)
    with pytest.raises(ValueError):
        new_branch("has space")
    with pytest.raises(ValueError):
        TransactionConfig(t1=0)
    assert new_branch("x1y2") == "z9hG4bKx1y2"


def test_overload_answers_503_statelessly() -> None:
    layer = TransactionLayer(TransactionConfig(max_transactions=2))
    layer.receive(request("OPTIONS", branch="z9hG4bK1"), PEER, now=0.0)
    layer.receive(request("OPTIONS", branch="z9hG4bK2"), PEER, now=0.0)
    (answer,) = layer.receive(request("OPTIONS", branch="z9hG4bK3"), PEER, now=0.0)
    assert answer.message.status == 503 and len(layer) == 2
    assert layer.counters["overload"] == 1


def test_transport_error_terminates_with_an_event() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(request(), PBX, now=0.0)
    assert layer.transport_error(tx, now=0.1) == [TransportFailure(tx), TransactionTerminated(tx)]
    assert layer.transport_error(tx, now=0.2) == []
    assert layer.next_deadline() is None


def test_late_clock_fires_everything_due_in_order() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(request(), PBX, now=0.0)
    events = layer.handle_timeouts(1000.0)
    assert len(of(events, SendMessage)) == 6
    assert events[-2:] == [TransactionTimeout(tx, "B"), TransactionTerminated(tx)]


def test_via_and_tag_parsing_edge_cases() -> None:
    via = parse_via_value("SIP / 2.0 / tcp  [2001:db8::9] : 5061 ; Branch=z9hG4bKx ; rport")
    assert via is not None
    assert (via.transport, via.host, via.port) == ("TCP", "[2001:db8::9]", 5061)
    assert via.branch == "z9hG4bKx"
    assert "rport" in via.params
    assert parse_via_value("SIP/2.0/UDP host:99999;branch=z9hG4bKx") is None
    assert parse_via_value("SIP/2.0/UDP host;branch") is None
    assert parse_via_value("garbage") is None
    compact = Headers([("v", "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/UDP b;branch=2")])
    top = top_via(compact)
    assert top is not None and top.host == "a.example" and top.branch == "z9hG4bK1"
    assert header_tag('"A;tag=no <x>" <sip:a@b;tag=no>;tag=yes') == "yes"
    assert header_tag("sip:a@b;tag=abc") == "abc"
    assert header_tag("<sip:a@b;tag=inside>") is None


# ---- randomised invariants -----------------------------------------------------------------

STATUSES = [100, 180, 183, 200, 202, 302, 404, 486, 487, 503, 603]


def check_log(log: list[Event], tx: TransactionId) -> None:
    """Invariants every transaction's event log must satisfy."""
    terminated_at = [i for i, e in enumerate(log) if e == TransactionTerminated(tx)]
    assert len(terminated_at) <= 1
    if terminated_at:
        after = log[terminated_at[0] + 1 :]
        assert not [e for e in after if getattr(e, "transaction", None) == tx]
        handles = [getattr(e, "client_tx", None) for e in after]
        handles += [getattr(e, "server_tx", None) for e in after]
        assert tx not in handles
    assert len([e for e in log if isinstance(e, (TransactionTimeout, AckTimeout))]) <= 1


client_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 12.0)),
        st.tuples(st.just("response"), st.sampled_from(STATUSES), st.sampled_from(["a", "b"])),
        st.tuples(st.just("junk"), st.sampled_from(["branch", "method", "status"])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["INVITE", "OPTIONS"]), reliable=st.booleans(), ops=client_ops)
def test_random_client_transaction_keeps_its_invariants(
    method: str, reliable: bool, ops: list[tuple]
) -> None:
    layer = TransactionLayer()
    req = request(method)
    now = 0.0
    tx, log = layer.send_request(req, PBX, now, reliable=reliable)
    log = list(log)
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            log.extend(layer.handle_timeouts(now))
        elif op[0] == "response":
            log.extend(layer.receive(reply(req, op[1], to_tag=op[2]), PBX, now))
        else:
            odd = reply(req, 200)
            if op[1] == "branch":
                odd.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKzzz")
            elif op[1] == "method":
                odd.headers.set("CSeq", "1 BYE")
            else:
                odd.status = 1000
            log.extend(e for e in layer.receive(odd, PBX, now) if not isinstance(e, StrayResponse))
    now += 1000.0
    log.extend(layer.handle_timeouts(now))
    check_log(log, tx)

    responses = [e for e in log if isinstance(e, ResponseReceived)]
    assert all(e.client_tx == tx for e in responses)
    finals = [e.response.status for e in responses if e.response.status >= 200]
    final_events = [e for e in responses if e.response.status >= 200]
    firsts = [e for e in final_events if not e.retransmission]
    timed_out = bool(of(log, TransactionTimeout))
    if method == "INVITE":
        assert len([s for s in finals if s >= 300]) <= 1
        assert not ([s for s in finals if s >= 300] and [s for s in finals if s < 300])
        assert len(firsts) <= 2  # one per To tag ("a", "b")
    else:
        assert len(finals) <= 1
    assert not (timed_out and finals)
    for e in of(log, SendMessage):
        assert e.transaction == tx and e.reliable == reliable
        assert e.message is req or e.message.method == "ACK"
        if reliable:
            assert e.message is not req or e is log[0]  # never a retransmission on TCP
    state = layer.state(tx)
    if method == "INVITE" and state is not None:
        assert state is TxState.PROCEEDING  # waits for the TU to CANCEL
    else:
        assert state is None and TransactionTerminated(tx) in log


server_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 12.0)),
        st.tuples(st.just("retransmit")),
        st.tuples(st.just("ack"), st.booleans()),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("tu"), st.sampled_from(STATUSES)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    reliable=st.booleans(),
    branch=st.sampled_from(["z9hG4bKsrv", "z9hG4bK", None]),
    ops=server_ops,
)
def test_random_server_transaction_keeps_its_invariants(
    method: str, reliable: bool, branch: str | None, ops: list[tuple]
) -> None:
    layer = TransactionLayer()
    req = request(method, branch=branch)
    now = 0.0
    log = layer.receive(req, PEER, now, reliable=reliable)
    (announced,) = of(log, RequestReceived)
    tx = announced.server_tx
    tu_sent: list[bytes] = []
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            log.extend(layer.handle_timeouts(now))
        elif op[0] == "retransmit":
            log.extend(layer.receive(req, PEER, now, reliable))
        elif op[0] == "ack":
            tag = "uas1" if op[1] else "other"
            ack = build_ack(req, reply(req, 486, to_tag=tag))
            events = layer.receive(ack, PEER, now, reliable)
            log.extend(e for e in events if not isinstance(e, AckReceived))
        elif op[0] == "cancel":
            log.extend(layer.receive(build_cancel(req), PEER, now, reliable))
        else:
            alive = layer.state(tx) is not None
            try:
                sent = layer.send_response(reply(req, op[1]), now, server_tx=tx)
            except TransactionError:
                assert not alive
                continue
            tu_sent.extend(e.data for e in of(sent, SendMessage))
            log.extend(sent)
    now += 1000.0
    log.extend(layer.handle_timeouts(now))
    check_log(log, tx)

    assert len([e for e in log if isinstance(e, RequestReceived) and e.server_tx == tx]) == 1
    # Later copies of the request may open new transactions once this one ended; only
    # this transaction's events are checked.
    cancels = [e for e in of(log, CancelReceived) if e.invite_server_tx == tx]
    assert len(cancels) <= (method == "INVITE")
    for e in of(log, SendMessage):
        if e.transaction == tx:
            assert e.data in tu_sent or e.message.status == 100
            assert e.destination == PEER
    state = layer.state(tx)
    if state is not None:  # only a request still waiting for the TU's final response lives on
        assert state in (TxState.PROCEEDING, TxState.TRYING)
    else:
        assert TransactionTerminated(tx) in log


def test_seeded_fuzz_of_mutated_messages_never_raises() -> None:
    rng = random.Random(3261)
    layer = TransactionLayer(TransactionConfig(max_transactions=64))
    base_values = {
        "Via": [
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKf",
            "SIP/2.0/UDP",
            ";;;",
            "x y z",
            "SIP/2.0/UDP [::1]:0",
        ],
        "CSeq": ["1 INVITE", "x INVITE", "1", "", "99999999999999999999 INVITE", "1 ACK"],
        "From": ["<sip:a@b>;tag=1", "<sip:a@b", '"unterminated <sip:a@b>', ""],
        "To": ["<sip:c@d>", "<sip:c@d>;tag=", "sip:c@d;tag=2"],
        "Call-ID": ["c1", "", "c2"],
    }
    now = 0.0
    for _ in range(2000):
        headers = Headers()
        for name, values in base_values.items():
            if rng.random() < 0.9:
                headers.add(name, rng.choice(values))
        if rng.random() < 0.5:
            message: SipRequest | SipResponse = SipRequest(
                rng.choice(["INVITE", "ACK", "CANCEL", "OPTIONS", "BYE", "", "IN VITE"]),
                "sip:agent@127.0.0.1",
                headers,
            )
        else:
            message = SipResponse(rng.choice([0, 100, 180, 200, 486, 699, 700]), "R", headers)
        now += rng.random()
        layer.receive(message, PEER, now, reliable=rng.random() < 0.3)
        layer.handle_timeouts(now)
    assert len(layer) <= 64
