"""Validation and preparation of incoming records, and the version rules of sync.

A record from a province is checked field by field; the first rule it breaks becomes its
:class:`Rejection`, naming the record and the field. A good record is *prepared* for the
store: its ID number becomes the person key, ID number and name are sealed, enrollments are
packed. Preparation is pure CPU work and happens outside the store's transaction.

The unverified-identity rule: a record must carry a valid ID number, unless its province flags
it ``id_number_unverified`` (it cannot vouch for one: missing, mistyped, a legacy number that
fails the date rules). Such a record may carry an empty or invalid number, but must carry a
name, a birth date and a residence; its number is kept only sealed, and its person key is
*provisional*, the keyed hash of province and record id (:func:`provisional_key_input`), never
of the number, until identity linkage links it to a person. That holds even when the number
passes the check: the linker's first rule still links it outright to the records holding the
same valid number, but a number the province cannot vouch for never makes it that number's
person by itself.

Version rules (idempotent by province, record id, version):

=====================================  =============
incoming vs held                       outcome
=====================================  =============
nothing held                           CREATED
higher version                         UPDATED
same version, same content             UNCHANGED (a resend)
same version, other content            REJECTED VERSION_CONFLICT
lower version                          STALE
=====================================  =============
"""

from __future__ import annotations

import datetime as dt
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.domain import divisions, identity
from gateway.domain.model import Enrollment as EnrollmentT
from gateway.domain.model import (
    EnrollmentStatus,
    Gender,
    Household,
    HouseholdRelation,
    Outcome,
    PersonRecord,
    Program,
    RetirementReason,
)
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.errors import ConfigError, HutongError, InvalidRecord, PermissionDenied

__all__ = [
    "MAX_ENROLLMENTS",
    "MAX_HOUSEHOLD_MEMBERS",
    "MAX_ITEM_ID_LENGTH",
    "MAX_MONTHLY_AMOUNT_FEN",
    "CheckedRecord",
    "PreparedBatch",
    "PreparedHousehold",
    "PreparedRecord",
    "RecordPreparer",
    "Rejection",
    "Retirement",
    "check_record",
    "check_retirement",
    "decide_outcome",
    "decode_enrollments",
    "encode_enrollments",
    "pii_associated_data",
    "provisional_key_input",
    "rejection_from_error",
    "unseal_pii",
]

MAX_ENROLLMENTS = 16
MAX_HOUSEHOLD_MEMBERS = 32
MAX_ITEM_ID_LENGTH = 64
MAX_NAME_LENGTH = 64
#: The longest ID number an unverified record may carry (kept sealed, read only by linkage).
MAX_UNVERIFIED_ID_LENGTH = 32
#: 100,000 yuan a month: far above any assistance standard, so anything larger is a unit error.
MAX_MONTHLY_AMOUNT_FEN = 10_000_000
#: How far in the future a province's clock may be before updated_at is refused.
_CLOCK_SKEW_US = 24 * 3600 * 1_000_000

_PROGRAM_VALUES = frozenset(int(p) for p in Program if p is not Program.UNSPECIFIED)
_STATUS_VALUES = frozenset(int(s) for s in EnrollmentStatus if s is not EnrollmentStatus.UNSPECIFIED)
_GENDER_VALUES = frozenset(int(g) for g in Gender)
_RELATION_VALUES = frozenset(int(r) for r in HouseholdRelation)
_RETIREMENT_VALUES = frozenset(int(r) for r in RetirementReason if r is not RetirementReason.UNSPECIFIED)
_ACTIVE = int(EnrollmentStatus.ACTIVE)

# program, status, start yyyymmdd, end yyyymmdd (0 = open), amount fen, granting division.
_ENROLLMENT = struct.Struct("<BBIIq6s")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one item of a batch was refused."""

    index: int
    item_id: str
    reason: str
    field: str
    message: str
    #: Name of the gRPC status the refusal would carry alone (INVALID_ARGUMENT, PERMISSION_DENIED).
    code_name: str


def rejection_from_error(index: int, item_id: str, exc: HutongError) -> Rejection:
    """A rejection carrying the reason, field and message of a domain error."""
    return Rejection(index, item_id, exc.reason, exc.field or "", exc.message, exc.code_name)


@dataclass(frozen=True, slots=True)
class Retirement:
    """One record to retire, validated."""

    index: int
    record_id: str
    version: int
    reason: RetirementReason


def check_retirement(index: int, record_id: str, version: int, reason: int) -> Retirement:
    """Validate one retirement; raises the first rule it breaks."""
    _check_item_id(record_id, "record_id", record_id or f"#{index}")
    if version < 1:
        raise InvalidRecord("version must be at least 1", reason="VERSION_INVALID", field="version", record=record_id)
    if reason == 0 or reason not in _RETIREMENT_VALUES:
        raise InvalidRecord(
            f"reason must be a known retirement reason, got {reason}",
            reason="REASON_MISSING" if reason == 0 else "UNKNOWN_ENUM_VALUE",
            field="reason",
            record=record_id,
        )
    return Retirement(index, record_id, version, RetirementReason(reason))


class PreparedRecord(NamedTuple):
    """A validated record ready for the store; holds no raw ID number or name.

    A named tuple rather than a dataclass: batches of these cross from the preparation
    workers to the hub process, and tuples pickle at a fraction of a dataclass's cost.
    """

    #: Position of the item in its request.
    position: int
    record_id: str
    version: int
    content_hash: bytes
    person_key: bytes
    sealed_pii: bytes
    gender: int
    birth_yyyymmdd: int
    hukou_division: str
    residence_division: str
    household_id: str
    enrollments: bytes
    #: Mask of programmes with an ACTIVE enrollment (``Program.bit``).
    active_programs: int
    updated_at_us: int
    #: The province could not give a valid ID number: ``person_key`` is provisional and
    #: ``birth_yyyymmdd`` is the stated birth date (see the module's unverified-identity rule).
    identity_unverified: bool = False


class PreparedHousehold(NamedTuple):
    """A validated household ready for the store."""

    #: Position of the item in its request.
    position: int
    household_id: str
    version: int
    content_hash: bytes
    residence_division: str
    members: str
    #: -1 when the province did not assess it.
    monthly_income_per_member_fen: int


@dataclass(slots=True)
class PreparedBatch:
    """The records and households of one batch that passed validation, and those that did not."""

    records: list[PreparedRecord]
    record_rejections: list[Rejection]
    households: list[PreparedHousehold]
    household_rejections: list[Rejection]
    record_count: int
    household_count: int


def decide_outcome(held: tuple[int, bytes] | None, version: int, content_hash: bytes) -> Outcome | None:
    """The outcome of writing ``version`` over ``held`` (version, hash); None means VERSION_CONFLICT."""
    if held is None:
        return Outcome.CREATED
    held_version, held_hash = held
    if version > held_version:
        return Outcome.UPDATED
    if version < held_version:
        return Outcome.STALE
    return Outcome.UNCHANGED if held_hash == content_hash else None


def _yyyymmdd(day: dt.date | None) -> int:
    return 0 if day is None else day.year * 10000 + day.month * 100 + day.day


def _from_yyyymmdd(value: int) -> dt.date | None:
    return None if value == 0 else dt.date(value // 10000, value // 100 % 100, value % 100)


def encode_enrollments(enrollments: Sequence[EnrollmentT]) -> bytes:
    """Pack enrollments into 24 bytes each."""
    pack = _ENROLLMENT.pack
    return b"".join(
        pack(
            e.program,
            e.status,
            _yyyymmdd(e.start_date),
            _yyyymmdd(e.end_date),
            e.monthly_amount_fen,
            e.granting_division.encode("ascii"),
        )
        for e in enrollments
    )


def decode_enrollments(blob: bytes) -> tuple[EnrollmentT, ...]:
    """Unpack what :func:`encode_enrollments` packed."""
    return tuple(
        EnrollmentT(
            program=program,
            status=status,
            start_date=_from_yyyymmdd(start),
            end_date=_from_yyyymmdd(end),
            monthly_amount_fen=amount,
            granting_division=division.decode("ascii"),
        )
        for program, status, start, end, amount, division in _ENROLLMENT.iter_unpack(blob)
    )


def provisional_key_input(province_code: str, record_id: str) -> str:
    """What the provisional person key of an unverified record hashes: its province and record id.

    ASCII (the record id in hex) like every key input; the unit separator cannot occur in a
    normalised ID number, so a provisional key never equals the key of a real number.
    """
    return f"provisional\x1f{province_code}\x1f{record_id.encode().hex()}"


def pii_associated_data(province_code: str, record_id: str) -> bytes:
    """Associated data binding a sealed ID number and name to their row."""
    return f"{province_code}/{record_id}".encode()


def unseal_pii(sealer: FieldSealer, blob: bytes, province_code: str, record_id: str) -> tuple[str, str]:
    """Open a sealed (ID number, name) pair."""
    plain = sealer.open(blob, pii_associated_data(province_code, record_id)).decode()
    id_number, _, name = plain.partition("\x1f")
    return id_number, name


def _check_item_id(value: str, field: str, record: str | None) -> None:
    if not value or len(value) > MAX_ITEM_ID_LENGTH or not value.isprintable() or value != value.strip():
        raise InvalidRecord(
            f"must be 1 to {MAX_ITEM_ID_LENGTH} printable characters without surrounding spaces",
            reason="ITEM_ID_INVALID",
            field=field,
            record=record,
        )


_DIGIT_CHARS = frozenset("0123456789０１２３４５６７８９")


def _check_name(name: str, record_id: str) -> None:
    if not name.strip():
        raise InvalidRecord("name is required", reason="NAME_MISSING", field="name", record=record_id)
    if len(name) > MAX_NAME_LENGTH or not name.isprintable() or not _DIGIT_CHARS.isdisjoint(name):
        raise InvalidRecord(
            f"name must be at most {MAX_NAME_LENGTH} printable characters and contain no digits",
            reason="NAME_INVALID",
            field="name",
            record=record_id,
        )


class CheckedRecord(NamedTuple):
    """What :func:`check_record` found: the parsed ID number (None if invalid), active programmes, errors."""

    id_number: identity.IdNumber | None
    #: Mask of programmes with an ACTIVE enrollment (``Program.bit``).
    active_programs: int
    #: Every rule the record breaks, in the order the hub checks them; empty for a good record.
    errors: list[HutongError]


def _check_unverified_number(raw: str, record: str, errors: list[HutongError]) -> None:
    """What a flagged record's number must still be: short printable text (it is sealed, never parsed as ID)."""
    if len(raw) > MAX_UNVERIFIED_ID_LENGTH or (raw and not raw.isprintable()):
        errors.append(
            InvalidRecord(
                f"an unverified id_number must be at most {MAX_UNVERIFIED_ID_LENGTH} printable characters",
                reason="ID_NUMBER_MALFORMED",
                field="id_number",
                record=record,
            )
        )


def _check_unverified_birth(birth: dt.date | None, today: dt.date, record: str, errors: list[HutongError]) -> None:
    """An unverified record's birth date is its identity's backbone: required and plausible."""
    if birth is None:
        errors.append(
            InvalidRecord(
                "birth_date is required when id_number_unverified is set",
                reason="BIRTH_DATE_MISSING",
                field="birth_date",
                record=record,
            )
        )
    elif not identity.EARLIEST_BIRTH <= birth <= today:
        errors.append(
            InvalidRecord(
                f"birth_date must lie between {identity.EARLIEST_BIRTH.isoformat()} and today",
                reason="DATE_IMPOSSIBLE",
                field="birth_date",
                record=record,
            )
        )


def check_record(
    record: PersonRecord,
    province_code: str,
    *,
    today: dt.date,
    now_us: int,
    index: int | None = None,
    id_number_unverified: bool = False,
) -> CheckedRecord:
    """Every rule ``record`` breaks for ``province_code``, each naming its field; the hub refuses on the first.

    The one definition of a valid record: the hub's preparation and the provinces' adapters both
    call it, so a record an adapter accepts is one the hub accepts. ``id_number_unverified`` is
    the province's flag (see the module's unverified-identity rule): the number is then not
    checked (empty or invalid is no error, nor a gender or birth date that disagrees with it), but
    a birth date is required; ``id_number`` is None for such a record.
    """
    rid = record.record_id
    errors: list[HutongError] = []
    # Plain try blocks, not a helper taking lambdas: this runs for every record the hub ingests.
    try:
        _check_item_id(rid, "record_id", rid or f"#{index if index is not None else '?'}")
    except HutongError as exc:
        errors.append(exc)
    if record.version < 1:
        errors.append(
            InvalidRecord("version must be at least 1", reason="VERSION_INVALID", field="version", record=rid)
        )
    id_number: identity.IdNumber | None = None
    if id_number_unverified:
        # The province cannot vouch for the number, so nothing is checked against it either.
        _check_unverified_number(record.id_number, rid, errors)
        _check_unverified_birth(record.birth_date, today, rid, errors)
    else:
        try:
            id_number = identity.parse_id_number(record.id_number, today=today)
        except HutongError as exc:
            exc.record = rid
            errors.append(exc)
    try:
        _check_name(record.name, rid)
    except HutongError as exc:
        errors.append(exc)
    if record.gender not in _GENDER_VALUES:
        errors.append(
            InvalidRecord(
                f"unknown gender value {record.gender}", reason="UNKNOWN_ENUM_VALUE", field="gender", record=rid
            )
        )
    if id_number is not None:
        resident = id_number.kind == identity.IdKind.RESIDENT
        if record.gender and resident and record.gender != int(id_number.gender):
            errors.append(
                InvalidRecord(
                    "gender disagrees with the ID number", reason="GENDER_MISMATCH", field="gender", record=rid
                )
            )
        if record.birth_date is not None and record.birth_date != id_number.birth_date:
            errors.append(
                InvalidRecord(
                    "birth_date disagrees with the ID number",
                    reason="BIRTH_DATE_MISMATCH",
                    field="birth_date",
                    record=rid,
                )
            )
    if record.hukou_division:
        try:
            divisions.validate_division(record.hukou_division, field="hukou_division", record=rid)
        except HutongError as exc:
            errors.append(exc)
    if not record.residence_division:
        errors.append(
            InvalidRecord(
                "residence_division is required", reason="DIVISION_MISSING", field="residence_division", record=rid
            )
        )
    else:
        try:
            _check_own_division(record.residence_division, province_code, "residence_division", rid)
        except HutongError as exc:
            errors.append(exc)
    if record.household_id:
        try:
            _check_item_id(record.household_id, "household_id", rid)
        except HutongError as exc:
            errors.append(exc)
    if record.updated_at_us > now_us + _CLOCK_SKEW_US:
        errors.append(
            InvalidRecord(
                "updated_at lies in the future", reason="UPDATED_AT_IN_FUTURE", field="updated_at", record=rid
            )
        )
    active = _check_enrollments(record, province_code, today, errors)
    return CheckedRecord(id_number, active, errors)


def _check_own_division(code: str, province_code: str, field: str, record: str) -> None:
    divisions.validate_division(code, field=field, record=record)
    if code[:2] != province_code[:2]:
        raise PermissionDenied(
            f"{field} lies outside the calling province {province_code}",
            reason="PROVINCE_NOT_PERMITTED",
            field=field,
            record=record,
            metadata={"caller_province": province_code},
        )


def _check_enrollments(record: PersonRecord, province_code: str, today: dt.date, errors: list[HutongError]) -> int:
    """Append what is wrong with each enrollment (its first broken rule) to ``errors``; the active mask."""
    rid = record.record_id
    if len(record.enrollments) > MAX_ENROLLMENTS:
        errors.append(
            InvalidRecord(
                f"at most {MAX_ENROLLMENTS} enrollments per record",
                reason="TOO_MANY_ENROLLMENTS",
                field="enrollments",
                record=rid,
            )
        )
        return 0
    active = 0
    latest_start = today + dt.timedelta(days=366)
    for i, e in enumerate(record.enrollments):
        active |= _check_enrollment(e, f"enrollments[{i}]", rid, province_code, latest_start, active, errors)
    return active


def _check_enrollment(
    e: EnrollmentT,
    where: str,
    rid: str,
    province_code: str,
    latest_start: dt.date,
    active: int,
    errors: list[HutongError],
) -> int:
    """Append every rule the enrollment breaks to ``errors``; its bit of the active mask if it counts."""
    before = len(errors)
    if e.program not in _PROGRAM_VALUES:
        reason = "PROGRAM_MISSING" if e.program == 0 else "UNKNOWN_ENUM_VALUE"
        errors.append(
            InvalidRecord(
                f"program must be a known programme, got {e.program}",
                reason=reason,
                field=f"{where}.program",
                record=rid,
            )
        )
    if e.status not in _STATUS_VALUES:
        reason = "STATUS_MISSING" if e.status == 0 else "UNKNOWN_ENUM_VALUE"
        errors.append(
            InvalidRecord(
                f"status must be a known status, got {e.status}", reason=reason, field=f"{where}.status", record=rid
            )
        )
    if e.start_date is None:
        errors.append(
            InvalidRecord("start_date is required", reason="DATE_MISSING", field=f"{where}.start_date", record=rid)
        )
    elif e.start_date > latest_start:
        errors.append(
            InvalidRecord(
                "start_date lies more than a year ahead",
                reason="DATE_IMPOSSIBLE",
                field=f"{where}.start_date",
                record=rid,
            )
        )
    elif e.end_date is not None and e.end_date < e.start_date:
        errors.append(
            InvalidRecord(
                "end_date is before start_date", reason="DATE_RANGE_INVALID", field=f"{where}.end_date", record=rid
            )
        )
    if e.monthly_amount_fen < 0:
        errors.append(
            InvalidRecord(
                "monthly_amount_fen must not be negative",
                reason="AMOUNT_NEGATIVE",
                field=f"{where}.monthly_amount_fen",
                record=rid,
            )
        )
    elif e.monthly_amount_fen > MAX_MONTHLY_AMOUNT_FEN:
        errors.append(
            InvalidRecord(
                f"monthly_amount_fen exceeds {MAX_MONTHLY_AMOUNT_FEN} fen (100,000 yuan); amounts are in fen",
                reason="AMOUNT_TOO_LARGE",
                field=f"{where}.monthly_amount_fen",
                record=rid,
            )
        )
    try:
        _check_own_division(e.granting_division, province_code, f"{where}.granting_division", rid)
    except HutongError as exc:
        errors.append(exc)
    if len(errors) == before and e.status == _ACTIVE:
        bit = 1 << e.program
        if active & bit:
            errors.append(
                InvalidRecord(
                    "two active enrollments in the same programme",
                    reason="ENROLLMENT_DUPLICATED",
                    field=f"{where}.program",
                    record=rid,
                )
            )
            return 0
        return bit
    return 0


class RecordPreparer:
    """Validates records of one province and prepares them for the store."""

    __slots__ = ("_keyer", "_sealer", "_today")

    def __init__(self, keyer: PersonKeyer, sealer: FieldSealer, *, today: dt.date | None = None) -> None:
        if keyer.suite != sealer.suite:
            raise ConfigError(
                f"person keys ({keyer.suite}) and sealed fields ({sealer.suite}) must use one crypto suite",
                reason="CRYPTO_SUITE_MISMATCH",
                field="crypto_suite",
            )
        self._keyer = keyer
        self._sealer = sealer
        self._today = today

    def prepare_batch(
        self,
        province_code: str,
        records: Sequence[PersonRecord | None],
        households: Sequence[Household | None] = (),
        *,
        record_rejections: Sequence[Rejection] = (),
        household_rejections: Sequence[Rejection] = (),
        unverified: frozenset[int] = frozenset(),
    ) -> PreparedBatch:
        """Prepare every item; each bad item becomes a rejection and the rest go on.

        ``None`` stands for an item already refused upstream (its rejection is passed in), so
        indices keep pointing at the request's positions. ``unverified`` holds the positions of
        the records their province flagged ``id_number_unverified``.
        """
        now_us = time.time_ns() // 1000
        today = self._today or dt.date.today()
        ok: list[PreparedRecord] = []
        bad = list(record_rejections)
        for index, record in enumerate(records):
            if record is None:
                continue
            try:
                ok.append(
                    self.prepare_record(
                        index, province_code, record, today, now_us, id_number_unverified=index in unverified
                    )
                )
            except HutongError as exc:
                bad.append(rejection_from_error(index, record.record_id, exc))
        ok_h: list[PreparedHousehold] = []
        bad_h = list(household_rejections)
        for index, household in enumerate(households):
            if household is None:
                continue
            try:
                ok_h.append(self.prepare_household(index, province_code, household))
            except HutongError as exc:
                bad_h.append(rejection_from_error(index, household.household_id, exc))
        return PreparedBatch(ok, bad, ok_h, bad_h, len(records), len(households))

    def prepare_record(
        self,
        index: int,
        province_code: str,
        record: PersonRecord,
        today: dt.date,
        now_us: int,
        *,
        id_number_unverified: bool = False,
    ) -> PreparedRecord:
        """Validate one record and prepare it; raises the first rule it breaks."""
        checked = check_record(
            record, province_code, today=today, now_us=now_us, index=index, id_number_unverified=id_number_unverified
        )
        if checked.errors:
            raise checked.errors[0]
        id_number = checked.id_number
        rid = record.record_id
        if id_number is None:  # flagged unverified: linked by the linker, not keyed by the number
            return self._prepare_unverified(index, province_code, record, checked.active_programs)
        resident = id_number.kind == identity.IdKind.RESIDENT
        gender = record.gender or (int(id_number.gender) if resident else 0)
        pii = f"{id_number.value}\x1f{record.name.strip()}".encode()
        return PreparedRecord(
            position=index,
            record_id=rid,
            version=record.version,
            content_hash=record.content_hash,
            person_key=self._keyer.person_key(id_number.value),
            sealed_pii=self._sealer.seal(pii, pii_associated_data(province_code, rid)),
            gender=gender,
            birth_yyyymmdd=int(id_number.value[6:14]),
            hukou_division=record.hukou_division,
            residence_division=record.residence_division,
            household_id=record.household_id,
            enrollments=encode_enrollments(record.enrollments),
            active_programs=checked.active_programs,
            updated_at_us=record.updated_at_us,
        )

    def _prepare_unverified(
        self, index: int, province_code: str, record: PersonRecord, active_programs: int
    ) -> PreparedRecord:
        """A flagged record without a valid number: provisional key, the number as sent kept sealed."""
        rid = record.record_id
        birth = record.birth_date
        assert birth is not None  # check_record requires it of an unverified record
        pii = f"{record.id_number.strip()}\x1f{record.name.strip()}".encode()
        return PreparedRecord(
            position=index,
            record_id=rid,
            version=record.version,
            content_hash=record.content_hash,
            person_key=self._keyer.person_key(provisional_key_input(province_code, rid)),
            sealed_pii=self._sealer.seal(pii, pii_associated_data(province_code, rid)),
            gender=record.gender,
            birth_yyyymmdd=_yyyymmdd(birth),
            hukou_division=record.hukou_division,
            residence_division=record.residence_division,
            household_id=record.household_id,
            enrollments=encode_enrollments(record.enrollments),
            active_programs=active_programs,
            updated_at_us=record.updated_at_us,
            identity_unverified=True,
        )

    def prepare_household(self, index: int, province_code: str, household: Household) -> PreparedHousehold:
        """Validate one household and prepare it; raises the first rule it breaks."""
        hid = household.household_id
        _check_item_id(hid, "household_id", hid or f"#{index}")
        if household.version < 1:
            raise InvalidRecord("version must be at least 1", reason="VERSION_INVALID", field="version", record=hid)
        _check_own_division(household.residence_division, province_code, "residence_division", hid)
        if len(household.members) > MAX_HOUSEHOLD_MEMBERS:
            raise InvalidRecord(
                f"at most {MAX_HOUSEHOLD_MEMBERS} members per household",
                reason="TOO_MANY_MEMBERS",
                field="members",
                record=hid,
            )
        lines = []
        for i, member in enumerate(household.members):
            _check_item_id(member.record_id, f"members[{i}].record_id", hid)
            if member.relation not in _RELATION_VALUES:
                raise InvalidRecord(
                    f"unknown relation value {member.relation}",
                    reason="UNKNOWN_ENUM_VALUE",
                    field=f"members[{i}].relation",
                    record=hid,
                )
            lines.append(f"{member.record_id}\t{member.relation}")
        if household.monthly_income_per_member_fen < 0:
            raise InvalidRecord(
                "monthly_income_per_member_fen must not be negative",
                reason="AMOUNT_NEGATIVE",
                field="monthly_income_per_member_fen",
                record=hid,
            )
        if household.income_unknown and household.monthly_income_per_member_fen:
            raise InvalidRecord(
                "an income is given although income_unknown is set",
                reason="INCOME_CONTRADICTORY",
                field="monthly_income_per_member_fen",
                record=hid,
            )
        return PreparedHousehold(
            position=index,
            household_id=hid,
            version=household.version,
            content_hash=household.content_hash,
            residence_division=household.residence_division,
            members="\n".join(lines),
            # Stored as -1 when not assessed: the wire never carries a negative income.
            monthly_income_per_member_fen=-1 if household.income_unknown else household.monthly_income_per_member_fen,
        )
