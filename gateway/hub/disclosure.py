"""What a record detail (``RecordDetail``) discloses for each purpose: minimal disclosure, federated.

A province node filters every detail it returns with :func:`filter_detail`, and the hub filters
the node's answer again before passing it on, so a node running an older rule, or a faulty one,
cannot disclose more than the purpose allows. The rule builds on the hub's own
(:data:`gateway.domain.policy.DISCLOSED_FIELDS`): an enrollment shows exactly the fields
``LookupPerson`` shows for the purpose, and the record id and update time appear only where
``LookupPerson`` shows them (following up with the province, auditing). On top of that:

================================  ========================================================
every purpose                     identity: ID number, name, gender, birth date, hukou and
                                  residence divisions (what the asker needs to recognise the
                                  person; the hub holds them too, sealed)
eligibility review                + household id, the province's extra detail attributes
cross-region application          + household id
monitoring follow-up, audit       + household id, attributes, record version, source file
                                  and row, export time
================================  ========================================================

The filter copies allowed fields into a new message (an allow-list): a field added to the
contract later stays undisclosed until a rule names it.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.domain.model import Purpose
from gateway.domain.policy import disclosed_fields
from hutong.v1 import node_pb2, person_pb2

__all__ = ["DETAIL_RECORD_FIELDS", "detail_fields", "filter_detail"]

_IDENTITY = frozenset({"id_number", "name", "gender", "birth_date", "hukou_division", "residence_division"})
_FOLLOW_UP = _IDENTITY | {"household_id", "attributes", "version", "source", "exported_at"}

#: Record-level fields of a detail each purpose may see, besides enrollments, record id and update time.
DETAIL_RECORD_FIELDS: Mapping[Purpose, frozenset[str]] = {
    Purpose.ELIGIBILITY_REVIEW: _IDENTITY | {"household_id", "attributes"},
    Purpose.DUPLICATE_CHECK: _IDENTITY,
    Purpose.CROSS_REGION_APPLICATION: _IDENTITY | {"household_id"},
    Purpose.MONITORING_FOLLOW_UP: _FOLLOW_UP,
    Purpose.AUDIT: _FOLLOW_UP,
}

_ENROLLMENT_FIELDS = ("program", "status", "start_date", "end_date", "monthly_amount_fen", "granting_division")
_ENROLLMENT_SCALARS = ("program", "status", "monthly_amount_fen", "granting_division")
_RECORD_SCALARS = ("record_id", "version", "id_number", "name", "gender", "hukou_division", "residence_division")


def detail_fields(purpose: Purpose) -> frozenset[str]:
    """The fields of a ``RecordDetail`` disclosed for ``purpose``, as listed in ``disclosed_fields``."""
    lookup = disclosed_fields(purpose)
    fields = set(DETAIL_RECORD_FIELDS[purpose]) | {"province_code", "node_uri", "enrollments"}
    fields.update(name for name in ("record_id", "updated_at") if name in lookup)
    fields.update(f"enrollments.{name}" for name in _ENROLLMENT_FIELDS if name in lookup)
    return frozenset(fields)


def _copy_record(source: person_pb2.PersonRecord, allowed: frozenset[str]) -> person_pb2.PersonRecord:
    record = person_pb2.PersonRecord()
    for name in _RECORD_SCALARS:
        if name in allowed:
            setattr(record, name, getattr(source, name))
    if "household_id" in allowed:
        record.household_id = source.household_id
    if "birth_date" in allowed and source.HasField("birth_date"):
        record.birth_date.CopyFrom(source.birth_date)
    if "updated_at" in allowed and source.HasField("updated_at"):
        record.updated_at.CopyFrom(source.updated_at)
    for held in source.enrollments:
        enrollment = record.enrollments.add()
        for name in _ENROLLMENT_SCALARS:
            if f"enrollments.{name}" in allowed:
                setattr(enrollment, name, getattr(held, name))
        if "enrollments.start_date" in allowed and held.HasField("start_date"):
            enrollment.start_date.CopyFrom(held.start_date)
        if "enrollments.end_date" in allowed and held.HasField("end_date"):
            enrollment.end_date.CopyFrom(held.end_date)
    return record


def filter_detail(detail: node_pb2.RecordDetail, purpose: Purpose) -> node_pb2.RecordDetail:
    """A new detail holding only what ``purpose`` may see, with ``disclosed_fields`` listing it."""
    allowed = detail_fields(purpose)
    out = node_pb2.RecordDetail(
        province_code=detail.province_code,
        node_uri=detail.node_uri,
        record=_copy_record(detail.record, allowed),
        disclosed_fields=sorted(allowed),
    )
    if "attributes" in allowed:
        out.attributes.update(detail.attributes)
    if "source" in allowed and detail.HasField("source"):
        out.source.CopyFrom(detail.source)
    if "exported_at" in allowed and detail.HasField("exported_at"):
        out.exported_at.CopyFrom(detail.exported_at)
    return out
