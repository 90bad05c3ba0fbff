"""What a record detail discloses per purpose: the rule a node applies, and the hub applies again."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.domain.model import Purpose
from gateway.domain.policy import disclosed_fields
from gateway.hub.disclosure import detail_fields, filter_detail
from hutong.v1 import node_pb2, person_pb2


def full_detail() -> node_pb2.RecordDetail:
    """A detail with every field set."""
    record = person_pb2.PersonRecord(
        record_id="gz-r1",
        version=3,
        id_number="440106196005060123",
        name="李秀英",
        gender=person_pb2.GENDER_FEMALE,
        birth_date=person_pb2.Date(year=1960, month=5, day=6),
        hukou_division="440106",
        residence_division="440106",
        household_id="H-1",
        enrollments=[
            person_pb2.Enrollment(
                program=person_pb2.PROGRAM_DIBAO,
                status=person_pb2.ENROLLMENT_STATUS_EXITED,
                start_date=person_pb2.Date(year=2020, month=1, day=1),
                end_date=person_pb2.Date(year=2024, month=6, day=30),
                monthly_amount_fen=80_000,
                granting_division="440106",
            )
        ],
    )
    record.updated_at.FromDatetime(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    detail = node_pb2.RecordDetail(
        province_code="440000",
        node_uri="hutong://province/440000/node/gz-01",
        record=record,
        attributes={"disability_grade": "二级"},
        source=node_pb2.RecordSource(file="dibao.csv", location="line 42"),
    )
    detail.exported_at.FromDatetime(dt.datetime(2026, 11, 30, tzinfo=dt.UTC))
    return detail


def present(detail: node_pb2.RecordDetail) -> set[str]:
    """The names (as in ``disclosed_fields``) of the fields actually set in a detail."""
    names = {f.name for f, _ in detail.ListFields()} - {"record", "disclosed_fields"}
    names |= {f.name for f, _ in detail.record.ListFields()}
    for enrollment in detail.record.enrollments:
        names |= {f"enrollments.{f.name}" for f, _ in enrollment.ListFields()}
    return names


@pytest.mark.parametrize("purpose", [p for p in Purpose if p is not Purpose.UNSPECIFIED])
def test_a_filtered_detail_holds_exactly_the_fields_it_lists(purpose: Purpose) -> None:
    filtered = filter_detail(full_detail(), purpose)

    assert present(filtered) == set(filtered.disclosed_fields) == detail_fields(purpose)


@pytest.mark.parametrize("purpose", [p for p in Purpose if p is not Purpose.UNSPECIFIED])
def test_enrollments_record_id_and_update_time_follow_the_lookup_rule(purpose: Purpose) -> None:
    lookup = disclosed_fields(purpose)
    fields = detail_fields(purpose)

    for name in ("start_date", "end_date", "monthly_amount_fen", "program", "status", "granting_division"):
        assert (f"enrollments.{name}" in fields) == (name in lookup), name
    for name in ("record_id", "updated_at"):
        assert (name in fields) == (name in lookup), name


def test_a_duplicate_check_sees_identity_and_dates_only() -> None:
    filtered = filter_detail(full_detail(), Purpose.DUPLICATE_CHECK)

    assert (filtered.record.id_number, filtered.record.name) == ("440106196005060123", "李秀英")
    assert filtered.record.enrollments[0].end_date.year == 2024
    assert filtered.record.enrollments[0].monthly_amount_fen == 0
    assert not filtered.attributes
    assert not filtered.HasField("source")
    assert filtered.record.household_id == ""


def test_filtering_twice_changes_nothing() -> None:
    once = filter_detail(full_detail(), Purpose.ELIGIBILITY_REVIEW)

    assert filter_detail(once, Purpose.ELIGIBILITY_REVIEW) == once
