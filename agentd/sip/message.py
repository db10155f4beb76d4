"""SIP message data model: requests, responses and their ordered header fields.

Sans-IO: these are plain values. `parse_message` (agentd.sip.parser) turns bytes into them,
`to_bytes()` turns them back. Header lookup ignores case and accepts compact forms
(RFC 3261 §7.3.3), so `headers.get("v")` and `headers.get("VIA")` both find a Via field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 and later RFCs (3515 r/b, 3265 o/u, 4028 x, ...).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}

# Spellings RFC 3261 uses; any other name is title-cased on the way out of `canonical_name`.
_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Call-ID", "CSeq", "WWW-Authenticate", "Proxy-Authenticate", "Authorization",
        "Proxy-Authorization", "Authentication-Info", "Proxy-Authentication-Info", "MIME-Version",
        "RAck", "RSeq", "SIP-ETag", "SIP-If-Match", "User-to-User", "Refer-To", "Referred-By",
        "Max-Forwards", "Content-Length", "Content-Type", "Record-Route", "Min-SE",
        "Session-Expires", "P-Asserted-Identity", "Allow-Events", "Subscription-State",
    )
}

# Headers whose single field may hold several comma-separated values (RFC 3261 §7.3.1).
# The auth headers and a few others contain commas inside one value and are never split.
_NOT_COMMA_LISTS = frozenset(
    name.lower()
    for name in (
        "WWW-Authenticate", "Proxy-Authenticate", "Authorization", "Proxy-Authorization",
        "Authentication-Info", "Proxy-Authentication-Info", "Date", "Subject", "Call-ID",
        "CSeq", "From", "To", "Content-Type", "Content-Length", "Max-Forwards", "User-Agent",
        "Server", "Organization", "Retry-After", "Timestamp", "Refer-To", "Referred-By",
        "User-to-User", "Subscription-State", "Event", "Session-Expires", "Min-SE",
        "Content-Disposition", "Reason",
    )
)


def canonical_name(name: str) -> str:
    """The conventional spelling of a header name, compact forms expanded."""
    lowered = name.strip().lower()
    if lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    if lowered in _CANONICAL:
        return _CANONICAL[lowered]
    return "-".join(part[:1].upper() + part[1:] for part in lowered.split("-"))


def split_comma_values(value: str) -> list[str]:
    """Split one header field on commas outside quotes and <>; each value stripped."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    in_angle = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif in_quotes and ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch == "<":
            in_angle = True
        elif not in_quotes and ch == ">":
            in_angle = False
        elif ch == "," and not in_quotes and not in_angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


class Headers:
    """Ordered header fields with case-insensitive, compact-form-aware lookup.

    Fields keep their order (Via and Record-Route order matters) and are stored under their
    canonical name. Values are stored as received, unfolded and stripped.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in fields]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def copy(self) -> Headers:
        copied = Headers()
        copied._fields = list(self._fields)
        return copied

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first field's value, or `default`."""
        wanted = canonical_name(name)
        for field_name, value in self._fields:
            if field_name == wanted:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every field of that name, in order, as received (not split on commas)."""
        wanted = canonical_name(name)
        return [value for field_name, value in self._fields if field_name == wanted]

    def values(self, name: str) -> list[str]:
        """Every value of that name, comma-lists split (Via, Contact, Route, Allow ...)."""
        wanted = canonical_name(name)
        fields = self.get_all(wanted)
        if wanted.lower() in _NOT_COMMA_LISTS:
            return fields
        return [v for f in fields for v in split_comma_values(f)]

    def add(self, name: str, value: str) -> None:
        """Append a field after the existing ones."""
        self._fields.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before all others (a proxy adding its Via does this)."""
        self._fields.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name with one, at the first one's place."""
        wanted = canonical_name(name)
        for i, (field_name, _) in enumerate(self._fields):
            if field_name == wanted:
                self._fields[i] = (wanted, value)
                self._fields = [
                    f for j, f in enumerate(self._fields) if j <= i or f[0] != wanted
                ]
                return
        self._fields.append((wanted, value))

    def remove(self, name: str) -> None:
        wanted = canonical_name(name)
        self._fields = [f for f in self._fields if f[0] != wanted]


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    # Content-Length keeps its place (so a parsed message re-serialises to an equal one) but
    # always states the body's real length; it is appended when the message had none.
    lines = [start_line]
    stated = False
    for name, value in headers:
        if name == "Content-Length":
            if stated:
                continue
            value, stated = str(len(body)), True
        lines.append(f"{name}: {value}")
    if not stated:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


class _CommonFields:
    """Lookups both requests and responses offer."""

    headers: Headers

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    @property
    def cseq(self) -> tuple[int, str] | None:
        return parse_cseq_value(self.headers.get("CSeq"))


@dataclass
class SipRequest(_CommonFields):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        """Wire form; Content-Length always states the body's real length."""
        return _serialize(f"{self.method} {self.uri} {self.version}", self.headers, self.body)


@dataclass
class SipResponse(_CommonFields):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return _serialize(f"{self.version} {self.status} {self.reason}", self.headers, self.body)


SipMessage = SipRequest | SipResponse


def parse_cseq_value(value: str | None) -> tuple[int, str] | None:
    """'314159 INVITE' -> (314159, 'INVITE'); None when absent or not of that form."""
    if value is None:
        return None
    parts = value.split()
    # isascii: str.isdigit() accepts digits such as '²' that int() refuses.
    if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    return int(parts[0]), parts[1]
