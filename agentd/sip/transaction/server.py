"""Server transactions (RFC 3261 §17.2, with RFC 6026's Accepted state for INVITE)."""

from __future__ import annotations

from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.transaction.base import Transaction
from agentd.sip.transaction.builders import response_to
from agentd.sip.transaction.config import TransactionConfig
from agentd.sip.transaction.events import (
    AckReceived,
    AckTimeout,
    Address,
    Event,
    RequestReceived,
    TransactionId,
    TxState,
)
from agentd.sip.transaction.matching import header_tag


class ServerTransaction(Transaction):
    """A request from the network and the responses the TU gives it.

    `peer` is where responses go (§18.2.2), `source` where the request came from.
    """

    def __init__(
        self,
        tx_id: TransactionId,
        request: SipRequest,
        source: Address,
        response_destination: Address,
        reliable: bool,
        config: TransactionConfig,
    ) -> None:
        super().__init__(tx_id, response_destination, reliable, config)
        self.request = request
        self.source = source
        self.request_to_tag = header_tag(request.headers.get("To"))
        self.last_response: SipResponse | None = None
        self.last_data = b""
        self.interval = config.t1

    @property
    def response_to_tag(self) -> str | None:
        """The To tag of our latest response (an RFC 2543 ACK carries it)."""
        if self.last_response is None:
            return None
        return header_tag(self.last_response.headers.get("To"))

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def announce(self) -> list[Event]:
        return [RequestReceived(self.request, self.source, self.id)]

    def _send_response(self, response: SipResponse) -> Event:
        self.last_response = response
        self.last_data = response.to_bytes()
        return self.send(response, self.last_data)

    def _resend_last(self) -> list[Event]:
        if self.last_response is None:
            return []
        return [self.send(self.last_response, self.last_data)]

    def start(self, now: float, announce: bool = True) -> list[Event]:
        raise NotImplementedError

    def on_retransmission(self, request: SipRequest, now: float) -> list[Event]:
        raise NotImplementedError

    def respond(self, response: SipResponse, now: float) -> list[Event] | None:
        """Send the TU's response; None when this state must discard it (e.g. after a final)."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """Proceeding -> Completed (non-2xx) -> Confirmed (ACK), or Accepted (2xx).

    Retransmitted INVITEs get the latest response again (in Proceeding, Completed); G resends
    a non-2xx final on UDP (T1 doubling to T2) until the ACK; H (64*T1) gives up on the ACK;
    I (T4 on UDP) absorbs ACK retransmissions. After a 2xx the transaction waits in Accepted
    (RFC 6026) for 64*T1 (timer L): INVITE retransmissions are absorbed, the TU's 2xx
    retransmissions pass through, and it is the TU/dialog layer that retransmits the 2xx
    until its ACK (which arrives as AckReceived: a new branch matches no transaction).
    """

    def __init__(
        self,
        tx_id: TransactionId,
        request: SipRequest,
        source: Address,
        response_destination: Address,
        reliable: bool,
        config: TransactionConfig,
    ) -> None:
        super().__init__(tx_id, request, source, response_destination, reliable, config)
        self.cancel_reported = False

    def start(self, now: float, announce: bool = True) -> list[Event]:
        self.state = TxState.PROCEEDING
        events: list[Event] = []
        delay = self.config.trying_delay
        if delay == 0:
            events.append(self._send_trying())
        elif delay is not None:
            self.arm("Trying", now + delay)
        if announce:
            events.extend(self.announce())
        return events

    def _send_trying(self) -> Event:
        self.disarm("Trying")
        return self._send_response(response_to(self.request, 100, "Trying"))

    def on_retransmission(self, request: SipRequest, now: float) -> list[Event]:
        if self.state is TxState.PROCEEDING and self.last_response is None:
            # The peer is retransmitting: a 100 now stops its timer A.
            return [] if self.config.trying_delay is None else [self._send_trying()]
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED):
            return self._resend_last()
        return []

    def on_ack(self, ack: SipRequest, source: Address, now: float) -> list[Event]:
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.disarm("G", "H")
            self.wait_or_terminate("I", 0.0 if self.reliable else self.config.t4, now)
        elif self.state is TxState.ACCEPTED:
            return [AckReceived(ack, source)]
        return []

    def respond(self, response: SipResponse, now: float) -> list[Event] | None:
        status = response.status
        if self.state is TxState.ACCEPTED:
            return [self._send_response(response)] if 200 <= status < 300 else None
        if self.state is not TxState.PROCEEDING:
            return None
        self.disarm("Trying")
        events = [self._send_response(response)]
        if 200 <= status < 300:
            self.state = TxState.ACCEPTED
            self.arm("L", now + self.config.timeout)
        elif status >= 300:
            self.state = TxState.COMPLETED
            if not self.reliable:
                self.arm("G", now + self.interval)
            self.arm("H", now + self.config.timeout)
        return events

    def on_timer(self, name: str, deadline: float, now: float) -> list[Event]:
        if name == "Trying" and self.state is TxState.PROCEEDING and self.last_response is None:
            return [self._send_trying()]
        if name == "G" and self.state is TxState.COMPLETED:
            self.interval = min(2 * self.interval, self.config.t2)
            self.arm("G", deadline + self.interval)
            return self._resend_last()
        if name == "H" and self.state is TxState.COMPLETED:
            self.terminate()
            return [AckTimeout(self.id)]
        if (name, self.state) in (("I", TxState.CONFIRMED), ("L", TxState.ACCEPTED)):
            self.terminate()
        return []


class ServerNonInviteTransaction(ServerTransaction):
    """Trying -> Proceeding -> Completed; J (64*T1 on UDP) answers retransmitted requests
    with the final response again."""

    def start(self, now: float, announce: bool = True) -> list[Event]:
        self.state = TxState.TRYING
        return self.announce() if announce else []

    def on_retransmission(self, request: SipRequest, now: float) -> list[Event]:
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED):
            return self._resend_last()
        return []

    def respond(self, response: SipResponse, now: float) -> list[Event] | None:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return None
        events = [self._send_response(response)]
        if response.status < 200:
            self.state = TxState.PROCEEDING
        else:
            self.state = TxState.COMPLETED
            self.wait_or_terminate("J", 0.0 if self.reliable else self.config.timeout, now)
        return events

    def on_timer(self, name: str, deadline: float, now: float) -> list[Event]:
        if name == "J" and self.state is TxState.COMPLETED:
            self.terminate()
        return []
