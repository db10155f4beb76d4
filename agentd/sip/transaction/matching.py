"""What identifies a transaction: the top Via and the matching keys of RFC 3261 §17.1.3
and §17.2.3, with the RFC 2543 fallback for branches without the magic cookie."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.sip.message import Headers, parse_cseq_value
from agentd.sip.uri import UriError, parse_via, tag_of

MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True)
class TopVia:
    """The parts of a Via value the transaction layer needs (parsed by `uri.parse_via`)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict, compare=False)
    raw: str = ""

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host.lower(), self.port


def is_rfc3261_branch(branch: str) -> bool:
    """True when the branch carries the magic cookie and something after it.

    A bare "z9hG4bK" (RFC 4475 `badbranch`) identifies nothing, so it falls back to RFC 2543.
    """
    return branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)


def parse_via_value(value: str) -> TopVia | None:
    """One Via value ('SIP/2.0/UDP host:port;branch=...'), or None when malformed."""
    try:
        via = parse_via(value)
    except UriError:
        return None
    return TopVia(via.transport, via.host, via.port, dict(via.params), " ".join(value.split()))


def top_via(headers: Headers) -> TopVia | None:
    """The first Via value of a message, parsed; None when absent or malformed."""
    values = headers.values("Via")
    return parse_via_value(values[0]) if values else None


def header_tag(value: str | None) -> str | None:
    """The tag parameter of a From/To value; None when absent or the value is malformed."""
    return tag_of(value)


def client_key(headers: Headers) -> tuple[str, str] | None:
    """(top Via branch, CSeq method): what ties a response to a client transaction."""
    via = top_via(headers)
    cseq = parse_cseq_value(headers.get("CSeq"))
    if via is None or not via.branch or cseq is None:
        return None
    return via.branch, cseq[1]


ServerKey = tuple[object, ...]


def server_request_key(
    method: str, uri: str, headers: Headers, via: TopVia
) -> tuple[ServerKey, bool]:
    """The key an incoming request matches server transactions by, and whether To tags must
    be compared too (RFC 2543 mode only; callers do that since an ACK's tag differs).

    ACK is keyed as INVITE so it finds the INVITE's transaction. CANCEL keeps its own method;
    `method="INVITE"` with a CANCEL's headers finds the INVITE a CANCEL targets.
    """
    match_method = "INVITE" if method == "ACK" else method
    if is_rfc3261_branch(via.branch):
        return ("3261", via.branch, *via.sent_by, match_method), False
    cseq = parse_cseq_value(headers.get("CSeq"))
    from_tag = header_tag(headers.get("From"))
    return (
        "2543",
        uri,
        from_tag,
        headers.get("Call-ID"),
        cseq[0] if cseq else None,
        match_method,
        via.raw,
    ), True


def server_response_key(headers: Headers) -> ServerKey | None:
    """The key a TU's response finds its server transaction by (it has no Request-URI).

    For a request the same function gives the key its responses will carry.
    """
    via = top_via(headers)
    cseq = parse_cseq_value(headers.get("CSeq"))
    if via is None or cseq is None:
        return None
    if is_rfc3261_branch(via.branch):
        return ("3261", via.branch, *via.sent_by, cseq[1])
    from_tag = header_tag(headers.get("From"))
    return ("2543", via.raw, headers.get("Call-ID"), from_tag, cseq[0], cseq[1])
