"""A generated population with planted duplicates, and a model trained on it (once per session).

The persons are the demo's; a fifth of the households move to another province and are
registered again, their records carrying the errors linkage must see through (missing, 15-digit
and mistyped ID numbers, homophones, traditional characters, dot variants, swapped day and month).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from dataclasses import dataclass, replace

import pytest
from opencc import OpenCC

from gateway.demo.population import PopulationSpec, generate_population
from gateway.domain.divisions import counties_of
from gateway.domain.linkage import LinkageModel, LinkageRecord, TrainingSettings, normalize_name, train_model

PROVINCES = ("440000", "410000", "650000")
# Homophone pairs among common given-name characters (同音字).
HOMOPHONES = {"英": "瑛", "伟": "玮", "华": "桦", "兰": "岚", "军": "君", "静": "靖", "丽": "莉", "明": "鸣"}


@dataclass(frozen=True)
class Population:
    """Records in arrival order and the true person (original ID number) of each."""

    records: tuple[LinkageRecord, ...]
    person_of: dict[str, str]


def _garble(record: LinkageRecord, rng: random.Random, s2t: OpenCC) -> tuple[str, str, dt.date | None]:
    name = record.name
    if "·" in name:
        name = name.replace("·", rng.choice(("•", "・", "", "·")))
    else:
        roll = rng.random()
        if roll < 0.2:
            name = name[:1] + "".join(HOMOPHONES.get(c, c) for c in name[1:])
        elif roll < 0.3:
            name = s2t.convert(name)
    id_number = record.id_number
    roll = rng.random()
    if roll < 0.4:
        id_number = ""
    elif roll < 0.5 and id_number[6:8] == "19":
        id_number = id_number[:6] + id_number[8:17]
    elif roll < 0.6:
        digits = list(id_number)
        i = rng.randrange(17)
        digits[i] = str((int(digits[i]) + 1) % 10)
        id_number = "".join(digits)
    birth = record.birth_date if isinstance(record.birth_date, dt.date) else None
    if birth is not None and rng.random() < 0.1 and birth.day <= 12 and birth.day != birth.month:
        birth = dt.date(birth.year, birth.day, birth.month)
    return name, id_number, birth


def build_population(persons_per_province: int, seed: int) -> Population:
    """The demo's persons, plus second records for a fifth of the households, in another province."""
    rng = random.Random(seed)
    s2t = OpenCC("s2t")
    spec = PopulationSpec(PROVINCES, persons_per_province, mover_share=0.0, bad_share=0.0, seed=seed)
    households: dict[str, list[LinkageRecord]] = defaultdict(list)
    person_of: dict[str, str] = {}
    for province, pbs in generate_population(spec).by_province.items():
        for pb in pbs:
            birth = (
                dt.date(pb.birth_date.year, pb.birth_date.month, pb.birth_date.day)
                if pb.HasField("birth_date")
                else None
            )
            record = LinkageRecord(
                key=f"{province}/{pb.record_id}",
                province=province,
                name=pb.name,
                id_number=pb.id_number if rng.random() > 0.05 else "",
                birth_date=birth,
                gender=int(pb.gender),
                hukou_division=pb.hukou_division,
                residence_division=pb.residence_division,
                household_id=f"{province}/{pb.household_id}",
            )
            person_of[record.key] = pb.id_number
            households[record.household_id].append(record)
    moved: dict[str, list[LinkageRecord]] = {}
    number = 0
    for household, members in list(households.items()):
        if rng.random() >= 0.2:
            continue
        destination = rng.choice([p for p in PROVINCES if p != members[0].province])
        county = rng.choice(counties_of(destination))
        group = []
        for member in members:
            number += 1
            name, id_number, birth = _garble(replace(member, id_number=person_of[member.key]), rng, s2t)
            key = f"{destination}/D{number:06d}"
            person_of[key] = person_of[member.key]
            group.append(
                replace(
                    member,
                    key=key,
                    province=destination,
                    name=name,
                    id_number=id_number,
                    birth_date=birth,
                    residence_division=county,
                    household_id=f"{destination}/M{household}",
                )
            )
        moved[f"{destination}/M{household}"] = group
    records: list[LinkageRecord] = []
    for group in (*households.values(), *moved.values()):
        records.extend(
            replace(r, household_members=frozenset(normalize_name(o.name) for o in group if o is not r)) for r in group
        )
    originals = [r for r in records if "/D" not in r.key]
    seconds = [r for r in records if "/D" in r.key]
    return Population(tuple(originals + seconds), person_of)


@pytest.fixture(scope="session")
def population() -> Population:
    """About 2,100 originals and 450 second records."""
    return build_population(700, seed=11)


@pytest.fixture(scope="session")
def model(population: Population) -> LinkageModel:
    """A model trained on :func:`population`."""
    return train_model(population.records, TrainingSettings(random_pairs=50_000, seed=3))
