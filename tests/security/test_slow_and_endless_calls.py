"""Streams that never end and callers that are slow: deadlines end them, the hub frees them and serves on.

The hub enforces the caller's deadline (gRPC cancels the call when it passes) and logs the
abandoned call as CANCELLED, even when the handler had already ended (the deadline is over, so the
caller never saw its answer). It also ends a client stream that sends nothing for
``stream_idle_seconds`` with DEADLINE_EXCEEDED ``STREAM_IDLE``, a deadline of its own.

The count of open SyncRecords streams is read with the records servicer's ``wait_idle`` (what drain
uses): the hub exposes no public count or metric of open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from gateway.hub.server import HubServer
from hutong.v1 import (
    notification_pb2,
    notification_pb2_grpc,
    person_pb2,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
)
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SOME_ID = "11010519491231002X"
SUBSCRIBE = "/hutong.v1.NotificationService/Subscribe"
SYNC = "/hutong.v1.RecordExchangeService/SyncRecords"


def channel_of(demo_pki: DemoPki, uri: str, port: int) -> grpc.aio.Channel:
    """A raw mTLS channel to the hub as ``uri``."""
    tls = demo_pki.nodes[uri].tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def one_batch_then_silence(
    batch_id: str, released: asyncio.Event
) -> AsyncIterator[records_pb2.SyncRecordsRequest]:
    """A node that sends one (empty) batch and then nothing, until ``released``."""
    yield records_pb2.SyncRecordsRequest(batch_id=batch_id)
    await released.wait()


async def sync_streams_open(hub: HubServer) -> bool:
    """Whether the hub holds an open SyncRecords stream (the servicer's wait_idle does not return at once)."""
    records = hub._records  # no public count of open streams (see the module docstring)
    assert records is not None
    try:
        await asyncio.wait_for(records.wait_idle(), 0.1)
    except TimeoutError:
        return True
    return False


async def until_no_sync_stream_is_open(hub: HubServer) -> None:
    """Within five seconds, the hub holds no SyncRecords stream."""
    records = hub._records  # see sync_streams_open
    assert records is not None
    await asyncio.wait_for(records.wait_idle(), 5)


def cancelled_calls(hub: HubServer, method: str) -> float:
    """The hub's metric of calls of ``method`` that ended CANCELLED."""
    value = hub.metrics.registry.get_sample_value("hutong_rpcs_total", {"method": method, "code": "CANCELLED"})
    return value or 0.0


async def test_a_sync_stream_that_goes_silent_after_a_batch_is_ended_by_the_hub(
    hub_factory: Any,
    demo_pki: DemoPki,
    bearer: Callable[..., Any],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
) -> None:
    """``stream_idle_seconds`` (``[limits]`` in hub.toml, 300 by default; one here) ends a silent stream."""
    hub = await hub_factory(stream_idle_seconds=1.0)
    released = asyncio.Event()
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        metadata = (*await bearer(GZ, port=hub.port), ("x-request-id", "idle"))
        call = records_pb2_grpc.RecordExchangeServiceStub(channel).SyncRecords(
            one_batch_then_silence("b1", released), metadata=metadata
        )
        try:
            ack = await asyncio.wait_for(call.read(), 5)
            assert ack.batch_id == "b1"
            assert await sync_streams_open(hub)
            # The hub ends the stream on its own, with a status: the node set no deadline.
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), 5)
            assert not await sync_streams_open(hub)
        finally:
            released.set()
            call.cancel()
    answer = rpc_answer(ended.value)
    assert (answer.code, answer.reason, answer.metadata) == ("DEADLINE_EXCEEDED", "STREAM_IDLE", {"idle_seconds": "1"})
    batch, stream = await entries_of(hub, "idle", count=2)
    assert (batch.batch_id, batch.outcome) == ("b1", "OK")  # what was acknowledged stays applied
    assert (stream.method, stream.caller, stream.outcome) == (SYNC, GZ, "DEADLINE_EXCEEDED")
    assert dict(stream.counts) == {"batches": 1}


async def test_a_sync_stream_that_keeps_sending_is_not_ended_by_the_idle_limit(
    hub_factory: Any, demo_pki: DemoPki, bearer: Callable[..., Any]
) -> None:
    """The limit is on silence, not on the stream's length: batches closer than the limit keep it open."""
    hub = await hub_factory(stream_idle_seconds=1.0)

    async def steady() -> AsyncIterator[records_pb2.SyncRecordsRequest]:
        for n in range(4):
            yield records_pb2.SyncRecordsRequest(batch_id=f"steady-{n}")
            await asyncio.sleep(0.5)

    async with channel_of(demo_pki, GZ, hub.port) as channel:
        stub = records_pb2_grpc.RecordExchangeServiceStub(channel)
        acks = [a async for a in stub.SyncRecords(steady(), metadata=await bearer(GZ, port=hub.port), timeout=20)]
    assert [a.batch_id for a in acks] == [f"steady-{n}" for n in range(4)]


async def test_a_subscription_whose_deadline_passes_is_deadline_exceeded_and_freed(
    hub: HubServer,
    demo_pki: DemoPki,
    bearer: Callable[..., Any],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
) -> None:
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        metadata = (*await bearer(GZ), ("x-request-id", "sub-deadline"))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stub.Subscribe(notification_pb2.SubscribeRequest(), metadata=metadata, timeout=0.5):
                pass  # pragma: no cover - the hub holds no events
    assert rpc_answer(ended.value).code == "DEADLINE_EXCEEDED"
    (entry,) = await entries_of(hub, "sub-deadline")
    assert (entry.method, entry.caller, entry.outcome) == (SUBSCRIBE, GZ, "CANCELLED")
    assert cancelled_calls(hub, SUBSCRIBE) == 1


async def test_a_silent_sync_stream_whose_deadline_passes_is_deadline_exceeded_and_freed(
    hub: HubServer,
    demo_pki: DemoPki,
    bearer: Callable[..., Any],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
) -> None:
    released = asyncio.Event()
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        metadata = (*await bearer(GZ), ("x-request-id", "sync-deadline"))
        call = records_pb2_grpc.RecordExchangeServiceStub(channel).SyncRecords(
            one_batch_then_silence("b1", released), metadata=metadata, timeout=1.5
        )
        try:
            assert (await call.read()).batch_id == "b1"
            assert await sync_streams_open(hub)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await call.read()
        finally:
            released.set()
    assert rpc_answer(ended.value).code == "DEADLINE_EXCEEDED"
    await until_no_sync_stream_is_open(hub)
    batch, stream = await entries_of(hub, "sync-deadline", count=2)
    assert (batch.batch_id, batch.outcome) == ("b1", "OK")  # what was acknowledged stays applied
    assert (stream.method, dict(stream.counts)) == (SYNC, {"batches": 1})
    # Abandoned: the caller saw DEADLINE_EXCEEDED. CANCELLED, bar the race the test below bounds.
    assert stream.outcome in ("CANCELLED", "OK")


async def test_sync_streams_ended_by_their_deadline_are_logged_cancelled(
    hub: HubServer, demo_pki: DemoPki, bearer: Callable[..., Any], exchange_log: Callable[..., Any]
) -> None:
    """When the deadline passes, grpc.aio may end the request stream as if the node had half-closed, and the
    servicer ends normally; the hub sees that the deadline is over and logs CANCELLED.

    A race is left open (THREAT_MODEL A-R1): when the caller's reset reaches the hub just before the hub's
    own view of the deadline has passed, the stream looks half-closed and grpc.aio cancels the handler only
    later, so now and then (about one stream in thirty under CI's load) a stream's entry says OK. Hence at
    least ten of twelve here; the deadline check itself is tested in tests/unit/hub/test_interceptors.py."""
    attempts = 12
    released = asyncio.Event()
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        stub = records_pb2_grpc.RecordExchangeServiceStub(channel)
        metadata = await bearer(GZ)
        for n in range(attempts):
            call = stub.SyncRecords(one_batch_then_silence(f"b{n}", released), metadata=metadata, timeout=0.5)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.read()
                await call.read()
    released.set()
    for _ in range(100):
        streams = [e for _, e in await exchange_log(hub) if e.method == SYNC and not e.batch_id]
        if len(streams) >= attempts:
            break
        await asyncio.sleep(0.05)
    outcomes = [e.outcome for e in streams]
    assert len(outcomes) == attempts
    assert set(outcomes) <= {"CANCELLED", "OK"}
    assert outcomes.count("CANCELLED") >= attempts - 2, outcomes


async def test_twenty_slow_streams_do_not_hold_up_other_callers_and_are_all_freed(
    hub: HubServer,
    demo_pki: DemoPki,
    bearer: Callable[..., Any],
    exchange_log: Callable[..., Any],
) -> None:
    """Ten silent SyncRecords streams and ten Subscribes from GZ, all on one connection; then ordinary questions."""
    released = asyncio.Event()
    question = query_pb2.CheckEnrollmentRequest(id_number=SOME_ID, purpose=person_pb2.PURPOSE_DUPLICATE_CHECK)
    async with channel_of(demo_pki, GZ, hub.port) as gz, channel_of(demo_pki, ZZ, hub.port) as zz:
        gz_md = await bearer(GZ)
        records = records_pb2_grpc.RecordExchangeServiceStub(gz)
        notifications = notification_pb2_grpc.NotificationServiceStub(gz)
        # A generous deadline, only so that nothing can outlive the test.
        syncs = [
            records.SyncRecords(one_batch_then_silence(f"slow-{n}", released), metadata=gz_md, timeout=60)
            for n in range(10)
        ]
        subscriptions = [
            notifications.Subscribe(notification_pb2.SubscribeRequest(), metadata=gz_md, timeout=60) for _ in range(10)
        ]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*(call.read() for call in syncs)), 10)
            assert sorted(a.batch_id for a in acks) == sorted(f"slow-{n}" for n in range(10))
            # Another node, and the slow node itself on its busy connection, are answered within their deadline.
            zz_answer = await query_pb2_grpc.AssistanceQueryServiceStub(zz).CheckEnrollment(
                question, metadata=await bearer(ZZ), timeout=5
            )
            gz_answer = await query_pb2_grpc.AssistanceQueryServiceStub(gz).CheckEnrollment(
                question, metadata=gz_md, timeout=5
            )
            assert zz_answer.results
            assert gz_answer.results
            assert await sync_streams_open(hub)
        finally:
            released.set()
            for call in (*syncs, *subscriptions):
                call.cancel()
    await until_no_sync_stream_is_open(hub)

    # Each abandoned call is logged just after it ends: give them five seconds.
    for _ in range(100):
        ended = [e for _, e in await exchange_log(hub) if e.method in (SYNC, SUBSCRIBE) and not e.batch_id]
        if len(ended) >= 20:
            break
        await asyncio.sleep(0.05)
    assert sorted(e.method for e in ended) == sorted([SYNC] * 10 + [SUBSCRIBE] * 10)
    assert {e.outcome for e in ended if e.method == SUBSCRIBE} == {"CANCELLED"}
    # A sync stream cancelled without a deadline is CANCELLED as a rule, now and then OK: grpc.aio may end its
    # request stream as if the node had half-closed, and nothing tells that from a real half-close in time.
    assert {e.outcome for e in ended if e.method == SYNC} <= {"CANCELLED", "OK"}
