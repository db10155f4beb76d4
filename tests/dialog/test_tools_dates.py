"""Spoken numbers, keys, phones, names and dates as the tools read them."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from agentd.dialog.tools._text import name_similarity, normalise_key, phone_key, words_to_digits
from agentd.dialog.tools.dates import (
    local_now,
    parse_date,
    resolve_day,
    spoken_date,
    spoken_datetime,
)
from agentd.dialog.types import ToolError

FRIDAY = date(2025, 3, 14)
SUNDAY = date(2025, 3, 16)


@pytest.mark.parametrize(
    ("said", "digits"),
    [
        ("the third of May nineteen eighty five", "the 3 of May 1985"),
        ("two thousand and three", "2003"),
        ("thirty-first", "31"),
        ("nineteen oh five", "1905"),
        ("double seven four", "7 7 4"),
        ("A B one two three", "A B 1 2 3"),
    ],
)
def test_spoken_numbers(said: str, digits: str) -> None:
    assert words_to_digits(said) == digits


def test_keys_and_phones_normalise() -> None:
    assert {normalise_key(k) for k in ("A B 1 2 3", "ab-123", "a b one two three")} == {"AB123"}
    same = {"+44 7700 900123", "07700 900123", "0044 7700 900 123", "sip:+447700900123@pbx"}
    assert {phone_key(p) for p in same} == {"700900123"}
    assert phone_key("101") is None and phone_key(None) is None
    assert phone_key("07700 900124") != phone_key("07700 900123")


def test_name_similarity() -> None:
    assert name_similarity("josé garcía", "Jose Garcia") == 1.0
    assert name_similarity("Smith, John", "john smith") == 1.0
    assert name_similarity("Mrs Jane Doe", "jane doe") == 1.0
    assert name_similarity("Jon Smith", "John Smith") >= 0.85
    assert name_similarity("Jane Doe", "John Smith") < 0.5
    assert name_similarity("", "John Smith") == 0.0


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("today", FRIDAY),
        ("tomorrow", date(2025, 3, 15)),
        ("the day after tomorrow", date(2025, 3, 16)),
        ("friday", date(2025, 3, 21)),  # a bare weekday is the next one after today
        ("this friday", FRIDAY),
        ("monday", date(2025, 3, 17)),  # across the week boundary
        ("next monday", date(2025, 3, 17)),
        ("next friday", date(2025, 3, 21)),
        ("Monday next week", date(2025, 3, 17)),
        ("next week", date(2025, 3, 17)),
        ("in 3 days", date(2025, 3, 17)),
        ("tomorrow morning", date(2025, 3, 15)),
        ("the 14th", FRIDAY),
        ("the 3rd", date(2025, 4, 3)),  # passed this month: next month's
        ("Friday the 21st", date(2025, 3, 21)),
        ("on the 2nd of April", date(2025, 4, 2)),
        ("March 20th", date(2025, 3, 20)),
        ("1st of March", date(2026, 3, 1)),  # passed this year: next year's
        ("20/03", date(2025, 3, 20)),
        ("2025-04-01", date(2025, 4, 1)),
        ("thirty-first of December", date(2025, 12, 31)),
    ],
)
def test_resolve_day_from_friday(said: str, expected: date) -> None:
    assert resolve_day(said, FRIDAY) == expected


def test_resolve_day_next_weekday_from_sunday_and_year_end() -> None:
    # Sunday is the last day of the week, so "next monday" is tomorrow, like "monday".
    assert resolve_day("next monday", SUNDAY) == date(2025, 3, 17)
    assert resolve_day("next tuesday", date(2025, 3, 17)) == date(2025, 3, 25)
    assert resolve_day("tuesday", date(2025, 3, 17)) == date(2025, 3, 18)
    assert resolve_day("friday", date(2025, 12, 29)) == date(2026, 1, 2)
    assert resolve_day("tomorrow", date(2025, 12, 31)) == date(2026, 1, 1)
    assert resolve_day("03/20", FRIDAY, order="mdy") == date(2025, 3, 20)


@pytest.mark.parametrize(
    "said", ["blah", "", "someday soon", "32nd of March", "31/02", "friday fish"]
)
def test_resolve_day_rejects_nonsense(said: str) -> None:
    assert resolve_day(said, FRIDAY) is None


@pytest.mark.parametrize(
    "said",
    [
        "3rd of May 1985",
        "May 3, 1985",
        "1985-05-03",
        "the third of may nineteen eighty five",
        "3 May 85",
        "Friday 3rd May 1985",
    ],
)
def test_birth_dates_any_order(said: str) -> None:
    assert parse_date(said, today=FRIDAY) == date(1985, 5, 3)
    assert parse_date(said, order="mdy", today=FRIDAY) == date(1985, 5, 3)


def test_numeric_birth_dates_follow_the_locale_order() -> None:
    assert parse_date("03/05/1985", order="dmy") == date(1985, 5, 3)
    assert parse_date("05/03/1985", order="mdy") == date(1985, 5, 3)
    assert parse_date("03.05.85", order="dmy", today=FRIDAY) == date(1985, 5, 3)
    assert parse_date("3 5 1985", order="dmy") == date(1985, 5, 3)
    # invalid in the configured order: rejected, never silently swapped
    assert parse_date("13/05/1985", order="mdy") is None
    assert parse_date("31/02/1985") is None
    # two-digit years of a birth date are in the past
    assert parse_date("1/1/05", today=FRIDAY) == date(2005, 1, 1)
    assert parse_date("1/1/30", today=FRIDAY) == date(1930, 1, 1)
    assert parse_date("3 May") is None  # a birth date needs its year
    assert parse_date(None) is None  # type: ignore[arg-type]


def test_spoken_forms_and_call_time() -> None:
    london = ZoneInfo("Europe/London")
    assert spoken_date(FRIDAY) == "Friday 14 March"
    assert spoken_datetime(datetime(2025, 3, 18, 14, 30)) == "Tuesday 18 March at 2:30 pm"
    assert spoken_datetime(datetime(2025, 3, 18, 9, 0)) == "Tuesday 18 March at 9 am"
    assert spoken_datetime(datetime(2025, 3, 18, 12, 0)) == "Tuesday 18 March at noon"
    # The call's day is the business zone's: 23:30 UTC is the next day in BST, not in GMT.
    assert local_now("2025-03-14T23:30:00+00:00", london).date() == FRIDAY
    assert local_now("2025-07-14T23:30:00+00:00", london).date() == date(2025, 7, 15)
    with pytest.raises(ToolError):
        local_now("yesterday", london)
