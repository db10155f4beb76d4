"""UA-level checks on a parsed request before a transaction or dialog sees it (RFC 3261 §8.2).

`check_request` returns None when the request may go on, or the `Rejection` the UA answers
with. Never answer an ACK: a Rejection for an ACK means "drop it". A request without Via
cannot be answered at all (the response has nowhere to go): drop it too.

Choices made here:
- Max-Forwards 0 is not a reason to reject: a UA is the request's target, so 483 never
  comes from here (RFC 4475 §3.3.11).
- Body types are only checked for INVITE and UPDATE, whose bodies are session descriptions;
  MESSAGE, INFO and NOTIFY bodies belong to their own handlers. multipart/mixed is refused
  (415) unless the caller lists it in `accepted_content_types`: the SDP layer reads a bare
  application/sdp body only.
- Option tags are compared case-insensitively; Require is ignored on ACK and CANCEL
  (RFC 3261 §8.2.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentd.sip.message import SIP_VERSION, SipRequest
from agentd.sip.uri import UriError, parse_cseq, parse_media_type

DEFAULT_EXTENSIONS = frozenset({"timer", "replaces"})
DEFAULT_SCHEMES = frozenset({"sip", "sips"})
DEFAULT_CONTENT_TYPES = frozenset({"application/sdp"})

MANDATORY_HEADERS = ("To", "From", "Call-ID", "CSeq", "Via")
# Headers a request may carry once only (RFC 3261 §7.3.1 and the extension RFCs).
SINGLE_VALUE_HEADERS = (
    "To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type",
    "Content-Disposition", "Expires", "Min-Expires", "Date", "Session-Expires", "Min-SE",
    "Refer-To", "Referred-By", "Event", "RAck", "RSeq", "Replaces", "Subscription-State",
    "Reply-To",
)
_SESSION_METHODS = frozenset({"INVITE", "UPDATE"})
_ANSWER_TYPE = ("application", "sdp")  # what our responses to INVITE carry


@dataclass(frozen=True)
class Rejection:
    """A response the UA sends instead of processing the request."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def check_request(
    req: SipRequest,
    *,
    supported_extensions: frozenset[str] = DEFAULT_EXTENSIONS,
    supported_schemes: frozenset[str] = DEFAULT_SCHEMES,
    accepted_content_types: frozenset[str] = DEFAULT_CONTENT_TYPES,
) -> Rejection | None:
    """The UA's checks in RFC 3261 §8.2 order; None when the request may be processed."""
    if req.version.upper() != SIP_VERSION:
        return Rejection(505, "Version Not Supported")
    headers = req.headers

    missing = [name for name in MANDATORY_HEADERS if not headers.get_all(name)]
    if missing:
        return Rejection(400, f"Missing {', '.join(missing)}")
    repeated = [name for name in SINGLE_VALUE_HEADERS if len(headers.get_all(name)) > 1]
    if repeated:
        return Rejection(400, f"Several {', '.join(repeated)}")
    try:
        _, cseq_method = parse_cseq(headers.get("CSeq", ""))
    except UriError:
        return Rejection(400, "Bad CSeq")
    if cseq_method != req.method:
        return Rejection(400, "CSeq Method Mismatch")

    scheme, colon, _ = req.uri.partition(":")
    if not colon or scheme.lower() not in supported_schemes:
        return Rejection(416, "Unsupported URI Scheme")

    if req.method not in ("ACK", "CANCEL"):
        supported = {tag.lower() for tag in supported_extensions}
        unknown = [tag for tag in headers.values("Require") if tag.lower() not in supported]
        if unknown:
            return Rejection(420, "Bad Extension", (("Unsupported", ", ".join(unknown)),))

    if req.body:
        encodings = [e.lower() for e in headers.values("Content-Encoding")]
        if any(e != "identity" for e in encodings):
            return Rejection(415, "Unsupported Media Type", (("Accept-Encoding", "identity"),))
    if req.method in _SESSION_METHODS and req.body:
        content_type = headers.get("Content-Type")
        if content_type is None:
            return Rejection(400, "Missing Content-Type")
        try:
            mime = parse_media_type(content_type).mime
        except UriError:
            return Rejection(400, "Bad Content-Type")
        if mime not in accepted_content_types:
            accept = ", ".join(sorted(accepted_content_types))
            return Rejection(415, "Unsupported Media Type", (("Accept", accept),))

    if req.method == "INVITE" and headers.get_all("Accept") and not _accepts(req, _ANSWER_TYPE):
        return Rejection(406, "Not Acceptable", (("Accept", "application/sdp"),))
    return None


def _accepts(req: SipRequest, media: tuple[str, str]) -> bool:
    """Does the request's Accept allow `media`? The most specific matching range decides.

    An empty Accept means nothing is acceptable (RFC 3261 §20.1); malformed ranges are skipped.
    """
    best_rank, best_q = -1, 0.0
    for value in req.headers.values("Accept"):
        try:
            media_range = parse_media_type(value)
        except UriError:
            continue
        if media_range.type == "*" and media_range.subtype == "*":
            rank = 0
        elif media_range.type == media[0] and media_range.subtype == "*":
            rank = 1
        elif (media_range.type, media_range.subtype) == media:
            rank = 2
        else:
            continue
        try:
            q = float(media_range.params.get("q") or "1")
        except ValueError:
            q = 1.0
        if rank > best_rank:
            best_rank, best_q = rank, q
    return best_rank >= 0 and best_q > 0
