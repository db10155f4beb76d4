"""Blind transfer helpers (RFC 3515, RFC 5589 §6.1, RFC 7433), sans-IO.

A REFER names the target in Refer-To; URI headers in Refer-To (`?X-Agentd-Reason=…`) are copied
by the transferee into the INVITE it sends the target, which is how the human's phone learns
why the call came and which call record it belongs to. Progress comes back as NOTIFYs whose
body is a message/sipfrag status line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentd.sip.uri import SipUri, UriError, parse_uri

# The status code must end at a space or line end: "SIP/2.0 2000" is junk, not a 200.
_SIPFRAG_STATUS = re.compile(rb"^\s*SIP/2\.0 +([1-6]\d\d)(?:[ \t]+([^\r\n]*))?(?:\r?\n|$)")
_SUBSCRIPTION_STATE = re.compile(r"^\s*([A-Za-z-]+)")
_HEADER_SAFE = re.compile(r"[^A-Za-z0-9 .,:_/+=@-]")
_URI_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]")


@dataclass(frozen=True)
class TransferProgress:
    """One NOTIFY's news about the transfer."""

    status: int  # the sipfrag status (100, 180, 200, 486 ...)
    reason: str
    terminated: bool  # Subscription-State: terminated — no more NOTIFYs will come

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        return self.status >= 300


def sanitize_header_text(text: str, limit: int = 200) -> str:
    """Text safe to carry in a SIP header or URI header: printable ASCII, bounded length."""
    return _HEADER_SAFE.sub("", text.replace("\n", " ").replace("\r", " "))[:limit].strip()


def _uui_payload(call_ref: str, reason: str) -> str:
    return f"{call_ref};{reason}".encode("utf-8")[:128].hex()


def user_to_user_value(call_ref: str, reason: str) -> str:
    """RFC 7433 User-to-User header value: hex-encoded 'ref;reason' with encoding=hex."""
    return f"{_uui_payload(call_ref, reason)};encoding=hex"


def uri_header_text(text: str, limit: int = 120) -> str:
    """Text for a Refer-To URI header that needs no %-escape at all.

    Transferees copy Refer-To URI headers into their INVITE, and some (baresip 1.0) mangle
    %-escapes on the way, so the reason travels as unreserved characters only ('_' for the
    rest); the exact text also goes in the hex-encoded User-to-User header.
    """
    return _URI_UNSAFE.sub("_", text.strip())[:limit]


def build_refer_to(
    target: str, *, domain: str, reason: str | None, call_ref: str | None,
    port: int | None = None,
) -> str:
    """The Refer-To value for `target` (an extension like '4000' or a SIP URI).

    An extension becomes sip:<ext>@<domain>[:<port>]; `port` is for a PBX that is the domain
    but not on 5060, since transferees route the Refer-To URI as it is.
    """
    try:
        uri = parse_uri(target) if ":" in target else None
    except UriError as exc:
        raise ValueError(f"bad transfer target {target!r}: {exc}") from exc
    if uri is None:
        uri = SipUri(scheme="sip", user=target, host=domain, port=port)
    headers = dict(uri.headers)
    if reason:
        headers["X-Agentd-Reason"] = uri_header_text(reason)
    if call_ref:
        headers["X-Agentd-Call-Ref"] = uri_header_text(call_ref, 64)
    if reason or call_ref:
        # RFC 7433: hex is the default encoding, so the value needs no ';encoding=hex'
        # (whose ';' and '=' would have to be escaped inside a URI header).
        headers["User-to-User"] = _uui_payload(call_ref or "", reason or "")
    uri = SipUri(uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, headers)
    return f"<{uri}>"


def parse_notify(body: bytes, content_type: str | None, subscription_state: str | None
                 ) -> TransferProgress | None:
    """Read a REFER NOTIFY; None when the body is not a sipfrag status line."""
    if content_type is not None and "sipfrag" not in content_type.lower():
        return None
    match = _SIPFRAG_STATUS.match(body)
    if match is None:
        return None
    state = _SUBSCRIPTION_STATE.match(subscription_state or "")
    terminated = bool(state) and state.group(1).lower() == "terminated"
    reason = (match.group(2) or b"").decode("utf-8", "replace").strip()
    return TransferProgress(int(match.group(1)), reason, terminated)
