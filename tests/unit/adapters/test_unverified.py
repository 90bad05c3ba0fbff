"""``source.invalid_id_numbers = "send-unverified"``: rows wrong only in their ID number go out flagged."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from adapters.profile import ProfileError, parse_profile
from adapters.run import Reject, adapt, record_to_json
from gateway.domain.model import PersonRecord

ROOT = Path(__file__).resolve().parents[3]
PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
SAMPLE = ROOT / "adapters" / "samples" / "guangdong-440000.csv"


def run(invalid_ids: str | None) -> tuple[list[PersonRecord], list[Reject]]:
    data = tomllib.loads(PROFILE.read_text(encoding="utf-8"))
    if invalid_ids is not None:
        data["source"]["invalid_id_numbers"] = invalid_ids
    profile = parse_profile(data, path=PROFILE)
    records: list[PersonRecord] = []
    rejects: list[Reject] = []
    adapt(profile, [SAMPLE], on_record=records.append, on_reject=rejects.append)
    return records, rejects


def test_rows_wrong_only_in_their_id_number_are_sent_flagged() -> None:
    strict, strict_rejects = run(None)
    relaxed, relaxed_rejects = run("send-unverified")
    assert not any(r.id_number_unverified for r in strict)
    flagged = [r for r in relaxed if r.id_number_unverified]
    id_only = [
        rj for rj in strict_rejects if all(p.field == "id_number" or p.reason == "GENDER_MISMATCH" for p in rj.problems)
    ]
    assert flagged
    assert len(flagged) == len(id_only)
    assert len(relaxed) == len(strict) + len(flagged)
    assert len(relaxed_rejects) == len(strict_rejects) - len(flagged)
    # Every other rule still holds: the remaining rejects are not about the number alone.
    for rj in relaxed_rejects:
        assert any(p.field != "id_number" for p in rj.problems)
    assert '"idNumberUnverified": true' in record_to_json(flagged[0])


def test_the_setting_is_checked() -> None:
    with pytest.raises(ProfileError) as bad:
        run("guess")
    assert bad.value.field == "source.invalid_id_numbers"
