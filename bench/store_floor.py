"""A store's floor: what the database alone takes, with no hub in front of it.

``store_floor`` writes rows shaped like the hub's own (prepared by the hub's preparer from the
benchmark's first batch: the same lengths of person key, sealed PII, enrollments and hashes) into
a database migrated to the hub's schema, through the engine the hub uses (SQLite: WAL,
``synchronous=FULL``, the same cache; PostgreSQL: COPY), in batches committed one at a time, the
way the hub commits them. Only the insert and the commit are timed. Every person key is new
random bytes (HMAC output is indistinguishable from that), so the person-key index takes random
inserts as it does in the hub.

The figure bounds the hub's ingest from above: whatever the hub does in Python, each record still
has to go through this.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.domain.protection import FieldSealer, PersonKeyer, generate_key_material
from gateway.domain.records import RecordPreparer
from gateway.hub.preparation import prepare_request
from gateway.store.sql import RECORD_COLUMNS
from gateway.store.sqlite import SqliteEngine

__all__ = ["StoreFloor", "sqlite_floor", "store_floor"]


@dataclass
class StoreFloor:
    rows: int
    seconds: float
    #: Rows/s over the last tenth of the rows: the rate once the index is at its largest.
    tail_rate: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _template(province: str, first_batch: bytes) -> list[tuple[object, ...]]:
    """The first batch as the hub's store would write it (prepared by the hub's own code)."""
    keys = generate_key_material()
    preparer = RecordPreparer(PersonKeyer(keys.person_key_secret, suite=keys.suite), FieldSealer(keys))
    prepared = prepare_request(preparer, province, first_batch, max_items=10_000)
    if prepared.batch is None or not prepared.batch.records:
        raise SystemExit("the benchmark's first batch prepared no record")
    return [
        (
            province, r.record_id, r.version, r.content_hash, r.person_key, r.sealed_pii, r.gender,
            r.birth_yyyymmdd, r.hukou_division, r.residence_division, r.household_id, r.enrollments,
            r.active_programs, r.updated_at_us, 0,
        )
        for r in prepared.batch.records
    ]  # fmt: skip


def sqlite_floor(province: str, first_batch: bytes, rows: int, *, batch: int = 1000, seed: int = 7) -> StoreFloor:
    """:func:`store_floor` on a fresh SQLite file with the hub's engine settings."""
    work = Path(tempfile.mkdtemp(prefix="hutong-bench-floor-"))
    try:
        return store_floor(SqliteEngine(work / "hub.db"), province, first_batch, rows, batch=batch, seed=seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def store_floor(
    engine: Any, province: str, first_batch: bytes, rows: int, *, batch: int = 1000, seed: int = 7
) -> StoreFloor:
    """Insert ``rows`` hub-shaped rows through ``engine`` (an empty database), ``batch`` per committed transaction."""
    template = _template(province, first_batch)
    rnd = random.Random(seed)
    con = engine.connect()
    try:
        engine.migrate(con)
        elapsed = tail = 0.0
        tail_from = rows - rows // 10
        done = 0
        while done < rows:
            n = min(batch, rows - done)
            chunk = []
            for i in range(n):
                t = template[(done + i) % len(template)]
                key = rnd.randbytes(len(t[4]))  # type: ignore[arg-type]
                chunk.append((t[0], f"floor-{done + i:010d}", t[2], rnd.randbytes(32), key, *t[5:]))
            started = time.perf_counter()
            con.execute(engine.begin)
            engine.insert_rows(con, "records", RECORD_COLUMNS, chunk)
            con.execute("COMMIT")
            spent = time.perf_counter() - started
            elapsed += spent
            if done >= tail_from:
                tail += spent
            done += n
    finally:
        con.close()
    tail_rows = rows - tail_from
    return StoreFloor(rows, elapsed, tail_rows / tail if tail else float("nan"))
