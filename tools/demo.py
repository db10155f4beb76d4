"""agentd demo: a PBX on loopback, the AI receptionist as extension 2001, two scripted calls.

Run through `tools/demo` (it installs what is needed first). Everything stays on 127.0.0.1:
  1. Kamailio starts as the PBX (digest auth; extension N has password pwN), on port 5060
     when it is free.
  2. agentd starts as extension 2001 answering with the dental example (Bright Smile Dental,
     Qwen2.5-Coder 1.5B at temperature 0), its calendar a fresh copy under the work dir.
  3. A baresip phone registers as 3001, the practice's billing desk, and a stand-in CRM
     (examples/crm.py) answers the practice's webhooks on 127.0.0.1:8780 (the text-message
     confirmation tool, the hand-off record); each request it gets is printed.
  4. A scripted caller (James O'Connor, +447700900102, a flite voice) calls 2001 and moves
     his appointment to Tuesday; then calls again, asks where the practice is, talks over
     the answer (barge-in) with an insurance question, and is put through to billing (REFER).
     Each turn prints with its latency measured from the RTP packets.
  5. The calendar's new state and both call records (`agentd calls show`) are printed.
With --keep the PBX and agentd stay up: register a softphone to the demo PBX as 3000
(password pw3000) and dial 2001 to talk to the agent yourself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.crm import DEFAULT_PORT as CRM_PORT  # noqa: E402
from examples.crm import CrmRequest, CrmStandIn  # noqa: E402
from tests.e2e.rig import (  # noqa: E402
    CLEAR_VOICE,
    DEFAULT_MODEL,
    AgentRig,
    caller_speech,
    missing_requirements,
)
from tests.harness.baresip import Baresip  # noqa: E402
from tests.harness.caller import ScriptedCaller  # noqa: E402
from tests.harness.ports import PortAllocator, is_free  # noqa: E402

CALLER = "+447700900102"
# Two calls, each a list of (what the caller does, what the caller says). The agent may
# well say goodbye once the appointment is moved (the policy lets it), so the barge-in and
# the transfer are a second call rather than lines that might never be reached.
CALLS: list[list[tuple[str, str]]] = [
    [
        ("say", "Hello, I need to move my appointment on Thursday."),
        ("say", "James O'Connor, date of birth third of May nineteen eighty five."),
        ("say", "Could I come on Tuesday next week instead? Any time is fine."),
        ("say", "The first one please."),
        ("say", "Yes, that's right."),
    ],
    [
        ("barge", "Where are you, and is there parking nearby?"),
        ("transfer", "Sorry to interrupt. Do you accept my insurance for a crown?"),
    ],
]


def note(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Transcript:
    """Prints agent lines from the records store as they land, once each."""

    def __init__(self, rig: AgentRig, call_id: str) -> None:
        self.rig = rig
        self.call_id = call_id
        self.printed: set[int] = set()

    def flush(self) -> None:
        row = self.rig.call_row(self.call_id)
        for turn in row.turns if row else []:
            if turn["speaker"] != "agent" or turn["index"] in self.printed:
                continue
            self.printed.add(turn["index"])
            cut = " [interrupted]" if turn["interrupted"] else ""
            print(f"   agent : {turn['text']}{cut}", flush=True)


async def scripted_call(rig: AgentRig, script: list[tuple[str, str]],
                        deadline: float) -> str | None:
    caller = ScriptedCaller(rig.pbx_address, from_user=CALLER)
    ref: str | None = None
    try:
        started = time.monotonic()
        await caller.dial()
        ref = rig.call_ref(caller.call_id or "")
        transcript = Transcript(rig, caller.call_id or "")
        note(f"call {ref} answered; the agent greets the caller")
        await caller.wait_quiet(started, quiet_s=1.0, timeout=30)
        await asyncio.to_thread(rig.wait_turn_logged, ref or "", 0, 5)
        transcript.flush()
        turn = 0
        # Each line waits for what a caller waits for: agentd's answer finished (its turn
        # logged, found by kind and order, never by a fixed number) and the line quiet for
        # 0.7 s; the next line follows at once, well inside the 7 s silence re-prompt.
        for action, text in script:
            if caller.ended.is_set() or time.monotonic() > deadline:
                break
            turn += 1
            print(f"   caller: {text}", flush=True)
            said = await caller.say(caller_speech(text, voice=CLEAR_VOICE, tail_s=0.1))
            seen = rig.last_turn(ref or "")  # the answer cannot be logged before now
            if action == "transfer":
                refer_to = await caller.wait_refer(timeout=40)
                transcript.flush()
                if refer_to is None:
                    note("no transfer happened")
                    break
                note(f"agentd sent REFER to {refer_to}; the caller follows it")
                staff = await caller.follow_refer(timeout=15)
                note("billing desk (baresip 3001) answered; agentd leaves the call")
                await asyncio.wait_for(caller.ended.wait(), 10)
                await asyncio.sleep(2.0)
                await staff.hangup()
                break
            first = await caller.wait_voice(said.last_voiced, timeout=30)
            if first is None:
                note("no reply")
                continue
            first_ms = (first.time - said.last_voiced) * 1000
            if action == "barge":
                await asyncio.sleep(1.2)
                note(f"first agent audio {first_ms:.0f} ms after the caller stopped; "
                     "the caller now talks over the reply")
                continue  # the next line is spoken over the reply
            if await rig.wait_reply(caller, ref or "", seen, said.last_voiced,
                                    timeout=90) is None:
                note("no answer")
                continue
            transcript.flush()
            row = rig.call_row(caller.call_id or "")
            agent_turns = [t for t in (row.turns if row else []) if t["speaker"] == "agent"]
            content = agent_turns[-1].get("first_content_ms") if agent_turns else None
            extra = f", first content {content:.0f} ms (agentd's record)" if content else ""
            note(f"turn {turn}: first agent audio on the wire {first_ms:.0f} ms{extra}")
        if not caller.ended.is_set():
            await caller.hangup()
        if ref:
            await asyncio.to_thread(rig.wait_call_finished, ref, 15)
        transcript.flush()
    finally:
        await caller.close()
        if caller.transferee is not None:
            await caller.transferee.close()
    return ref


def main() -> int:
    parser = argparse.ArgumentParser(description="agentd demo (see tools/demo.py)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the PBX and agentd running for a real softphone")
    parser.add_argument("--no-call", action="store_true", help="skip the scripted call")
    parser.add_argument("--max-minutes", type=float, default=5.0)
    args = parser.parse_args()
    missing = missing_requirements(DEFAULT_MODEL)
    if shutil.which("baresip") is None:
        missing.append("baresip")
    if missing:
        note("missing: " + "; ".join(missing) + " (tools/setup.sh installs them)")
        return 2
    deadline = time.monotonic() + args.max_minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="agentd-demo-"))
    ports = PortAllocator()
    pbx_port = 5060 if is_free(5060) else ports.port()
    note(f"work dir {workdir}; starting Kamailio on 127.0.0.1:{pbx_port} and agentd "
         "(dental example, loading models)")
    rig = AgentRig(workdir, pbx_port=pbx_port).start()
    phone = None
    crm: CrmStandIn | None = None
    try:
        crm = start_crm(rig)
        phone = Baresip(workdir / "phone3001", "3001", registrar_port=pbx_port,
                        sip_port=ports.port(), ctrl_port=ports.port(udp=False),
                        rtp_base=ports.port_range(20)).start()
        note("agentd registered as 2001; baresip registered as 3001 (billing desk)")
        refs: list[str] = []
        for number, script in enumerate([] if args.no_call else CALLS, 1):
            if time.monotonic() > deadline:
                break
            note(f"call {number} of {len(CALLS)}: the caller dials 2001")
            ref = asyncio.run(scripted_call(rig, script, deadline))
            if ref:
                refs.append(ref)
        if refs:
            booked = rig.sql("dental.sqlite", "SELECT s.start FROM appointments a JOIN slots s "
                             "ON s.id = a.slot_id WHERE a.phone = ? AND a.status = 'booked'",
                             (CALLER,))
            note("calendar: the caller's appointment is now at "
                 + (", ".join(row[0] for row in booked) or "nothing booked"))
            assert rig.agentd is not None
            for ref in refs:
                note(f"call record (agentd calls show {ref}):")
                subprocess.run([sys.executable, "-m", "agentd", "calls", "show", ref, "-c",
                                str(rig.agentd.config_path)], cwd=ROOT, timeout=30,
                               check=False)
        if args.keep:
            note(f"PBX and agent stay up. Register a softphone to 127.0.0.1:{pbx_port} as "
                 "extension 3000 (user 3000, password pw3000) and dial 2001. Ctrl-C stops.")
            try:
                while rig.agentd is not None and rig.agentd.running():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            note("to talk to the agent from a real softphone: tools/demo --keep, then register "
                 f"as 3000 / pw3000 at 127.0.0.1:{pbx_port} and dial 2001")
    finally:
        if phone is not None:
            phone.stop()
        if crm is not None:
            crm.stop()
        rig.stop()
    return 0


def start_crm(rig: AgentRig) -> CrmStandIn | None:
    """The stand-in for the practice's CRM on the address the dental policy's webhooks use."""
    if not is_free(CRM_PORT, udp=False):
        note(f"port {CRM_PORT} is taken: no stand-in CRM (the confirmation tool will fail, "
             "and the agent will say so)")
        return None
    token_file = rig.example_dir / "secrets" / "crm-token"
    token = token_file.read_text().strip() if token_file.is_file() else None

    def report(request: CrmRequest) -> None:
        token_state = {True: "with the CRM token", False: "WRONG token", None: "no token"}
        body = json.dumps(request.body)[:160] if request.body is not None else ""
        note(f"CRM got {request.method} {request.path} ({token_state[request.token]}) {body}")

    return CrmStandIn(token=token, on_request=report).start()


if __name__ == "__main__":
    sys.exit(main())
