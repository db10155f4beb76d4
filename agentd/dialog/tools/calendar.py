"""Appointment built-ins on a SQLite calendar:

    slots(id INTEGER PRIMARY KEY, start TEXT, end TEXT, provider TEXT)
    appointments(id INTEGER PRIMARY KEY, slot_id INTEGER, patient_id TEXT, name TEXT,
                 phone TEXT, status TEXT 'booked'|'cancelled', created TEXT)

Times without an offset are local to the policy's time zone. A slot is free when no
'booked' appointment points at it. The caller's appointments are found by the verified
record id in the call's facts, else by the phone number they give, else by caller ID.
"""

from __future__ import annotations

import copy
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, ClassVar

from agentd.dialog.tools import _db
from agentd.dialog.tools._args import int_arg, text_arg, verified_id
from agentd.dialog.tools._text import phone_key
from agentd.dialog.tools.dates import (
    DateOrder,
    local_now,
    parse_timestamp,
    part_of_day_matches,
    resolve_day,
    spoken_date,
    spoken_datetime,
    spoken_time,
    zone,
)
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.types import JsonDict, ToolContext, ToolError

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS slots (
    id INTEGER PRIMARY KEY, start TEXT NOT NULL, "end" TEXT, provider TEXT
);
CREATE INDEX IF NOT EXISTS slots_start ON slots(start);
CREATE TABLE IF NOT EXISTS appointments (
    id INTEGER PRIMARY KEY, slot_id INTEGER NOT NULL REFERENCES slots(id), patient_id TEXT,
    name TEXT, phone TEXT, status TEXT NOT NULL DEFAULT 'booked', created TEXT
);
CREATE INDEX IF NOT EXISTS appointments_slot ON appointments(slot_id, status);
CREATE UNIQUE INDEX IF NOT EXISTS appointments_one_booking ON appointments(slot_id)
    WHERE status = 'booked';
"""

MAX_LISTED = 5


def create_calendar_db(path: Path | str) -> None:
    """Create the calendar tables (if absent) in WAL mode; for seed scripts and tests."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA_SQL)
        conn.commit()
    finally:
        conn.close()


@dataclass(frozen=True)
class _Slot:
    id: int
    start: datetime
    provider: str | None

    def to_json(self) -> JsonDict:
        result: JsonDict = {
            "slot_id": self.id,
            "when": spoken_datetime(self.start),
            "start": self.start.isoformat(),
        }
        if self.provider:
            result["provider"] = self.provider
        return result


class _CalendarTool:
    """Shared settings and queries of the calendar built-ins."""

    builtin = ""
    default_description = ""
    PARAMETERS: ClassVar[JsonDict] = {"type": "object", "properties": {}}

    def __init__(
        self,
        name: str,
        database: Path | str,
        *,
        timezone: str | tzinfo = "UTC",
        description: str | None = None,
        confirm: bool = False,
        date_order: DateOrder = "dmy",
    ) -> None:
        self.name = name
        self.parameters: JsonDict = copy.deepcopy(self.PARAMETERS)  # callers may adjust theirs
        self.description = description or self.default_description
        self.confirm = confirm
        self.database = Path(database)
        self.tz = zone(timezone)
        self.date_order: DateOrder = date_order

    def _slot(self, row: sqlite3.Row) -> _Slot | None:
        start = parse_timestamp(str(row["start"]), self.tz)
        if start is None:
            return None  # a malformed row is skipped, never offered
        return _Slot(int(row["id"]), start, row["provider"])

    def _is_free(self, conn: sqlite3.Connection, slot_id: int) -> bool:
        row = conn.execute(
            "SELECT 1 FROM appointments WHERE slot_id = ? AND status = 'booked' LIMIT 1",
            (slot_id,),
        ).fetchone()
        return row is None

    def _chosen_slot(
        self, conn: sqlite3.Connection, arguments: Mapping[str, Any], now: datetime
    ) -> _Slot:
        """The slot named by `slot_id` (or by its exact `start`), future and free."""
        slot_id = int_arg(arguments, "slot_id")
        start_text = text_arg(arguments, "start")
        row: sqlite3.Row | None = None
        if slot_id is not None:
            row = conn.execute(
                "SELECT id, start, provider FROM slots WHERE id = ?", (slot_id,)
            ).fetchone()
        elif start_text is not None:
            wanted = parse_timestamp(start_text, self.tz)
            if wanted is None:
                raise ToolRefused("start must be an ISO date and time")
            for candidate in self._rows_around(conn, wanted.date(), wanted.date()):
                slot = self._slot(candidate)
                if slot is not None and slot.start == wanted:
                    row = candidate
                    break
        else:
            raise ToolRefused("missing slot_id")
        slot = self._slot(row) if row is not None else None
        if slot is None:
            raise ToolRefused("no such slot")
        if slot.start <= now:
            raise ToolRefused("that time has already passed")
        if not self._is_free(conn, slot.id):
            raise ToolRefused("that time is already taken")
        return slot

    def _rows_around(self, conn: sqlite3.Connection, first: date, last: date) -> list[sqlite3.Row]:
        # Stored starts may carry any offset: fetch a day either side by text, then
        # compare as local datetimes.
        low = (first - timedelta(days=1)).isoformat()
        high = (last + timedelta(days=1)).isoformat()
        return conn.execute(
            "SELECT id, start, provider FROM slots WHERE substr(start, 1, 10) BETWEEN ? AND ? "
            "ORDER BY start, id",
            (low, high),
        ).fetchall()

    def _free_slots(
        self,
        conn: sqlite3.Connection,
        first: date,
        last: date,
        now: datetime,
        part_of_day: str | None = None,
        provider: str | None = None,
    ) -> list[_Slot]:
        booked = {
            int(r[0])
            for r in conn.execute("SELECT slot_id FROM appointments WHERE status = 'booked'")
            if r[0] is not None
        }
        free: list[_Slot] = []
        for row in self._rows_around(conn, first, last):
            slot = self._slot(row)
            if slot is None or slot.id in booked or slot.start <= now:
                continue
            if not first <= slot.start.date() <= last:
                continue
            if not part_of_day_matches(slot.start, part_of_day):
                continue
            if provider and provider.lower() not in (slot.provider or "").lower():
                continue
            free.append(slot)
        free.sort(key=lambda s: (s.start, s.id))
        return free

    def _caller_appointments(
        self,
        conn: sqlite3.Connection,
        arguments: Mapping[str, Any],
        context: ToolContext,
        now: datetime,
    ) -> list[tuple[int, _Slot]]:
        """The caller's upcoming booked appointments, soonest first."""
        patient = verified_id(context.facts)
        sql = (
            "SELECT a.id AS appointment_id, s.id, s.start, s.provider FROM appointments a "
            "JOIN slots s ON s.id = a.slot_id WHERE a.status = 'booked' AND "
        )
        if patient is not None:
            rows = conn.execute(sql + "a.patient_id = ?", (patient,)).fetchall()
        else:
            # The number they gave, then caller ID (a small model fills "phone" with a made-up
            # number; caller ID is what an unverified lookup trusts anyway).
            keys = [phone_key(text_arg(arguments, "phone")), phone_key(context.caller_id)]
            if not any(keys):
                raise ToolRefused("caller not identified: verify them or ask for their phone")
            rows = []
            for key in dict.fromkeys(k for k in keys if k):
                rows = conn.execute(sql + "phone_key(a.phone) = ?", (key,)).fetchall()
                if rows:
                    break
        found: list[tuple[int, _Slot]] = []
        for row in rows:
            slot = self._slot(row)
            if slot is not None and slot.start > now:
                found.append((int(row["appointment_id"]), slot))
        found.sort(key=lambda pair: (pair[1].start, pair[0]))
        return found

    def _one_appointment(
        self,
        conn: sqlite3.Connection,
        arguments: Mapping[str, Any],
        context: ToolContext,
        now: datetime,
    ) -> tuple[int, _Slot]:
        """The appointment to change: by `appointment_id` (from calendar.list), else the
        caller's only one, else the one on `current_day` (the day as the caller said it; a
        small model gets a day word right where it would invent an id)."""
        mine = self._caller_appointments(conn, arguments, context, now)
        wanted = int_arg(arguments, "appointment_id")
        if wanted is not None:
            for pair in mine:
                if pair[0] == wanted:
                    return pair
            raise ToolRefused("no such upcoming appointment for this caller")
        if not mine:
            raise ToolRefused("the caller has no upcoming appointment")
        if len(mine) == 1:
            return mine[0]
        said = text_arg(arguments, "current_day")
        day = resolve_day(said, now.date(), order=self.date_order) if said else None
        on_day = [pair for pair in mine if day is not None and pair[1].start.date() == day]
        if len(on_day) == 1:
            return on_day[0]
        listed = "; ".join(spoken_datetime(s.start) for _a, s in mine[:MAX_LISTED])
        raise ToolRefused(
            f"the caller has several appointments ({listed}): ask which one and pass its day "
            "as current_day"
        )

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        now = local_now(context.now_iso, self.tz)
        with _db.connect(self.database) as conn:
            return self._run(conn, arguments or {}, context, now)

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        raise NotImplementedError


_PHONE_PROPERTY = {
    "type": "string",
    "description": "Phone number the booking was made with, if not calling from it.",
}
# Which appointment to change is given by its day, not an id: small models invent ids but
# copy a day word faithfully. (appointment_id from calendar.list is still accepted.)
_CURRENT_DAY_PROPERTY = {
    "type": "string",
    "description": "Day of the appointment to change, as the caller said it; only when they "
    "have several.",
}


class FindSlots(_CalendarTool):
    builtin = "calendar.find_slots"
    default_description = "Find free appointment times on a day."
    PARAMETERS: ClassVar[JsonDict] = {
        "type": "object",
        "properties": {
            "day": {
                "type": "string",
                "description": 'The day as the caller said it: "tomorrow", "friday", '
                '"next monday", "14 March", or YYYY-MM-DD.',
            },
            "part_of_day": {"type": "string", "enum": ["any", "morning", "afternoon", "evening"]},
        },
        "required": ["day"],
    }

    def __init__(
        self,
        name: str,
        database: Path | str,
        *,
        max_results: int = 3,
        look_ahead_days: int = 14,
        **settings: Any,
    ) -> None:
        super().__init__(name, database, **settings)
        if max_results < 1 or look_ahead_days < 0:
            raise ToolConfigError("max_results must be >= 1 and look_ahead_days >= 0")
        self.max_results = max_results
        self.look_ahead_days = look_ahead_days

    @staticmethod
    def _slot_on_day(slot: _Slot) -> JsonDict:
        entry: JsonDict = {
            "slot_id": slot.id,
            "time": spoken_time(slot.start),
            "start": slot.start.isoformat(),
        }
        if slot.provider:
            entry["provider"] = slot.provider
        return entry

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        said = text_arg(arguments, "day", required=True)
        assert said is not None
        day = resolve_day(said, now.date(), order=self.date_order)
        if day is None:
            raise ToolRefused(f"could not understand the day {said[:40]!r}; ask again")
        if day < now.date():
            raise ToolRefused(f"{spoken_date(day)} has already passed")
        part = text_arg(arguments, "part_of_day")
        free = self._free_slots(conn, day, day, now, part)
        result: JsonDict = {
            "day": day.isoformat(),
            "day_spoken": spoken_date(day),
            # the day is said once above; each slot only needs its time (prompt tokens cost)
            "slots": [self._slot_on_day(s) for s in free[: self.max_results]],
        }
        if not free and self.look_ahead_days:
            later = self._free_slots(
                conn,
                day + timedelta(days=1),
                day + timedelta(days=self.look_ahead_days),
                now,
                part,
            )
            if later:
                result["next_free"] = later[0].to_json()
        return result


class Book(_CalendarTool):
    builtin = "calendar.book"
    default_description = "Book a free slot (from find_slots) for the caller."
    PARAMETERS: ClassVar[JsonDict] = {
        "type": "object",
        "properties": {
            "slot_id": {"type": "integer"},
            "name": {"type": "string", "description": "The caller's full name."},
            "phone": {"type": "string", "description": "Contact number, if not caller ID."},
        },
        "required": ["slot_id", "name"],
    }

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        name = text_arg(arguments, "name", required=True)
        phone = text_arg(arguments, "phone") or context.caller_id
        with _db.write_transaction(conn):
            slot = self._chosen_slot(conn, arguments, now)
            cursor = conn.execute(
                "INSERT INTO appointments (slot_id, patient_id, name, phone, status, created) "
                "VALUES (?, ?, ?, ?, 'booked', ?)",
                (slot.id, verified_id(context.facts), name, phone, context.now_iso),
            )
        return {"booked": True, "appointment_id": cursor.lastrowid, **slot.to_json()}


_TIME_WORDS = re.compile(r"\b(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm|a\.m\.?|p\.m\.?)?(?!\d)")


def wanted_time(text: str | None) -> tuple[int, int] | None:
    """(hour, minute) from "9 am", "2:30 pm", "14:00", "half past nine" is not understood;
    a bare "2" or "3" means the afternoon (nobody books 3 in the morning)."""
    if not text:
        return None
    match = _TIME_WORDS.search(text.lower())
    if match is None:
        return None
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    marker = (match.group(3) or "").replace(".", "")
    if marker == "pm" and hour < 12:
        hour += 12
    elif marker == "am" and hour == 12:
        hour = 0
    elif not marker and 1 <= hour <= 6:
        hour += 12
    if hour > 23 or minute > 59:
        return None
    return hour, minute


class Move(_CalendarTool):
    """Moves the caller's appointment to a free slot named by `slot_id` (from find_slots) or
    by `new_day` and `new_time` as the caller said them: a small model that skips find_slots
    or invents a slot id still names the day right."""

    builtin = "calendar.move"
    default_description = "Move the caller's appointment to another free slot."
    PARAMETERS: ClassVar[JsonDict] = {
        "type": "object",
        "properties": {
            "new_day": {
                "type": "string",
                "description": 'The new day as the caller said it ("tuesday next week").',
            },
            "new_time": {
                "type": "string",
                "description": 'The new time ("9 am", "2:30 pm"), or "morning"/"afternoon"; '
                "leave out for the first free time.",
            },
            "slot_id": {
                "type": "integer",
                "description": "The slot_id from find_slots of the time they chose, if any.",
            },
            "current_day": _CURRENT_DAY_PROPERTY,
            "phone": _PHONE_PROPERTY,
        },
        "required": ["new_day"],
    }

    def _new_slot(
        self, conn: sqlite3.Connection, arguments: JsonDict, now: datetime
    ) -> _Slot:
        """The slot_id's slot when it exists and lies on new_day (or no day was given);
        otherwise the free slot on new_day at new_time (the first free one without a time)."""
        said_day = text_arg(arguments, "new_day")
        day = resolve_day(said_day, now.date(), order=self.date_order) if said_day else None
        if said_day and day is None:
            raise ToolRefused(f"could not understand the day {said_day[:40]!r}; ask again")
        slot_id = int_arg(arguments, "slot_id")
        if slot_id is not None or day is None:
            row = None
            if slot_id is not None:
                row = conn.execute(
                    "SELECT id, start, provider FROM slots WHERE id = ?", (slot_id,)
                ).fetchone()
            slot = self._slot(row) if row is not None else None
            if day is None or (slot is not None and slot.start.date() == day):
                return self._chosen_slot(conn, arguments, now)
        assert day is not None
        said_time = text_arg(arguments, "new_time")
        part = said_time if said_time in ("morning", "afternoon", "evening") else None
        free = self._free_slots(conn, day, day, now, part)
        if not free:
            raise ToolRefused(f"no free time on {spoken_date(day)}; offer another day")
        clock = wanted_time(said_time)
        if clock is None:
            return free[0]
        for slot in free:
            if (slot.start.hour, slot.start.minute) == clock:
                return slot
        times = ", ".join(spoken_time(s.start) for s in free[:5])
        raise ToolRefused(f"that time is not free on {spoken_date(day)}; free times: {times}")

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        with _db.write_transaction(conn):
            appointment_id, old = self._one_appointment(conn, arguments, context, now)
            new = self._new_slot(conn, arguments, now)
            updated = conn.execute(
                "UPDATE appointments SET slot_id = ? WHERE id = ? AND status = 'booked'",
                (new.id, appointment_id),
            ).rowcount
            if updated != 1:
                raise ToolError("the appointment could not be updated")
        return {
            "moved": True,
            "appointment_id": appointment_id,
            "from": spoken_datetime(old.start),
            **new.to_json(),
        }


class Cancel(_CalendarTool):
    builtin = "calendar.cancel"
    default_description = "Cancel the caller's upcoming appointment."
    PARAMETERS: ClassVar[JsonDict] = {
        "type": "object",
        "properties": {"current_day": _CURRENT_DAY_PROPERTY, "phone": _PHONE_PROPERTY},
    }

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        with _db.write_transaction(conn):
            appointment_id, slot = self._one_appointment(conn, arguments, context, now)
            conn.execute(
                "UPDATE appointments SET status = 'cancelled' WHERE id = ?", (appointment_id,)
            )
        return {"cancelled": True, "appointment_id": appointment_id, **slot.to_json()}


class ListAppointments(_CalendarTool):
    builtin = "calendar.list"
    default_description = "List the caller's upcoming appointments."
    PARAMETERS: ClassVar[JsonDict] = {"type": "object", "properties": {"phone": _PHONE_PROPERTY}}

    def _run(
        self, conn: sqlite3.Connection, arguments: JsonDict, context: ToolContext, now: datetime
    ) -> JsonDict:
        mine = self._caller_appointments(conn, arguments, context, now)
        return {
            "count": len(mine),
            "appointments": [{"appointment_id": a, **s.to_json()} for a, s in mine[:MAX_LISTED]],
        }


CALENDAR_TOOLS: dict[str, type[_CalendarTool]] = {
    cls.builtin: cls for cls in (FindSlots, Book, Move, Cancel, ListAppointments)
}
