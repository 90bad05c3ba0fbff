"""The hub's access policy over real mTLS: scopes, purposes and rate limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway import errors
from gateway.client import HubClient
from gateway.domain.access import AccessPolicy
from gateway.domain.model import Purpose
from hutong.v1 import query_pb2, query_pb2_grpc

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SOME_ID = "11010519491231002X"


async def test_a_node_without_the_scope_is_refused_naming_it(
    hub_factory: Any, client_for: Callable[..., Any], make_record: Callable[..., Any]
) -> None:
    policy = AccessPolicy.from_mapping({"nodes": {ZZ: {"scopes": ["records:write"]}}})
    hub = await hub_factory(policy=policy)
    zz: HubClient = client_for(ZZ, port=hub.port)
    with pytest.raises(errors.PermissionDenied) as refused:
        await zz.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)
    assert refused.value.reason == "SCOPE_MISSING"
    assert refused.value.metadata["scope"] == "query:enrollment"
    # The same node may still do what its scopes allow, and other nodes are untouched.
    assert (await zz.get_sync_state()).records_held == 0
    gz: HubClient = client_for(GZ, port=hub.port)
    await gz.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)


async def test_a_purpose_outside_the_scope_is_refused(hub_factory: Any, client_for: Callable[..., Any]) -> None:
    policy = AccessPolicy.from_mapping({"scopes": {"query:enrollment": {"purposes": ["duplicate-check"]}}})
    hub = await hub_factory(policy=policy)
    gz: HubClient = client_for(GZ, port=hub.port)
    await gz.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)
    with pytest.raises(errors.PermissionDenied) as refused:
        await gz.lookup_person(SOME_ID, Purpose.AUDIT)
    assert refused.value.reason == "PURPOSE_NOT_ALLOWED"
    assert refused.value.field == "purpose"


async def test_a_node_over_its_rate_gets_resource_exhausted_with_retry_info(
    hub_factory: Any, demo_pki: Any, bearer: Callable[..., Any]
) -> None:
    # Three calls at once: one for the access token, two queries; the fourth is over the rate.
    policy = AccessPolicy.from_mapping({"defaults": {"rate_per_second": 0.5, "burst": 3}})
    hub = await hub_factory(policy=policy)
    metadata = await bearer(GZ, port=hub.port)
    tls = demo_pki.nodes[GZ].tls
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    async with grpc.aio.secure_channel(f"localhost:{hub.port}", creds) as channel:
        stub = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        request = query_pb2.CheckEnrollmentRequest(id_number=SOME_ID, purpose=2)
        await stub.CheckEnrollment(request, metadata=metadata)
        await stub.CheckEnrollment(request, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stub.CheckEnrollment(request, metadata=metadata)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = dict(limited.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "RATE_LIMITED"
    assert status.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() > 0
