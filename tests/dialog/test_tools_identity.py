"""identity.verify against a patients CSV and a SQLite table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentd.dialog.tools.errors import ToolConfigError, ToolRefused
from agentd.dialog.tools.identity import Verify
from agentd.dialog.types import ToolContext

PATIENTS = """patient_id,name,date_of_birth,postcode,phone
P001,Ann Lee,1985-05-03,SW1A 1AA,07700 900123
P002,José García,1990-11-23,M1 1AE,07700 900999
P003,Siobhan O'Neill,1972-01-09,EH1 1YZ,
P004,Ann Leigh,1985-05-03,B1 1AA,
"""


def ctx(call_ref: str = "call-1") -> ToolContext:
    return ToolContext(
        caller_id=None, call_ref=call_ref, now_iso="2025-03-14T10:00:00+00:00", facts={}
    )


@pytest.fixture
def patients(tmp_path: Path) -> Path:
    path = tmp_path / "patients.csv"
    path.write_text(PATIENTS, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "dob"),
    [
        ("Ann Lee", "3rd of May 1985"),
        ("ann lee", "03/05/1985"),
        ("Mrs Ann Lee", "the third of may nineteen eighty five"),
        ("Lee, Ann", "May 3 1985"),
    ],
)
def test_verified_by_name_and_birth_date(patients: Path, name: str, dob: str) -> None:
    result = Verify("verify_identity", patients).run({"name": name, "date_of_birth": dob}, ctx())
    assert result == {
        "verified": True,
        "patient_id": "P001",
        "record_id": "P001",
        "name": "Ann Lee",
    }


def test_fuzzy_names_accents_and_asr_slips(patients: Path) -> None:
    verify = Verify("verify_identity", patients)
    assert (
        verify.run({"name": "Jose Garcia", "date_of_birth": "23/11/1990"}, ctx())["patient_id"]
        == "P002"
    )
    assert (
        verify.run({"name": "Shivon O'Neill", "date_of_birth": "9 January 1972"}, ctx("c2"))[
            "verified"
        ]
        is False
    )
    assert (
        verify.run({"name": "Siobhan O Neil", "date_of_birth": "9 January 1972"}, ctx("c3"))[
            "patient_id"
        ]
        == "P003"
    )
    # two patients share a birthday: the closer name wins, never the other one
    assert (
        verify.run({"name": "Ann Leigh", "date_of_birth": "3 May 1985"}, ctx("c4"))["patient_id"]
        == "P004"
    )


def test_failure_leaks_nothing(patients: Path) -> None:
    verify = Verify("verify_identity", patients)
    wrong_dob = verify.run({"name": "Ann Lee", "date_of_birth": "4 May 1985"}, ctx())
    wrong_name = verify.run({"name": "Zed Zulu", "date_of_birth": "3 May 1985"}, ctx("c2"))
    assert wrong_dob == wrong_name == {"verified": False}


def test_date_order_is_explicit(patients: Path) -> None:
    us = Verify("verify_identity", patients, date_order="mdy")
    assert us.run({"name": "Ann Lee", "date_of_birth": "05/03/1985"}, ctx())["verified"] is True
    assert (
        us.run({"name": "Ann Lee", "date_of_birth": "03/05/1985"}, ctx("c2"))["verified"] is False
    )
    # a date that is not valid in that order is reported as not understood (no attempt used)
    unclear = us.run({"name": "Ann Lee", "date_of_birth": "23/11/1990"}, ctx("c3"))
    assert unclear["verified"] is False and "not understood" in unclear["reason"]


def test_name_and_postcode(patients: Path) -> None:
    verify = Verify("verify_identity", patients, match=["name", "postcode"])
    assert verify.parameters["required"] == ["name", "postcode"]
    assert verify.run({"name": "Ann Lee", "postcode": "sw1a 1aa"}, ctx())["verified"] is True
    spoken = verify.run({"name": "José García", "postcode": "M one one A E"}, ctx())
    assert spoken["patient_id"] == "P002"
    assert verify.run({"name": "Ann Lee", "postcode": "B1 1AA"}, ctx())["verified"] is False


def test_attempts_are_limited_per_call(patients: Path) -> None:
    verify = Verify("verify_identity", patients, max_attempts=2)
    for _ in range(2):
        assert (
            verify.run({"name": "Ann Lee", "date_of_birth": "1 Jan 1980"}, ctx())["verified"]
            is False
        )
    with pytest.raises(ToolRefused, match="too many"):
        verify.run({"name": "Ann Lee", "date_of_birth": "3 May 1985"}, ctx())
    # another call is unaffected
    assert verify.run({"name": "Ann Lee", "date_of_birth": "3 May 1985"}, ctx("other"))["verified"]


def test_sqlite_records_and_missing_arguments(tmp_path: Path) -> None:
    path = tmp_path / "people.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (member_no TEXT, full_name TEXT, dob TEXT)")
    conn.execute("INSERT INTO people VALUES ('M7', 'Kim Park', '2001-02-03')")
    conn.commit()
    conn.close()
    verify = Verify("check", path, table="people", match=["full_name", "dob"], id_field="member_no")
    result = verify.run({"full_name": "kim park", "dob": "3rd February 2001"}, ctx())
    assert result["member_no"] == "M7" and result["record_id"] == "M7"
    with pytest.raises(ToolRefused, match="missing"):
        verify.run({"full_name": "kim park"}, ctx())
    with pytest.raises(ToolConfigError):
        Verify("check", path, table="people", match=["dob"])
