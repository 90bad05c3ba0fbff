"""The domain's records and enumerations, free of any wire or storage format.

Records are plain slotted dataclasses, not frozen ones: they are built once per incoming
record on the hot ingest path, and a frozen dataclass costs six times as much to build.

The integer values of the enumerations equal those of the ``hutong.v1`` wire enums, so
converting between the two is a cast, not a lookup. Money is integer fen; dates are dates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "Enrollment",
    "EnrollmentStatus",
    "Gender",
    "Household",
    "HouseholdMember",
    "HouseholdRelation",
    "Outcome",
    "PersonRecord",
    "Program",
    "Purpose",
    "RetirementReason",
]


class Gender(IntEnum):
    """Gender as in GB/T 2261.1."""

    UNSPECIFIED = 0
    MALE = 1
    FEMALE = 2


class Program(IntEnum):
    """Social-assistance programmes."""

    UNSPECIFIED = 0
    DIBAO = 1  # 低保
    EXTREME_POVERTY = 2  # 特困人员
    DIBAO_MARGINAL = 3  # 低保边缘家庭
    RIGID_EXPENDITURE = 4  # 刚性支出困难家庭
    TEMPORARY_ASSISTANCE = 5  # 临时救助
    MEDICAL = 6
    EDUCATION = 7
    HOUSING = 8
    EMPLOYMENT = 9

    @property
    def bit(self) -> int:
        """This programme's bit in an active-programme mask."""
        return 1 << self.value


#: Every real programme, in wire order.
ALL_PROGRAMS: tuple[Program, ...] = tuple(p for p in Program if p is not Program.UNSPECIFIED)


class EnrollmentStatus(IntEnum):
    """State of one enrollment."""

    UNSPECIFIED = 0
    ACTIVE = 1
    SUSPENDED = 2
    EXITED = 3
    DECEASED = 4


class Purpose(IntEnum):
    """Why a caller asks; decides what is disclosed."""

    UNSPECIFIED = 0
    ELIGIBILITY_REVIEW = 1
    DUPLICATE_CHECK = 2
    CROSS_REGION_APPLICATION = 3
    MONITORING_FOLLOW_UP = 4
    AUDIT = 5


class Outcome(IntEnum):
    """What happened to one item of a batch."""

    UNSPECIFIED = 0
    CREATED = 1
    UPDATED = 2
    UNCHANGED = 3
    STALE = 4
    REJECTED = 5


class RetirementReason(IntEnum):
    """Why a record is retired."""

    UNSPECIFIED = 0
    EXITED = 1
    WITHDRAWN = 2
    DECEASED = 3
    MOVED_AWAY = 4


class HouseholdRelation(IntEnum):
    """Relation of a member to the head of the household."""

    UNSPECIFIED = 0
    HEAD = 1
    SPOUSE = 2
    CHILD = 3
    PARENT = 4
    GRANDCHILD = 5
    OTHER = 6


@dataclass(slots=True)
class Enrollment:
    """One enrollment of a person in one programme."""

    program: int
    status: int
    start_date: dt.date | None
    end_date: dt.date | None
    monthly_amount_fen: int
    granting_division: str


@dataclass(slots=True)
class PersonRecord:
    """A province's record of one person, as received (not yet validated)."""

    record_id: str
    version: int
    id_number: str
    name: str
    gender: int
    birth_date: dt.date | None
    hukou_division: str
    residence_division: str
    household_id: str
    enrollments: tuple[Enrollment, ...]
    #: Microseconds since the Unix epoch (UTC); 0 when the province did not say.
    updated_at_us: int
    #: Digest of the record's canonical encoding; equal records have equal digests.
    content_hash: bytes = field(default=b"", compare=False)
    #: The province cannot vouch for ``id_number`` (missing or invalid): linkage identifies the person.
    id_number_unverified: bool = False


@dataclass(slots=True)
class HouseholdMember:
    """One member of a household."""

    record_id: str
    relation: int


@dataclass(slots=True)
class Household:
    """A household as assessed for assistance."""

    household_id: str
    version: int
    residence_division: str
    members: tuple[HouseholdMember, ...]
    monthly_income_per_member_fen: int
    content_hash: bytes = field(default=b"", compare=False)
    #: The province did not assess the income (the amount above is then 0 and means nothing).
    income_unknown: bool = False
