"""The `agentd` command line as an operator meets it (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agentd import __version__


def agentd(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_version() -> None:
    result = agentd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"agentd {__version__}"


def test_help_lists_commands() -> None:
    result = agentd("--help")
    assert result.returncode == 0
    assert "run" in result.stdout and "config-reference" in result.stdout


def test_run_with_broken_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sip:\n"
        "  registrar: 127.0.0.1:5060\n"
        "  extension: '2001'\n"
        "  password: pw\n"
        "  max_calls: lots\n"
    )
    result = agentd("run", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:5: sip.max_calls" in result.stderr


def test_run_with_yaml_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sip:\n  registrar: [127.0.0.1\n")
    result = agentd("run", "-c", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr


def test_config_reference_covers_every_section() -> None:
    result = agentd("config-reference")
    assert result.returncode == 0
    for key in ("sip.registrar", "media.codecs", "app.dtmf_transfer", "log.level"):
        assert key in result.stdout
