"""Scenario files, the flow runner (fresh data per scenario), the table, exit codes, and
`agentd chat` — all with a scripted LLM on a copy of the dental example."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pytest

import examples
from agentd.dialog.agent import ScriptedLlm
from agentd.dialog.chat import run_chat
from agentd.dialog.flows import (
    ScenarioError,
    copy_data,
    load_scenarios,
    parse_scenario,
    run_test_flows,
    scenario_time,
)
from agentd.dialog.policy import load_policy

WEEK = date(2025, 3, 10)
FREE_SLOT = 25  # Tuesday 11 March 2025, 09:00, Dr Patel (free in the seed data)


def reply(say: str, action: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"say": say, "action": action or {"type": "none"}}


def book(slot_id: int) -> dict[str, Any]:
    return {
        "type": "tool",
        "name": "book_appointment",
        "arguments": {"slot_id": slot_id, "name": "Daniel Evans", "phone": "+447700900107"},
    }


@pytest.fixture
def dental(tmp_path: Path) -> Path:
    """A copy of the dental example with its calendar built: its config.yaml."""
    policy = examples.prepare("dental", tmp_path, start=WEEK)
    return policy.parent / "config.yaml"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- scenario files ---------------------------------------------------------------------------


def test_parse_full_scenario() -> None:
    scenario = parse_scenario(
        """
name: reschedule
caller_id: "+447700900102"
now: "tuesday 09:30"
turns:
  - Hello
  - {dtmf: "0"}
  - {text: mumble, confidence: 0.3}
  - {silence: true}
expect:
  tools: [verify_identity, {find_slots: {day: tuesday}}]
  transfer_to: null
  ended: false
  reply_contains: [Tuesday]
"""
    )
    assert scenario.name == "reschedule" and scenario.caller_id == "+447700900102"
    assert [t.dtmf for t in scenario.turns] == [False, True, False, False]
    assert scenario.turns[2].confidence == 0.3 and scenario.turns[3].silence
    assert scenario.tools[1].name == "find_slots" and scenario.tools[1].arguments == {"day": "tuesday"}
    assert scenario.transfer_to is None and not scenario.must_transfer
    assert scenario.ended is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a mapping"),
        ("name: x\nturns: []", "non-empty list"),
        ("name: x\nturns: [hi]\nexpect: {tool: [a]}", "unknown key 'tool'"),
        ("name: x\nturns: [hi]\nwhen: monday", "unknown key 'when'"),
        ("name: x\nturns: [{foo: 1}]", "turns[0]"),
        ("name: x\nturns: [hi]\nnow: someday", "now:"),
        ("name: x\nturns: [hi]\nexpect: {ended: maybe}", "expect.ended"),
        ("name: x\nturns: [hi]\nexpect: {tools: [{a: 1, b: 2}]}", "expect.tools"),
        ("name: [unclosed", "YAML error"),
    ],
)
def test_bad_scenarios_are_named_errors(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[")):
        parse_scenario(text, Path("bad.yaml"))


def test_scenario_time_weekday_and_iso() -> None:
    moment = scenario_time("wednesday 14:30", date(2025, 3, 13), "Europe/London")
    assert moment.isoformat() == "2025-03-12T14:30:00+00:00"
    assert scenario_time("2025-06-01T09:00:00+02:00", WEEK, "UTC").hour == 9
    assert str(scenario_time("2025-06-01T09:00", WEEK, "Europe/London").tzinfo) == "Europe/London"
    with pytest.raises(ValueError):
        scenario_time("funday 10:00", WEEK, "UTC")


def test_examples_have_at_least_thirty_valid_scenarios() -> None:
    root = Path(examples.EXAMPLES_DIR)
    scenarios = load_scenarios([root / name / "scenarios" for name in examples.NAMES])
    assert len(scenarios) >= 30
    assert len({s.name for s in scenarios}) == len(scenarios)
    must_transfer = [s for s in scenarios if s.must_transfer]
    assert len(must_transfer) >= 10


def test_example_scenarios_name_declared_tools_and_targets(tmp_path: Path) -> None:
    for name in examples.NAMES:
        policy = load_policy(examples.prepare(name, tmp_path, start=WEEK))
        for scenario in load_scenarios([Path(examples.EXAMPLES_DIR) / name / "scenarios"]):
            for tool in scenario.tools:
                assert tool.name in policy.tools, (scenario.name, tool.name)
            if scenario.must_transfer:
                assert scenario.transfer_to in policy.escalation.targets, scenario.name


# ---- running: pass/fail, table, exit codes -----------------------------------------------------


def run(config: Path, scenario_dir: Path, llm: ScriptedLlm) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_test_flows(config, [scenario_dir], out=out, err=err, llm=llm, week_of=WEEK)
    return code, out.getvalue(), err.getvalue()


def test_all_passing_scenarios_exit_zero(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    write(scenarios, "a_hours.yaml", "name: hours\nturns: ['When are you open?']\n"
          "expect: {tools: [], transfer_to: null, reply_contains: ['8 am']}\n")  # fmt: skip
    write(scenarios, "b_human.yaml", "name: human\nturns: ['Can I speak to a person?']\n"
          "expect: {transfer_to: front_desk}\n")  # fmt: skip
    llm = ScriptedLlm([reply("We open at 8 am.")])
    code, out, err = run(dental, scenarios, llm)
    assert code == 0, out + err
    assert "PASS" in out and "FAIL" not in out
    assert "Task success: 2/2 (100.0%)" in out


def test_failures_are_listed_and_exit_one(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    write(scenarios, "slots.yaml", """
name: slots
turns: ['Anything on Tuesday?']
expect:
  tools: [{find_slots: {day: wednesday}}]
  transfer_to: front_desk
  ended: true
  reply_contains: [Tuesday at 9]
""")
    llm = ScriptedLlm([
        reply("Let me look.", {"type": "tool", "name": "find_slots", "arguments": {"day": "Tuesday"}}),
        reply("I have a few times."),
    ])
    code, out, _ = run(dental, scenarios, llm)
    assert code == 1
    assert "FAIL" in out and "Task success: 0/1 (0.0%)" in out
    assert "tool find_slots {'day': 'wednesday'} not called" in out
    assert "transfer to 'front_desk' expected, got None" in out
    assert "call should have ended" in out
    assert "no reply contains 'Tuesday at 9'" in out


def test_argument_subset_matching_ignores_case(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    write(scenarios, "s.yaml", "name: s\nturns: ['Tuesday?']\n"
          "expect: {tools: [{find_slots: {day: tuesday}}]}\n")  # fmt: skip
    llm = ScriptedLlm([
        reply("", {"type": "tool", "name": "find_slots", "arguments": {"day": "Tuesday"}}),
        reply("Tuesday at 9 am is free."),
    ])
    assert run(dental, scenarios, llm)[0] == 0


def test_refused_model_output_fails_the_scenario(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    write(scenarios, "s.yaml", "name: s\nturns: [hi]\nexpect: {transfer_to: front_desk}\n")
    llm = ScriptedLlm([reply("", {"type": "transfer", "target": "911", "reason": "x"})])
    code, out, _ = run(dental, scenarios, llm)
    assert code == 1 and "refused by the schema" in out


def test_each_scenario_gets_fresh_data(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    text = ("name: {n}\ncaller_id: '+447700900107'\nturns: [Book Tuesday 9 am for Daniel Evans, 'Yes please']\n"
            "expect: {{tools: [{{book_appointment: {{slot_id: 25}}}}]}}\n")  # fmt: skip
    write(scenarios, "one.yaml", text.format(n="first booking"))
    write(scenarios, "two.yaml", text.format(n="same slot again"))
    script = [reply("Shall I book Tuesday at 9 am?", book(FREE_SLOT)), reply("Booked.")] * 2
    llm = ScriptedLlm(script)
    code, out, _ = run(dental, scenarios, llm)
    assert code == 0, out  # the second booking did not find the slot taken
    calendar = dental.parent / "data" / "dental.sqlite"
    with sqlite3.connect(calendar) as db:  # the prepared copy itself was never written
        taken = db.execute(
            "SELECT COUNT(*) FROM appointments WHERE slot_id = ? AND status = 'booked'",
            (FREE_SLOT,),
        ).fetchone()[0]
    assert taken == 0


def test_webhooks_are_stubbed_in_test_runs(dental: Path, tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    write(scenarios, "s.yaml", "name: s\nturns: [text me]\n"
          "expect: {tools: [send_confirmation], transfer_to: null}\n")  # fmt: skip
    llm = ScriptedLlm([
        reply("", {"type": "tool", "name": "send_confirmation", "arguments": {"appointment_id": "7"}}),
        reply("Sent."),
    ])
    code, out, _ = run(dental, scenarios, llm)
    assert code == 0, out  # nothing listens on the demo CRM port: a live call would fail


def test_bad_config_or_scenarios_exit_two(dental: Path, tmp_path: Path) -> None:
    scenarios = write(tmp_path / "scenarios", "bad.yaml", "turns: oops\n").parent
    code, _, err = run(dental, scenarios, ScriptedLlm())
    assert code == 2 and "bad.yaml" in err
    code, _, err = run(tmp_path / "missing.yaml", scenarios, ScriptedLlm())
    assert code == 2 and "missing.yaml" in err
    code, _, err = run(dental, tmp_path / "nowhere", ScriptedLlm())
    assert code == 2 and "no such file" in err


def test_copy_data_points_tools_at_copies(dental: Path, tmp_path: Path) -> None:
    policy = load_policy(dental.parent / "policy.yaml")
    dest = tmp_path / "copy"
    dest.mkdir()
    copied = copy_data(policy, dest)
    assert all(path.parent == dest for path in copied.data_files())
    assert copied.tools["find_slots"].database != policy.tools["find_slots"].database
    assert copied.source == policy.source


# ---- agentd chat -----------------------------------------------------------------------------


def test_chat_shows_lines_tools_transfer_and_handoff(dental: Path) -> None:
    llm = ScriptedLlm([
        reply("Let me check Tuesday.", {"type": "tool", "name": "find_slots",
                                        "arguments": {"day": "tuesday"}}),
        reply("I have Tuesday at 9 am."),
    ])
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO("Anything on Tuesday?\n\n/dtmf 0\nnever read\n")
    code = run_chat(dental, caller_id="+447700900107", now="monday 10:00", stdin=stdin,
                    out=out, err=err, llm=llm)  # fmt: skip
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert "agent> Thank you for calling Bright Smile Dental" in text
    assert '  [tool] find_slots {"day":"tuesday"}' in text
    assert "  [tool] find_slots ok" in text
    assert "agent> I have Tuesday at 9 am." in text
    assert "  [transfer] to front_desk (3000)" in text
    assert "--- hand-off record ---" in text and "caller: +447700900107" in text
    assert llm.remaining == 0


def test_chat_json_prints_only_the_record_on_stdout(dental: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO("I want to talk to a human\n")
    code = run_chat(dental, as_json=True, now="monday 10:00", stdin=stdin, out=out, err=err,
                    llm=ScriptedLlm())  # fmt: skip
    assert code == 0
    record = json.loads(out.getvalue())
    assert record["reason"].startswith("transferred to front_desk") or record["reason"]
    assert record["transcript"][1] == {"speaker": "caller", "text": "I want to talk to a human",
                                       "interrupted": False}  # fmt: skip
    assert "[transfer]" in err.getvalue()


def test_chat_outside_hours_ends_at_once(dental: Path) -> None:
    out = io.StringIO()
    code = run_chat(dental, now="sunday 11:00", stdin=io.StringIO("hello\n"), out=out,
                    err=io.StringIO(), llm=ScriptedLlm())  # fmt: skip
    assert code == 0
    assert "We're closed right now" in out.getvalue() and "[end call]" in out.getvalue()


def test_chat_bad_config_exits_two(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(Path(examples.EXAMPLES_DIR) / "dental" / "config.yaml", config)
    err = io.StringIO()
    code = run_chat(config, stdin=io.StringIO(""), out=io.StringIO(), err=err, llm=ScriptedLlm())
    assert code == 2 and "policy" in err.getvalue()
