"""Calendar built-ins on a temporary SQLite calendar."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agentd.dialog.tools.calendar import (
    Book,
    Cancel,
    FindSlots,
    ListAppointments,
    Move,
    create_calendar_db,
    wanted_time,
)
from agentd.dialog.tools.errors import ToolRefused
from agentd.dialog.types import ToolContext, ToolError

TZ = "Europe/London"
NOW = "2025-03-14T10:00:00+00:00"  # Friday 14 March, 10 am in London (GMT)
CALLER = "+44 7700 900123"
SLOTS = [
    (1, "2025-03-14T09:00:00", "Dr Patel"),  # earlier today: never offered
    (2, "2025-03-14T15:00:00", "Dr Patel"),
    (3, "2025-03-17T09:00:00", "Dr Patel"),  # Monday
    (4, "2025-03-17T09:30:00", "Dr Jones"),
    (5, "2025-03-17T14:00:00", "Dr Patel"),
    (6, "2025-03-17T14:30:00", "Dr Patel"),
    (7, "2025-03-17T16:00:00+00:00", "Dr Jones"),  # an explicit offset works too
    (8, "2025-03-21T11:00:00", "Dr Patel"),  # next Friday
    (9, "2025-03-18T10:00:00", "Dr Patel"),  # Tuesday
]


def ctx(
    caller_id: str | None = CALLER, facts: dict[str, Any] | None = None, now: str = NOW
) -> ToolContext:
    return ToolContext(caller_id=caller_id, call_ref="call-1", now_iso=now, facts=facts or {})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "calendar.sqlite"
    create_calendar_db(path)
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO slots (id, start, provider) VALUES (?, ?, ?)", SLOTS)
    conn.executemany(
        "INSERT INTO appointments (slot_id, patient_id, name, phone, status, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (5, "P001", "Ann Lee", "07700 900123", "booked", NOW),  # Ann: Monday 2 pm
            (9, "P002", "Bob Ray", "07700 900999", "booked", NOW),  # Bob: Tuesday 10 am
            (6, "P003", "Cy Old", "07700 900555", "cancelled", NOW),  # cancelled: slot free
        ],
    )
    conn.commit()
    conn.close()
    return path


def test_find_slots_by_day_word_skips_booked_and_past(db: Path) -> None:
    find = FindSlots("find_slots", db, timezone=TZ, max_results=10)
    monday = find.run({"day": "monday"}, ctx())
    assert monday["day"] == "2025-03-17" and monday["day_spoken"] == "Monday 17 March"
    assert [s["slot_id"] for s in monday["slots"]] == [3, 4, 6, 7]  # 5 is booked
    assert monday["slots"][0] == {
        "slot_id": 3,
        "time": "9 am",
        "start": "2025-03-17T09:00:00+00:00",
        "provider": "Dr Patel",
    }
    assert monday["slots"][2]["time"] == "2:30 pm"
    today = find.run({"day": "today"}, ctx())
    assert [s["slot_id"] for s in today["slots"]] == [2]  # 9 am already passed


def test_find_slots_limits_and_part_of_day(db: Path) -> None:
    find = FindSlots("find_slots", db, timezone=TZ, max_results=2)
    result = find.run({"day": "next monday", "part_of_day": "afternoon"}, ctx())
    assert [s["slot_id"] for s in result["slots"]] == [6, 7]
    result = find.run({"day": "2025-03-17", "part_of_day": "morning"}, ctx())
    assert [s["slot_id"] for s in result["slots"]] == [3, 4]
    assert len(find.run({"day": "monday"}, ctx())["slots"]) == 2


def test_find_slots_none_free_points_at_the_next_free_day(db: Path) -> None:
    find = FindSlots("find_slots", db, timezone=TZ)
    result = find.run({"day": "saturday"}, ctx())  # the 15th: nothing
    assert result["slots"] == []
    assert result["next_free"]["slot_id"] == 3


def test_find_slots_week_boundary_from_sunday(db: Path) -> None:
    find = FindSlots("find_slots", db, timezone=TZ)
    sunday_night = "2025-03-16T21:00:00+00:00"
    assert find.run({"day": "tomorrow"}, ctx(now=sunday_night))["day"] == "2025-03-17"
    assert find.run({"day": "friday"}, ctx(now=sunday_night))["day"] == "2025-03-21"


@pytest.mark.parametrize("day", ["someday", "", "2025-03-10"])
def test_find_slots_bad_or_past_day_is_refused(db: Path, day: str) -> None:
    with pytest.raises(ToolRefused):
        FindSlots("find_slots", db, timezone=TZ).run({"day": day}, ctx())


def test_book_then_the_slot_is_taken(db: Path) -> None:
    book = Book("book", db, timezone=TZ)
    result = book.run({"slot_id": 3, "name": "Dee Fox"}, ctx(caller_id="07700 900777"))
    assert result["booked"] is True and result["when"] == "Monday 17 March at 9 am"
    with pytest.raises(ToolRefused, match="taken"):
        book.run({"slot_id": 3, "name": "Eve Hart"}, ctx())
    with pytest.raises(ToolRefused, match="taken"):
        book.run({"slot_id": 5, "name": "Eve Hart"}, ctx())
    with pytest.raises(ToolRefused, match="passed"):
        book.run({"slot_id": 1, "name": "Eve Hart"}, ctx())
    with pytest.raises(ToolRefused, match="no such slot"):
        book.run({"slot_id": 999, "name": "Eve Hart"}, ctx())
    with pytest.raises(ToolRefused):
        book.run({"slot_id": "three", "name": "Eve Hart"}, ctx())
    # booking by exact start works too; the booking phone defaults to caller ID
    again = book.run({"start": "2025-03-17T09:30:00", "name": "Eve Hart"}, ctx())
    assert again["slot_id"] == 4
    conn = sqlite3.connect(db)
    phone = conn.execute("SELECT phone FROM appointments WHERE id = ?", (again["appointment_id"],))
    assert phone.fetchone()[0] == CALLER
    conn.close()


def test_concurrent_bookings_of_one_slot_give_one_winner(db: Path) -> None:
    book = Book("book", db, timezone=TZ)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        try:
            book.run({"slot_id": 8, "name": f"Caller {n}"}, ctx())
            outcome = "booked"
        except ToolRefused:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(outcomes) == ["booked"] + ["refused"] * 5


def test_move_by_caller_id_and_by_verified_patient(db: Path) -> None:
    move = Move("move", db, timezone=TZ)
    result = move.run({"slot_id": 4}, ctx())  # Ann, found by caller ID
    assert result["moved"] is True and result["from"] == "Monday 17 March at 2 pm"
    assert result["when"] == "Monday 17 March at 9:30 am"
    # the old slot is free again, the new one taken
    free = FindSlots("f", db, timezone=TZ, max_results=10).run({"day": "monday"}, ctx())
    assert 5 in [s["slot_id"] for s in free["slots"]] and 4 not in [
        s["slot_id"] for s in free["slots"]
    ]
    # Bob, verified by identity, calling from another phone
    facts = {"verified": {"tool": "verify_identity", "patient_id": "P002"}}
    moved = move.run({"slot_id": 8}, ctx(caller_id="01234 567890", facts=facts))
    assert moved["from"] == "Tuesday 18 March at 10 am"


def test_move_to_a_taken_slot_fails_and_changes_nothing(db: Path) -> None:
    move = Move("move", db, timezone=TZ)
    with pytest.raises(ToolRefused, match="taken"):
        move.run({"slot_id": 9}, ctx())  # Bob's slot
    appointments = ListAppointments("list", db, timezone=TZ).run({}, ctx())
    assert [a["slot_id"] for a in appointments["appointments"]] == [5]


def test_move_needs_an_identified_caller_with_one_appointment(db: Path) -> None:
    move = Move("move", db, timezone=TZ)
    with pytest.raises(ToolRefused, match="not identified"):
        move.run({"slot_id": 4}, ctx(caller_id=None))
    with pytest.raises(ToolRefused, match="no upcoming"):
        move.run({"slot_id": 4}, ctx(caller_id="07700 900555"))  # only a cancelled one
    Book("book", db, timezone=TZ).run({"slot_id": 8, "name": "Ann Lee"}, ctx())
    with pytest.raises(ToolRefused, match="several") as refused:
        move.run({"slot_id": 4}, ctx())
    assert "Monday 17 March at 2 pm" in str(refused.value) and "current_day" in str(refused.value)
    with pytest.raises(ToolRefused, match="several"):
        move.run({"slot_id": 4, "current_day": "wednesday"}, ctx())  # neither is then
    assert move.run({"slot_id": 4, "appointment_id": 1}, ctx())["moved"] is True
    with pytest.raises(ToolRefused, match="no such upcoming"):
        move.run({"slot_id": 3, "appointment_id": 2}, ctx())  # Bob's, not Ann's


def test_move_picks_the_appointment_by_the_day_the_caller_names(db: Path) -> None:
    Book("book", db, timezone=TZ).run({"slot_id": 8, "name": "Ann Lee"}, ctx())  # Fri 21st
    move = Move("move", db, timezone=TZ)
    moved = move.run({"slot_id": 3, "current_day": "next Friday"}, ctx())
    assert moved["from"] == "Friday 21 March at 11 am"
    listed = ListAppointments("list", db, timezone=TZ).run({}, ctx())
    assert sorted(a["slot_id"] for a in listed["appointments"]) == [3, 5]


def test_one_appointment_is_changed_whatever_day_is_named(db: Path) -> None:
    # The day only chooses among several; with one, the confirmed new time is what matters.
    moved = Move("move", db, timezone=TZ).run({"slot_id": 4, "current_day": "thursday"}, ctx())
    assert moved["from"] == "Monday 17 March at 2 pm"
    cancelled = Cancel("cancel", db, timezone=TZ).run({"current_day": "friday"}, ctx())
    assert cancelled["slot_id"] == 4


def test_move_and_cancel_ask_for_a_day_not_an_id() -> None:
    for tool in (Move("m", "x.sqlite"), Cancel("c", "x.sqlite")):
        assert "current_day" in tool.parameters["properties"]
        assert "appointment_id" not in tool.parameters["properties"]


def test_cancel_and_list(db: Path) -> None:
    listed = ListAppointments("list", db, timezone=TZ).run({}, ctx())
    assert listed["count"] == 1 and listed["appointments"][0]["when"] == "Monday 17 March at 2 pm"
    by_phone = ListAppointments("list", db, timezone=TZ).run({"phone": "07700900999"}, ctx(None))
    assert [a["slot_id"] for a in by_phone["appointments"]] == [9]
    cancelled = Cancel("cancel", db, timezone=TZ).run({}, ctx())
    assert cancelled["cancelled"] is True and cancelled["slot_id"] == 5
    assert ListAppointments("list", db, timezone=TZ).run({}, ctx())["count"] == 0
    with pytest.raises(ToolRefused):
        Cancel("cancel", db, timezone=TZ).run({}, ctx())
    # the slot can be booked again
    assert Book("book", db, timezone=TZ).run({"slot_id": 5, "name": "X Y"}, ctx())["booked"]


def test_database_problems_are_tool_errors(tmp_path: Path) -> None:
    missing = FindSlots("find", tmp_path / "nope.sqlite", timezone=TZ)
    with pytest.raises(ToolError, match="missing"):
        missing.run({"day": "monday"}, ctx())
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(ToolError, match="database error"):
        FindSlots("find", empty, timezone=TZ).run({"day": "monday"}, ctx())
    with pytest.raises(ToolError):
        FindSlots("find", empty, timezone=TZ).run({"day": "monday"}, ctx(now="not a time"))


def test_malformed_slot_rows_are_skipped(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO slots (id, start, provider) VALUES (50, '2025-03-17Tgarbage', 'X')")
    conn.commit()
    conn.close()
    result = FindSlots("find", db, timezone=TZ, max_results=10).run({"day": "monday"}, ctx())
    assert 50 not in [s["slot_id"] for s in result["slots"]]


def test_wal_mode_and_schema(db: Path) -> None:
    FindSlots("find", db, timezone=TZ).run({"day": "monday"}, ctx())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert FindSlots("find", db).parameters["required"] == ["day"]


def test_a_given_phone_without_bookings_falls_back_to_caller_id(db: Path) -> None:
    listed = ListAppointments("list", db, timezone=TZ).run({"phone": "1234567890"}, ctx())
    assert [a["slot_id"] for a in listed["appointments"]] == [5]  # Ann's, by caller ID
    by_phone = ListAppointments("list", db, timezone=TZ).run({"phone": "07700900999"}, ctx())
    assert [a["slot_id"] for a in by_phone["appointments"]] == [9]  # Bob's number wins


def test_move_by_the_day_and_time_the_caller_said(db: Path) -> None:
    move = Move("move", db, timezone=TZ)
    moved = move.run({"new_day": "monday", "new_time": "9:30 am"}, ctx())
    assert moved["when"] == "Monday 17 March at 9:30 am" and moved["slot_id"] == 4


def test_move_by_day_alone_takes_the_first_free_time_and_an_invented_slot_id_is_ignored(
    db: Path,
) -> None:
    # The 1.5B sometimes skips find_slots and writes slot_id 12345: the day still decides.
    moved = Move("move", db, timezone=TZ).run({"new_day": "monday", "slot_id": 12345}, ctx())
    assert moved["when"] == "Monday 17 March at 9 am" and moved["slot_id"] == 3
    # a real slot on another day than the one named: the day the caller said wins
    other = Move("move", db, timezone=TZ).run({"new_day": "next friday", "slot_id": 4}, ctx())
    assert other["slot_id"] == 8


def test_move_to_a_time_that_is_not_free_lists_the_free_ones(db: Path) -> None:
    with pytest.raises(ToolRefused, match="free times: 9 am, 9:30 am"):
        Move("move", db, timezone=TZ).run({"new_day": "monday", "new_time": "11 am"}, ctx())
    with pytest.raises(ToolRefused, match="no free time"):
        Move("move", db, timezone=TZ).run({"new_day": "saturday"}, ctx())
    with pytest.raises(ToolRefused, match="could not understand"):
        Move("move", db, timezone=TZ).run({"new_day": "whenever"}, ctx())


def test_a_real_slot_id_on_the_named_day_wins_over_the_time(db: Path) -> None:
    moved = Move("move", db, timezone=TZ).run(
        {"new_day": "monday", "new_time": "9 am", "slot_id": 4}, ctx())
    assert moved["slot_id"] == 4


@pytest.mark.parametrize(("said", "expected"), [
    ("9 am", (9, 0)), ("2:30 pm", (14, 30)), ("14:00", (14, 0)), ("3", (15, 0)),
    ("12 pm", (12, 0)), ("at 10.30", (10, 30)), ("soon", None), ("", None), ("25:00", None),
])
def test_wanted_time(said: str, expected: tuple[int, int] | None) -> None:
    assert wanted_time(said) == expected
