"""SDP (RFC 4566) and offer/answer (RFC 3264) for a G.711 phone.

Sans-IO: `parse_sdp` turns a body into a `SessionDescription`, `to_bytes()` turns it back
into CRLF lines in RFC 4566 §5 order. `answer_offer` picks one audio stream and codec and
says how to run the media (`NegotiatedMedia`); `build_offer` makes our own offers
(re-INVITE for hold and session refresh); `update_version` keeps o= honest (RFC 3264 §8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Connection",
    "DIRECTIONS",
    "MediaDescription",
    "NegotiatedMedia",
    "NoCommonCodec",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Timing",
    "answer_offer",
    "build_offer",
    "parse_sdp",
    "update_version",
]


class SdpError(ValueError):
    """A body that is not a usable session description."""


class NoCommonCodec(SdpError):
    """No audio stream in the offer has a codec we can use (the UA answers 488)."""


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# What the answerer says for each offered direction (RFC 3264 §6.1).
_MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
# Static payload types we can speak without an rtpmap (RFC 3551 table 4).
_STATIC_AUDIO = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_STATIC_PT_BY_NAME = {name: pt for pt, (name, _) in _STATIC_AUDIO.items()}
_RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")  # no SRTP: RTP/SAVP streams are rejected
_TELEPHONE_EVENT = "telephone-event"
_TYPE_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_MAX_LINES = 2000
_MAX_MEDIA = 64
_HOLD_ADDRESSES = ("0.0.0.0",)  # RFC 2543 hold; "::" is not a hold convention in practice


@dataclass
class Origin:
    """o= line."""

    username: str
    session_id: int
    session_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class Connection:
    """c= line; `address` may carry a multicast /ttl suffix, kept verbatim."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass
class Timing:
    """t= line with its r= repeat lines (kept verbatim)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass
class RtpMap:
    """a=rtpmap value: encoding name, clock rate and optional channel count."""

    encoding: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        suffix = f"/{self.channels}" if self.channels is not None else ""
        return f"{self.encoding}/{self.clock_rate}{suffix}"


@dataclass
class MediaDescription:
    """One m= section. Attributes not modelled here stay in `attributes` as "name[:value]"."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    key: str | None = None
    rtpmap: dict[str, RtpMap] = field(default_factory=dict)
    fmtp: dict[str, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str | None = None
    attributes: list[str] = field(default_factory=list)

    def encoding_of(self, fmt: str) -> tuple[str, int] | None:
        """(encoding name, clock rate) of a payload format, from rtpmap or the static table."""
        mapped = self.rtpmap.get(fmt)
        if mapped is not None:
            return mapped.encoding, mapped.clock_rate
        if fmt.isdigit() and int(fmt) in _STATIC_AUDIO:
            return _STATIC_AUDIO[int(fmt)]
        return None

    def lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.media} {port} {' '.join([self.proto, *self.formats])}".rstrip()]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={bandwidth}" for bandwidth in self.bandwidths)
        if self.key is not None:
            out.append(f"k={self.key}")
        extra = [pt for pt in {**self.rtpmap, **self.fmtp} if pt not in self.formats]
        ordered = [*self.formats, *extra]
        for fmt in ordered:
            if fmt in self.rtpmap:
                out.append(f"a=rtpmap:{fmt} {self.rtpmap[fmt]}")
            if fmt in self.fmtp:
                out.append(f"a=fmtp:{fmt} {self.fmtp[fmt]}")
        if self.ptime is not None:
            out.append(f"a=ptime:{self.ptime}")
        out.extend(f"a={attribute}" for attribute in self.attributes)
        if self.direction is not None:
            out.append(f"a={self.direction}")
        return out


@dataclass
class SessionDescription:
    """A whole SDP body."""

    origin: Origin
    session_name: str = "-"
    media: list[MediaDescription] = field(default_factory=list)
    connection: Connection | None = None
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    direction: str | None = None
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    bandwidths: list[str] = field(default_factory=list)
    zone: str | None = None
    key: str | None = None
    attributes: list[str] = field(default_factory=list)
    version: int = 0

    def lines(self) -> list[str]:
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out.extend(f"e={email}" for email in self.emails)
        out.extend(f"p={phone}" for phone in self.phones)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={bandwidth}" for bandwidth in self.bandwidths)
        for timing in self.timings:
            out.append(f"t={timing.start} {timing.stop}")
            out.extend(f"r={repeat}" for repeat in timing.repeats)
        if self.zone is not None:
            out.append(f"z={self.zone}")
        if self.key is not None:
            out.append(f"k={self.key}")
        out.extend(f"a={attribute}" for attribute in self.attributes)
        if self.direction is not None:
            out.append(f"a={self.direction}")
        for media in self.media:
            out.extend(media.lines())
        return out

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")

    def media_direction(self, index: int) -> str:
        """Effective direction of one stream: media attribute, else session, else sendrecv."""
        return self.media[index].direction or self.direction or "sendrecv"

    def media_connection(self, index: int) -> Connection | None:
        """Effective c= of one stream: its own, else the session's."""
        return self.media[index].connection or self.connection


# ---------------------------------------------------------------- parsing


def _int(text: str, what: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise SdpError(f"{what} is not a number: {text[:40]!r}")
    return int(text)


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"o= needs 6 fields, got {len(parts)}")
    return Origin(
        username=parts[0],
        session_id=_int(parts[1], "o= session id"),
        session_version=_int(parts[2], "o= session version"),
        nettype=parts[3],
        addrtype=parts[4],
        address=parts[5],
    )


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"c= needs 3 fields, got {len(parts)}")
    return Connection(nettype=parts[0], addrtype=parts[1], address=parts[2])


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"m= needs media, port and proto: {value[:60]!r}")
    port_text, _, count_text = parts[1].partition("/")
    port = _int(port_text, "m= port")
    if port > 65535:
        raise SdpError(f"m= port {port} out of range")
    return MediaDescription(
        media=parts[0],
        port=port,
        port_count=_int(count_text, "m= port count") if count_text else None,
        proto=parts[2],
        formats=parts[3:],
    )


def _parse_rtpmap(value: str) -> tuple[str, RtpMap] | None:
    fmt, _, spec = value.partition(" ")
    pieces = spec.strip().split("/")
    if not fmt or len(pieces) not in (2, 3):
        return None
    try:
        rate = _int(pieces[1], "rtpmap clock rate")
        channels = _int(pieces[2], "rtpmap channels") if len(pieces) == 3 else None
    except SdpError:
        return None
    return fmt, RtpMap(encoding=pieces[0], clock_rate=rate, channels=channels)


def _apply_attribute(
    value: str, media: MediaDescription | None, session: SessionDescription
) -> None:
    """Put one a= value where it belongs; anything unusual is kept verbatim."""
    name, colon, rest = value.partition(":")
    if not colon and name in DIRECTIONS:
        if media is None:
            session.direction = name
        else:
            media.direction = name
        return
    if media is not None and colon:
        if name == "rtpmap":
            parsed = _parse_rtpmap(rest)
            if parsed is not None and parsed[0] not in media.rtpmap:
                media.rtpmap[parsed[0]] = parsed[1]
                return
        elif name == "fmtp":
            fmt, _, params = rest.partition(" ")
            if fmt and fmt not in media.fmtp:
                media.fmtp[fmt] = params.strip()
                return
        elif name == "ptime" and media.ptime is None:
            text = rest.strip()
            if text.isascii() and text.isdigit() and 0 < int(text) <= 10000:
                media.ptime = int(text)
                return
    (session.attributes if media is None else media.attributes).append(value)


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body; SdpError for anything that is not one."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data).decode("utf-8", "surrogateescape")
    elif isinstance(data, str):
        text = data
    else:
        raise SdpError(f"cannot parse SDP from {type(data).__name__}")
    # Blank lines (a trailing CRLF, a stray one mid-body) carry nothing; skip them.
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines:
        raise SdpError("empty session description")
    if len(lines) > _MAX_LINES:
        raise SdpError(f"more than {_MAX_LINES} lines")

    session: SessionDescription | None = None
    version: int | None = None
    media: MediaDescription | None = None
    timings: list[Timing] = []
    for number, line in enumerate(lines, start=1):
        if len(line) < 2 or line[1] != "=" or line[0] not in _TYPE_LETTERS:
            raise SdpError(f"line {number} is not <type>=<value>: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if number == 1:
            if kind != "v":
                raise SdpError("session description must start with v=")
            version = _int(value, "v=")
            continue
        if number == 2:
            if kind != "o":
                raise SdpError("o= must follow v=")
            session = SessionDescription(origin=_parse_origin(value), timings=timings)
            session.version = version or 0
            continue
        assert session is not None
        if kind == "m":
            if len(session.media) >= _MAX_MEDIA:
                raise SdpError(f"more than {_MAX_MEDIA} media streams")
            media = _parse_media_line(value)
            session.media.append(media)
        elif kind == "a":
            _apply_attribute(value, media, session)
        elif kind == "c":
            if media is None:
                session.connection = _parse_connection(value)
            else:
                media.connection = _parse_connection(value)
        elif kind == "b":
            (session.bandwidths if media is None else media.bandwidths).append(value)
        elif kind == "i":
            if media is None:
                session.information = value
            else:
                media.information = value
        elif kind == "k":
            if media is None:
                session.key = value
            else:
                media.key = value
        elif media is not None:
            continue  # session-only line inside a media section: ignored (RFC 4566 §5)
        elif kind == "s":
            session.session_name = value
        elif kind == "t":
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(f"t= needs 2 fields: {value[:40]!r}")
            timings.append(Timing(_int(parts[0], "t= start"), _int(parts[1], "t= stop")))
        elif kind == "r" and timings:
            timings[-1].repeats.append(value)
        elif kind == "z":
            session.zone = value
        elif kind == "u":
            session.uri = value
        elif kind == "e":
            session.emails.append(value)
        elif kind == "p":
            session.phones.append(value)
        # Other letters are unknown extensions: ignored rather than failing the call.
    if session is None:
        raise SdpError("session description has no o= line")
    if not timings:
        timings.append(Timing())  # t= is mandatory, but some phones leave it out
    return session


# ---------------------------------------------------------------- offer / answer


@dataclass(frozen=True)
class NegotiatedMedia:
    """How to run the call's audio after offer/answer.

    `direction` is ours (what we wrote in our SDP). `ptime` is the packet time the peer
    asked to receive (20 when it did not say).
    """

    codec: str
    payload_type: int
    clock_rate: int
    telephone_event_pt: int | None
    remote_address: str
    remote_port: int
    direction: str
    ptime: int = 20
    media_index: int = 0


def _event_set(fmtp: str | None) -> set[int]:
    """Events a telephone-event fmtp lists; absent means 0-15 (RFC 4733 §2.4.1)."""
    if fmtp is None or not fmtp.strip():
        return set(range(16))
    events: set[int] = set()
    for item in fmtp.replace(" ", "").split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            continue
        first, last = int(low), int(high) if dash else int(low)
        if first <= last <= 255:
            events.update(range(first, last + 1))
    return events


def _event_ranges(events: set[int]) -> str:
    ordered = sorted(events)
    ranges: list[str] = []
    start = previous = ordered[0]
    for event in [*ordered[1:], None]:
        if event is not None and event == previous + 1:
            previous = event
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if event is not None:
            start = previous = event
    return ",".join(ranges)


def _choose_codec(media: MediaDescription, codecs: Sequence[str]) -> tuple[str, int, int] | None:
    """First codec in OUR order the stream offers: (name, payload type, clock rate)."""
    for wanted in codecs:
        for fmt in media.formats:
            encoding = media.encoding_of(fmt)
            if encoding is None or not fmt.isdigit() or int(fmt) > 127:
                continue
            mapped = media.rtpmap.get(fmt)
            if mapped is not None and mapped.channels not in (None, 1):
                continue
            if encoding[0].upper() == wanted.upper() and encoding[1] == 8000:
                return wanted.upper(), int(fmt), encoding[1]
    return None


def _telephone_event(media: MediaDescription) -> tuple[int, str] | None:
    """(payload type, answer fmtp) for offered 8 kHz telephone-event carrying DTMF digits."""
    for fmt in media.formats:
        encoding = media.encoding_of(fmt)
        if encoding is None or encoding[0].lower() != _TELEPHONE_EVENT or encoding[1] != 8000:
            continue
        if not fmt.isdigit() or int(fmt) > 127:
            continue
        events = _event_set(media.fmtp.get(fmt)) & set(range(17))  # DTMF 0-9 * # A-D, flash
        if events:
            return int(fmt), _event_ranges(events)
    return None


def _offer_direction(offer: SessionDescription, index: int) -> str:
    """The offerer's direction, with c=0.0.0.0 (RFC 2543 hold) meaning it will not receive."""
    direction = offer.media_direction(index)
    if direction not in DIRECTIONS:
        direction = "sendrecv"
    connection = offer.media_connection(index)
    if connection is not None and connection.address in _HOLD_ADDRESSES:
        direction = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    return direction


def _origin(username: str, session_id: int, session_version: int, address: str) -> Origin:
    return Origin(
        username=username,
        session_id=session_id,
        session_version=session_version,
        addrtype="IP6" if ":" in address else "IP4",
        address=address,
    )


def _rejected(media: MediaDescription) -> MediaDescription:
    """The answer's entry for a stream we decline: same type, port 0 (RFC 3264 §6)."""
    return MediaDescription(
        media=media.media, port=0, proto=media.proto, formats=list(media.formats) or ["0"]
    )


def answer_offer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    session_id: int,
    session_version: int,
    username: str = "agentd",
    ptime: int = 20,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an offer with one audio stream; NoCommonCodec when none is usable."""
    if not 0 < local_port <= 65535:
        raise SdpError(f"local port {local_port} out of range")
    answer = SessionDescription(
        origin=_origin(username, session_id, session_version, local_address),
        session_name=username,
        connection=Connection(local_address, addrtype="IP6" if ":" in local_address else "IP4"),
        timings=[dataclasses.replace(t, repeats=list(t.repeats)) for t in offer.timings]
        or [Timing()],
    )
    negotiated: NegotiatedMedia | None = None
    for index, media in enumerate(offer.media):
        usable = (
            negotiated is None
            and media.media == "audio"
            and media.port != 0
            and media.proto.upper() in _RTP_PROTOS
        )
        chosen = _choose_codec(media, codecs) if usable else None
        connection = offer.media_connection(index)
        if chosen is None or connection is None:
            answer.media.append(_rejected(media))
            continue
        codec, payload_type, clock_rate = chosen
        ours = _MIRROR[_offer_direction(offer, index)]
        stream = MediaDescription(
            media="audio",
            port=local_port,
            proto=media.proto,
            formats=[str(payload_type)],
            rtpmap={str(payload_type): RtpMap(codec, clock_rate)},
            ptime=ptime,
            direction=ours,
        )
        event = _telephone_event(media)
        if event is not None:
            event_pt, event_fmtp = event
            stream.formats.append(str(event_pt))
            stream.rtpmap[str(event_pt)] = RtpMap(_TELEPHONE_EVENT, 8000)
            stream.fmtp[str(event_pt)] = event_fmtp
        answer.media.append(stream)
        negotiated = NegotiatedMedia(
            codec=codec,
            payload_type=payload_type,
            clock_rate=clock_rate,
            telephone_event_pt=event[0] if event is not None else None,
            remote_address=connection.address,
            remote_port=media.port,
            direction=ours,
            ptime=media.ptime or 20,
            media_index=index,
        )
    if negotiated is None:
        offered = ", ".join(
            f"{m.media} {m.proto} {' '.join(m.formats)}" for m in offer.media
        ) or "no media"
        raise NoCommonCodec(f"no usable audio stream with {list(codecs)} in offer ({offered})")
    return answer, negotiated


def build_offer(
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
    direction: str = "sendrecv",
    ptime: int = 20,
    username: str = "agentd",
) -> SessionDescription:
    """Our own offer (outgoing call, hold with direction="sendonly", resume, refresh)."""
    if direction not in DIRECTIONS:
        raise SdpError(f"unknown direction {direction!r}")
    if not 0 < local_port <= 65535:
        raise SdpError(f"local port {local_port} out of range")
    if not codecs:
        raise SdpError("an offer needs at least one codec")
    stream = MediaDescription(
        media="audio", port=local_port, proto="RTP/AVP", formats=[], ptime=ptime,
        direction=direction,
    )
    for name in codecs:
        payload_type = _STATIC_PT_BY_NAME.get(name.upper())
        if payload_type is None:
            raise SdpError(f"no static payload type for codec {name!r}")
        stream.formats.append(str(payload_type))
        stream.rtpmap[str(payload_type)] = RtpMap(name.upper(), 8000)
    if telephone_event_pt is not None:
        if not 96 <= telephone_event_pt <= 127:
            raise SdpError(f"telephone-event payload type {telephone_event_pt} is not dynamic")
        stream.formats.append(str(telephone_event_pt))
        stream.rtpmap[str(telephone_event_pt)] = RtpMap(_TELEPHONE_EVENT, 8000)
        stream.fmtp[str(telephone_event_pt)] = "0-16"
    return SessionDescription(
        origin=_origin(username, session_id, session_version, local_address),
        session_name=username,
        connection=Connection(local_address, addrtype="IP6" if ":" in local_address else "IP4"),
        media=[stream],
    )


def update_version(
    previous: SessionDescription, candidate: SessionDescription
) -> SessionDescription:
    """`candidate` under `previous`'s o= identity: version + 1 if anything changed, else same.

    RFC 3264 §8: a new offer or answer in a dialog keeps the session id and bumps the
    version by exactly one when the description differs; an unchanged one keeps it.
    """
    def without_version(description: SessionDescription) -> SessionDescription:
        origin = dataclasses.replace(description.origin, session_version=0)
        return dataclasses.replace(description, origin=origin)

    same_id = dataclasses.replace(candidate.origin, session_id=previous.origin.session_id)
    candidate = dataclasses.replace(candidate, origin=same_id)
    changed = without_version(candidate) != without_version(previous)
    version = previous.origin.session_version + (1 if changed else 0)
    return dataclasses.replace(
        candidate, origin=dataclasses.replace(candidate.origin, session_version=version)
    )
