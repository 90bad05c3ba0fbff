"""Preparation of incoming batches, in worker processes.

Preparing a record (parse, validate, keyed hash, seal, pack) is pure CPU work in Python,
and grpc.aio serves every call from one thread. So the hub hands each batch, still as the
bytes it arrived in, to a pool of worker processes; the event loop only moves bytes and
acknowledgements, and the store's writer thread commits. With ``workers=0`` preparation runs
inline on the event loop (tests, tiny hubs).

A record its province flags ``id_number_unverified`` is prepared under the unverified-identity
rule of :mod:`gateway.domain.records` (a provisional person key); the store links it to a person
within the batch's transaction (:mod:`gateway.store.sqlite_linkage`).

The worker never raises across the process boundary: whatever goes wrong becomes a
:class:`PreparedRequest` with a ``refusal``, so a malformed batch is refused inside the
stream, never by breaking it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import structlog
from google.protobuf.message import DecodeError

from gateway import errors
from gateway.domain.model import Household, PersonRecord
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer
from gateway.domain.records import PreparedBatch, RecordPreparer, Rejection, rejection_from_error
from gateway.hub.convert import content_hash, household_from_proto, record_from_proto
from hutong.v1 import records_pb2

__all__ = ["BatchPreparer", "PreparedRequest", "check_client_id", "prepare_request"]

log = structlog.get_logger("hutong.hub.preparation")

MAX_CLIENT_ID_LENGTH = 128


@dataclass(slots=True)
class PreparedRequest:
    """One SyncRecordsRequest, prepared: either a batch for the store or a refusal of the whole."""

    batch_id: str
    digest: bytes
    batch: PreparedBatch | None
    refusal: Rejection | None = None


def check_client_id(value: str, field: str) -> str:
    """Validate a batch_id or request_id: 1 to 128 printable ASCII characters."""
    if not value or len(value) > MAX_CLIENT_ID_LENGTH or not (value.isascii() and value.isprintable()):
        raise errors.InvalidArgument(
            f"{field} must be 1 to {MAX_CLIENT_ID_LENGTH} printable ASCII characters",
            reason="CLIENT_ID_INVALID" if value else "CLIENT_ID_MISSING",
            field=field,
        )
    return value


def _refuse(raw: bytes, batch_id: str, reason: str, field: str, message: str, code: str) -> PreparedRequest:
    # The digest of a refused batch covers the bytes as they arrived: its audit entry names them.
    digest = hashlib.sha256(raw).digest()
    return PreparedRequest(batch_id, digest, None, Rejection(-1, batch_id, reason, field, message, code))


def prepare_request(preparer: RecordPreparer, province_code: str, raw: bytes, max_items: int) -> PreparedRequest:
    """Parse and prepare one serialized SyncRecordsRequest of the given province."""
    try:
        request = records_pb2.SyncRecordsRequest.FromString(raw)
    except DecodeError:
        return _refuse(
            raw, "", "BATCH_MALFORMED", "", "the batch is not a valid SyncRecordsRequest", "INVALID_ARGUMENT"
        )
    batch_id = request.batch_id
    try:
        check_client_id(batch_id, "batch_id")
    except errors.HutongError as exc:
        return _refuse(raw, batch_id, exc.reason, "batch_id", exc.message, exc.code_name)
    n_records, n_households = len(request.records), len(request.households)
    if n_records > max_items or n_households > max_items:
        return _refuse(
            raw,
            batch_id,
            "BATCH_TOO_LARGE",
            "records" if n_records > max_items else "households",
            f"a batch holds at most {max_items} records and {max_items} households;"
            f" got {n_records} and {n_households}; split it",
            "RESOURCE_EXHAUSTED",
        )
    records: list[PersonRecord | None] = []
    rejected: list[Rejection] = []
    hashes: list[bytes] = []
    # Positions of the records whose province flagged their ID number unverified (identity linkage).
    unverified: list[int] = []
    for index, pb in enumerate(request.records):
        digest = content_hash(pb)
        hashes.append(digest)
        if pb.id_number_unverified:
            unverified.append(index)
        try:
            records.append(record_from_proto(pb, digest))
        except errors.HutongError as exc:
            records.append(None)
            rejected.append(rejection_from_error(index, pb.record_id, exc))
    households: list[Household | None] = []
    for hpb in request.households:
        digest = content_hash(hpb)
        hashes.append(digest)
        households.append(household_from_proto(hpb, digest))
    batch = preparer.prepare_batch(
        province_code, records, households, record_rejections=rejected, unverified=frozenset(unverified)
    )
    batch_digest = hashlib.sha256(f"{n_records}/{n_households}/".encode() + b"".join(hashes)).digest()
    return PreparedRequest(batch_id, batch_digest, batch)


# -- worker processes -------------------------------------------------------------------------

_worker: RecordPreparer | None = None
_worker_max_items = 0


def _init_worker(keys: KeyMaterial, max_items: int) -> None:
    global _worker, _worker_max_items
    _worker = RecordPreparer(PersonKeyer(keys.person_key_secret, suite=keys.suite), FieldSealer(keys))
    _worker_max_items = max_items
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _prepare_in_worker(province_code: str, raw: bytes) -> PreparedRequest:
    assert _worker is not None, "worker not initialised"
    try:
        return prepare_request(_worker, province_code, raw, _worker_max_items)
    except Exception as exc:  # never let a worker error break the stream; the hub logs it
        return _refuse(
            raw, "", "INTERNAL", "", f"the hub failed to prepare this batch: {type(exc).__name__}", "INTERNAL"
        )


class BatchPreparer:
    """Prepares batches in ``workers`` processes, or inline when ``workers`` is 0."""

    def __init__(self, keys: KeyMaterial, *, workers: int, max_items: int) -> None:
        self._max_items = max_items
        self._keys = keys
        self._inline = RecordPreparer(PersonKeyer(keys.person_key_secret, suite=keys.suite), FieldSealer(keys))
        self.workers = workers
        self._pool = self._new_pool() if workers > 0 else None

    def _new_pool(self) -> ProcessPoolExecutor:
        keys = self._keys
        # Spawned, not forked: forking a process that runs gRPC's threads is unsafe.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(keys, self._max_items),
        )

    @property
    def preparer(self) -> RecordPreparer:
        """The in-process preparer (used inline and by other servicers)."""
        return self._inline

    def prepare(self, province_code: str, raw: bytes) -> asyncio.Future[PreparedRequest]:
        """Start preparing one serialized batch; the future resolves to its preparation."""
        if self._pool is None:
            done: asyncio.Future[PreparedRequest] = asyncio.get_running_loop().create_future()
            done.set_result(prepare_request(self._inline, province_code, raw, self._max_items))
            return done
        return asyncio.ensure_future(self._in_pool(province_code, raw))

    async def _in_pool(self, province_code: str, raw: bytes) -> PreparedRequest:
        """Prepare in a worker; if the workers died, start new ones and try once more.

        A batch that kills its worker twice is refused (PREPARATION_FAILED) rather than
        retried for ever, so one poisonous batch cannot stop a province's sync.
        """
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise errors.Unavailable("the hub is shutting down", reason="HUB_SHUTTING_DOWN")
            try:
                return await asyncio.wrap_future(pool.submit(_prepare_in_worker, province_code, raw))
            except BrokenProcessPool:
                log.error("preparation_workers_died", attempt=attempt)
                if self._pool is pool:
                    self._pool = self._new_pool()
                    pool.shutdown(wait=False, cancel_futures=True)
        return _refuse(
            raw,
            "",
            "PREPARATION_FAILED",
            "",
            "the hub's preparation workers failed twice on this batch; it was not applied",
            "INTERNAL",
        )

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for operators and tests)."""
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(processes)

    def warm_up(self) -> None:
        """Start every worker now rather than on the first batch."""
        if self._pool is not None:
            for future in [self._pool.submit(_prepare_in_worker, "110000", b"") for _ in range(self.workers)]:
                future.result()

    def close(self) -> None:
        """Stop the workers (waiting for batches in progress)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None
