"""Households: members grouped across rows and files, through a temporary file, into hutong.v1.Household."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from adapters.profile import ProfileError, load_profile, parse_profile
from adapters.run import Reject, adapt, household_to_json
from gateway.domain.identity import make_id_number
from gateway.domain.model import Household, HouseholdRelation, PersonRecord
from hutong.v1 import person_pb2

ADAPTERS = Path(__file__).resolve().parents[3] / "adapters"
HEADER = "编号,户号,姓名,身份证号,区划,关系\n"


def profile_data() -> dict[str, Any]:
    return {
        "source": {"name": "测试", "province": "440000", "format": "csv", "encoding": "utf-8"},
        "record": {
            "record_id": "编号",
            "id_number": "身份证号",
            "name": "姓名",
            "residence_division": "区划",
            "household_id": "户号",
        },
        "household": {"relation": {"from": "关系", "codes": "relation"}},
        "codes": {"relation": {"户主": "head", "配偶": "spouse", "子女": "child"}},
    }


def person(n: int, household: str, relation: str) -> str:
    idn = make_id_number("440106", dt.date(1960 + n, 1 + n % 12, 1 + n % 28), 10 + 2 * n)
    return f"r{n},{household},张{'伟芳'[n % 2]},{idn},440106,{relation}\n"


def run(tmp_path: Path, *files: str) -> tuple[list[PersonRecord], list[Reject], list[Household]]:
    profile = parse_profile(profile_data())
    paths = []
    for i, text in enumerate(files):
        path = tmp_path / f"f{i}.csv"
        path.write_text(HEADER + text, encoding="utf-8")
        paths.append(path)
    records: list[PersonRecord] = []
    rejects: list[Reject] = []
    households: list[Household] = []
    adapt(profile, paths, on_record=records.append, on_reject=rejects.append, on_household=households.append)
    return records, rejects, households


def test_members_are_grouped_across_rows_and_files_in_the_order_met(tmp_path: Path) -> None:
    first = person(1, "H1", "户主") + person(2, "H2", "户主") + person(3, "H1", "配偶")
    second = person(4, "H2", "子女") + person(5, "H1", "子女")
    records, rejects, households = run(tmp_path, first, second)
    assert (len(records), rejects) == (5, [])
    by_id = {h.household_id: h for h in households}
    assert [(m.record_id, m.relation) for m in by_id["H1"].members] == [
        ("r1", HouseholdRelation.HEAD),
        ("r3", HouseholdRelation.SPOUSE),
        ("r5", HouseholdRelation.CHILD),
    ]
    assert [m.record_id for m in by_id["H2"].members] == ["r2", "r4"]
    assert by_id["H1"].residence_division == "440106"
    assert by_id["H1"].version == 1
    message = json_format.Parse(household_to_json(by_id["H1"]), person_pb2.Household())
    assert [m.relation for m in message.members] == [1, 2, 3]


def test_an_unknown_relation_rejects_the_row_and_keeps_it_out_of_the_household(tmp_path: Path) -> None:
    records, rejects, households = run(tmp_path, person(1, "H1", "户主") + person(2, "H1", "表亲"))
    assert [r.record_id for r in records] == ["r1"]
    assert [(p.field, p.reason) for p in rejects[0].problems] == [("household.relation", "CODE_UNKNOWN")]
    assert [m.record_id for m in households[0].members] == ["r1"]


def test_a_missing_relation_is_refused(tmp_path: Path) -> None:
    _, rejects, households = run(tmp_path, person(1, "H1", ""))
    assert [(p.field, p.reason) for p in rejects[0].problems] == [("household.relation", "RELATION_MISSING")]
    assert households == []


def test_without_a_household_callback_nothing_is_grouped(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text(HEADER + person(1, "H1", "户主"), encoding="utf-8")
    summary = adapt(parse_profile(profile_data()), [path], on_record=lambda r: None, on_reject=lambda r: None)
    assert (summary.produced, summary.households) == (1, 0)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["household"].pop("relation"), "household.relation"),
        (lambda d: d["record"].pop("household_id"), "record.household_id"),
        (lambda d: d["household"].update(size="人数"), "household.size"),
        (lambda d: d["household"].update(relation={"from": "关系"}), "household.relation.codes"),
        (lambda d: d["codes"]["relation"].update({"表亲": "cousin"}), "codes.relation.表亲"),
    ],
)
def test_household_profile_mistakes_name_their_key(change: Any, key: str) -> None:
    data = copy.deepcopy(profile_data())
    change(data)
    with pytest.raises(ProfileError) as caught:
        parse_profile(data)
    assert caught.value.field == key


@pytest.mark.parametrize(
    ("name", "sample", "households"),
    [
        ("guangdong-440000", "guangdong-440000.csv", 13),
        ("jiangsu-320000", "jiangsu-320000.xml", 10),
        ("henan-410000", "henan-410000.dbf", 10),
        ("sichuan-510000", "sichuan-510000.xlsx", 10),
    ],
)
def test_samples_with_households(name: str, sample: str, households: int) -> None:
    made: list[Household] = []
    records: list[PersonRecord] = []
    summary = adapt(
        load_profile(ADAPTERS / "profiles" / f"{name}.toml"),
        [ADAPTERS / "samples" / sample],
        on_record=records.append,
        on_reject=lambda r: None,
        on_household=made.append,
    )
    assert summary.households == len(made) == households
    members = [m.record_id for h in made for m in h.members]
    assert sorted(members) == sorted(r.record_id for r in records if r.household_id)
    for household in made:
        json_format.Parse(household_to_json(household), person_pb2.Household())
        assert sum(m.relation == HouseholdRelation.HEAD for m in household.members) <= 1
