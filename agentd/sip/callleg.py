"""One answered call, SIP side: the dialog, its RTP session, hang-up and blind transfer.

The application gets a `CallLeg`: it reads `media.frames()`, writes `media.send()`, reads
DTMF digits from `dtmf` (RFC 4733 and SIP INFO merged), and calls `hangup()` or
`transfer()`. `ended` is set however the call ends (our BYE, theirs, CANCEL, a lost ACK,
a lapsed session timer), and `end_reason` says which.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentd.media.g711 import alaw_decode, ulaw_decode
from agentd.media.jitterbuffer import JitterBuffer
from agentd.media.session import RtpSession, open_session_in_range
from agentd.private import Private
from agentd.sip.dialog import Dialog, DialogError, uri_destination
from agentd.sip.message import SipRequest
from agentd.sip.refer import (
    TransferProgress,
    build_refer_to,
    parse_notify,
    user_to_user_value,
)
from agentd.sip.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    answer_offer,
    parse_sdp,
)
from agentd.sip.transaction import TransactionId, response_destination
from agentd.sip.transaction.matching import top_via
from agentd.sip.uri import parse_name_addr, parse_uri

if TYPE_CHECKING:
    from agentd.sip.ua import UserAgent

log = logging.getLogger("agentd.call")

MIN_SE = 90  # RFC 4028 §4: the smallest session interval we accept
_DTMF_RELAY = re.compile(r"Signal\s*=\s*([0-9A-Da-d*#])", re.IGNORECASE)


@dataclass(frozen=True)
class TransferResult:
    ok: bool
    status: int  # final sipfrag (or REFER) status; 0 when nothing came back
    reason: str


class CallLeg:
    def __init__(
        self,
        ua: UserAgent,
        invite: SipRequest,
        source: tuple[str, int],
        invite_tx: TransactionId,
        *,
        local_tag: str,
    ) -> None:
        self.ua = ua
        self.invite = invite
        self.source = source
        self.invite_tx = invite_tx
        self.local_tag = local_tag
        self.call_id = invite.headers.get("Call-ID") or ""
        self.reference = secrets.token_hex(4)  # short id for logs, records and hand-off
        self.caller = _caller_id(invite)
        self.media: RtpSession | None = None
        self.negotiated: NegotiatedMedia | None = None
        self.dialog: Dialog | None = None
        self.dtmf: asyncio.Queue[str] = asyncio.Queue()
        self.answered = asyncio.Event()
        self.confirmed = asyncio.Event()  # ACK received
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.on_hold = False
        self.started_at = time.time()
        via = top_via(invite.headers)
        self._transport = "tcp" if via is not None and via.transport == "TCP" else "udp"
        self._sdp_version = 1
        self._session_id = secrets.randbits(31)
        self._local_sdp: SessionDescription | None = None
        self._pending_ack: asyncio.Event | None = None
        self._transfer_progress: asyncio.Queue[TransferProgress] = asyncio.Queue()
        self._session_interval: int | None = None
        self._we_refresh = False
        self._last_refresh = 0.0
        self._tasks: list[asyncio.Task[object]] = []

    # ---- answering ---------------------------------------------------------------------

    async def run(self) -> None:
        """Answer the INVITE (180, 200 with SDP), then wait for the ACK."""
        settings = self.ua.settings
        invite = self.invite
        content_type = (invite.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not invite.body or content_type != "application/sdp":
            self._reject(488, "Not Acceptable Here", warning="no SDP offer (delayed offer unsupported)")
            return
        try:
            offer = parse_sdp(invite.body)
        except SdpError as exc:
            self._reject(400, "Bad Request", warning=f"bad SDP: {exc}")
            return
        interval = self._session_timer_request()
        if interval == -1:
            return
        try:
            self.dialog = Dialog.from_invite(invite, self.local_tag)
        except DialogError as exc:
            self._reject(400, "Bad Request", warning=str(exc))
            return
        rtp_host = settings.rtp_host or settings.local_host
        try:
            answer, negotiated = answer_offer(
                offer,
                local_address=rtp_host,
                local_port=9,  # placeholder until the socket is bound (port checked > 0)
                codecs=settings.codecs,
                session_id=self._session_id,
                session_version=self._sdp_version,
            )
        except NoCommonCodec:
            self.ua.stats.calls_rejected_media += 1
            self._reject(488, "Not Acceptable Here", warning="no common codec")
            return
        try:
            decode = ulaw_decode if negotiated.payload_type == 0 else alaw_decode
            self.media = await open_session_in_range(
                rtp_host,
                settings.rtp_port_min,
                settings.rtp_port_max,
                payload_type=negotiated.payload_type,
                dtmf_payload_type=negotiated.telephone_event_pt,
                clock=self.ua.media_clock,
                jitter_buffer=JitterBuffer(
                    decode,
                    min_depth=settings.jitter_min_ms / 1000,
                    max_depth=settings.jitter_max_ms / 1000,
                    start_depth=settings.jitter_min_ms / 1000,
                ),
            )
        except OSError as exc:
            log.error("call %s: no RTP port free: %s", self.call_id, exc)
            self._reject(503, "Service Unavailable", warning="no media port")
            return
        if self.ended.is_set():  # CANCEL arrived while we opened the socket
            self.media.close()
            return
        answer, negotiated = answer_offer(
            offer,
            local_address=rtp_host,
            local_port=self.media.local_address[1],
            codecs=settings.codecs,
            session_id=self._session_id,
            session_version=self._sdp_version,
        )
        self._local_sdp = answer
        self._apply_media(negotiated)
        # RFC 3261 §12.1.1: dialog-creating responses carry the request's Record-Route, or a
        # record-routing proxy cannot route the caller's in-dialog requests (BYE) back to us.
        record_route = [("Record-Route", value) for value in invite.headers.values("Record-Route")]
        self.ua.respond(invite, self.invite_tx, 180, "Ringing", to_tag=self.local_tag,
                        headers=[*record_route, ("Contact", self.ua.contact)])
        if settings.answer_delay > 0:
            # Ring first; a CANCEL (or BYE) meanwhile ends the call before any 200.
            try:
                async with asyncio.timeout(settings.answer_delay):
                    await self.ended.wait()
            except TimeoutError:
                pass
            if self.ended.is_set():
                return
        headers = [*record_route, ("Contact", self.ua.contact)]
        if interval:
            refresher = self._refresher_param()
            headers.append(("Session-Expires", f"{interval};refresher={refresher}"))
            if _supports_timer(invite):
                headers.append(("Require", "timer"))
        self.answered.set()
        # Through the UA, so stop() waits for it like every other call task.
        self._tasks.append(self.ua.spawn(self._forward_rtp_dtmf(), name=f"dtmf-{self.call_id}"))
        log.info("call %s answered: %s from %s (%s)", self.reference, self.call_id,
                 Private(self.caller), negotiated.codec)
        confirmed = await self._send_2xx(invite, self.invite_tx, headers, answer.to_bytes())
        if not confirmed:
            log.warning("call %s: no ACK for our 200 OK; hanging up", self.reference)
            await self.hangup("no ACK")
            return
        self.confirmed.set()
        if interval:
            self._start_session_timer(interval)
        self.ua.leg_answered(self)

    def _reject(self, status: int, reason: str, warning: str | None = None) -> None:
        headers = [("Warning", f'399 agentd "{warning}"')] if warning else []
        self.ua.respond(self.invite, self.invite_tx, status, reason, to_tag=self.local_tag,
                        headers=headers)
        self._finish(f"rejected {status}")

    def _apply_media(self, negotiated: NegotiatedMedia) -> None:
        assert self.media is not None
        self.negotiated = negotiated
        # Held (our direction recvonly/inactive, or RFC 2543 hold to 0.0.0.0): stop sending,
        # even though the holder's music on hold keeps arriving and latching.
        held_address = negotiated.remote_address in ("0.0.0.0", "::")
        sending = negotiated.direction in ("sendrecv", "sendonly") and not held_address
        self.on_hold = not sending
        if not held_address:
            self.media.set_remote((negotiated.remote_address, negotiated.remote_port))
        self.media.set_sending(sending)

    async def _send_2xx(
        self,
        request: SipRequest,
        server_tx: TransactionId,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        """Send 200 OK and retransmit it (T1 doubling to T2) until the ACK; False at 64*T1."""
        config = self.ua.layer.config
        self._pending_ack = asyncio.Event()
        self.ua.respond(request, server_tx, 200, "OK", to_tag=self.local_tag, headers=headers,
                        body=body, content_type="application/sdp")
        if self._transport == "tcp":
            try:
                await asyncio.wait_for(self._pending_ack.wait(), config.timeout)
                return True
            except TimeoutError:
                return False
        via = top_via(request.headers)
        destination = response_destination(via, self.source, False) if via else self.source
        interval = config.t1
        deadline = asyncio.get_running_loop().time() + config.timeout
        while not self._pending_ack.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.ended.is_set():
                return self._pending_ack.is_set()
            try:
                await asyncio.wait_for(self._pending_ack.wait(), min(interval, remaining))
            except TimeoutError:
                from agentd.sip.transaction import response_to

                again = response_to(request, 200, "OK", self.local_tag)
                for name, value in headers:
                    again.headers.add(name, value)
                again.headers.add("Content-Type", "application/sdp")
                again.body = body
                self.ua.resend_response(again, destination, False)
                interval = min(interval * 2, config.t2)
        return True

    # ---- in-dialog requests from the peer ----------------------------------------------

    def on_ack(self, ack: SipRequest) -> None:
        if self._pending_ack is not None:
            self._pending_ack.set()

    def on_cancel(self) -> None:
        """CANCEL before our 200: the layer answered it; we end the INVITE with 487."""
        if self.answered.is_set():
            return
        self.ua.stats.calls_cancelled += 1
        self.ua.respond(self.invite, self.invite_tx, 487, "Request Terminated",
                        to_tag=self.local_tag)
        self._finish("cancelled")

    def on_request(self, request: SipRequest, server_tx: TransactionId) -> None:
        assert self.dialog is not None
        respond = self.ua.respond
        if not self.dialog.accept_remote_cseq(request):
            respond(request, server_tx, 500, "Server Internal Error",
                    headers=[("Retry-After", "1")])
            return
        method = request.method
        if method == "BYE":
            respond(request, server_tx, 200, "OK")
            if not self.answered.is_set():
                # BYE in the early dialog: the INVITE still needs its final (§15.1.2).
                respond(self.invite, self.invite_tx, 487, "Request Terminated",
                        to_tag=self.local_tag)
            self._finish("remote hangup")
        elif method == "INVITE":
            self.ua.spawn(self._on_reinvite(request, server_tx))
        elif method == "UPDATE":
            self._on_update(request, server_tx)
        elif method == "INFO":
            self._on_info(request, server_tx)
        elif method == "NOTIFY":
            self._on_notify(request, server_tx)
        elif method == "OPTIONS":
            respond(request, server_tx, 200, "OK", headers=[("Accept", "application/sdp")])
        elif method in ("REFER", "SUBSCRIBE", "MESSAGE", "PRACK", "PUBLISH", "REGISTER"):
            respond(request, server_tx, 405, "Method Not Allowed", headers=[("Allow", _allow())])
        else:
            respond(request, server_tx, 501, "Not Implemented", headers=[("Allow", _allow())])

    async def _on_reinvite(self, request: SipRequest, server_tx: TransactionId) -> None:
        """Hold, resume, codec or address change, or a session refresh (RFC 3264 §8)."""
        assert self.dialog is not None and self.media is not None
        if request.body:
            try:
                offer = parse_sdp(request.body)
                answer, negotiated = answer_offer(
                    offer,
                    local_address=self.ua.settings.rtp_host or self.ua.settings.local_host,
                    local_port=self.media.local_address[1],
                    codecs=[self.negotiated.codec] if self.negotiated else self.ua.settings.codecs,
                    session_id=self._session_id,
                    session_version=self._sdp_version + 1,
                )
            except NoCommonCodec:
                self.ua.respond(request, server_tx, 488, "Not Acceptable Here")
                return
            except SdpError as exc:
                self.ua.respond(request, server_tx, 400, "Bad Request",
                                headers=[("Warning", f'399 agentd "bad SDP: {exc}"')])
                return
            if self._local_sdp is None or _sdp_changed(self._local_sdp, answer):
                self._sdp_version += 1
                self._local_sdp = answer
            else:
                answer = self._local_sdp
            self._apply_media(negotiated)
            log.info("call %s: re-INVITE, direction %s", self.reference, negotiated.direction)
        answer = self._local_sdp
        assert answer is not None
        headers = self._target_refreshed(request)
        await self._send_2xx(request, server_tx, headers, answer.to_bytes())

    def _target_refreshed(self, request: SipRequest) -> list[tuple[str, str]]:
        """A re-INVITE or UPDATE arrived: take its Contact, count it as a session refresh,
        and return the headers of our 200 (Contact, Session-Expires when timed)."""
        assert self.dialog is not None
        self.dialog.refresh_target(request)
        headers = [("Contact", self.ua.contact)]
        if self._session_interval:
            self._session_refreshed(request)
            headers.append(("Session-Expires",
                            f"{self._session_interval};refresher={self._refresher_param()}"))
        return headers

    def _on_update(self, request: SipRequest, server_tx: TransactionId) -> None:
        headers = self._target_refreshed(request)
        if request.body:  # UPDATE with an offer: answer it with what we have (no change)
            self.ua.respond(request, server_tx, 200, "OK", headers=headers,
                            body=self._local_sdp.to_bytes() if self._local_sdp else b"",
                            content_type="application/sdp" if self._local_sdp else None)
        else:
            self.ua.respond(request, server_tx, 200, "OK", headers=headers)

    def _on_info(self, request: SipRequest, server_tx: TransactionId) -> None:
        """SIP INFO DTMF: application/dtmf-relay ("Signal=5") and application/dtmf ("5")."""
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        text = request.body.decode("utf-8", "replace")
        digit: str | None = None
        if ctype == "application/dtmf-relay":
            match = _DTMF_RELAY.search(text)
            digit = match.group(1).upper() if match else None
        elif ctype == "application/dtmf":
            stripped = text.strip()
            digit = stripped.upper() if len(stripped) == 1 and stripped in "0123456789*#ABCDabcd" else None
        if digit is None:
            if ctype in ("application/dtmf-relay", "application/dtmf") or not request.body:
                self.ua.respond(request, server_tx, 200 if not request.body else 400,
                                "OK" if not request.body else "Bad Request")
            else:
                self.ua.respond(request, server_tx, 415, "Unsupported Media Type",
                                headers=[("Accept", "application/dtmf-relay, application/dtmf")])
            return
        self.ua.respond(request, server_tx, 200, "OK")
        self.dtmf.put_nowait(digit)

    def _on_notify(self, request: SipRequest, server_tx: TransactionId) -> None:
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != "refer":
            self.ua.respond(request, server_tx, 489, "Bad Event")
            return
        self.ua.respond(request, server_tx, 200, "OK")
        progress = parse_notify(
            request.body,
            request.headers.get("Content-Type"),
            request.headers.get("Subscription-State"),
        )
        if progress is not None:
            log.info("call %s: transfer progress %s %s", self.reference, progress.status,
                     progress.reason)
            self._transfer_progress.put_nowait(progress)

    async def _forward_rtp_dtmf(self) -> None:
        assert self.media is not None
        async for digit in self.media.dtmf():
            self.dtmf.put_nowait(digit.digit)

    # ---- session timer (RFC 4028) ------------------------------------------------------

    def _session_timer_request(self) -> int | None:
        """The session interval for this call, None for none, -1 after rejecting with 422."""
        invite = self.invite
        value = invite.headers.get("Session-Expires")
        configured = self.ua.settings.session_timer
        if value is None:
            if configured and _supports_timer(invite):
                self._we_refresh = False
                return configured
            return None
        try:
            interval = int(value.split(";")[0].strip())
        except ValueError:
            self._reject(400, "Bad Request", warning="bad Session-Expires")
            return -1
        if interval < MIN_SE:
            self.ua.respond(invite, self.invite_tx, 422, "Session Interval Too Small",
                            to_tag=self.local_tag, headers=[("Min-SE", str(MIN_SE))])
            self._finish("rejected 422")
            return -1
        params = value.lower()
        if "refresher=uas" in params or not _supports_timer(invite):
            self._we_refresh = True
        return interval

    def _refresher_param(self) -> str:
        return "uas" if self._we_refresh else "uac"

    def _start_session_timer(self, interval: int) -> None:
        self._session_interval = interval
        self._last_refresh = asyncio.get_running_loop().time()
        self._tasks.append(self.ua.spawn(self._session_timer_loop(),
                                         name=f"session-timer-{self.call_id}"))

    def _session_refreshed(self, request: SipRequest) -> None:
        self._last_refresh = asyncio.get_running_loop().time()

    async def _session_timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ended.is_set() and self._session_interval:
            interval = self._session_interval
            if self._we_refresh:
                await asyncio.sleep(interval / 2)
                if self.ended.is_set():
                    return
                response = await self._request("UPDATE", [("Session-Expires",
                                                           f"{interval};refresher=uas")])
                if response is None or response.status in (408, 481):
                    await self.hangup("session refresh failed")
                    return
                self._last_refresh = loop.time()
            else:
                # The peer refreshes; BYE if it has not by expiry (RFC 4028 §10).
                expiry = self._last_refresh + interval - min(32, interval / 3)
                delay = expiry - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                log.warning("call %s: session timer expired", self.reference)
                await self.hangup("session expired")
                return

    # ---- actions from the application --------------------------------------------------

    async def _request(self, method: str, headers: list[tuple[str, str]],
                       body: bytes = b"", content_type: str | None = None,
                       timeout: float | None = None):
        assert self.dialog is not None
        dialog = self.dialog
        try:
            destination = dialog.next_hop()
            transport = dialog.next_transport()
        except ValueError as exc:
            log.error("call %s: cannot route %s: %s", self.reference, method, exc)
            return None
        return await self.ua.send_authenticated(
            lambda via: dialog.build_request(method, via=via, contact=self.ua.contact,
                                             headers=headers, body=body,
                                             content_type=content_type),
            destination,
            transport if transport in ("udp", "tcp") else self._transport,
            timeout,
        )

    async def hangup(self, reason: str = "normal") -> None:
        """End the call with BYE (idempotent); media stops at once."""
        if self.ended.is_set():
            return
        if self.dialog is None or not self.answered.is_set():
            if not self.answered.is_set():
                self.ua.respond(self.invite, self.invite_tx, 480, "Temporarily Unavailable",
                                to_tag=self.local_tag)
            self._finish(reason)
            return
        self._finish(reason)
        response = await self._request("BYE", [], timeout=8.0)
        if response is None:
            log.info("call %s: no answer to BYE", self.reference)

    async def transfer(
        self, target: str, *, reason: str | None = None, timeout: float = 32.0
    ) -> TransferResult:
        """Blind transfer with REFER (RFC 3515 / RFC 5589 §6.1); BYE once it succeeded.

        On failure the call stays up and the result says why, so the caller-facing layer can
        tell the caller and follow its policy.
        """
        if self.ended.is_set() or self.dialog is None:
            return TransferResult(False, 0, "call has ended")
        try:
            settings = self.ua.settings
            # An extension lives on the PBX: when the PBX is our domain but listens on another
            # port than 5060, say so, or the transferee dials the domain's port 5060.
            registrar_host, registrar_port = settings.registrar
            port = registrar_port if (registrar_host.lower() == settings.domain.lower()
                                      and registrar_port != 5060) else None
            refer_to = build_refer_to(target, domain=settings.domain, reason=reason,
                                      call_ref=self.reference, port=port)
        except ValueError as exc:
            return TransferResult(False, 0, str(exc))
        while not self._transfer_progress.empty():  # progress of an earlier attempt
            self._transfer_progress.get_nowait()
        headers = [("Refer-To", refer_to), ("Referred-By", f"<{self.ua.aor}>")]
        headers.append(("User-to-User", user_to_user_value(self.reference, reason or "")))
        log.info("call %s: transferring to %s (%s)", self.reference, target, reason or "-")
        response = await self._request("REFER", headers)
        if response is None:
            return TransferResult(False, 408, "no answer to REFER")
        if response.status >= 300:
            return TransferResult(False, response.status, f"REFER refused: {response.reason}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.ended.is_set():
                reason_text = "call ended during transfer" if self.ended.is_set() \
                    else "transfer timed out"
                return TransferResult(self.end_reason == "remote hangup", 0, reason_text)
            try:
                progress = await asyncio.wait_for(self._transfer_progress.get(), remaining)
            except TimeoutError:
                continue
            if progress.succeeded:
                await self.hangup("transferred")
                return TransferResult(True, progress.status, progress.reason)
            if progress.failed:
                return TransferResult(False, progress.status, progress.reason)
            if progress.terminated:
                return TransferResult(False, progress.status, "subscription ended early")

    # ---- end -----------------------------------------------------------------------------

    def _finish(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        if self._pending_ack is not None:
            self._pending_ack.set()
        for task in self._tasks:
            task.cancel()
        if self.media is not None:
            self.media.close()
        self.ua.leg_ended(self)
        log.info("call %s ended: %s", self.reference, reason)


def _supports_timer(request: SipRequest) -> bool:
    tags = {t.strip().lower() for v in request.headers.values("Supported") for t in v.split(",")}
    tags |= {t.strip().lower() for v in request.headers.values("Require") for t in v.split(",")}
    return "timer" in tags


def _caller_id(invite: SipRequest) -> str:
    """The caller's number (P-Asserted-Identity, else From), for records and the app."""
    for name in ("P-Asserted-Identity", "From"):
        value = invite.headers.get(name)
        if not value:
            continue
        try:
            uri = parse_name_addr(value).uri
        except ValueError:
            continue
        user = getattr(uri, "user", None)
        if user:
            return user
    return "unknown"


def _sdp_changed(old: SessionDescription, new: SessionDescription) -> bool:
    return [m.lines() for m in old.media] != [m.lines() for m in new.media] or \
        old.connection != new.connection


def _allow() -> str:
    from agentd.sip.ua import ALLOW

    return ALLOW


__all__ = ["CallLeg", "TransferResult", "parse_uri", "uri_destination"]
