"""records.lookup / records.update on a temporary orders table and CSV."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.records import Condition, Lookup, Update
from agentd.dialog.types import ToolContext, ToolError

ORDERS = [
    ("AB123", "+44 7700 900123", "Ann Lee", "shipped", "Royal Mail", "2025-03-18", "1 High St", 1),
    ("AB124", "+44 7700 900123", "Ann Lee", "packing", None, "2025-03-20", "1 High St", 0),
    ("CD900", "020 7946 0000", "Bob Ray", "packing", None, None, "9 Low Rd", 0),
]


def ctx(caller_id: str | None = None) -> ToolContext:
    return ToolContext(
        caller_id=caller_id, call_ref="c1", now_iso="2025-03-14T10:00:00+00:00", facts={}
    )


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    path = tmp_path / "orders.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE orders (order_number TEXT PRIMARY KEY, phone TEXT, customer TEXT, "
        "status TEXT, carrier TEXT, eta TEXT, address TEXT, shipped INTEGER)"
    )
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ORDERS)
    conn.commit()
    conn.close()
    return path


def lookup(path: Path, **kw: object) -> Lookup:
    settings: dict[str, object] = {
        "table": "orders",
        "key": "order_number",
        "caller_id_field": "phone",
    }
    settings.update(kw)
    return Lookup("lookup_order", path, **settings)


@pytest.mark.parametrize("said", ["A B 1 2 3", "ab-123", "AB123", "a b one two three", "A.B. 123"])
def test_lookup_by_spoken_order_number(orders: Path, said: str) -> None:
    result = lookup(orders, fields=["order_number", "status", "eta"]).run(
        {"order_number": said}, ctx()
    )
    assert result["found"] is True and result["by"] == "order_number"
    assert result["records"] == [
        {
            "order_number": "AB123",
            "status": "shipped",
            "eta": "2025-03-18",
            "eta_spoken": "Tuesday 18 March",
        }
    ]


def test_lookup_by_caller_id_in_another_format(orders: Path) -> None:
    result = lookup(orders).run({}, ctx("sip:07700900123@pbx.local"))
    assert result["by"] == "caller_id"
    assert sorted(r["order_number"] for r in result["records"]) == ["AB123", "AB124"]
    one = lookup(orders).run({}, ctx("+442079460000"))
    assert [r["customer"] for r in one["records"]] == ["Bob Ray"]


def test_lookup_not_found_and_no_caller_id(orders: Path) -> None:
    # a spoken key that is not found does not fall back to the (known) caller ID
    assert lookup(orders).run({"order_number": "ZZ999"}, ctx("07700900123")) == {
        "found": False,
        "by": "order_number",
        "records": [],
    }
    assert lookup(orders).run({}, ctx("07000 000000"))["found"] is False
    with pytest.raises(ToolRefused, match="order number"):
        lookup(orders).run({}, ctx(None))
    with pytest.raises(ToolRefused):
        lookup(orders, caller_id_field=None).run({}, ctx("07700900123"))


def test_lookup_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "orders.csv"
    csv_path.write_text(
        "order_number,phone,status\nXY-55,07700 900123,delivered\n", encoding="utf-8"
    )
    tool = Lookup("lookup", csv_path, key="order_number", caller_id_field="phone")
    assert tool.run({"order_number": "x y 5 5"}, ctx())["records"][0]["status"] == "delivered"
    assert tool.run({}, ctx("+447700900123"))["found"] is True


def test_lookup_bad_sources(tmp_path: Path, orders: Path) -> None:
    with pytest.raises(ToolError, match="missing"):
        lookup(tmp_path / "none.sqlite").run({"order_number": "AB123"}, ctx())
    with pytest.raises(ToolError, match="no column"):
        lookup(orders, key="order_no").run({"order_no": "AB123"}, ctx())
    with pytest.raises(ToolError, match="missing"):
        lookup(orders, table="nope").run({"order_number": "AB123"}, ctx())
    with pytest.raises(ToolError):
        Lookup("l", tmp_path / "none.csv", key="k").run({"k": "1"}, ctx())
    with pytest.raises(ToolConfigError):
        Lookup("l", orders, key="k")  # SQLite without table
    with pytest.raises(ToolConfigError):
        Lookup("l", tmp_path / "x.json", key="k")
    with pytest.raises(ToolConfigError):
        lookup(orders, table="orders; DROP TABLE orders")


def update(path: Path, **kw: object) -> Update:
    settings: dict[str, object] = {
        "table": "orders",
        "key": "order_number",
        "caller_id_field": "phone",
        "fields": ["address"],
        "condition": "shipped == 0",
        "refusal": "the order has already shipped",
    }
    settings.update(kw)
    return Update("change_address", path, **settings)  # type: ignore[arg-type]


def address_of(path: Path, order: str) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT address FROM orders WHERE order_number = ?", (order,))
        return str(row.fetchone()[0])
    finally:
        conn.close()


def test_update_address_when_not_shipped(orders: Path) -> None:
    result = update(orders).run({"order_number": "ab 124", "address": "5 New Rd"}, ctx())
    assert result == {"updated": True, "changed": {"address": "5 New Rd"}, "order_number": "AB124"}
    assert address_of(orders, "AB124") == "5 New Rd"
    # by caller ID when the caller has one order
    update(orders).run({"address": "7 Side St"}, ctx("02079460000"))
    assert address_of(orders, "CD900") == "7 Side St"
    assert update(orders).confirm is True  # a change is confirmed with the caller first


def test_update_refused_when_shipped_and_nothing_changes(orders: Path) -> None:
    with pytest.raises(ToolRefused, match=r"shipped is 1 \(needs shipped == 0\)"):
        update(orders, refusal=None).run({"order_number": "AB123", "address": "x"}, ctx())
    with pytest.raises(ToolRefused, match="already shipped"):
        update(orders).run({"order_number": "AB123", "address": "5 New Rd"}, ctx())
    assert address_of(orders, "AB123") == "1 High St"


def test_update_refusals(orders: Path) -> None:
    with pytest.raises(ToolRefused, match="several"):
        update(orders).run({"address": "x"}, ctx("07700900123"))  # Ann has two orders
    with pytest.raises(ToolRefused, match="nothing to change"):
        update(orders).run({"order_number": "AB124", "status": "cancelled"}, ctx())
    with pytest.raises(ToolRefused, match="no matching"):
        update(orders).run({"order_number": "QQ1", "address": "x"}, ctx())
    assert "status" not in update(orders).parameters["properties"]  # only allowed fields


def test_update_configuration_errors(tmp_path: Path, orders: Path) -> None:
    csv_path = tmp_path / "o.csv"
    csv_path.write_text("order_number,address\n", encoding="utf-8")
    with pytest.raises(ToolConfigError, match="SQLite"):
        Update("u", csv_path, key="order_number", fields=["address"])
    with pytest.raises(ToolConfigError, match="fields"):
        Update("u", orders, table="orders", key="order_number", fields=[])
    with pytest.raises(ToolConfigError):
        update(orders, condition="shipped is zero")


def test_conditions() -> None:
    assert Condition("shipped == 0").holds({"shipped": 0})
    assert Condition("shipped == 0").holds({"shipped": "0"})  # CSV text
    assert not Condition("shipped == 0").holds({"shipped": 1})
    assert Condition("status != 'delivered'").holds({"status": "packing"})
    assert Condition("total < 100.5").holds({"total": 99})
    assert not Condition("total < 100.5").holds({"total": None})
    assert Condition("carrier == null").holds({"carrier": None})
    assert Condition("flag == true").holds({"flag": 1})
    with pytest.raises(ToolError):
        Condition("missing == 1").holds({"other": 1})
