"""SIP transactions (RFC 3261 §17, RFC 6026), sans-IO.

`TransactionLayer` is the entry point; the state machines live in `client` and `server`.
"""

from agentd.sip.transaction.builders import build_ack, build_cancel, new_branch, response_to
from agentd.sip.transaction.config import TransactionConfig
from agentd.sip.transaction.events import (
    AckReceived,
    AckTimeout,
    Address,
    CancelReceived,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    StrayResponse,
    TransactionError,
    TransactionId,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailure,
    TxState,
)
from agentd.sip.transaction.layer import ClientStart, TransactionLayer, response_destination
from agentd.sip.transaction.matching import MAGIC_COOKIE

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "AckTimeout",
    "Address",
    "CancelReceived",
    "ClientStart",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "StrayResponse",
    "TransactionConfig",
    "TransactionError",
    "TransactionId",
    "TransactionLayer",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportFailure",
    "TxState",
    "build_ack",
    "build_cancel",
    "new_branch",
    "response_destination",
    "response_to",
]
