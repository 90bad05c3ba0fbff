"""Conversions between the ``hutong.v1`` wire messages and the domain's records.

Only shapes change here; rules live in :mod:`gateway.domain`. Impossible dates are the one
check done here, because a ``datetime.date`` cannot hold them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from gateway import errors
from gateway.domain.model import Enrollment, Household, HouseholdMember, PersonRecord
from gateway.domain.records import Rejection
from gateway.errors import InvalidRecord
from gateway.rpc_status import status_code
from hutong.v1 import person_pb2

__all__ = [
    "content_hash",
    "date_from_proto",
    "decode_page_token",
    "encode_page_token",
    "household_from_proto",
    "record_from_proto",
    "rejection_to_proto",
    "set_date",
    "timestamp_from_us",
]


def content_hash(message: person_pb2.PersonRecord | person_pb2.Household) -> bytes:
    """16-byte digest of a message's deterministic encoding: equal content, equal digest."""
    return hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16).digest()


def date_from_proto(value: person_pb2.Date, field: str, record: str) -> dt.date | None:
    """A date, or None when unset (all zero); impossible dates are refused."""
    year, month, day = value.year, value.month, value.day
    if not (year or month or day):
        return None
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise InvalidRecord(
            f"{year:04d}-{month:02d}-{day:02d} is not a calendar date",
            reason="DATE_IMPOSSIBLE",
            field=field,
            record=record,
        ) from None


def set_date(target: person_pb2.Date, value: dt.date) -> None:
    """Write a date into a wire Date field."""
    target.year, target.month, target.day = value.year, value.month, value.day


def timestamp_from_us(us: int) -> Timestamp:
    """A Timestamp from microseconds since the epoch."""
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def record_from_proto(pb: person_pb2.PersonRecord, digest: bytes) -> PersonRecord:
    """The domain form of a wire record."""
    rid = pb.record_id
    enrollments = tuple(
        Enrollment(
            program=e.program,
            status=e.status,
            start_date=date_from_proto(e.start_date, f"enrollments[{i}].start_date", rid),
            end_date=date_from_proto(e.end_date, f"enrollments[{i}].end_date", rid),
            monthly_amount_fen=e.monthly_amount_fen,
            granting_division=e.granting_division,
        )
        for i, e in enumerate(pb.enrollments)
    )
    ts = pb.updated_at
    return PersonRecord(
        record_id=rid,
        version=pb.version,
        id_number=pb.id_number,
        name=pb.name,
        gender=pb.gender,
        birth_date=date_from_proto(pb.birth_date, "birth_date", rid),
        hukou_division=pb.hukou_division,
        residence_division=pb.residence_division,
        household_id=pb.household_id,
        enrollments=enrollments,
        updated_at_us=ts.seconds * 1_000_000 + ts.nanos // 1000,
        content_hash=digest,
    )


def household_from_proto(pb: person_pb2.Household, digest: bytes) -> Household:
    """The domain form of a wire household."""
    return Household(
        household_id=pb.household_id,
        version=pb.version,
        residence_division=pb.residence_division,
        members=tuple(HouseholdMember(m.record_id, m.relation) for m in pb.members),
        monthly_income_per_member_fen=pb.monthly_income_per_member_fen,
        content_hash=digest,
        income_unknown=pb.income_unknown,
    )


def rejection_to_proto(r: Rejection) -> person_pb2.Rejection:
    """The wire form of a rejection."""
    return person_pb2.Rejection(
        index=r.index,
        item_id=r.item_id,
        reason=r.reason,
        field=r.field,
        message=r.message,
        code=status_code(r.code_name).value[0],
    )


def rejections_to_proto(items: Iterable[Rejection]) -> list[person_pb2.Rejection]:
    """The wire form of several rejections."""
    return [rejection_to_proto(r) for r in items]


def encode_page_token(position: Mapping[str, int], binding: str) -> str:
    """An opaque page token: where the next page starts, bound to the query it continues."""
    return base64.urlsafe_b64encode(json.dumps({**position, "_": binding}).encode()).decode()


def decode_page_token(token: str, binding: str, keys: Sequence[str]) -> dict[str, int] | None:
    """The position a page token holds (None for no token); INVALID_ARGUMENT if it is not one of ours.

    ``binding`` is what the token was issued for (the person and purpose, the filters): a
    token cannot continue another query.
    """
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        position = {key: data[key] for key in keys}
        if data["_"] != binding or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position.values()
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise errors.InvalidArgument(
            "page_token does not belong to this query; start again without it",
            reason="PAGE_TOKEN_INVALID",
            field="page_token",
        ) from None
    return position
