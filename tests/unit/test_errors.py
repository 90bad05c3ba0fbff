"""Errors keep what they say when they cross a process boundary (adapters may run in a process of their own)."""

from __future__ import annotations

import pickle

from gateway.errors import InvalidRecord


def test_an_error_survives_pickling_with_its_reason_field_and_record() -> None:
    error = InvalidRecord("bad date", reason="DATE_IMPOSSIBLE", field="birth_date", record="r-1", metadata={"a": "b"})
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(back) is InvalidRecord
    assert (back.message, back.reason, back.field, back.record, back.metadata) == (
        "bad date",
        "DATE_IMPOSSIBLE",
        "birth_date",
        "r-1",
        {"a": "b"},
    )
