"""Requests too big for the hub: a batch over ``max_batch_items``, a message over the receive limit, lists over
a call's item limit, and calls over a node's rate. Each is refused; the hub goes on serving everyone else.

A message over the hub's receive limit (``grpc.max_receive_message_length``) is refused by gRPC itself
before the hub's pipeline sees it: a unary call leaves no entry in the exchange log; a stream, which
the pipeline opened before its first message arrived, ends CANCELLED in the hub's view.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gateway.domain.access import AccessPolicy
from gateway.hub.loop_service import MAX_ACKNOWLEDGE, MAX_SIGNALS
from gateway.hub.query_service import MAX_BATCH_CHECK
from gateway.hub.server import _MAX_MESSAGE, HubServer
from hutong.v1 import (
    notification_pb2,
    person_pb2,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    signal_pb2,
)
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SOME_ID = "11010519491231002X"
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
CREATED = records_pb2.OUTCOME_CREATED
DUPLICATE_CHECK = person_pb2.PURPOSE_DUPLICATE_CHECK
#: The hub's batch limit in these tests (records, and separately households, per batch; retirements per call).
MAX_ITEMS = 2


@pytest_asyncio.fixture
async def small_hub(hub_factory: Any) -> HubServer:
    """A hub taking at most two items per batch, where GZ may also submit signals."""
    policy = AccessPolicy.from_mapping(
        {"nodes": {GZ: {"scopes": ["records:write", "query:enrollment", "signals:write"]}}}
    )
    hub: HubServer = await hub_factory(max_batch_items=MAX_ITEMS, policy=policy)
    return hub


@pytest_asyncio.fixture
async def channels(demo_pki: DemoPki, small_hub: HubServer) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """A raw channel to ``small_hub`` per node (GZ, ZZ), closed after the test."""
    opened = {}
    for uri in (GZ, ZZ):
        tls = demo_pki.nodes[uri].tls
        credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
        opened[uri] = grpc.aio.secure_channel(f"localhost:{small_hub.port}", credentials)
    yield opened
    for channel in opened.values():
        await channel.close()


async def still_serving(hub: HubServer, channels: dict[str, grpc.aio.Channel], bearer: Callable[..., Any]) -> None:
    """Both nodes get an answer to an enrollment question within five seconds."""
    for uri, channel in channels.items():
        stub = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        request = query_pb2.CheckEnrollmentRequest(id_number=SOME_ID, purpose=DUPLICATE_CHECK)
        answer = await stub.CheckEnrollment(request, metadata=await bearer(uri, port=hub.port), timeout=5)
        assert answer.results


# -- a batch over max_batch_items ---------------------------------------------------------------


async def test_a_batch_over_max_batch_items_is_refused_in_its_stream_which_goes_on(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    make_record: Callable[..., person_pb2.PersonRecord],
    entries_of: Callable[..., Any],
) -> None:
    too_big = records_pb2.SyncRecordsRequest(
        batch_id="big", records=[make_record(f"r{n}", sequence=n) for n in range(MAX_ITEMS + 1)]
    )
    fits = records_pb2.SyncRecordsRequest(batch_id="fits", records=[make_record("r9", sequence=9)])
    stub = records_pb2_grpc.RecordExchangeServiceStub(channels[GZ])
    metadata = (*await bearer(GZ, port=small_hub.port), ("x-request-id", "sync-big"))
    refused, applied = [a async for a in stub.SyncRecords(iter([too_big, fits]), metadata=metadata, timeout=10)]

    r = refused.batch_rejection
    assert (refused.batch_id, r.reason, r.field, r.code) == ("big", "BATCH_TOO_LARGE", "records", RESOURCE_EXHAUSTED)
    assert list(refused.record_outcomes) == []
    assert list(applied.record_outcomes) == [CREATED]
    await still_serving(small_hub, channels, bearer)
    entries = await entries_of(small_hub, "sync-big", count=3)
    assert [(e.batch_id, e.outcome) for e in entries] == [("big", "RESOURCE_EXHAUSTED"), ("fits", "OK"), ("", "OK")]
    assert dict(entries[-1].counts) == {"batches": 2, "created": 1}


async def test_a_batch_refused_for_its_size_has_an_entry_naming_it(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    make_record: Callable[..., person_pb2.PersonRecord],
    entries_of: Callable[..., Any],
) -> None:
    too_big = records_pb2.SyncRecordsRequest(
        batch_id="big", records=[make_record(f"r{n}", sequence=n) for n in range(MAX_ITEMS + 1)]
    )
    stub = records_pb2_grpc.RecordExchangeServiceStub(channels[GZ])
    metadata = (*await bearer(GZ, port=small_hub.port), ("x-request-id", "sync-big-entry"))
    (ack,) = [a async for a in stub.SyncRecords(iter([too_big]), metadata=metadata, timeout=10)]
    assert ack.batch_rejection.reason == "BATCH_TOO_LARGE"
    entries = await entries_of(small_hub, "sync-big-entry", count=2)
    assert [(e.batch_id, e.outcome) for e in entries if e.batch_id] == [("big", "RESOURCE_EXHAUSTED")]
    (refused,) = [e for e in entries if e.batch_id]
    assert (dict(refused.counts), refused.person_keys) == ({"batch": 1}, ())


@pytest.mark.parametrize(
    ("body", "reason", "outcome"),
    [
        (b"\xff\xff\xff", "BATCH_MALFORMED", "INVALID_ARGUMENT"),
        (records_pb2.SyncRecordsRequest().SerializeToString(), "CLIENT_ID_MISSING", "INVALID_ARGUMENT"),
        (records_pb2.SyncRecordsRequest(batch_id="\x01").SerializeToString(), "CLIENT_ID_INVALID", "INVALID_ARGUMENT"),
    ],
    ids=["malformed", "no-batch-id", "bad-batch-id"],
)
async def test_every_batch_refused_before_the_store_has_an_entry_of_its_own(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    make_record: Callable[..., person_pb2.PersonRecord],
    entries_of: Callable[..., Any],
    body: bytes,
    reason: str,
    outcome: str,
) -> None:
    """Whatever the refusal, the log says which batch of the stream it was (``batch``: its place) and why."""
    fits = records_pb2.SyncRecordsRequest(batch_id="fits", records=[make_record("r9", sequence=9)])
    sync = channels[GZ].stream_stream(
        "/hutong.v1.RecordExchangeService/SyncRecords",
        request_serializer=lambda data: data,
        response_deserializer=records_pb2.SyncRecordsResponse.FromString,
    )
    metadata = (*await bearer(GZ, port=small_hub.port), ("x-request-id", f"refused-{reason}"))
    acks = [a async for a in sync(iter([fits.SerializeToString(), body]), metadata=metadata, timeout=10)]
    assert [a.batch_rejection.reason for a in acks] == ["", reason]
    applied, refused, stream = await entries_of(small_hub, f"refused-{reason}", count=3)
    assert (applied.batch_id, applied.outcome) == ("fits", "OK")
    assert (refused.outcome, dict(refused.counts), refused.person_keys) == (outcome, {"batch": 2}, ())
    assert refused.payload_digest == hashlib.sha256(body).hexdigest()  # the bytes as they arrived
    assert (stream.batch_id, stream.outcome, dict(stream.counts)) == ("", "OK", {"batches": 2, "created": 1})


# -- a message over the hub's receive limit -----------------------------------------------------


async def test_a_unary_message_over_the_receive_limit_is_resource_exhausted_before_the_hub_sees_it(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    log_size: Callable[..., Any],
    rpc_answer: Callable[..., Any],
) -> None:
    """gRPC refuses the message on arrival: the call never reaches the pipeline, so it has no entry."""
    metadata = await bearer(GZ, port=small_hub.port)
    before = await log_size(small_hub)
    stub = query_pb2_grpc.AssistanceQueryServiceStub(channels[GZ])
    huge = query_pb2.CheckEnrollmentRequest(id_number="1" * (_MAX_MESSAGE + 1024), purpose=DUPLICATE_CHECK)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CheckEnrollment(huge, metadata=metadata, timeout=20)
    assert rpc_answer(refused.value).code == "RESOURCE_EXHAUSTED"
    assert "larger than max" in refused.value.details()
    assert await log_size(small_hub) == before
    await still_serving(small_hub, channels, bearer)


async def test_a_sync_batch_over_the_receive_limit_ends_the_stream_resource_exhausted(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    make_record: Callable[..., person_pb2.PersonRecord],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
) -> None:
    """The stream was open (and authorized) when its message arrived: nothing applied, and the stream is logged."""
    huge = records_pb2.SyncRecordsRequest(batch_id="huge", records=[make_record("r1", name="张" * (_MAX_MESSAGE // 3))])
    stub = records_pb2_grpc.RecordExchangeServiceStub(channels[GZ])
    metadata = (*await bearer(GZ, port=small_hub.port), ("x-request-id", "sync-huge"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.SyncRecords(iter([huge]), metadata=metadata, timeout=20):
            pass  # pragma: no cover - no acknowledgement may arrive
    assert rpc_answer(refused.value).code == "RESOURCE_EXHAUSTED"
    (entry,) = await entries_of(small_hub, "sync-huge")
    # CANCELLED as a rule; now and then OK: grpc ended the stream itself, which the hub sees as a half-close
    # until grpc.aio cancels the handler (THREAT_MODEL A-R1). Nothing was applied either way.
    assert (entry.batch_id, dict(entry.counts)) == ("", {"batches": 0})
    assert entry.outcome in ("CANCELLED", "OK")
    await still_serving(small_hub, channels, bearer)
    state = await records_pb2_grpc.RecordExchangeServiceStub(channels[GZ]).GetSyncState(
        records_pb2.GetSyncStateRequest(), metadata=await bearer(GZ, port=small_hub.port), timeout=5
    )
    assert (state.batches_applied, state.records_held) == (0, 0)


# -- lists over a call's item limit ---------------------------------------------------------------

#: RPC → (path, request over its limit, the field the refusal names).
OVER_THE_LIMIT: dict[str, tuple[str, Any, str]] = {
    "RetireRecords": (
        "/hutong.v1.RecordExchangeService/RetireRecords",
        records_pb2.RetireRecordsRequest(
            request_id="retire-many",
            retirements=[
                records_pb2.RecordRetirement(record_id=f"r{n}", version=2, reason=records_pb2.RETIREMENT_REASON_EXITED)
                for n in range(MAX_ITEMS + 1)
            ],
        ),
        "retirements",
    ),
    "BatchCheckEnrollment": (
        "/hutong.v1.AssistanceQueryService/BatchCheckEnrollment",
        query_pb2.BatchCheckEnrollmentRequest(id_numbers=[SOME_ID] * (MAX_BATCH_CHECK + 1), purpose=DUPLICATE_CHECK),
        "id_numbers",
    ),
    "AcknowledgeEvents": (
        "/hutong.v1.NotificationService/AcknowledgeEvents",
        notification_pb2.AcknowledgeEventsRequest(event_ids=[f"ev-{n}" for n in range(MAX_ACKNOWLEDGE + 1)]),
        "event_ids",
    ),
    "SubmitSignals": (
        "/hutong.v1.SignalService/SubmitSignals",
        signal_pb2.SubmitSignalsRequest(
            request_id="signals-many", signals=[signal_pb2.Signal(signal_id=f"s{n}") for n in range(MAX_SIGNALS + 1)]
        ),
        "signals",
    ),
}


@pytest.mark.parametrize(
    "rpc",
    ["RetireRecords", "BatchCheckEnrollment", "AcknowledgeEvents", "SubmitSignals"],
)
async def test_a_list_over_a_calls_item_limit_is_resource_exhausted_naming_the_field_and_logged(
    small_hub: HubServer,
    channels: dict[str, grpc.aio.Channel],
    bearer: Callable[..., Any],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
    rpc: str,
) -> None:
    path, request, field = OVER_THE_LIMIT[rpc]
    call = channels[GZ].unary_unary(
        path, request_serializer=type(request).SerializeToString, response_deserializer=lambda data: data
    )
    metadata = (*await bearer(GZ, port=small_hub.port), ("x-request-id", f"over-{rpc}"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, metadata=metadata, timeout=10)
    answer = rpc_answer(refused.value)
    (entry,) = await entries_of(small_hub, f"over-{rpc}")
    assert (entry.method, entry.outcome, entry.person_keys) == (path, answer.code, ())
    await still_serving(small_hub, channels, bearer)
    assert (answer.code, answer.reason, answer.field) == ("RESOURCE_EXHAUSTED", "BATCH_TOO_LARGE", field)


# -- calls over a node's rate ---------------------------------------------------------------------


async def test_calls_without_a_token_count_against_the_nodes_rate(
    hub_factory: Any, demo_pki: DemoPki, rpc_answer: Callable[..., Any], log_size: Callable[..., Any]
) -> None:
    hub = await hub_factory(policy=AccessPolicy.from_mapping({"defaults": {"rate_per_second": 0.5, "burst": 3}}))
    tls = demo_pki.nodes[GZ].tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    reasons = []
    request = query_pb2.CheckEnrollmentRequest(id_number=SOME_ID, purpose=DUPLICATE_CHECK)
    async with grpc.aio.secure_channel(f"localhost:{hub.port}", credentials) as channel:
        stub = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckEnrollment(request, timeout=5)
            reasons.append(rpc_answer(refused.value))
    assert await log_size(hub) == 6  # every refusal is an entry, limited or not
    # The burst goes to the token check; the next call, well within two seconds, is throttled first.
    assert [a.reason for a in reasons[:4]] == ["TOKEN_MISSING"] * 3 + ["RATE_LIMITED"], reasons
    assert reasons[3].code == "RESOURCE_EXHAUSTED"
    # The bucket is the certificate's: another node is not throttled by GZ's refusals.
    other = demo_pki.nodes[ZZ].tls
    credentials = grpc.ssl_channel_credentials(other.ca_pem, other.private_key_pem, other.cert_chain_pem)
    async with grpc.aio.secure_channel(f"localhost:{hub.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await query_pb2_grpc.AssistanceQueryServiceStub(channel).CheckEnrollment(request, timeout=5)
    assert rpc_answer(refused.value).reason == "TOKEN_MISSING"
