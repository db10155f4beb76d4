"""Build examples/leads/data/leads.sqlite (leads table, from data/leads.csv) and
examples/leads/data/callbacks.sqlite (the sales team's call-back calendar).

    python -m examples.leads.seed [DATA_DIR] [--start YYYY-MM-DD]

Empty CSV cells are NULL: the answers not collected yet. The calendar has two weeks of
half-hour call-back slots (Monday-Friday) for two sales people from the Monday of the start
day's week (default today); a few are already taken.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from examples.seedlib import (
    LEADS_SCHEMA,
    Booking,
    blank_as_null,
    build_calendar,
    build_table,
    optional_int,
    read_csv,
    working_days,
)

DATA_DIR = Path(__file__).resolve().parent / "data"
SALES = ("Alex Morgan", "Priya Desai")
TIMES = ("10:00", "11:00", "12:00", "14:00", "15:00", "16:00")
# (working day index, time, sales person, lead phone, lead name)
TAKEN = (
    (0, "10:00", "Alex Morgan", "+447700900303", "Nina Patel"),
    (1, "14:00", "Priya Desai", "+447700900304", "Marcus Lee"),
    (2, "11:00", "Alex Morgan", "+447700900399", "Existing customer review"),
    (3, "15:00", "Alex Morgan", "+447700900398", "Existing customer review"),
)


def build(data_dir: Path | None = None, *, start: date | None = None) -> list[Path]:
    """Build leads.sqlite and callbacks.sqlite into `data_dir` (default: data/)."""
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    rows = [
        {
            "phone": row["phone"],
            "name": row["name"],
            "company": row["company"],
            "campaign": row["campaign"],
            "company_size": blank_as_null(row["company_size"]),
            "budget": blank_as_null(row["budget"]),
            "timeline": blank_as_null(row["timeline"]),
            "qualified": optional_int(row["qualified"]),
        }
        for row in read_csv(data_dir / "leads.csv")
    ]
    leads = build_table(data_dir / "leads.sqlite", LEADS_SCHEMA, "leads", rows)
    bookings = [
        Booking(day, at, person, patient_id=phone, name=name, phone=phone)
        for day, at, person, phone, name in TAKEN
    ]
    calendar = build_calendar(
        data_dir / "callbacks.sqlite",
        days=working_days(start or date.today(), 10),
        providers=SALES,
        times=TIMES,
        slot_minutes=30,
        bookings=bookings,
    )
    return [leads, calendar]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DATA_DIR)
    parser.add_argument("--start", type=date.fromisoformat, default=None)
    args = parser.parse_args(argv)
    for path in build(args.data_dir, start=args.start):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
