"""A cancellation flag that work running in another thread checks between steps."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class CancelToken:
    """Set from any thread to stop work at its next step (barge-in, hang-up): a TTS engine
    between chunks, an LLM between tokens."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
