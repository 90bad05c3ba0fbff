"""The hub with batch preparation in worker processes behaves exactly as inline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.client import HubClient
from hutong.v1 import records_pb2

GZ = "hutong://province/440000/node/gz-01"


async def test_worker_processes_apply_good_records_and_reject_bad_ones_in_order(
    hub_factory: Any, client_for: Callable[..., Any], make_record: Callable[..., Any]
) -> None:
    hub = await hub_factory(prepare_workers=2)
    client: HubClient = client_for(GZ, port=hub.port)
    good = [make_record(f"w{n}", sequence=n) for n in range(30)]
    bad = make_record("w-bad", sequence=99)
    bad.residence_division = "449999"
    batches = [
        records_pb2.SyncRecordsRequest(batch_id=f"wb{n}", records=[*good[n * 10 : n * 10 + 10], bad]) for n in range(3)
    ]
    acks = [ack async for ack in client.sync(batches, window=3)]
    assert [a.batch_id for a in acks] == ["wb0", "wb1", "wb2"]
    for ack in acks:
        assert list(ack.record_outcomes) == [records_pb2.OUTCOME_CREATED] * 10 + [records_pb2.OUTCOME_REJECTED]
        assert ack.record_rejections[0].reason == "DIVISION_UNKNOWN"
        assert ack.record_rejections[0].item_id == "w-bad"
    replay, *_ = [ack async for ack in client.sync(batches[:1])]
    assert replay.replayed
    assert list(replay.record_outcomes) == list(acks[0].record_outcomes)
    state = await client.get_sync_state()
    assert state.records_held == 30


async def test_a_malformed_batch_is_refused_inside_the_stream(
    hub_factory: Any, demo_pki: Any, bearer: Callable[..., Any]
) -> None:
    import grpc

    hub = await hub_factory(prepare_workers=1)
    tls = demo_pki.nodes[GZ].tls
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    async with grpc.aio.secure_channel(f"localhost:{hub.port}", creds) as channel:
        sync = channel.stream_stream(
            "/hutong.v1.RecordExchangeService/SyncRecords",
            request_serializer=lambda b: b,
            response_deserializer=records_pb2.SyncRecordsResponse.FromString,
        )
        good = records_pb2.SyncRecordsRequest(batch_id="after").SerializeToString()
        metadata = await bearer(GZ, port=hub.port)
        acks = [ack async for ack in sync(iter([b"\xff\xff\xff garbage", good]), metadata=metadata)]
    assert acks[0].batch_rejection.reason == "BATCH_MALFORMED"
    assert acks[1].batch_id == "after"
    assert not acks[1].HasField("batch_rejection")


async def test_the_hub_replaces_preparation_workers_that_died(
    hub_factory: Any, client_for: Callable[..., Any], make_record: Callable[..., Any]
) -> None:
    import os
    import signal

    hub = await hub_factory(prepare_workers=1)
    client: HubClient = client_for(GZ, port=hub.port)
    first = [
        ack async for ack in client.sync([records_pb2.SyncRecordsRequest(batch_id="k1", records=[make_record("k1")])])
    ]
    assert list(first[0].record_outcomes) == [records_pb2.OUTCOME_CREATED]
    preparer = hub.preparer
    assert preparer is not None
    killed = preparer.worker_pids()
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    second = [
        ack
        async for ack in client.sync(
            [records_pb2.SyncRecordsRequest(batch_id="k2", records=[make_record("k2", sequence=2)])]
        )
    ]
    assert list(second[0].record_outcomes) == [records_pb2.OUTCOME_CREATED]
    assert preparer.worker_pids()
    assert not set(preparer.worker_pids()) & set(killed)
    assert (await client.get_sync_state()).records_held == 2
