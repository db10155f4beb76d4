"""agentd itself as a test process, plus the tools that prove it echoed RTP.

`Agentd` writes a config YAML into its work directory, runs `python -m agentd run -c ...`
(this interpreter, the repository on PYTHONPATH) with its log next to the config, waits
(bounded) until Kamailio shows its registration and stops it with SIGTERM, then SIGKILL.

RTP evidence: SIPp 3.6 cannot count what it receives, so `LoopbackRtpCapture` reads every
packet on the loopback interface (an AF_PACKET socket: needs root or CAP_NET_RAW) and
`summarise_streams` decodes what agentd sent back, one stream per SSRC (one per call).
`write_rtp_pcap` makes the tone capture SIPp plays, so the echo can be checked for pitch.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import yaml

from .audio import analyse, ulaw_decode, ulaw_encode
from .kamailio import Kamailio, password_for
from .process import HarnessError, is_running, kill_group, spawn, tail, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXTENSION = "2001"


def render_config(*, registrar_port: int, sip_port: int, rtp_port_min: int,
                  rtp_port_count: int = 40, extension: str = DEFAULT_EXTENSION,
                  password: str | None = None, transport: str = "udp",
                  register_expires: int = 60, max_calls: int = 4, log_level: str = "debug",
                  app: Mapping[str, Any] | None = None,
                  sip: Mapping[str, Any] | None = None,
                  media: Mapping[str, Any] | None = None,
                  sections: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config document (a dict, dumped as YAML) for agentd on 127.0.0.1:`sip_port`.

    `app`, `sip` and `media` entries override or add to the generated sections; `sections`
    adds or replaces whole top-level sections (`dialog`, `speech`, `records` ...).
    """
    if rtp_port_min % 2 or rtp_port_count % 2 or rtp_port_count < 2:
        raise ValueError("RTP range must start on an even port and hold whole pairs")
    document: dict[str, Any] = {
        "sip": {
            "registrar": f"127.0.0.1:{registrar_port}",
            "transport": transport,
            "extension": extension,
            "password": password if password is not None else password_for(extension),
            "local_address": "127.0.0.1",
            "local_port": sip_port,
            "register_expires": register_expires,
            "max_calls": max_calls,
            **dict(sip or {}),
        },
        "media": {
            "rtp_port_min": rtp_port_min,
            "rtp_port_max": rtp_port_min + rtp_port_count,
            **dict(media or {}),
        },
        "app": {"mode": "echo", "echo_delay_ms": 100, **dict(app or {})},
        "log": {"level": log_level, "format": "text"},
        # Call records beside the config (relative paths are), not in /var/lib/agentd.
        "records": {"database": "calls.db"},
    }
    document.update(dict(sections or {}))
    return document


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name (which may itself contain spaces).
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def established_tcp(local_port: int) -> list[tuple[str, int]]:
    """Remote (host, port) of ESTABLISHED IPv4 TCP connections on local port `local_port`."""
    peers = []
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "01":  # 01: TCP_ESTABLISHED
            continue
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) != local_port:
            continue
        host_hex, port_hex = remote.split(":")
        host = socket.inet_ntoa(struct.pack("<I", int(host_hex, 16)))
        peers.append((host, int(port_hex, 16)))
    return peers


class Agentd:
    """One `agentd run` subprocess with its config and log under `workdir`.

    Use as a context manager or call stop(); stop() always leaves no process behind.
    """

    def __init__(self, workdir: Path, *, registrar_port: int, sip_port: int,
                 rtp_port_min: int, rtp_port_count: int = 40,
                 extension: str = DEFAULT_EXTENSION, password: str | None = None,
                 transport: str = "udp", register_expires: int = 60, max_calls: int = 4,
                 log_level: str = "debug", app: Mapping[str, Any] | None = None,
                 sip: Mapping[str, Any] | None = None, media: Mapping[str, Any] | None = None,
                 sections: Mapping[str, Any] | None = None,
                 python: str = sys.executable) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extension = extension
        self.sip_port = sip_port
        self.transport = transport
        self.rtp_port_min = rtp_port_min
        self.rtp_port_max = rtp_port_min + rtp_port_count
        self.config = render_config(
            registrar_port=registrar_port, sip_port=sip_port, rtp_port_min=rtp_port_min,
            rtp_port_count=rtp_port_count, extension=extension, password=password,
            transport=transport, register_expires=register_expires, max_calls=max_calls,
            log_level=log_level, app=app, sip=sip, media=media, sections=sections)
        self.config_path = self.workdir / "agentd.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log_path = self.workdir / "agentd.log"
        self.python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def contact_suffix(self) -> str:
        """How agentd's Contact ends in Kamailio's location table."""
        return f"@127.0.0.1:{self.sip_port}" + (";transport=tcp" if self.transport == "tcp" else "")

    def running(self) -> bool:
        return self._proc is not None and is_running(self._proc)

    def start(self, kamailio: Kamailio | None = None, *, wait_registration: bool = True,
              timeout: float = 10.0) -> Agentd:
        """Start agentd; with `kamailio`, wait (bounded) until it shows the registration."""
        if self._proc is not None:
            raise HarnessError("agentd already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        argv = [self.python, "-m", "agentd", "run", "-c", str(self.config_path)]
        with open(self.log_path, "a") as log:
            log.write(f"=== start: {' '.join(argv)}\n")
        self._proc = spawn(argv, self.log_path, cwd=REPO_ROOT, env=env)
        if kamailio is not None and wait_registration:
            if not self.wait_registered(kamailio, timeout):
                alive = self.running()
                self.stop()
                raise HarnessError(
                    f"agentd {'did not register' if alive else 'exited'} within {timeout}s:\n"
                    f"{tail(self.log_path)}\n--- kamailio ---\n{tail(kamailio.log_path, 1500)}")
        return self

    def registered_at(self, kamailio: Kamailio) -> bool:
        """True if Kamailio holds a binding for our extension pointing at our SIP port."""
        return any(c.endswith(self.contact_suffix) for c in kamailio.registered(self.extension))

    def wait_registered(self, kamailio: Kamailio, timeout: float) -> bool:
        """Poll Kamailio's location table until agentd's contact shows up (bounded)."""
        return wait_until(lambda: self.registered_at(kamailio), timeout, interval=0.1,
                          alive=self._proc)

    def terminate(self, timeout: float = 12.0) -> int | None:
        """SIGTERM (agentd hangs up, un-registers, exits); SIGKILL after `timeout`.

        Returns the exit status (None if never started). Idempotent.
        """
        if self._proc is None:
            return self.returncode
        self.returncode = kill_group(self._proc, term_timeout=timeout)
        self._proc = None
        return self.returncode

    def stop(self) -> int | None:
        """terminate() with the default grace period."""
        return self.terminate()

    def signal(self, sig: signal.Signals) -> None:
        """Send one signal to agentd (e.g. SIGTERM without waiting for the exit)."""
        if self._proc is not None and self.running():
            os.kill(self._proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait (bounded) for agentd to exit by itself; its status, or None if still running."""
        if self._proc is None:
            return self.returncode
        if not wait_until(lambda: not self.running(), timeout, interval=0.05):
            return None
        return self.terminate(timeout=0.5)

    def cpu_seconds(self) -> float:
        """CPU time agentd used so far (user + system)."""
        if self._proc is None or not self.running():
            raise HarnessError("agentd is not running")
        return cpu_seconds(self._proc.pid)

    def log_text(self) -> str:
        """Everything agentd logged (all runs under this work directory)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float, *, count: int = 1) -> bool:
        """Wait (bounded) until the log matches regex `pattern` at least `count` times."""
        regex = re.compile(pattern)
        return wait_until(lambda: len(regex.findall(self.log_text())) >= count, timeout,
                          interval=0.05)

    def __enter__(self) -> Agentd:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ----- RTP echo evidence ---------------------------------------------------------------

_PCAP_GLOBAL = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_RTP_HEADER = struct.Struct("!BBHII")
_ETH_P_ALL = 0x0003
_PACKET_HOST = 0  # as delivered; loopback shows every packet twice (outgoing and host)
RTP_FRAME = 160   # 20 ms of 8 kHz G.711


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_rtp_pcap(path: Path, samples: np.ndarray, *, payload_type: int = 0,
                   src_port: int = 40000, dst_port: int = 40002,
                   ssrc: int = 0x5EED1234) -> Path:
    """A pcap (Ethernet/IPv4/UDP) of `samples` as 20 ms mu-law RTP packets.

    SIPp's play_pcap_audio replays the payloads with their capture timing to the callee's
    SDP address; the addresses in the file are placeholders.
    """
    if payload_type != 0:
        raise ValueError("only PCMU (payload type 0) is written")
    codes = ulaw_encode(samples).tobytes()
    out = bytearray(_PCAP_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    loopback = socket.inet_aton("127.0.0.1")
    for index in range(len(codes) // RTP_FRAME):
        payload = _RTP_HEADER.pack(0x80, payload_type | (0x80 if index == 0 else 0),
                                   index & 0xFFFF, (index * RTP_FRAME) & 0xFFFFFFFF, ssrc)
        payload += codes[index * RTP_FRAME:(index + 1) * RTP_FRAME]
        udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index & 0xFFFF, 0x4000, 64,
                         17, 0, loopback, loopback)
        ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        micros = index * 20_000
        out += _PCAP_RECORD.pack(1_700_000_000 + micros // 1_000_000, micros % 1_000_000,
                                 len(frame), len(frame))
        out += frame
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


@dataclass(frozen=True)
class RtpPacket:
    """One captured RTP packet (loopback, so only ports tell the endpoints apart)."""

    time: float
    src_port: int
    dst_port: int
    payload_type: int
    ssrc: int
    sequence: int
    payload: bytes


def parse_rtp_frame(frame: bytes, now: float = 0.0) -> RtpPacket | None:
    """An Ethernet/IPv4/UDP frame carrying RTP version 2, else None (never raises)."""
    if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14] >> 4 != 4 or ihl < 20 or frame[23] != 17:
        return None
    udp = 14 + ihl
    if len(frame) < udp + 8 + 12:
        return None
    src_port, dst_port, length = struct.unpack_from("!HHH", frame, udp)
    rtp = frame[udp + 8:udp + length] if length >= 8 else b""
    if len(rtp) < 12 or rtp[0] >> 6 != 2:
        return None
    first, second, sequence, _, ssrc = _RTP_HEADER.unpack_from(rtp)
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(rtp) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", rtp, start + 2)[0]
    end = len(rtp)
    if first & 0x20 and end > start:  # padding
        end -= rtp[-1]
    if end < start:
        return None
    return RtpPacket(now, src_port, dst_port, second & 0x7F, ssrc, sequence, rtp[start:end])


class LoopbackRtpCapture:
    """Records RTP packets seen on `lo` whose ports `accept(src, dst)` approves.

    A background thread reads an AF_PACKET socket (root or CAP_NET_RAW; `start` raises
    PermissionError otherwise) until stop(); memory is bounded by `max_packets`.
    """

    def __init__(self, accept: Callable[[int, int], bool], *, max_packets: int = 400_000,
                 interface: str = "lo") -> None:
        self.accept = accept
        self.max_packets = max_packets
        self.interface = interface
        self.packets: list[RtpPacket] = []
        self.dropped = 0  # accepted packets over max_packets
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> LoopbackRtpCapture:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.bind((self.interface, 0))
            sock.settimeout(0.2)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="rtp-capture", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if address[2] != _PACKET_HOST:
                continue
            packet = parse_rtp_frame(frame, time.monotonic())
            if packet is None or not self.accept(packet.src_port, packet.dst_port):
                continue
            if len(self.packets) >= self.max_packets:
                self.dropped += 1
            else:
                self.packets.append(packet)

    def stop(self) -> list[RtpPacket]:
        """Stop reading (bounded) and return what was captured. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.packets

    def __enter__(self) -> LoopbackRtpCapture:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class StreamSummary:
    """What one RTP stream (one SSRC) carried, decoded as mu-law."""

    ssrc: int
    packets: int
    audible_packets: int      # 20 ms payloads above -40 dBFS
    dominant_hz: float        # of the audible part
    active_rms_dbfs: float


@dataclass(frozen=True)
class EchoEvidence:
    """Per-call summary of what agentd sent back."""

    streams: list[StreamSummary] = field(default_factory=list)

    @property
    def packets(self) -> int:
        return sum(s.packets for s in self.streams)

    @property
    def audible_packets(self) -> int:
        return sum(s.audible_packets for s in self.streams)

    def audible_streams(self, min_packets: int, freq_hz: float | None = None,
                        tolerance_hz: float = 5.0) -> list[StreamSummary]:
        """Streams with at least `min_packets` audible payloads (and the right pitch)."""
        return [s for s in self.streams if s.audible_packets >= min_packets and (
            freq_hz is None or abs(s.dominant_hz - freq_hz) <= tolerance_hz)]


def summarise_streams(packets: list[RtpPacket], payload_type: int = 0) -> EchoEvidence:
    """Group `payload_type` packets by SSRC and analyse each stream's decoded audio."""
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for packet in packets:
        if packet.payload_type == payload_type and packet.payload:
            by_ssrc.setdefault(packet.ssrc, []).append(packet)
    streams = []
    for ssrc, stream in by_ssrc.items():
        pcm = ulaw_decode(np.frombuffer(b"".join(p.payload for p in stream), dtype=np.uint8))
        result = analyse(pcm, 8000)
        audible = int(round(result.active_fraction * len(pcm) / RTP_FRAME))
        streams.append(StreamSummary(ssrc, len(stream), audible, result.dominant_hz,
                                     result.active_rms_dbfs))
    return EchoEvidence(sorted(streams, key=lambda s: -s.packets))
