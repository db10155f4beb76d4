"""`agentd calls list | show | export` as an operator runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.records import CallEnd, CallStore
from agentd.records.cli import mask_caller, parse_since

from .conftest import T0, fill_call


def agentd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", "calls", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TZ": "UTC"},
    )


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calls") / "calls.db"
    with CallStore(path) as store:
        fill_call(store, "ab12cd34", at=T0)
        store.start_call("ee55ff66", call_id="c2", caller="+15550001", at=T0 + 600)
        store.end_call("ee55ff66", CallEnd("abandoned", T0 + 603, "remote hangup"))
    return path


def test_list_masks_callers(database: Path) -> None:
    result = agentd("list", "--db", str(database))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "REF",
        "STARTED",
        "CALLER",
        "DURATION",
        "OUTCOME",
        "TURNS",
        "TRANSFER",
    ]
    assert lines[1].split() == [
        "ee55ff66",
        "2023-11-14",
        "22:23:20",
        "*******01",
        "0:03",
        "abandoned",
        "0",
        "-",
    ]
    assert lines[2].split() == [
        "ab12cd34",
        "2023-11-14",
        "22:13:20",
        "*********56",
        "1:10",
        "transferred",
        "3",
        "reception",
    ]
    assert "4930123456" not in result.stdout and "15550001" not in result.stdout


def test_list_show_caller_and_filters(database: Path) -> None:
    shown = agentd("list", "--db", str(database), "--show-caller", "--outcome", "transferred")
    assert shown.returncode == 0
    assert "+4930123456" in shown.stdout and "ee55ff66" not in shown.stdout
    recent = agentd("list", "--db", str(database), "--since", "2023-11-14T22:20:00+00:00")
    assert "ee55ff66" in recent.stdout and "ab12cd34" not in recent.stdout
    limited = agentd("list", "--db", str(database), "-n", "1")
    assert "ee55ff66" in limited.stdout and "ab12cd34" not in limited.stdout


def test_show_transcript_tools_and_latency(database: Path) -> None:
    result = agentd("show", "ab12cd34", "--db", str(database))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Caller:    *********56" in out and "4930123456" not in out
    assert "Outcome:   transferred to reception (caller asked for a person)" in out
    lines = out.splitlines()
    greeting = next(i for i, line in enumerate(lines) if "Hello, Smile Dental." in line)
    assert lines[greeting].split()[:2] == ["0:01.2", "agent"]
    assert lines[greeting + 1].split()[:2] == ["0:05.0", "caller"]
    assert lines[greeting + 2].endswith("Monday at nine  [interrupted]")
    assert 'tool find_slots {"day":"monday"} -> ok (12 ms)' in lines[greeting + 3]
    assert lines[greeting + 4].strip() == (
        "latency: end of turn 210 ms, asr 55 ms, first words 910 ms, response 640 ms"
    )
    assert "summary: wants an appointment" in out


def test_show_unknown_call(database: Path) -> None:
    result = agentd("show", "nope", "--db", str(database))
    assert result.returncode == 1 and "no call 'nope'" in result.stderr


def test_export_jsonl(database: Path, tmp_path: Path) -> None:
    result = agentd("export", "--db", str(database))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c["ref"] for c in calls] == ["ab12cd34", "ee55ff66"]
    assert calls[0]["caller"] == "*********56"
    assert calls[0]["handoff"]["caller_id"] == "*********56"
    assert calls[0]["turns"][2]["interrupted"] is True
    assert calls[0]["tool_calls"][0]["name"] == "find_slots"
    since = agentd(
        "export", "--db", str(database), "--since", "2023-11-14T22:20:00+00:00", "--show-caller"
    )
    assert [json.loads(line)["caller"] for line in since.stdout.splitlines()] == ["+15550001"]
    target = tmp_path / "calls.jsonl"
    to_file = agentd("export", "--db", str(database), "-o", str(target))
    assert to_file.returncode == 0 and "exported 2 call(s)" in to_file.stderr
    assert len(target.read_text().splitlines()) == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_config_names_the_database(database: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sip:\n  registrar: 127.0.0.1:5060\n  extension: '2001'\n  password: pw\n"
        f"records:\n  database: {database}\n"
    )
    result = agentd("list", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "ab12cd34" in result.stdout


def test_missing_database_and_bad_time(tmp_path: Path, database: Path) -> None:
    missing = agentd("list", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no call records" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    bad = agentd("list", "--db", str(database), "--since", "last tuesday")
    assert bad.returncode == 2 and "cannot read time" in bad.stderr


def test_parse_since_and_mask() -> None:
    now = time.time()
    assert parse_since("7d", now) == now - 7 * 86_400
    assert parse_since("90m", now) == now - 5400
    assert parse_since("2023-11-14T22:13:20+00:00", now) == T0
    with pytest.raises(ValueError):
        parse_since("soon", now)
    assert mask_caller("+4930123456") == "*********56"
    assert mask_caller("1001") == "****"
    assert mask_caller(None) == "-" and mask_caller("anonymous") == "anonymous"
