"""The transaction layer: routes messages to transactions, runs their timers.

Sans-IO like h11: nothing here touches a socket or reads a clock. The asyncio transport
calls `receive` for each parsed message, `handle_timeouts` when `next_deadline` passes, and
puts every `SendMessage` on the wire; the TU calls `send_request`/`send_response` and reacts
to the other events.

Bad network input never raises: it is dropped and counted in `counters` (or answered
statelessly with 400/503 when it is a request we can route a response for). TU misuse raises
`TransactionError`. Counter names: not_a_message, bad_status, unmatchable_response,
stray_response, request_without_via, bad_request, bad_ack, overload, ack_in_proceeding,
discarded_tu_response.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from typing import NamedTuple

from agentd.sip.message import SipMessage, SipRequest, SipResponse
from agentd.sip.transaction.base import Transaction
from agentd.sip.transaction.builders import local_tag, response_to
from agentd.sip.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
)
from agentd.sip.transaction.config import TransactionConfig
from agentd.sip.transaction.events import (
    AckReceived,
    Address,
    CancelReceived,
    Event,
    SendMessage,
    StrayResponse,
    TransactionError,
    TransactionId,
    TransactionTerminated,
    TransportFailure,
    TxState,
)
from agentd.sip.transaction.matching import (
    ServerKey,
    TopVia,
    client_key,
    header_tag,
    is_rfc3261_branch,
    server_request_key,
    server_response_key,
    top_via,
)
from agentd.sip.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")


class ClientStart(NamedTuple):
    """What `send_request` returns: the new transaction's handle and the first send."""

    transaction: TransactionId
    events: list[Event]


def response_destination(via: TopVia, source: Address, reliable: bool) -> Address:
    """Where responses to a request go (RFC 3261 §18.2.2, RFC 3581).

    Reliable: back on the connection it came from (the source). UDP: the source address
    (what `received` would say), at the source port when the Via asks for `rport`, else at
    the Via's sent-by port (default 5060, 5061 for TLS).
    """
    if reliable or "rport" in via.params:
        return source
    default_port = 5061 if via.transport in ("TLS", "WSS") else 5060
    return source[0], via.port or default_port


def _request_problem(request: SipRequest) -> str | None:
    """Why a request cannot be handled (for a 400), or None."""
    if not request.method or not set(request.method) <= _TOKEN_CHARS:
        return "bad method"
    for name in ("Call-ID", "From", "To"):
        if not request.headers.get(name):
            return f"missing {name}"
    cseq = request.cseq
    if cseq is None:
        return "bad CSeq"
    if cseq[1] != request.method:
        return "CSeq method does not match"
    return None


class TransactionLayer:
    """All client and server transactions of one user agent."""

    def __init__(self, config: TransactionConfig | None = None) -> None:
        self.config = config or TransactionConfig()
        self.counters: Counter[str] = Counter()
        self._serials = itertools.count(1)
        self._by_serial: dict[int, Transaction] = {}
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[ServerKey, list[ServerTransaction]] = {}
        self._by_response_key: dict[ServerKey, ServerTransaction] = {}
        self._keys: dict[int, tuple[object, ServerKey | None]] = {}
        # (deadline, tie-break, serial, timer name); entries whose timer was since disarmed
        # or re-armed are skipped when they reach the top.
        self._heap: list[tuple[float, int, int, str]] = []
        self._heap_order = itertools.count()

    def __len__(self) -> int:
        return len(self._by_serial)

    def state(self, tx: TransactionId) -> TxState | None:
        """The transaction's state; None once it has terminated (or never existed)."""
        found = self._by_serial.get(tx.serial)
        return found.state if found is not None and found.id == tx else None

    # ---- TU side -------------------------------------------------------------------------

    def send_request(
        self, request: SipRequest, destination: Address, now: float, reliable: bool = False
    ) -> ClientStart:
        """Start a client transaction. The request must already carry its top Via with a
        fresh RFC 3261 branch (see `new_branch`) and a CSeq naming its method."""
        if not isinstance(request, SipRequest):
            raise TransactionError("send_request needs a SipRequest")
        if request.method == "ACK":
            raise TransactionError("ACK has no client transaction; use send_stateless")
        via = top_via(request.headers)
        if via is None or not is_rfc3261_branch(via.branch):
            raise TransactionError("request needs a top Via with a z9hG4bK branch")
        cseq = request.cseq
        if cseq is None or cseq[1] != request.method:
            raise TransactionError("request needs a CSeq with its own method")
        key = (via.branch, request.method)
        if key in self._clients:
            raise TransactionError(f"a client transaction for {key} already exists")
        tx_id = TransactionId("client", request.method, via.branch, next(self._serials))
        cls = ClientInviteTransaction if request.method == "INVITE" else ClientNonInviteTransaction
        tx = cls(tx_id, request, destination, reliable, self.config)
        self._by_serial[tx_id.serial] = tx
        self._clients[key] = tx
        self._keys[tx_id.serial] = (key, None)
        return ClientStart(tx_id, self._after(tx, tx.start(now)))

    def send_response(
        self, response: SipResponse, now: float, server_tx: TransactionId | None = None
    ) -> list[Event]:
        """Send the TU's response through its server transaction, found by `server_tx` or
        else by the response's top Via branch, sent-by and CSeq method. A response the
        transaction's state must discard (one after a non-2xx final) is counted, not sent."""
        if not isinstance(response, SipResponse) or not 100 <= response.status <= 699:
            raise TransactionError("send_response needs a SipResponse with status 100-699")
        tx: Transaction | None
        if server_tx is not None:
            tx = self._by_serial.get(server_tx.serial)
            if tx is not None and tx.id != server_tx:
                tx = None
        else:
            key = server_response_key(response.headers)
            tx = self._by_response_key.get(key) if key is not None else None
        if not isinstance(tx, ServerTransaction):
            raise TransactionError("no live server transaction matches this response")
        events = tx.respond(response, now)
        if events is None:
            self.counters["discarded_tu_response"] += 1
            return []
        return self._after(tx, events)

    def send_stateless(
        self, message: SipMessage, destination: Address, reliable: bool = False
    ) -> list[Event]:
        """Send outside any transaction: the ACK for a 2xx, 2xx retransmissions by the TU."""
        return [SendMessage(message, destination, message.to_bytes(), reliable, None)]

    def transport_error(self, tx: TransactionId, now: float) -> list[Event]:
        """The transport could not send for `tx`: it terminates (§17.1.4, §17.2.4)."""
        found = self._by_serial.get(tx.serial)
        if found is None or found.id != tx:
            return []
        found.terminate()
        return self._after(found, [TransportFailure(tx)])

    # ---- network side --------------------------------------------------------------------

    def receive(
        self, message: SipMessage, source: Address, now: float, reliable: bool = False
    ) -> list[Event]:
        """Route one parsed message from the network; returns what to send and tell the TU."""
        if isinstance(message, SipResponse):
            return self._receive_response(message, source, now)
        if isinstance(message, SipRequest):
            return self._receive_request(message, source, now, reliable)
        self.counters["not_a_message"] += 1
        return []

    def _receive_response(self, response: SipResponse, source: Address, now: float) -> list[Event]:
        if not 100 <= response.status <= 699:
            self.counters["bad_status"] += 1
            return []
        key = client_key(response.headers)
        if key is None:
            self.counters["unmatchable_response"] += 1
            return []
        tx = self._clients.get(key)
        if tx is None:
            if key[1] == "INVITE" and 200 <= response.status < 300:
                return [StrayResponse(response, source)]
            self.counters["stray_response"] += 1
            return []
        return self._after(tx, tx.on_response(response, now))

    def _receive_request(
        self, request: SipRequest, source: Address, now: float, reliable: bool
    ) -> list[Event]:
        via = top_via(request.headers)
        if via is None:
            self.counters["request_without_via"] += 1
            return []
        problem = _request_problem(request)
        if problem is not None:
            if request.method == "ACK":
                self.counters["bad_ack"] += 1
                return []
            self.counters["bad_request"] += 1
            return self._stateless(request, 400, f"Bad Request ({problem})", via, source, reliable)

        key, compare_tags = server_request_key(request.method, request.uri, request.headers, via)
        to_tag = header_tag(request.headers.get("To"))
        if request.method == "ACK":
            target = self._find_server(key, compare_tags, to_tag, is_ack=True)
            if isinstance(target, ServerInviteTransaction):
                if target.state is TxState.PROCEEDING:
                    self.counters["ack_in_proceeding"] += 1
                return self._after(target, target.on_ack(request, source, now))
            return [AckReceived(request, source)]

        existing = self._find_server(key, compare_tags, to_tag)
        if existing is not None:
            return self._after(existing, existing.on_retransmission(request, now))
        if len(self._by_serial) >= self.config.max_transactions:
            self.counters["overload"] += 1
            return self._stateless(request, 503, "Service Unavailable", via, source, reliable)

        tx_id = TransactionId("server", request.method, via.branch, next(self._serials))
        destination = response_destination(via, source, reliable)
        cls = ServerInviteTransaction if request.method == "INVITE" else ServerNonInviteTransaction
        tx = cls(tx_id, request, source, destination, reliable, self.config)
        response_key = server_response_key(request.headers)
        self._by_serial[tx_id.serial] = tx
        self._servers.setdefault(key, []).append(tx)
        if response_key is not None:
            self._by_response_key[response_key] = tx
        self._keys[tx_id.serial] = (key, response_key)

        if request.method != "CANCEL":
            return self._after(tx, tx.start(now))
        events = tx.start(now, announce=False)
        events.extend(self._answer_cancel(tx, request, via, to_tag, now))
        return self._after(tx, events)

    def _answer_cancel(
        self,
        cancel_tx: ServerTransaction,
        cancel: SipRequest,
        via: TopVia,
        to_tag: str | None,
        now: float,
    ) -> list[Event]:
        """Answer a new CANCEL (§9.2): 200 when it matches an INVITE transaction (and tell
        the TU if that INVITE still awaits its final response), else 481."""
        invite_key, compare_tags = server_request_key("INVITE", cancel.uri, cancel.headers, via)
        invite_tx = self._find_server(invite_key, compare_tags, to_tag)
        if not isinstance(invite_tx, ServerInviteTransaction):
            answer = response_to(
                cancel, 481, "Call/Transaction Does Not Exist", local_tag(cancel)
            )
            return cancel_tx.respond(answer, now) or []
        # The CANCEL's 200 should carry the same To tag as the INVITE's responses (§9.2).
        answer = response_to(cancel, 200, "OK", invite_tx.response_to_tag or local_tag(cancel))
        events = cancel_tx.respond(answer, now) or []
        # Once per INVITE: a CANCEL copy arriving after its own transaction ended (at once on
        # TCP, after timer J on UDP) is answered again but not reported again.
        if invite_tx.state is TxState.PROCEEDING and not invite_tx.cancel_reported:
            invite_tx.cancel_reported = True
            events.append(CancelReceived(cancel, invite_tx.id))
        return events

    def _find_server(
        self, key: ServerKey, compare_tags: bool, to_tag: str | None, is_ack: bool = False
    ) -> ServerTransaction | None:
        for tx in self._servers.get(key, ()):
            if not compare_tags or tx.request_to_tag == to_tag:
                return tx
            # RFC 2543 ACK: its To tag is the one our response added.
            if is_ack and tx.response_to_tag == to_tag:
                return tx
        return None

    def _stateless(
        self,
        request: SipRequest,
        status: int,
        reason: str,
        via: TopVia,
        source: Address,
        reliable: bool,
    ) -> list[Event]:
        answer = response_to(request, status, reason, local_tag(request))
        destination = response_destination(via, source, reliable)
        return [SendMessage(answer, destination, answer.to_bytes(), reliable, None)]

    # ---- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `handle_timeouts` next has work, or None when no timer runs."""
        heap = self._heap
        while heap:
            deadline, _, serial, name = heap[0]
            tx = self._by_serial.get(serial)
            if tx is not None and tx.timers.get(name) == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timeouts(self, now: float) -> list[Event]:
        """Fire every timer due at or before `now`, in deadline order."""
        events: list[Event] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return events
            _, _, serial, name = heapq.heappop(self._heap)
            tx = self._by_serial[serial]
            del tx.timers[name]
            events.extend(self._after(tx, tx.on_timer(name, deadline, now)))

    # ---- bookkeeping ---------------------------------------------------------------------

    def _after(self, tx: Transaction, events: list[Event]) -> list[Event]:
        """Schedule the timers `tx` armed; remove it if it terminated."""
        for name, deadline in tx.armed:
            heapq.heappush(self._heap, (deadline, next(self._heap_order), tx.id.serial, name))
        tx.armed.clear()
        if tx.state is TxState.TERMINATED:
            self._remove(tx)
            events.append(TransactionTerminated(tx.id))
        return events

    def _remove(self, tx: Transaction) -> None:
        serial = tx.id.serial
        if self._by_serial.pop(serial, None) is None:
            return
        match_key, response_key = self._keys.pop(serial)
        if isinstance(tx, ClientTransaction):
            self._clients.pop(match_key, None)  # type: ignore[arg-type]
            return
        peers = self._servers.get(match_key, [])  # type: ignore[arg-type]
        if tx in peers:
            peers.remove(tx)
        if not peers:
            self._servers.pop(match_key, None)  # type: ignore[arg-type]
        if response_key is not None and self._by_response_key.get(response_key) is tx:
            del self._by_response_key[response_key]
