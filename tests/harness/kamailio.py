"""A real Kamailio PBX on loopback for interop tests (registrar + record-routing proxy).

Config: kamailio.cfg.tmpl next to this file (digest auth realm "sipbed", extension N has
password "pwN", 407 for calls from extensions, relays only to 127.0.0.0/8).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from .process import HarnessError, is_running, kill_group, spawn, tail, wait_until

TEMPLATE = Path(__file__).with_name("kamailio.cfg.tmpl")
REALM = "sipbed"
# Linux limits AF_UNIX socket paths to 107 bytes.
MAX_UNIX_PATH = 100
_MODULE_DIR_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


def password_for(extension: str) -> str:
    """The testbed's password rule: extension N registers with password "pwN"."""
    return f"pw{extension}"


def find_module_dir() -> Path:
    """Directory holding Kamailio's modules (tm.so): known paths first, then `dpkg -L kamailio`."""
    for candidate in _MODULE_DIR_CANDIDATES:
        if (Path(candidate) / "tm.so").is_file():
            return Path(candidate)
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", "kamailio"], capture_output=True,
                                     text=True, timeout=10, check=False).stdout
        except subprocess.TimeoutExpired:
            listing = ""
        for line in listing.splitlines():
            if line.endswith("/modules/tm.so"):
                return Path(line).parent
    raise HarnessError("Kamailio module directory (with tm.so) not found")


def render_config(*, port: int, run_dir: Path, ctl_socket: Path, module_dir: Path,
                  children: int = 2, passwords: Mapping[str, str] | None = None) -> str:
    """The Kamailio config text for a PBX on 127.0.0.1:`port`."""
    overrides = "\n".join(
        f'    $sht(users=>{_safe_token(user)}) = "{_safe_token(pw)}";'
        for user, pw in (passwords or {}).items()
    ) or '    xlog("L_DBG", "no password overrides\n");'
    text = TEMPLATE.read_text()
    for name, value in {
        "PORT": str(int(port)), "RUNDIR": str(run_dir), "CTL_SOCKET": str(ctl_socket),
        "MPATH": f"{module_dir}/", "CHILDREN": str(int(children)),
        "PASSWORD_OVERRIDES": overrides,
    }.items():
        text = text.replace(f"%%{name}%%", value)
    leftover = re.search(r"%%\w+%%", text)
    if leftover:
        raise HarnessError(f"unfilled placeholder {leftover.group(0)} in {TEMPLATE}")
    return text


def _safe_token(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", value):
        raise ValueError(f"unsafe config token {value!r}")
    return value


_CONTACT_RE = re.compile(r"^\s*Address:\s*(\S+)\s*$", re.MULTILINE)


def parse_ul_lookup(text: str) -> list[str]:
    """Contact URIs from `kamcmd ul.lookup` output (empty when the AOR is not found)."""
    return [m.group(1).strip("<>") for m in _CONTACT_RE.finditer(text)]


class Kamailio:
    """One Kamailio process on 127.0.0.1:`port` (UDP+TCP), files under `workdir`.

    Use as a context manager or call stop(); the whole process group is killed either way.
    """

    def __init__(self, workdir: Path, port: int, *, defines: Iterable[str] = (),
                 passwords: Mapping[str, str] | None = None, children: int = 2,
                 ready_timeout: float = 15.0, kamailio_bin: str = "kamailio",
                 kamcmd_bin: str = "kamcmd") -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.defines = tuple(defines)
        self.ready_timeout = ready_timeout
        self.kamailio_bin = kamailio_bin
        self.kamcmd_bin = kamcmd_bin
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "kamailio.cfg"
        self.log_path = self.workdir / "kamailio.log"
        self.run_dir = self._short_run_dir()
        self.ctl_socket = self.run_dir / "ctl"
        self.config_path.write_text(render_config(
            port=port, run_dir=self.run_dir, ctl_socket=self.ctl_socket,
            module_dir=find_module_dir(), children=children, passwords=passwords))
        self._proc: subprocess.Popen[bytes] | None = None

    def _short_run_dir(self) -> Path:
        run_dir = self.workdir / "run"
        if len(str(run_dir / "ctl")) > MAX_UNIX_PATH:
            # pytest's tmp_path can be too deep for a unix socket path.
            run_dir = Path(tempfile.mkdtemp(prefix="kam-", dir="/tmp"))
            self._own_run_dir = True
        else:
            run_dir.mkdir(exist_ok=True)
            self._own_run_dir = False
        return run_dir

    @property
    def address(self) -> str:
        """host:port of the SIP listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def sipdump_dir(self) -> Path:
        """Where `-A WITH_SIPDUMP` writes every SIP message (text and pcap)."""
        return self.run_dir / "sipdump"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and is_running(self._proc)

    def start(self) -> Kamailio:
        """Start Kamailio and wait (bounded) until its control socket answers."""
        if self.running():
            return self
        self.ctl_socket.unlink(missing_ok=True)
        self.sipdump_dir.mkdir(exist_ok=True)  # sipdump (-A WITH_SIPDUMP) does not create it
        argv = [self.kamailio_bin, "-f", str(self.config_path), "-DD", "-E",
                "-Y", str(self.run_dir), "-w", str(self.run_dir),
                "-P", str(self.run_dir / "kamailio.pid"), "-m", "64", "-M", "8"]
        for define in self.defines:
            argv += ["-A", define]
        with open(self.log_path, "a") as log:
            log.write(f"=== start: {' '.join(argv)}\n")
        self._proc = spawn(argv, self.log_path, cwd=self.run_dir)
        ready = wait_until(self._ctl_answers, self.ready_timeout, interval=0.05, alive=self._proc)
        if not ready:
            status = "exited" if not self.running() else "not ready"
            self.stop()
            raise HarnessError(f"kamailio {status} within {self.ready_timeout}s on port "
                               f"{self.port}:\n{tail(self.log_path)}")
        return self

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL). Idempotent."""
        kill_group(self._proc)
        self._proc = None

    def restart(self) -> Kamailio:
        """Stop and start again on the same port; the in-memory location table is lost."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """stop() and remove a /tmp run dir created for a short socket path."""
        self.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kamcmd(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Run kamcmd against this instance's control socket (bounded)."""
        return subprocess.run([self.kamcmd_bin, "-s", f"unix:{self.ctl_socket}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def _ctl_answers(self) -> bool:
        if not self.ctl_socket.exists():
            return False
        try:
            return self.kamcmd("core.uptime", timeout=2.0).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def registered(self, aor_user: str) -> list[str]:
        """Contact URIs currently registered for extension `aor_user` (empty if none)."""
        # "s:" keeps kamcmd from sending a numeric extension as an integer.
        result = self.kamcmd("ul.lookup", "location", f"s:{_safe_token(aor_user)}")
        if result.returncode != 0:
            if "not found" in (result.stdout + result.stderr).lower():
                return []
            raise HarnessError(f"kamcmd ul.lookup failed: {result.stdout}{result.stderr}")
        return parse_ul_lookup(result.stdout)

    def ul_dump(self) -> str:
        """Raw `ul.dump brief` text (all registrations)."""
        return self.kamcmd("ul.dump", "brief").stdout

    def log_text(self) -> str:
        """Everything Kamailio logged so far (all runs of this instance)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
