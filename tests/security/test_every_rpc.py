"""Every RPC the hub serves, called by every kind of caller it must refuse (issue 10, security tests).

The RPCs come from the ``hutong.v1`` descriptors (every ``*_pb2`` module, less the services only
province nodes serve), so a new RPC is in the matrix as soon as it is in a proto file. Each test
calls one RPC with an empty request of its type — authentication and authorization run before a
field is read — and asserts the status, the ErrorInfo reason and the exchange-log entry.

What the hub answers (RPC × situation; "scope-free" are IssueToken, GetCheckpoint and
GetConsistencyProof, which the certificate alone authorizes):

==============================================  =====================================  ===========================
situation                                       every RPC that needs a scope           exchange-log entry
==============================================  =====================================  ===========================
no client certificate                           UNAVAILABLE (TLS handshake)            none (no call reaches it)
certificate of a foreign CA                     UNAVAILABLE (TLS handshake)            none
expired certificate                             UNAVAILABLE (TLS handshake)            none
revoked certificate (CRL)                       UNAUTHENTICATED CLIENT_CERTIFICATE_    one, outcome
                                                REVOKED (scope-free RPCs too)          UNAUTHENTICATED, naming
                                                                                       the revoked node
no token / not a Bearer token                   UNAUTHENTICATED TOKEN_MISSING          one, naming the caller
token of another node (cnf mismatch)            UNAUTHENTICATED TOKEN_CERTIFICATE_     one
                                                MISMATCH
expired token                                   UNAUTHENTICATED TOKEN_EXPIRED          one
console token (audience hutong-console)         UNAUTHENTICATED TOKEN_INVALID          one
unsigned token (alg none)                       UNAUTHENTICATED TOKEN_INVALID          one
token signed by a key the hub does not hold     UNAUTHENTICATED TOKEN_KEY_UNKNOWN      one
hub-signed token bound to this certificate      UNAUTHENTICATED TOKEN_SUBJECT_         one, its subject the
but naming another node                         MISMATCH                               other node
token without the RPC's scope                   PERMISSION_DENIED SCOPE_MISSING        one, naming the subject
policy grants the node another scope only       PERMISSION_DENIED SCOPE_MISSING        one
policy withdrew a scope the token carries       PERMISSION_DENIED SCOPE_MISSING        one
==============================================  =====================================  ===========================

Scope-free RPCs do not read the token: under every token situation they answer as for a good
caller (OK for these empty requests), and their entry has an empty subject. A method missing
from ``SCOPES_BY_METHOD`` would be refused PERMISSION_DENIED SCOPE_UNKNOWN in every situation
past the certificate; the tests expect that too, so an unmapped RPC fails nothing here but
stays closed.

Two hubs serve the whole module (one event loop): the CRL hub (GZ holds every scope, CD only
``signals:write``) and a hub with the same token keys whose policy grants GZ nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import pkgutil
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

import hutong.v1
from gateway.domain.access import SCOPES, AccessPolicy
from gateway.hub.server import SCOPES_BY_METHOD, HubServer, HubSettings
from gateway.hub.tokens import CONSOLE_AUDIENCE, TOKEN_KEYS_FILE, TokenKeys, TokenService, certificate_thumbprint
from hutong.v1 import auth_pb2, auth_pb2_grpc
from pki import DemoPki, NodeIdentity, TlsMaterial, generate_key, write_demo_pki, write_node_credentials
from pki.operator import RevokedEntry, write_public_pem

pytestmark = pytest.mark.asyncio(loop_scope="module")

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"
REVOKED = "hutong://province/440000/node/revoked-01"

#: hutong.v1 services the hub does not serve: province nodes do (gateway.node.serve).
NOT_SERVED_BY_THE_HUB = frozenset({"hutong.v1.ProvinceNodeService"})
#: The one scope the policy grants CD.
CD_SCOPE = "signals:write"
#: ErrorInfo reasons that mean "refused for who is calling" (certificate, token, scope).
AUTH_REASONS = frozenset(
    {
        "CLIENT_CERTIFICATE_MISSING",
        "CLIENT_CERTIFICATE_EXPIRED",
        "CLIENT_CERTIFICATE_REVOKED",
        "CLIENT_CERTIFICATE_INVALID",
        "NODE_IDENTITY_MISSING",
        "NODE_IDENTITY_AMBIGUOUS",
        "TOKEN_MISSING",
        "TOKEN_INVALID",
        "TOKEN_EXPIRED",
        "TOKEN_KEY_UNKNOWN",
        "TOKEN_CERTIFICATE_MISMATCH",
        "TOKEN_SUBJECT_MISMATCH",
        "SCOPE_MISSING",
        "SCOPE_UNKNOWN",
        "RATE_LIMITED",
    }
)


@dataclass(frozen=True)
class Rpc:
    """One RPC of a hutong.v1 service, with what a raw call of it needs."""

    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def name(self) -> str:
        """The method's short name (the key of SCOPES_BY_METHOD)."""
        return str(self.method.name)

    @property
    def path(self) -> str:
        """``/hutong.v1.Service/Method``, as the exchange log names it."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def scope(self) -> str | None:
        """The scope the hub requires ("" for none; None when the method is not mapped)."""
        return SCOPES_BY_METHOD.get(self.name)

    @property
    def endless(self) -> bool:
        """A server stream fed by the hub alone (Subscribe): it ends only with a deadline."""
        return bool(self.method.server_streaming and not self.method.client_streaming)


def hub_rpcs() -> list[Rpc]:
    """Every RPC of every hutong.v1 service the hub serves, in a stable order."""
    rpcs = []
    for info in sorted(pkgutil.iter_modules(hutong.v1.__path__), key=lambda m: m.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"hutong.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name not in NOT_SERVED_BY_THE_HUB:
                rpcs.extend(Rpc(service, method) for method in service.methods)
    return rpcs


RPCS = hub_rpcs()
RPC_PARAMS = [pytest.param(rpc, id=f"{rpc.service.name}.{rpc.name}") for rpc in RPCS]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


def new_request_id(label: str) -> str:
    """A request id of one test's call, to find its entry in the log."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


def channel_to(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """A channel to the hub; ``localhost`` is the name the hub's certificate carries."""
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


def node_credentials(tls: TlsMaterial) -> grpc.ChannelCredentials:
    """mTLS credentials presenting ``tls``'s certificate."""
    return grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)


def thumbprint_of(tls: TlsMaterial) -> str:
    """``x5t#S256`` of the leaf certificate of ``tls``."""
    cert = x509.load_pem_x509_certificate(tls.cert_chain_pem)
    return certificate_thumbprint(cert.public_bytes(serialization.Encoding.DER))


def expired_tls(demo_pki: DemoPki) -> TlsMaterial:
    """A node certificate of the demo CA, with every extension of a real one, that expired yesterday."""
    key = generate_key()
    model = demo_pki.ca.issue_node_certificate(NodeIdentity("440000", "expired-01"), key.public_key(), valid_days=1)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(model.subject)
        .issuer_name(model.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for extension in model.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return TlsMaterial.from_objects([builder.sign(demo_pki.ca.key, hashes.SHA256())], key, [demo_pki.ca.cert])


@dataclass
class Bench:
    """The module's hubs, channels per caller and tokens."""

    #: CRL naming REVOKED's certificate; policy: GZ every scope, CD signals:write only.
    hub: HubServer
    #: Same token-signing keys as ``hub``; policy: GZ no scope at all.
    withdrawn: HubServer
    #: Open channels to ``hub`` by caller (GZ, ZZ, CD, REVOKED) and ``withdrawn`` (key "withdrawn").
    channels: dict[str, grpc.aio.Channel]
    #: Credentials of callers the TLS handshake refuses, by situation.
    untrusted: dict[str, grpc.ChannelCredentials]
    #: A valid token per node of ``hub`` (GZ: every scope).
    tokens: dict[str, str]
    #: Tokens that are wrong for GZ's connection, by situation.
    bad_tokens: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench(demo_pki: DemoPki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bench]:
    """Start the two hubs, open a channel per caller, issue the tokens."""
    tmp = tmp_path_factory.mktemp("security")
    revoked = write_node_credentials(demo_pki.ca, tmp / "revoked", NodeIdentity.parse_uri(REVOKED)).tls
    crl_path = tmp / "crl.pem"
    serial = x509.load_pem_x509_certificate(revoked.cert_chain_pem).serial_number
    crl = demo_pki.ca.sign_crl(
        [RevokedEntry(serial, dt.datetime.now(dt.UTC))], crl_number=1, next_update=dt.timedelta(days=1)
    )
    write_public_pem(crl_path, crl.public_bytes(serialization.Encoding.PEM), field="crl")

    def settings(data_dir: Path, **more: Any) -> HubSettings:
        return HubSettings(
            data_dir=data_dir,
            tls=demo_pki.hub_tls,
            host="127.0.0.1",
            port=0,
            prepare_workers=0,
            crypto_suite="intl",
            **more,
        )

    async with contextlib.AsyncExitStack() as stack:
        yield await open_bench(stack, demo_pki, tmp, settings, crl_path, revoked)


async def open_bench(
    stack: contextlib.AsyncExitStack,
    demo_pki: DemoPki,
    tmp: Path,
    settings: Callable[..., HubSettings],
    crl_path: Path,
    revoked: TlsMaterial,
) -> Bench:
    """Start the hubs and open the channels (each closed by ``stack``), issue the tokens."""
    policy = AccessPolicy.from_mapping({"nodes": {GZ: {"scopes": list(SCOPES)}, CD: {"scopes": [CD_SCOPE]}}})
    hub = HubServer(settings(tmp / "hub", policy=policy, crl_path=crl_path))
    await hub.start()
    stack.push_async_callback(hub.stop, 0)
    # The second hub verifies the first one's tokens (same keys) under a policy that withdrew GZ's scopes.
    (tmp / "withdrawn").mkdir()
    shutil.copy2(tmp / "hub" / TOKEN_KEYS_FILE, tmp / "withdrawn" / TOKEN_KEYS_FILE)
    withdrawn = HubServer(
        settings(tmp / "withdrawn", policy=AccessPolicy.from_mapping({"nodes": {GZ: {"scopes": []}}}))
    )
    await withdrawn.start()
    stack.push_async_callback(withdrawn.stop, 0)

    gz_tls = demo_pki.nodes[GZ].tls
    channels = {uri: channel_to(hub.port, node_credentials(demo_pki.nodes[uri].tls)) for uri in (GZ, ZZ, CD)}
    channels[REVOKED] = channel_to(hub.port, node_credentials(revoked))
    channels["withdrawn"] = channel_to(withdrawn.port, node_credentials(gz_tls))
    for channel in channels.values():
        stack.push_async_callback(channel.close)
    foreign = write_demo_pki(tmp / "foreign", provinces=(("440000", "gz-01"),)).nodes[GZ].tls
    untrusted = {
        "no-certificate": grpc.ssl_channel_credentials(gz_tls.ca_pem),
        # The same node name, trusting the real CA: only the issuer of the client certificate differs.
        "foreign-ca": grpc.ssl_channel_credentials(gz_tls.ca_pem, foreign.private_key_pem, foreign.cert_chain_pem),
        "expired-certificate": node_credentials(expired_tls(demo_pki)),
    }
    tokens = {}
    for uri in (GZ, ZZ, CD):
        issued = await auth_pb2_grpc.AuthServiceStub(channels[uri]).IssueToken(auth_pb2.IssueTokenRequest(), timeout=5)
        tokens[uri] = issued.access_token
    assert hub.tokens is not None
    gz_thumbprint = thumbprint_of(gz_tls)
    every = list(SCOPES)
    kid, _ = hub.tokens.keys.active
    now = int(dt.datetime.now(dt.UTC).timestamp())
    unsigned_claims = {
        "iss": "hutong",
        "aud": "hutong",
        "sub": GZ,
        "scope": " ".join(every),
        "iat": now,
        "exp": now + 600,
        "cnf": {"x5t#S256": gz_thumbprint},
    }
    stranger_keys = TokenKeys([("stranger-1", ec.generate_private_key(ec.SECP256R1()))])
    bad_tokens = {
        "other-node": tokens[ZZ],
        "expired": hub.tokens.issue(GZ, every, gz_thumbprint, lifetime_seconds=-60)[0],
        "console": hub.tokens.issue("ops@example.org", ["admin"], None, audience=CONSOLE_AUDIENCE)[0],
        "unsigned": jwt.encode(unsigned_claims, None, algorithm="none", headers={"kid": kid}),
        "unknown-key": TokenService(stranger_keys).issue(GZ, every, gz_thumbprint)[0],
        "subject-of-another-node": hub.tokens.issue(ZZ, every, gz_thumbprint)[0],
    }
    return Bench(hub, withdrawn, channels, untrusted, tokens, bad_tokens)


@pytest.fixture
def call_rpc(rpc_answer: Callable[[grpc.aio.AioRpcError | None], Any]) -> Callable[..., Any]:
    """``await call_rpc(channel, rpc, metadata, request_id)``: the Answer of one call with an empty request.

    A request stream sends one empty message; response streams are read to their end. Every call
    has a deadline: five seconds, half a second for a stream only the hub ends (Subscribe).
    """

    async def call(channel: grpc.aio.Channel, rpc: Rpc, metadata: tuple[tuple[str, str], ...], request_id: str) -> Any:
        request_cls = message_factory.GetMessageClass(rpc.method.input_type)
        response_cls = message_factory.GetMessageClass(rpc.method.output_type)
        codec = {"request_serializer": request_cls.SerializeToString, "response_deserializer": response_cls.FromString}
        md = (*metadata, ("x-request-id", request_id))
        timeout = 0.5 if rpc.endless else 5.0
        client_streaming, server_streaming = rpc.method.client_streaming, rpc.method.server_streaming
        request = iter([request_cls()]) if client_streaming else request_cls()
        try:
            if client_streaming and server_streaming:
                async for _ in channel.stream_stream(rpc.path, **codec)(request, metadata=md, timeout=timeout):
                    pass
            elif server_streaming:
                async for _ in channel.unary_stream(rpc.path, **codec)(request, metadata=md, timeout=timeout):
                    pass
            elif client_streaming:
                await channel.stream_unary(rpc.path, **codec)(request, metadata=md, timeout=timeout)
            else:
                await channel.unary_unary(rpc.path, **codec)(request, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return rpc_answer(exc)
        return rpc_answer(None)

    return call


def assert_authorised(answer: Any, rpc: Rpc) -> None:
    """The call got past the certificate, token and scope checks (whatever it then answered)."""
    assert answer.reason not in AUTH_REASONS, (rpc.path, answer)
    if rpc.endless:
        assert answer.code == "DEADLINE_EXCEEDED", answer  # it was serving until the caller's deadline
    elif rpc.scope == "":
        assert answer.code == "OK", answer  # the scope-free RPCs answer empty requests


# -- the matrix is the hub's whole surface ------------------------------------------------------


async def test_the_matrix_holds_every_hutong_service_the_hub_serves_and_each_is_mapped(bench: Bench) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(bench.channels[GZ])
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    responses = [r async for r in call]
    served = {s.name for s in responses[0].list_services_response.service if s.name.startswith("hutong.")}
    assert served == {rpc.service.full_name for rpc in RPCS}
    assert len(RPCS) >= 22
    assert {rpc.name for rpc in RPCS if rpc.scope == ""} == {"IssueToken", "GetCheckpoint", "GetConsistencyProof"}
    assert all(rpc.scope is not None for rpc in RPCS)


@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_with_a_good_certificate_and_token_no_rpc_is_refused_for_who_calls(
    bench: Bench, rpc: Rpc, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """The control: the refusals below come from the situation, not from the empty requests."""
    request_id = new_request_id("good")
    answer = await call_rpc(bench.channels[GZ], rpc, bearer(bench.tokens[GZ]), request_id)
    assert_authorised(answer, rpc)
    entries = await entries_of(bench.hub, request_id)
    stream_entry = entries[-1]
    assert (stream_entry.method, stream_entry.caller) == (rpc.path, GZ)
    if rpc.endless:
        # The hub cannot tell a caller's deadline from a cancel: it logs the abandoned call as CANCELLED.
        assert stream_entry.outcome == "CANCELLED"


# -- refused in the TLS handshake: nothing reaches the hub ----------------------------------------


@pytest.mark.parametrize("situation", ["no-certificate", "foreign-ca", "expired-certificate"])
@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_caller_without_a_trusted_certificate_fails_the_handshake_and_reaches_no_log(
    bench: Bench, rpc: Rpc, situation: str, call_rpc: Callable[..., Any], log_size: Callable[..., Any]
) -> None:
    """gRPC's TLS layer refuses the connection, so the client sees UNAVAILABLE and no call exists.

    The hub's pipeline (and with it the exchange log) never sees such a caller: it cannot leave an
    entry, and the hub's log does not grow. That is the hub's behaviour, not an omission of this
    test: what is recorded of these attempts is only what the TLS library logs. The caller sends a
    valid token of GZ too, so the certificate alone is what is refused.
    """
    before = await log_size(bench.hub)
    channel = channel_to(bench.hub.port, bench.untrusted[situation])
    try:
        answer = await call_rpc(channel, rpc, bearer(bench.tokens[GZ]), new_request_id(situation))
    finally:
        await channel.close()
    assert answer.code == "UNAVAILABLE", answer
    await asyncio.sleep(0.05)
    assert await log_size(bench.hub) == before


# -- refused by the hub: a certificate it revoked -------------------------------------------------


@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_revoked_certificate_is_refused_on_every_rpc_and_the_refusal_is_logged(
    bench: Bench, rpc: Rpc, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """The handshake succeeds (the chain is good); the hub checks its CRL on every call, scope-free ones too."""
    request_id = new_request_id("revoked")
    answer = await call_rpc(bench.channels[REVOKED], rpc, bearer(bench.tokens[GZ]), request_id)
    assert (answer.code, answer.reason) == ("UNAUTHENTICATED", "CLIENT_CERTIFICATE_REVOKED")
    (entry,) = await entries_of(bench.hub, request_id)
    assert (entry.method, entry.outcome, entry.subject, entry.person_keys) == (rpc.path, "UNAUTHENTICATED", "", ())


async def test_the_entry_of_a_call_refused_for_a_revoked_certificate_names_the_revoked_node(
    bench: Bench, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """TLS verified the certificate's chain, so its identity is the CA's word: the refusal is attributed to it (G6)."""
    (rpc,) = [r for r in RPCS if r.name == "CheckEnrollment"]
    request_id = new_request_id("revoked-caller")
    answer = await call_rpc(bench.channels[REVOKED], rpc, (), request_id)
    assert answer.reason == "CLIENT_CERTIFICATE_REVOKED"
    (entry,) = await entries_of(bench.hub, request_id)
    assert (entry.caller, entry.province) == (REVOKED, "440000")


# -- refused by the hub: no valid access token ----------------------------------------------------

#: What GZ sends instead of its token → the ErrorInfo reason of the refusal (see token_metadata).
TOKEN_SITUATIONS = {
    "no-token": "TOKEN_MISSING",
    "not-bearer": "TOKEN_MISSING",
    "other-node": "TOKEN_CERTIFICATE_MISMATCH",
    "expired": "TOKEN_EXPIRED",
    "console": "TOKEN_INVALID",
    "unsigned": "TOKEN_INVALID",
    "unknown-key": "TOKEN_KEY_UNKNOWN",
    "subject-of-another-node": "TOKEN_SUBJECT_MISMATCH",
}


def token_metadata(bench: Bench, situation: str) -> tuple[tuple[str, str], ...]:
    """What GZ's call carries in this situation."""
    if situation == "no-token":
        return ()
    if situation == "not-bearer":
        return (("authorization", f"Basic {bench.tokens[GZ]}"),)
    return bearer(bench.bad_tokens[situation])


@pytest.mark.parametrize("situation", list(TOKEN_SITUATIONS))
@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_call_without_a_valid_access_token_is_unauthenticated_and_logged(
    bench: Bench, rpc: Rpc, situation: str, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """GZ's own, valid certificate; a token that is missing or not GZ's. Scope-free RPCs never read it."""
    request_id = new_request_id(situation)
    answer = await call_rpc(bench.channels[GZ], rpc, token_metadata(bench, situation), request_id)
    (entry,) = await entries_of(bench.hub, request_id)
    assert (entry.method, entry.caller, entry.province, entry.person_keys) == (rpc.path, GZ, "440000", ())
    if rpc.scope == "":
        assert_authorised(answer, rpc)
        assert (entry.outcome, entry.subject) == ("OK", "")
        return
    if rpc.scope is None:
        assert (answer.code, answer.reason) == ("PERMISSION_DENIED", "SCOPE_UNKNOWN")
        return
    assert (answer.code, answer.reason) == ("UNAUTHENTICATED", TOKEN_SITUATIONS[situation])
    assert entry.outcome == "UNAUTHENTICATED"
    # The subject is the token's once its signature held (a hub-signed token naming another node).
    assert entry.subject == (ZZ if situation == "subject-of-another-node" else "")


# -- refused by the hub: a scope the call needs --------------------------------------------------


async def assert_scope_refused(
    hub: HubServer, rpc: Rpc, answer: Any, request_id: str, node: str, entries_of: Callable[..., Any]
) -> None:
    """PERMISSION_DENIED SCOPE_MISSING naming the scope and node, and an entry naming the method and subject."""
    assert (answer.code, answer.reason) == ("PERMISSION_DENIED", "SCOPE_MISSING"), answer
    assert answer.metadata == {"scope": rpc.scope, "node": node}
    (entry,) = await entries_of(hub, request_id)
    assert (entry.method, entry.outcome, entry.caller, entry.subject) == (rpc.path, "PERMISSION_DENIED", node, node)
    assert entry.person_keys == ()


@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_token_carrying_every_scope_but_the_one_an_rpc_needs_is_permission_denied(
    bench: Bench, rpc: Rpc, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """GZ holds every scope; it asks for a token without exactly the RPC's scope."""
    others = [s for s in SCOPES if s != rpc.scope]
    issued = await auth_pb2_grpc.AuthServiceStub(bench.channels[GZ]).IssueToken(
        auth_pb2.IssueTokenRequest(scopes=others), timeout=5
    )
    request_id = new_request_id("scope")
    answer = await call_rpc(bench.channels[GZ], rpc, bearer(issued.access_token), request_id)
    if not rpc.scope:
        assert_authorised(answer, rpc)
        return
    assert "access token does not carry" in answer.message
    await assert_scope_refused(bench.hub, rpc, answer, request_id, GZ, entries_of)


@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_node_the_policy_grants_one_scope_is_refused_every_rpc_of_the_others(
    bench: Bench, rpc: Rpc, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """CD's policy grants signals:write alone, so its token carries nothing else."""
    request_id = new_request_id("policy")
    answer = await call_rpc(bench.channels[CD], rpc, bearer(bench.tokens[CD]), request_id)
    if rpc.scope in ("", CD_SCOPE):
        assert_authorised(answer, rpc)
        return
    await assert_scope_refused(bench.hub, rpc, answer, request_id, CD, entries_of)


@pytest.mark.parametrize("rpc", RPC_PARAMS)
async def test_a_scope_the_policy_withdrew_is_refused_though_the_token_still_carries_it(
    bench: Bench, rpc: Rpc, call_rpc: Callable[..., Any], entries_of: Callable[..., Any]
) -> None:
    """GZ's token (every scope, signed with keys both hubs hold) at a hub whose policy grants GZ nothing."""
    request_id = new_request_id("withdrawn")
    answer = await call_rpc(bench.channels["withdrawn"], rpc, bearer(bench.tokens[GZ]), request_id)
    if not rpc.scope:
        assert_authorised(answer, rpc)
        return
    assert "policy does not grant" in answer.message
    await assert_scope_refused(bench.withdrawn, rpc, answer, request_id, GZ, entries_of)


# -- what the hub's own log says about a refusal -------------------------------------------------


async def test_the_log_line_of_a_refused_call_names_the_rpc_and_request_id(
    bench: Bench, call_rpc: Callable[..., Any]
) -> None:
    (rpc,) = [r for r in RPCS if r.name == "CheckEnrollment"]
    request_id = new_request_id("log-line")
    with capture_logs(processors=[merge_contextvars]) as logs:
        answer = await call_rpc(bench.channels[GZ], rpc, (), request_id)
    assert answer.reason == "TOKEN_MISSING"
    (line,) = [e for e in logs if e["event"] == "rpc_finished" and e.get("code") == "UNAUTHENTICATED"]
    assert (line.get("rpc"), line.get("request_id")) == ("CheckEnrollment", request_id)
    assert (line.get("province"), line.get("node")) == ("440000", "gz-01")


async def test_the_log_line_of_a_call_refused_for_a_revoked_certificate_names_the_call_and_the_node(
    bench: Bench, call_rpc: Callable[..., Any]
) -> None:
    (rpc,) = [r for r in RPCS if r.name == "CheckEnrollment"]
    request_id = new_request_id("log-line-revoked")
    with capture_logs(processors=[merge_contextvars]) as logs:
        answer = await call_rpc(bench.channels[REVOKED], rpc, (), request_id)
    assert answer.reason == "CLIENT_CERTIFICATE_REVOKED"
    (line,) = [e for e in logs if e["event"] == "rpc_finished" and e.get("request_id") == request_id]
    assert (line.get("rpc"), line.get("code"), line.get("province")) == ("CheckEnrollment", "UNAUTHENTICATED", "440000")
