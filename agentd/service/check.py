"""`agentd check -c config.yaml`: everything `agentd run` needs, checked without registering.

Checks, in order: the config file (every problem as file:line:key), the models the config
uses (with the fetch command for a missing one), the SIP port (free, and an address of this
machine) and the registrar (an OPTIONS probe with a short timeout; any SIP answer, even 404
or 401, proves it is there). Exit status: 0 all good, 1 a problem found, 2 invalid config.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agentd.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_CONFIG = 2


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


# ---- models ----------------------------------------------------------------------------------


def required_models(config: Config) -> list[tuple[str, str]]:
    """(config key, model id) of each model the config needs; none for the line test."""
    if not config.dialog.enabled:
        return []
    speech = config.speech
    needed = [("speech.vad.model", speech.vad.model), ("speech.asr.model", speech.asr.model)]
    if speech.tts.engine in ("piper", "coqui") and speech.tts.model:
        needed.append(("speech.tts.model", speech.tts.model))
    if config.dialog.llm.backend == "llama":
        needed.append(("dialog.llm.model", config.dialog.llm.model))
    return needed


def check_models(config: Config) -> list[CheckResult]:
    from agentd.models import ManifestError, ModelError, ModelStore

    needed = required_models(config)
    if not needed:
        return [CheckResult("models", True, "none needed (line-test app)")]
    store = ModelStore(config.speech.models_dir)
    results = []
    for key, model_id in needed:
        try:
            path = store.require(model_id)
        except ManifestError as exc:
            results.append(CheckResult(f"model {model_id}", False, f"{key}: {exc}"))
        except ModelError as exc:
            results.append(CheckResult(f"model {model_id}", False, str(exc)))
        else:
            results.append(CheckResult(f"model {model_id}", True, f"installed in {path}"))
    return results


# ---- the SIP port ----------------------------------------------------------------------------


def check_port(host: str, port: int, transport: str) -> CheckResult:
    """Can agentd bind its SIP port? (UDP always; TCP too, which the UA also listens on.)"""
    name = "sip port"
    if port == 0:
        return CheckResult(name, True, f"{host}: any free port (local_port 0)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind, label in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:  # as the UA does: TIME_WAIT must not block it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(1)
        except OSError as exc:
            return CheckResult(name, False, _bind_problem(host, port, label, exc))
        finally:
            sock.close()
    return CheckResult(name, True, f"{host}:{port} free (udp and tcp)")


def _bind_problem(host: str, port: int, label: str, exc: OSError) -> str:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return (f"{host}:{port}/{label} is in use (another agentd or SIP program? "
                "`ss -lunpt` shows which)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"sip.local_address {host} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"{host}:{port}/{label}: permission denied (ports below 1024 need privileges)"
    return f"cannot bind {host}:{port}/{label}: {exc.strerror or exc}"


# ---- the registrar: OPTIONS probe (sans-IO parts first) -------------------------------------


def options_request(
    *, domain: str, extension: str, local: tuple[str, int], transport: str, user_agent: str,
    call_id: str, branch: str, tag: str,
) -> bytes:
    """An out-of-dialog OPTIONS to the registrar's domain."""
    host, port = local
    shown = f"[{host}]" if ":" in host else host
    lines = [
        f"OPTIONS sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {shown}:{port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{extension}@{domain}>;tag={tag}",
        f"To: <sip:{domain}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:{extension}@{shown}:{port}>",
        "Accept: application/sdp",
        f"User-Agent: {user_agent}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_status(data: bytes, call_id: str) -> int | None:
    """The status code of a SIP response to our probe (matching Call-ID), else None."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("call-id", "i") and value.strip() == call_id:
            return int(parts[1])
    return None


def probe_registrar(config: Config, timeout: float = 2.0) -> CheckResult:
    """OPTIONS to the registrar; ok on any SIP answer within `timeout` seconds."""
    sip = config.sip
    host, port = sip.registrar.host, sip.registrar.port
    name = "registrar"
    where = f"{sip.registrar} ({sip.transport})"
    call_id = f"{secrets.token_hex(10)}@agentd-check"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        return CheckResult(name, False, f"cannot resolve {host}: {exc.strerror}")
    family, _, _, _, address = infos[0]
    kind = socket.SOCK_STREAM if sip.transport == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    deadline = time.monotonic() + timeout
    try:
        try:
            sock.bind((str(sip.local_address), 0))
        except OSError:
            sock.close()
            sock = socket.socket(family, kind)  # any source: the probe still says "reachable"
        sock.settimeout(timeout)
        sock.connect(address)
        local = sock.getsockname()[:2]
        request = options_request(
            domain=sip.domain or host, extension=sip.extension, local=local,
            transport=sip.transport, user_agent=sip.user_agent, call_id=call_id,
            branch=f"z9hG4bK{secrets.token_hex(8)}", tag=secrets.token_hex(6),
        )
        status = _exchange(sock, request, call_id, deadline, reliable=kind == socket.SOCK_STREAM)
    except ConnectionRefusedError:
        return CheckResult(name, False, f"{where} refused the connection (nothing listening)")
    except TimeoutError:
        status = None
    except OSError as exc:
        return CheckResult(name, False, f"{where}: {exc.strerror or exc}")
    finally:
        sock.close()
    if status is None:
        return CheckResult(name, False, f"no answer from {where} to OPTIONS within {timeout:g} s")
    return CheckResult(name, True, f"{where} answered OPTIONS with {status}")


def _exchange(sock: socket.socket, request: bytes, call_id: str, deadline: float,
              reliable: bool) -> int | None:
    """Send (UDP: again after 0.5 s, 1 s, 2 s...) until a final answer or the deadline."""
    sock.sendall(request)
    interval = 0.5
    resend_at = time.monotonic() + interval
    received = b""
    for _ in range(256):  # bounded in count as well as time
        now = time.monotonic()
        if now >= deadline:
            return None
        until = deadline if reliable else min(deadline, resend_at)
        sock.settimeout(max(until - now, 0.01))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            if not reliable and time.monotonic() >= resend_at:
                sock.sendall(request)
                interval *= 2
                resend_at = time.monotonic() + interval
            continue
        if reliable:
            if not data:
                return None  # the registrar closed the connection
            received += data
            if b"\r\n\r\n" not in received:
                continue
            data, _, received = received.partition(b"\r\n\r\n")
            data += b"\r\n\r\n"
        status = response_status(data, call_id)
        if status is not None and status >= 200:
            return status
    return None


# ---- all together ----------------------------------------------------------------------------


def run_checks(path: str | Path, out: TextIO, *, timeout: float = 2.0,
               network: bool = True) -> int:
    """Print one line per check to `out`; the exit status."""
    print(f"agentd check {path}", file=out)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(CheckResult("config", False, f"{len(exc.errors)} problem(s)").line(), file=out)
        for issue in exc.errors:
            print(f"      {issue}", file=out)
        return EXIT_BAD_CONFIG
    results = [CheckResult("config", True, "valid")]
    results += check_models(config)
    results.append(check_port(str(config.sip.local_address), config.sip.local_port,
                              config.sip.transport))
    if network:
        results.append(probe_registrar(config, timeout))
    return report(results, out)


def report(results: Iterable[CheckResult], out: TextIO) -> int:
    problems = 0
    for result in results:
        print(result.line(), file=out)
        problems += not result.ok
    print("all checks passed" if not problems else f"{problems} problem(s) found", file=out)
    return EXIT_OK if not problems else EXIT_PROBLEMS
