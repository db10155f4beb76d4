"""Building the examples' SQLite files from their committed CSVs (shared by the seed modules).

The table layouts are the contract with the built-in tools (agentd/dialog/tools):

  slots(id INTEGER PRIMARY KEY, start TEXT, end TEXT, provider TEXT)
      start/end: local ISO 8601 without offset ("2025-03-10T09:00:00"), in the policy's
      agent.timezone.
  appointments(id INTEGER PRIMARY KEY, slot_id INTEGER, patient_id TEXT, name TEXT,
      phone TEXT, status TEXT 'booked'|'cancelled', created TEXT)
  orders(order_number TEXT PRIMARY KEY, phone TEXT, customer TEXT, status TEXT, carrier TEXT,
      eta TEXT, address TEXT, shipped INTEGER)
  leads(phone TEXT PRIMARY KEY, name TEXT, company TEXT, campaign TEXT, company_size TEXT,
      budget TEXT, timeline TEXT, qualified INTEGER)

Dates in the data are relative to a start day (default: the Monday of this week) so the
demo calendar is never in the past; pass `start` for reproducible tests.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

CALENDAR_SCHEMA = """
CREATE TABLE slots (
    id INTEGER PRIMARY KEY,
    start TEXT NOT NULL,
    end TEXT NOT NULL,
    provider TEXT NOT NULL
);
CREATE TABLE appointments (
    id INTEGER PRIMARY KEY,
    slot_id INTEGER NOT NULL REFERENCES slots(id),
    patient_id TEXT,
    name TEXT,
    phone TEXT,
    status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled')),
    created TEXT NOT NULL
);
CREATE INDEX slots_by_start ON slots(start);
-- A safety net under the tools' own check: one live booking per slot.
CREATE UNIQUE INDEX one_booking_per_slot ON appointments(slot_id) WHERE status = 'booked';
"""

ORDERS_SCHEMA = """
CREATE TABLE orders (
    order_number TEXT PRIMARY KEY,
    phone TEXT,
    customer TEXT,
    status TEXT,
    carrier TEXT,
    eta TEXT,
    address TEXT,
    shipped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX orders_by_phone ON orders(phone);
"""

LEADS_SCHEMA = """
CREATE TABLE leads (
    phone TEXT PRIMARY KEY,
    name TEXT,
    company TEXT,
    campaign TEXT,
    company_size TEXT,
    budget TEXT,
    timeline TEXT,
    qualified INTEGER
);
"""


def monday_of(day: date) -> date:
    return day - timedelta(days=day.weekday())


def working_days(start: date, count: int) -> list[date]:
    """`count` Monday-Friday days from the Monday of `start`'s week."""
    days: list[date] = []
    day = monday_of(start)
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Booking:
    """An existing appointment: working day index, local time, provider, who, status."""

    day: int
    at: str  # "HH:MM"
    provider: str
    patient_id: str
    name: str
    phone: str
    status: str = "booked"


def _fresh(path: Path) -> Path:
    """A temporary path next to `path`; the finished file is renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    return temp


def _finish(temp: Path, path: Path) -> Path:
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(temp, path)
    return path


def build_calendar(
    path: Path,
    *,
    days: Sequence[date],
    providers: Sequence[str],
    times: Sequence[str],
    slot_minutes: int,
    bookings: Iterable[Booking],
    skip: Iterable[tuple[int, str, str]] = (),
) -> Path:
    """A calendar with one slot per (day, provider, time) except `skip` (day index, time,
    provider), and the given bookings. Replaces `path` atomically."""
    skipped = set(skip)
    temp = _fresh(path)
    with sqlite3.connect(temp) as conn:
        conn.executescript(CALENDAR_SCHEMA)
        slot_ids: dict[tuple[int, str, str], int] = {}
        for index, day in enumerate(days):
            for provider in providers:
                for at in times:
                    if (index, at, provider) in skipped:
                        continue
                    start = datetime.combine(day, time.fromisoformat(at))
                    end = start + timedelta(minutes=slot_minutes)
                    cursor = conn.execute(
                        "INSERT INTO slots (start, end, provider) VALUES (?, ?, ?)",
                        (start.isoformat(), end.isoformat(), provider),
                    )
                    assert cursor.lastrowid is not None
                    slot_ids[(index, at, provider)] = cursor.lastrowid
        for booking in bookings:
            slot_id = slot_ids[(booking.day, booking.at, booking.provider)]
            created = datetime.combine(days[0] - timedelta(days=7), time(10, 0))
            conn.execute(
                "INSERT INTO appointments (slot_id, patient_id, name, phone, status, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    slot_id,
                    booking.patient_id,
                    booking.name,
                    booking.phone,
                    booking.status,
                    created.isoformat(),
                ),
            )
    return _finish(temp, path)


def build_table(path: Path, schema: str, table: str, rows: Iterable[dict[str, object]]) -> Path:
    """An SQLite file holding one table made by `schema`, filled with `rows`."""
    temp = _fresh(path)
    with sqlite3.connect(temp) as conn:
        conn.executescript(schema)
        for row in rows:
            columns = list(row)
            conn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                [row[c] for c in columns],
            )
    return _finish(temp, path)


def relative_date(text: str, start: date) -> str:
    """'+3' -> the ISO date 3 days after `start`; anything else is kept as written."""
    text = text.strip()
    if text.startswith("+") and text[1:].isdigit():
        return (start + timedelta(days=int(text[1:]))).isoformat()
    return text


def optional_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text else None


def blank_as_null(text: str) -> str | None:
    return text if text.strip() else None
