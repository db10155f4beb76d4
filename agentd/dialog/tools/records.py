"""Record built-ins: look a row up by a key the caller says (an order number) or by caller
ID, and change a few allowed fields of it when a configured condition holds."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from agentd.dialog.tools import _db
from agentd.dialog.tools._args import text_arg
from agentd.dialog.tools._sources import RecordSource, Row, _checked
from agentd.dialog.tools.dates import spoken_date, spoken_datetime
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.types import JsonDict, ToolContext, ToolError

MAX_MATCHES = 3
MAX_VALUE_CHARS = 200


def _spoken_value(value: Any) -> str | None:
    """A phone-friendly reading of an ISO date or datetime value, else None."""
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        if len(value) == 10:
            return spoken_date(date.fromisoformat(value))
        return spoken_datetime(datetime.fromisoformat(value))
    except ValueError:
        return None


class _RecordTool:
    def __init__(
        self,
        name: str,
        records: Path | str,
        *,
        table: str | None = None,
        key: str | None = None,
        caller_id_field: str | None = None,
        fields: Sequence[str] | None = None,
        description: str | None = None,
        confirm: bool = False,
    ) -> None:
        if key is None and caller_id_field is None:
            raise ToolConfigError(f"{name}: set `key` and/or `caller_id_field`")
        self.name = name
        self.source = RecordSource(records, table)
        self.key = _checked(key, "key") if key else None
        self.caller_id_field = (
            _checked(caller_id_field, "caller_id_field") if caller_id_field else None
        )
        self.fields = tuple(_checked(f, "field") for f in fields) if fields else None
        self.confirm = confirm
        self.description = description or ""
        self.parameters: JsonDict = {"type": "object", "properties": {}}
        if self.key:
            said = self.key.replace("_", " ")
            self.parameters["properties"][self.key] = {
                "type": "string",
                "description": f"The {said} exactly as the caller said it.",
            }
            if self.caller_id_field is None:
                self.parameters["required"] = [self.key]

    def _matches(self, arguments: JsonDict, context: ToolContext) -> tuple[str, list[Row]]:
        """(how it was found, the rows): by the spoken key when given, else by caller ID."""
        said = text_arg(arguments, self.key) if self.key else None
        if said is not None:
            assert self.key is not None
            return self.key, self.source.find(self.key, said, by="key", limit=MAX_MATCHES + 1)
        if self.caller_id_field and context.caller_id:
            rows = self.source.find(
                self.caller_id_field, context.caller_id, by="phone", limit=MAX_MATCHES + 1
            )
            return "caller_id", rows
        what = self.key.replace("_", " ") if self.key else "details"
        raise ToolRefused(f"no caller ID: ask the caller for their {what}")

    def _public(self, row: Row) -> JsonDict:
        names = self.fields or tuple(k for k in row if not k.startswith("_"))
        out: JsonDict = {}
        for name in names:
            if name not in row:
                continue
            value = row[name]
            if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
                value = value[:MAX_VALUE_CHARS]
            out[name] = value
            spoken = _spoken_value(value)
            if spoken:
                out[f"{name}_spoken"] = spoken
        return out


class Lookup(_RecordTool):
    """`records.lookup`: {"found", "count", "records": [selected fields...]}."""

    builtin = "records.lookup"

    def __init__(self, name: str, records: Path | str, **settings: Any) -> None:
        super().__init__(name, records, **settings)
        if not self.description:
            self.description = "Look up the caller's record" + (
                f" by {self.key.replace('_', ' ')} or caller ID." if self.key else " by caller ID."
            )

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        by, rows = self._matches(arguments or {}, context)
        result: JsonDict = {
            "found": bool(rows),
            "by": by,
            "records": [self._public(r) for r in rows[:MAX_MATCHES]],
        }
        if len(rows) > MAX_MATCHES:
            result["more"] = True  # only the first few are shown
        return result


_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


class Condition:
    """A one-comparison guard such as `shipped == 0` or `status != 'delivered'`."""

    def __init__(self, text: str) -> None:
        match = _CONDITION.match(text or "")
        if not match:
            raise ToolConfigError(f"condition {text!r}: expected `field OP value`")
        self.text = text.strip()
        self.field, self.op = match.group(1), match.group(2)
        self.value = self._literal(match.group(3))

    @staticmethod
    def _literal(raw: str) -> Any:
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return raw[1:-1]
        lowered = raw.lower()
        if lowered in ("null", "none"):
            return None
        if lowered in ("true", "false"):
            return int(lowered == "true")
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            return float(raw)
        except ValueError:
            raise ToolConfigError(f"condition value {raw!r}: quote text values") from None

    def refusal(self, row: Row) -> str:
        """Why a row fails, in words the agent can pass on ("shipped is 1")."""
        return f"not allowed: {self.field} is {row.get(self.field)!r} (needs {self.text})"

    def holds(self, row: Row) -> bool:
        if self.field not in row:
            raise ToolError(f"the records have no field {self.field}")
        actual = row[self.field]
        expected = self.value
        if isinstance(expected, (int, float)) and isinstance(actual, str):
            try:
                actual = float(actual.strip())
            except ValueError:
                return self.op == "!="
        if self.op in ("==", "!="):
            equal = actual == expected if expected is not None else actual in (None, "")
            return equal if self.op == "==" else not equal
        if actual is None or expected is None:
            return False
        try:
            if self.op == "<":
                return bool(actual < expected)
            if self.op == "<=":
                return bool(actual <= expected)
            if self.op == ">":
                return bool(actual > expected)
            return bool(actual >= expected)
        except TypeError:
            return False


class Update(_RecordTool):
    """`records.update`: change allowed fields of one row (SQLite only), if `condition`
    holds for it; the check and the write happen under one write lock."""

    builtin = "records.update"

    def __init__(
        self,
        name: str,
        records: Path | str,
        *,
        fields: Sequence[str] | None = None,
        condition: str | None = None,
        refusal: str | None = None,
        confirm: bool = True,
        **settings: Any,
    ) -> None:
        if not fields:
            raise ToolConfigError(f"{name}: records.update needs `fields` it may change")
        super().__init__(name, records, fields=fields, confirm=confirm, **settings)
        if not self.source.is_sqlite:
            raise ToolConfigError(f"{name}: records.update needs a SQLite table, not a CSV")
        self.condition = Condition(condition) if condition else None
        self.refusal = refusal
        assert self.fields is not None
        for field in self.fields:
            self.parameters["properties"][field] = {
                "type": "string",
                "description": f"The new {field.replace('_', ' ')}.",
            }
        if not self.description:
            self.description = f"Change the caller's {', '.join(self.fields)}."
        self.parameters = copy.deepcopy(self.parameters)

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        arguments = arguments or {}
        assert self.fields is not None and self.source.table is not None
        changes = {f: text_arg(arguments, f) for f in self.fields}
        changes = {f: v for f, v in changes.items() if v is not None}
        if not changes:
            raise ToolRefused(f"nothing to change: give {' or '.join(self.fields)}")
        by, rows = self._matches(arguments, context)
        if not rows:
            raise ToolRefused("no matching record")
        if len(rows) > 1:
            what = self.key.replace("_", " ") if self.key else "details"
            raise ToolRefused(f"several records match: ask for the {what}")
        table = self.source.table
        with _db.connect(self.source.path) as conn, _db.write_transaction(conn):
            # Read again under the write lock: the row (and the condition) may have changed.
            match_field = self.key if by == self.key else self.caller_id_field
            assert match_field is not None
            current = conn.execute(
                f'SELECT rowid AS _rowid, * FROM "{table}" WHERE "{match_field}" IS ?',
                (rows[0][match_field],),
            ).fetchall()
            if len(current) != 1:
                raise ToolRefused("the record changed meanwhile; look it up again")
            row = dict(current[0])
            if self.condition is not None and not self.condition.holds(row):
                raise ToolRefused(self.refusal or self.condition.refusal(row))
            missing = [f for f in changes if f not in row]
            if missing:
                raise ToolError(f"the records have no field {missing[0]}")
            assignments = ", ".join(f'"{f}" = ?' for f in changes)
            conn.execute(
                f'UPDATE "{table}" SET {assignments} WHERE rowid = ?',
                (*changes.values(), row["_rowid"]),
            )
        result: JsonDict = {"updated": True, "changed": changes}
        if self.key and self.key in row:
            result[self.key] = row[self.key]
        return result


RECORD_TOOLS: dict[str, type[_RecordTool]] = {Lookup.builtin: Lookup, Update.builtin: Update}
