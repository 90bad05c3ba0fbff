"""Tests of gateway.demo.population: the synthetic low-income population."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import itertools
import os
import subprocess
import sys
from typing import Any

import pytest

from gateway.demo.population import (
    BAD_RECORD_KINDS,
    Population,
    PopulationSpec,
    batches,
    generate_population,
    iter_province_records,
)
from gateway.domain.divisions import is_known_division
from gateway.domain.identity import Gender, is_valid_id_number, parse_id_number
from gateway.domain.protection import FieldSealer, PersonKeyer, generate_key_material
from gateway.domain.records import RecordPreparer
from gateway.errors import HutongError
from gateway.hub.convert import content_hash, record_from_proto
from hutong.v1 import person_pb2

PROVINCES = ("440000", "410000", "510000")
SPEC = PopulationSpec(provinces=PROVINCES, persons_per_province=3000, bad_share=0.01)
AS_OF = SPEC.as_of
DIBAO = person_pb2.PROGRAM_DIBAO
ACTIVE = person_pb2.ENROLLMENT_STATUS_ACTIVE
MAIN_PROGRAMS = {
    person_pb2.PROGRAM_DIBAO,
    person_pb2.PROGRAM_EXTREME_POVERTY,
    person_pb2.PROGRAM_DIBAO_MARGINAL,
    person_pb2.PROGRAM_RIGID_EXPENDITURE,
}


@pytest.fixture(scope="module")
def population() -> Population:
    return generate_population(SPEC)


def all_records(population: Population) -> list[tuple[str, person_pb2.PersonRecord]]:
    return [(province, r) for province, records in population.by_province.items() for r in records]


def good_records(population: Population) -> list[tuple[str, person_pb2.PersonRecord]]:
    return [(p, r) for p, r in all_records(population) if r.record_id not in population.bad_record_ids]


def to_date(value: person_pb2.Date) -> dt.date:
    return dt.date(value.year, value.month, value.day)


def updated_at(record: person_pb2.PersonRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.updated_at.seconds, dt.UTC)


# --- Determinism and shape -------------------------------------------------------------------


def test_the_same_spec_gives_the_same_population(population: Population) -> None:
    again = generate_population(SPEC)
    assert again.by_province == population.by_province
    assert again.movers == population.movers
    assert again.bad_record_ids == population.bad_record_ids


_DIGEST_SCRIPT = """
import hashlib
from gateway.demo.population import PopulationSpec, iter_province_records
spec = PopulationSpec(provinces=("440000", "650000"), persons_per_province=700)
digest = hashlib.blake2b()
for province in spec.provinces:
    for record in iter_province_records(spec, province):
        digest.update(record.SerializeToString(deterministic=True))
print(digest.hexdigest())
"""


def test_the_same_spec_gives_the_same_records_in_another_process() -> None:
    spec = PopulationSpec(provinces=("440000", "650000"), persons_per_province=700)
    digest = hashlib.blake2b()
    for province in spec.provinces:
        for record in iter_province_records(spec, province):
            digest.update(record.SerializeToString(deterministic=True))
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == digest.hexdigest()


def test_another_seed_gives_another_population(population: Population) -> None:
    other = generate_population(dataclasses.replace(SPEC, seed=SPEC.seed + 1))
    ids = {r.id_number for _, r in all_records(population)}
    other_ids = {r.id_number for _, r in all_records(other)}
    assert len(ids & other_ids) < len(ids) // 10


def test_iter_province_records_yields_what_generate_population_holds(population: Population) -> None:
    for province in PROVINCES:
        assert list(iter_province_records(SPEC, province)) == population.by_province[province]


def test_iter_province_records_refuses_a_province_outside_the_spec() -> None:
    with pytest.raises(ValueError, match="not a province of the spec"):
        iter_province_records(SPEC, "110000")


def test_each_province_exports_its_persons_plus_the_movers_who_came(population: Population) -> None:
    movers = set(population.movers)
    incoming = 0
    for province, records in population.by_province.items():
        own = [r for r in records if r.id_number[:2] == province[:2]]
        arrived = [r for r in records if r.id_number[:2] != province[:2]]
        assert len(own) == SPEC.persons_per_province
        assert all(r.id_number in movers for r in arrived)
        assert records[: len(own)] == own  # movers' second records come last
        incoming += len(arrived)
    assert incoming == len(population.movers)
    assert population.record_count == SPEC.total_persons + len(population.movers)


def test_record_ids_are_unique_and_numbered_by_province(population: Population) -> None:
    for province, records in population.by_province.items():
        expected = [f"{province[:2]}-{n:09d}" for n in range(1, len(records) + 1)]
        assert [r.record_id for r in records] == expected
        assert all(r.version == 1 for r in records)


def test_households_hold_one_to_five_persons_of_one_county(population: Population) -> None:
    members: dict[str, list[person_pb2.PersonRecord]] = collections.defaultdict(list)
    for province, r in good_records(population):
        assert r.household_id.startswith(f"{province[:2]}-H")
        members[r.household_id].append(r)
    sizes = collections.Counter(len(m) for m in members.values())
    assert set(sizes) == {1, 2, 3, 4, 5}
    assert all(len({r.residence_division for r in m}) == 1 for m in members.values())


def test_id_numbers_are_shared_only_by_movers(population: Population) -> None:
    counts = collections.Counter(r.id_number for _, r in all_records(population))
    shared = {number for number, n in counts.items() if n > 1}
    assert shared == set(population.movers)
    assert max(counts.values()) == 2


# --- Identity and divisions ------------------------------------------------------------------


def test_every_good_record_has_a_valid_id_number_agreeing_with_gender_and_birth_date(
    population: Population,
) -> None:
    unset_gender = unset_birth = 0
    for _, r in good_records(population):
        number = parse_id_number(r.id_number, today=AS_OF)
        if r.gender:
            assert r.gender == int(number.gender)
        else:
            unset_gender += 1
        if r.HasField("birth_date"):
            assert to_date(r.birth_date) == number.birth_date
        else:
            unset_birth += 1
        assert dt.date(1930, 1, 1) <= number.birth_date <= dt.date(2024, 12, 31)
    # Provinces sometimes leave them out, but most records carry both.
    assert unset_gender + unset_birth < len(good_records(population)) // 4


def test_id_numbers_are_issued_in_a_county_of_the_home_province(population: Population) -> None:
    movers = set(population.movers)
    for province, r in good_records(population):
        assert is_known_division(r.id_number[:6])
        if r.id_number not in movers:
            assert r.id_number[:2] == province[:2]


def test_residence_and_granting_divisions_are_known_counties_of_the_writing_province(
    population: Population,
) -> None:
    for province, r in good_records(population):
        assert r.residence_division[:2] == province[:2]
        assert r.residence_division[4:] != "00"
        assert is_known_division(r.residence_division)
        for e in r.enrollments:
            assert e.granting_division == r.residence_division
        if r.hukou_division:
            assert is_known_division(r.hukou_division)


def test_ages_are_skewed_to_the_old_and_the_young(population: Population) -> None:
    ages = [AS_OF.year - int(r.id_number[6:10]) for _, r in all_records(population)]
    elderly = sum(1 for a in ages if a >= 60) / len(ages)
    children = sum(1 for a in ages if a < 18) / len(ages)
    assert elderly > 0.3
    assert children > 0.1


def test_names_are_chinese_names_with_dotted_names_being_rare_outside_xinjiang(
    population: Population,
) -> None:
    names = [r.name for _, r in good_records(population)]
    assert all(2 <= len(name) <= 12 and name.isprintable() for name in names)
    assert collections.Counter(name[0] for name in names).most_common(1)[0][0] in "王李张刘陈"
    dotted = sum(1 for name in names if "·" in name) / len(names)
    assert 0.002 < dotted < 0.03
    assert any(name.startswith(("欧阳", "上官", "司马", "诸葛")) for name in names)


def test_xinjiang_and_tibet_have_their_own_names() -> None:
    spec = PopulationSpec(provinces=("650000", "540000"), persons_per_province=2000)
    population = generate_population(spec)
    uyghur = [r.name for r in population.by_province["650000"] if "·" in r.name]
    assert len(uyghur) > 400
    assert all(len(part) >= 2 for name in uyghur for part in name.split("·"))
    tibetan_first = ("扎西", "次仁", "格桑", "达瓦", "尼玛", "普布", "边巴", "索朗", "白玛", "洛桑")
    tibetan = [r.name for r in population.by_province["540000"]]
    assert sum(1 for name in tibetan if len(name) == 4 and name.startswith(tibetan_first)) > 1000


# --- Enrollments ------------------------------------------------------------------------------


def test_programme_shares_are_close_to_the_national_ones(population: Population) -> None:
    records = [r for _, r in all_records(population)]
    share = {
        program: sum(1 for r in records if any(e.program == program for e in r.enrollments)) / len(records)
        for program in person_pb2.Program.values()
    }
    assert 0.5 < share[person_pb2.PROGRAM_DIBAO] < 0.7
    assert 0.04 < share[person_pb2.PROGRAM_EXTREME_POVERTY] < 0.12
    assert 0.06 < share[person_pb2.PROGRAM_DIBAO_MARGINAL] < 0.14
    assert 0.02 < share[person_pb2.PROGRAM_RIGID_EXPENDITURE] < 0.08
    for program in (person_pb2.PROGRAM_MEDICAL, person_pb2.PROGRAM_EDUCATION, person_pb2.PROGRAM_TEMPORARY_ASSISTANCE):
        assert share[program] > 0.01
    main = [e for r in records for e in r.enrollments if e.program in MAIN_PROGRAMS]
    assert 0.75 < sum(1 for e in main if e.status == ACTIVE) / len(main) < 0.92


def test_every_record_holds_at_least_one_enrollment_and_no_programme_twice(population: Population) -> None:
    for _, r in all_records(population):
        programs = [e.program for e in r.enrollments]
        assert programs
        assert len(programs) == len(set(programs))


def test_enrollment_dates_follow_birth_and_precede_as_of(population: Population) -> None:
    for _, r in good_records(population):
        birth = parse_id_number(r.id_number, today=AS_OF).birth_date
        latest = dt.date.min
        for e in r.enrollments:
            start = to_date(e.start_date)
            assert birth < start < AS_OF
            latest = max(latest, start)
            if e.HasField("end_date"):
                end = to_date(e.end_date)
                assert start <= end < AS_OF
                assert e.status != ACTIVE
                latest = max(latest, end)
            else:
                assert e.status in (ACTIVE, person_pb2.ENROLLMENT_STATUS_SUSPENDED)
        # Updated on or after its latest date (Beijing time), within the two years before as_of.
        beijing = updated_at(r).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
        assert latest <= beijing < AS_OF
        assert beijing >= AS_OF - dt.timedelta(days=731)


def test_dibao_pays_500_to_1200_yuan_and_more_on_the_coast(population: Population) -> None:
    def amounts(province: str) -> list[int]:
        return [
            e.monthly_amount_fen
            for r in population.by_province[province]
            if r.record_id not in population.bad_record_ids
            for e in r.enrollments
            if e.program == DIBAO
        ]

    for province in PROVINCES:
        assert all(50_000 <= a <= 120_000 for a in amounts(province))
    guangdong, henan = amounts("440000"), amounts("410000")
    assert sum(guangdong) / len(guangdong) > sum(henan) / len(henan) * 1.2


def test_amounts_are_never_negative_outside_bad_records(population: Population) -> None:
    for _, r in good_records(population):
        assert all(e.monthly_amount_fen >= 0 for e in r.enrollments)


# --- Movers -----------------------------------------------------------------------------------


def test_movers_appear_in_two_provinces_with_active_dibao(population: Population) -> None:
    assert len(population.movers) == round(SPEC.persons_per_province * SPEC.mover_share) * len(PROVINCES)
    by_number: dict[str, list[tuple[str, person_pb2.PersonRecord]]] = collections.defaultdict(list)
    for province, r in all_records(population):
        by_number[r.id_number].append((province, r))
    for number in population.movers:
        (home, first), (new, second) = sorted(by_number[number], key=lambda pr: pr[0][:2] != number[:2])
        assert home != new
        assert number[:2] == home[:2]
        assert first.name == second.name
        assert first.record_id != second.record_id
        assert first.residence_division[:2] == home[:2]
        assert second.residence_division[:2] == new[:2]
        assert second.hukou_division[:2] == home[:2]
        for record in (first, second):
            assert any(e.program == DIBAO and e.status == ACTIVE for e in record.enrollments)
            assert record.record_id not in population.bad_record_ids


def test_one_province_has_no_movers() -> None:
    spec = PopulationSpec(provinces=("440000",), persons_per_province=500)
    population = generate_population(spec)
    assert population.movers == []
    assert population.record_count == 500


# --- Bad records ------------------------------------------------------------------------------


def test_bad_records_are_a_share_of_every_kind(population: Population) -> None:
    expected = population.record_count * SPEC.bad_share
    assert expected / 2 < len(population.bad_record_ids) < expected * 2
    assert set(population.bad_record_ids.values()) == set(BAD_RECORD_KINDS)


def test_each_bad_record_carries_the_error_listed_for_it(population: Population) -> None:
    records = {r.record_id: (p, r) for p, r in all_records(population)}
    for record_id, kind in population.bad_record_ids.items():
        province, r = records[record_id]
        valid_number = is_valid_id_number(r.id_number, today=AS_OF)
        assert valid_number == (kind != "bad_check_character")
        impossible = r.HasField("birth_date") and (r.birth_date.month, r.birth_date.day) == (2, 30)
        assert impossible == (kind == "impossible_birth_date")
        assert is_known_division(r.residence_division) == (kind != "unknown_division")
        negative = any(e.monthly_amount_fen < 0 for e in r.enrollments)
        assert negative == (kind == "negative_amount")
        assert (r.name == "") == (kind == "missing_name")
        assert r.residence_division[:2] == province[:2]


def test_the_hub_rejects_exactly_the_bad_records(population: Population) -> None:
    preparer = RecordPreparer(PersonKeyer(b"k" * 32), FieldSealer(generate_key_material()), today=AS_OF)
    now_us = int(dt.datetime.combine(AS_OF, dt.time(), dt.UTC).timestamp() * 1_000_000)
    expected_reason = {
        "bad_check_character": "ID_NUMBER_BAD_CHECK_CHARACTER",
        "impossible_birth_date": "DATE_IMPOSSIBLE",
        "unknown_division": "DIVISION_UNKNOWN",
        "negative_amount": "AMOUNT_NEGATIVE",
        "missing_name": "NAME_MISSING",
    }
    rejected: dict[str, str] = {}
    for province, r in all_records(population):
        try:
            preparer.prepare_record(0, province, record_from_proto(r, content_hash(r)), AS_OF, now_us)
        except HutongError as exc:
            rejected[r.record_id] = exc.reason
    assert rejected == {rid: expected_reason[kind] for rid, kind in population.bad_record_ids.items()}


def test_no_bad_share_means_no_bad_records() -> None:
    population = generate_population(dataclasses.replace(SPEC, persons_per_province=500, bad_share=0.0))
    assert population.bad_record_ids == {}


# --- Batches ----------------------------------------------------------------------------------


def test_batches_have_the_requested_size_and_numbered_ids(population: Population) -> None:
    records = population.by_province["440000"]
    out = list(batches(records, size=1000, prefix="gz-01-sync"))
    assert [b.batch_id for b in out] == [f"gz-01-sync-{n:06d}" for n in range(1, len(out) + 1)]
    assert [len(b.records) for b in out[:-1]] == [1000] * (len(out) - 1)
    assert 0 < len(out[-1].records) <= 1000
    assert [r for b in out for r in b.records] == records


def test_no_records_make_no_batches() -> None:
    assert list(batches([], size=10, prefix="x")) == []


def test_batches_stream_from_the_generator() -> None:
    stream = batches(iter_province_records(SPEC, "510000"), size=500, prefix="cd")
    first = list(itertools.islice(stream, 2))
    assert [b.batch_id for b in first] == ["cd-000001", "cd-000002"]
    assert first[1].records[0].record_id == "51-000000501"


@pytest.mark.parametrize("size", [0, -1, 5001])
def test_batches_refuse_sizes_outside_the_contract(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        next(batches([], size=size, prefix="x"))


# --- Spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"provinces": ()}, "at least one"),
        ({"provinces": ("440000", "440000")}, "repeat"),
        ({"provinces": ("440100",)}, "mainland province"),
        ({"provinces": ("810000",)}, "mainland province"),
        ({"persons_per_province": -1}, "persons_per_province"),
        ({"mover_share": 0.9}, "mover_share"),
        ({"bad_share": -0.1}, "bad_share"),
        ({"as_of": dt.date(1999, 1, 1)}, "as_of"),
    ],
)
def test_spec_refuses_what_cannot_be_generated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SPEC, **changes)


def test_gender_enum_values_match_the_wire() -> None:
    # The generator writes identity.Gender values straight into PersonRecord.gender.
    assert int(Gender.MALE) == person_pb2.GENDER_MALE
    assert int(Gender.FEMALE) == person_pb2.GENDER_FEMALE
