"""The worked examples: each policy and config loads from a fresh copy, the seed modules build
the tables the built-in tools expect, and the data holds the cases the READMEs promise."""

from __future__ import annotations

import re
import shutil
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

import examples
from agentd.config import ConfigError, load_config
from agentd.dialog.policy import load_policy

START = date(2025, 3, 12)  # a Wednesday: the data starts on Monday 2025-03-10
MONDAY = "2025-03-10"

CALENDAR_COLUMNS = {
    "slots": ["id", "start", "end", "provider"],
    "appointments": ["id", "slot_id", "patient_id", "name", "phone", "status", "created"],
}
ORDERS_COLUMNS = [
    "order_number", "phone", "customer", "status", "carrier", "eta", "address", "shipped",
]  # fmt: skip
LEADS_COLUMNS = [
    "phone", "name", "company", "campaign", "company_size", "budget", "timeline", "qualified",
]  # fmt: skip
PATIENT_COLUMNS = "patient_id,name,date_of_birth,postcode,phone"


@pytest.fixture(params=examples.NAMES)
def prepared(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    name: str = request.param
    return name, examples.prepare(name, tmp_path, start=START)


def columns(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args))


# --- every example ---------------------------------------------------------------------------


def test_policy_loads_from_a_fresh_copy(prepared: tuple[str, Path]) -> None:
    name, policy_path = prepared
    policy = load_policy(policy_path)
    assert policy.tools and policy.flows and policy.knowledge
    assert policy.escalation.rules and policy.hours is not None
    for path in policy.data_files():
        assert path.is_file() and path.is_relative_to(policy_path.parent)  # the copy's data
    # Every rule and key transfers to a declared target with a dialable URI.
    for target in policy.target_names:
        assert re.fullmatch(r"[0-9]+|sips?:\S+", policy.target_uri(target))
    assert policy.rules_for("caller_asks_for_human")
    assert policy.rules_for("tool_failure")


def test_config_loads_for_the_demo_pbx(prepared: tuple[str, Path]) -> None:
    name, policy_path = prepared
    config = load_config(policy_path.parent / "config.yaml")
    assert str(config.sip.registrar) == "127.0.0.1:5060"
    assert config.sip.extension == "2001"
    assert config.sip.password is not None
    assert config.sip.password.get_secret_value() == "pw2001"
    assert config.dialog.enabled and config.dialog.policy is not None
    assert config.dialog.policy.source == policy_path.resolve()
    assert config.dialog.llm.model == "qwen2.5-coder-1.5b-instruct-q4_k_m"


def test_flow_steps_name_only_declared_tools(prepared: tuple[str, Path]) -> None:
    _name, policy_path = prepared
    policy = load_policy(policy_path)
    from agentd.dialog.tools.registry import build_tools

    arguments = {arg for tool in build_tools(policy).values()
                 for arg in tool.parameters.get("properties") or {}}  # fmt: skip
    for flow in policy.flows.values():
        for step in flow.steps:
            for word in re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", step):
                assert word in policy.tools or word in arguments, (
                    f"{step!r} names {word!r}, not a declared tool or argument"
                )


def test_webhooks_render_with_their_declared_arguments(prepared: tuple[str, Path]) -> None:
    _name, policy_path = prepared
    policy = load_policy(policy_path)
    for spec in policy.tools.values():
        if spec.webhook is None:
            continue
        values = {arg: "x" for arg in spec.argument_names} | {"caller_id": "+44", "call_ref": "c"}
        assert spec.webhook.render_url(values).startswith("http://127.0.0.1:")
        headers = spec.webhook.render_headers(values)
        assert all("${" not in value for value in headers.values())  # secrets resolved
        assert spec.webhook.render_body(values) is not None


def test_seed_is_repeatable_and_leaves_no_temp_files(tmp_path: Path) -> None:
    for name in examples.NAMES:
        data = examples.prepare(name, tmp_path, start=START).parent / "data"
        before = sorted(p.name for p in data.iterdir())
        rebuilt = examples.build_data(name, data, start=START)  # over the existing files
        assert all(path.is_file() for path in rebuilt)
        assert sorted(p.name for p in data.iterdir()) == before  # no .tmp, -wal or -shm left


def test_examples_can_build_their_tools(prepared: tuple[str, Path]) -> None:
    registry = pytest.importorskip("agentd.dialog.tools.registry")
    _name, policy_path = prepared
    policy = load_policy(policy_path)
    tools = registry.build_tools(policy)
    assert set(tools) == set(policy.tools)
    for name, tool in tools.items():
        assert tool.name == name and tool.description
        assert tool.parameters.get("type") == "object"
        assert tool.confirm == policy.tools[name].confirm


# --- the data each example promises ----------------------------------------------------------


def test_dental_calendar(tmp_path: Path) -> None:
    policy = load_policy(examples.prepare("dental", tmp_path, start=START))
    db = policy.tools["find_slots"].database
    assert db is not None
    assert {t: columns(db, t) for t in CALENDAR_COLUMNS} == CALENDAR_COLUMNS
    patients = policy.tools["verify_identity"].records
    assert patients is not None
    assert patients.read_text(encoding="utf-8").splitlines()[0] == PATIENT_COLUMNS
    # Two weeks, two dentists, 12 slots a day, less Friday afternoon of week 1.
    assert query(db, "SELECT COUNT(*) FROM slots") == [(10 * 2 * 12 - 2 * 6,)]
    assert query(db, "SELECT MIN(start) FROM slots") == [(f"{MONDAY}T09:00:00",)]
    assert query(
        db, "SELECT COUNT(*) FROM slots WHERE start BETWEEN '2025-03-14T12' AND '2025-03-15'"
    ) == [(0,)]
    # James O'Connor's appointment to move: Thursday of week 1, 09:30 with Dr Okafor.
    james = query(
        db,
        "SELECT s.start, s.provider, a.status FROM appointments a JOIN slots s"
        " ON s.id = a.slot_id WHERE a.patient_id = 'P1002'",
    )
    assert james == [("2025-03-13T09:30:00", "Dr Okafor", "booked")]
    # Wednesday morning of week 1 is full; a cancelled appointment frees its slot.
    free_wednesday_morning = query(
        db,
        "SELECT COUNT(*) FROM slots s WHERE s.start BETWEEN '2025-03-12T09' AND '2025-03-12T12'"
        " AND NOT EXISTS (SELECT 1 FROM appointments a WHERE a.slot_id = s.id"
        " AND a.status = 'booked')",
    )
    assert free_wednesday_morning == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM appointments WHERE status = 'cancelled'") == [(1,)]
    # The calendar refuses a second live booking of one slot.
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO appointments (slot_id, patient_id, name, phone, status, created)"
            " SELECT slot_id, 'P1007', 'Daniel Evans', '+1', 'booked', 'now' FROM appointments"
            " WHERE patient_id = 'P1002'"
        )


def test_dental_rules_and_hours(tmp_path: Path) -> None:
    policy = load_policy(examples.prepare("dental", tmp_path, start=START))
    topics = {t for rule in policy.rules_for("topic") for t in rule.topics}
    assert {"insurance", "clinical question", "medication"} <= topics
    assert policy.tools["move_appointment"].confirm
    assert policy.tools["move_appointment"].requires == ("verify_identity",)
    assert policy.tools["verify_identity"].identity_match == ("name", "date_of_birth")
    assert policy.dtmf_action("0") is not None
    # London hours: Monday 2025-03-10 08:30 GMT open, Sunday closed, Saturday morning open.
    assert policy.is_open(datetime(2025, 3, 10, 8, 30, tzinfo=UTC))
    assert not policy.is_open(datetime(2025, 3, 9, 10, 0, tzinfo=UTC))
    assert policy.is_open(datetime(2025, 3, 15, 10, 0, tzinfo=UTC))
    assert not policy.is_open(datetime(2025, 3, 15, 14, 0, tzinfo=UTC))


def test_shop_orders(tmp_path: Path) -> None:
    policy = load_policy(examples.prepare("shop", tmp_path, start=START))
    lookup, change = policy.tools["lookup_order"], policy.tools["change_address"]
    assert (lookup.builtin, lookup.table, lookup.key, lookup.caller_id_field) == (
        "records.lookup",
        "orders",
        "order_number",
        "phone",
    )
    assert change.builtin == "records.update" and change.fields == ("address",)
    assert change.condition == "shipped == 0" and change.confirm
    assert change.requires == ("lookup_order",)
    db = lookup.records
    assert db is not None and columns(db, "orders") == ORDERS_COLUMNS
    by_phone = query(
        db, "SELECT order_number, shipped FROM orders WHERE phone = ? ORDER BY 1", "+447700900201"
    )
    assert by_phone == [("AB1234", 0), ("AB1238", 0)]  # two unshipped orders for one caller
    assert query(db, "SELECT eta FROM orders WHERE order_number = 'AB1234'") == [("2025-03-16",)]
    assert query(db, "SELECT carrier FROM orders WHERE order_number = 'AB1234'") == [(None,)]
    statuses = {row[0] for row in query(db, "SELECT status FROM orders")}
    assert {"processing", "shipped", "delivered", "cancelled"} <= statuses
    billing = [r for r in policy.rules_for("topic") if r.target == "billing"]
    assert billing and "billing dispute" in billing[0].topics


def test_leads_table_and_callbacks(tmp_path: Path) -> None:
    policy = load_policy(examples.prepare("leads", tmp_path, start=START))
    lookup, record = policy.tools["lookup_lead"], policy.tools["record_answers"]
    assert lookup.caller_id_field == "phone" and lookup.table == "leads"
    assert set(record.fields or ()) == {"company_size", "budget", "timeline", "qualified"}
    db = lookup.records
    assert db is not None and columns(db, "leads") == LEADS_COLUMNS
    rachel = query(db, "SELECT campaign, company_size, qualified FROM leads WHERE phone = ?",
                   "+447700900301")  # fmt: skip
    assert rachel == [("spring webinar", None, None)]  # not asked yet
    assert query(db, "SELECT qualified FROM leads WHERE phone = '+447700900303'") == [(1,)]
    calendar = policy.tools["book_callback"].database
    assert calendar is not None and calendar == policy.tools["find_callback_slots"].database
    assert {t: columns(calendar, t) for t in CALENDAR_COLUMNS} == CALENDAR_COLUMNS
    assert query(calendar, "SELECT COUNT(*) FROM slots") == [(10 * 2 * 6,)]
    assert policy.tools["book_callback"].confirm
    assert "sales" in policy.target_names
    assert policy.escalation.on_transfer_failure.then == "continue"


def test_examples_need_their_seeded_data(tmp_path: Path) -> None:
    """A copy without the built SQLite files fails with a line naming the missing file."""
    shutil.copytree(examples.EXAMPLES_DIR / "shop", tmp_path / "shop")
    for built in (tmp_path / "shop" / "data").glob("*.sqlite"):
        built.unlink()
    with pytest.raises(ConfigError, match=r"policy.yaml:\d+: tools.lookup_order.records: "
                       r"file not found: .*shop.sqlite"):  # fmt: skip
        load_policy(tmp_path / "shop" / "policy.yaml")
