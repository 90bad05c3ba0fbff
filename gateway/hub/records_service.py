"""``RecordExchangeService``: thin servicer over the batch preparer and the store.

``SyncRecords`` pipelines. A reader task takes serialized batches off the stream and hands
each to the :class:`~gateway.hub.preparation.BatchPreparer` (worker processes); the response
side takes the preparations in stream order, has the store commit each, and acknowledges it.
While batch *n* commits, batches *n+1* … are being prepared. At most ``pipeline_depth``
batches are in flight per stream; past that the reader stops reading and HTTP/2 flow control
pushes back on the node.

``SyncRecords`` is registered with a pass-through request deserializer (see
:func:`raw_sync_handler`): batches reach the workers as the bytes they arrived in, so
the event loop never parses a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
import structlog

from gateway import errors
from gateway.domain.model import Outcome
from gateway.domain.records import Rejection, Retirement, check_retirement, rejection_from_error
from gateway.hub.audit import AuditRecorder
from gateway.hub.convert import rejection_to_proto, rejections_to_proto, timestamp_from_us
from gateway.hub.interceptors import CallInfo, current_call, current_caller
from gateway.hub.preparation import BatchPreparer, PreparedRequest, check_client_id
from gateway.store.base import BatchAck, NodeRef, Store
from hutong.v1 import records_pb2, records_pb2_grpc

__all__ = ["MAX_BATCH_ITEMS", "RecordExchangeServicer", "raw_sync_handler"]

log = structlog.get_logger("hutong.hub.records")

MAX_BATCH_ITEMS = 5000


def _outcomes(packed: bytes) -> list[records_pb2.Outcome.ValueType]:
    # One byte per outcome in the store; the wire wants the enum values. A bytes object
    # iterates as ints, which protobuf accepts directly.
    return packed  # type: ignore[return-value]


def _counts(c: Mapping[Outcome, int]) -> records_pb2.OutcomeCounts:
    return records_pb2.OutcomeCounts(
        created=c[Outcome.CREATED],
        updated=c[Outcome.UPDATED],
        unchanged=c[Outcome.UNCHANGED],
        stale=c[Outcome.STALE],
        rejected=c[Outcome.REJECTED],
    )


def ack_to_proto(ack: BatchAck, counts: Mapping[Outcome, int] | None = None) -> records_pb2.SyncRecordsResponse:
    """The wire form of a batch acknowledgement (``counts``: ``ack.counts()`` if already computed)."""
    response = records_pb2.SyncRecordsResponse(
        batch_id=ack.batch_id,
        record_outcomes=_outcomes(ack.record_outcomes),
        household_outcomes=_outcomes(ack.household_outcomes),
        record_rejections=rejections_to_proto(ack.record_rejections),
        household_rejections=rejections_to_proto(ack.household_rejections),
        replayed=ack.replayed,
        record_counts=_counts(ack.counts() if counts is None else counts),
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
        preparer: BatchPreparer,
        *,
        max_batch_items: int = MAX_BATCH_ITEMS,
        pipeline_depth: int = 4,
        audit: AuditRecorder | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._preparer = preparer
        self._max_items = max_batch_items
        self._depth = pipeline_depth
        self._draining = asyncio.Event()
        self._readers: set[asyncio.Task[None]] = set()
        self._open_streams = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no SyncRecords stream is open."""
        await self._idle.wait()

    def begin_drain(self) -> None:
        """Stop taking new batches: open streams finish what they hold, then end with UNAVAILABLE."""
        self._draining.set()
        for task in list(self._readers):
            task.cancel()

    async def _apply(self, call: CallInfo, caller: NodeRef, prepared: PreparedRequest, position: int) -> BatchAck:
        call.batch_digests.append(prepared.digest)
        if prepared.refusal is not None or prepared.batch is None:
            return await self._refuse(call, prepared, position)
        batch = prepared.batch
        # Each applied batch is its own audit entry, committed in the batch's transaction.
        audit = None
        if self._audit is not None:
            keys = [r.person_key for r in batch.records]
            audit = self._audit.batch_entry(call, prepared.batch_id, prepared.digest, keys)
        return await self._store.apply_batch(caller, prepared.batch_id, prepared.digest, batch, audit)

    async def _refuse(self, call: CallInfo, prepared: PreparedRequest, position: int) -> BatchAck:
        """Refuse a batch before the store, its entry durable before the refusal is sent (every refusal is one)."""
        ack = BatchAck(prepared.batch_id, b"", b"", [], [], 0, batch_rejection=prepared.refusal)
        if self._audit is not None:
            refusal = prepared.refusal
            # ``batch``: its place in the stream (1-based), the one name a batch without a usable id has.
            entry = self._audit.entry(
                call,
                outcome=refusal.code_name if refusal is not None else "INTERNAL",
                counts={"batch": position},
                person_keys=(),
                digest=prepared.digest,
                batch_id=prepared.batch_id,
            )
            await self._audit.append(entry)
        return ack

    async def SyncRecords(  # type: ignore[override]  # requests arrive as bytes: see raw_sync_handler
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[records_pb2.SyncRecordsResponse]:
        """Apply a stream of batches; acknowledge each, in order."""
        caller = current_caller()
        call = current_call()
        if self._draining.is_set():
            raise errors.Unavailable("the hub is shutting down; reconnect", reason="HUB_SHUTTING_DOWN")
        # Unbounded queue, bounded by the slots: putting the end marker can never block.
        queue: asyncio.Queue[asyncio.Future[PreparedRequest] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self._depth)

        async def read() -> None:
            incoming = aiter(request_iterator)
            try:
                while not self._draining.is_set():
                    await slots.acquire()
                    try:
                        raw = await anext(incoming)
                    except StopAsyncIteration:
                        break
                    queue.put_nowait(self._preparer.prepare(caller.province_code, raw))
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        self._open_streams += 1
        self._idle.clear()
        totals = dict.fromkeys(Outcome, 0)
        batches = 0
        try:
            while (pending := await queue.get()) is not None:
                ack = await self._apply(call, caller, await pending, batches + 1)
                batches += 1
                counts = ack.counts()
                for outcome, n in counts.items():
                    totals[outcome] += n
                if ack.batch_rejection is not None:
                    log.warning("batch_refused", batch_id=ack.batch_id, reason=ack.batch_rejection.reason)
                yield ack_to_proto(ack, counts)
                slots.release()
            try:
                await reader
            except asyncio.CancelledError:
                if not self._draining.is_set():
                    raise
        finally:
            self._readers.discard(reader)
            reader.cancel()
            self._open_streams -= 1
            if not self._open_streams:
                self._idle.set()
            call.counts.update(
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
            record_counts=_counts(state.counts),
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
        call = current_call()
        call.counts.update(retirements=len(request.retirements), rejected=len(ack.rejections))
        call.person_keys.update(ack.person_keys)
        return records_pb2.RetireRecordsResponse(
            outcomes=_outcomes(ack.outcomes), rejections=rejections_to_proto(ack.rejections), replayed=ack.replayed
        )


def raw_sync_handler(servicer: RecordExchangeServicer) -> dict[str, grpc.RpcMethodHandler]:
    """SyncRecords taking its requests as raw bytes (the preparer parses them in its workers)."""
    return {
        "SyncRecords": grpc.stream_stream_rpc_method_handler(
            servicer.SyncRecords,
            request_deserializer=None,
            response_serializer=records_pb2.SyncRecordsResponse.SerializeToString,
        )
    }
