"""Dialog state (RFC 3261 §12), sans-IO: who we talk to, how to reach them, CSeq order.

agentd answers calls, so dialogs are made on the UAS side from an INVITE and our 2xx; the
dialog then builds our in-dialog requests (BYE, REFER, re-INVITE) and checks the peer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.sip.message import Headers, SipRequest
from agentd.sip.uri import SipUri, UriError, parse_name_addr, parse_uri

Address = tuple[str, int]


class DialogError(ValueError):
    """A request that cannot create or belong to a dialog (the UA answers 400/481/500)."""


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str  # our address-of-record as the peer named it (INVITE's To, without tag)
    remote_uri: str  # the peer's From, without tag
    remote_target: str  # the peer's Contact URI: where in-dialog requests go
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None

    @classmethod
    def from_invite(cls, invite: SipRequest, local_tag: str, initial_cseq: int = 1) -> Dialog:
        """The UAS side of a dialog, created when we answer `invite` (§12.1.1)."""
        call_id = invite.headers.get("Call-ID")
        from_value = invite.headers.get("From")
        to_value = invite.headers.get("To")
        contacts = invite.headers.values("Contact")
        cseq = invite.cseq
        if not call_id or not from_value or not to_value or cseq is None:
            raise DialogError("INVITE lacks Call-ID, From, To or CSeq")
        if len(contacts) != 1:
            raise DialogError("INVITE needs exactly one Contact")
        try:
            remote = parse_name_addr(from_value)
            local = parse_name_addr(to_value)
            target = parse_name_addr(contacts[0]).uri
        except UriError as exc:
            raise DialogError(f"bad From/To/Contact: {exc}") from exc
        # In-dialog requests go to the Contact, so it must be a SIP URI with a host.
        if not isinstance(target, SipUri) or target.scheme not in ("sip", "sips") \
                or not target.host:
            raise DialogError(f"Contact {contacts[0]!r} is not a SIP URI")
        remote_tag = remote.params.pop("tag", None)
        local.params.pop("tag", None)
        return cls(
            call_id=call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=str(local),
            remote_uri=str(remote),
            remote_target=str(target),
            # UAS: the route set is the Record-Route list in order (§12.1.1).
            route_set=invite.headers.values("Record-Route"),
            local_cseq=initial_cseq - 1,
            remote_cseq=cseq[0],
        )

    @property
    def id(self) -> tuple[str, str, str | None]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def matches(self, request: SipRequest) -> bool:
        """Whether an in-dialog request from the peer belongs here (§12.2.2)."""
        from agentd.sip.uri import tag_of

        return (
            request.headers.get("Call-ID") == self.call_id
            and tag_of(request.headers.get("To")) == self.local_tag
            and tag_of(request.headers.get("From")) == self.remote_tag
        )

    def accept_remote_cseq(self, request: SipRequest) -> bool:
        """False when the CSeq is lower than one already seen (the UA answers 500)."""
        cseq = request.cseq
        if cseq is None:
            return False
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and cseq[0] <= self.remote_cseq:
            # Equal means a retransmission the transaction layer already absorbed or a
            # broken peer; lower is out of order. Both are refused.
            return False
        self.remote_cseq = cseq[0]
        return True

    def refresh_target(self, request: SipRequest) -> None:
        """A target refresh request (re-INVITE, UPDATE) may move the peer's Contact."""
        contacts = request.headers.values("Contact")
        if len(contacts) == 1:
            try:
                self.remote_target = str(parse_name_addr(contacts[0]).uri)
            except UriError:
                pass

    def next_hop(self) -> Address:
        """Where in-dialog requests are sent: the first route, else the remote target."""
        uri_text = self.remote_target
        if self.route_set:
            uri_text = str(parse_name_addr(self.route_set[0]).uri)
        uri = parse_uri(uri_text)
        return uri_destination(uri)

    def next_transport(self) -> str:
        uri_text = self.remote_target
        if self.route_set:
            uri_text = str(parse_name_addr(self.route_set[0]).uri)
        return (parse_uri(uri_text).transport or "udp").lower()

    def build_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """A request inside this dialog (§12.2.1.1). `via` is the full Via value (with branch)."""
        if method != "ACK":
            self.local_cseq += 1
        fields = Headers([("Via", via), ("Max-Forwards", "70")])
        # Loose routing (every modern PBX): R-URI is the remote target, Route the route set.
        for route in self.route_set:
            fields.add("Route", route)
        fields.add("From", f"{self.local_uri};tag={self.local_tag}")
        remote = self.remote_uri + (f";tag={self.remote_tag}" if self.remote_tag else "")
        fields.add("To", remote)
        fields.add("Call-ID", self.call_id)
        fields.add("CSeq", f"{self.local_cseq} {method}")
        if contact is not None:
            fields.add("Contact", contact)
        for name, value in headers or []:
            fields.add(name, value)
        if content_type is not None:
            fields.add("Content-Type", content_type)
        return SipRequest(method, self.remote_target, fields, body)


def uri_destination(uri: SipUri) -> Address:
    """Host and port a SIP URI points at (no DNS SRV: PBXs on a LAN are named by address)."""
    host = uri.maddr or uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    return host, port
