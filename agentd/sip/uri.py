"""SIP URI and header-value grammar (RFC 3261 §19.1, §20, §25): URIs, name-addr, Via, CSeq.

Sans-IO and strict: anything outside the grammar raises `UriError` (a ValueError), never
another exception. Escaped user, password, parameter and header octets are decoded on the way
in and escaped again by `__str__`, so `parse_uri(str(u)) == u` for every parsed URI.
Parameter names are case-insensitive (RFC 3261 §19.1.4) and stored lower-cased.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass, field

from agentd.sip.message import split_comma_values


class UriError(ValueError):
    """A URI or header value that does not follow the RFC 3261 grammar."""


class UnsupportedSchemeError(UriError):
    """A well-formed absolute URI whose scheme is not sip, sips or tel (the UA answers 416)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported URI scheme {scheme!r}")
        self.scheme = scheme


_ALNUM = frozenset(string.ascii_letters + string.digits)
TOKEN_CHARS = _ALNUM | frozenset("-.!%*_+`'~")
_UNRESERVED = _ALNUM | frozenset("-_.!~*'()")
_USER_CHARS = _UNRESERVED | frozenset("&=+$,;?/")
_PASSWORD_CHARS = _UNRESERVED | frozenset("&=+$,")
_PARAM_CHARS = _UNRESERVED | frozenset("[]/:&+$")
_HEADER_CHARS = _UNRESERVED | frozenset("[]/?:+$")
_TEL_CHARS = frozenset(string.hexdigits + "*#+-.()")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?\Z")
_HEX = frozenset(string.hexdigits)
# RFC 3986 §2.2/2.3 octets an opaque absolute URI may hold unescaped.
_OPAQUE_CHARS = _UNRESERVED | frozenset(";/?:@&=+$,%#[]")
# Whitespace allowed around separators in header values (after unfolding).
_WS = " \t"


def is_token(text: str) -> bool:
    """True for a non-empty RFC 3261 token."""
    return bool(text) and all(ch in TOKEN_CHARS for ch in text)


class Params(dict[str, str | None]):
    """URI or header parameters: names compared case-insensitively (stored lower-cased)."""

    def __init__(self, items: object = (), /) -> None:
        super().__init__()
        pairs = items.items() if isinstance(items, dict) else items
        for name, value in pairs:  # type: ignore[attr-defined]
            self[name] = value

    def __setitem__(self, name: str, value: str | None) -> None:
        super().__setitem__(name.lower(), value)

    def __getitem__(self, name: str) -> str | None:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def pop(self, name: str, *default: str | None) -> str | None:  # type: ignore[override]
        return super().pop(name.lower(), *default)

    def setdefault(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().setdefault(name.lower(), default)

    def update(self, *others: object, **kwargs: str | None) -> None:  # type: ignore[override]
        for other in (*others, kwargs):
            pairs = other.items() if isinstance(other, dict) else other
            for name, value in pairs:  # type: ignore[attr-defined]
                self[name] = value


# --- escapes -----------------------------------------------------------------------------


def _unescape(text: str, allowed: frozenset[str], what: str) -> str:
    """Check every char is allowed or a %HH escape, and decode the escapes.

    Octets are decoded as UTF-8 with surrogateescape, so non-UTF-8 escapes survive a round trip.
    """
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise UriError(f"bad %-escape in {what}: {text!r}")
            out.append(int(pair, 16))
            i += 3
            continue
        if ch not in allowed:
            raise UriError(f"character {ch!r} not allowed in {what}: {text!r}")
        out.append(ord(ch))
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _escape(text: str, allowed: frozenset[str]) -> str:
    parts: list[str] = []
    for ch in text:
        if ch in allowed:
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(parts)


# --- URIs --------------------------------------------------------------------------------


@dataclass
class SipUri:
    """A sip:, sips: or tel: URI. `user`, `password`, parameter and header values are decoded.

    For tel: URIs the telephone number is `user` and `host` is empty. `host` keeps an IPv6
    reference in brackets, as written in a URI ("[2001:db8::1]").
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = field(default_factory=Params)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params):
            self.params = Params(self.params)

    def __str__(self) -> str:
        if self.scheme == "tel":
            text = f"tel:{self.user or ''}"
        else:
            userinfo = ""
            if self.user is not None:
                userinfo = _escape(self.user, _USER_CHARS)
                if self.password is not None:
                    userinfo += ":" + _escape(self.password, _PASSWORD_CHARS)
                userinfo += "@"
            port = f":{self.port}" if self.port is not None else ""
            text = f"{self.scheme}:{userinfo}{self.host}{port}"
        for name, value in self.params.items():
            text += ";" + _escape(name, _PARAM_CHARS)
            if value is not None:
                text += "=" + _escape(value, _PARAM_CHARS)
        if self.headers:
            text += "?" + "&".join(
                f"{_escape(n, _HEADER_CHARS)}={_escape(v, _HEADER_CHARS)}"
                for n, v in self.headers.items()
            )
        return text

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass
class AbsoluteUri:
    """Any other absolute URI (http:, urn:, isbn:, ...), kept opaque."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | AbsoluteUri


def _split_scheme(text: str) -> tuple[str, str]:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise UriError(f"not an absolute URI: {text!r}")
    return scheme.lower(), rest


def _parse_host(text: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise UriError(f"unterminated IPv6 reference: {text!r}")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError as exc:
            raise UriError(f"bad IPv6 reference: {text!r}") from exc
        return text
    if not _HOSTNAME_RE.match(text):
        raise UriError(f"bad host: {text!r}")
    return text


def parse_port(text: str) -> int:
    if not (1 <= len(text) <= 5 and text.isascii() and text.isdigit()):
        raise UriError(f"bad port: {text!r}")
    port = int(text)
    if port > 65535:
        raise UriError(f"port out of range: {text!r}")
    return port


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UriError(f"unterminated IPv6 reference: {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return _parse_host(host), None
        if not rest.startswith(":"):
            raise UriError(f"bad hostport: {text!r}")
        return _parse_host(host), parse_port(rest[1:])
    host, colon, port = text.partition(":")
    return _parse_host(host), (parse_port(port) if colon else None)


def _parse_uri_params(text: str) -> Params:
    params = Params()
    if not text:
        return params
    for item in text.split(";"):
        raw_name, eq, raw_value = item.partition("=")
        name = _unescape(raw_name, _PARAM_CHARS, "URI parameter")
        if not name:
            raise UriError(f"empty URI parameter in {text!r}")
        value = _unescape(raw_value, _PARAM_CHARS, "URI parameter") if eq else None
        if eq and not value:
            raise UriError(f"empty URI parameter value in {text!r}")
        if name in params:
            raise UriError(f"duplicate URI parameter {name!r}")
        params[name] = value
    return params


def _parse_uri_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in text.split("&"):
        raw_name, eq, raw_value = item.partition("=")
        name = _unescape(raw_name, _HEADER_CHARS, "URI header")
        if not eq or not name:
            raise UriError(f"bad URI header {item!r}")
        if name in headers:
            raise UriError(f"duplicate URI header {name!r}")
        headers[name] = _unescape(raw_value, _HEADER_CHARS, "URI header")
    return headers


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    if rest.count("@") > 1:
        raise UriError(f"several '@' in {text!r}")
    userinfo, at, hostpart = rest.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = _unescape(raw_user, _USER_CHARS, "user part")
        if not user:
            raise UriError(f"empty user part in {text!r}")
        if colon:
            password = _unescape(raw_password, _PASSWORD_CHARS, "password")
    hostpart, question, raw_headers = hostpart.partition("?")
    hostport, _, raw_params = hostpart.partition(";")
    host, port = _parse_hostport(hostport)
    if ";" in hostpart and not raw_params:
        raise UriError(f"empty URI parameter in {text!r}")
    params = _parse_uri_params(raw_params)
    headers = _parse_uri_headers(raw_headers) if question else {}
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_tel(rest: str, text: str) -> SipUri:
    number, semi, raw_params = rest.partition(";")
    if not number or any(ch not in _TEL_CHARS for ch in number):
        raise UriError(f"bad telephone number in {text!r}")
    if semi and not raw_params:
        raise UriError(f"empty URI parameter in {text!r}")
    return SipUri("tel", number, None, "", None, _parse_uri_params(raw_params), {})


def parse_absolute_uri(text: str) -> SipUri | AbsoluteUri:
    """Parse any absolute URI: sip/sips/tel into SipUri, other schemes into AbsoluteUri."""
    if not isinstance(text, str) or not text:
        raise UriError("empty URI")
    scheme, rest = _split_scheme(text)
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        return _parse_tel(rest, text)
    if not rest or any(ch not in _OPAQUE_CHARS for ch in rest):
        raise UriError(f"bad absolute URI: {text!r}")
    for match in re.finditer("%", rest):
        pair = rest[match.start() + 1 : match.start() + 3]
        if len(pair) != 2 or not all(c in _HEX for c in pair):
            raise UriError(f"bad %-escape in {text!r}")
    return AbsoluteUri(scheme, rest)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips: or tel: URI; UnsupportedSchemeError for other absolute URIs."""
    uri = parse_absolute_uri(text)
    if isinstance(uri, AbsoluteUri):
        raise UnsupportedSchemeError(uri.scheme)
    return uri


# --- header values: generic parameters, quoted strings -----------------------------------


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at text[i] == '"'; returns (unescaped content, next i)."""
    out: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] in "\r\n":
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch in "\r\n" or (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f":
            raise UriError(f"control character in quoted string: {text!r}")
        out.append(ch)
        i += 1
    raise UriError(f"unterminated quoted string: {text!r}")


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in "\r\n":
            ch = " "  # cannot be carried in a quoted-string at all
        if ch in '"\\' or (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f":
            out.append("\\")
        out.append(ch)
    return '"' + "".join(out) + '"'


_GEN_VALUE_CHARS = TOKEN_CHARS | frozenset("[]:")


def _parse_header_params(text: str, i: int) -> Params:
    """Parse `*( SEMI generic-param )` from text[i:] to the end. Quoted values keep quotes."""
    params = Params()
    n = len(text)
    i = _skip_ws(text, i)
    while i < n:
        if text[i] != ";":
            raise UriError(f"expected ';' at {text[i:]!r}")
        i = _skip_ws(text, i + 1)
        start = i
        while i < n and text[i] in TOKEN_CHARS:
            i += 1
        name = text[start:i]
        if not name:
            raise UriError(f"empty parameter in {text!r}")
        i = _skip_ws(text, i)
        value: str | None = None
        if i < n and text[i] == "=":
            i = _skip_ws(text, i + 1)
            if i < n and text[i] == '"':
                _, end = _read_quoted(text, i)
                value, i = text[i:end], end
            else:
                start = i
                while i < n and text[i] in _GEN_VALUE_CHARS:
                    i += 1
                value = text[start:i]
                if not value:
                    raise UriError(f"empty value for parameter {name!r}")
            i = _skip_ws(text, i)
        if name in params:
            raise UriError(f"duplicate parameter {name!r}")
        params[name] = value
    return params


def _format_header_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params.items())


def unquote(value: str | None) -> str | None:
    """A generic-param value without its quotes and escapes (tokens are returned as they are)."""
    if value is None or not value.startswith('"'):
        return value
    content, end = _read_quoted(value, 0)
    if end != len(value):
        raise UriError(f"text after quoted string: {value!r}")
    return content


# --- name-addr ---------------------------------------------------------------------------


@dataclass
class NameAddr:
    """A From/To/Contact/Route/Refer-To value: display name, URI, header parameters.

    `display_name` is unquoted (escapes removed); None when absent. `params` are the header's
    parameters (tag, expires, q ...); quoted-string values keep their quotes.
    """

    display_name: str | None
    uri: SipUri | AbsoluteUri
    params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params):
            self.params = Params(self.params)

    def __str__(self) -> str:
        name = _quote(self.display_name) + " " if self.display_name is not None else ""
        return f"{name}<{self.uri}>{_format_header_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def parse_name_addr(text: str) -> NameAddr:
    """Parse `name-addr / addr-spec` followed by header parameters (RFC 3261 §20.10).

    In the addr-spec form (no <>) everything after the first ';' belongs to the header, and
    the URI may not hold ',', '?' or ';'.
    """
    if not isinstance(text, str):
        raise UriError("not text")
    i = _skip_ws(text, 0)
    n = len(text)
    display: str | None = None
    if i < n and text[i] == '"':
        display, i = _read_quoted(text, i)
        i = _skip_ws(text, i)
        if i >= n or text[i] != "<":
            raise UriError(f"quoted display name not followed by <URI>: {text!r}")
    else:
        angle = text.find("<", i)
        prefix = text[i:angle] if angle >= 0 else None
        if prefix is not None and all(ch in TOKEN_CHARS or ch in _WS for ch in prefix):
            tokens = prefix.split()
            display = " ".join(tokens) if tokens else None
            i = angle
        elif prefix is not None and ":" not in prefix:
            raise UriError(f"display name must be tokens or a quoted string: {text!r}")
        else:
            return _parse_addr_spec(text, i)
    end = text.find(">", i)
    if end < 0:
        raise UriError(f"unterminated <URI>: {text!r}")
    inner = text[i + 1 : end]
    if any(ch in _WS for ch in inner):
        raise UriError(f"whitespace inside <URI>: {text!r}")
    uri = parse_absolute_uri(inner)
    return NameAddr(display, uri, _checked(_parse_header_params(text, end + 1)))


def _checked(params: Params) -> Params:
    if "tag" in params and params["tag"] is None:
        raise UriError("tag parameter without a value")
    return params


def _parse_addr_spec(text: str, i: int) -> NameAddr:
    semi = text.find(";", i)
    raw_uri = (text[i:semi] if semi >= 0 else text[i:]).rstrip(_WS)
    if not raw_uri:
        raise UriError(f"no URI in {text!r}")
    if any(ch in _WS or ch in ",?<>\"" for ch in raw_uri):
        raise UriError(f"addr-spec with ',', '?', space or quotes must be in <>: {text!r}")
    uri = parse_absolute_uri(raw_uri)
    params = _parse_header_params(text, semi) if semi >= 0 else Params()
    return NameAddr(None, uri, _checked(params))


def parse_name_addr_list(text: str) -> list[NameAddr]:
    """Every name-addr of a comma-separated field (Contact, Route, Record-Route)."""
    values = split_comma_values(text)
    if not values:
        raise UriError("empty header value")
    return [parse_name_addr(value) for value in values]


def tag_of(value: str | None) -> str | None:
    """The tag parameter of a From/To value; None when absent or the value is malformed."""
    if value is None:
        return None
    try:
        return parse_name_addr(value).tag
    except UriError:
        return None


# --- Via, CSeq ---------------------------------------------------------------------------


@dataclass
class Via:
    """One Via value. `protocol` is "SIP/2.0"; `transport` is upper-cased ("UDP", "TLS")."""

    protocol: str
    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params):
            self.params = Params(self.params)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}" + _format_header_params(
            self.params
        )

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in; None when absent or empty (RFC 3581)."""
        value = self.params.get("rport")
        if value is None:
            return None
        try:
            return parse_port(value)
        except UriError:
            return None


_VIA_RE = re.compile(
    r"[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^ \t:;\[]+)(?:[ \t]*:[ \t]*([^ \t;]*))?"
)


def parse_via(text: str) -> Via:
    """Parse one Via value (split a field with `split_comma_values` first)."""
    if not isinstance(text, str):
        raise UriError("not text")
    match = _VIA_RE.match(text)
    if not match:
        raise UriError(f"bad Via: {text!r}")
    name, version, transport, host, port = match.groups()
    for part in (name, version, transport):
        if not is_token(part):
            raise UriError(f"bad Via sent-protocol: {text!r}")
    host = _parse_host(host)
    params = _parse_header_params(text, match.end())
    for key in ("branch", "received", "maddr", "ttl"):
        if key in params and params[key] is None:
            raise UriError(f"Via parameter {key} needs a value: {text!r}")
    return Via(
        f"{name.upper()}/{version}",
        transport.upper(),
        host,
        parse_port(port) if port is not None else None,
        params,
    )


MAX_CSEQ = 2**31 - 1


def parse_cseq(text: str) -> tuple[int, str]:
    """'314159 INVITE' -> (314159, 'INVITE'); the number must be at most 2**31-1."""
    if not isinstance(text, str):
        raise UriError("not text")
    parts = text.split()
    if len(parts) != 2:
        raise UriError(f"bad CSeq: {text!r}")
    number, method = parts
    if not (number.isascii() and number.isdigit()):
        raise UriError(f"bad CSeq number: {text!r}")
    if len(number.lstrip("0")) > 10 or int(number) > MAX_CSEQ:
        raise UriError(f"CSeq number over 2**31-1: {text!r}")
    if not is_token(method):
        raise UriError(f"bad CSeq method: {text!r}")
    return int(number), method


@dataclass
class MediaType:
    """A Content-Type or Accept value: type and subtype lower-cased, parameters as written."""

    type: str
    subtype: str
    params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        if not isinstance(self.params, Params):
            self.params = Params(self.params)

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}" + _format_header_params(self.params)

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"


_MEDIA_RE = re.compile(r"[ \t]*([^ \t/;]+)[ \t]*/[ \t]*([^ \t/;]+)")


def parse_media_type(text: str) -> MediaType:
    """Parse `type/subtype *(;param)` (Content-Type, one Accept media-range)."""
    if not isinstance(text, str):
        raise UriError("not text")
    match = _MEDIA_RE.match(text)
    if not match or not is_token(match[1]) or not is_token(match[2]):
        raise UriError(f"bad media type: {text!r}")
    return MediaType(match[1].lower(), match[2].lower(), _parse_header_params(text, match.end()))
