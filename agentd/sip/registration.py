"""Registration as an extension (RFC 3261 §10), sans-IO.

`Registration` decides *what* REGISTER to send and *when*; the UA adds the Via, runs it
through a client transaction and feeds back the final response (or the timeout). Time comes
in as `now`; nothing here reads a clock, sleeps or touches a socket.

Refresh happens before the binding lapses; failures back off exponentially (2, 4, 8 … up to
`backoff_max` seconds) so a wrong password or a dead PBX never causes a tight loop; a PBX that
restarted and forgot us gets us back at the next refresh, which therefore comes at most
`max_refresh` seconds apart whatever expiry the PBX grants.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agentd.sip.auth import DigestClient
from agentd.sip.message import Headers, SipRequest, SipResponse
from agentd.sip.uri import parse_name_addr


class RegistrationStatus(enum.Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILING = "failing"
    UNREGISTERING = "unregistering"


@dataclass(frozen=True)
class RegistrationState:
    """What the daemon shows: registered or not, and why not."""

    status: RegistrationStatus
    reason: str | None = None
    expires_at: float | None = None  # when the binding lapses (REGISTERED only)
    retry_at: float | None = None  # next attempt (FAILING) or refresh (REGISTERED)
    failures: int = 0  # consecutive failed attempts


@dataclass(frozen=True)
class RegistrationConfig:
    aor: str  # sip:2001@pbx.example — To and From
    registrar_uri: str  # sip:pbx.example — Request-URI
    contact: str  # <sip:2001@192.0.2.10:5060;transport=udp>
    call_id: str
    from_tag: str
    expires: int = 300
    user_agent: str = "agentd"
    backoff_min: float = 2.0
    backoff_max: float = 300.0
    # Refresh at least this often, so a PBX that forgot us (restart) is fixed quickly.
    max_refresh: float = 300.0


class Registration:
    def __init__(self, config: RegistrationConfig, credentials: DigestClient | None) -> None:
        self.config = config
        self._credentials = credentials
        self._cseq = 0
        self._expires = config.expires
        self._auth_attempts = 0
        self._state = RegistrationState(RegistrationStatus.UNREGISTERED)
        self._next_at: float | None = None
        self._in_flight = False
        self._stopping = False

    @property
    def state(self) -> RegistrationState:
        return self._state

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def next_deadline(self) -> float | None:
        """When `poll` next has something to send (None while a REGISTER is in flight)."""
        return None if self._in_flight else self._next_at

    def start(self, now: float) -> SipRequest:
        """The first REGISTER."""
        self._stopping = False
        self._set(RegistrationStatus.REGISTERING, reason=None)
        return self._register(self._expires)

    def poll(self, now: float) -> SipRequest | None:
        """A refresh or retry REGISTER when one is due, else None."""
        if self._in_flight or self._next_at is None or now < self._next_at:
            return None
        if self._state.status is not RegistrationStatus.REGISTERED:
            self._set(RegistrationStatus.REGISTERING, reason=self._state.reason)
        return self._register(self._expires)

    def stop(self, now: float) -> SipRequest | None:
        """An un-REGISTER (Expires: 0), or None when we hold no binding."""
        self._next_at = None
        self._stopping = True
        if self._state.status is RegistrationStatus.UNREGISTERED:
            return None
        self._set(RegistrationStatus.UNREGISTERING, reason=None)
        return self._register(0)

    def handle_response(self, response: SipResponse, now: float) -> SipRequest | None:
        """Feed the final response to our last REGISTER; may return the next one (auth)."""
        if response.status < 200:
            return None
        self._in_flight = False
        if response.status in (401, 407) and self._credentials is not None:
            header = self._credentials.respond(
                response.status,
                response.headers.get_all(
                    "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
                ),
                "REGISTER",
                self.config.registrar_uri,
            )
            if header is not None:
                return self._register(self._last_expires, auth=header)
            return self._failed(now, f"{response.status} {response.reason}: "
                                     f"{self._credentials.last_failure}")
        if response.status == 423:
            min_expires = response.headers.get("Min-Expires", "")
            if min_expires.strip().isdigit() and int(min_expires) > self._expires:
                self._expires = int(min_expires)
                return self._register(self._expires)
            return self._failed(now, f"423 {response.reason} without a usable Min-Expires")
        if 200 <= response.status < 300:
            if self._credentials is not None:
                self._credentials.accepted()
            if self._stopping:
                self._set(RegistrationStatus.UNREGISTERED, reason=None)
                self._next_at = None
                return None
            granted = self._granted_expires(response)
            if granted <= 0:
                return self._failed(now, "registrar accepted but granted no binding")
            refresh_in = min(granted - min(granted / 2, 32.0), self.config.max_refresh)
            self._next_at = now + refresh_in
            self._state = RegistrationState(
                RegistrationStatus.REGISTERED,
                expires_at=now + granted,
                retry_at=self._next_at,
            )
            return None
        return self._failed(now, f"{response.status} {response.reason}".strip())

    def handle_timeout(self, now: float) -> None:
        """The REGISTER transaction timed out (no answer from the registrar)."""
        self._in_flight = False
        if self._stopping:
            self._set(RegistrationStatus.UNREGISTERED, reason="no answer to un-REGISTER")
            return
        self._failed(now, "registrar did not answer (timeout)")

    def handle_transport_error(self, now: float, reason: str) -> None:
        self._in_flight = False
        self._failed(now, f"transport error: {reason}")

    # ---- internals ---------------------------------------------------------------------

    def _set(self, status: RegistrationStatus, reason: str | None) -> None:
        self._state = RegistrationState(
            status, reason=reason, failures=self._state.failures, retry_at=self._next_at
        )

    def _failed(self, now: float, reason: str) -> None:
        failures = self._state.failures + 1
        # The exponent is capped: 2.0 * 2**1100 overflows a float after days of failures.
        delay = min(self.config.backoff_max,
                    self.config.backoff_min * 2.0 ** min(failures - 1, 60))
        self._next_at = None if self._stopping else now + delay
        self._state = RegistrationState(
            RegistrationStatus.FAILING, reason=reason, retry_at=self._next_at, failures=failures
        )
        return None

    def _register(self, expires: int, auth: tuple[str, str] | None = None) -> SipRequest:
        self._cseq += 1
        self._last_expires = expires
        self._in_flight = True
        headers = Headers(
            [
                ("Max-Forwards", "70"),
                ("To", f"<{self.config.aor}>"),
                ("From", f"<{self.config.aor}>;tag={self.config.from_tag}"),
                ("Call-ID", self.config.call_id),
                ("CSeq", f"{self._cseq} REGISTER"),
                ("Contact", self.config.contact),
                ("Expires", str(expires)),
                ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, INFO, UPDATE"),
                ("User-Agent", self.config.user_agent),
            ]
        )
        if auth is None and self._credentials is not None:
            auth = self._credentials.authorize("REGISTER", self.config.registrar_uri)
        if auth is not None:
            headers.add(*auth)
        return SipRequest("REGISTER", self.config.registrar_uri, headers)

    def _granted_expires(self, response: SipResponse) -> int:
        """Our binding's expiry from the 200: its Contact's expires param, else Expires."""
        ours = parse_name_addr(self.config.contact).uri
        for value in response.headers.values("Contact"):
            try:
                contact = parse_name_addr(value)
            except ValueError:
                continue
            if _same_contact(contact.uri, ours):
                param = contact.params.get("expires")
                if param is not None and param.strip().isdigit():
                    return int(param)
        header = response.headers.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header)
        return self._last_expires


def _same_contact(a: object, b: object) -> bool:
    """Contacts match on user, host and port (RFC 3261 §19.1.4, loosely: PBXs rewrite params)."""
    return (
        getattr(a, "user", None) == getattr(b, "user", None)
        and str(getattr(a, "host", "")).lower() == str(getattr(b, "host", "")).lower()
        and (getattr(a, "port", None) or 5060) == (getattr(b, "port", None) or 5060)
    )
