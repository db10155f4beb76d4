"""agentd demo: a PBX on loopback, agentd as extension 2001, and scripted calls to it.

Run through `tools/demo` (it installs what is needed first). Everything stays on 127.0.0.1:
  1. Kamailio starts as the PBX (digest auth; extension N has password pwN).
  2. agentd starts as extension 2001 with the echo line-test app (DTMF 9 transfers to 4000).
  3. A baresip phone (2000) calls 2001 and sends a 440 Hz tone; we measure what comes back.
  4. The phone presses 9; agentd blind-transfers it with REFER to 4000, another baresip
     phone, which answers and hears the caller.
Later issues grow this into a full conversation with the AI agent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.audio import analyse_wav  # noqa: E402
from tests.harness.baresip import Baresip  # noqa: E402
from tests.harness.kamailio import Kamailio  # noqa: E402
from tests.harness.ports import PortAllocator, is_free  # noqa: E402

AGENT_EXTENSION = "2001"


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def write_config(path: Path, pbx_port: int, sip_port: int, rtp_base: int) -> None:
    path.write_text(
        f"""# agentd demo config (see config.example.yaml for every key)
sip:
  registrar: 127.0.0.1:{pbx_port}
  extension: "{AGENT_EXTENSION}"
  password: "pw{AGENT_EXTENSION}"
  local_port: {sip_port}
  register_expires: 60
  display_name: "agentd demo"
media:
  rtp_port_min: {rtp_base}
  rtp_port_max: {rtp_base + 40}
app:
  mode: echo
  echo_delay_ms: 200
  dtmf_transfer:
    "9": "4000"
log:
  level: info
records:
  database: calls.db
"""
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the PBX and agentd running for a real softphone "
                             "until Ctrl-C")
    args = parser.parse_args()

    ports = PortAllocator()
    work = Path(tempfile.mkdtemp(prefix="agentd-demo-"))
    pbx_port = 5060 if is_free(5060) else ports.port()
    pbx = Kamailio(work / "kamailio", pbx_port)
    processes: list[subprocess.Popen[bytes]] = []
    phones: list[Baresip] = []
    ok = True
    try:
        pbx.start()
        say(f"Kamailio PBX listening on 127.0.0.1:{pbx_port} (udp+tcp)")

        config = work / "agentd.yaml"
        write_config(config, pbx_port, ports.port(), ports.port_range(40))
        log_path = work / "agentd.log"
        agent = subprocess.Popen(
            [sys.executable, "-m", "agentd", "run", "-c", str(config)],
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        )
        processes.append(agent)
        if not wait_for(lambda: pbx.registered(AGENT_EXTENSION), 10):
            say("agentd did not register; its log:\n" + log_path.read_text())
            return 1
        say(f"agentd registered as {AGENT_EXTENSION}: {pbx.registered(AGENT_EXTENSION)[0]}")

        def phone(extension: str, tone: float) -> Baresip:
            made = Baresip(work / f"phone{extension}", extension, registrar_port=pbx_port,
                           sip_port=ports.port(), ctrl_port=ports.port(udp=False),
                           rtp_base=ports.port_range(20), tone_hz=tone)
            phones.append(made)
            return made.start()

        caller = phone("2000", 440.0)
        desk = phone("4000", 660.0)
        say("phones 2000 (caller, sends 440 Hz) and 4000 (front desk, 660 Hz) registered")

        say("call 1: 2000 dials 2001 (echo test, 3 s)")
        caller.dial(AGENT_EXTENSION)
        caller.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(3)
        caller.hangup()
        caller.wait_event("CALL_CLOSED", 10)
        time.sleep(0.3)
        heard = analyse_wav(max(caller.received_wavs(), key=lambda p: p.stat().st_mtime))
        echoed = abs(heard.dominant_hz - 440) < 5 and heard.active_fraction > 0.5
        ok &= echoed
        say(f"  caller heard {heard.dominant_hz:.0f} Hz at {heard.active_rms_dbfs:.1f} dBFS "
            f"for {heard.active_fraction:.0%} of the call -> echo {'OK' if echoed else 'FAILED'}")

        time.sleep(1.1)  # baresip names recordings by the second
        say("call 2: 2000 dials 2001 and presses 9 -> agentd transfers to 4000")
        caller.dial(AGENT_EXTENSION)
        caller.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(1)
        caller.command("sndcode 9")  # RFC 4733 telephone-event
        try:
            desk.wait_event("CALL_ESTABLISHED", 15)
        except Exception:
            say("agentd's log:\n" + log_path.read_text())
            say("caller's log:\n" + caller.log_text()[-3000:])
            say("pbx log:\n" + pbx.log_text()[-3000:])
            raise
        say("  4000 answered the transferred call")
        time.sleep(3)
        caller.hangup()
        desk.wait_event("CALL_CLOSED", 10)
        time.sleep(0.3)
        desk_heard = analyse_wav(max(desk.received_wavs(), key=lambda p: p.stat().st_mtime))
        transferred = abs(desk_heard.dominant_hz - 440) < 5
        ok &= transferred
        say(f"  front desk heard {desk_heard.dominant_hz:.0f} Hz (the caller's tone) -> "
            f"transfer {'OK' if transferred else 'FAILED'}")

        say("agentd's log:")
        for line in log_path.read_text().splitlines():
            print("    " + line)

        print(
            f"\nTo call agentd from a real softphone, run `tools/demo --keep`, register the\n"
            f"softphone at 127.0.0.1:{pbx_port} as extension 3000 (user 3000, password pw3000,\n"
            f"domain 127.0.0.1) and dial {AGENT_EXTENSION}; press 9 to be transferred to 4000."
        )
        if args.keep:
            for made in phones:
                made.stop()
            say("PBX and agentd keep running; Ctrl-C to stop")
            try:
                while agent.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        say("demo " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        for made in phones:
            made.stop()
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        pbx.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
