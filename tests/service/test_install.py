"""tools/install staged under --root: layout, idempotence, operator files kept, uninstall."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "tools" / "install"), "--root", str(root), "--skip-venv",
                           "--no-models", *args], capture_output=True, text=True, timeout=120)


def test_install_twice_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root)
    assert first.returncode == 0, first.stderr
    config = root / "etc/agentd/config.yaml"
    password = root / "etc/agentd/sip-password"
    assert "password_file: ${CREDENTIALS_DIRECTORY}/sip-password" in config.read_text()
    assert password.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/systemd/system/agentd.service").read_text() == \
        (REPO / "systemd/agentd.service").read_text()
    assert (root / "usr/local/bin/agentd").is_symlink()
    assert (root / "opt/agentd/src/agentd/service/lifecycle.py").is_file()
    assert not (root / "opt/agentd/src/.git").exists()
    # The operator's edits survive a second run (an upgrade).
    config.write_text(config.read_text() + "# edited\n")
    password.write_text("real-secret\n")
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert config.read_text().endswith("# edited\n") and password.read_text() == "real-secret\n"
    removed = install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "opt/agentd").exists() and not (root / "usr/local/bin/agentd").exists()
    assert config.exists() and (root / "var/lib/agentd/models").is_dir()
    assert install(root, "--uninstall", "--purge").returncode == 0
    assert not (root / "etc/agentd").exists() and not (root / "var/lib/agentd").exists()
