"""The hub's store in SQL, on any :class:`~gateway.store.engine.Engine`: SQLite or PostgreSQL.

Writes go through one dedicated writer thread with its own connection (the thread keeps the
event loop free while the database works). Writes that queue up behind a running transaction
are committed together (group commit, see ``_write``); the transaction begins with the engine's
``begin``, which excludes every other writer — SQLite's one writer, or, on PostgreSQL, every
other hub replica's writer (a transaction-scoped advisory lock): one sequencer through the
database for the exchange log. Reads use a second connection: on the event loop's thread for
an embedded engine, where indexed lookups take microseconds, else in a reader thread.
Audit reads (proofs, searches, exports) may scan, and get their own connection and thread.

:mod:`gateway.store.sqlite` and :mod:`gateway.store.postgres` give the engines and the store
classes a hub opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import structlog

from gateway.audit import (
    AuditEntry,
    HashFn,
    MerkleAccumulator,
    TreeRangeInvalid,
    consistency_path,
    inclusion_path,
    sha256,
)
from gateway.domain.linkage import LinkageModel
from gateway.domain.model import Outcome, Program
from gateway.domain.policy import EXCLUSIVE_PROGRAMS, duplicate_programs
from gateway.domain.records import PreparedBatch, Rejection, Retirement, decide_outcome
from gateway.errors import FailedPrecondition, ResourceExhausted, StoreError, StoreUnavailable
from gateway.store import tiers, verifications
from gateway.store.base import (
    AuditFilter,
    BatchAck,
    Finding,
    HeldEnrollments,
    HubStats,
    LineageView,
    NodeRef,
    RecordKey,
    RetireAck,
    ReviewDecisionResult,
    ReviewView,
    SplitResult,
    SyncState,
    decode_rejections,
    encode_rejections,
)
from gateway.store.engine import Connection, Engine
from gateway.store.sqlite_audit import (
    AuditLedger,
    list_entries,
    read_entries,
    stored_tree,
    subtree_hash,
)
from gateway.store.sqlite_linkage import LinkageLedger, LinkageStatus, store_model
from gateway.store.sqlite_loop import (
    EVENT_KINDS,
    LoopEvent,
    LoopLedger,
    PreparedSignal,
    ProvinceLoop,
    ReportResult,
    SignalOutcome,
)
from gateway.store.tiers import TierCount
from gateway.store.verifications import StoredVerification

__all__ = ["NodeTotals", "SqlStore", "finding_id"]

T = TypeVar("T")
log = structlog.get_logger("hutong.store")

_CHUNK = 500
#: A queued write: the function, its arguments, and where to deliver its result.
_Job = tuple[Any, tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
#: Most writes committed together in one transaction (group commit).
_MAX_GROUP = 16
_EXCLUSIVE_MASK = sum(p.bit for p in EXCLUSIVE_PROGRAMS)
_REJECTED = int(Outcome.REJECTED)
#: The outcome columns of node_state, in order.
_SYNC_OUTCOMES = (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.STALE, Outcome.REJECTED)
_WRITTEN = (int(Outcome.CREATED), int(Outcome.UPDATED))


def _now_us() -> int:
    return time.time_ns() // 1000


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _province_literal(province: str) -> str:
    """A province code as an SQL literal, for the statements that must name their partition when planned.

    A generic plan (see :mod:`gateway.store.postgres`) prunes partitions only at run time and
    costs a lookup of 500 record ids as if it read them all; with the code in the text the one
    partition is planned for (one prepared statement per province). Codes come from certificates
    and are checked to be six digits here, so nothing else can reach the SQL.
    """
    if len(province) != 6 or not province.isdigit():
        raise StoreError(f"not a province code: {province!r}", reason="PROVINCE_CODE_INVALID")
    return f"'{province}'"


def _in(engine: Engine, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """``column IN (…)`` for ``values``: one array parameter where the engine has arrays, else one mark each.

    With an array the statement is the same whatever the count, so PostgreSQL prepares and plans
    it once; a list of marks is a new statement (and plan) for every length.
    """
    if len(values) == 1:
        # One value (a CheckEnrollment): plain equality, which PostgreSQL plans once, generically.
        return f"{column} = ?", list(values)
    if engine.arrays:
        if isinstance(values[0], bytes):
            # Person keys are looked up across every partition of records. PostgreSQL plans an
            # ANY list element by element for each partition (measured: 18 ms to plan a lookup of
            # 500 keys); as a set to join with, it plans the partitions once (5 ms).
            return f"{column} IN (SELECT unnest(?::bytea[]))", [list(values)]
        return f"{column} = ANY(?)", [list(values)]
    return f"{column} IN ({_marks(len(values))})", list(values)


def _version_conflict(index: int, item_id: str, version: int) -> Rejection:
    return Rejection(
        index,
        item_id,
        "VERSION_CONFLICT",
        "version",
        f"version {version} is already held with different content; send a higher version",
        "FAILED_PRECONDITION",
    )


def _store_error(exc: BaseException, errors: tuple[type[BaseException], ...]) -> BaseException:
    if not isinstance(exc, errors):
        return exc
    # SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100): nothing was applied, and the same write
    # will succeed once space is freed, so the caller is told to retry later, not that it failed.
    if getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL" or getattr(exc, "sqlstate", None) == "53100":
        return ResourceExhausted(
            "the hub's database has no space left; nothing was applied: send it again later", reason="STORE_FULL"
        )
    return StoreError(f"database write failed: {exc}", reason="STORE_WRITE_FAILED")


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller gave up (cancelled); the write stands regardless
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def finding_id(person_key: bytes, program: int) -> str:
    """Stable opaque id of the finding about one person and programme."""
    return hashlib.blake2b(person_key + bytes([program]), digest_size=12).hexdigest()


#: The columns a new record is written with (the retirement columns take their defaults).
RECORD_COLUMNS = (
    "province", "record_id", "version", "content_hash", "person_key", "sealed_pii", "gender", "birth_date",
    "hukou_division", "residence_division", "household_id", "enrollments", "active_programs", "updated_at_us",
    "received_at_us",
)  # fmt: skip

_INSERT_RECORD = """
INSERT INTO records (province, record_id, version, content_hash, person_key, sealed_pii, gender,
    birth_date, hukou_division, residence_division, household_id, enrollments, active_programs,
    updated_at_us, received_at_us, retired_reason, retired_at_us)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,0)"""

_UPSERT_RECORD = (
    _INSERT_RECORD
    + """
ON CONFLICT (province, record_id) DO UPDATE SET
    version = excluded.version, content_hash = excluded.content_hash,
    person_key = excluded.person_key, sealed_pii = excluded.sealed_pii, gender = excluded.gender,
    birth_date = excluded.birth_date, hukou_division = excluded.hukou_division,
    residence_division = excluded.residence_division, household_id = excluded.household_id,
    enrollments = excluded.enrollments, active_programs = excluded.active_programs,
    updated_at_us = excluded.updated_at_us, received_at_us = excluded.received_at_us,
    retired_reason = 0, retired_at_us = 0
"""
)

_UPSERT_HOUSEHOLD = """
INSERT INTO households (province, household_id, version, content_hash, residence_division, members,
    income_fen, received_at_us)
VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (province, household_id) DO UPDATE SET
    version = excluded.version, content_hash = excluded.content_hash,
    residence_division = excluded.residence_division, members = excluded.members,
    income_fen = excluded.income_fen, received_at_us = excluded.received_at_us
"""


class NodeTotals(NamedTuple):
    """What one node has synced (``node_state``)."""

    province: str
    node: str
    last_batch_at_us: int
    batches: int
    counts: dict[Outcome, int]


class SqlStore:
    """The Store protocol in SQL, on one engine."""

    def __init__(self, engine: Engine, *, audit_hash: HashFn = sha256, readers: int = 4) -> None:
        self.engine = engine
        #: Reader threads (engines without inline reads): reads in flight at once.
        self.readers = readers
        self._ledger = AuditLedger(audit_hash)
        self.loop = LoopLedger()
        #: Whether the hub tiers persons (gateway.hub.tiering): changes then mark whom to decide again.
        self.tiering = False
        self._audit_executor: ThreadPoolExecutor | None = None
        self._audit_reader: Connection | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queued: deque[_Job] = deque()
        self._writer: Connection | None = None
        self._reader: Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, apply pending migrations, load the exchange log's state."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.engine.name}-writer")
        try:
            self._writer = await self._in_writer(self.engine.connect)
            await self._in_writer(self.engine.migrate, self._w)
            await self._in_writer(self._ledger.load, self._w)
            if not self.engine.inline_reads:
                self._read_executor = ThreadPoolExecutor(
                    max_workers=self.readers, thread_name_prefix=f"{self.engine.name}-reader"
                )
            self._reader = self.engine.connect(readonly=True)
            self._audit_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.engine.name}-audit")
            self._audit_reader = self.engine.connect(readonly=True)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Let queued writes finish, then close."""
        if self._executor is None:
            return
        if self._writer is not None:
            await self._in_writer(self._writer.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        for executor in (self._audit_executor, self._read_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self._audit_executor = self._read_executor = None
        for con in (self._reader, self._audit_reader):
            if con is not None:
                con.close()
        self._writer = self._reader = self._audit_reader = None
        self.engine.close()

    @property
    def schema_version(self) -> int:
        """The applied migration version."""
        return self.engine.schema_version(self._r)

    @property
    def _w(self) -> Connection:
        if self._writer is None:
            raise StoreError("store is not open", reason="STORE_CLOSED")
        return self._writer

    @property
    def _r(self) -> Connection:
        if self._reader is None:
            raise StoreError("store is not open", reason="STORE_CLOSED")
        return self._reader

    async def _in_writer(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreError("store is not open", reason="STORE_CLOSED")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(reader, *args)``: inline on an embedded engine, else in a reader thread with a pooled connection."""
        if self._read_executor is None:
            return fn(self._r, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self._pooled, fn, args)

    def _pooled(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # A pooled connection the server dropped (a restart) is found out by using it: a read is
        # safe to run again, on the next connection (the pool discards the broken one); after a
        # restart every pooled connection is broken, so as many times as the pool holds.
        attempts = self.readers + 1
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.reading() as con:
                    try:
                        return fn(con, *args)
                    except self.engine.errors:
                        if attempt < attempts and not self.engine.alive(con):
                            continue
                        raise
            except self.engine.errors as exc:
                raise StoreUnavailable(f"database read failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(con, *args)`` in a transaction; return its result once committed.

        Group commit: writes that queue up while the writer is busy are applied together in
        one transaction, each inside its own savepoint, so one fsync and one set of index-page
        writes serve them all; a write that fails is rolled back alone and the others commit.
        """
        if self._executor is None:
            raise StoreError("store is not open", reason="STORE_CLOSED")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((fn, args, loop, future))
        self._executor.submit(self._commit_group)
        return await future

    def _commit_group(self) -> None:
        jobs: list[_Job] = []
        while self._queued and len(jobs) < _MAX_GROUP:
            jobs.append(self._queued.popleft())
        if not jobs:
            return  # an earlier group took them
        outcomes: list[tuple[bool, Any]] = []
        try:
            con = self._writable()
        except StoreError as exc:
            self._deliver(jobs, [(False, exc)] * len(jobs))
            return
        # The audit log's Merkle state follows the transaction: back to the mark on rollback.
        group_mark = self._ledger.mark()
        try:
            con.execute(self.engine.begin)
            if self.engine.shared:
                self._ledger.follow(con)
                group_mark = self._ledger.mark()
            # Savepoint statements go with the next one (one round trip on a server, not two).
            pending: list[str] = []
            for n, (fn, args, _loop, _future) in enumerate(jobs):
                self.engine.script(con, [*pending, f"SAVEPOINT job{n}"])
                job_mark = self._ledger.mark()
                try:
                    outcomes.append((True, fn(con, *args)))
                except Exception as exc:
                    con.execute(f"ROLLBACK TO job{n}")
                    self._ledger.reset(job_mark)
                    outcomes.append((False, _store_error(exc, self.engine.errors)))
                pending = [f"RELEASE job{n}"]
            self._ledger.save(con)
            self.engine.script(con, [*pending, "COMMIT"])
        except BaseException as exc:
            with contextlib.suppress(*self.engine.errors):  # a broken connection has nothing to roll back
                if con.in_transaction:
                    con.execute("ROLLBACK")
            self._ledger.reset(group_mark)
            failure = _store_error(exc, self.engine.errors) if isinstance(exc, Exception) else exc
            if isinstance(exc, self.engine.errors) and not self.engine.alive(con):
                # The connection died under the transaction: it was not committed (or, if the
                # COMMIT itself was lost, it is idempotent by its request or batch id). Retryable.
                failure = StoreUnavailable(f"lost the database connection: {exc}")
            outcomes = [(False, failure)] * len(jobs)
            if not isinstance(exc, Exception):
                self._deliver(jobs, outcomes)
                raise
        self._deliver(jobs, outcomes)

    def _writable(self) -> Connection:
        """The writer's connection, opened again if the server dropped it (a restart, a failover)."""
        con = self._w
        if self.engine.alive(con):
            return con
        log.warning("store_reconnecting", engine=self.engine.name, database=self.engine.describe())
        with contextlib.suppress(*self.engine.errors):
            con.close()
        self._writer = con = self.engine.connect()
        # Whatever the lost connection had not committed is gone; the tree and the linkage index
        # are read back from what was (both check the database in the next transaction).
        self._ledger.load(con)
        return con

    @staticmethod
    def _deliver(jobs: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
        for (_fn, _args, loop, future), (ok, value) in zip(jobs, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, future, ok, value)

    # -- sync --------------------------------------------------------------------------------

    async def apply_batch(
        self,
        node: NodeRef,
        batch_id: str,
        digest: bytes,
        batch: PreparedBatch,
        audit: Callable[[BatchAck], AuditEntry] | None = None,
    ) -> BatchAck:
        """Apply one batch in one transaction; see :class:`gateway.store.base.Store`."""
        ack: BatchAck = await self._write(self._apply_audited, node, batch_id, digest, batch, audit)
        return ack

    def _apply_audited(
        self,
        con: Connection,
        node: NodeRef,
        batch_id: str,
        digest: bytes,
        batch: PreparedBatch,
        audit: Callable[[BatchAck], AuditEntry] | None,
    ) -> BatchAck:
        ack = self._apply_batch(con, node, batch_id, digest, batch)
        if audit is not None:
            self._ledger.append(con, [audit(ack)])
        return ack

    def _apply_batch(
        self, con: Connection, node: NodeRef, batch_id: str, digest: bytes, batch: PreparedBatch
    ) -> BatchAck:
        province = node.province_code
        now = _now_us()
        row = con.execute(
            "SELECT digest, applied_at_us, record_outcomes, household_outcomes, record_rejections,"
            " household_rejections FROM batches WHERE province=? AND node=? AND batch_id=?",
            (province, node.node_name, batch_id),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                return BatchAck(
                    batch_id, b"", b"", [], [], now,
                    batch_rejection=Rejection(
                        -1, batch_id, "BATCH_ID_REUSED", "batch_id",
                        "this batch_id was already applied with different content; use a new batch_id",
                        "FAILED_PRECONDITION",
                    ),
                )  # fmt: skip
            return BatchAck(
                batch_id, row[2], row[3], decode_rejections(row[4]), decode_rejections(row[5]), row[1],
                replayed=True,
            )  # fmt: skip

        outcomes = bytearray([_REJECTED]) * batch.record_count
        rejections = list(batch.record_rejections)
        held = self._held_records(con, province, [r.record_id for r in batch.records])
        # New records take a plain INSERT, which is cheaper than the upsert (no conflict check
        # on the way); a record created and updated within one batch is inserted, then updated.
        created: list[tuple[Any, ...]] = []
        updated: list[tuple[Any, ...]] = []
        touched: set[bytes] = set()
        elsewhere: list[tuple[str, int, str, bytes, int]] = []
        new_records = retired_revived = 0
        watermark = 0
        for r in batch.records:
            h = held.get(r.record_id)
            outcome = decide_outcome(None if h is None else (h[0], h[1]), r.version, r.content_hash)
            if outcome is None:
                rejections.append(_version_conflict(r.position, r.record_id, r.version))
                continue
            outcomes[r.position] = outcome
            if outcome is Outcome.CREATED or outcome is Outcome.UPDATED:
                if h is None:
                    new_records += 1
                    if r.active_programs & _EXCLUSIVE_MASK:
                        touched.add(r.person_key)
                else:
                    if h[4]:
                        retired_revived += 1
                    if h[2] != r.person_key and h[3] & _EXCLUSIVE_MASK:
                        touched.add(h[2])
                    if (h[2] != r.person_key or h[3] != r.active_programs or h[4]) and (
                        (h[3] | r.active_programs) & _EXCLUSIVE_MASK
                    ):
                        touched.add(r.person_key)
                if r.active_programs and (h is None or not h[3] or h[4]) and r.hukou_division[:2] != province[:2]:
                    # Newly assisted here, with hukou elsewhere: the hukou province is told (异地享受).
                    first = (r.active_programs & -r.active_programs).bit_length() - 1
                    elsewhere.append((r.record_id, r.version, r.hukou_division, r.person_key, first))
                held[r.record_id] = (r.version, r.content_hash, r.person_key, r.active_programs, 0)
                watermark = max(watermark, r.updated_at_us)
                (created if h is None else updated).append(
                    (
                        province, r.record_id, r.version, r.content_hash, r.person_key, r.sealed_pii,
                        r.gender, r.birth_yyyymmdd, r.hukou_division, r.residence_division,
                        r.household_id, r.enrollments, r.active_programs, r.updated_at_us, now,
                    )
                )  # fmt: skip
        if created:
            # The bulk of an initial sync: the engine's fastest way in (PostgreSQL: COPY).
            self.engine.insert_rows(con, "records", RECORD_COLUMNS, created)
        if updated:
            con.executemany(_UPSERT_RECORD, updated)
        h_outcomes = bytearray([_REJECTED]) * batch.household_count
        h_rejections = list(batch.household_rejections)
        self._apply_households(con, province, batch, h_outcomes, h_rejections, now)
        if self.linkage is not None:
            # Identity linkage: unverified records are linked (and re-keyed) before findings are
            # refreshed; after the households, whose co-members are evidence.
            touched |= self.linkage.link_batch(con, self._ledger, node, batch_id, batch.records, outcomes, now)
            # A linked unverified record now answers to its cluster's person key: the hukou
            # province is told about the person it knows, with its own records of them.
            elsewhere = [(*e[:3], self.linkage.person_key_of(province, e[0], e[3]), e[4]) for e in elsewhere]
        if touched:
            self._refresh_findings(con, province, touched, now)
        if elsewhere:
            self.loop.resident_enrolled(con, province, elsewhere, now)
        if self.loop.rules is not None:
            # Monitoring rules look at households whose income or members' enrollments just changed.
            changed = {row[10] for row in (*created, *updated) if row[10]}
            changed.update(h.household_id for h in batch.households if h_outcomes[h.position] in _WRITTEN)
            if changed:
                self.loop.monitor(con, province, sorted(changed), now)
        if self.tiering:
            # Tiers look at households' income and members too: their members are decided again.
            households = [h.household_id for h in batch.households if h_outcomes[h.position] in _WRITTEN]
            if households:
                tiers.mark_households(con, province, households, now)

        rejections.sort(key=lambda x: x.index)
        h_rejections.sort(key=lambda x: x.index)
        ack = BatchAck(batch_id, bytes(outcomes), bytes(h_outcomes), rejections, h_rejections, now)
        con.execute(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?)",
            (
                province, node.node_name, batch_id, digest, now, ack.record_outcomes,
                ack.household_outcomes, encode_rejections(rejections), encode_rejections(h_rejections),
            ),
        )  # fmt: skip
        counts = ack.counts()
        con.execute(
            "INSERT INTO node_state (province, node, last_batch_id, last_batch_at_us, batches_applied,"
            " created, updated, unchanged, stale, rejected) VALUES (?,?,?,?,1,?,?,?,?,?)"
            " ON CONFLICT (province, node) DO UPDATE SET last_batch_id=excluded.last_batch_id,"
            " last_batch_at_us=excluded.last_batch_at_us, batches_applied=node_state.batches_applied+1,"
            " created=node_state.created+excluded.created, updated=node_state.updated+excluded.updated,"
            " unchanged=node_state.unchanged+excluded.unchanged, stale=node_state.stale+excluded.stale,"
            " rejected=node_state.rejected+excluded.rejected",
            (
                province, node.node_name, batch_id, now, counts[Outcome.CREATED], counts[Outcome.UPDATED],
                counts[Outcome.UNCHANGED], counts[Outcome.STALE], counts[Outcome.REJECTED],
            ),
        )  # fmt: skip
        self._bump_province(con, province, new_records, -retired_revived, watermark)
        return ack

    @staticmethod
    def _bump_province(con: Connection, province: str, held: int, retired: int, watermark: int) -> None:
        con.execute(
            "INSERT INTO province_state (province, records_held, records_retired, watermark_us)"
            " VALUES (?,?,?,?) ON CONFLICT (province) DO UPDATE SET"
            " records_held=province_state.records_held+excluded.records_held,"
            " records_retired=province_state.records_retired+excluded.records_retired,"
            " watermark_us=CASE WHEN excluded.watermark_us > province_state.watermark_us"
            " THEN excluded.watermark_us ELSE province_state.watermark_us END",
            (province, held, retired, watermark),
        )

    def _held_records(
        self, con: Connection, province: str, record_ids: Sequence[str]
    ) -> dict[str, tuple[int, bytes, bytes, int, int]]:
        held: dict[str, tuple[int, bytes, bytes, int, int]] = {}
        unique = list(dict.fromkeys(record_ids))
        for chunk in _chunks(unique):
            where, args = _in(self.engine, "record_id", chunk)
            for rid, version, content_hash, person_key, active, retired in con.execute(
                "SELECT record_id, version, content_hash, person_key, active_programs, retired_reason"
                f" FROM records WHERE province={_province_literal(province)} AND {where}",
                args,
            ):
                held[rid] = (version, content_hash, person_key, active, retired)
        return held

    def _apply_households(
        self,
        con: Connection,
        province: str,
        batch: PreparedBatch,
        outcomes: bytearray,
        rejections: list[Rejection],
        now: int,
    ) -> None:
        if not batch.households:
            return
        held: dict[str, tuple[int, bytes]] = {}
        ids = list(dict.fromkeys(h.household_id for h in batch.households))
        for chunk in _chunks(ids):
            where, args = _in(self.engine, "household_id", chunk)
            for hid, version, content_hash in con.execute(
                "SELECT household_id, version, content_hash FROM households"
                f" WHERE province={_province_literal(province)} AND {where}",
                args,
            ):
                held[hid] = (version, content_hash)
        rows = []
        for h in batch.households:
            outcome = decide_outcome(held.get(h.household_id), h.version, h.content_hash)
            if outcome is None:
                rejections.append(_version_conflict(h.position, h.household_id, h.version))
                continue
            outcomes[h.position] = outcome
            if outcome is Outcome.CREATED or outcome is Outcome.UPDATED:
                held[h.household_id] = (h.version, h.content_hash)
                rows.append(
                    (
                        province, h.household_id, h.version, h.content_hash, h.residence_division,
                        h.members, h.monthly_income_per_member_fen, now,
                    )
                )  # fmt: skip
        if rows:
            con.executemany(_UPSERT_HOUSEHOLD, rows)

    def _refresh_findings(self, con: Connection, province: str, person_keys: Iterable[bytes], now: int) -> None:
        """Re-evaluate duplicate enrollments of the given persons and record what changed (and mark their tiers).

        ``province`` is the one whose records changed. Most persons are held by one province
        only; SQL narrows the work to those with an exclusive programme active in another
        province or with an open finding, so the Python loop below runs for the few, not for
        every record of the batch.
        """
        keys = list(person_keys)
        if self.tiering:
            tiers.mark_dirty(con, keys, now)
        candidates: set[bytes] = set()
        for chunk in _chunks(keys):
            where, args = _in(self.engine, "person_key", chunk)
            candidates.update(
                bytes(key)
                for (key,) in con.execute(
                    f"SELECT person_key FROM records WHERE {where} AND province <> ?"
                    f" AND retired_reason=0 AND (active_programs & {_EXCLUSIVE_MASK}) <> 0",
                    (*args, province),
                )
            )
            candidates.update(
                bytes(key)
                for (key,) in con.execute(f"SELECT DISTINCT person_key FROM findings WHERE {where} AND is_open=1", args)
            )
        if not candidates:
            return
        masks: dict[bytes, dict[str, int]] = defaultdict(dict)
        existing: dict[tuple[bytes, int], tuple[str, str, int, int]] = {}
        ordered = sorted(candidates)
        for chunk in _chunks(ordered):
            where, args = _in(self.engine, "person_key", chunk)
            for key, province, active in con.execute(
                "SELECT person_key, province, active_programs FROM records"
                f" WHERE {where} AND retired_reason=0 AND active_programs<>0",
                args,
            ):
                by_province = masks[key]
                by_province[province] = by_province.get(province, 0) | active
            for fid, key, program, provinces, is_open, detected in con.execute(
                "SELECT finding_id, person_key, program, provinces, is_open, detected_at_us FROM findings"
                f" WHERE {where}",
                args,
            ):
                existing[(key, program)] = (fid, provinces, is_open, detected)
        for key in ordered:
            for program, provinces in duplicate_programs(masks.get(key, {})).items():
                joined = ",".join(provinces)
                prior = existing.pop((key, int(program)), None)
                fid, detected = finding_id(key, program), now
                if prior is None:
                    con.execute("INSERT INTO findings VALUES (?,?,?,?,1,?,0)", (fid, key, int(program), joined, now))
                elif not prior[2]:
                    con.execute(
                        "UPDATE findings SET provinces=?, is_open=1, detected_at_us=?, resolved_at_us=0"
                        " WHERE finding_id=?",
                        (joined, now, prior[0]),
                    )
                elif prior[1] != joined:
                    con.execute("UPDATE findings SET provinces=? WHERE finding_id=?", (joined, prior[0]))
                    detected = prior[3]  # the same occurrence: only provinces not told yet are told
                else:
                    continue
                self.loop.finding_opened(
                    con,
                    finding_id=fid,
                    person_key=key,
                    program=int(program),
                    provinces=provinces,
                    detected_at_us=detected,
                    now=now,
                )
        for fid, _provinces, is_open, _detected in existing.values():
            if is_open:
                con.execute("UPDATE findings SET is_open=0, resolved_at_us=? WHERE finding_id=?", (now, fid))

    # -- retire ------------------------------------------------------------------------------

    async def retire_records(
        self,
        node: NodeRef,
        request_id: str,
        retirements: Sequence[Retirement],
        rejected: Sequence[Rejection],
        count: int,
    ) -> RetireAck:
        """Retire records idempotently; see :class:`gateway.store.base.Store`."""
        ack: RetireAck = await self._write(self._retire, node, request_id, retirements, rejected, count)
        return ack

    def _retire(
        self,
        con: Connection,
        node: NodeRef,
        request_id: str,
        retirements: Sequence[Retirement],
        rejected: Sequence[Rejection],
        count: int,
    ) -> RetireAck:
        province = node.province_code
        digest = hashlib.sha256(
            repr(
                (
                    [(r.index, r.record_id, r.version, int(r.reason)) for r in retirements],
                    [(r.index, r.item_id, r.reason) for r in rejected],
                )
            ).encode()
            + str(count).encode()
        ).digest()
        row = con.execute(
            "SELECT digest, response FROM requests WHERE province=? AND node=? AND request_id=?",
            (province, node.node_name, request_id),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                return RetireAck(
                    b"",
                    [
                        Rejection(
                            -1, request_id, "REQUEST_ID_REUSED", "request_id",
                            "this request_id was already used for a different request; use a new request_id",
                            "FAILED_PRECONDITION",
                        )
                    ],
                )  # fmt: skip
            outcomes_hex, _, rejections_json = row[1].partition("\n")
            return RetireAck(bytes.fromhex(outcomes_hex), decode_rejections(rejections_json), replayed=True)
        now = _now_us()
        outcomes = bytearray([_REJECTED]) * count
        rejections = list(rejected)
        held = self._held_records(con, province, [r.record_id for r in retirements])
        touched: set[bytes] = set()
        persons: set[bytes] = set()
        gone: list[tuple[str, int, bytes, int]] = []
        newly_retired = 0
        for r in retirements:
            h = held.get(r.record_id)
            content_hash = hashlib.sha256(f"retired/{r.version}/{int(r.reason)}".encode()).digest()[:16]
            if h is None:
                rejections.append(
                    Rejection(
                        r.index, r.record_id, "RECORD_NOT_FOUND", "record_id",
                        "the hub holds no record with this id for the calling province", "NOT_FOUND",
                    )
                )  # fmt: skip
                continue
            persons.add(h[2])
            outcome = decide_outcome((h[0], h[1]), r.version, content_hash)
            if outcome is None:
                rejections.append(_version_conflict(r.index, r.record_id, r.version))
                continue
            if outcome is Outcome.UPDATED:
                con.execute(
                    "UPDATE records SET version=?, content_hash=?, retired_reason=?, retired_at_us=?"
                    " WHERE province=? AND record_id=?",
                    (r.version, content_hash, int(r.reason), now, province, r.record_id),
                )
                if not h[4]:
                    newly_retired += 1
                    gone.append((r.record_id, r.version, h[2], int(r.reason)))
                if h[3] & _EXCLUSIVE_MASK:
                    touched.add(h[2])
                held[r.record_id] = (r.version, content_hash, h[2], h[3], int(r.reason))
            outcomes[r.index] = outcome
        if touched:
            self._refresh_findings(con, province, touched, now)
        if gone:
            self.loop.retired(con, province, gone, now)
            if self.linkage is not None:
                self.linkage.retired(con, self._ledger, node, request_id, [g[0] for g in gone], now)
        self._bump_province(con, province, 0, newly_retired, 0)
        rejections.sort(key=lambda x: x.index)
        con.execute(
            "INSERT INTO requests VALUES (?,?,?,?,?,?,?)",
            (
                province, node.node_name, request_id, "RetireRecords", digest,
                f"{bytes(outcomes).hex()}\n{encode_rejections(rejections)}", now,
            ),
        )  # fmt: skip
        return RetireAck(bytes(outcomes), rejections, person_keys=tuple(sorted(persons)))

    # -- reads -------------------------------------------------------------------------------

    async def node_totals(self) -> list[NodeTotals]:
        """Every node that synced: its last batch and its records acknowledged, by outcome; in order."""

        def read(con: Connection) -> list[NodeTotals]:
            return [
                NodeTotals(province, node, last_at, batches, dict(zip(_SYNC_OUTCOMES, counts, strict=True)))
                for province, node, last_at, batches, *counts in con.execute(
                    "SELECT province, node, last_batch_at_us, batches_applied, created, updated, unchanged, stale,"
                    " rejected FROM node_state ORDER BY province, node"
                )
            ]

        return await self._read(read)

    async def records_held(self) -> dict[str, int]:
        """Live records per province, from the province counters (one row each: cheap to scrape)."""

        return await self._read(self._records_held)

    @staticmethod
    def _records_held(con: Connection) -> dict[str, int]:
        return {p: int(n) for p, n in con.execute("SELECT province, records_held FROM province_state")}

    async def synced_per_hour(self, since_us: int) -> list[tuple[str, int, int]]:
        """Records acknowledged per province and hour (hours since the epoch) from ``since_us``: (province, hour, n)."""

        def read(con: Connection) -> list[tuple[str, int, int]]:
            return [
                (province, int(hour), int(n))
                for province, hour, n in con.execute(
                    "SELECT province, applied_at_us / 3600000000 AS hour, sum(length(record_outcomes)) FROM batches"
                    " WHERE applied_at_us >= ? GROUP BY province, applied_at_us / 3600000000 ORDER BY province, hour",
                    (since_us,),
                )
            ]

        return await self._read(read)

    async def sync_state(self, node: NodeRef) -> SyncState:
        """What the hub holds for this node and its province."""
        return await self._read(self._sync_state, node)

    @staticmethod
    def _sync_state(con: Connection, node: NodeRef) -> SyncState:
        n = con.execute(
            "SELECT last_batch_id, last_batch_at_us, batches_applied, created, updated, unchanged, stale,"
            " rejected FROM node_state WHERE province=? AND node=?",
            (node.province_code, node.node_name),
        ).fetchone() or ("", 0, 0, 0, 0, 0, 0, 0)
        p = con.execute(
            "SELECT records_held, records_retired, watermark_us FROM province_state WHERE province=?",
            (node.province_code,),
        ).fetchone() or (0, 0, 0)
        counts = dict(
            zip(
                (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.STALE, Outcome.REJECTED),
                n[3:],
                strict=True,
            )
        )
        return SyncState(n[0], n[1], n[2], p[0], p[1], counts, p[2])

    async def enrollments_of(self, person_keys: Sequence[bytes]) -> dict[bytes, list[HeldEnrollments]]:
        """Live records of the given persons, by person key."""
        return await self._read(self._enrollments_of, person_keys)

    def _enrollments_of(self, con: Connection, person_keys: Sequence[bytes]) -> dict[bytes, list[HeldEnrollments]]:
        out: dict[bytes, list[HeldEnrollments]] = {}
        for chunk in _chunks(person_keys):
            where, args = _in(self.engine, "person_key", chunk)
            for key, province, record_id, enrollments, active, updated_at in con.execute(
                "SELECT person_key, province, record_id, enrollments, active_programs, updated_at_us FROM records"
                f" WHERE {where} AND retired_reason=0",
                args,
            ):
                out.setdefault(bytes(key), []).append(
                    HeldEnrollments(province, record_id, bytes(enrollments), active, updated_at)
                )
        return out

    # -- the closed loop (gateway.store.sqlite_loop) ----------------------------------------------

    async def events_after(self, province: str, after: int, limit: int = 500) -> list[LoopEvent]:
        """A province's events with a sequence above ``after``, in order."""
        return await self._read(self.loop.events_after, province, after, limit)

    async def event_cursor(self, node: NodeRef) -> int:
        """The node's cursor: its province's events up to it were acknowledged (by a node of the province)."""
        return await self._read(self.loop.cursor, node.province_code, node.node_name)

    async def acknowledge_events(self, node: NodeRef, event_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Mark events delivered by ``node``; (its new cursor, ids that are not its province's events)."""
        result: tuple[int, list[str]] = await self._write(
            lambda con: self.loop.acknowledge(con, node.province_code, node.node_name, event_ids, _now_us())
        )
        return result

    async def report_outcome(
        self, node: NodeRef, request_id: str, event_id: str, outcome: int, reason: str
    ) -> ReportResult | None:
        """Record what the province did; None when the event is not one of its province's. Idempotent by request_id."""
        result: ReportResult | None = await self._write(self._report, node, request_id, event_id, outcome, reason)
        return result

    def _report(
        self, con: Connection, node: NodeRef, request_id: str, event_id: str, outcome: int, reason: str
    ) -> ReportResult | None:
        province = node.province_code
        digest = hashlib.sha256(f"{event_id}\n{outcome}\n{reason}".encode()).digest()
        earlier = self._replayed(con, node, request_id, digest)
        if earlier is not None:
            return ReportResult(int(earlier["recorded_at_us"]), True, bool(earlier["closed"]))
        held = self.loop.event(con, event_id)
        if held is None or held[0] != province:
            return None
        result = self.loop.report(
            con,
            province=province,
            node=node.node_name,
            event_id=event_id,
            outcome=outcome,
            reason=reason,
            now=_now_us(),
        )
        con.execute(
            "INSERT INTO requests VALUES (?,?,?,?,?,?,?)",
            (
                province, node.node_name, request_id, "ReportOutcome", digest,
                json.dumps({"recorded_at_us": result.recorded_at_us, "closed": result.closed}), result.recorded_at_us,
            ),
        )  # fmt: skip
        return result

    # -- tiers (gateway.store.tiers) ----------------------------------------------------------------

    async def tier_counts(self) -> list[TierCount]:
        """Persons per province and tier (the untiered as tier ''), in order."""
        return await self._read(tiers.tier_counts)

    async def tier_of(self, person_key: bytes) -> tiers.StoredTier | None:
        """A person's stored tier decision (its evidence reproduces it)."""
        return (await self._read(tiers.current, [person_key])).get(person_key)

    async def tier_inputs_loaded(
        self, *, rules: tuple[bytes, str, str], standards: tuple[bytes, str]
    ) -> tuple[tuple[bytes, bytes, str] | None, str | None, bool, bool]:
        """Keep the rule set and registry the hub runs with, by digest.

        ``rules`` is (digest, version, canonical text), ``standards`` (digest, canonical text). Returns
        the state before (the digests and day decisions were made under), the text of its registry,
        and whether the rules and the registry are new to this database.
        """

        def load(con: Connection) -> tuple[tuple[bytes, bytes, str] | None, str | None, bool, bool]:
            now = _now_us()
            before = tiers.state(con)
            old_text = tiers.inputs_of(con, before[1]) if before is not None else None
            rules_new = tiers.record_inputs(
                con, digest=rules[0], kind="rules", version=rules[1], text=rules[2], now=now
            )
            standards_new = tiers.record_inputs(
                con, digest=standards[0], kind="standards", version="", text=standards[1], now=now
            )
            return before, old_text, rules_new, standards_new

        result: tuple[tuple[bytes, bytes, str] | None, str | None, bool, bool] = await self._write(load)
        return result

    async def tier_remark(
        self, *, everyone: bool, prefixes: Iterable[str], rules_digest: bytes, standards_digest: bytes, day: str
    ) -> None:
        """Mark everyone, or the residents under ``prefixes``, and record what decisions are now made under."""

        def remark(con: Connection) -> None:
            now = _now_us()
            if everyone:
                tiers.mark_all(con, now)
            else:
                tiers.mark_residences(con, prefixes, now)
            tiers.set_state(con, rules_digest, standards_digest, day)

        await self._write(remark)

    async def tier_work(
        self, limit: int
    ) -> tuple[list[tuple[bytes, int]], dict[bytes, tiers.PersonInputs], dict[bytes, tiers.StoredTier]]:
        """Up to ``limit`` persons marked for a decision, with their inputs and stored decisions."""

        def read(
            con: Connection,
        ) -> tuple[list[tuple[bytes, int]], dict[bytes, tiers.PersonInputs], dict[bytes, tiers.StoredTier]]:
            marks = tiers.take_dirty(con, limit)
            keys = [k for k, _ in marks]
            return marks, tiers.person_inputs(con, keys), tiers.current(con, keys)

        return await self._read(read)

    async def tier_decided(
        self,
        marks: Sequence[tuple[bytes, int]],
        decisions: Sequence[tiers.Decided],
        forgotten: Sequence[bytes],
        *,
        rules_digest: bytes,
        standards_digest: bytes,
        day: str,
    ) -> None:
        """Store decisions, tell provinces of changed tiers, forget persons no longer held; unmark (one transaction)."""

        def write(con: Connection) -> None:
            now = _now_us()
            for d in decisions:
                tiers.write_decision(
                    con, decided=d, rules_digest=rules_digest, standards_digest=standards_digest, day=day, now=now
                )
                if d.changed:
                    for province, record_ids in sorted(d.records.items()):
                        self.loop.push(
                            con,
                            province=province,
                            kind=EVENT_KINDS["tier_changed"],
                            subject=f"tier:{d.person_key.hex()}:{d.evidence_digest.hex()[:24]}",
                            fields={
                                "tier": d.tier,
                                "previousTier": d.previous_tier,
                                "recordIds": record_ids,
                                "summary": d.summary,
                            },
                            now=now,
                        )
            tiers.forget(con, forgotten)
            tiers.done(con, marks)

        await self._write(write)

    # -- verifications (gateway.store.verifications) ------------------------------------------------

    async def start_verification(self, v: StoredVerification) -> tuple[StoredVerification, bool]:
        """Store a new verification; or (the one its province's request id started, True)."""
        result: tuple[StoredVerification, bool] = await self._write(verifications.start, v)
        return result

    async def verification(self, verification_id: str) -> StoredVerification | None:
        """A verification by id (from the writer's view: a replica sees what another committed)."""
        return await self._read(verifications.find, verification_id)

    async def claim_pending_verifications(self, *, lease_us: int, limit: int = 100) -> list[StoredVerification]:
        """Pending verifications no replica holds, held by this one for ``lease_us``."""
        claimed: list[StoredVerification] = await self._write(
            lambda con: verifications.claim_pending(con, now=_now_us(), lease_us=lease_us, limit=limit)
        )
        return claimed

    async def complete_verification(
        self, verification_id: str, sealed_report: bytes, summary: str
    ) -> StoredVerification | None:
        """Store the report, mark it complete and tell the requesting province (one transaction).

        None when it was complete already (another replica finished it first): nothing is pushed twice.
        """

        def complete(con: Connection) -> StoredVerification | None:
            now = _now_us()
            done = verifications.complete(con, verification_id, sealed_report, now)
            if done is not None:
                self.loop.push(
                    con,
                    province=done.province,
                    kind=EVENT_KINDS["verification_completed"],
                    subject=f"verification:{verification_id}",
                    fields={"verificationId": verification_id, "summary": summary},
                    now=now,
                )
            return done

        result: StoredVerification | None = await self._write(complete)
        return result

    async def submit_signals(
        self, node: NodeRef, request_id: str, digest: bytes, signals: Sequence[PreparedSignal]
    ) -> tuple[list[SignalOutcome], bool]:
        """Push each signal to the provinces that must act; (outcomes, replayed). Idempotent by request_id."""
        result: tuple[list[SignalOutcome], bool] = await self._write(
            self._submit_signals, node, request_id, digest, signals
        )
        return result

    def _submit_signals(
        self, con: Connection, node: NodeRef, request_id: str, digest: bytes, signals: Sequence[PreparedSignal]
    ) -> tuple[list[SignalOutcome], bool]:
        earlier = self._replayed(con, node, request_id, digest)
        if earlier is not None:
            return [
                SignalOutcome(o["index"], o["signal_id"], tuple(o["provinces"]), o["matched"]) for o in earlier
            ], True
        now = _now_us()
        outcomes = self.loop.submit_signals(con, node.uri, signals, now)
        response = json.dumps(
            [
                {"index": o.index, "signal_id": o.signal_id, "provinces": o.provinces, "matched": o.matched}
                for o in outcomes
            ]
        )
        con.execute(
            "INSERT INTO requests VALUES (?,?,?,?,?,?,?)",
            (node.province_code, node.node_name, request_id, "SubmitSignals", digest, response, now),
        )
        return outcomes, False

    async def mark_overdue(self) -> int:
        """Escalate events past their deadline without an outcome; returns how many."""
        n: int = await self._write(lambda con: self.loop.mark_overdue(con, _now_us()))
        return n

    async def loop_state(self) -> list[ProvinceLoop]:
        """Per province: pushed, acknowledged, reported, overdue, open."""
        return await self._read(self.loop.loop_state)

    async def loop_by_kind(self) -> list[tuple[str, str, int, int, int, int]]:
        """Per province and kind of event: pushed, acknowledged, answered, overdue."""
        return await self._read(self.loop.loop_by_kind)

    async def record_monitoring_rules(self, digest: bytes, text: str) -> bool:
        """Remember the monitoring rules the hub runs with; True when they are new to this hub."""
        new: bool = await self._write(lambda con: self.loop.record_rules(con, digest, text, _now_us()))
        return new

    async def findings_of(self, person_key: bytes) -> list[Finding]:
        """Findings about one person, open first, newest first."""

        def read(con: Connection) -> list[Finding]:
            return [
                Finding(fid, Program(program), tuple(provinces.split(",")), bool(is_open), detected, resolved)
                for fid, program, provinces, is_open, detected, resolved in con.execute(
                    "SELECT finding_id, program, provinces, is_open, detected_at_us, resolved_at_us FROM findings"
                    " WHERE person_key=? ORDER BY is_open DESC, detected_at_us DESC",
                    (person_key,),
                )
            ]

        return await self._read(read)

    async def stats(self) -> HubStats:
        """Totals across the hub."""
        return await self._read(self._stats)

    @staticmethod
    def _stats(con: Connection) -> HubStats:
        by_province = SqlStore._records_held(con)
        retired = int(con.execute("SELECT coalesce(sum(records_retired), 0) FROM province_state").fetchone()[0])
        households = con.execute("SELECT count(*) FROM households").fetchone()[0]
        open_by_program = {
            Program(program): n
            for program, n in con.execute("SELECT program, count(*) FROM findings WHERE is_open=1 GROUP BY program")
        }
        resolved = con.execute("SELECT count(*) FROM findings WHERE is_open=0").fetchone()[0]
        batches = int(con.execute("SELECT coalesce(sum(batches_applied), 0) FROM node_state").fetchone()[0])
        return HubStats(by_province, retired, households, open_by_program, resolved, batches)

    async def sealed_pii_of(self, province_code: str, record_id: str) -> bytes | None:
        """The sealed (ID number, name) of one record, for tests and key rotation."""
        row = await self._read(
            lambda con: con.execute(
                "SELECT sealed_pii FROM records WHERE province=? AND record_id=?", (province_code, record_id)
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    # -- audit log ---------------------------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> int:
        """Append entries to the exchange log, durably; returns the index of the first."""
        first: int = await self._write(self._ledger.append, entries)
        return first

    async def add_checkpoint(self, sign: Callable[[int, bytes], tuple[int, str]]) -> tuple[int, str] | None:
        """Sign and store a checkpoint of the log as committed with this write, unless one exists for its size.

        ``sign(size, root)`` returns ``(time_us, note)``; it runs in the writer, so no entry can
        slip in between reading the root and storing the note. Returns ``(size, note)`` or None.
        """
        result: tuple[int, str] | None = await self._write(self._checkpoint, sign)
        return result

    def _checkpoint(self, con: Connection, sign: Callable[[int, bytes], tuple[int, str]]) -> tuple[int, str] | None:
        size = self._ledger.size
        if con.execute("SELECT 1 FROM audit_checkpoints WHERE size=?", (size,)).fetchone() is not None:
            return None
        time_us, note = sign(size, self._ledger.root())
        self._ledger.add_checkpoint(con, size, time_us, note)
        return size, note

    async def _audit_read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._audit_executor is None or self._audit_reader is None:
            raise StoreError("store is not open", reason="STORE_CLOSED")
        loop = asyncio.get_running_loop()
        if not self.engine.inline_reads:
            return await loop.run_in_executor(self._audit_executor, self._pooled, fn, args)
        return await loop.run_in_executor(self._audit_executor, fn, self._audit_reader, *args)

    async def audit_tree(self) -> tuple[int, bytes]:
        """Size and root hash of the committed log."""

        def read(con: Connection) -> tuple[int, bytes]:
            size, peaks = stored_tree(con, self._ledger.hash_fn)
            return size, MerkleAccumulator(self._ledger.hash_fn, size=size, peaks=peaks).root()

        return await self._audit_read(read)

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        """(size, note) of the newest signed checkpoint, or None before the first."""

        def read(con: Connection) -> tuple[int, str] | None:
            row = con.execute("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            return None if row is None else (row[0], row[1])

        return await self._audit_read(read)

    async def checkpoint_at(self, size: int) -> str | None:
        """The signed checkpoint of exactly ``size`` entries, if the hub signed one."""

        def read(con: Connection) -> str | None:
            row = con.execute("SELECT note FROM audit_checkpoints WHERE size=?", (size,)).fetchone()
            return None if row is None else str(row[0])

        return await self._audit_read(read)

    async def recent_checkpoints(self, limit: int) -> list[tuple[int, int, str]]:
        """(size, time_us, note) of the newest ``limit`` signed checkpoints, newest first."""

        def read(con: Connection) -> list[tuple[int, int, str]]:
            rows = con.execute(
                "SELECT size, time_us, note FROM audit_checkpoints ORDER BY size DESC LIMIT ?", (limit,)
            ).fetchall()
            return [(int(size), int(time_us), str(note)) for size, time_us, note in rows]

        return await self._audit_read(read)

    async def audit_entries(self, filt: AuditFilter, *, after: int, limit: int, size: int) -> list[tuple[int, bytes]]:
        """Entries matching ``filt``, by index from ``after``, below ``size``."""
        return await self._audit_read(lambda con: list_entries(con, filt, after=after, limit=limit, size=size))

    async def audit_entry(self, index: int) -> tuple[bytes, bytes] | None:
        """(entry bytes, leaf hash) of one entry."""
        return await self._audit_read(lambda con: next(read_entries(con, index, index + 1), None))

    def _check_committed(self, con: Connection, size: int) -> None:
        committed, _ = stored_tree(con, self._ledger.hash_fn)
        if not 0 <= size <= committed:
            raise TreeRangeInvalid(
                f"tree size {size} is beyond the log, which holds {committed} entries",
                metadata={"size": str(size), "available": str(committed)},
            )

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        hash_fn = self._ledger.hash_fn

        def prove(con: Connection) -> list[bytes]:
            self._check_committed(con, size)
            return inclusion_path(index, size, lambda a, b: subtree_hash(con, a, b, hash_fn))

        return await self._audit_read(prove)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The RFC 9162 consistency proof between the trees of ``old_size`` and ``new_size`` entries."""
        hash_fn = self._ledger.hash_fn

        def prove(con: Connection) -> list[bytes]:
            self._check_committed(con, new_size)
            return consistency_path(old_size, new_size, lambda a, b: subtree_hash(con, a, b, hash_fn))

        return await self._audit_read(prove)

    # -- identity linkage (gateway.store.sqlite_linkage) -----------------------------------------

    #: The warm linkage index and its tables; None until :meth:`open_linkage` (batches are not linked).
    linkage: LinkageLedger | None = None

    async def ping_writer(self) -> None:
        """Open and commit an empty write transaction: the writer can write (readiness)."""
        await self._write(lambda con: None)

    async def add_linkage_model(self, model: LinkageModel, *, source: str, records: int) -> int:
        """Store ``model`` as the newest linkage model version (hubs link with it from their next start)."""
        version: int = await self._write(
            lambda con: store_model(con, model, source=source, records=records, now=_now_us())
        )
        return version

    async def open_linkage(self, ledger: LinkageLedger) -> LinkageStatus:
        """Load (or train, or bootstrap) the linkage model and build the index; batches are linked from now on."""
        ledger.shared = self.engine.shared
        status: LinkageStatus = await self._write(lambda con: ledger.open(con, _now_us()))
        self.linkage = ledger
        return status

    def _linkage(self) -> LinkageLedger:
        if self.linkage is None:
            raise StoreError("identity linkage is not open on this store", reason="LINKAGE_CLOSED")
        return self.linkage

    async def review_items(self, *, province_code: str, state: int, after: int, limit: int) -> list[ReviewView]:
        """Review items with an id above ``after``, oldest first; ``province_code``/``state`` filter when set."""
        return await self._read(
            lambda con: LinkageLedger.review_items(con, province=province_code, state=state, after=after, limit=limit)
        )

    def _replayed(self, con: Connection, node: NodeRef, request_id: str, digest: bytes) -> Any:
        """The stored response of an earlier call with this request_id (None if there was none)."""
        row = con.execute(
            "SELECT digest, response FROM requests WHERE province=? AND node=? AND request_id=?",
            (node.province_code, node.node_name, request_id),
        ).fetchone()
        if row is None:
            return None
        if row[0] != digest:
            raise FailedPrecondition(
                "this request_id was already used for a different request; use a new request_id",
                reason="REQUEST_ID_REUSED",
                field="request_id",
            )
        return json.loads(row[1])

    async def decide_review(
        self, node: NodeRef, request_id: str, review_id: int, accept: bool, reason: str
    ) -> ReviewDecisionResult:
        """Accept or reject an open review item as ``node``; idempotent by request_id."""
        result: ReviewDecisionResult = await self._write(
            self._decide_review, node, request_id, review_id, accept, reason
        )
        return result

    def _decide_review(
        self, con: Connection, node: NodeRef, request_id: str, review_id: int, accept: bool, reason: str
    ) -> ReviewDecisionResult:
        linkage = self._linkage()
        digest = hashlib.sha256(f"DecideReviewItem\n{review_id}\n{int(accept)}\n{reason}".encode()).digest()
        replay = self._replayed(con, node, request_id, digest)
        if replay is None:
            now = _now_us()
            keys, touched = linkage.decide(con, self.loop, node, review_id, accept, reason, now)
            self._refresh_findings(con, "", touched, now)
            replay = {"person_keys": [k.hex() for k in keys], "touched": sorted(k.hex() for k in touched)}
            con.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?)",
                (node.province_code, node.node_name, request_id, "DecideReviewItem", digest, json.dumps(replay), now),
            )
            replayed = False
        else:
            replayed = True
        review = LinkageLedger.review(con, review_id)
        assert review is not None
        a, b = (bytes.fromhex(k) for k in replay["person_keys"])
        return ReviewDecisionResult(review, (a, b), replayed, tuple(bytes.fromhex(k) for k in replay["touched"]))

    async def split_link(
        self, node: NodeRef, request_id: str, record: RecordKey, other: RecordKey, reason: str
    ) -> SplitResult:
        """Undo the link between two records as ``node``; idempotent by request_id."""
        result: SplitResult = await self._write(self._split_link, node, request_id, record, other, reason)
        return result

    def _split_link(
        self, con: Connection, node: NodeRef, request_id: str, record: RecordKey, other: RecordKey, reason: str
    ) -> SplitResult:
        linkage = self._linkage()
        a, b = "/".join(record), "/".join(other)
        digest = hashlib.sha256(f"SplitLink\n{a}\n{b}\n{reason}".encode()).digest()
        replay = self._replayed(con, node, request_id, digest)
        replayed = replay is not None
        if replay is None:
            now = _now_us()
            seq, keys, touched = linkage.split(con, self.loop, node, a, b, reason, now)
            self._refresh_findings(con, "", touched, now)
            replay = {"seq": seq, "person_keys": [k.hex() for k in keys], "touched": sorted(k.hex() for k in touched)}
            con.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?)",
                (node.province_code, node.node_name, request_id, "SplitLink", digest, json.dumps(replay), now),
            )
        event = LinkageLedger.event(con, replay["seq"])
        assert event is not None
        x, y = (bytes.fromhex(k) for k in replay["person_keys"])
        return SplitResult(event, (x, y), replayed, tuple(bytes.fromhex(k) for k in replay["touched"]))

    async def lineage(self, record: RecordKey) -> LineageView | None:
        """One record's person, its cluster's links and lineage events; None when the hub holds no such record."""
        return await self._read(LinkageLedger.lineage, record)
