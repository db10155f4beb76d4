"""Messages the transaction layer builds itself: the ACK for a non-2xx final response
(§17.1.1.3), CANCEL (§9.1), and simple responses (100 Trying, answers to CANCEL, 400/503)."""

from __future__ import annotations

import hashlib
import re

from agentd.sip.message import Headers, SipRequest, SipResponse, parse_cseq_value
from agentd.sip.transaction.matching import MAGIC_COOKIE, header_tag, top_via

_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


def new_branch(random_token: str) -> str:
    """An RFC 3261 branch: the magic cookie plus caller-supplied randomness (a token)."""
    if not _TOKEN.match(random_token):
        raise ValueError(f"branch randomness must be a non-empty SIP token, got {random_token!r}")
    return MAGIC_COOKIE + random_token


def _copy_fields(source: Headers, target: Headers, *names: str) -> None:
    for name in names:
        for value in source.get_all(name):
            target.add(name, value)


def _cseq_number(request: SipRequest) -> int:
    cseq = parse_cseq_value(request.headers.get("CSeq"))
    if cseq is None:
        raise ValueError("request has no valid CSeq")
    return cseq[0]


def build_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 3xx-6xx final response.

    Same Request-URI, Call-ID, From, CSeq number and top Via (so the same branch) as the
    INVITE, the response's To (with the UAS tag), and the INVITE's Route set.
    """
    headers = Headers()
    vias = invite.headers.values("Via")
    if vias:
        headers.add("Via", vias[0])
    _copy_fields(invite.headers, headers, "Max-Forwards", "Route", "From")
    to = response.headers.get("To") or invite.headers.get("To")
    if to is not None:
        headers.add("To", to)
    _copy_fields(invite.headers, headers, "Call-ID")
    headers.add("CSeq", f"{_cseq_number(invite)} ACK")
    return SipRequest("ACK", invite.uri, headers)


def build_cancel(request: SipRequest) -> SipRequest:
    """A CANCEL for a pending request we sent (§9.1): same Request-URI, Call-ID, To, From,
    CSeq number and top Via, Route copied. Send it with `send_request` (its own transaction)."""
    headers = Headers()
    vias = request.headers.values("Via")
    if vias:
        headers.add("Via", vias[0])
    _copy_fields(request.headers, headers, "Max-Forwards", "Route", "From", "To", "Call-ID")
    headers.add("CSeq", f"{_cseq_number(request)} CANCEL")
    return SipRequest("CANCEL", request.uri, headers)


def local_tag(request: SipRequest) -> str:
    """A To tag for responses the layer makes on its own, derived from the request so that
    retransmissions get the same one (the layer holds no randomness)."""
    via = top_via(request.headers)
    seed = "|".join(
        (
            via.raw if via else "",
            request.headers.get("Call-ID") or "",
            header_tag(request.headers.get("From")) or "",
        )
    )
    return "tx" + hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:12]


def response_to(
    request: SipRequest, status: int, reason: str, to_tag: str | None = None
) -> SipResponse:
    """A bodiless response to `request`: Via, From, To, Call-ID, CSeq copied (§8.2.6).

    `to_tag` is added to To unless To already has a tag. 100 Trying also copies Timestamp.
    """
    headers = Headers()
    _copy_fields(request.headers, headers, "Via", "From")
    to = request.headers.get("To")
    if to is not None:
        if to_tag is not None and header_tag(to) is None:
            to = f"{to};tag={to_tag}"
        headers.add("To", to)
    _copy_fields(request.headers, headers, "Call-ID", "CSeq")
    if status == 100:
        _copy_fields(request.headers, headers, "Timestamp")
    return SipResponse(status, reason, headers)
