"""The daemon dying during a live AI call (issue 7 §4), through Kamailio to `agentd run`.

SIGTERM: the call in progress gets the policy's goodbye, a BYE, and a complete record, and
the process exits 0. SIGKILL: nothing runs any more, yet every turn committed before the kill
is readable from the records store. Each test gets its own Kamailio + agentd (it kills it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.caller import ScriptedCaller

from .rig import DEFAULT_MODEL, AgentRig, caller_speech, missing_requirements

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def own_rig(tmp_path: Path) -> Iterator[AgentRig]:
    missing = missing_requirements(DEFAULT_MODEL)
    if missing:
        pytest.skip("end-to-end needs: " + "; ".join(missing))
    rig = AgentRig(tmp_path / "rig", model=DEFAULT_MODEL)
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


async def _answered_turn(rig: AgentRig, caller: ScriptedCaller) -> str:
    """Dial, let the greeting play, ask one question and wait until its turn is committed."""
    started = time.monotonic()
    await caller.dial()
    assert await caller.wait_quiet(started, quiet_s=1.0, timeout=30) is not None, "no greeting"
    ref = rig.call_ref(caller.call_id or "")
    assert ref is not None
    said = await caller.say(caller_speech("What are your opening hours?", tail_s=0.1))
    assert await caller.wait_voice(said.last_voiced, timeout=30) is not None, "no reply"
    # Committed, not merely logged (the log line may come before the commit), and polled
    # without blocking the event loop (the caller's RTP keeps flowing).
    deadline = time.monotonic() + 60
    while True:
        row = rig.call_row(caller.call_id or "")
        speakers = [t["speaker"] for t in row.turns] if row else []
        if "caller" in speakers and speakers[-1] == "agent":
            return ref
        assert time.monotonic() < deadline, "the answered turn was never committed"
        await asyncio.sleep(0.1)


async def test_sigkill_mid_call_keeps_every_committed_turn(own_rig: AgentRig) -> None:
    assert own_rig.agentd is not None and own_rig.agentd.pid is not None
    caller = ScriptedCaller(own_rig.pbx_address, from_user="+447700900561")
    try:
        await _answered_turn(own_rig, caller)
        os.kill(own_rig.agentd.pid, signal.SIGKILL)
        assert own_rig.agentd.wait_exit(10) is not None
    finally:
        await caller.close()
    row = own_rig.call_row(caller.call_id or "")
    assert row is not None, "the call's record is gone"
    assert row.outcome is None  # it never ended, but what was committed is there
    callers = [t["text"].lower() for t in row.turns if t["speaker"] == "caller"]
    agents = [t["text"] for t in row.turns if t["speaker"] == "agent"]
    assert any("hours" in text or "open" in text for text in callers), row.turns
    assert agents and all(agents), row.turns


async def test_sigterm_mid_call_says_goodbye_and_completes_the_record(
        own_rig: AgentRig) -> None:
    assert own_rig.agentd is not None and own_rig.agentd.pid is not None
    caller = ScriptedCaller(own_rig.pbx_address, from_user="+447700900562")
    try:
        await _answered_turn(own_rig, caller)
        await caller.wait_quiet(time.monotonic(), quiet_s=0.8, timeout=40)
        stopped_at = time.monotonic()
        os.kill(own_rig.agentd.pid, signal.SIGTERM)
        # Drain (service.drain_seconds, 5 s by default), then the goodbye line, then BYE.
        await asyncio.wait_for(caller.ended.wait(), 40)
        goodbye_s = caller.heard_audio_s(stopped_at)
        code = own_rig.agentd.wait_exit(30)
    finally:
        await caller.close()
    assert goodbye_s >= 0.5, f"only {goodbye_s:.2f} s of agent audio after SIGTERM"
    assert code == 0
    row = own_rig.call_row(caller.call_id or "")
    assert row is not None
    assert row.outcome is not None and row.end_reason, (row.outcome, row.end_reason)
    assert any(t["speaker"] == "caller" for t in row.turns), row.turns
