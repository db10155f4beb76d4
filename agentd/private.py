"""`Private`: a log argument that hides personal data (caller numbers, transcripts).

Any layer may wrap a value in it without depending on the service layer; the service's log
formatter (`agentd.service.logging`) unmasks it only when the operator enables private data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PrivateKind = Literal["caller", "transcript"]


@dataclass(frozen=True)
class Private:
    """A log argument the operator sees only when private data is enabled (level debug)."""

    value: str
    kind: PrivateKind = "caller"

    def masked(self) -> str:
        if self.kind == "transcript":
            return f"<transcript {len(self.value)} chars>"
        return "<caller>"

    def __str__(self) -> str:  # the safe default wherever no formatter unmasks it
        return self.masked()

    __repr__ = __str__
