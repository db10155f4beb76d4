"""Dates as callers say them, resolved against the call's time (never the clock), and dates
and times phrased for speech.

Numeric dates follow an explicit order per policy locale: "dmy" reads 05/03/1985 as 5 March,
"mdy" as May 3. A reading invalid in that order is rejected, not swapped.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentd.dialog.tools._text import words_to_digits
from agentd.dialog.tools.errors import ToolConfigError
from agentd.dialog.types import ToolError

DateOrder = Literal["dmy", "mdy"]

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
    "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_WEEKDAYS = {
    "monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2,
    "weds": 2, "thursday": 3, "thu": 3, "thur": 3, "thurs": 3, "friday": 4, "fri": 4,
    "saturday": 5, "sat": 5, "sunday": 6, "sun": 6,
}  # fmt: skip
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FILLER = {"on", "the", "of", "for", "at", "please", "coming", "day", "date", "a", "um", "uh"}


def zone(name: str | tzinfo) -> tzinfo:
    """A time zone from its IANA name (the policy's `agent.timezone`)."""
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ToolConfigError(f"unknown time zone {name!r}") from None


def local_now(now_iso: str, tz: tzinfo) -> datetime:
    """The call's time (ISO 8601 with offset) in the policy's time zone."""
    try:
        now = datetime.fromisoformat(now_iso)
    except (TypeError, ValueError):
        raise ToolError("the call time is not an ISO timestamp") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=tz)
    return now.astimezone(tz)


def parse_timestamp(text: str, tz: tzinfo) -> datetime | None:
    """A stored ISO 8601 timestamp; one without an offset is local time in `tz`."""
    try:
        value = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=tz)
    return value.astimezone(tz)


def _clean(text: str) -> list[str]:
    text = words_to_digits(text.lower())
    text = re.sub(r"(\d)\s*(st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"(?<=\d)\s*([/.\-])\s*(?=\d)", r"\1", text)  # "05 / 03" -> "05/03"
    return [t for t in re.findall(r"[a-z]+|[\d/.\-]+", text) if t not in _FILLER]


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _year(value: int, digits: int, today: date | None, past: bool) -> int:
    if digits > 2:
        return value
    base = today.year if today is not None else 2000
    century = base - base % 100
    if past:  # a birth year: "85" is 1985, "05" is 2005 only if that is not in the future
        return century + value if century + value <= base else century - 100 + value
    return century + value


def parse_date(
    text: str,
    *,
    order: DateOrder = "dmy",
    today: date | None = None,
    past: bool = True,
    require_year: bool = True,
) -> date | None:
    """A calendar date from spoken or typed text ("3rd of May 1985", "05/03/1985",
    "May 3, 1985", "1985-05-03", "the third of may nineteen eighty five").

    Without a year (and `require_year` False) it is the next such date on or after `today`.
    `past` picks the century of a two-digit year (birth dates are in the past)."""
    if not isinstance(text, str):
        return None
    iso = re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", text)
    if iso:
        return _make(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
    tokens = _clean(text)
    month: int | None = None
    numbers: list[str] = []
    for token in tokens:
        if token in _MONTHS and month is None:
            month = _MONTHS[token]
        elif token[0].isdigit():
            numbers.extend(p for p in re.split(r"[/.\-]", token) if p)
        elif token in _WEEKDAYS:
            continue  # "Friday the 14th": the weekday is redundant
        else:
            return None  # unknown words: not a date we understand
    day: int | None
    year_text: str | None
    if month is not None:
        if not 1 <= len(numbers) <= 2:
            return None
        day_text = numbers[0]
        if len(day_text) > 2:
            return None
        day = int(day_text)
        year_text = numbers[1] if len(numbers) == 2 else None
    else:
        if len(numbers) not in (2, 3):
            return None
        if len(numbers[0]) == 4 and len(numbers) == 3:  # 1985/05/03
            year_text, month, day = numbers[0], int(numbers[1]), int(numbers[2])
        else:
            first, second = int(numbers[0]), int(numbers[1])
            day, month = (first, second) if order == "dmy" else (second, first)
            year_text = numbers[2] if len(numbers) == 3 else None
    if year_text is None:
        if require_year or today is None:
            return None
        candidate = _make(today.year, month, day)
        if candidate is None and month == 2 and day == 29:
            candidate = _make(today.year + (4 - today.year % 4), 2, 29)
        if candidate is not None and candidate < today:
            candidate = _make(today.year + 1, month, day)
        return candidate
    if len(year_text) not in (2, 4):
        return None
    return _make(_year(int(year_text), len(year_text), today, past), month, day)


def resolve_day(text: str, today: date, *, order: DateOrder = "dmy") -> date | None:
    """A day the caller wants, relative to `today`: "today", "tomorrow", "the day after
    tomorrow", "in 3 days", "friday" (the next Friday after today), "this friday" (this
    week's, or the next one if it has passed), "next friday" / "friday next week" (the Friday
    of next week, Monday to Sunday), "next week" (its Monday), or a date ("the 14th",
    "14 March", "2025-03-14"; without a year the next such date)."""
    if not isinstance(text, str):
        return None
    iso = re.search(r"\b(\d{4})-(\d{2})-(\d{2})", text)
    if iso:
        return _make(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
    tokens = _clean(text)
    if " ".join(tokens) in ("this morning", "this afternoon", "this evening"):
        return today
    tokens = [t for t in tokens if t not in ("morning", "afternoon", "evening")]
    if any(t[0].isdigit() for t in tokens):  # "Friday the 21st": the number decides
        tokens = [t for t in tokens if t not in _WEEKDAYS]
    phrase = " ".join(tokens)
    if phrase in ("today", "tonight", "now"):
        return today
    if phrase == "tomorrow":
        return today + timedelta(days=1)
    if phrase in ("after tomorrow", "day after tomorrow"):
        return today + timedelta(days=2)
    in_days = re.fullmatch(r"in (\d+) (days?|weeks?)", phrase)
    if in_days:
        count = int(in_days.group(1))
        return today + timedelta(days=count * (7 if in_days.group(2).startswith("week") else 1))
    if phrase == "next week":
        return today + timedelta(days=7 - today.weekday())
    weekday_match = re.fullmatch(r"(this |next )?([a-z]+)( next week)?", phrase)
    if weekday_match and weekday_match.group(2) in _WEEKDAYS:
        target = _WEEKDAYS[weekday_match.group(2)]
        qualifier = (weekday_match.group(1) or "").strip()
        if qualifier == "next" or weekday_match.group(3):
            next_monday = today + timedelta(days=7 - today.weekday())
            return next_monday + timedelta(days=target)
        ahead = (target - today.weekday()) % 7
        if qualifier == "this":
            return today + timedelta(days=ahead)
        return today + timedelta(days=ahead or 7)
    # "the 14th": this month's, or next month's if it has passed
    if len(tokens) == 1 and tokens[0].isdigit() and len(tokens[0]) <= 2:
        day_number = int(tokens[0])
        for months_ahead in range(3):
            month_index = today.month - 1 + months_ahead
            candidate = _make(today.year + month_index // 12, month_index % 12 + 1, day_number)
            if candidate is not None and candidate >= today:
                return candidate
        return None
    return parse_date(text, order=order, today=today, past=False, require_year=False)


def spoken_date(day: date) -> str:
    """ "Tuesday 14 March"."""
    return f"{_DAY_NAMES[day.weekday()]} {day.day} {_MONTH_NAMES[day.month - 1]}"


def spoken_time(moment: time | datetime) -> str:
    """ "2:30 pm", "9 am", "noon"."""
    if moment.hour == 12 and moment.minute == 0:
        return "noon"
    hour = moment.hour % 12 or 12
    suffix = "am" if moment.hour < 12 else "pm"
    if moment.minute:
        return f"{hour}:{moment.minute:02d} {suffix}"
    return f"{hour} {suffix}"


def spoken_datetime(moment: datetime) -> str:
    """ "Tuesday 14 March at 2:30 pm"."""
    return f"{spoken_date(moment.date())} at {spoken_time(moment)}"


def part_of_day_matches(moment: datetime, part: str | None) -> bool:
    """morning: before noon; afternoon: noon to 5 pm; evening: 5 pm on."""
    if not part or part == "any":
        return True
    if part == "morning":
        return moment.hour < 12
    if part == "afternoon":
        return 12 <= moment.hour < 17
    if part == "evening":
        return moment.hour >= 17
    return True
