"""systemd/agentd.service: valid, hardened (exposure <= 2.5), and the hardening fits the
model runtimes (MemoryDenyWriteExecute checked with the kernel's equivalent, PR_SET_MDWE)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "agentd.service"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this interpreter.
    unit = tmp_path / "agentd.service"
    unit.write_text(UNIT.read_text().replace("/opt/agentd/venv/bin/agentd", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "agentd.service" not in result.stderr, result.stderr  # no warnings about it


@needs_analyze
def test_security_exposure_is_ok() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for agentd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_has_readiness_credentials_and_hardening() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID",
                 "DynamicUser=yes", "StateDirectory=agentd", "ConfigurationDirectory=agentd",
                 "LoadCredential=sip-password:", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes",
                 "CapabilityBoundingSet=\n", "LockPersonality=yes", "RestrictRealtime=yes",
                 "RestrictNamespaces=yes", "UMask=0077"):
        assert line in text, line


MDWE_PROBE = """
import ctypes, glob, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:   # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
if sys.argv[1] == "onnxruntime":
    import numpy as np, onnxruntime
    from agentd.models import ModelStore
    onnx = ModelStore().file("silero-vad", "silero_vad.onnx")
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    print("ok", len(session.get_inputs()))
else:
    from llama_cpp import Llama
    from agentd.models import ModelStore
    path = sorted(ModelStore().require("smollm2-135m").glob("*.gguf"))[0]
    llm = Llama(str(path), n_ctx=256, verbose=False)
    print("ok", len(llm("Hello", max_tokens=2)["choices"][0]["text"]) >= 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "llama_cpp"])
def test_model_runtimes_work_without_writable_executable_memory(runtime: str) -> None:
    pytest.importorskip(runtime)
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE, runtime], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    if result.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    if "ModelMissingError" in result.stderr:
        pytest.skip(f"test model for {runtime} not fetched")
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]
