"""AssistanceQueryService through real gRPC with mTLS: minimal disclosure, purposes, pagination, findings."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from gateway.client import HubClient
from gateway.domain.model import Program, Purpose
from gateway.errors import InvalidArgument, ResourceExhausted
from hutong.v1 import person_pb2, query_pb2, records_pb2

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"

Sync = Callable[..., Awaitable[list[records_pb2.SyncRecordsResponse]]]
MakeRecord = Callable[..., person_pb2.PersonRecord]


async def put(sync_all: Sync, client: HubClient, *records: person_pb2.PersonRecord, batch_id: str = "b1") -> None:
    (ack,) = await sync_all(client, [records_pb2.SyncRecordsRequest(batch_id=batch_id, records=list(records))])
    assert not ack.record_rejections, ack.record_rejections


def answer(response: query_pb2.CheckEnrollmentResponse) -> dict[int, tuple[bool, list[str]]]:
    return {r.program: (r.enrolled, list(r.province_codes)) for r in response.results}


# -- CheckEnrollment ---------------------------------------------------------------------------


async def test_check_enrollment_answers_only_programme_enrolled_and_provinces(
    client_for: Callable[..., HubClient], make_record: MakeRecord, sync_all: Sync
) -> None:
    rec = make_record("r1", updated_at_us=1_700_000_000_000_000)
    await put(sync_all, client_for(GZ), rec)
    response = await client_for(ZZ).check_enrollment(rec.id_number, Purpose.ELIGIBILITY_REVIEW)
    assert [r.program for r in response.results] == [int(p) for p in Program if p]
    assert answer(response)[Program.DIBAO] == (True, ["440000"])
    assert all(not r.enrolled and not r.province_codes for r in response.results if r.program != Program.DIBAO)
    for result in response.results:
        assert {f.name for f, _ in result.ListFields()} <= {"program", "enrolled", "province_codes"}
    wire = response.SerializeToString()
    assert rec.record_id.encode() not in wire
    assert rec.id_number.encode() not in wire
    assert b"440106" not in wire  # no granting or residence division either


async def test_check_enrollment_limits_the_answer_to_the_programmes_asked(
    client_for: Callable[..., HubClient], make_record: MakeRecord, sync_all: Sync
) -> None:
    rec = make_record("r1")
    await put(sync_all, client_for(GZ), rec)
    response = await client_for(GZ).check_enrollment(
        rec.id_number, Purpose.DUPLICATE_CHECK, [Program.MEDICAL, Program.DIBAO, Program.DIBAO]
    )
    assert [(r.program, r.enrolled) for r in response.results] == [(Program.DIBAO, True), (Program.MEDICAL, False)]


async def test_check_enrollment_of_an_unknown_person_is_no_everywhere(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    response = await client_for(GZ).check_enrollment(id_number_of("510000"), Purpose.AUDIT)
    assert not any(r.enrolled for r in response.results)


async def test_exited_or_suspended_enrollments_are_not_enrolled(
    client_for: Callable[..., HubClient], make_record: MakeRecord, make_enrollment: Callable[..., Any], sync_all: Sync
) -> None:
    rec = make_record(
        "r1",
        enrollments=[
            make_enrollment(status=person_pb2.ENROLLMENT_STATUS_EXITED, end=dt.date(2022, 1, 1)),
            make_enrollment(program=person_pb2.PROGRAM_MEDICAL, status=person_pb2.ENROLLMENT_STATUS_SUSPENDED),
        ],
    )
    await put(sync_all, client_for(GZ), rec)
    response = await client_for(GZ).check_enrollment(rec.id_number, Purpose.DUPLICATE_CHECK, [1, 6])
    assert [r.enrolled for r in response.results] == [False, False]


async def test_check_enrollment_without_purpose_is_refused_naming_purpose(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).check_enrollment(id_number_of(), Purpose.UNSPECIFIED)
    assert caught.value.code_name == "INVALID_ARGUMENT"
    assert (caught.value.reason, caught.value.field) == ("PURPOSE_MISSING", "purpose")


async def test_check_enrollment_with_unknown_purpose_or_programme_is_refused(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    gz = client_for(GZ)
    with pytest.raises(InvalidArgument) as purpose:
        await gz.check_enrollment(id_number_of(), 77)  # type: ignore[arg-type]
    assert (purpose.value.reason, purpose.value.field) == ("UNKNOWN_ENUM_VALUE", "purpose")
    with pytest.raises(InvalidArgument) as program:
        await gz.check_enrollment(id_number_of(), Purpose.AUDIT, [1, 42])  # type: ignore[list-item]
    assert (program.value.reason, program.value.field) == ("UNKNOWN_ENUM_VALUE", "programs[1]")


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        pytest.param(lambda n: n[:-1] + ("0" if n[-1] != "0" else "1"), "ID_NUMBER_BAD_CHECK_CHARACTER", id="check"),
        pytest.param(lambda n: n[:-1] + "Y", "ID_NUMBER_MALFORMED", id="letter"),
        pytest.param(lambda n: n[:16], "ID_NUMBER_MALFORMED", id="short"),
        pytest.param(lambda n: "", "ID_NUMBER_MISSING", id="missing"),
    ],
)
async def test_bad_id_number_is_invalid_argument_without_echoing_the_number(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str], mangle: Callable[[str], str], reason: str
) -> None:
    bad = mangle(id_number_of())
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).check_enrollment(bad, Purpose.DUPLICATE_CHECK)
    error = caught.value
    assert error.code_name == "INVALID_ARGUMENT"
    assert (error.reason, error.field) == (reason, "id_number")
    texts = [str(error), error.message, repr(error), *error.metadata.values()]
    for text in texts:
        if bad:
            assert bad not in text
            assert bad[:14] not in text


async def test_query_with_purpose_but_bad_id_reports_the_id_not_the_purpose(
    client_for: Callable[..., HubClient],
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).lookup_person("not-a-number", Purpose.AUDIT)
    assert caught.value.field == "id_number"


# -- BatchCheckEnrollment ----------------------------------------------------------------------


async def test_batch_check_fails_only_the_bad_item(
    client_for: Callable[..., HubClient],
    make_record: MakeRecord,
    corrupt_check: Callable[[str], str],
    id_number_of: Callable[..., str],
    sync_all: Sync,
) -> None:
    rec = make_record("r1")
    await put(sync_all, client_for(GZ), rec)
    bad = corrupt_check(id_number_of("410000", sequence=99))
    nobody = id_number_of("510000", sequence=7)
    response = await client_for(CD).batch_check_enrollment(
        [rec.id_number, bad, nobody], Purpose.DUPLICATE_CHECK, [Program.DIBAO]
    )
    first, second, third = response.results
    assert [r.index for r in response.results] == [0, 1, 2]
    assert [(r.enrolled, list(r.province_codes)) for r in first.results] == [(True, ["440000"])]
    assert not first.HasField("rejection")
    assert list(second.results) == []
    rejection = second.rejection
    assert (rejection.index, rejection.reason, rejection.field) == (1, "ID_NUMBER_BAD_CHECK_CHARACTER", "id_numbers[1]")
    assert rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad not in rejection.message
    assert [(r.enrolled, list(r.province_codes)) for r in third.results] == [(False, [])]


async def test_batch_check_needs_at_least_one_number(client_for: Callable[..., HubClient]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).batch_check_enrollment([], Purpose.DUPLICATE_CHECK)
    assert (caught.value.reason, caught.value.field) == ("ID_NUMBERS_MISSING", "id_numbers")


async def test_batch_check_refuses_more_than_a_thousand_numbers(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    numbers = [id_number_of("440000", sequence=n % 1000) for n in range(1001)]
    with pytest.raises(ResourceExhausted) as caught:
        await client_for(GZ).batch_check_enrollment(numbers, Purpose.DUPLICATE_CHECK)
    assert (caught.value.reason, caught.value.field) == ("BATCH_TOO_LARGE", "id_numbers")


async def test_batch_check_needs_a_purpose(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).batch_check_enrollment([id_number_of()], Purpose.UNSPECIFIED)
    assert caught.value.reason == "PURPOSE_MISSING"


# -- LookupPerson ------------------------------------------------------------------------------


@pytest.fixture
async def person(
    client_for: Callable[..., HubClient], make_record: MakeRecord, make_enrollment: Callable[..., Any], sync_all: Sync
) -> person_pb2.PersonRecord:
    """One person with a dibao (ended) and a medical enrollment in Guangdong."""
    rec = make_record(
        "gz-rec-1",
        updated_at_us=1_700_000_000_000_000,
        enrollments=[
            make_enrollment(end=dt.date(2024, 12, 31), amount_fen=81_000),
            make_enrollment(program=person_pb2.PROGRAM_MEDICAL, amount_fen=12_345),
        ],
    )
    await put(sync_all, client_for(GZ), rec)
    return rec


async def test_cross_region_application_sees_no_amount_end_date_or_record_id(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord
) -> None:
    response = await client_for(ZZ).lookup_person(person.id_number, Purpose.CROSS_REGION_APPLICATION)
    assert len(response.enrollments) == 2
    for entry in response.enrollments:
        assert entry.province_code == "440000"
        assert entry.record_id == ""
        assert not entry.HasField("updated_at")
        assert entry.enrollment.monthly_amount_fen == 0
        assert not entry.enrollment.HasField("end_date")
        assert entry.enrollment.HasField("start_date")
        assert entry.enrollment.granting_division == "440106"
    assert list(response.disclosed_fields) == sorted(
        ["granting_division", "program", "province_code", "start_date", "status"]
    )
    wire = response.SerializeToString()
    assert person.record_id.encode() not in wire
    assert person.id_number.encode() not in wire


async def test_audit_sees_record_ids_amounts_and_end_dates(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord
) -> None:
    response = await client_for(ZZ).lookup_person(person.id_number, Purpose.AUDIT)
    dibao, medical = response.enrollments
    assert dibao.record_id == medical.record_id == "gz-rec-1"
    assert dibao.enrollment.monthly_amount_fen == 81_000
    assert medical.enrollment.monthly_amount_fen == 12_345
    assert (dibao.enrollment.end_date.year, dibao.enrollment.end_date.month) == (2024, 12)
    assert dibao.updated_at.ToMicroseconds() == 1_700_000_000_000_000
    assert "record_id" in response.disclosed_fields


async def test_duplicate_check_sees_dates_but_no_amount(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord
) -> None:
    response = await client_for(ZZ).lookup_person(person.id_number, Purpose.DUPLICATE_CHECK)
    dibao = response.enrollments[0]
    assert dibao.enrollment.HasField("end_date")
    assert dibao.enrollment.monthly_amount_fen == 0
    assert dibao.record_id == ""


async def test_lookup_paginates_and_every_enrollment_appears_once(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord
) -> None:
    zz = client_for(ZZ)
    first = await zz.lookup_person(person.id_number, Purpose.AUDIT, page_size=1)
    assert len(first.enrollments) == 1
    assert first.next_page_token
    second = await zz.lookup_person(person.id_number, Purpose.AUDIT, page_size=1, page_token=first.next_page_token)
    assert len(second.enrollments) == 1
    assert second.next_page_token == ""
    programs = [e.enrollment.program for e in (*first.enrollments, *second.enrollments)]
    assert programs == [person_pb2.PROGRAM_DIBAO, person_pb2.PROGRAM_MEDICAL]


async def test_page_token_used_for_another_person_is_refused(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord, id_number_of: Callable[..., str]
) -> None:
    zz = client_for(ZZ)
    first = await zz.lookup_person(person.id_number, Purpose.AUDIT, page_size=1)
    with pytest.raises(InvalidArgument) as caught:
        await zz.lookup_person(id_number_of("510000"), Purpose.AUDIT, page_size=1, page_token=first.next_page_token)
    assert (caught.value.reason, caught.value.field) == ("PAGE_TOKEN_INVALID", "page_token")


async def test_page_token_used_for_another_purpose_is_refused(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord
) -> None:
    zz = client_for(ZZ)
    first = await zz.lookup_person(person.id_number, Purpose.AUDIT, page_size=1)
    with pytest.raises(InvalidArgument) as caught:
        await zz.lookup_person(person.id_number, Purpose.DUPLICATE_CHECK, page_size=1, page_token=first.next_page_token)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage!!", id="not-base64"),
        pytest.param(base64.urlsafe_b64encode(b"[1, 2]").decode(), id="json-list"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode(), id="not-utf8"),
        pytest.param(base64.urlsafe_b64encode(json.dumps({"o": 1}).encode()).decode(), id="no-binding"),
    ],
)
async def test_malformed_page_tokens_are_refused(
    client_for: Callable[..., HubClient], person: person_pb2.PersonRecord, token: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(ZZ).lookup_person(person.id_number, Purpose.AUDIT, page_size=1, page_token=token)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize("page_size", [-1, 501])
async def test_page_size_out_of_range_is_refused(
    client_for: Callable[..., HubClient], id_number_of: Callable[..., str], page_size: int
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).lookup_person(id_number_of(), Purpose.AUDIT, page_size=page_size)
    assert (caught.value.reason, caught.value.field) == ("PAGE_SIZE_INVALID", "page_size")


async def test_lookup_needs_a_purpose(client_for: Callable[..., HubClient], id_number_of: Callable[..., str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).lookup_person(id_number_of(), Purpose.UNSPECIFIED)
    assert (caught.value.reason, caught.value.field) == ("PURPOSE_MISSING", "purpose")


# -- duplicate-enrollment findings -----------------------------------------------------------------


async def test_duplicate_dibao_in_two_provinces_is_visible_through_lookup(
    client_for: Callable[..., HubClient], make_record: MakeRecord, sync_all: Sync
) -> None:
    gz_record = make_record("gz-1", hukou_province="410000")
    zz_record = make_record("zz-1", province="410000")
    assert gz_record.id_number == zz_record.id_number
    await put(sync_all, client_for(GZ), gz_record)
    await put(sync_all, client_for(ZZ), zz_record)

    response = await client_for(CD).lookup_person(gz_record.id_number, Purpose.MONITORING_FOLLOW_UP)
    (finding,) = response.findings
    assert finding.program == person_pb2.PROGRAM_DIBAO
    assert list(finding.province_codes) == ["410000", "440000"]
    assert finding.status == query_pb2.FINDING_STATUS_OPEN
    assert finding.HasField("detected_at")
    assert not finding.HasField("resolved_at")
    assert [e.province_code for e in response.enrollments] == ["410000", "440000"]
    check = await client_for(CD).check_enrollment(gz_record.id_number, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    assert answer(check)[Program.DIBAO] == (True, ["410000", "440000"])

    retired = await client_for(ZZ).retire_records(
        "move-1",
        [records_pb2.RecordRetirement(record_id="zz-1", version=2, reason=records_pb2.RETIREMENT_REASON_MOVED_AWAY)],
    )
    assert not retired.rejections
    after = await client_for(CD).lookup_person(gz_record.id_number, Purpose.MONITORING_FOLLOW_UP)
    (resolved,) = after.findings
    assert resolved.finding_id == finding.finding_id
    assert resolved.status == query_pb2.FINDING_STATUS_RESOLVED
    assert resolved.HasField("resolved_at")
    assert [e.province_code for e in after.enrollments] == ["440000"]


async def test_findings_are_listed_on_the_first_page_only(
    client_for: Callable[..., HubClient], make_record: MakeRecord, sync_all: Sync
) -> None:
    await put(sync_all, client_for(GZ), make_record("gz-1", hukou_province="410000"))
    zz_record = make_record("zz-1", province="410000")
    await put(sync_all, client_for(ZZ), zz_record)
    cd = client_for(CD)
    first = await cd.lookup_person(zz_record.id_number, Purpose.AUDIT, page_size=1)
    second = await cd.lookup_person(zz_record.id_number, Purpose.AUDIT, page_size=1, page_token=first.next_page_token)
    assert len(first.findings) == 1
    assert len(second.findings) == 0
