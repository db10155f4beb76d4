"""Where records live: a SQLite table or a CSV file, read as plain dict rows."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.dialog.tools import _db
from agentd.dialog.tools._text import normalise_key, phone_key
from agentd.dialog.tools.errors import ToolConfigError
from agentd.dialog.types import ToolError

Row = dict[str, Any]
MAX_CSV_BYTES = 50_000_000


class RecordSource:
    """Rows of one table (SQLite `table`) or one CSV file (header row = field names)."""

    def __init__(self, path: Path | str, table: str | None = None) -> None:
        self.path = Path(path)
        self.is_sqlite = self.path.suffix.lower() in (".sqlite", ".sqlite3", ".db")
        if self.is_sqlite:
            if not table:
                raise ToolConfigError(f"{self.path.name}: a SQLite records file needs `table`")
            self.table: str | None = _checked(table, "table")
        elif self.path.suffix.lower() == ".csv":
            self.table = None
        else:
            raise ToolConfigError(f"{self.path.name}: records must be a .csv or .sqlite file")

    def find(self, field: str, value: str, *, by: str = "key", limit: int = 10) -> list[Row]:
        """Rows whose `field` equals `value` after normalising both sides: `by` "key"
        (letters and digits, spoken digits folded) or "phone" (last digits)."""
        try:
            _db.check_identifier(field, "field")
        except ValueError:
            raise ToolError("bad field name in the tool settings") from None
        wanted = normalise_key(value) if by == "key" else phone_key(value)
        if not wanted:
            return []
        if self.is_sqlite:
            function = "norm_key" if by == "key" else "phone_key"
            with _db.connect(self.path) as conn:
                self._require_column(conn, field)
                rows = conn.execute(
                    f'SELECT * FROM "{self.table}" WHERE {function}("{field}") = ? LIMIT ?',
                    (wanted, limit),
                ).fetchall()
                return [dict(r) for r in rows]
        normalise: Callable[[str], str | None] = normalise_key if by == "key" else phone_key
        rows_out = [r for r in self.rows() if normalise(str(r.get(field) or "")) == wanted]
        return rows_out[:limit]

    def rows(self) -> list[Row]:
        """Every row (identity checks compare each one)."""
        if self.is_sqlite:
            with _db.connect(self.path) as conn:
                return [dict(r) for r in conn.execute(f'SELECT * FROM "{self.table}"')]
        try:
            if self.path.stat().st_size > MAX_CSV_BYTES:
                raise ToolError("the records file is too large")
            with self.path.open(newline="", encoding="utf-8-sig") as handle:
                return [dict(r) for r in csv.DictReader(handle)]
        except (OSError, UnicodeDecodeError, csv.Error):
            raise ToolError("the records file cannot be read") from None

    def _require_column(self, conn: Any, field: str) -> None:
        columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{self.table}")')}
        if not columns:
            raise ToolError(f"the records table {self.table} is missing")
        if field not in columns:
            raise ToolError(f"the records table has no column {field}")


def _checked(name: str, what: str) -> str:
    try:
        return _db.check_identifier(name, what)
    except ValueError as exc:
        raise ToolConfigError(str(exc)) from None
