"""Every shipped profile against its sample file: exact accounting, exactly which rows are refused and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from adapters.profile import load_profile
from adapters.run import Reject, adapt, record_to_json
from gateway.domain.model import PersonRecord
from hutong.v1 import person_pb2

ADAPTERS = Path(__file__).resolve().parents[3] / "adapters"

#: profile → (sample, rows read, records, structure rows, {location: [(field, reason), ...]})
EXPECTED: dict[str, tuple[str, int, int, dict[str, int], dict[str, list[tuple[str, str]]]]] = {
    "guangdong-440000": (
        "guangdong-440000.csv", 25, 18, {"header": 3, "total": 1},
        {
            "line 7": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "line 13": [("residence_division", "PROVINCE_NOT_PERMITTED")],
            "line 15": [("enrollments[0].start_date", "DATE_INVALID")],
            "line 17": [("enrollments[0].program", "CODE_UNKNOWN")],
            "line 19": [("name", "NAME_INVALID"), ("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")],
            "line 28": [("row", "COLUMN_COUNT")],
            "line 29": [("row", "ENCODING_INVALID")],
        },
    ),
    "zhejiang-330000": (
        "zhejiang-330000.dat", 23, 18, {"header": 1, "trailer": 1},
        {
            "line 4": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "line 6": [("enrollments[0].program", "CODE_UNKNOWN")],
            "line 8": [("row", "ENCODING_INVALID")],
            "line 11": [("row", "RECORD_TYPE_UNKNOWN")],
            "line 24": [("row", "LINE_TOO_SHORT")],
        },
    ),
    "beijing-110000": (
        "beijing-110000.jsonl", 19, 13, {},
        {
            "line 2": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "line 4": [("enrollments[0].status", "CODE_UNKNOWN")],
            "line 6": [("enrollments[0].start_date", "DATE_INVALID")],
            "line 8": [("name", "NAME_MISSING")],
            "line 10": [("row", "JSON_INVALID")],
            "line 12": [("row", "JSON_INVALID")],
        },
    ),
    "jiangsu-320000": (
        "jiangsu-320000.xml", 30, 25, {},
        {
            "element 5 (line 48)": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "element 10 (line 100)": [
                ("residence_division", "PROVINCE_NOT_PERMITTED"),
                ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED"),
            ],
            "element 15 (line 154)": [("id_number", "ID_NUMBER_MISSING")],
            "element 23 (line 236)": [("enrollments[0].start_date", "DATE_INVALID")],
            "element 26 (line 275)": [("gender", "GENDER_MISMATCH")],
        },
    ),
    "henan-410000": (
        "henan-410000.dbf", 30, 25, {"deleted": 2},
        {
            "record 5": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "record 11": [
                ("residence_division", "PROVINCE_NOT_PERMITTED"),
                ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED"),
            ],
            "record 19": [("row", "ENCODING_INVALID")],
            "record 24": [("enrollments[0].start_date", "DATE_INVALID")],
            "record 28": [("birth_date", "BIRTH_DATE_MISMATCH")],
        },
    ),
    "sichuan-510000": (
        "sichuan-510000.xlsx", 31, 25, {"header": 2, "total": 1},
        {
            "row 7": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
            "row 12": [
                ("residence_division", "PROVINCE_NOT_PERMITTED"),
                ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED"),
            ],
            "row 15": [("row", "COLUMN_COUNT")],
            "row 18": [("row", "ROW_EMPTY")],
            "row 26": [("enrollments[0].start_date", "DATE_INVALID")],
            "row 30": [("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")],
        },
    ),
}  # fmt: skip


def test_every_shipped_profile_has_a_sample_and_an_expectation() -> None:
    shipped = {p.stem for p in (ADAPTERS / "profiles").glob("*.toml")}
    assert shipped == set(EXPECTED)
    assert len({load_profile(ADAPTERS / "profiles" / f"{name}.toml").format for name in shipped}) == 6


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_is_accounted_for_row_by_row(name: str) -> None:
    sample, rows, produced, structure, rejected = EXPECTED[name]
    records: list[PersonRecord] = []
    rejects: list[Reject] = []
    summary = adapt(
        load_profile(ADAPTERS / "profiles" / f"{name}.toml"),
        [ADAPTERS / "samples" / sample],
        on_record=records.append,
        on_reject=rejects.append,
    )
    (file,) = summary.files
    assert file.failure == ""
    assert (file.rows_read, file.produced, file.rejected) == (rows, produced, len(rejected))
    assert file.rows_read == file.produced + file.rejected
    assert dict(file.structure) == structure
    assert {r.location: [(p.field, p.reason) for p in r.problems] for r in rejects} == rejected
    # Records are unique, in their province, and valid hutong.v1.PersonRecord JSON.
    assert len({r.record_id for r in records}) == len(records)
    for record in records:
        message = json_format.Parse(record_to_json(record), person_pb2.PersonRecord())
        assert message.record_id == record.record_id
        assert len(message.id_number) == 18
        assert message.residence_division[:2] == name.split("-")[1][:2]
    for reject in rejects:
        line = json.loads(reject.to_json())
        assert line["location"] == reject.location
        assert line["errors"]
