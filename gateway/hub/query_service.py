"""``AssistanceQueryService``: cross-province questions with minimal disclosure.

``FetchRecordDetail`` is federated: the hub finds the provinces holding a record of the person
and hands the fan-out to their nodes to :class:`~gateway.hub.federation.DetailFetcher`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import grpc

from gateway import errors
from gateway.domain import identity
from gateway.domain.access import AccessPolicy, purpose_name
from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.model import ALL_PROGRAMS, Program, Purpose
from gateway.domain.policy import disclosed_fields, require_purpose
from gateway.domain.protection import PersonKeyer
from gateway.domain.records import decode_enrollments, rejection_from_error
from gateway.hub.convert import (
    decode_page_token,
    encode_page_token,
    rejection_to_proto,
    set_date,
    timestamp_from_us,
)
from gateway.hub.federation import DetailFetcher
from gateway.hub.interceptors import current_call, current_caller
from gateway.store.base import HeldEnrollments, Store
from hutong.v1 import person_pb2, query_pb2, query_pb2_grpc

__all__ = ["MAX_BATCH_CHECK", "AssistanceQueryServicer"]

MAX_BATCH_CHECK = 1000
_DEFAULT_PAGE = 100
_MAX_PAGE = 500
_PROGRAM_VALUES = frozenset(int(p) for p in ALL_PROGRAMS)


def _programs(values: Sequence[int]) -> tuple[Program, ...]:
    if not values:
        return ALL_PROGRAMS
    for i, value in enumerate(values):
        if value not in _PROGRAM_VALUES:
            raise errors.InvalidArgument(
                f"unknown programme value {value}",
                reason="PROGRAM_MISSING" if value == 0 else "UNKNOWN_ENUM_VALUE",
                field=f"programs[{i}]",
            )
    return tuple(sorted({Program(v) for v in values}))


def _answer(held: Iterable[HeldEnrollments], programs: Sequence[Program]) -> list[query_pb2.ProgramEnrollment]:
    rows = list(held)
    results = []
    for program in programs:
        provinces = sorted({h.province_code for h in rows if h.active_programs & program.bit})
        results.append(
            query_pb2.ProgramEnrollment(
                program=person_pb2.Program.ValueType(program), enrolled=bool(provinces), province_codes=provinces
            )
        )
    return results


class AssistanceQueryServicer(query_pb2_grpc.AssistanceQueryServiceServicer):
    """Answers whether, and where, a person is already assisted."""

    def __init__(
        self,
        store: Store,
        keyer: PersonKeyer,
        policy: AccessPolicy | None = None,
        *,
        details: DetailFetcher | None = None,
    ) -> None:
        self._store = store
        self._keyer = keyer
        self._policy = policy or AccessPolicy.open_default()
        self._details = details

    def _purpose(self, value: int, scope: str = "query:enrollment") -> Purpose:
        purpose = require_purpose(value)
        current_call().purpose = purpose_name(purpose)
        self._policy.require_purpose(scope, purpose)
        return purpose

    def _person_key(self, id_number: str) -> bytes:
        return self._keyer.person_key(identity.parse_id_number(id_number).value)

    async def CheckEnrollment(
        self, request: query_pb2.CheckEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.CheckEnrollmentResponse:
        """Yes or no per programme, with the holding provinces and nothing else."""
        self._purpose(request.purpose)
        programs = _programs(request.programs)
        key = self._person_key(request.id_number)
        call = current_call()
        call.person_keys.add(key)
        held = (await self._store.enrollments_of([key])).get(key, [])
        return query_pb2.CheckEnrollmentResponse(results=_answer(held, programs))

    async def BatchCheckEnrollment(
        self, request: query_pb2.BatchCheckEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.BatchCheckEnrollmentResponse:
        """CheckEnrollment for many persons; a bad ID number fails only its item."""
        self._purpose(request.purpose)
        programs = _programs(request.programs)
        n = len(request.id_numbers)
        if n == 0:
            raise errors.InvalidArgument(
                "at least one ID number is required", reason="ID_NUMBERS_MISSING", field="id_numbers"
            )
        if n > MAX_BATCH_CHECK:
            raise errors.ResourceExhausted(
                f"at most {MAX_BATCH_CHECK} ID numbers per call; got {n}", reason="BATCH_TOO_LARGE", field="id_numbers"
            )
        keys: list[bytes | None] = []
        results: list[query_pb2.BatchCheckEnrollmentResult] = []
        for index, raw in enumerate(request.id_numbers):
            try:
                keys.append(self._person_key(raw))
                results.append(query_pb2.BatchCheckEnrollmentResult(index=index))
            except errors.HutongError as exc:
                exc.field = f"id_numbers[{index}]"
                keys.append(None)
                results.append(
                    query_pb2.BatchCheckEnrollmentResult(
                        index=index, rejection=rejection_to_proto(rejection_from_error(index, "", exc))
                    )
                )
        known = [k for k in keys if k is not None]
        call = current_call()
        call.person_keys.update(known)
        call.counts.update(persons=n, rejected=n - len(known))
        held = await self._store.enrollments_of(known)
        for key, result in zip(keys, results, strict=True):
            if key is not None:
                result.results.extend(_answer(held.get(key, []), programs))
        return query_pb2.BatchCheckEnrollmentResponse(results=results)

    async def LookupPerson(
        self, request: query_pb2.LookupPersonRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.LookupPersonResponse:
        """Enrollments across provinces, fields filtered by purpose, paginated."""
        purpose = self._purpose(request.purpose)
        if not 0 <= request.page_size <= _MAX_PAGE:
            raise errors.InvalidArgument(
                f"page_size must be between 0 and {_MAX_PAGE}", reason="PAGE_SIZE_INVALID", field="page_size"
            )
        page_size = request.page_size or _DEFAULT_PAGE
        key = self._person_key(request.id_number)
        current_call().person_keys.add(key)
        binding = hashlib.sha256(key + bytes([purpose])).hexdigest()[:16]
        offset = (decode_page_token(request.page_token, binding, ("o",)) or {"o": 0})["o"]
        allowed = disclosed_fields(purpose)
        held = (await self._store.enrollments_of([key])).get(key, [])
        entries: list[query_pb2.ProvinceEnrollment] = []
        for h in sorted(held, key=lambda h: (h.province_code, h.record_id)):
            for e in decode_enrollments(h.enrollments):
                entry = query_pb2.ProvinceEnrollment(province_code=h.province_code)
                enrollment = entry.enrollment
                enrollment.program = person_pb2.Program.ValueType(e.program)
                enrollment.status = person_pb2.EnrollmentStatus.ValueType(e.status)
                enrollment.granting_division = e.granting_division
                if "start_date" in allowed and e.start_date is not None:
                    set_date(enrollment.start_date, e.start_date)
                if "end_date" in allowed and e.end_date is not None:
                    set_date(enrollment.end_date, e.end_date)
                if "monthly_amount_fen" in allowed:
                    enrollment.monthly_amount_fen = e.monthly_amount_fen
                if "record_id" in allowed:
                    entry.record_id = h.record_id
                if "updated_at" in allowed and h.updated_at_us:
                    entry.updated_at.CopyFrom(timestamp_from_us(h.updated_at_us))
                entries.append(entry)
        entries.sort(key=lambda x: (x.province_code, x.enrollment.program))
        page = entries[offset : offset + page_size]
        response = query_pb2.LookupPersonResponse(enrollments=page, disclosed_fields=sorted(allowed))
        if offset + page_size < len(entries):
            response.next_page_token = encode_page_token({"o": offset + page_size}, binding)
        if offset == 0:
            for f in await self._store.findings_of(key):
                finding = response.findings.add(
                    finding_id=f.finding_id,
                    program=f.program,
                    province_codes=f.province_codes,
                    status=query_pb2.FINDING_STATUS_OPEN if f.open else query_pb2.FINDING_STATUS_RESOLVED,
                )
                finding.detected_at.CopyFrom(timestamp_from_us(f.detected_at_us))
                if f.resolved_at_us:
                    finding.resolved_at.CopyFrom(timestamp_from_us(f.resolved_at_us))
        current_call().counts.update(enrollments=len(page))
        return response

    async def FetchRecordDetail(
        self, request: query_pb2.FetchRecordDetailRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.FetchRecordDetailResponse:
        """The person's full records from the holding provinces' nodes; a node that fails is one failure."""
        purpose = self._purpose(request.purpose, "query:detail")
        province = request.province_code
        if province and province not in PROVINCE_CODES:
            raise errors.InvalidArgument(
                "province_code must be a 6-digit province-level code (e.g. 440000) or empty",
                reason="PROVINCE_CODE_INVALID",
                field="province_code",
            )
        key = self._person_key(request.id_number)
        call = current_call()
        call.person_keys.add(key)
        held = sorted(
            (h.province_code, h.record_id)
            for h in (await self._store.enrollments_of([key])).get(key, [])
            if not province or h.province_code == province
        )
        if not held:
            where = f" in province {province}" if province else ""
            raise errors.NotFound(
                f"the hub holds no record of this person{where}",
                reason="RECORD_NOT_FOUND",
                field="province_code" if province else "id_number",
            )
        if self._details is None:
            raise errors.FailedPrecondition(
                "this hub runs without TLS and cannot call province nodes", reason="FEDERATION_DISABLED"
            )
        details, failures = await self._details.fetch(
            held,
            purpose=purpose,
            requester=current_caller(),
            request_id=call.request_id,
            budget=self._details.budget(context.time_remaining()),
        )
        call.counts.update(records=len(held), details=len(details), failures=len(failures))
        return query_pb2.FetchRecordDetailResponse(details=details, failures=failures)
