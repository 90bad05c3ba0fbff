"""``RecordExchangeService``: thin servicer over the domain's preparer and the store.

``SyncRecords`` pipelines: a reader task takes batch *n+1* off the stream and prepares it
(validation, keyed hashing, sealing — CPU work on the event loop) while the store's writer
thread commits batch *n*. At most ``pipeline_depth`` batches are in flight per stream; past
that the reader stops reading and HTTP/2 flow control pushes back on the node.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import grpc
import structlog

from gateway import errors
from gateway.domain.model import Household, Outcome, PersonRecord
from gateway.domain.records import (
    RecordPreparer,
    Rejection,
    Retirement,
    check_retirement,
    rejection_from_error,
)
from gateway.hub.convert import (
    content_hash,
    household_from_proto,
    record_from_proto,
    rejection_to_proto,
    rejections_to_proto,
    timestamp_from_us,
)
from gateway.hub.interceptors import current_call, current_caller
from gateway.store.base import BatchAck, NodeRef, Store
from hutong.v1 import records_pb2, records_pb2_grpc

__all__ = ["MAX_BATCH_ITEMS", "RecordExchangeServicer", "check_client_id"]

log = structlog.get_logger("hutong.hub.records")

MAX_BATCH_ITEMS = 5000
MAX_CLIENT_ID_LENGTH = 128


def check_client_id(value: str, field: str) -> str:
    """Validate a batch_id or request_id: 1 to 128 printable ASCII characters."""
    if not value or len(value) > MAX_CLIENT_ID_LENGTH or not (value.isascii() and value.isprintable()):
        raise errors.InvalidArgument(
            f"{field} must be 1 to {MAX_CLIENT_ID_LENGTH} printable ASCII characters",
            reason="CLIENT_ID_INVALID" if value else "CLIENT_ID_MISSING",
            field=field,
        )
    return value


def _outcomes(packed: bytes) -> list[records_pb2.Outcome.ValueType]:
    # One byte per outcome in the store; the wire wants the enum values. A bytes object
    # iterates as ints, which protobuf accepts directly.
    return packed  # type: ignore[return-value]


def _counts(ack: BatchAck) -> records_pb2.OutcomeCounts:
    c = ack.counts()
    return records_pb2.OutcomeCounts(
        created=c[Outcome.CREATED],
        updated=c[Outcome.UPDATED],
        unchanged=c[Outcome.UNCHANGED],
        stale=c[Outcome.STALE],
        rejected=c[Outcome.REJECTED],
    )


def ack_to_proto(ack: BatchAck) -> records_pb2.SyncRecordsResponse:
    """The wire form of a batch acknowledgement."""
    response = records_pb2.SyncRecordsResponse(
        batch_id=ack.batch_id,
        record_outcomes=_outcomes(ack.record_outcomes),
        household_outcomes=_outcomes(ack.household_outcomes),
        record_rejections=rejections_to_proto(ack.record_rejections),
        household_rejections=rejections_to_proto(ack.household_rejections),
        replayed=ack.replayed,
        record_counts=_counts(ack),
        applied_at=timestamp_from_us(ack.applied_at_us),
    )
    if ack.batch_rejection is not None:
        response.batch_rejection.CopyFrom(rejection_to_proto(ack.batch_rejection))
    return response


class RecordExchangeServicer(records_pb2_grpc.RecordExchangeServiceServicer):
    """Sync of records from province nodes."""

    def __init__(
        self,
        store: Store,
        preparer: RecordPreparer,
        *,
        max_batch_items: int = MAX_BATCH_ITEMS,
        pipeline_depth: int = 4,
    ) -> None:
        self._store = store
        self._preparer = preparer
        self._max_items = max_batch_items
        self._depth = pipeline_depth
        self._draining = asyncio.Event()
        self._readers: set[asyncio.Task[None]] = set()

    def begin_drain(self) -> None:
        """Stop taking new batches: open streams finish what they hold, then end with UNAVAILABLE."""
        self._draining.set()
        for task in list(self._readers):
            task.cancel()

    def _refuse(self, batch_id: str, reason: str, field: str, message: str, code: str) -> BatchAck:
        return BatchAck(
            batch_id, b"", b"", [], [], 0, batch_rejection=Rejection(-1, batch_id, reason, field, message, code)
        )

    def _start_batch(self, caller: NodeRef, request: records_pb2.SyncRecordsRequest) -> asyncio.Future[BatchAck]:
        """Validate and prepare a batch now; schedule its write. Returns the future acknowledgement."""
        loop = asyncio.get_running_loop()
        batch_id = request.batch_id
        try:
            check_client_id(batch_id, "batch_id")
        except errors.HutongError as exc:
            done: asyncio.Future[BatchAck] = loop.create_future()
            done.set_result(self._refuse(batch_id, exc.reason, "batch_id", exc.message, exc.code_name))
            return done
        n_records, n_households = len(request.records), len(request.households)
        if n_records > self._max_items or n_households > self._max_items:
            done = loop.create_future()
            done.set_result(
                self._refuse(
                    batch_id, "BATCH_TOO_LARGE", "records" if n_records > self._max_items else "households",
                    f"a batch holds at most {self._max_items} records and {self._max_items} households;"
                    f" got {n_records} and {n_households}; split it",
                    "RESOURCE_EXHAUSTED",
                )
            )  # fmt: skip
            return done

        records: list[PersonRecord | None] = []
        rejected: list[Rejection] = []
        hashes: list[bytes] = []
        for index, pb in enumerate(request.records):
            digest = content_hash(pb)
            hashes.append(digest)
            try:
                records.append(record_from_proto(pb, digest))
            except errors.HutongError as exc:
                records.append(None)
                rejected.append(rejection_from_error(index, pb.record_id, exc))
        households: list[Household | None] = []
        h_rejected: list[Rejection] = []
        for hpb in request.households:
            digest = content_hash(hpb)
            hashes.append(digest)
            households.append(household_from_proto(hpb, digest))
        prepared = self._preparer.prepare_batch(
            caller.province_code,
            records,
            households,
            record_rejections=rejected,
            household_rejections=h_rejected,
        )
        batch_digest = hashlib.sha256(f"{n_records}/{n_households}/".encode() + b"".join(hashes)).digest()
        return asyncio.ensure_future(self._store.apply_batch(caller, batch_id, batch_digest, prepared))

    async def SyncRecords(
        self, request_iterator: AsyncIterator[records_pb2.SyncRecordsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[records_pb2.SyncRecordsResponse]:
        """Apply a stream of batches; acknowledge each, in order."""
        caller = current_caller()
        call = current_call()
        queue: asyncio.Queue[asyncio.Future[BatchAck] | None] = asyncio.Queue(maxsize=self._depth)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await queue.put(self._start_batch(caller, request))
                    if self._draining.is_set():
                        break
            finally:
                # Never blocks for long: the writer side keeps draining the queue.
                await queue.put(None)

        if self._draining.is_set():
            raise errors.Unavailable("the hub is shutting down; reconnect", reason="HUB_SHUTTING_DOWN")
        reader = asyncio.create_task(read())
        self._readers.add(reader)
        totals = dict.fromkeys(Outcome, 0)
        batches = 0
        try:
            while (pending := await queue.get()) is not None:
                ack = await pending
                batches += 1
                for outcome, n in ack.counts().items():
                    totals[outcome] += n
                log.debug(
                    "batch_acknowledged", batch_id=ack.batch_id, replayed=ack.replayed, records=len(ack.record_outcomes)
                )
                yield ack_to_proto(ack)
            try:
                await reader
            except asyncio.CancelledError:
                if not self._draining.is_set():
                    raise
        finally:
            self._readers.discard(reader)
            reader.cancel()
            call.extra.update(
                batches=batches, **{o.name.lower(): n for o, n in totals.items() if n and o is not Outcome.UNSPECIFIED}
            )
        if self._draining.is_set():
            raise errors.Unavailable(
                "the hub is shutting down; every batch acknowledged so far is applied, resend the rest",
                reason="HUB_SHUTTING_DOWN",
            )

    async def GetSyncState(
        self, request: records_pb2.GetSyncStateRequest, context: grpc.aio.ServicerContext
    ) -> records_pb2.GetSyncStateResponse:
        """What the hub holds for the caller."""
        caller = current_caller()
        state = await self._store.sync_state(caller)
        response = records_pb2.GetSyncStateResponse(
            province_code=caller.province_code,
            node_name=caller.node_name,
            last_batch_id=state.last_batch_id,
            batches_applied=state.batches_applied,
            records_held=state.records_held,
            records_retired=state.records_retired,
            record_counts=records_pb2.OutcomeCounts(
                created=state.counts[Outcome.CREATED],
                updated=state.counts[Outcome.UPDATED],
                unchanged=state.counts[Outcome.UNCHANGED],
                stale=state.counts[Outcome.STALE],
                rejected=state.counts[Outcome.REJECTED],
            ),
        )
        if state.last_batch_at_us:
            response.last_batch_time.CopyFrom(timestamp_from_us(state.last_batch_at_us))
        if state.watermark_us:
            response.watermark.CopyFrom(timestamp_from_us(state.watermark_us))
        return response

    async def RetireRecords(
        self, request: records_pb2.RetireRecordsRequest, context: grpc.aio.ServicerContext
    ) -> records_pb2.RetireRecordsResponse:
        """Retire records idempotently by request_id."""
        caller = current_caller()
        request_id = check_client_id(request.request_id, "request_id")
        if len(request.retirements) > self._max_items:
            raise errors.ResourceExhausted(
                f"at most {self._max_items} retirements per call; got {len(request.retirements)}",
                reason="BATCH_TOO_LARGE",
                field="retirements",
            )
        good: list[Retirement] = []
        bad: list[Rejection] = []
        for index, item in enumerate(request.retirements):
            try:
                good.append(check_retirement(index, item.record_id, item.version, item.reason))
            except errors.HutongError as exc:
                bad.append(rejection_from_error(index, item.record_id, exc))
        ack = await self._store.retire_records(caller, request_id, good, bad, len(request.retirements))
        if ack.outcomes == b"" and ack.rejections and ack.rejections[0].index == -1:
            r = ack.rejections[0]
            raise errors.FailedPrecondition(r.message, reason=r.reason, field=r.field)
        current_call().extra.update(retirements=len(request.retirements), rejected=len(ack.rejections))
        return records_pb2.RetireRecordsResponse(
            outcomes=_outcomes(ack.outcomes), rejections=rejections_to_proto(ack.rejections), replayed=ack.replayed
        )
