"""Standard records on the wire: domain records to ``hutong.v1`` messages, and batches assembled from stored bytes.

The outbox keeps each record as its serialized ``hutong.v1.PersonRecord`` and each batch as the
serialized ``SyncRecordsRequest``; a batch is the concatenation of its length-delimited fields, so
it is assembled from stored bytes without parsing them again, and resent byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.domain.model import Household, PersonRecord
from hutong.v1 import person_pb2

__all__ = ["batch_request", "content_digest", "household_to_proto", "record_to_proto"]


def record_to_proto(record: PersonRecord) -> person_pb2.PersonRecord:
    """The wire form of a domain record."""
    pb = person_pb2.PersonRecord(
        record_id=record.record_id,
        version=record.version,
        id_number=record.id_number,
        name=record.name,
        gender=record.gender,  # type: ignore[arg-type]
        hukou_division=record.hukou_division,
        residence_division=record.residence_division,
        household_id=record.household_id,
        id_number_unverified=record.id_number_unverified,
    )
    if record.birth_date is not None:
        d = pb.birth_date
        d.year, d.month, d.day = record.birth_date.year, record.birth_date.month, record.birth_date.day
    for e in record.enrollments:
        pe = pb.enrollments.add(
            program=e.program,
            status=e.status,
            monthly_amount_fen=e.monthly_amount_fen,
            granting_division=e.granting_division,
        )
        if e.start_date is not None:
            pe.start_date.year, pe.start_date.month, pe.start_date.day = (
                e.start_date.year,
                e.start_date.month,
                e.start_date.day,
            )
        if e.end_date is not None:
            pe.end_date.year, pe.end_date.month, pe.end_date.day = e.end_date.year, e.end_date.month, e.end_date.day
    if record.updated_at_us:
        pb.updated_at.CopyFrom(
            Timestamp(seconds=record.updated_at_us // 1_000_000, nanos=(record.updated_at_us % 1_000_000) * 1000)
        )
    return pb


def household_to_proto(household: Household) -> person_pb2.Household:
    """The wire form of a domain household."""
    pb = person_pb2.Household(
        household_id=household.household_id,
        version=household.version,
        residence_division=household.residence_division,
        monthly_income_per_member_fen=household.monthly_income_per_member_fen,
        income_unknown=household.income_unknown,
    )
    for m in household.members:
        pb.members.add(record_id=m.record_id, relation=m.relation)
    return pb


def content_digest(message: person_pb2.PersonRecord | person_pb2.Household) -> bytes:
    """16-byte digest of what a message says, its version left out: a re-export of equal content is equal."""
    version = message.version
    message.version = 0
    digest = hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16).digest()
    message.version = version
    return digest


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


# Tags of SyncRecordsRequest's fields (records.proto): batch_id = 1, records = 2, households = 3,
# each length-delimited (wire type 2).
_BATCH_ID, _RECORDS, _HOUSEHOLDS = 0x0A, 0x12, 0x1A


def batch_request(batch_id: str, records: Iterable[bytes], households: Iterable[bytes] = ()) -> bytes:
    """A serialized ``SyncRecordsRequest`` of already-serialized records and households."""
    parts = [_field(_BATCH_ID, batch_id.encode("ascii"))]
    parts.extend(_field(_RECORDS, body) for body in records)
    parts.extend(_field(_HOUSEHOLDS, body) for body in households)
    return b"".join(parts)
