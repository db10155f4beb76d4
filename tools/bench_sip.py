#!/usr/bin/env python3
"""SIP load benchmark: SIPp places N calls (C at a time) through Kamailio to agentd's echo app.

Starts its own Kamailio and agentd on free loopback ports in a temporary directory, plays a
440 Hz mu-law tone (pcap) into every call, and prints call rate, call success, agentd's CPU
time and CPU % over the run (from /proc/<pid>/stat), and the RTP echo evidence: one stream
per call seen coming back from agentd on loopback (AF_PACKET capture; needs root or
CAP_NET_RAW, otherwise reported as unavailable). Everything is bounded and cleaned up.

    .venv/bin/python tools/bench_sip.py [CALLS] [CONCURRENCY] [--call-ms 2000] [--rate 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.harness import sipp  # noqa: E402
from tests.harness.agentd import (  # noqa: E402
    Agentd,
    LoopbackRtpCapture,
    summarise_streams,
    write_rtp_pcap,
)
from tests.harness.audio import tone  # noqa: E402
from tests.harness.kamailio import Kamailio  # noqa: E402
from tests.harness.ports import PortAllocator  # noqa: E402
from tests.harness.process import HarnessError  # noqa: E402

TONE_HZ = 440.0
TONE_DBFS = -12.0


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (0.0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("calls", nargs="?", type=int, default=50, help="calls to place (50)")
    parser.add_argument("concurrency", nargs="?", type=int, default=10,
                        help="calls at a time (10)")
    parser.add_argument("--call-ms", type=int, default=2000, help="call length in ms (2000)")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls per second (20)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up after this many seconds (300)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 100_000 or not 1 <= args.concurrency <= 250:
        parser.error("calls must be 1-100000 and concurrency 1-250")
    if args.call_ms < 200:
        parser.error("--call-ms must be at least 200")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [b for b in ("kamailio", "kamcmd", "sipp") if shutil.which(b) is None]
    if missing:
        print(f"missing binaries: {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-sip-"))
    ports = PortAllocator()
    rtp_pairs = args.concurrency + 8
    pbx = Kamailio(work / "kamailio", ports.port(), children=4)
    agent = Agentd(work / "agentd", registrar_port=pbx.port, sip_port=ports.port(),
                   rtp_port_min=ports.port_range(2 * rtp_pairs), rtp_port_count=2 * rtp_pairs,
                   max_calls=args.concurrency + 4, log_level="info")
    capture: LoopbackRtpCapture | None = None
    try:
        pbx.start()
        agent.start(pbx, timeout=10)
        uac_dir = work / "uac"
        uac_dir.mkdir()
        tone_s = max(0.2, args.call_ms / 1000 - 0.4)
        write_rtp_pcap(uac_dir / "audio.pcap", tone(TONE_HZ, level_dbfs=TONE_DBFS,
                                                    seconds=tone_s))
        rtp_ports = range(agent.rtp_port_min, agent.rtp_port_max)
        try:
            capture = LoopbackRtpCapture(lambda src, dst: src in rtp_ports).start()
        except PermissionError:
            capture = None
        # SIPp gives call n the media port mp + 4(n-1) (mod 10000): reserve them all.
        run = sipp.Sipp(uac_dir, sipp.scenario("uac_pcap_agentd"), remote=pbx.address,
                        service=agent.extension, local_port=ports.port(),
                        media_port=ports.port_range(4 * min(args.calls, 2500)),
                        calls=args.calls,
                        concurrency=args.concurrency, rate=args.rate,
                        duration_ms=args.call_ms, timeout_s=args.timeout)
        cpu_before = agent.cpu_seconds()
        started = time.monotonic()
        result = run.run(timeout=args.timeout + 10)
        wall = time.monotonic() - started
        cpu = agent.cpu_seconds() - cpu_before
        rss = rss_mib(agent.pid or 0)
        time.sleep(0.3)  # the last echoes in flight
        packets = capture.stop() if capture is not None else []
    except HarnessError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if capture is not None:
            capture.stop()
        agent.stop()
        pbx.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"calls             {args.calls} placed, {args.concurrency} at a time, "
          f"{args.call_ms} ms each, up to {args.rate:g} new/s")
    print(f"call success      {result.successful}/{result.created} successful, "
          f"{result.failed} failed (SIPp exit {result.returncode})")
    print(f"wall time         {wall:.2f} s")
    print(f"call rate         {result.successful / wall:.2f} calls/s completed")
    print(f"agentd CPU        {cpu:.2f} s user+system, {100 * cpu / wall:.1f} % of one core"
          f" ({1000 * cpu / max(1, result.successful):.1f} ms per call); RSS {rss:.0f} MiB")
    if capture is None:
        print("RTP echo          capture unavailable (needs root or CAP_NET_RAW)")
    else:
        evidence = summarise_streams(packets)
        min_audible = max(1, int(tone_s * 50 / 2))
        echoed = evidence.audible_streams(min_audible, TONE_HZ)
        print(f"RTP echo          {len(evidence.streams)} streams from agentd, "
              f"{len(echoed)} carried the {TONE_HZ:g} Hz tone back "
              f"(>= {min_audible} audible 20 ms packets each); "
              f"{evidence.packets} packets, {evidence.audible_packets} audible"
              + (f", {capture.dropped} over the capture limit" if capture.dropped else ""))
    if args.keep:
        print(f"work directory    {work}")
    return 0 if result.ok and result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
