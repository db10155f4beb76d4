"""`identity.verify`: check who the caller is against a records file (CSV or SQLite) by name
plus a second fact (date of birth, postcode, ...). Names match fuzzily (case, accents, word
order, small ASR slips); dates are parsed from many spoken forms in the policy's day/month
order. A failure says only "not verified" (never which field was wrong or any record data).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentd.dialog.tools._args import text_arg
from agentd.dialog.tools._sources import RecordSource, Row, _checked
from agentd.dialog.tools._text import name_similarity, normalise_key, phone_key
from agentd.dialog.tools.dates import DateOrder, local_now, parse_date, zone
from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.types import JsonDict, ToolContext

NAME_THRESHOLD = 0.85
_TRACKED_CALLS = 1000


def _kind(field: str) -> str:
    lowered = field.lower()
    if lowered == "name" or lowered.endswith("name"):
        return "name"
    if "date" in lowered or lowered in ("dob", "birthday"):
        return "date"
    if lowered in ("postcode", "post_code", "zip", "zip_code", "postal_code"):
        return "postcode"
    if "phone" in lowered:
        return "phone"
    return "text"


class Verify:
    builtin = "identity.verify"

    def __init__(
        self,
        name: str,
        records: Path | str,
        *,
        match: Sequence[str] = ("name", "date_of_birth"),
        table: str | None = None,
        id_field: str = "patient_id",
        date_order: DateOrder = "dmy",
        name_threshold: float = NAME_THRESHOLD,
        max_attempts: int = 3,
        timezone: Any = "UTC",
        description: str | None = None,
        confirm: bool = False,
    ) -> None:
        if len(match) < 2 or not any(_kind(f) == "name" for f in match):
            raise ToolConfigError(f"{name}: match needs a name and at least one more field")
        self.name = name
        self.source = RecordSource(records, table)
        self.match = tuple(_checked(f, "match field") for f in match)
        self.id_field = _checked(id_field, "id_field")
        self.date_order: DateOrder = date_order
        self.name_threshold = name_threshold
        self.max_attempts = max_attempts
        self.tz = zone(timezone)
        self.confirm = confirm
        said = " and ".join(f.replace("_", " ") for f in self.match)
        self.description = description or f"Verify the caller's identity by {said}."
        self.parameters: JsonDict = {
            "type": "object",
            "properties": {
                f: {"type": "string", "description": f"The caller's {f.replace('_', ' ')} as said."}
                for f in self.match
            },
            "required": list(self.match),
        }
        # Failed attempts per call, so a caller cannot try date after date.
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, arguments: JsonDict, context: ToolContext) -> JsonDict:
        arguments = arguments or {}
        if self._failure_count(context.call_ref) >= self.max_attempts:
            raise ToolRefused("too many failed identity checks on this call")
        said = {f: text_arg(arguments, f, required=True) for f in self.match}
        today = local_now(context.now_iso, self.tz).date()
        wanted: dict[str, Any] = {}
        for field, value in said.items():
            assert value is not None
            kind = _kind(field)
            if kind == "date":
                parsed = parse_date(value, order=self.date_order, today=today, past=True)
                if parsed is None:
                    # Not an attempt: the agent should ask again, in another form.
                    return {"verified": False, "reason": f"{field} not understood, ask again"}
                wanted[field] = parsed
            else:
                wanted[field] = value
        best: list[tuple[float, Row]] = []
        for row in self.source.rows():
            score = self._score(row, wanted)
            if score is not None:
                best.append((score, row))
        best.sort(key=lambda pair: -pair[0])
        ids = {str(r.get(self.id_field)) for s, r in best if best and s == best[0][0]}
        if not best or len(ids) != 1 or not str(best[0][1].get(self.id_field) or "").strip():
            self._record_failure(context.call_ref)
            return {"verified": False}
        row = best[0][1]
        return {
            "verified": True,
            self.id_field: str(row[self.id_field]),
            "record_id": str(row[self.id_field]),
            "name": str(row.get(next(f for f in self.match if _kind(f) == "name")) or ""),
        }

    def _score(self, row: Row, wanted: dict[str, Any]) -> float | None:
        """The name similarity if every field matches, else None."""
        score = 1.0
        for field, value in wanted.items():
            stored = row.get(field)
            if stored is None or str(stored).strip() == "":
                return None
            kind = _kind(field)
            if kind == "name":
                similarity = name_similarity(value, str(stored))
                if similarity < self.name_threshold:
                    return None
                score = min(score, similarity)
            elif kind == "date":
                # Stored dates are ISO; other stored forms follow the policy's order.
                if parse_date(str(stored), order=self.date_order, past=True) != value:
                    return None
            elif kind == "postcode":
                if normalise_key(str(stored)) != normalise_key(value):
                    return None
            elif kind == "phone":
                key = phone_key(value)
                if key is None or phone_key(str(stored)) != key:
                    return None
            elif str(stored).strip().casefold() != value.strip().casefold():
                return None
        return score

    def _failure_count(self, call_ref: str) -> int:
        with self._lock:
            return self._failures.get(call_ref, 0)

    def _record_failure(self, call_ref: str) -> None:
        with self._lock:
            self._failures[call_ref] = self._failures.get(call_ref, 0) + 1
            self._failures.move_to_end(call_ref)
            while len(self._failures) > _TRACKED_CALLS:
                self._failures.popitem(last=False)
