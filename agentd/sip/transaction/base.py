"""What every transaction state machine shares: identity, state, timers, sending."""

from __future__ import annotations

from agentd.sip.message import SipMessage
from agentd.sip.transaction.config import TransactionConfig
from agentd.sip.transaction.events import Address, Event, SendMessage, TransactionId, TxState


class Transaction:
    """Base of the four RFC 3261 §17 state machines.

    Methods take `now` and return events; timers are deadlines in `timers` that the layer
    schedules (newly armed ones queue in `armed` for it) and fires through `on_timer`. A
    transaction in TERMINATED sends nothing; the layer removes it.
    """

    def __init__(
        self, tx_id: TransactionId, peer: Address, reliable: bool, config: TransactionConfig
    ) -> None:
        self.id = tx_id
        self.peer = peer
        self.reliable = reliable
        self.config = config
        self.state = TxState.TERMINATED
        self.timers: dict[str, float] = {}
        self.armed: list[tuple[str, float]] = []

    def arm(self, name: str, deadline: float) -> None:
        self.timers[name] = deadline
        self.armed.append((name, deadline))

    def disarm(self, *names: str) -> None:
        for name in names:
            self.timers.pop(name, None)

    def terminate(self) -> None:
        self.state = TxState.TERMINATED
        self.timers.clear()

    def wait_or_terminate(self, name: str, duration: float, now: float) -> None:
        """Arm a linger timer (D, I, J, K); a zero wait (reliable transport) ends at once."""
        if duration > 0:
            self.arm(name, now + duration)
        else:
            self.terminate()

    def send(self, message: SipMessage, data: bytes | None = None) -> SendMessage:
        return SendMessage(
            message,
            self.peer,
            data if data is not None else message.to_bytes(),
            self.reliable,
            self.id,
        )

    def on_timer(self, name: str, deadline: float, now: float) -> list[Event]:
        """Timer `name`, due at `deadline`, fired (at `now` >= deadline)."""
        raise NotImplementedError
