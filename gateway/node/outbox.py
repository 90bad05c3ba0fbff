"""The node's outbox: every record is here, durably, before anything is sent, and stays until acknowledged.

One SQLite file (WAL, ``synchronous=FULL``) holds:

- ``records``: per record id, the content digest and version last queued, the run that last saw
  it, what the hub last answered, and whether the hub holds it retired. ``details`` keeps each
  record's full wire form and where it was read from (the node's federation server answers from it).
- ``batches``: the serialized requests, in send order (``seq``). A batch's bytes are written once,
  in the same transaction as the records they carry, and resent byte for byte until the hub
  acknowledges them, so a resend after any crash is the same batch under the same ``batch_id``
  and the hub answers it with its original acknowledgement. ``batch_items`` says which digest of
  which record each batch carries, so an acknowledgement is applied exactly to what was sent.
- ``runs``: each ``hutong node sync`` over a set of files: its files, its state, the adapter's
  summary. A run interrupted anywhere is resumed by reading its files again: records already
  queued are recognised by their digest and not queued twice.
- ``rejects`` / ``hub_rejects``: rows the adapter refused and records the hub refused, per run.

An acknowledgement is applied in one transaction: the batch's counts, each record's outcome, the
hub's rejections. A batch already acknowledged is never counted again.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.domain.model import Household, PersonRecord
from gateway.errors import ConfigError, StoreError
from gateway.node.wire import batch_request, content_digest, household_to_proto, record_to_proto
from gateway.store.sqlite import check_database_file
from hutong.v1 import node_pb2, person_pb2, records_pb2

__all__ = ["RECORD_OUTCOMES", "Batch", "Outbox", "OutboxStatus", "RunInfo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    content_hash BLOB NOT NULL,
    seen_run INTEGER NOT NULL,
    outcome INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    retired_version INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS details (
    record_id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    file TEXT NOT NULL,
    location TEXT NOT NULL,
    exported_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS households (
    household_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    content_hash BLOB NOT NULL,
    seen_run INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL,
    files TEXT NOT NULL,
    state TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    ingested_us INTEGER,
    finished_us INTEGER,
    summary TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    items INTEGER NOT NULL,
    households INTEGER NOT NULL DEFAULT 0,
    request BLOB,
    created_us INTEGER NOT NULL,
    acked_us INTEGER,
    created INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    stale INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    replayed INTEGER NOT NULL DEFAULT 0,
    failure TEXT
);
CREATE INDEX IF NOT EXISTS batches_unacked ON batches (seq) WHERE acked_us IS NULL;
CREATE TABLE IF NOT EXISTS batch_items (
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    content_hash BLOB,
    version INTEGER NOT NULL,
    PRIMARY KEY (seq, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejects (
    run_id INTEGER NOT NULL,
    file TEXT NOT NULL,
    location TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (run_id, file, location)
);
CREATE TABLE IF NOT EXISTS hub_rejects (
    run_id INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, item_id)
) WITHOUT ROWID;
"""

#: Outcome numbers (records.proto ``Outcome``) and their names in summaries.
RECORD_OUTCOMES = ("created", "updated", "unchanged", "stale", "rejected")
_REJECTED = records_pb2.OUTCOME_REJECTED
_HELD_OUTCOMES = (
    records_pb2.OUTCOME_CREATED,
    records_pb2.OUTCOME_UPDATED,
    records_pb2.OUTCOME_UNCHANGED,
    records_pb2.OUTCOME_STALE,
)

#: Run states, in the order a run goes through them.
INGESTING, INGESTED, RETIRING, COMPLETE, ABANDONED = "ingesting", "ingested", "retiring", "complete", "abandoned"


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Batch:
    """One unacknowledged request, as it will be sent."""

    seq: int
    batch_id: str
    kind: str  # "sync" or "retire"
    run_id: int
    request: bytes


@dataclass(frozen=True)
class RunInfo:
    """One sync run."""

    run_id: int
    mode: str
    files: list[dict[str, Any]]
    state: str
    started_us: int
    finished_us: int | None
    summary: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class OutboxStatus:
    """What ``hutong node status`` shows of the outbox."""

    outbox_id: str
    records: int
    held_at_hub: int
    retired_at_hub: int
    unacked_batches: int
    unacked_items: int
    failed_batches: int
    last_ack_us: int | None
    last_error: str | None
    last_error_us: int | None
    last_run: RunInfo | None


class Outbox:
    """One connection to the outbox; open one per thread."""

    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        self._con = con
        self.path = path
        self.outbox_id = self._meta("outbox_id") or ""

    @classmethod
    def open(cls, path: str | Path) -> Outbox:
        """Open (creating if needed) the outbox at ``path``."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_database_file(path)  # 0600: the outbox holds the export's records in clear
            con = sqlite3.connect(path, isolation_level=None, timeout=60.0, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=OFF")
            con.executescript(_SCHEMA)
            # A node-unique prefix for batch ids: a rebuilt outbox never reuses an id the hub has seen.
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('outbox_id', ?)", (secrets.token_hex(6),))
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the outbox {path}: {exc}", reason="OUTBOX_UNREADABLE", field="outbox"
            ) from exc
        return cls(con, path)

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # -- runs ----------------------------------------------------------------------------------

    def open_run(self, mode: str, files: Sequence[Path]) -> tuple[RunInfo, bool]:
        """The run for these files: the unfinished one over the same files (resumed) or a new one.

        Without files, the unfinished run is resumed whatever its files; if there is none, a run
        with no files is made (it sends what the outbox holds). An unfinished run over other files
        is abandoned: what it queued is still sent, but it retires nothing.
        """
        wanted = [_file_identity(p) for p in files]
        with self._transaction() as con:
            row = con.execute(
                "SELECT run_id FROM runs WHERE state IN (?, ?, ?) ORDER BY run_id DESC LIMIT 1",
                (INGESTING, INGESTED, RETIRING),
            ).fetchone()
            if row is not None:
                run = self._run(int(row[0]))
                if not files or (run.files == wanted and run.mode == mode):
                    return run, True
                con.execute("UPDATE runs SET state=?, finished_us=? WHERE run_id=?", (ABANDONED, _now_us(), run.run_id))
            cur = con.execute(
                "INSERT INTO runs (mode, files, state, started_us) VALUES (?, ?, ?, ?)",
                (mode, json.dumps(wanted, ensure_ascii=False), INGESTING, _now_us()),
            )
            run_id = int(cur.lastrowid or 0)
        return self._run(run_id), False

    def _run(self, run_id: int) -> RunInfo:
        row = self._con.execute(
            "SELECT run_id, mode, files, state, started_us, finished_us, summary, error FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id} in the outbox", reason="RUN_UNKNOWN", field="run_id")
        return RunInfo(
            run_id=row[0],
            mode=row[1],
            files=json.loads(row[2]),
            state=row[3],
            started_us=row[4],
            finished_us=row[5],
            summary=json.loads(row[6]) if row[6] else None,
            error=row[7],
        )

    def run(self, run_id: int) -> RunInfo:
        """One run, as stored."""
        return self._run(run_id)

    def last_run(self) -> RunInfo | None:
        """The newest run, if any."""
        row = self._con.execute("SELECT max(run_id) FROM runs").fetchone()
        return None if row[0] is None else self._run(int(row[0]))

    def set_run_state(self, run_id: int, state: str, *, summary: dict[str, Any] | None = None) -> None:
        """Move a run on; a finished state stamps its end."""
        now = _now_us()
        with self._transaction() as con:
            con.execute(
                "UPDATE runs SET state=?, summary=coalesce(?, summary),"
                " ingested_us=CASE WHEN ?='ingested' THEN ? ELSE ingested_us END,"
                " finished_us=CASE WHEN ? IN ('complete', 'abandoned') THEN ? ELSE finished_us END WHERE run_id=?",
                (state, json.dumps(summary, ensure_ascii=False) if summary else None, state, now, state, now, run_id),
            )

    def note_error(self, message: str) -> None:
        """Remember the last error, for ``hutong node status``."""
        with self._transaction():
            self._set_meta("last_error", message)
            self._set_meta("last_error_us", str(_now_us()))

    # -- sending -------------------------------------------------------------------------------

    def next_batch(self, after_seq: int = 0) -> Batch | None:
        """The first unacknowledged batch after ``after_seq``, in send order."""
        row = self._con.execute(
            "SELECT seq, batch_id, kind, run_id, request FROM batches"
            " WHERE acked_us IS NULL AND seq > ? ORDER BY seq LIMIT 1",
            (after_seq,),
        ).fetchone()
        return None if row is None else Batch(row[0], row[1], row[2], row[3], row[4])

    def apply_sync_ack(self, batch: Batch, ack: records_pb2.SyncRecordsResponse) -> bool:
        """Apply the hub's acknowledgement of a sync batch; False if it was applied before (not counted again)."""
        now = _now_us()
        with self._transaction() as con:
            if con.execute("SELECT acked_us FROM batches WHERE seq=?", (batch.seq,)).fetchone()[0] is not None:
                return False
            items = con.execute(
                "SELECT idx, item_id, content_hash FROM batch_items WHERE seq=? ORDER BY idx", (batch.seq,)
            ).fetchall()
            records = [i for i in items if i[0] >= 0]
            households = sorted((i for i in items if i[0] < 0), key=lambda i: -i[0])  # idx -1 is the first
            failure = None
            if ack.HasField("batch_rejection"):
                r = ack.batch_rejection
                failure = f"{r.reason}: {r.message}"
                outcomes = [_REJECTED] * len(records)
                rejections = {i: r for i in range(len(records))}
            else:
                outcomes = list(ack.record_outcomes)
                if len(outcomes) != len(records):
                    raise StoreError(
                        f"the hub acknowledged {len(outcomes)} records of batch {batch.batch_id}, which holds"
                        f" {len(records)}",
                        reason="ACK_MISMATCH",
                        field="record_outcomes",
                    )
                rejections = {r.index: r for r in ack.record_rejections}
            con.executemany(
                "UPDATE records SET outcome=?, held=CASE WHEN ? THEN 1 ELSE held END"
                " WHERE record_id=? AND content_hash=?",
                [(o, o in _HELD_OUTCOMES, item[1], item[2]) for o, item in zip(outcomes, records, strict=True)],
            )
            hub_rejects = [
                (batch.run_id, records[i][1], "record", r.reason, r.field, r.message) for i, r in rejections.items()
            ]
            for r in ack.household_rejections:
                if 0 <= r.index < len(households):
                    hub_rejects.append(
                        (batch.run_id, households[r.index][1], "household", r.reason, r.field, r.message)
                    )
            con.executemany("INSERT OR REPLACE INTO hub_rejects VALUES (?, ?, ?, ?, ?, ?)", hub_rejects)
            counts = [sum(1 for o in outcomes if o == n) for n in range(1, 6)]
            con.execute(
                "UPDATE batches SET acked_us=?, request=NULL, created=?, updated=?, unchanged=?, stale=?, rejected=?,"
                " replayed=?, failure=? WHERE seq=?",
                (now, *counts, int(ack.replayed), failure, batch.seq),
            )
            con.execute("DELETE FROM batch_items WHERE seq=?", (batch.seq,))
            self._set_meta("last_ack_us", str(now))
        return True

    def apply_retire_ack(self, batch: Batch, ack: records_pb2.RetireRecordsResponse) -> bool:
        """Apply the hub's answer to a retirement request; False if it was applied before."""
        now = _now_us()
        with self._transaction() as con:
            if con.execute("SELECT acked_us FROM batches WHERE seq=?", (batch.seq,)).fetchone()[0] is not None:
                return False
            items = con.execute(
                "SELECT item_id, version FROM batch_items WHERE seq=? ORDER BY idx", (batch.seq,)
            ).fetchall()
            outcomes = list(ack.outcomes)
            rejections = {r.index: r for r in ack.rejections}
            retired = [(v, rid) for (rid, v), o in zip(items, outcomes, strict=False) if o != _REJECTED]
            con.executemany("UPDATE records SET held=0, retired_version=? WHERE record_id=?", retired)
            con.executemany(
                "INSERT OR REPLACE INTO hub_rejects VALUES (?, ?, 'retirement', ?, ?, ?)",
                [
                    (batch.run_id, items[i][0], r.reason, r.field, r.message)
                    for i, r in rejections.items()
                    if i < len(items)
                ],
            )
            counts = [sum(1 for o in outcomes if o == n) for n in range(1, 6)]
            con.execute(
                "UPDATE batches SET acked_us=?, request=NULL, created=?, updated=?, unchanged=?, stale=?, rejected=?,"
                " replayed=? WHERE seq=?",
                (now, *counts, int(ack.replayed), batch.seq),
            )
            con.execute("DELETE FROM batch_items WHERE seq=?", (batch.seq,))
            self._set_meta("last_ack_us", str(now))
        return True

    # -- retirements ---------------------------------------------------------------------------

    def retirement_candidates(self, run_id: int) -> tuple[int, int]:
        """(records the hub holds that run ``run_id`` did not see, records the hub holds)."""
        gone = self._con.execute(
            "SELECT count(*) FROM records WHERE held=1 AND retired_version=0 AND seen_run<>?", (run_id,)
        ).fetchone()[0]
        held = self._con.execute("SELECT count(*) FROM records WHERE held=1 AND retired_version=0").fetchone()[0]
        return int(gone), int(held)

    def queue_retirements(self, run_id: int, reason: int, batch_size: int) -> int:
        """Queue RetireRecords requests for every held record run ``run_id`` did not see; returns how many."""
        queued = 0
        while True:
            with self._transaction() as con:
                rows = con.execute(
                    "SELECT record_id, version FROM records WHERE held=1 AND retired_version=0 AND seen_run<>? LIMIT ?",
                    (run_id, batch_size),
                ).fetchall()
                if not rows:
                    return queued
                seq, request_id = self._new_batch_id(con)
                now = _now_us()
                items = [(rid, max(version + 1, now)) for rid, version in rows]
                request = records_pb2.RetireRecordsRequest(
                    request_id=request_id,
                    retirements=[
                        records_pb2.RecordRetirement(record_id=rid, version=v, reason=reason)  # type: ignore[arg-type]
                        for rid, v in items
                    ],
                )
                con.execute(
                    "INSERT INTO batches (seq, batch_id, kind, run_id, items, request, created_us)"
                    " VALUES (?, ?, 'retire', ?, ?, ?, ?)",
                    (seq, request_id, run_id, len(items), request.SerializeToString(), now),
                )
                con.executemany(
                    "INSERT INTO batch_items (seq, idx, item_id, content_hash, version) VALUES (?, ?, ?, NULL, ?)",
                    [(seq, i, rid, v) for i, (rid, v) in enumerate(items)],
                )
                # Queued: the record carries its retirement version now, so it is not queued twice.
                con.executemany(
                    "UPDATE records SET version=?, retired_version=? WHERE record_id=?",
                    [(v, v, rid) for rid, v in items],
                )
                queued += len(items)

    def _new_batch_id(self, con: sqlite3.Connection) -> tuple[int, str]:
        seq = int(con.execute("SELECT coalesce(max(seq), 0) + 1 FROM batches").fetchone()[0])
        return seq, f"{self.outbox_id}-{seq:010d}"

    # -- reading -------------------------------------------------------------------------------

    def run_counts(self, run_id: int) -> dict[str, int]:
        """Outcomes the hub gave this run's batches (each batch counted once), and what is still unacknowledged."""
        sync = "CASE WHEN kind='sync' THEN {} ELSE 0 END"
        row = self._con.execute(
            "SELECT "
            + ", ".join(f"coalesce(sum({sync.format(c)}), 0)" for c in (*RECORD_OUTCOMES, "items", "households"))
            + ", coalesce(sum(CASE WHEN kind='retire' AND acked_us IS NOT NULL THEN items - rejected ELSE 0 END), 0),"
            " coalesce(sum(acked_us IS NULL), 0), coalesce(sum(failure IS NOT NULL), 0)"
            " FROM batches WHERE run_id=?",
            (run_id,),
        ).fetchone()
        names = (*RECORD_OUTCOMES, "queued", "households", "retired", "unacked_batches", "failed_batches")
        return dict(zip(names, (int(v) for v in row), strict=True))

    def rejects(self, run_id: int) -> Iterator[str]:
        """The adapter's rejects of a run, one JSON line each."""
        for (body,) in self._con.execute("SELECT body FROM rejects WHERE run_id=? ORDER BY rowid", (run_id,)):
            yield body

    def hub_rejects(self, run_id: int) -> list[dict[str, str]]:
        """What the hub refused in a run: kind, item id, reason, field, message."""
        return [
            {"kind": k, "id": i, "reason": r, "field": f, "message": m}
            for i, k, r, f, m in self._con.execute(
                "SELECT item_id, kind, reason, field, message FROM hub_rejects WHERE run_id=? ORDER BY kind, item_id",
                (run_id,),
            )
        ]

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        """The record as last read from the province's export, with where it was read and when (unfiltered)."""
        row = self._con.execute(
            "SELECT body, file, location, exported_us FROM details WHERE record_id=?", (record_id,)
        ).fetchone()
        if row is None:
            return None
        body, file, location, exported_us = row
        detail = node_pb2.RecordDetail(record=person_pb2.PersonRecord.FromString(body))
        detail.source.file = file
        detail.source.location = location
        detail.exported_at.FromMicroseconds(exported_us)
        return detail

    def status(self) -> OutboxStatus:
        """Depth, last acknowledgement and last error."""
        con = self._con
        records, held, retired = con.execute(
            "SELECT count(*), coalesce(sum(held), 0), coalesce(sum(retired_version > 0), 0) FROM records"
        ).fetchone()
        batches, items = con.execute(
            "SELECT count(*), coalesce(sum(items + households), 0) FROM batches WHERE acked_us IS NULL"
        ).fetchone()
        failed = con.execute("SELECT count(*) FROM batches WHERE failure IS NOT NULL").fetchone()[0]
        last_ack = self._meta("last_ack_us")
        error_us = self._meta("last_error_us")
        return OutboxStatus(
            outbox_id=self.outbox_id,
            records=int(records),
            held_at_hub=int(held),
            retired_at_hub=int(retired),
            unacked_batches=int(batches),
            unacked_items=int(items),
            failed_batches=int(failed),
            last_ack_us=int(last_ack) if last_ack else None,
            last_error=self._meta("last_error"),
            last_error_us=int(error_us) if error_us else None,
            last_run=self.last_run(),
        )


class RunWriter:
    """Puts one run's records, households and rejects into the outbox; cuts them into batches.

    Used from the thread that runs the adapter. Records go into the open batch only when their
    content differs from what was last queued; a batch is written, with its records, in one
    transaction once it is full, and the sender is told. Unchanged records are only marked seen;
    those marks are committed every ``commit_rows`` rows, so a crash loses at most that much
    re-reading.
    """

    def __init__(
        self,
        outbox: Outbox,
        run_id: int,
        *,
        batch_size: int,
        versions_from_source: bool,
        on_batch: Any = None,
        commit_rows: int = 20_000,
    ) -> None:
        if not outbox.outbox_id:
            raise ConfigError("the outbox has no id", reason="OUTBOX_UNREADABLE", field="outbox")
        self._outbox = outbox
        self._con = outbox._con
        self._run = run_id
        self._batch_size = batch_size
        self._from_source = versions_from_source
        self._on_batch = on_batch
        self._commit_rows = commit_rows
        self._records: list[tuple[str, bytes, bytes, int]] = []  # id, digest, body, version
        self._ids: set[str] = set()
        self._households: list[tuple[str, bytes, bytes, int]] = []
        self._uncommitted = 0
        self._in_txn = False
        self.queued = 0
        self.unchanged = 0

    def _begin(self) -> sqlite3.Connection:
        if not self._in_txn:
            self._con.execute("BEGIN IMMEDIATE")
            self._in_txn = True
        return self._con

    def _commit(self) -> None:
        if self._in_txn:
            self._con.execute("COMMIT")
            self._in_txn = False
            self._uncommitted = 0

    def add_record(self, record: PersonRecord, file: str, location: str) -> None:
        """One record the adapter produced, read at ``location`` (``line 12``) of ``file``."""
        pb = record_to_proto(record)
        digest = content_digest(pb)
        rid = record.record_id
        con = self._begin()
        held = con.execute(
            "SELECT version, content_hash, retired_version FROM records WHERE record_id=?", (rid,)
        ).fetchone()
        if held is not None and held[1] == digest and held[2] == 0:
            con.execute("UPDATE records SET seen_run=? WHERE record_id=?", (self._run, rid))
            self.unchanged += 1
            self._uncommitted += 1
            if self._uncommitted >= self._commit_rows:
                # A partial batch goes with the marks: a record is never committed without its batch.
                self._flush()
            return
        if rid in self._ids:  # the export repeats a record id with other content: it goes in the next batch
            self._flush()
            con = self._begin()
        # Without versions in the export the node numbers them: later than anything queued before, even
        # from a rebuilt outbox (the hub keeps the newest version it was sent).
        version = record.version if self._from_source else max(_now_us(), 0 if held is None else held[0] + 1)
        pb.version = version
        body = pb.SerializeToString()
        con.execute(
            "INSERT INTO records (record_id, version, content_hash, seen_run) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (record_id) DO UPDATE SET version=excluded.version, content_hash=excluded.content_hash,"
            " seen_run=excluded.seen_run, outcome=0, retired_version=0",
            (rid, version, digest, self._run),
        )
        con.execute(
            "INSERT OR REPLACE INTO details (record_id, body, file, location, exported_us) VALUES (?, ?, ?, ?, ?)",
            (rid, body, file, location, _now_us()),
        )
        self._records.append((rid, digest, body, version))
        self._ids.add(rid)
        self._uncommitted += 1
        if len(self._records) >= self._batch_size or self._uncommitted >= self._commit_rows:
            self._flush()

    def add_household(self, household: Household) -> None:
        """One household grouped from the run's records."""
        pb = household_to_proto(household)
        digest = content_digest(pb)
        con = self._begin()
        held = con.execute(
            "SELECT version, content_hash FROM households WHERE household_id=?", (household.household_id,)
        ).fetchone()
        if held is not None and held[1] == digest:
            con.execute("UPDATE households SET seen_run=? WHERE household_id=?", (self._run, household.household_id))
            return
        version = max(_now_us(), 0 if held is None else held[0] + 1)
        if household.version > 1:
            version = household.version
        pb.version = version
        con.execute(
            "INSERT OR REPLACE INTO households (household_id, version, content_hash, seen_run) VALUES (?, ?, ?, ?)",
            (household.household_id, version, digest, self._run),
        )
        self._households.append((household.household_id, digest, pb.SerializeToString(), version))
        if len(self._households) >= self._batch_size:
            self._flush()

    def add_reject(self, file: str, location: str, body: str) -> None:
        """A row the adapter refused (kept with every reason, once per run however often it is read)."""
        self._begin().execute(
            "INSERT OR IGNORE INTO rejects (run_id, file, location, body) VALUES (?, ?, ?, ?)",
            (self._run, file, location, body),
        )

    def _flush(self) -> None:
        if not self._records and not self._households:
            self._commit()
            return
        con = self._begin()
        seq, batch_id = self._outbox._new_batch_id(con)
        request = batch_request(batch_id, (r[2] for r in self._records), (h[2] for h in self._households))
        con.execute(
            "INSERT INTO batches (seq, batch_id, kind, run_id, items, households, request, created_us)"
            " VALUES (?, ?, 'sync', ?, ?, ?, ?, ?)",
            (seq, batch_id, self._run, len(self._records), len(self._households), request, _now_us()),
        )
        rows = [(seq, i, r[0], r[1], r[3]) for i, r in enumerate(self._records)]
        rows += [(seq, -1 - i, h[0], h[1], h[3]) for i, h in enumerate(self._households)]
        con.executemany(
            "INSERT INTO batch_items (seq, idx, item_id, content_hash, version) VALUES (?, ?, ?, ?, ?)", rows
        )
        self._commit()
        self.queued += len(self._records)
        self._records.clear()
        self._ids.clear()
        self._households.clear()
        if self._on_batch is not None:
            self._on_batch()

    def finish(self) -> None:
        """Write the last, partial batch."""
        self._flush()

    def abort(self) -> None:
        """Drop what is not committed (the adapter failed)."""
        if self._in_txn:
            self._con.execute("ROLLBACK")
            self._in_txn = False
        self._records.clear()
        self._ids.clear()
        self._households.clear()


def _file_identity(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", reason="FILE_UNREADABLE", field=str(path)) from None
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
