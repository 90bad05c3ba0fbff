"""Household economic-status verification (核对): item classes, their sensitivity, the consent rules.

Pure rules shared by the hub (which checks a request and fans it out) and the sources that answer
(province nodes and department sources, :mod:`gateway.node.verification`).

* Item classes follow MZ/T 073-2024 (data elements for verifying household economic status); each
  has a name used in config files (``real_estate``) and a default :class:`Sensitivity`: amounts
  held or earned are sensitive personal information (GB/T 35273 treats financial accounts and
  income so), registrations of property, vehicles and businesses are general.
* A verification needs the household's consent: an id, the SHA-256 of the signed document, and the
  day it was signed, not in the future and not older than the validity (default 180 days).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from gateway.domain.identity import parse_id_number
from gateway.errors import FailedPrecondition, InvalidArgument, InvalidIdNumber

__all__ = [
    "CHINA_TIME",
    "CONSENT_VALID_DAYS",
    "MAX_MEMBERS",
    "Consent",
    "ItemClass",
    "Sensitivity",
    "check_consent",
    "default_sensitivity",
    "item_class_named",
    "item_classes_asked",
    "member_id_numbers",
    "today_in_china",
]

#: China Standard Time (UTC+8, no daylight saving): the calendar consents are signed and counted in.
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "CST")
#: Days a signed consent stays valid unless the hub is configured otherwise.
CONSENT_VALID_DAYS = 180
#: Members one verification may name.
MAX_MEMBERS = 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ItemClass(IntEnum):
    """What a verification asks about (``hutong.v1.ItemClass``)."""

    UNSPECIFIED = 0
    WAGE_INCOME = 1
    PENSION = 2
    BUSINESS_REGISTRATION = 3
    REAL_ESTATE = 4
    VEHICLE = 5
    DEPOSIT = 6
    SECURITIES = 7
    COMMERCIAL_INSURANCE = 8
    HOUSING_FUND = 9

    @property
    def config_name(self) -> str:
        """The name in config files and reports: ``real_estate``."""
        return self.name.lower()


class Sensitivity(IntEnum):
    """How an item must be handled (``hutong.v1.Sensitivity``)."""

    UNSPECIFIED = 0
    GENERAL = 1
    SENSITIVE = 2


_SENSITIVE = {
    ItemClass.WAGE_INCOME,
    ItemClass.PENSION,
    ItemClass.DEPOSIT,
    ItemClass.SECURITIES,
    ItemClass.COMMERCIAL_INSURANCE,
    ItemClass.HOUSING_FUND,
}


def today_in_china() -> dt.date:
    """Today's date in China, whatever the server's time zone: the day a consent's age is counted on."""
    return dt.datetime.now(CHINA_TIME).date()


def default_sensitivity(item_class: ItemClass) -> Sensitivity:
    """The sensitivity of a class unless a source's mapping says otherwise."""
    return Sensitivity.SENSITIVE if item_class in _SENSITIVE else Sensitivity.GENERAL


def item_class_named(name: str, *, field: str = "item_class") -> ItemClass:
    """The class of a config name (``real_estate``); an InvalidArgument naming ``field`` otherwise."""
    try:
        found = ItemClass[name.strip().upper()]
    except KeyError:
        found = ItemClass.UNSPECIFIED
    if found is ItemClass.UNSPECIFIED:
        known = ", ".join(c.config_name for c in ItemClass if c is not ItemClass.UNSPECIFIED)
        raise InvalidArgument(
            f"{name!r} is not an item class (one of {known})", reason="ITEM_CLASS_UNKNOWN", field=field
        )
    return found


@dataclass(frozen=True, slots=True)
class Consent:
    """The household's signed authorization, as the requesting province references it."""

    consent_id: str
    document_sha256: str
    signed_on: dt.date | None


def check_consent(consent: Consent | None, *, today: dt.date, valid_days: int = CONSENT_VALID_DAYS) -> None:
    """Refuse a missing, malformed, future or expired consent, naming the field."""
    if consent is None or not consent.consent_id.strip():
        raise InvalidArgument(
            "a verification needs the household's consent: its id, document hash and signing date",
            reason="CONSENT_MISSING",
            field="consent.consent_id",
        )
    if len(consent.consent_id) > 128:
        raise InvalidArgument(
            "the consent id is longer than 128 characters", reason="CONSENT_INVALID", field="consent.consent_id"
        )
    if not _SHA256_HEX.fullmatch(consent.document_sha256):
        raise InvalidArgument(
            "the consent's document hash must be SHA-256 in lower-case hex (64 characters)",
            reason="CONSENT_INVALID",
            field="consent.document_sha256",
        )
    if consent.signed_on is None:
        raise InvalidArgument(
            "the consent's signing date is missing", reason="CONSENT_INVALID", field="consent.signed_on"
        )
    if consent.signed_on > today:
        raise InvalidArgument(
            f"the consent is dated {consent.signed_on.isoformat()}, after today",
            reason="CONSENT_INVALID",
            field="consent.signed_on",
        )
    expires = consent.signed_on + dt.timedelta(days=valid_days)
    if today > expires:
        raise FailedPrecondition(
            f"the consent signed on {consent.signed_on.isoformat()} expired on {expires.isoformat()} "
            f"(valid {valid_days} days): ask the household to sign a new one",
            reason="CONSENT_EXPIRED",
            field="consent.signed_on",
        )


def member_id_numbers(raw: Sequence[str]) -> list[str]:
    """The members' ID numbers, normalised (15 digits lengthened): 1 to MAX_MEMBERS, valid, none repeated.

    A bad one is an InvalidArgument naming ``members[i].id_number``, whose message, like every
    identity error, names positions and never the number.
    """
    if not 1 <= len(raw) <= MAX_MEMBERS:
        raise InvalidArgument(
            f"a verification names 1 to {MAX_MEMBERS} household members; got {len(raw)}",
            reason="MEMBERS_INVALID",
            field="members",
        )
    numbers: list[str] = []
    for index, value in enumerate(raw):
        try:
            number = parse_id_number(value).value
        except InvalidIdNumber as exc:
            exc.field = f"members[{index}].id_number"
            raise
        if number in numbers:
            raise InvalidArgument(
                f"members[{index}] repeats an earlier member",
                reason="MEMBER_DUPLICATE",
                field=f"members[{index}].id_number",
            )
        numbers.append(number)
    return numbers


def item_classes_asked(values: Sequence[int]) -> frozenset[ItemClass]:
    """The classes a verification asks for: at least one, each a known class; else naming ``item_classes[i]``."""
    if not values:
        raise InvalidArgument("ask for at least one item class", reason="ITEM_CLASSES_MISSING", field="item_classes")
    asked: set[ItemClass] = set()
    for index, value in enumerate(values):
        try:
            found = ItemClass(value)
        except ValueError:
            found = ItemClass.UNSPECIFIED
        if found is ItemClass.UNSPECIFIED:
            raise InvalidArgument(
                f"item class {value} is not one of hutong.v1.ItemClass",
                reason="ITEM_CLASS_UNKNOWN",
                field=f"item_classes[{index}]",
            )
        asked.add(found)
    return frozenset(asked)
