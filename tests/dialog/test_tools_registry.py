"""build_tools from a validated policy; requires guards and the facts they read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentd.dialog.policy import parse_policy
from agentd.dialog.tools import (
    RequiresGuard,
    ToolRefused,
    WebhookTool,
    build_handoff_webhook,
    build_tools,
    facts_after,
)
from agentd.dialog.tools.calendar import FindSlots, Move, create_calendar_db
from agentd.dialog.tools.identity import Verify
from agentd.dialog.tools.records import Lookup, Update
from agentd.dialog.types import ToolContext

POLICY = """
agent:
  name: Ava
  organisation: Bright Smile Dental
  greeting: "Hello, this is Ava."
  goodbye: "Goodbye!"
  timezone: America/New_York
  date_order: mdy
tools:
  find_slots:
    builtin: calendar.find_slots
    database: data/dental.sqlite
    max_results: 2
  move_appointment:
    builtin: calendar.move
    database: data/dental.sqlite
    confirm: true
    requires: [verify_identity]
  verify_identity:
    builtin: identity.verify
    records: data/patients.csv
    match: [name, date_of_birth]
  lookup_order:
    builtin: records.lookup
    records: data/orders.sqlite
    table: orders
    key: order_number
    caller_id_field: phone
  change_address:
    builtin: records.update
    records: data/orders.sqlite
    table: orders
    key: order_number
    fields: [address]
    condition: shipped == 0
    confirm: true
  send_confirmation:
    webhook:
      method: POST
      url: "http://127.0.0.1:9/api/appointments/{appointment_id}/confirm"
      headers: {Authorization: "Bearer ${env:REGISTRY_TEST_TOKEN}"}
      timeout_s: 1
    description: Send the caller a confirmation text.
    parameters:
      type: object
      properties: {appointment_id: {type: string}}
      required: [appointment_id]
escalation:
  targets: {front_desk: "100"}
  handoff_webhook: {method: POST, url: "http://127.0.0.1:9/api/handoff", timeout_s: 2}
"""


@pytest.fixture
def policy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGISTRY_TEST_TOKEN", "t0k")
    data = tmp_path / "data"
    data.mkdir()
    create_calendar_db(data / "dental.sqlite")
    conn = sqlite3.connect(data / "dental.sqlite")
    conn.execute(
        "INSERT INTO slots (id, start, provider) VALUES (1, '2025-03-17T09:00:00', 'Dr P')"
    )
    conn.execute(
        "INSERT INTO slots (id, start, provider) VALUES (2, '2025-03-17T10:00:00', 'Dr P')"
    )
    conn.execute(
        "INSERT INTO appointments (slot_id, patient_id, name, phone, status) "
        "VALUES (1, 'P001', 'Ann Lee', '555 010 0000', 'booked')"
    )
    conn.commit()
    conn.close()
    (data / "patients.csv").write_text(
        "patient_id,name,date_of_birth,postcode,phone\nP001,Ann Lee,1985-05-03,10001,\n",
        encoding="utf-8",
    )
    conn = sqlite3.connect(data / "orders.sqlite")
    conn.execute(
        "CREATE TABLE orders (order_number TEXT PRIMARY KEY, phone TEXT, address TEXT, shipped INTEGER)"
    )
    conn.commit()
    conn.close()
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return tmp_path


def load(policy_dir: Path):  # type: ignore[no-untyped-def]
    return parse_policy(POLICY, source=str(policy_dir / "policy.yaml"), base_dir=policy_dir)


def test_builds_every_tool_kind(policy_dir: Path) -> None:
    tools = build_tools(load(policy_dir), policy_dir)
    assert set(tools) == {
        "find_slots", "move_appointment", "verify_identity", "lookup_order", "change_address",
        "send_confirmation",
    }  # fmt: skip
    assert isinstance(tools["find_slots"], FindSlots) and tools["find_slots"].max_results == 2
    assert str(tools["find_slots"].tz) == "America/New_York"
    assert (
        isinstance(tools["verify_identity"], Verify)
        and tools["verify_identity"].date_order == "mdy"
    )
    assert isinstance(tools["lookup_order"], Lookup)
    assert isinstance(tools["change_address"], Update) and tools["change_address"].confirm
    webhook = tools["send_confirmation"]
    assert isinstance(webhook, WebhookTool)
    assert webhook.parameters["required"] == ["appointment_id"]
    assert webhook.description == "Send the caller a confirmation text."
    guarded = tools["move_appointment"]
    assert isinstance(guarded, RequiresGuard) and isinstance(guarded.tool, Move)
    assert guarded.confirm and guarded.parameters["required"] == ["new_day"]
    assert tools["find_slots"].description  # builtins describe themselves for the LLM
    assert build_handoff_webhook(load(policy_dir)) is not None


def test_requires_then_facts_after_a_verification(policy_dir: Path) -> None:
    tools = build_tools(load(policy_dir), policy_dir)
    now = "2025-03-14T10:00:00-04:00"
    facts: dict[str, object] = {}
    context = ToolContext(caller_id="+1 212 555 0199", call_ref="c", now_iso=now, facts=facts)
    with pytest.raises(ToolRefused, match="verify_identity"):
        tools["move_appointment"].run({"slot_id": 2}, context)
    failed = tools["verify_identity"].run(
        {"name": "Ann Lee", "date_of_birth": "03/05/1985"}, context
    )
    assert failed == {"verified": False}  # mdy: March 5
    assert facts_after("verify_identity", failed, facts) == {}
    result = tools["verify_identity"].run(
        {"name": "ann lee", "date_of_birth": "05/03/1985"}, context
    )
    facts = facts_after(tools["verify_identity"], result, facts)
    assert facts["verified"] == {
        "tool": "verify_identity",
        "patient_id": "P001",
        "record_id": "P001",
        "name": "Ann Lee",
    }
    assert facts["succeeded"] == ["verify_identity"]
    context = ToolContext(caller_id="+1 212 555 0199", call_ref="c", now_iso=now, facts=facts)
    moved = tools["move_appointment"].run({"slot_id": 2}, context)
    assert moved["moved"] is True and moved["when"] == "Monday 17 March at 10 am"
    facts = facts_after("move_appointment", moved, facts)
    assert facts["succeeded"] == ["verify_identity", "move_appointment"]


def test_relative_paths_use_the_base_dir(policy_dir: Path) -> None:
    policy = load(policy_dir)
    spec = policy.tools["find_slots"].model_copy(update={"database": Path("data/dental.sqlite")})
    policy = policy.model_copy(update={"tools": {"find_slots": spec}})
    tool = build_tools(policy, policy_dir)["find_slots"]
    assert isinstance(tool, FindSlots) and tool.database == policy_dir / "data" / "dental.sqlite"
