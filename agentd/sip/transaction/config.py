"""Timer values and limits for the transaction layer (RFC 3261 §17, Table 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransactionConfig:
    """RFC 3261 timer base values in seconds, plus layer limits.

    `timer_d` is the wait in the INVITE client Completed state on unreliable transports
    (RFC 3261 says "at least 32 s"). `trying_delay` is how long an INVITE server transaction
    waits for the TU's own provisional before it sends 100 Trying itself (§17.2.1: 200 ms);
    0 sends it at once, None never. `max_transactions` bounds memory under a request flood:
    past it, new requests are answered 503 statelessly.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    trying_delay: float | None = 0.2
    max_transactions: int = 4096

    def __post_init__(self) -> None:
        if not self.t1 > 0:
            raise ValueError(f"t1 must be > 0, got {self.t1}")
        if not self.t2 >= self.t1:
            raise ValueError(f"t2 must be >= t1, got {self.t2}")
        if not self.t4 >= 0:
            raise ValueError(f"t4 must be >= 0, got {self.t4}")
        if not self.timer_d >= 0:
            raise ValueError(f"timer_d must be >= 0, got {self.timer_d}")
        if self.trying_delay is not None and not self.trying_delay >= 0:
            raise ValueError(f"trying_delay must be >= 0 or None, got {self.trying_delay}")
        if self.max_transactions < 1:
            raise ValueError(f"max_transactions must be >= 1, got {self.max_transactions}")

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, L, M and (on UDP) J."""
        return 64 * self.t1
