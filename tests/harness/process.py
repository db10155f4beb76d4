"""Child processes in their own process group, always stoppable as a whole."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class HarnessError(RuntimeError):
    """A test process failed to start, got ready too late or misbehaved."""


def spawn(argv: Sequence[str], log_path: Path, *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (own process group), stdout+stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes] | None, *, term_timeout: float = 3.0) -> int | None:
    """SIGTERM the process group, SIGKILL it if the leader is still alive after `term_timeout`.

    Returns the leader's exit status (None if there was no process). Idempotent.
    """
    if proc is None:
        return None
    if proc.returncode is not None:
        return proc.returncode
    # The leader is only reaped at the very end: while it is unreaped (a zombie at worst) its
    # pid, which is the group id, cannot be reused, so signalling the group stays safe.
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + term_timeout
    while not _exited_unreaped(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Children (e.g. Kamailio's workers) may outlive the leader: always sweep the group.
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
        raise HarnessError(f"process {proc.pid} did not die after SIGKILL") from None


def is_running(proc: subprocess.Popen[bytes]) -> bool:
    """True while the process has not exited; never reaps it (see kill_group)."""
    return proc.returncode is None and not _exited_unreaped(proc.pid)


def _exited_unreaped(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05,
               alive: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` passes (False).

    With `alive`, stops early (False) when that process has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if alive is not None and not is_running(alive):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, chars: int = 3000) -> str:
    """Last `chars` characters of a text file ('' if missing), for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
