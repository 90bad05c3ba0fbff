"""Certificate-bound access tokens (RFC 8705) over real mTLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from gateway import errors
from gateway.client import HubClient
from gateway.domain.model import Purpose
from gateway.hub.tokens import CONSOLE_AUDIENCE, TOKEN_KEYS_FILE, TokenKeys, TokenService
from gateway.rpc_status import error_from_rpc
from hutong.v1 import auth_pb2, auth_pb2_grpc, query_pb2, query_pb2_grpc
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SOME_ID = "11010519491231002X"


def channel_of(demo_pki: DemoPki, uri: str, port: int) -> grpc.aio.Channel:
    tls = demo_pki.nodes[uri].tls
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def issue(demo_pki: DemoPki, uri: str, port: int, *scopes: str) -> auth_pb2.IssueTokenResponse:
    async with channel_of(demo_pki, uri, port) as channel:
        return await auth_pb2_grpc.AuthServiceStub(channel).IssueToken(auth_pb2.IssueTokenRequest(scopes=scopes))


async def check_with(demo_pki: DemoPki, uri: str, port: int, token: str | None) -> errors.HutongError | None:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    async with channel_of(demo_pki, uri, port) as channel:
        stub = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        try:
            await stub.CheckEnrollment(
                query_pb2.CheckEnrollmentRequest(id_number=SOME_ID, purpose=2), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return error_from_rpc(exc.code(), exc.details(), exc.trailing_metadata())
    return None


async def test_a_call_without_a_token_is_unauthenticated(hub: Any, demo_pki: DemoPki) -> None:
    refused = await check_with(demo_pki, GZ, hub.port, None)
    assert refused is not None
    assert (refused.code_name, refused.reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")


async def test_a_token_carries_the_granted_scopes_and_works_for_its_node(hub: Any, demo_pki: DemoPki) -> None:
    response = await issue(demo_pki, GZ, hub.port)
    assert response.token_type == "Bearer"
    assert sorted(response.scopes) == ["query:enrollment", "records:write"]
    assert 0 < response.expires_in <= 900
    assert await check_with(demo_pki, GZ, hub.port, response.access_token) is None


async def test_a_token_replayed_from_another_node_is_refused(hub: Any, demo_pki: DemoPki) -> None:
    stolen = (await issue(demo_pki, GZ, hub.port)).access_token
    refused = await check_with(demo_pki, ZZ, hub.port, stolen)
    assert refused is not None
    assert refused.code_name == "UNAUTHENTICATED"
    assert refused.reason in {"TOKEN_CERTIFICATE_MISMATCH", "TOKEN_SUBJECT_MISMATCH"}


async def test_a_tampered_token_is_invalid(hub: Any, demo_pki: DemoPki) -> None:
    token = (await issue(demo_pki, GZ, hub.port)).access_token
    header, body, signature = token.split(".")
    forged = f"{header}.{body}.{signature[:-4]}AAAA"
    refused = await check_with(demo_pki, GZ, hub.port, forged)
    assert refused is not None
    assert refused.reason == "TOKEN_INVALID"


async def test_an_expired_token_is_refused_with_a_clear_reason(hub_factory: Any, demo_pki: DemoPki) -> None:
    hub = await hub_factory(token_lifetime_seconds=1)
    token = (await issue(demo_pki, GZ, hub.port)).access_token
    await asyncio.sleep(1.2)
    refused = await check_with(demo_pki, GZ, hub.port, token)
    assert refused is not None
    assert refused.reason == "TOKEN_EXPIRED"


async def test_a_token_limited_to_some_scopes_cannot_be_used_for_others(hub: Any, demo_pki: DemoPki) -> None:
    token = (await issue(demo_pki, GZ, hub.port, "records:write")).access_token
    refused = await check_with(demo_pki, GZ, hub.port, token)
    assert refused is not None
    assert (refused.code_name, refused.reason) == ("PERMISSION_DENIED", "SCOPE_MISSING")
    assert refused.metadata["scope"] == "query:enrollment"


async def test_asking_for_a_scope_the_policy_does_not_grant_is_refused(hub: Any, demo_pki: DemoPki) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await issue(demo_pki, GZ, hub.port, "admin")
    error = error_from_rpc(refused.value.code(), refused.value.details(), refused.value.trailing_metadata())
    assert (error.code_name, error.reason) == ("PERMISSION_DENIED", "SCOPE_MISSING")


async def test_key_rotation_keeps_tokens_already_issued_valid(
    hub_factory: Any, demo_pki: DemoPki, tmp_path: Path
) -> None:
    data_dir = tmp_path / "hub"
    hub = await hub_factory(data_dir=data_dir)
    old_token = (await issue(demo_pki, GZ, hub.port)).access_token
    await hub.stop(0)
    TokenKeys.load_or_create(data_dir).rotated().save(data_dir / TOKEN_KEYS_FILE)
    hub = await hub_factory(data_dir=data_dir)
    new_token = (await issue(demo_pki, GZ, hub.port)).access_token
    assert jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(old_token)["kid"]
    assert await check_with(demo_pki, GZ, hub.port, old_token) is None
    assert await check_with(demo_pki, GZ, hub.port, new_token) is None


def test_key_rotation_ends_console_sessions_but_not_api_tokens(tmp_path: Path) -> None:
    keys = TokenKeys.load_or_create(tmp_path)
    before = TokenService(keys)
    session, _ = before.issue("auditor:li.na", ["audit:read"], None, audience=CONSOLE_AUDIENCE)
    api, _ = before.issue(GZ, ["query:check"], "thumb")
    assert before.verify_console(session).subject == "auditor:li.na"
    after = TokenService(keys.rotated())
    with pytest.raises(errors.Unauthenticated) as ended:
        after.verify_console(session)
    assert ended.value.reason == "TOKEN_KEY_ROTATED"
    assert after.verify(api, "thumb").subject == GZ  # API tokens ride out the rotation
    fresh, _ = after.issue("auditor:li.na", ["audit:read"], None, audience=CONSOLE_AUDIENCE)
    assert after.verify_console(fresh).scopes == frozenset({"audit:read"})


async def test_the_jwks_verifies_the_hubs_tokens(hub: Any, demo_pki: DemoPki) -> None:
    token = (await issue(demo_pki, GZ, hub.port)).access_token
    jwks = hub.tokens.keys.jwks()
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience="hutong")
    assert claims["sub"] == GZ
    assert "x5t#S256" in claims["cnf"]
    assert json.dumps(jwks)  # serialisable as published


async def test_the_client_fetches_and_uses_tokens_by_itself(client_for: Callable[..., HubClient]) -> None:
    client = client_for(GZ)
    answer = await client.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)
    assert answer.results
    assert (await client.call_metadata())[0][0] == "authorization"
