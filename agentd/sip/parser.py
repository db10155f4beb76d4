"""SIP message parser (RFC 3261 §7, §25) for datagrams, and a framer for stream transports.

Sans-IO. `parse_message` turns one datagram into a `SipRequest` or `SipResponse`;
`StreamFramer` cuts a TCP/TLS byte stream into messages by Content-Length. Anything malformed
raises `SipParseError` and nothing else. The error says what a UA should do: `status` is the
response to send to a bad request (400, 505 for an unknown SIP version, 513 when too large),
None when the message is to be dropped silently (any bad response, an empty keepalive);
`request` is a best-effort parse of the start line and header fields to build that response
from, None when even those could not be read (then the UA can only drop the message).
"""

from __future__ import annotations

import re

from agentd.sip.message import SIP_VERSION, Headers, SipMessage, SipRequest, SipResponse
from agentd.sip.message import split_comma_values
from agentd.sip.uri import (
    SipUri,
    UriError,
    is_token,
    parse_absolute_uri,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_via,
)

DEFAULT_MAX_SIZE = 65536
MAX_DELTA_SECONDS = 2**32 - 1
MAX_MAX_FORWARDS = 255
# Ten digits already exceed any Content-Length a message under the size limit can honour.
_MAX_LENGTH_DIGITS = 10

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
_CALL_ID_WORD = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "-.!%*_+`'~()<>:\\\"/[]?{}"
)
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


class SipParseError(ValueError):
    """A malformed SIP message. See the module docstring for `status` and `request`."""

    def __init__(
        self, reason: str, status: int | None = None, request: SipRequest | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request = request


class _Fatal(Exception):
    """Internal: the stream framing is lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Bad(Exception):
    """Internal: a grammar failure; parse_message adds status and the partial request."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _has_control(text: str) -> bool:
    return any((ord(ch) < 0x20 and ch != "\t") or ch == "\x7f" for ch in text)


def _split_head(head: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a decoded header section into its start line and unfolded (name, value) fields."""
    lines = head.split("\r\n")
    for line in lines:
        if "\r" in line or "\n" in line:
            raise _Bad("bare CR or LF in the header section")
    start_line = lines[0]
    fields: list[tuple[str, list[str]]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            # LWS continuation (RFC 3261 §7.3.1): same value, folding means one SP.
            if not fields:
                raise _Bad("continuation line before any header field")
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            raise _Bad(f"bad header line {line[:80]!r}")
        fields.append((name, [value]))
    return start_line, [
        (name, " ".join(p.strip(" \t") for p in parts if p.strip(" \t")))
        for name, parts in fields
    ]


def _digits(value: str, limit: int, what: str) -> int:
    text = value.strip(" \t")
    if not text or not (text.isascii() and text.isdigit()):
        raise _Bad(f"{what} is not a number: {value[:40]!r}")
    if len(text.lstrip("0")) > len(str(limit)) or int(text) > limit:
        raise _Bad(f"{what} too large: {value[:40]!r}")
    return int(text)


def _parse_request_line(line: str) -> tuple[str, str]:
    if _has_control(line):
        raise _Bad("control character in the request line")
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _Bad("request line is not 'Method SP Request-URI SP SIP-Version'")
    method, uri, version = parts
    if not _VERSION_RE.match(version):
        raise _Bad(f"bad SIP version {version[:20]!r}")
    if version.upper() != SIP_VERSION:
        raise _Bad(f"unsupported SIP version {version[:20]!r}", status=505)
    if not is_token(method):
        raise _Bad(f"bad method {method[:40]!r}")
    if uri.startswith("<"):
        raise _Bad("Request-URI must not be enclosed in <>")
    try:
        parsed = parse_absolute_uri(uri)
    except UriError as exc:
        raise _Bad(f"bad Request-URI: {exc}") from None
    if isinstance(parsed, SipUri) and parsed.headers:
        raise _Bad("headers are not allowed in a Request-URI")
    return method, uri


def _parse_status_line(line: str) -> tuple[int, str]:
    version, _, rest = line.partition(" ")
    code, space, reason = rest.partition(" ")
    if not _VERSION_RE.match(version) or version.upper() != SIP_VERSION:
        raise _Bad(f"unsupported SIP version {version[:20]!r}")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
        raise _Bad(f"bad status code {code[:20]!r}")
    if _has_control(reason):
        raise _Bad("control character in the reason phrase")
    return int(code), reason


def _check_call_id(value: str) -> None:
    local, at, host = value.partition("@")
    if not local or (at and not host) or "@" in host:
        raise _Bad(f"bad Call-ID {value[:60]!r}")
    if any(ch not in _CALL_ID_WORD for ch in local + host):
        raise _Bad(f"bad Call-ID {value[:60]!r}")


def _check_fields(headers: Headers, method: str | None) -> None:
    """Grammar checks of the fields the transaction and dialog layers rely on."""
    try:
        for value in headers.get_all("CSeq"):
            _, cseq_method = parse_cseq(value)
            if method is not None and cseq_method != method:
                raise _Bad(f"CSeq method {cseq_method[:40]!r} differs from {method[:40]!r}")
        for value in headers.get_all("Call-ID"):
            _check_call_id(value)
        for value in headers.get_all("Max-Forwards"):
            _digits(value, MAX_MAX_FORWARDS, "Max-Forwards")
        for name in ("Expires", "Min-Expires"):
            for value in headers.get_all(name):
                _digits(value, MAX_DELTA_SECONDS, name)
        for value in headers.get_all("Retry-After"):
            _digits(re.split(r"[ \t;(]", value, maxsplit=1)[0], MAX_DELTA_SECONDS, "Retry-After")
        for field_value in headers.get_all("Via"):
            vias = split_comma_values(field_value)
            if not vias:
                raise _Bad("empty Via")
            for via in vias:
                parse_via(via)
        for name in ("From", "To"):
            for value in headers.get_all(name):
                parse_name_addr(value)
        for value in headers.get_all("Contact"):
            if value.strip() != "*":
                parse_name_addr_list(value)
        for name in ("Route", "Record-Route"):
            for value in headers.get_all(name):
                parse_name_addr_list(value)
        for value in headers.get_all("Content-Type"):
            parse_media_type(value)
    except UriError as exc:
        raise _Bad(str(exc)) from None


def _content_length(headers: Headers) -> int | None:
    """The one Content-Length, normalised in place ("045" -> "45", identical duplicates
    folded into the first field) since `to_bytes` re-states it that way: round trips stay exact.
    """
    values = headers.get_all("Content-Length")
    if not values:
        return None
    lengths = {_digits(v, 10**_MAX_LENGTH_DIGITS - 1, "Content-Length") for v in values}
    if len(lengths) > 1:
        raise _Bad("several differing Content-Length values")
    length = lengths.pop()
    headers.set("Content-Length", str(length))
    return length


def _looks_like_response(data: bytes) -> bool:
    return data[:4].upper() == b"SIP/"


def parse_message(
    data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, require_content_length: bool = False
) -> SipMessage:
    """Parse one SIP message (a UDP datagram). Raises SipParseError, never anything else.

    Leading CRLFs are skipped. The body is exactly Content-Length octets; octets after it are
    ignored. Without Content-Length the body is the rest of the datagram, unless
    `require_content_length` (stream transports) makes that an error.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SipParseError("not bytes")
    data = bytes(data)
    if len(data) > max_size:
        status = None if _looks_like_response(data) else 513
        raise SipParseError(f"message larger than {max_size} octets", status)
    start = 0
    while data.startswith(_CRLF, start):
        start += 2
    if start == len(data):
        raise SipParseError("empty message (keepalive)")
    is_response = _looks_like_response(data[start:])
    partial: SipRequest | None = None
    try:
        end = data.find(_HEAD_END, start)
        if end < 0:
            raise _Bad("no empty line after the header section")
        try:
            head = data[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("header section is not UTF-8") from None
        start_line, fields = _split_head(head)
        headers = Headers(fields)
        if not is_response:
            words = start_line.split()
            partial = SipRequest(
                words[0] if words else "", words[1] if len(words) > 1 else "", headers.copy()
            )
        body_start = end + 4
        length = _content_length(headers)
        if length is None:
            if require_content_length:
                raise _Bad("Content-Length is required on a stream transport")
            body = data[body_start:]
        else:
            if body_start + length > len(data):
                raise _Bad("Content-Length larger than the data")
            body = data[body_start : body_start + length]
        if is_response:
            status_code, reason = _parse_status_line(start_line)
            _check_fields(headers, None)
            return SipResponse(status_code, reason, headers, body)
        method, uri = _parse_request_line(start_line)
        _check_fields(headers, method)
        return SipRequest(method, uri, headers, body)
    except _Bad as bad:
        if is_response:
            raise SipParseError(bad.reason) from None
        raise SipParseError(bad.reason, bad.status, partial) from None
    except RecursionError:  # pragma: no cover - no recursion in here; belt and braces
        raise SipParseError("message too deeply nested") from None


_MAX_METHOD_LENGTH = 128  # a longer first token on a stream is taken for garbage
_TOKEN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def _plausible_start(buf: bytearray) -> bool:
    """Can `buf` begin a status line ("SIP/") or a request line (token SP)?"""
    head = bytes(buf[:4]).upper()
    if b"SIP/"[: len(head)] == head:
        return True
    i = 0
    while i < len(buf) and buf[i] in _TOKEN_BYTES:
        i += 1
    if i > _MAX_METHOD_LENGTH:
        return False
    return i == len(buf) or (i > 0 and buf[i] == 0x20)


class StreamFramer:
    """Cut a stream (TCP, TLS) into SIP messages: feed bytes, get whole messages back.

    Content-Length is required; CRLFs between messages (RFC 5626 keepalives) are skipped and
    counted in `keepalives` (one per CRLFCRLF) so the adapter can answer pongs.

    Errors: garbage, a missing or bad Content-Length, or a message over `max_size` break the
    framing: SipParseError is raised, `failed` becomes True and every later call raises again
    (close the connection). A message that is framed right but malformed raises SipParseError
    (with `status`/`request` to answer it) and the framer goes on: call `feed(b"")` to get what
    follows. When an error comes after whole messages in the same call, those are returned and
    the error is raised by the next call.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self.keepalives = 0
        self._buffer = bytearray()
        self._scanned = 0  # header-end search resumes here
        self._crlfs = 0  # CRLFs skipped since the last message, for keepalive counting
        self._fatal: SipParseError | None = None
        self._pending: SipParseError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._fatal is not None

    def feed(self, data: bytes) -> list[SipMessage]:
        if self._fatal is not None:
            raise self._fatal
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SipParseError("not bytes")
        self._buffer += data
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
        messages: list[SipMessage] = []
        while True:
            try:
                message = self._next()
            except _Fatal as fatal:
                self._fatal = SipParseError(fatal.reason)
                self._buffer.clear()
                if messages:
                    return messages
                raise self._fatal from None
            except SipParseError as exc:
                if messages:
                    self._pending = exc
                    return messages
                raise
            if message is None:
                return messages
            messages.append(message)

    def _next(self) -> SipMessage | None:
        buf = self._buffer
        skip = 0
        while buf.startswith(_CRLF, skip):
            skip += 2
        if skip:
            self._crlfs += skip // 2
            self.keepalives += self._crlfs // 2
            self._crlfs %= 2
            del buf[:skip]
            self._scanned = 0
        if not buf or buf == b"\r":
            return None
        self._crlfs = 0
        if not _plausible_start(buf):
            raise _Fatal("garbage on the stream")
        end = buf.find(_HEAD_END, self._scanned)
        if end < 0:
            self._scanned = max(0, len(buf) - 3)
            if len(buf) > self.max_size:
                raise _Fatal(f"header section longer than {self.max_size} octets")
            return None
        length = self._peek_content_length(bytes(buf[:end]))
        total = end + 4 + length
        if total > self.max_size:
            raise _Fatal(f"message larger than {self.max_size} octets")
        if len(buf) < total:
            self._scanned = end  # header end is known; keep finding it in O(1)
            return None
        chunk = bytes(buf[:total])
        del buf[:total]
        self._scanned = 0
        return parse_message(chunk, max_size=self.max_size, require_content_length=True)

    def _peek_content_length(self, head: bytes) -> int:
        try:
            _, fields = _split_head(head.decode("utf-8"))
            length = _content_length(Headers(fields))
        except UnicodeDecodeError:
            raise _Fatal("header section is not UTF-8") from None
        except _Bad as bad:
            raise _Fatal(bad.reason) from None
        if length is None:
            raise _Fatal("Content-Length is required on a stream transport")
        return length
