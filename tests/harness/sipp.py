"""Run SIPp scenarios (tests/harness/sipp/*.xml) on loopback and parse their results.

Each run gets its own working directory: SIPp writes its statistics CSV (-trace_stat),
final screens (-trace_screen) and error log there, and the scenarios find their audio
("tone.ulaw" for rtp_stream, "audio.pcap" for play_pcap_audio) there by relative name.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .audio import write_ulaw_tone
from .process import HarnessError, is_running, kill_group, spawn, tail, wait_until
from .ports import is_free

SCENARIO_DIR = Path(__file__).with_name("sipp")
SHIPPED_PCAP = Path("/usr/share/sip-tester/g711a.pcap")
# Exit codes documented by SIPp.
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
EXIT_NO_CALLS = 99


def scenario(name: str) -> Path:
    """Path of a bundled scenario, e.g. scenario("uac_rtp_stream")."""
    path = SCENARIO_DIR / f"{name.removesuffix('.xml')}.xml"
    if not path.is_file():
        raise HarnessError(f"no SIPp scenario {path}")
    return path


@dataclass(frozen=True)
class SippResult:
    """Outcome of one SIPp run."""

    returncode: int
    successful: int
    failed: int
    created: int
    elapsed_s: float
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.returncode == EXIT_ALL_OK and self.failed == 0 and self.successful > 0

    def log_text(self) -> str:
        """stdout/stderr and error traces of the run, for assertion messages."""
        parts = [tail(p, 4000) for p in sorted(self.workdir.glob("*errors.log"))]
        parts.append(tail(self.workdir / "sipp.out", 4000))
        return "\n".join(parts)


def parse_stat_csv(path: Path) -> dict[str, str]:
    """Last row of a SIPp -trace_stat CSV (';'-separated) as column -> value."""
    with open(path, newline="", errors="replace") as handle:
        rows = [row for row in csv.reader(handle, delimiter=";") if row]
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name.strip(): value.strip() for name, value in zip(header, last) if name.strip()}


def _hhmmss_to_s(text: str) -> float:
    match = re.fullmatch(r"(\d+):(\d+):(\d+)(?::(\d+))?", text.strip())
    if not match:
        return 0.0
    hours, minutes, seconds, micros = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + micros / 1e6


def parse_screen(text: str) -> dict[str, int]:
    """Counters from a SIPp final screen dump (-trace_screen): successful and failed calls."""
    found: dict[str, int] = {}
    patterns = {
        "successful": r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)",
        "failed": r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)",
    }
    for key, pattern in patterns.items():
        values = re.findall(pattern, text)
        if values:
            found[key] = int(values[-1])
    return found


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Sipp:
    """One SIPp process (UAC or UAS) bound to 127.0.0.1, run in `workdir`."""

    def __init__(self, workdir: Path, scenario_file: Path, *, local_port: int,
                 media_port: int, remote: str | None = None, service: str | None = None,
                 calls: int | None = None, concurrency: int | None = None,
                 rate: float | None = None, duration_ms: int | None = None,
                 timeout_s: float = 60.0, rtp_echo: bool = False,
                 auth: tuple[str, str] | None = None, keys: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = (), sipp_bin: str = "sipp") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A copy next to the audio files: SIPp looks for play_pcap_audio files there first.
        self.scenario_file = Path(shutil.copyfile(scenario_file,
                                                  self.workdir / Path(scenario_file).name))
        self.local_port = local_port
        self.media_port = media_port
        self.timeout_s = timeout_s
        self.stat_path = self.workdir / "stat.csv"
        self.out_path = self.workdir / "sipp.out"
        argv = [sipp_bin]
        if remote:
            argv.append(remote)
        argv += ["-sf", str(self.scenario_file), "-i", "127.0.0.1", "-p", str(local_port),
                 "-mi", "127.0.0.1", "-mp", str(media_port), "-nostdin",
                 # SIPp's own global timeout ends the run even if calls hang.
                 "-timeout", f"{int(timeout_s)}s", "-timeout_error",
                 "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
                 "-trace_screen", "-trace_err"]
        if service:
            argv += ["-s", service]
        if calls is not None:
            argv += ["-m", str(calls)]
        if concurrency is not None:
            argv += ["-l", str(concurrency)]
        if rate is not None:
            argv += ["-r", f"{rate:g}"]
        if duration_ms is not None:
            argv += ["-d", str(duration_ms)]
        if rtp_echo:
            argv.append("-rtp_echo")
        if auth:
            argv += ["-au", auth[0], "-ap", auth[1]]
        for key, value in (keys or {}).items():
            argv += ["-key", key, str(value)]
        argv += list(extra_args)
        self.argv = argv
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    def start(self, *, ready_timeout: float = 5.0) -> Sipp:
        """Start in the background; wait (bounded) until its SIP port is bound."""
        self.out_path.write_text(f"=== {' '.join(self.argv)}\n")
        self._started = time.monotonic()
        self._proc = spawn(self.argv, self.out_path, cwd=self.workdir)
        if not wait_until(lambda: not is_free(self.local_port, tcp=False), ready_timeout,
                          interval=0.02, alive=self._proc):
            status = "exited" if not is_running(self._proc) else "did not bind"
            self.stop()
            raise HarnessError(f"sipp {status} on port {self.local_port}:\n"
                               f"{tail(self.out_path)}")
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait (bounded: `timeout`, default SIPp's own timeout + 10 s) and collect the result."""
        if self._proc is None:
            raise HarnessError("sipp was not started")
        limit = timeout if timeout is not None else self.timeout_s + 10.0
        finished = wait_until(lambda: not is_running(self._proc), limit, interval=0.05)
        returncode = self.stop()
        if not finished:
            raise HarnessError(f"sipp still running after {limit}s (killed):\n"
                               f"{tail(self.out_path)}")
        return self.result(returncode if returncode is not None else -1)

    def run(self, timeout: float | None = None) -> SippResult:
        """start() then wait(): a complete foreground run."""
        return self.start().wait(timeout)

    def stop(self) -> int | None:
        """Kill the process group (SIGTERM, then SIGKILL). Returns SIPp's exit status."""
        returncode = kill_group(self._proc, term_timeout=3.0)
        self._proc = None
        return returncode

    def result(self, returncode: int) -> SippResult:
        stats = parse_stat_csv(self.stat_path) if self.stat_path.exists() else {}
        screen = parse_screen("\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("*_screen*.log"))))
        successful = _int(stats.get("SuccessfulCall(C)")) if stats else screen.get("successful", 0)
        failed = _int(stats.get("FailedCall(C)")) if stats else screen.get("failed", 0)
        return SippResult(
            returncode=returncode, successful=successful, failed=failed,
            created=_int(stats.get("TotalCallCreated")),
            elapsed_s=_hhmmss_to_s(stats.get("ElapsedTime(C)", "")) if stats
            else time.monotonic() - self._started,
            workdir=self.workdir)


def prepare_tone(workdir: Path, freq_hz: float, *, level_dbfs: float = -12.0,
                 seconds: float = 10.0) -> Path:
    """Write the "tone.ulaw" that uac_rtp_stream.xml streams (looped) into `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    return write_ulaw_tone(workdir / "tone.ulaw", freq_hz, level_dbfs=level_dbfs, seconds=seconds)


def prepare_pcap(workdir: Path, pcap: Path = SHIPPED_PCAP) -> Path:
    """Copy the RTP capture that uac_pcap.xml plays into `workdir` as "audio.pcap"."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(pcap, workdir / "audio.pcap"))


def register_contact(workdir: Path, *, registrar_port: int, extension: str, password: str,
                     contact_port: int, local_port: int, expires: int = 300,
                     timeout_s: float = 10.0) -> SippResult:
    """Register 127.0.0.1:`contact_port` (e.g. a SIPp UAS) as `extension` with digest auth."""
    return Sipp(workdir, scenario("register"), remote=f"127.0.0.1:{registrar_port}",
                local_port=local_port, media_port=local_port + 2, service=extension,
                calls=1, timeout_s=timeout_s, auth=(extension, password),
                keys={"contact_port": str(contact_port), "expires": str(expires)}).run()
