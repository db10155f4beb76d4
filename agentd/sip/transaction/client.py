"""Client transactions (RFC 3261 §17.1, with RFC 6026's Accepted state for INVITE)."""

from __future__ import annotations

from agentd.sip.message import SipRequest, SipResponse
from agentd.sip.transaction.base import Transaction
from agentd.sip.transaction.builders import build_ack
from agentd.sip.transaction.config import TransactionConfig
from agentd.sip.transaction.events import (
    Address,
    Event,
    ResponseReceived,
    TransactionId,
    TransactionTimeout,
    TxState,
)
from agentd.sip.transaction.matching import header_tag


class ClientTransaction(Transaction):
    def __init__(
        self,
        tx_id: TransactionId,
        request: SipRequest,
        destination: Address,
        reliable: bool,
        config: TransactionConfig,
    ) -> None:
        super().__init__(tx_id, destination, reliable, config)
        self.request = request
        self.request_data = request.to_bytes()
        self.interval = config.t1

    def start(self, now: float) -> list[Event]:
        raise NotImplementedError

    def on_response(self, response: SipResponse, now: float) -> list[Event]:
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """Calling -> Proceeding -> Completed (non-2xx, we ACK) or Accepted (2xx, TU ACKs).

    Timer A retransmits on UDP with T1 doubling, B (64*T1) times out in Calling only; in
    Proceeding the TU ends the wait with CANCEL. D lingers in Completed to re-ACK
    retransmitted finals; M (64*T1) lingers in Accepted to pass 2xx retransmissions and
    forked 2xx responses up to the TU.
    """

    def __init__(
        self,
        tx_id: TransactionId,
        request: SipRequest,
        destination: Address,
        reliable: bool,
        config: TransactionConfig,
    ) -> None:
        super().__init__(tx_id, request, destination, reliable, config)
        self.ack: SipRequest | None = None
        self.ack_data: bytes | None = None
        self.accepted_tags: set[str | None] = set()

    def start(self, now: float) -> list[Event]:
        self.state = TxState.CALLING
        if not self.reliable:
            self.arm("A", now + self.interval)
        self.arm("B", now + self.config.timeout)
        return [self.send(self.request, self.request_data)]

    def on_response(self, response: SipResponse, now: float) -> list[Event]:
        status = response.status
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            self.disarm("A", "B")
            if status < 200:
                self.state = TxState.PROCEEDING
                return [ResponseReceived(response, self.id)]
            if status < 300:
                self.state = TxState.ACCEPTED
                self.accepted_tags.add(header_tag(response.headers.get("To")))
                self.arm("M", now + self.config.timeout)
                return [ResponseReceived(response, self.id)]
            self.state = TxState.COMPLETED
            self.ack = build_ack(self.request, response)
            self.ack_data = self.ack.to_bytes()
            events: list[Event] = [
                self.send(self.ack, self.ack_data),
                ResponseReceived(response, self.id),
            ]
            self.wait_or_terminate("D", 0.0 if self.reliable else self.config.timer_d, now)
            return events
        if self.state is TxState.ACCEPTED and 200 <= status < 300:
            tag = header_tag(response.headers.get("To"))
            seen = tag in self.accepted_tags
            self.accepted_tags.add(tag)
            return [ResponseReceived(response, self.id, retransmission=seen)]
        if self.state is TxState.COMPLETED and status >= 300 and self.ack is not None:
            return [self.send(self.ack, self.ack_data)]
        return []

    def on_timer(self, name: str, deadline: float, now: float) -> list[Event]:
        if name == "A" and self.state is TxState.CALLING:
            self.interval *= 2
            self.arm("A", deadline + self.interval)
            return [self.send(self.request, self.request_data)]
        if name == "B" and self.state is TxState.CALLING:
            self.terminate()
            return [TransactionTimeout(self.id, "B")]
        if (name, self.state) in (("D", TxState.COMPLETED), ("M", TxState.ACCEPTED)):
            self.terminate()
        return []


class ClientNonInviteTransaction(ClientTransaction):
    """Trying -> Proceeding -> Completed. Timer E retransmits on UDP, doubling up to T2 (and
    at T2 once Proceeding); F (64*T1) times out; K (T4 on UDP) absorbs retransmitted finals."""

    def start(self, now: float) -> list[Event]:
        self.state = TxState.TRYING
        if not self.reliable:
            self.arm("E", now + self.interval)
        self.arm("F", now + self.config.timeout)
        return [self.send(self.request, self.request_data)]

    def on_response(self, response: SipResponse, now: float) -> list[Event]:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return []
        if response.status < 200:
            self.state = TxState.PROCEEDING
            return [ResponseReceived(response, self.id)]
        self.state = TxState.COMPLETED
        self.disarm("E", "F")
        self.wait_or_terminate("K", 0.0 if self.reliable else self.config.t4, now)
        return [ResponseReceived(response, self.id)]

    def on_timer(self, name: str, deadline: float, now: float) -> list[Event]:
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            if self.state is TxState.TRYING:
                self.interval = min(2 * self.interval, self.config.t2)
            else:
                self.interval = self.config.t2
            self.arm("E", deadline + self.interval)
            return [self.send(self.request, self.request_data)]
        if name == "F" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self.terminate()
            return [TransactionTimeout(self.id, "F")]
        if name == "K" and self.state is TxState.COMPLETED:
            self.terminate()
        return []
