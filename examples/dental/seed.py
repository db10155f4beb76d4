"""Build examples/dental/data/dental.sqlite (the appointment calendar).

    python -m examples.dental.seed [DATA_DIR] [--start YYYY-MM-DD]

Two weeks of 30-minute slots (Monday-Friday, 09:00-11:30 and 14:00-16:30) for two dentists,
from the Monday of the start day's week, with some appointments already booked for the
patients in data/patients.csv. Wednesday morning of week 1 is fully booked and Friday
afternoon of week 1 has no slots (staff training), so "no free time" can be tried.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from examples.seedlib import Booking, build_calendar, read_csv, working_days

DATA_DIR = Path(__file__).resolve().parent / "data"
PROVIDERS = ("Dr Patel", "Dr Okafor")
TIMES = ("09:00", "09:30", "10:00", "10:30", "11:00", "11:30",
         "14:00", "14:30", "15:00", "15:30", "16:00", "16:30")  # fmt: skip
MORNING = TIMES[:6]
AFTERNOON = TIMES[6:]

# (working day index from the start Monday, time, provider, patient_id, status)
BOOKINGS = (
    (0, "16:00", "Dr Patel", "P1008", "booked"),
    (1, "10:00", "Dr Patel", "P1001", "booked"),
    (2, "14:00", "Dr Patel", "P1003", "booked"),
    (3, "09:30", "Dr Okafor", "P1002", "booked"),  # James O'Connor: the reschedule demo
    (4, "09:00", "Dr Patel", "P1006", "cancelled"),
    (6, "11:00", "Dr Okafor", "P1004", "booked"),
    (7, "14:30", "Dr Patel", "P1005", "booked"),
    (9, "15:00", "Dr Okafor", "P1006", "booked"),
)
BUSY_DAY = 2  # Wednesday of week 1: every morning slot taken
TRAINING_DAY = 4  # Friday of week 1: no afternoon slots


def build(data_dir: Path | None = None, *, start: date | None = None) -> list[Path]:
    """Build dental.sqlite into `data_dir` (default: this example's data/); returns it."""
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    patients = {row["patient_id"]: row for row in read_csv(data_dir / "patients.csv")}
    bookings = [
        Booking(day, at, provider, pid, patients[pid]["name"], patients[pid]["phone"], status)
        for day, at, provider, pid, status in BOOKINGS
    ]
    walk_in = 0
    for provider in PROVIDERS:
        for at in MORNING:
            if any(b.day == BUSY_DAY and b.at == at and b.provider == provider for b in bookings):
                continue
            walk_in += 1
            bookings.append(
                Booking(BUSY_DAY, at, provider, f"W{walk_in:03d}", f"Walk-in {walk_in}",
                        f"+44770090{walk_in:04d}")
            )  # fmt: skip
    skip = [(TRAINING_DAY, at, provider) for at in AFTERNOON for provider in PROVIDERS]
    days = working_days(start or date.today(), 10)
    path = build_calendar(
        data_dir / "dental.sqlite",
        days=days,
        providers=PROVIDERS,
        times=TIMES,
        slot_minutes=30,
        bookings=bookings,
        skip=skip,
    )
    return [path]


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
