"""SIP transactions (RFC 3261 §17, RFC 6026), sans-IO.

`TransactionLayer` is the entry point; the state machines live in `client` and `server`.

Choices worth knowing:
- INVITE transactions use RFC 6026's Accepted state after a 2xx (timers L and M, 64*T1):
  the server absorbs INVITE copies and lets the TU's 2xx retransmissions through (the TU
  retransmits the 2xx until its ACK, which comes up as AckReceived); the client passes every
  2xx up (`retransmission` marks repeats of a To tag) and never ACKs a 2xx itself.
- Stray responses: a 2xx to INVITE comes up as StrayResponse (the dialog may re-ACK it);
  any other is dropped and counted.
- A CANCEL is answered by the layer (200, or 481 without a matching INVITE) and reported
  once per INVITE as CancelReceived while that INVITE awaits its final response.
- The INVITE server sends 100 Trying itself when the TU has not answered within
  `trying_delay` (200 ms) or when the INVITE is retransmitted first.
- An INVITE client in Proceeding and a non-INVITE server without a TU response wait
  indefinitely (RFC 3261): ending them is the TU's job (CANCEL, a final response).
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
