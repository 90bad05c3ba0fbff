"""Access policy: purposes, what each purpose may see, and which enrollments exclude each other.

Minimal disclosure: ``CheckEnrollment`` answers only yes/no and the holding provinces;
``LookupPerson`` discloses the enrollment fields listed for the stated purpose and no others.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.domain.model import Program, Purpose
from gateway.errors import InvalidArgument

__all__ = [
    "DISCLOSED_FIELDS",
    "EXCLUSIVE_PROGRAMS",
    "disclosed_fields",
    "duplicate_programs",
    "require_purpose",
]

_BASE = frozenset({"province_code", "program", "status", "granting_division"})

#: Fields of ``ProvinceEnrollment`` / ``Enrollment`` each purpose may see.
DISCLOSED_FIELDS: Mapping[Purpose, frozenset[str]] = {
    # Reviewing eligibility needs the whole enrollment, amounts included, but not the
    # other province's record identifiers.
    Purpose.ELIGIBILITY_REVIEW: _BASE | {"start_date", "end_date", "monthly_amount_fen"},
    # A duplicate check needs to know when each enrollment ran, not how much it pays.
    Purpose.DUPLICATE_CHECK: _BASE | {"start_date", "end_date"},
    # An application elsewhere needs to know where the person is enrolled and since when.
    Purpose.CROSS_REGION_APPLICATION: _BASE | {"start_date"},
    # Following up an alert means contacting the holding province about its record.
    Purpose.MONITORING_FOLLOW_UP: _BASE | {"start_date", "end_date", "monthly_amount_fen", "record_id", "updated_at"},
    # Auditors see everything the hub holds about enrollments.
    Purpose.AUDIT: _BASE | {"start_date", "end_date", "monthly_amount_fen", "record_id", "updated_at"},
}

#: Programmes a person may receive from one province only: being active in two provinces at
#: once is a duplicate enrollment (重复享受). Temporary and special assistance may lawfully
#: be granted where an emergency happens, so they are not listed.
EXCLUSIVE_PROGRAMS: tuple[Program, ...] = (
    Program.DIBAO,
    Program.EXTREME_POVERTY,
    Program.DIBAO_MARGINAL,
    Program.RIGID_EXPENDITURE,
)


def require_purpose(value: int) -> Purpose:
    """The purpose of a query; refuses a missing or unknown one."""
    if value == Purpose.UNSPECIFIED:
        raise InvalidArgument("every query must state its purpose", reason="PURPOSE_MISSING", field="purpose")
    try:
        return Purpose(value)
    except ValueError:
        raise InvalidArgument(f"unknown purpose value {value}", reason="UNKNOWN_ENUM_VALUE", field="purpose") from None


def disclosed_fields(purpose: Purpose) -> frozenset[str]:
    """The enrollment fields a purpose may see."""
    return DISCLOSED_FIELDS[purpose]


def duplicate_programs(active_by_province: Mapping[str, int]) -> dict[Program, tuple[str, ...]]:
    """Exclusive programmes active in two or more provinces, with those provinces (sorted).

    ``active_by_province`` maps a 6-digit province code to its mask of active programmes
    (``Program.bit``) for one person.
    """
    found: dict[Program, tuple[str, ...]] = {}
    for program in EXCLUSIVE_PROGRAMS:
        holders = sorted(p for p, mask in active_by_province.items() if mask & program.bit)
        if len(holders) > 1:
            found[program] = tuple(holders)
    return found
