"""Request bodies that do not decode as their message: refused by the hub's pipeline, not by grpc.aio.

grpc.aio answers a deserializer's exception with UNKNOWN before any handler runs: no ErrorInfo, no
exchange-log entry, no log line naming the caller. The hub decodes leniently and refuses such a body
itself, once the caller is authenticated and authorized, as INVALID_ARGUMENT ``REQUEST_MALFORMED``;
the entry's payload digest covers the bytes as they arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gateway.hub.audit import payload_digest
from gateway.hub.server import HubServer
from hutong.v1.records_pb2 import GetSyncStateResponse
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
#: A field tag with no value: no protobuf message decodes it.
UNDECODABLE = b"\xc5"

#: RPC path → the request message the refusal names (unary and server-streaming calls).
RPCS = {
    "/hutong.v1.AssistanceQueryService/CheckEnrollment": "hutong.v1.CheckEnrollmentRequest",
    "/hutong.v1.RecordExchangeService/GetSyncState": "hutong.v1.GetSyncStateRequest",
    "/hutong.v1.NotificationService/Subscribe": "hutong.v1.SubscribeRequest",
}


def channel_of(demo_pki: DemoPki, uri: str, port: int) -> grpc.aio.Channel:
    """A raw mTLS channel to the hub as ``uri``."""
    tls = demo_pki.nodes[uri].tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def call_raw(channel: grpc.aio.Channel, path: str, body: bytes, metadata: Any) -> list[bytes]:
    """Send ``body`` as the request of ``path``; the raw responses."""
    if path.endswith("/Subscribe"):
        call = channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)
        return [r async for r in call(body, metadata=metadata, timeout=10)]
    unary = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
    return [await unary(body, metadata=metadata, timeout=10)]


async def send_raw(channel: grpc.aio.Channel, path: str, body: bytes, metadata: Any) -> grpc.aio.AioRpcError:
    """Send ``body`` as the request of ``path``; the error the call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call_raw(channel, path, body, metadata)
    return refused.value


@pytest.mark.parametrize("path", list(RPCS))
async def test_an_undecodable_body_is_invalid_argument_with_an_entry_naming_the_caller(
    hub: HubServer,
    demo_pki: DemoPki,
    bearer: Callable[..., Any],
    entries_of: Callable[..., Any],
    rpc_answer: Callable[..., Any],
    path: str,
) -> None:
    request_id = "undecodable-" + path.rsplit("/", 1)[1]
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        refused = await send_raw(channel, path, UNDECODABLE, (*await bearer(GZ), ("x-request-id", request_id)))
    answer = rpc_answer(refused)
    assert (answer.code, answer.reason, answer.metadata) == (
        "INVALID_ARGUMENT",
        "REQUEST_MALFORMED",
        {"message": RPCS[path]},
    )
    (entry,) = await entries_of(hub, request_id)
    assert (entry.method, entry.caller, entry.outcome, entry.person_keys) == (path, GZ, "INVALID_ARGUMENT", ())
    assert hub.audit is not None
    assert entry.payload_digest == payload_digest(hub.audit.hash_fn, UNDECODABLE, None).hex()


async def test_an_undecodable_body_without_a_token_is_refused_for_the_token_first(
    hub: HubServer, demo_pki: DemoPki, entries_of: Callable[..., Any], rpc_answer: Callable[..., Any]
) -> None:
    """Authentication and authorization run before the body is looked at."""
    path = "/hutong.v1.AssistanceQueryService/CheckEnrollment"
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        refused = await send_raw(channel, path, UNDECODABLE, (("x-request-id", "undecodable-no-token"),))
    assert (rpc_answer(refused).code, rpc_answer(refused).reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")
    (entry,) = await entries_of(hub, "undecodable-no-token")
    assert (entry.caller, entry.outcome) == (GZ, "UNAUTHENTICATED")


async def test_the_hub_answers_normally_after_an_undecodable_body(
    hub: HubServer, demo_pki: DemoPki, bearer: Callable[..., Any]
) -> None:
    path = "/hutong.v1.RecordExchangeService/GetSyncState"
    async with channel_of(demo_pki, GZ, hub.port) as channel:
        metadata = await bearer(GZ)
        await send_raw(channel, path, UNDECODABLE, metadata)
        (answer,) = await call_raw(channel, path, b"", metadata)
    assert GetSyncStateResponse.FromString(answer).province_code == "440000"
