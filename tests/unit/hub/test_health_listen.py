"""The hub's plaintext health-only port (``hub.health_listen``), for probes that cannot present a client certificate."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hutong.v1 import records_pb2, records_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_the_health_port_answers_in_plaintext_and_turns_not_serving_when_the_hub_drains(hub_factory: Any) -> None:
    hub = await hub_factory(health_listen=("127.0.0.1", 0))
    assert hub.health_port not in (0, hub.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(service=""))).status == SERVING
        assert (
            await health.Check(health_pb2.HealthCheckRequest(service="hutong.v1.RecordExchangeService"))
        ).status == SERVING

        seen: list[int] = []
        first = asyncio.Event()

        async def watch() -> None:
            try:
                async for response in health.Watch(health_pb2.HealthCheckRequest(service="")):
                    seen.append(response.status)
                    first.set()
            except grpc.aio.AioRpcError:
                pass  # the port closes as the hub stops

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(first.wait(), 10)
        await hub.stop(grace=1.0)
        await asyncio.wait_for(watcher, 10)
    assert seen == [SERVING, NOT_SERVING]


async def test_the_health_port_serves_nothing_but_health(hub_factory: Any) -> None:
    hub = await hub_factory(health_listen=("127.0.0.1", 0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.health_port}") as channel:
        records = records_pb2_grpc.RecordExchangeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await records.GetSyncState(records_pb2.GetSyncStateRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_without_the_setting_there_is_no_health_port(hub_factory: Any) -> None:
    hub = await hub_factory()
    assert hub.health_port == 0
