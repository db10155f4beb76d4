"""One baresip phone on loopback, driven through its ctrl_tcp module (JSON in netstrings).

Audio: the phone sends a WAV (a tone) through the aufile module and the sndfile module
records what it receives to `rec/dump-<time>-dec.wav` (what it sent: `-enc.wav`). The
sndfile WAV header is completed when the call closes, so analyse recordings after hangup.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .audio import write_tone_wav
from .kamailio import password_for
from .process import HarnessError, is_running, kill_group, spawn, tail, wait_until

MODULE_DIR = Path("/usr/lib/baresip/modules")
RTP_PORT_COUNT = 20
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_MAX_NETSTRING = 1 << 20


def netstring(payload: bytes) -> bytes:
    """Encode one netstring: b"<len>:<payload>,"."""
    return str(len(payload)).encode() + b":" + payload + b","


def split_netstrings(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete netstring payloads at the start of `buffer`, and the unparsed rest.

    Raises HarnessError on a malformed or oversized netstring.
    """
    payloads: list[bytes] = []
    while buffer:
        colon = buffer.find(b":")
        if colon < 0:
            if len(buffer) > 10 or not buffer.isdigit():
                raise HarnessError(f"bad netstring prefix {buffer[:20]!r}")
            break
        length_text = buffer[:colon]
        if not length_text.isdigit() or int(length_text) > _MAX_NETSTRING:
            raise HarnessError(f"bad netstring length {length_text[:20]!r}")
        end = colon + 1 + int(length_text)
        if len(buffer) < end + 1:
            break
        if buffer[end:end + 1] != b",":
            raise HarnessError("netstring not terminated by ','")
        payloads.append(buffer[colon + 1:end])
        buffer = buffer[end + 1:]
    return payloads, buffer


def render_config(*, sip_port: int, ctrl_port: int, rtp_base: int, wav: Path,
                  rec_dir: Path, rtp_port_count: int = RTP_PORT_COUNT) -> str:
    """baresip `config` text: loopback only, no sound card, G.711 only."""
    return "\n".join([
        "# agentd interop-test phone: loopback only, no sound card",
        "poll_method\tepoll",
        f"sip_listen\t127.0.0.1:{sip_port}",
        "call_local_timeout\t60",
        "call_max_calls\t4",
        f"audio_source\taufile,{wav}",
        # No audio_player: received audio only goes to the sndfile recording.
        "ausrc_srate\t8000",
        "auplay_srate\t8000",
        "ausrc_channels\t1",
        "auplay_channels\t1",
        "audio_level\tno",
        f"rtp_ports\t{rtp_base}-{rtp_base + rtp_port_count - 1}",
        "rtcp_mux\tno",
        "jitter_buffer_delay\t5-10",
        "rtp_stats\tyes",
        # Never used (all URIs are numeric loopback), but keeps baresip off the system resolver.
        "dns_server\t127.0.0.1:53",
        "net_interface\t127.0.0.1",
        f"module_path\t{MODULE_DIR}",
        "module\tg711.so",
        "module\taufile.so",
        "module\tsndfile.so",
        "module_tmp\taccount.so",
        "module_app\tmenu.so",
        "module_app\tctrl_tcp.so",
        f"ctrl_tcp_listen\t127.0.0.1:{ctrl_port}",
        f"snd_path\t{rec_dir}",
        "",
    ])


def render_account(*, extension: str, registrar_port: int, password: str,
                   transport: str = "udp", answermode: str = "auto",
                   regint: int = 60) -> str:
    """baresip `accounts` line registering `extension` at 127.0.0.1:`registrar_port`."""
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport must be udp or tcp, not {transport!r}")
    if answermode not in ("auto", "manual", "early"):
        raise ValueError(f"bad answermode {answermode!r}")
    return (f"<sip:{extension}@127.0.0.1:{registrar_port};transport={transport}>"
            f";auth_user={extension};auth_pass={password};answermode={answermode}"
            f";audio_codecs=PCMU,PCMA;regint={regint};mwi=no\n")


class Baresip:
    """One baresip phone for `extension`, registered at Kamailio on 127.0.0.1:`registrar_port`.

    Use as a context manager or call stop(); the whole process group is killed either way.
    """

    def __init__(self, workdir: Path, extension: str, *, registrar_port: int, sip_port: int,
                 ctrl_port: int, rtp_base: int, tone_hz: float = 440.0,
                 tone_level_dbfs: float = -12.0, wav: Path | None = None,
                 password: str | None = None, transport: str = "udp",
                 answermode: str = "auto", max_life_s: int = 300,
                 baresip_bin: str = "baresip") -> None:
        self.workdir = Path(workdir)
        self.extension = extension
        self.registrar_port = registrar_port
        self.sip_port = sip_port
        self.ctrl_port = ctrl_port
        self.rtp_base = rtp_base
        self.tone_hz = tone_hz
        self.max_life_s = max_life_s
        self.baresip_bin = baresip_bin
        self.rec_dir = self.workdir / "rec"
        self.rec_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "baresip.log"
        self.wav = Path(wav) if wav else write_tone_wav(
            self.workdir / f"tone{tone_hz:g}.wav", tone_hz, level_dbfs=tone_level_dbfs,
            seconds=max(30, min(max_life_s, 120)))
        (self.workdir / "config").write_text(render_config(
            sip_port=sip_port, ctrl_port=ctrl_port, rtp_base=rtp_base, wav=self.wav,
            rec_dir=self.rec_dir))
        (self.workdir / "accounts").write_text(render_account(
            extension=extension, registrar_port=registrar_port,
            password=password if password is not None else password_for(extension),
            transport=transport, answermode=answermode))
        (self.workdir / "contacts").write_text("# no contacts\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._token = 0
        self.messages: list[dict[str, Any]] = []   # every event and response, in order
        self._consumed: set[int] = set()            # indices of events wait_event returned

    # ----- process lifecycle -----

    def start(self, *, wait_registration: bool = True, timeout: float = 10.0) -> Baresip:
        """Start baresip, connect to its control port; optionally wait for registration."""
        if self._proc is not None:
            raise HarnessError(f"phone {self.extension} already started")
        argv = [self.baresip_bin, "-4", "-v", "-s", "-f", str(self.workdir),
                "-t", str(self.max_life_s)]
        self._proc = spawn(argv, self.log_path, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        if not wait_until(self._connect, timeout, interval=0.05, alive=self._proc):
            self.stop()
            raise HarnessError(f"baresip {self.extension}: control port {self.ctrl_port} not up"
                               f" within {timeout}s:\n{tail(self.log_path)}")
        if wait_registration and not self.wait_registered(max(0.5, deadline - time.monotonic())):
            self.stop()
            raise HarnessError(f"baresip {self.extension} did not register within {timeout}s:"
                               f"\n{tail(self.log_path)}")
        return self

    def _connect(self) -> bool:
        try:
            self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1.0)
            return True
        except OSError:
            return False

    def running(self) -> bool:
        return self._proc is not None and is_running(self._proc)

    def stop(self) -> None:
        """Close control, SIGTERM (baresip un-registers), SIGKILL if needed. Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        kill_group(self._proc, term_timeout=3.0)
        self._proc = None

    def __enter__(self) -> Baresip:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ----- control protocol -----

    def _read_some(self, deadline: float) -> bool:
        """Read available data into messages until deadline; False if nothing came."""
        if self._sock is None:
            raise HarnessError(f"phone {self.extension} is not connected")
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._sock.settimeout(min(left, 0.5))
        try:
            chunk = self._sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            raise HarnessError(f"baresip {self.extension} closed its control connection")
        payloads, self._buffer = split_netstrings(self._buffer + chunk)
        for payload in payloads:
            try:
                message = json.loads(payload)
            except ValueError as exc:
                raise HarnessError(f"bad JSON from baresip: {payload[:200]!r}") from exc
            if isinstance(message, dict):
                self.messages.append(message)
        return bool(payloads)

    def command(self, line: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Send a command line as typed after '/' in baresip; return its response message."""
        if self._sock is None:
            raise HarnessError(f"phone {self.extension} is not connected")
        name, _, params = line.strip().lstrip("/").partition(" ")
        self._token += 1
        token = f"h{self._token}"
        request = {"command": name, "params": params, "token": token}
        self._sock.sendall(netstring(json.dumps(request).encode()))
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while True:
            for message in self.messages[seen:]:
                if message.get("response") and message.get("token") == token:
                    return message
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise HarnessError(f"baresip {self.extension}: no response to {line!r}")
            self._read_some(deadline)

    def poll_events(self, duration: float = 0.0) -> None:
        """Read whatever events arrive within `duration` seconds (0: just what is buffered)."""
        deadline = time.monotonic() + max(duration, 0.01)
        while time.monotonic() < deadline:
            self._read_some(deadline)

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Events received so far (optionally only of one type)."""
        return [m for m in self.messages if m.get("event")
                and (event_type is None or m.get("type") == event_type)]

    def wait_event(self, event_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The oldest event of `event_type` not yet returned by wait_event; waits (bounded).

        Raises HarnessError on timeout, listing the event types seen.
        """
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            for index in range(scanned, len(self.messages)):
                message = self.messages[index]
                if (index not in self._consumed and message.get("event")
                        and message.get("type") == event_type):
                    self._consumed.add(index)
                    return message
            scanned = len(self.messages)
            if time.monotonic() >= deadline:
                seen = [m.get("type") for m in self.events()]
                raise HarnessError(f"baresip {self.extension}: no {event_type} within "
                                   f"{timeout}s; events seen: {seen}")
            self._read_some(deadline)

    # ----- phone actions -----

    def reginfo(self) -> str:
        """Registration status text (ANSI colours removed)."""
        return _ANSI_RE.sub("", str(self.command("reginfo").get("data", "")))

    def is_registered(self) -> bool:
        """True if baresip reports its account registered (status OK)."""
        return any(re.search(r"\sOK\s", line) for line in self.reginfo().splitlines()
                   if line.startswith(">"))

    def registration_failed(self) -> bool:
        """True once baresip logged a final error reply (3xx-6xx) to its REGISTER."""
        pattern = rf"reg: sip:{re.escape(self.extension)}@\S+: [3-6]\d\d "
        return re.search(pattern, self.log_text()) is not None

    def wait_registered(self, timeout: float = 10.0) -> bool:
        """Poll until registered (True); False on timeout or a final REGISTER failure."""
        deadline = time.monotonic() + timeout
        while True:
            if self.is_registered():
                return True
            if (self.events("REGISTER_FAIL") or self.registration_failed()
                    or time.monotonic() >= deadline):
                return False
            self.poll_events(min(0.1, max(0.0, deadline - time.monotonic())))

    def active_calls(self) -> int:
        """Number of calls baresip lists (any state)."""
        data = _ANSI_RE.sub("", str(self.command("listcalls").get("data", "")))
        match = re.search(r"Active calls \((\d+)\)", data)
        if match is None:
            raise HarnessError(f"unexpected listcalls output: {data!r}")
        return int(match.group(1))

    def _ok(self, line: str) -> dict[str, Any]:
        response = self.command(line)
        if not response.get("ok", False):
            raise HarnessError(f"baresip {self.extension}: {line!r} failed: {response}")
        return response

    def dial(self, target: str) -> dict[str, Any]:
        """Call `target` (an extension, resolved at the registrar, or a SIP URI)."""
        return self._ok(f"dial {target}")

    def hangup(self) -> dict[str, Any]:
        """Hang up the current call."""
        return self._ok("hangup")

    def accept(self) -> dict[str, Any]:
        """Answer the ringing incoming call (for answermode=manual phones)."""
        return self._ok("accept")

    def transfer(self, target: str) -> dict[str, Any]:
        """Blind-transfer the current call to `target` (baresip sends REFER)."""
        return self._ok(f"transfer {target}")

    # ----- files -----

    def received_wavs(self) -> list[Path]:
        """Recordings of audio this phone received, oldest first (one per call)."""
        return sorted(self.rec_dir.glob("dump-*-dec.wav"), key=lambda p: (p.stat().st_mtime, p))

    def sent_wavs(self) -> list[Path]:
        """Recordings of audio this phone sent, oldest first."""
        return sorted(self.rec_dir.glob("dump-*-enc.wav"), key=lambda p: (p.stat().st_mtime, p))

    def log_text(self) -> str:
        """baresip's verbose log with SIP trace."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
