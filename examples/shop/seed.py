"""Build examples/shop/data/shop.sqlite (the orders table) from data/orders.csv.

    python -m examples.shop.seed [DATA_DIR] [--start YYYY-MM-DD]

An `eta` written as +N / -N in the CSV becomes the ISO date N days after / before the start
day (default today), so deliveries are always "this week" in the demo.
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

from examples.seedlib import ORDERS_SCHEMA, blank_as_null, build_table, read_csv

DATA_DIR = Path(__file__).resolve().parent / "data"


def _eta(text: str, start: date) -> str | None:
    text = text.strip()
    if text[:1] in "+-" and text[1:].isdigit():
        return (start + timedelta(days=int(text))).isoformat()
    return blank_as_null(text)


def build(data_dir: Path | None = None, *, start: date | None = None) -> list[Path]:
    """Build shop.sqlite into `data_dir` (default: this example's data/); returns it."""
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    start = start or date.today()
    rows = [
        {
            "order_number": row["order_number"],
            "phone": row["phone"],
            "customer": row["customer"],
            "status": row["status"],
            "carrier": blank_as_null(row["carrier"]),
            "eta": _eta(row["eta"], start),
            "address": row["address"],
            "shipped": int(row["shipped"]),
        }
        for row in read_csv(data_dir / "orders.csv")
    ]
    return [build_table(data_dir / "shop.sqlite", ORDERS_SCHEMA, "orders", rows)]


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
