"""Transaction handles, states and the events the layer emits (all plain values)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agentd.sip.message import SipMessage, SipRequest, SipResponse

Address = tuple[str, int]
"""(host, port) a message came from or goes to."""


class TransactionError(ValueError):
    """The TU misused the layer (bad request to send, response matching no transaction)."""


class TxState(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"  # RFC 6026: after a 2xx, INVITE transactions only.
    TERMINATED = "Terminated"


@dataclass(frozen=True)
class TransactionId:
    """Handle for one transaction; `serial` makes it unique within its layer."""

    role: str  # "client" or "server"
    method: str
    branch: str
    serial: int

    def __str__(self) -> str:
        return f"{self.role}/{self.method}/{self.branch or '-'}#{self.serial}"


@dataclass(frozen=True)
class SendMessage:
    """Put `data` on the wire to `destination`; retransmissions come as these too.

    `transaction` is None for stateless sends (400/503 answers, `send_stateless`).
    """

    message: SipMessage
    destination: Address
    data: bytes
    reliable: bool = False
    transaction: TransactionId | None = None


@dataclass(frozen=True)
class RequestReceived:
    """A new request for the TU; its retransmissions are absorbed and never come up."""

    request: SipRequest
    source: Address
    server_tx: TransactionId


@dataclass(frozen=True)
class AckReceived:
    """An ACK outside any INVITE server transaction's non-2xx exchange: a 2xx ACK for the dialog."""

    ack: SipRequest
    source: Address


@dataclass(frozen=True)
class CancelReceived:
    """A CANCEL for an INVITE still without a final response. The layer already answered the
    CANCEL 200; the TU should send 487 on `invite_server_tx`."""

    cancel: SipRequest
    invite_server_tx: TransactionId


@dataclass(frozen=True)
class ResponseReceived:
    """A response for the TU. Each non-2xx final comes once. For INVITE, every 2xx comes up
    (forks and retransmissions, so the TU can ACK each); `retransmission` is True when a 2xx
    with that To tag already came up."""

    response: SipResponse
    client_tx: TransactionId
    retransmission: bool = False


@dataclass(frozen=True)
class StrayResponse:
    """A 2xx to INVITE matching no client transaction (its transaction ended): the dialog
    layer may re-ACK it. Other stray responses are dropped and counted."""

    response: SipResponse
    source: Address


@dataclass(frozen=True)
class TransactionTimeout:
    """Timer B or F fired: no final response. The TU treats it as 408."""

    client_tx: TransactionId
    timer: str


@dataclass(frozen=True)
class AckTimeout:
    """Timer H fired: the peer never ACKed our non-2xx final response to its INVITE."""

    server_tx: TransactionId


@dataclass(frozen=True)
class TransportFailure:
    """The transport reported it could not send for this transaction (§17.1.4, §17.2.4)."""

    transaction: TransactionId


@dataclass(frozen=True)
class TransactionTerminated:
    """The transaction is gone; nothing more is sent or reported for it."""

    key: TransactionId


Event = (
    SendMessage
    | RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | StrayResponse
    | TransactionTimeout
    | AckTimeout
    | TransportFailure
    | TransactionTerminated
)
