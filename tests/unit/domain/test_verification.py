"""The rules of household verification (gateway.domain.verification): classes, sensitivity, consent."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.domain.verification import (
    CONSENT_VALID_DAYS,
    Consent,
    ItemClass,
    Sensitivity,
    check_consent,
    default_sensitivity,
    item_class_named,
)
from gateway.errors import FailedPrecondition, InvalidArgument

TODAY = dt.date(2026, 11, 30)
HASH = "ab" * 32


def test_every_class_has_a_config_name_and_a_sensitivity() -> None:
    for item_class in ItemClass:
        if item_class is ItemClass.UNSPECIFIED:
            continue
        assert item_class_named(item_class.config_name) is item_class
        assert default_sensitivity(item_class) in (Sensitivity.GENERAL, Sensitivity.SENSITIVE)
    # Amounts held or earned are sensitive; registrations are not.
    assert default_sensitivity(ItemClass.DEPOSIT) is Sensitivity.SENSITIVE
    assert default_sensitivity(ItemClass.WAGE_INCOME) is Sensitivity.SENSITIVE
    assert default_sensitivity(ItemClass.VEHICLE) is Sensitivity.GENERAL
    assert item_class_named(" Real_Estate ") is ItemClass.REAL_ESTATE


def test_an_unknown_class_name_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match="real_estate") as refused:
        item_class_named("house", field="verification.sources[0].item_class")
    assert refused.value.field == "verification.sources[0].item_class"
    with pytest.raises(InvalidArgument):
        item_class_named("unspecified")


def test_a_consent_within_its_validity_is_accepted_up_to_the_last_day() -> None:
    check_consent(Consent("C-1", HASH, TODAY), today=TODAY)
    check_consent(Consent("C-1", HASH, TODAY - dt.timedelta(days=CONSENT_VALID_DAYS)), today=TODAY)
    check_consent(Consent("C-1", HASH, TODAY - dt.timedelta(days=30)), today=TODAY, valid_days=30)


@pytest.mark.parametrize(
    ("consent", "error", "reason", "field"),
    [
        (None, InvalidArgument, "CONSENT_MISSING", "consent.consent_id"),
        (Consent("  ", HASH, TODAY), InvalidArgument, "CONSENT_MISSING", "consent.consent_id"),
        (Consent("x" * 129, HASH, TODAY), InvalidArgument, "CONSENT_INVALID", "consent.consent_id"),
        (Consent("C-1", "AB" * 32, TODAY), InvalidArgument, "CONSENT_INVALID", "consent.document_sha256"),
        (Consent("C-1", HASH[:-1], TODAY), InvalidArgument, "CONSENT_INVALID", "consent.document_sha256"),
        (Consent("C-1", HASH, None), InvalidArgument, "CONSENT_INVALID", "consent.signed_on"),
        (Consent("C-1", HASH, TODAY + dt.timedelta(days=1)), InvalidArgument, "CONSENT_INVALID", "consent.signed_on"),
        (
            Consent("C-1", HASH, TODAY - dt.timedelta(days=CONSENT_VALID_DAYS + 1)),
            FailedPrecondition,
            "CONSENT_EXPIRED",
            "consent.signed_on",
        ),
    ],
)
def test_a_missing_malformed_future_or_expired_consent_is_refused(
    consent: Consent | None, error: type[Exception], reason: str, field: str
) -> None:
    with pytest.raises(error) as refused:
        check_consent(consent, today=TODAY)
    assert refused.value.reason == reason  # type: ignore[attr-defined]
    assert refused.value.field == field  # type: ignore[attr-defined]
