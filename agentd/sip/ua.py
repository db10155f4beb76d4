"""The SIP user agent: registers as an extension, answers calls, hands them to the app.

This is the asyncio adapter around the sans-IO core. It owns the socket (`SipTransport`),
the transaction layer, the registration state machine and the live call legs, and runs one
timer task that sleeps until the earliest deadline any of them has. Everything that decides
*what* to send lives in the core modules; this file decides *when* and wires the results.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agentd.media.pacer import MediaClock
from agentd.sip.auth import DigestClient
from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.parser import SipParseError
from agentd.sip.registration import (
    Registration,
    RegistrationConfig,
    RegistrationState,
    RegistrationStatus,
)
from agentd.sip.security import Network, RateLimiter, is_trusted
from agentd.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    StrayResponse,
    TransactionConfig,
    TransactionError,
    TransactionId,
    TransactionLayer,
    TransactionTimeout,
    TransportFailure,
    new_branch,
    response_destination,
    response_to,
)
from agentd.sip.transaction.matching import top_via
from agentd.sip.transport import Address, Inbound, SipTransport
from agentd.sip.uri import tag_of
from agentd.sip.validate import check_request

log = logging.getLogger("agentd.sip")

# Methods we accept (Allow header). REFER is one we *send*; receiving it is refused.
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY", "UPDATE")
ALLOW = ", ".join(ALLOWED_METHODS)
SUPPORTED = "timer"
# Known methods we do not take outside a dialog: 405 with Allow. Anything else: 501.
_KNOWN_NOT_ALLOWED = ("REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "PRACK")
_IN_DIALOG_ONLY = ("BYE", "INFO", "NOTIFY", "UPDATE", "PRACK")


@dataclass(frozen=True)
class UaSettings:
    """What the UA needs to know; the daemon builds it from the config file."""

    extension: str
    registrar: Address
    domain: str
    auth_user: str
    password: str = field(repr=False)
    local_host: str = "127.0.0.1"
    local_port: int = 5060
    transport: str = "udp"
    register: bool = True
    register_expires: int = 300
    registration_max_refresh: float = 300.0
    display_name: str | None = None
    user_agent: str = "agentd"
    trusted_sources: tuple[Network, ...] = ()
    max_calls: int = 4
    rate_per_second: float = 10.0
    rate_burst: int = 20
    session_timer: int | None = None
    # Seconds to ring (180) before answering; a CANCEL meanwhile gets its 487.
    answer_delay: float = 0.0
    rtp_host: str | None = None
    rtp_port_min: int = 10000
    rtp_port_max: int = 20000
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    dtmf_payload_type: int = 101
    jitter_min_ms: int = 40
    jitter_max_ms: int = 120


@dataclass
class UaStats:
    calls_answered: int = 0
    calls_rejected_untrusted: int = 0
    calls_rejected_busy: int = 0
    calls_rejected_media: int = 0
    calls_cancelled: int = 0
    requests_rate_limited: int = 0
    requests_rejected: int = 0


CallHandler = Callable[["CallLeg"], Awaitable[None]]  # noqa: F821 - defined in callleg


class UserAgent:
    def __init__(
        self,
        settings: UaSettings,
        on_call: CallHandler,
        *,
        transaction_config: TransactionConfig | None = None,
        on_registration: Callable[[RegistrationState], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_call = on_call
        self._registration_listeners: list[Callable[[RegistrationState], None]] = []
        if on_registration is not None:
            self._registration_listeners.append(on_registration)
        self.layer = TransactionLayer(transaction_config or TransactionConfig())
        self.transport = SipTransport(
            settings.local_host,
            settings.local_port,
            self._on_inbound,
            tcp=True,
            on_malformed=self._on_malformed,
            admit=self._admit,
        )
        self.credentials = DigestClient(settings.auth_user, settings.password)
        self.registration: Registration | None = None
        self._limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self._pending: dict[TransactionId, asyncio.Future[SipResponse | None]] = {}
        self._legs: dict[tuple[str, str], CallLeg] = {}  # (Call-ID, our tag) -> leg
        self._legs_by_invite: dict[TransactionId, CallLeg] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._registering: asyncio.Task[None] | None = None
        self.accepting = True
        self.stats = UaStats()
        # One 20 ms clock drives every call's RTP: one timer instead of one per call, and a
        # 1 ms busy-wait before each tick for sub-millisecond packet spacing (tools/bench_rtp.py).
        self.media_clock = MediaClock(spin=0.001)

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        return self.transport.local_address

    @property
    def aor(self) -> str:
        return f"sip:{self.settings.extension}@{self.settings.domain}"

    @property
    def contact(self) -> str:
        host, port = self.transport.local_address
        transport = ";transport=tcp" if self.settings.transport == "tcp" else ""
        name = f'"{self.settings.display_name}" ' if self.settings.display_name else ""
        return f"{name}<sip:{self.settings.extension}@{host}:{port}{transport}>"

    @property
    def registration_state(self) -> RegistrationState:
        if self.registration is None:
            return RegistrationState(RegistrationStatus.UNREGISTERED, reason="not started")
        return self.registration.state

    @property
    def legs(self) -> list[CallLeg]:
        return list(self._legs.values())

    async def start(self) -> None:
        await self.transport.start()
        self._timer_task = asyncio.get_running_loop().create_task(self._run_timers())
        if self.settings.register:
            self._begin_registration()

    def _begin_registration(self) -> None:
        self.registration = Registration(
            RegistrationConfig(
                aor=self.aor,
                registrar_uri=f"sip:{self.settings.domain}",
                contact=self.contact,
                call_id=f"{secrets.token_hex(12)}@agentd",
                from_tag=secrets.token_hex(6),
                expires=self.settings.register_expires,
                user_agent=self.settings.user_agent,
                max_refresh=self.settings.registration_max_refresh,
            ),
            self.credentials,
        )
        self._spawn_registration(self.registration.start(self._now()))

    async def reregister(self, settings: UaSettings) -> None:
        """Switch to a new SIP account (a reload): un-REGISTER the old binding, then REGISTER
        with `settings`. Calls in progress are untouched; their dialogs do not depend on it.
        The listening address is not changed here (that needs a restart)."""
        await self._unregister()
        self.settings = settings
        self.credentials = DigestClient(settings.auth_user, settings.password)
        self._limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self.registration = None
        if settings.register:
            self._begin_registration()

    async def _unregister(self) -> None:
        """Stop any REGISTER exchange in flight, then un-REGISTER (bounded to 3 s)."""
        if self._registering is not None and not self._registering.done():
            self._registering.cancel()
            await asyncio.wait([self._registering], timeout=2.0)
        if self.registration is None:
            return
        request = self.registration.stop(self._now())
        if request is not None:
            try:
                await asyncio.wait_for(self._registration_exchange(request), 3.0)
            except (TimeoutError, asyncio.CancelledError):
                pass

    def add_registration_listener(self, listener: Callable[[RegistrationState], None]) -> None:
        """Call `listener` with the new state after every registration exchange."""
        self._registration_listeners.append(listener)

    async def wait_registered(self, timeout: float) -> bool:
        """True once registered; False when `timeout` passes first."""
        deadline = self._now() + timeout
        while self._now() < deadline:
            if self.registration_state.status is RegistrationStatus.REGISTERED:
                return True
            await asyncio.sleep(0.05)
        return self.registration_state.status is RegistrationStatus.REGISTERED

    async def stop(self, *, drain: float = 0.0) -> None:
        """Stop taking calls, end the live ones, unregister, close the sockets."""
        self.accepting = False
        if drain > 0 and self._legs:
            deadline = self._now() + drain
            while self._legs and self._now() < deadline:
                await asyncio.sleep(0.1)
        await asyncio.gather(
            *(leg.hangup("shutdown") for leg in list(self._legs.values())),
            return_exceptions=True,
        )
        await self._unregister()
        # Cancel what still runs and wait for it, so stop() leaves no task behind.
        tasks = [t for t in (*self._tasks, self._timer_task, self._registering) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self.transport.close()

    # ---- sending ---------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def make_via(self, transport: str | None = None) -> str:
        host, port = self.transport.local_address
        proto = (transport or self.settings.transport).upper()
        return f"SIP/2.0/{proto} {host}:{port};branch={new_branch(secrets.token_hex(8))};rport"

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._handle_event(event)
            except Exception:
                log.exception("error handling %s", type(event).__name__)
        self._wakeup.set()

    def _handle_event(self, event: Event) -> None:
        if isinstance(event, SendMessage):
            self.transport.send(event.data, event.destination, "tcp" if event.reliable else "udp")
        elif isinstance(event, RequestReceived):
            self._on_request(event.request, event.source, event.server_tx)
        elif isinstance(event, AckReceived):
            leg = self._leg_for(event.ack)
            if leg is not None:
                leg.on_ack(event.ack)
        elif isinstance(event, CancelReceived):
            leg = self._legs_by_invite.get(event.invite_server_tx)
            if leg is not None:
                leg.on_cancel()
        elif isinstance(event, ResponseReceived):
            if event.response.status >= 200 and not event.retransmission:
                future = self._pending.pop(event.client_tx, None)
                if future is not None and not future.done():
                    future.set_result(event.response)
        elif isinstance(event, (TransactionTimeout, TransportFailure)):
            tx = event.client_tx if isinstance(event, TransactionTimeout) else event.transaction
            future = self._pending.pop(tx, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif isinstance(event, StrayResponse):
            pass  # we send no INVITEs, so a stray 2xx is nobody's

    async def send_request(
        self,
        request: SipRequest,
        destination: Address,
        transport: str | None = None,
        timeout: float | None = None,
    ) -> SipResponse | None:
        """Run one client transaction; the final response, or None on timeout/failure."""
        proto = transport or self.settings.transport
        start = self.layer.send_request(request, destination, self._now(), reliable=proto == "tcp")
        future: asyncio.Future[SipResponse | None] = asyncio.get_running_loop().create_future()
        self._pending[start.transaction] = future
        self._dispatch(start.events)
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(start.transaction, None)

    async def send_authenticated(
        self,
        build: Callable[[str], SipRequest],
        destination: Address,
        transport: str | None = None,
        timeout: float | None = None,
    ) -> SipResponse | None:
        """Send `build(via)`, answering at most two 401/407 challenges with our credentials."""
        auth: tuple[str, str] | None = None
        for _ in range(3):
            request = build(self.make_via(transport))
            if auth is not None:
                request.headers.add(*auth)
            response = await self.send_request(request, destination, transport, timeout)
            if response is None or response.status not in (401, 407):
                if response is not None and auth is not None:
                    self.credentials.accepted()
                return response
            name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
            auth = self.credentials.respond(
                response.status,
                response.headers.get_all(name),
                request.method,
                request.uri,
                request.body,
            )
            if auth is None:
                return response
        return response

    def respond(
        self,
        request: SipRequest,
        server_tx: TransactionId,
        status: int,
        reason: str,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        response = response_to(request, status, reason, to_tag)
        for name, value in headers:
            response.headers.add(name, value)
        if status >= 200 and request.method in ("INVITE", "OPTIONS"):
            response.headers.add("Allow", ALLOW)
            response.headers.add("Supported", SUPPORTED)
        response.headers.add("Server", self.settings.user_agent)
        if content_type is not None:
            response.headers.add("Content-Type", content_type)
        response.body = body
        try:
            self._dispatch(self.layer.send_response(response, self._now(), server_tx))
        except TransactionError:
            log.debug("no transaction for %s %s response", status, request.method)

    def resend_response(self, response: SipResponse, destination: Address, reliable: bool) -> None:
        """Send a 2xx again outside its transaction (the UAS retransmits 2xx until ACK)."""
        self._dispatch(self.layer.send_stateless(response, destination, reliable))

    # ---- inbound ---------------------------------------------------------------------

    def _trusted(self, host: str) -> bool:
        return is_trusted(host, self.settings.trusted_sources)

    def _admit(self, source: Address) -> bool:
        """Whether to read bytes from `source` at all: the PBX always, strangers at a rate."""
        if self._trusted(source[0]) or self._limiter.allow(source[0], self._now()):
            return True
        self.stats.requests_rate_limited += 1
        return False

    def _on_inbound(self, inbound: Inbound) -> None:
        # Rate limiting already happened in the transport (`_admit`), before parsing.
        now = self._now()
        self._dispatch(self.layer.receive(inbound.message, inbound.source, now, inbound.reliable))

    def _on_malformed(self, data: bytes, source: Address, transport: str, exc: SipParseError) -> None:
        """Answer a malformed request with its 4xx/505 when it is parseable enough to reply."""
        request = exc.request
        if request is None or exc.status is None or request.method == "ACK":
            return
        via = top_via(request.headers)
        if via is None:
            return
        try:
            answer = response_to(request, exc.status, _reason_for(exc.status), secrets.token_hex(6))
            answer.headers.add("Warning", f'399 agentd "{_header_safe(exc.reason)}"')
            destination = response_destination(via, source, transport == "tcp")
            self.transport.send(answer.to_bytes(), destination, transport)
        except Exception:  # the request was broken; never let answering it break us
            log.debug("could not answer malformed request", exc_info=True)

    def _leg_for(self, request: SipRequest) -> CallLeg | None:
        call_id = request.headers.get("Call-ID") or ""
        to_tag = tag_of(request.headers.get("To"))
        return self._legs.get((call_id, to_tag or ""))

    def _on_request(self, request: SipRequest, source: Address, server_tx: TransactionId) -> None:
        # Only extensions we really implement: session timers (RFC 4028).
        rejection = check_request(request, supported_extensions=frozenset({"timer"}))
        if rejection is not None:
            self.stats.requests_rejected += 1
            self.respond(
                request, server_tx, rejection.status, rejection.reason,
                to_tag=secrets.token_hex(6), headers=rejection.headers,
            )
            return
        if tag_of(request.headers.get("To")) is not None:
            leg = self._leg_for(request)
            if leg is None:
                self.respond(request, server_tx, 481, "Call/Transaction Does Not Exist")
            else:
                leg.on_request(request, server_tx)
            return
        method = request.method
        tag = secrets.token_hex(6)
        if method == "INVITE":
            self._on_invite(request, source, server_tx)
        elif method == "OPTIONS":
            self.respond(
                request, server_tx, 200, "OK", to_tag=tag,
                headers=[("Accept", "application/sdp"), ("Accept-Language", "en")],
            )
        elif method in _IN_DIALOG_ONLY:
            self.respond(request, server_tx, 481, "Call/Transaction Does Not Exist", to_tag=tag)
        elif method in _KNOWN_NOT_ALLOWED:
            self.respond(
                request, server_tx, 405, "Method Not Allowed", to_tag=tag,
                headers=[("Allow", ALLOW)],
            )
        else:
            self.respond(request, server_tx, 501, "Not Implemented", to_tag=tag,
                         headers=[("Allow", ALLOW)])

    def _on_invite(self, request: SipRequest, source: Address, server_tx: TransactionId) -> None:
        tag = secrets.token_hex(6)
        if not self._trusted(source[0]):
            self.stats.calls_rejected_untrusted += 1
            log.warning("INVITE from untrusted %s:%s refused", *source)
            self.respond(request, server_tx, 403, "Forbidden", to_tag=tag)
            return
        if not self.accepting or len(self._legs) >= self.settings.max_calls:
            self.stats.calls_rejected_busy += 1
            self.respond(request, server_tx, 486, "Busy Here", to_tag=tag)
            return
        from agentd.sip.callleg import CallLeg  # the leg needs the UA; import here, not above

        leg = CallLeg(self, request, source, server_tx, local_tag=tag)
        self._legs[(leg.call_id, tag)] = leg
        self._legs_by_invite[server_tx] = leg
        self.spawn(leg.run(), name=f"call-{leg.call_id}")

    # called by CallLeg
    def leg_answered(self, leg: CallLeg) -> None:
        self.stats.calls_answered += 1
        self.spawn(self._run_app(leg), name=f"app-{leg.call_id}")

    def leg_ended(self, leg: CallLeg) -> None:
        self._legs.pop((leg.call_id, leg.local_tag), None)
        self._legs_by_invite.pop(leg.invite_tx, None)

    async def _run_app(self, leg: CallLeg) -> None:
        try:
            await self._on_call(leg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call handler failed for call %s", leg.call_id)
        finally:
            if not leg.ended.is_set():
                await leg.hangup("app finished")

    def spawn(self, coro: Awaitable[object], name: str | None = None) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- timers and registration -----------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def _run_timers(self) -> None:
        while True:
            deadlines = [d for d in (self.layer.next_deadline(), self._registration_deadline())
                         if d is not None]
            timeout = max(0.0, min(deadlines) - self._now()) if deadlines else None
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on 3.11 a wait_for cancelled as its timeout
            # fires can leave its inner task pending, so stop() could not end this loop.
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            now = self._now()
            self._dispatch(self.layer.handle_timeouts(now))
            if self.registration is not None and (
                self._registering is None or self._registering.done()
            ):
                request = self.registration.poll(now)
                if request is not None:
                    self._spawn_registration(request)

    def _registration_deadline(self) -> float | None:
        if self.registration is None:
            return None
        if self._registering is not None and not self._registering.done():
            return None
        return self.registration.next_deadline()

    def _spawn_registration(self, request: SipRequest) -> None:
        self._registering = asyncio.get_running_loop().create_task(
            self._registration_exchange(request)
        )
        self._registering.add_done_callback(lambda _: self.wake())

    async def _registration_exchange(self, request: SipRequest | None) -> None:
        assert self.registration is not None
        before = self.registration.state
        while request is not None:
            request.headers.prepend("Via", self.make_via())
            response = await self.send_request(request, self.settings.registrar)
            now = self._now()
            if response is None:
                self.registration.handle_timeout(now)
                request = None
            else:
                request = self.registration.handle_response(response, now)
        state = self.registration.state
        if state.status != before.status or state.reason != before.reason:
            level = logging.WARNING if state.status is RegistrationStatus.FAILING else logging.INFO
            log.log(level, "registration %s%s", state.status.value,
                    f": {state.reason}" if state.reason else "")
        for listener in list(self._registration_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("registration listener failed")


def _reason_for(status: int) -> str:
    return {400: "Bad Request", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
            416: "Unsupported URI Scheme", 505: "Version Not Supported"}.get(status, "Bad Request")


def _header_safe(text: str) -> str:
    return "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch != '"')[:120]


from agentd.sip.callleg import CallLeg  # noqa: E402  (type for the annotations above)

__all__ = ["ALLOW", "CallLeg", "UaSettings", "UaStats", "UserAgent"]
