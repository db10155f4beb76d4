from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.records import CallEnd, CallStore, ToolCall, Turn, TurnLatency

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CallStore]:
    with CallStore(tmp_path / "state" / "calls.db") as opened:
        yield opened


def fill_call(
    store: CallStore, ref: str = "ab12cd34", at: float = T0, caller: str = "+4930123456"
) -> None:
    """A finished, transferred call with three turns and a tool call."""
    store.start_call(ref, call_id=f"{ref}@pbx", caller=caller, at=at)
    store.answered(ref, at + 1)
    store.add_turn(ref, Turn(1, "agent", "Hello, Smile Dental.", at + 1.2, at + 3))
    store.add_turn(ref, Turn(2, "caller", "I need an appointment", at + 5, at + 5))
    store.add_turn(
        ref,
        Turn(
            3,
            "agent",
            "Monday at nine",
            at + 5.6,
            at + 6,
            interrupted=True,
            latency=TurnLatency(
                eos_detect_ms=210, asr_final_ms=55, response_ms=640, first_content_ms=910
            ),
        ),
    )
    store.add_tool_call(
        ref, ToolCall(3, "find_slots", {"day": "monday"}, True, {"slots": ["09:00"]}, None, 12.5)
    )
    store.end_call(
        ref,
        CallEnd(
            "transferred",
            at + 70,
            "transferred",
            "reception",
            "caller asked for a person",
            handoff={
                "summary": "wants an appointment",
                "caller_id": caller,
                "facts": {"name": "Ann"},
            },
        ),
    )
