"""The record the linker consumes: a small, frozen view of one person record.

The hub builds one from what it holds (the unsealed ID number and name, the dates and divisions
of a ``PersonRecord``, the keys of the household's other members); the benchmark builds them from
FEBRL's columns. Nothing here is validated: linkage exists precisely for records whose fields are
wrong, missing or written differently from one province to the next.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["LinkageRecord"]


@dataclass(frozen=True, slots=True)
class LinkageRecord:
    """One person record as the linker sees it; every field but ``key`` may be empty."""

    #: Unique within an index, e.g. ``"440000/44-000000123"`` (province and record id).
    key: str
    #: The source: the province code that sent the record (or a dataset's name in a benchmark).
    province: str = ""
    #: The full name as written: simplified or traditional, with or without a middle dot.
    name: str = ""
    #: The ID number as written: may be 15 digits, mistyped, or empty.
    id_number: str = ""
    #: A date, or ``YYYYMMDD`` digits as written (which may not be a calendar date), or None.
    birth_date: dt.date | str | None = None
    #: ``Gender`` value: 0 unknown, 1 male, 2 female.
    gender: int = 0
    #: Division code of the hukou (户籍地), 6 digits; any hierarchical code compares by prefix.
    hukou_division: str = ""
    #: Division code of the residence (居住地).
    residence_division: str = ""
    #: The province's household id; only meaningful within one province.
    household_id: str = ""
    #: Keys of the household's *other* members (person keys, or their names): overlap is evidence.
    household_members: frozenset[str] = frozenset()
    #: Surname, when the source keeps it apart from the given name; else derived from ``name``.
    surname: str = ""
    #: Given name, when the source keeps it apart; else derived from ``name``.
    given_name: str = ""
    #: A free-text street address, when the source has one.
    address: str = ""
