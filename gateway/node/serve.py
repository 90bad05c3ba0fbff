"""``hutong node serve``: the province node's federation server, which only the ministry hub may call.

The hub stores no record detail; when a node asks it for a person's full records
(``AssistanceQueryService.FetchRecordDetail``), the hub asks the node of each province holding
one, here: ``ProvinceNodeService.FetchRecordDetail``. The node answers from a
:class:`DetailSource` (the outbox, which keeps every record it synced), filtered by the
purpose the original requester stated, with the same rules the hub applies
(:func:`gateway.hub.disclosure.filter_detail`).

**Household verification (核对).** ``AnswerVerification`` is this node's part of a verification the
hub fans out to every province (:mod:`gateway.hub.verification`): what the node's own data files
hold about the household's members, of the item classes asked, each item marked with its
sensitivity. The files are declared in ``node.toml`` (``[[verification.sources]]``) and indexed in
``<data_dir>/verification.sqlite`` when the server starts (:mod:`gateway.node.verification`). A node
with no sources takes no part and says so (FAILED_PRECONDITION ``VERIFICATION_NOT_SERVED``), so that
the report shows the province did not take part rather than "answered, holds nothing"; a purpose not
in ``verification.purposes`` is refused (PERMISSION_DENIED ``PURPOSE_NOT_SERVED``); the consent is
checked again (FAILED_PRECONDITION ``CONSENT_EXPIRED``), as a node does not take the hub's word for
what its own data may be read for.

**Who may call.** mTLS with client certificates of the ministry CA (``hub.ca``), and then only the
hub: a node accepts a client certificate that carries no ``hutong://`` node URI, names at
least one DNS name or IP address and allows client authentication — the rule the CA's registry
uses to tell a hub certificate from a node's (:func:`pki.hub_names_from_certificate`). With
``serve.hub_name`` the certificate must also name that host. A node certificate is refused with
PERMISSION_DENIED (``HUB_CERTIFICATE_REQUIRED``): provinces ask each other only through the hub,
which checks their scope and purpose and audits the question. With ``serve.crl`` a revoked or
expired hub certificate is refused on every call, as the hub does with node certificates.

**Audit.** Every call is an entry of the node's own exchange log, ``<data_dir>/audit.sqlite``
(the hub's Merkle log and signed checkpoints: :class:`gateway.hub.audit.AuditRecorder` over a
:class:`gateway.store.sqlite.SqliteStore`, whose hub tables stay empty here), appended durably
before the answer leaves the node. In a node's entry ``caller`` and ``province`` are the node
that asked the hub (as the hub vouches), ``subject`` is the hub that forwarded the question
(``hub:<name in its certificate>``), ``request_id`` is the hub's request id, so the entries on
both sides can be matched. Entries name no persons: the node holds no national person-key
secret, so an ``AnswerVerification`` entry is matched to the hub's entry of the same leg (the same
request id, ``<verification id>/<n>``), which carries the members' person keys; its counts are the
members, the classes asked, the items answered and the items of each class (``real_estate``). The
checkpoint key is ``<data_dir>/audit-note.key``, its log origin
``<node URI>/audit``; its verifier key is logged when it is made (``audit_key_created``). There
is no key binding: :mod:`gateway.audit.binding` lets only a hub certificate vouch for a log key.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from gateway import errors
from gateway.domain.access import purpose_name
from gateway.domain.policy import require_purpose
from gateway.domain.verification import (
    Consent,
    check_consent,
    item_classes_asked,
    member_id_numbers,
    today_in_china,
)
from gateway.hub.audit import AuditKey, AuditRecorder
from gateway.hub.convert import set_date
from gateway.hub.disclosure import filter_detail
from gateway.hub.interceptors import CallInfo, HubInterceptor, LogContext, current_call
from gateway.hub.revocation import RevocationList
from gateway.hub.tokens import certificate_thumbprint
from gateway.node.config import load_node_config
from gateway.node.verification import INDEX_DATABASE, HeldItem, ItemIndex, VerificationSettings
from gateway.serving import serve_until_signalled
from gateway.store.base import NodeRef
from gateway.store.sqlite import SqliteStore
from hutong.v1 import node_pb2, node_pb2_grpc, verification_pb2
from pki import NodeIdentity, TlsMaterial, hub_names_from_certificate, identity_from_certificate

__all__ = [
    "AUDIT_DATABASE",
    "DetailSource",
    "HubOnly",
    "NodeServer",
    "NodeServerSettings",
    "ProvinceNodeServicer",
    "serve_command",
]

log = structlog.get_logger("hutong.node")

#: The node's exchange log, in its data directory.
AUDIT_DATABASE = "audit.sqlite"
_SERVICE = node_pb2.DESCRIPTOR.services_by_name["ProvinceNodeService"].full_name
_MAX_MESSAGE = 4 * 1024 * 1024


class DetailSource(Protocol):
    """Where a node finds the full record behind a record id (the outbox implements it)."""

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        """The record as the province holds it, unfiltered; None when the node has no such record."""


@dataclass(frozen=True, slots=True)
class _HubPeer:
    """What the node keeps of a verified hub certificate."""

    names: tuple[str, ...]
    serial: int
    not_after: float
    thumbprint: str


class HubOnly:
    """First step of the node's call chain: lets in the ministry hub's certificate, and nothing else.

    TLS has already verified the chain to the ministry CA; this step decides that the
    certificate is a hub's (see the module docstring) and, on every call, that it has not
    expired or been revoked since the connection was made.
    """

    def __init__(self, *, hub_name: str = "", revocations: RevocationList | None = None, cache_size: int = 64) -> None:
        self._hub_name = hub_name
        self._revocations = revocations
        self._cache: OrderedDict[bytes, _HubPeer] = OrderedDict()
        self._cache_size = cache_size

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Set ``call.subject`` to the hub's name, or refuse the call."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise errors.Unauthenticated(
                "a client certificate issued by the ministry CA is required", reason="CLIENT_CERTIFICATE_MISSING"
            )
        pem: bytes = pems[0]
        peer = self._cache.get(pem)
        if peer is None:
            peer = self._parse(pem, call)
            self._cache[pem] = peer
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if time.time() > peer.not_after:
            raise errors.Unauthenticated(
                "the hub's client certificate has expired", reason="CLIENT_CERTIFICATE_EXPIRED"
            )
        if self._revocations is not None and self._revocations.is_revoked(peer.serial):
            raise errors.Unauthenticated(
                "the hub's client certificate has been revoked by the ministry CA",
                reason="CLIENT_CERTIFICATE_REVOKED",
                metadata={"serial": f"{peer.serial:x}"},
            )
        if self._hub_name and self._hub_name not in peer.names:
            raise errors.PermissionDenied(
                f"this node accepts only the hub {self._hub_name}; the certificate names {', '.join(peer.names)}",
                reason="HUB_NAME_MISMATCH",
                metadata={"hub_name": self._hub_name},
            )
        call.subject = "hub:" + (self._hub_name or peer.names[0])
        call.thumbprint = peer.thumbprint

    @staticmethod
    def _parse(pem: bytes, call: CallInfo) -> _HubPeer:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            names = hub_names_from_certificate(cert)
        except ValueError as exc:
            raise errors.Unauthenticated(
                f"the client certificate cannot be read: {exc}", reason="CLIENT_CERTIFICATE_INVALID"
            ) from exc
        except errors.PkiError as exc:
            if exc.reason == "NODE_CERTIFICATE":
                # The entry of the refused call names the node that knocked.
                with contextlib.suppress(errors.PkiError):
                    identity = identity_from_certificate(cert)
                    call.caller = NodeRef(identity.province_code, identity.node_name)
            raise errors.PermissionDenied(
                f"only the ministry hub may call a province node: {exc.message}",
                reason="HUB_CERTIFICATE_REQUIRED",
                metadata={"cause_reason": exc.reason},
            ) from exc
        return _HubPeer(
            names,
            cert.serial_number,
            cert.not_valid_after_utc.timestamp(),
            certificate_thumbprint(cert.public_bytes(serialization.Encoding.DER)),
        )

    def exit(self, call: CallInfo) -> None:
        """Nothing to observe."""


def _requester(requester: node_pb2.Requester) -> NodeRef:
    """The node that asked the hub, checked: a well-formed URI and its own province."""
    try:
        identity = NodeIdentity.parse_uri(requester.node_uri)
    except errors.PkiError as exc:
        raise errors.InvalidArgument(
            f"requester.node_uri is not a node identity URI: {exc.message}",
            reason="REQUESTER_INVALID",
            field="requester.node_uri",
        ) from exc
    if requester.province_code != identity.province_code:
        raise errors.InvalidArgument(
            "requester.province_code must be the province of requester.node_uri",
            reason="REQUESTER_INVALID",
            field="requester.province_code",
        )
    return NodeRef(identity.province_code, identity.node_name)


def _hub_call(requester: node_pb2.Requester, hub_request_id: str) -> CallInfo:
    """The call in progress, named after the node that asked the hub and the hub's request id (for both logs)."""
    call = current_call()
    call.caller = _requester(requester)
    if hub_request_id:
        if len(hub_request_id) > 128 or not hub_request_id.isprintable():
            raise errors.InvalidArgument(
                "hub_request_id must be printable and at most 128 characters",
                reason="REQUEST_ID_INVALID",
                field="hub_request_id",
            )
        call.request_id = hub_request_id
    structlog.contextvars.bind_contextvars(
        request_id=call.request_id, requester=call.caller.uri, province=call.caller.province_code
    )
    return call


def _consent(request: node_pb2.ProvinceNodeServiceAnswerVerificationRequest) -> Consent | None:
    if not request.HasField("consent"):
        return None
    pb = request.consent
    signed = pb.signed_on
    signed_on = None
    if signed.year or signed.month or signed.day:
        try:
            signed_on = dt.date(signed.year, signed.month, signed.day)
        except ValueError:
            raise errors.InvalidArgument(
                f"{signed.year:04d}-{signed.month:02d}-{signed.day:02d} is not a calendar date",
                reason="CONSENT_INVALID",
                field="consent.signed_on",
            ) from None
    return Consent(pb.consent_id.strip(), pb.document_sha256.strip().lower(), signed_on)


def _item_to_proto(member_index: int, held: HeldItem) -> verification_pb2.VerificationItem:
    item = verification_pb2.VerificationItem(
        member_index=member_index,
        item_class=verification_pb2.ItemClass.ValueType(held.item_class),
        sensitivity=verification_pb2.Sensitivity.ValueType(held.sensitivity),
        reference=held.reference,
        description=held.description,
        amount_fen=held.amount_fen,
    )
    if held.as_of is not None:
        set_date(item.as_of, held.as_of)
    return item


class ProvinceNodeServicer(node_pb2_grpc.ProvinceNodeServiceServicer):
    """Answers the hub: record details from the node's detail source, verifications from its item index."""

    def __init__(
        self,
        source: DetailSource,
        identity: NodeIdentity,
        *,
        verification: VerificationSettings | None = None,
        items: ItemIndex | None = None,
    ) -> None:
        self._source = source
        self._identity = identity
        self._verification = verification or VerificationSettings()
        self._items = items

    async def FetchRecordDetail(
        self, request: node_pb2.ProvinceNodeServiceFetchRecordDetailRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ProvinceNodeServiceFetchRecordDetailResponse:
        """One record as the province holds it, with only what the purpose allows."""
        call = _hub_call(request.requester, request.hub_request_id)
        purpose = require_purpose(request.purpose)
        call.purpose = purpose_name(purpose)
        if not request.record_id:
            raise errors.InvalidArgument("record_id is required", reason="RECORD_ID_MISSING", field="record_id")
        # A point lookup by primary key in the node's SQLite outbox: microseconds, so it runs on the loop.
        detail = self._source.record_detail(request.record_id)
        if detail is None:
            raise errors.NotFound(
                "this node holds no record with this id", reason="RECORD_NOT_FOUND", field="record_id"
            )
        detail.province_code = self._identity.province_code
        detail.node_uri = self._identity.uri
        call.counts.update(records=1)
        return node_pb2.ProvinceNodeServiceFetchRecordDetailResponse(detail=filter_detail(detail, purpose))

    async def AnswerVerification(
        self, request: node_pb2.ProvinceNodeServiceAnswerVerificationRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ProvinceNodeServiceAnswerVerificationResponse:
        """What the node's sources hold about the members, of the classes asked, each item marked."""
        call = _hub_call(request.requester, request.hub_request_id)
        verification_id = request.verification_id
        if len(verification_id) > 128 or not verification_id.isprintable():
            raise errors.InvalidArgument(
                "verification_id must be printable and at most 128 characters",
                reason="VERIFICATION_ID_INVALID",
                field="verification_id",
            )
        if verification_id:
            call.extra["verification_id"] = verification_id
            structlog.contextvars.bind_contextvars(verification_id=verification_id)
        purpose = require_purpose(request.purpose)
        call.purpose = purpose_name(purpose)
        settings = self._verification
        if not settings.served or self._items is None:
            raise errors.FailedPrecondition(
                "this node takes no part in household verifications: its node.toml declares no "
                "[[verification.sources]]",
                reason="VERIFICATION_NOT_SERVED",
            )
        if purpose not in settings.purposes:
            served = ", ".join(sorted(purpose_name(p) for p in settings.purposes))
            raise errors.PermissionDenied(
                f"this node answers verifications for {served}, not for {call.purpose}",
                reason="PURPOSE_NOT_SERVED",
                field="purpose",
                metadata={"purpose": call.purpose, "served": served},
            )
        numbers = member_id_numbers([m.id_number for m in request.members])
        call.counts["members"] = len(numbers)
        classes = item_classes_asked(request.item_classes)
        call.counts["classes"] = len(classes)
        check_consent(_consent(request), today=today_in_china(), valid_days=settings.consent_valid_days)
        # Indexed point lookups in the node's SQLite index (20 numbers at most): it runs on the loop.
        found = self._items.lookup(numbers, classes)
        response = node_pb2.ProvinceNodeServiceAnswerVerificationResponse(
            items=[_item_to_proto(index, held) for index, held in found], answer_id=call.request_id
        )
        call.counts["items"] = len(found)
        call.counts.update(Counter(held.item_class.config_name for _, held in found))
        if response.ByteSize() > _MAX_MESSAGE:
            raise errors.ResourceExhausted(
                f"the answer holds {len(found)} items, more than one message carries; ask for fewer classes",
                reason="ANSWER_TOO_LARGE",
                metadata={"items": str(len(found))},
            )
        return response


@dataclass(frozen=True)
class NodeServerSettings:
    """How to run one node's federation server."""

    #: The node's data directory: its exchange log (``audit.sqlite``) and checkpoint key live here.
    data_dir: Path
    #: The node's certificate (carrying its hutong:// URI, and the DNS/IP names the hub dials) and
    #: key, and the ministry CA that hub certificates must chain to.
    tls: TlsMaterial
    #: Address to listen on.
    host: str = "0.0.0.0"  # noqa: S104 - a node serves the hub over the network, mTLS only
    #: Port to listen on; 0 picks a free one (see ``NodeServer.port``).
    port: int = 7444
    #: Accept only a hub certificate naming this DNS name or IP address; empty: any hub certificate.
    hub_name: str = ""
    #: The CA's CRL, checked on every call and reloaded when it changes.
    crl_path: Path | None = None
    #: Seconds between checks of the CRL file for a new version.
    crl_poll_seconds: float = 2.0
    #: Seconds open calls get to finish on shutdown.
    grace_seconds: float = 10.0
    #: Seconds between signed checkpoints of the node's exchange log while it grows.
    checkpoint_seconds: float = 10.0
    #: Household verification: the purposes served and the sources, indexed in ``verification.sqlite`` at start.
    verification: VerificationSettings = field(default_factory=VerificationSettings)


class NodeServer:
    """A running federation server: ``await start()``, then ``await stop()``."""

    def __init__(self, settings: NodeServerSettings, source: DetailSource) -> None:
        self.settings = settings
        self._source = source
        cert = x509.load_pem_x509_certificate(settings.tls.cert_chain_pem)
        try:
            self.identity = identity_from_certificate(cert)
        except errors.PkiError as exc:
            raise errors.ConfigError(
                f"the node's server certificate must be its node certificate: {exc.message}",
                reason="NODE_CERTIFICATE_REQUIRED",
                field="serve.cert",
            ) from exc
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self._server_names = [
            *san.get_values_for_type(x509.DNSName),
            *map(str, san.get_values_for_type(x509.IPAddress)),
        ]
        self.store: SqliteStore | None = None
        self.audit: AuditRecorder | None = None
        #: The index of the verification sources, once started (None without sources).
        self.items: ItemIndex | None = None
        self.revocations: RevocationList | None = None
        self._crl_watch: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        """Bring the verification index up to date, open the exchange log, bind, serve; returns the bound port."""
        s = self.settings
        if not self._server_names:
            log.warning(
                "node_certificate_without_server_names",
                message="the hub verifies a node by DNS name or IP address; issue the node certificate with "
                "`hutong pki csr --dns/--ip` and `hutong pki issue --server-names`",
            )
        if s.crl_path is not None:
            if not s.crl_path.exists():
                raise errors.ConfigError(f"CRL file {s.crl_path} does not exist", reason="FILE_MISSING", field="crl")
            self.revocations = RevocationList(
                s.crl_path, x509.load_pem_x509_certificates(s.tls.ca_pem), poll_seconds=s.crl_poll_seconds
            )
            if not self.revocations.reload():
                raise errors.ConfigError(
                    f"CRL file {s.crl_path} is unreadable or not signed by a CA in hub.ca; see the log",
                    reason="CRL_INVALID",
                    field="serve.crl",
                )
        s.data_dir.mkdir(parents=True, exist_ok=True)
        index_path = s.data_dir / INDEX_DATABASE
        if s.verification.sources or index_path.exists():
            # Reading changed source files may take minutes for a large province: off the loop. Without
            # sources an existing index is emptied, so that no data the node no longer serves lingers.
            self.items = await asyncio.to_thread(_updated_index, index_path, s.verification)
        self.store = SqliteStore(s.data_dir / AUDIT_DATABASE)
        try:
            await self.store.open()
        except BaseException:
            self._close_items()
            raise
        try:
            # No key binding: gateway.audit.binding lets only a hub certificate vouch for a log key.
            # The verifier key is logged when the key is made (audit_key_created); auditors pin it.
            key = AuditKey.load_or_create(s.data_dir, origin=None, default_origin=f"{self.identity.uri}/audit")
            self.audit = AuditRecorder(self.store, key, "sha256", checkpoint_seconds=s.checkpoint_seconds)
            await self.audit.start()
        except BaseException:
            await self.store.close()
            self._close_items()
            raise
        if self.revocations is not None:
            self._crl_watch = asyncio.create_task(self.revocations.watch())
        chain = HubInterceptor(
            [HubOnly(hub_name=s.hub_name, revocations=self.revocations), LogContext()],
            recorder=self.audit,
            role="node",
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ]
        )
        chain.register(
            server,
            node_pb2_grpc.add_ProvinceNodeServiceServicer_to_server,
            ProvinceNodeServicer(
                self._source,
                self.identity,
                verification=s.verification,
                items=self.items if s.verification.served else None,
            ),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((_SERVICE, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
        credentials = grpc.ssl_server_credentials(
            [(s.tls.private_key_pem, s.tls.cert_chain_pem)], root_certificates=s.tls.ca_pem, require_client_auth=True
        )
        address = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            await self._close_log()
            raise errors.ConfigError(f"cannot listen on {address}", reason="LISTEN_FAILED", field="serve.listen")
        await server.start()
        self._server = server
        for name in ("", _SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "node_serving",
            node=self.identity.uri,
            host=s.host,
            port=self.port,
            server_names=self._server_names,
            hub_name=s.hub_name or None,
            crl=str(s.crl_path) if s.crl_path else None,
            verification_sources=len(s.verification.sources),
        )
        return self.port

    async def _close_log(self) -> None:
        if self._crl_watch is not None:
            self._crl_watch.cancel()
            self._crl_watch = None
        if self.audit is not None:
            await self.audit.stop()
        if self.store is not None:
            await self.store.close()
        self._close_items()

    def _close_items(self) -> None:
        if self.items is not None:
            self.items.close()
            self.items = None

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let open ones finish within the grace period, sign a last checkpoint."""
        if self._server is None:
            return
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("node_stopping", grace_seconds=grace)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        await self._close_log()
        log.info("node_stopped")

    async def wait(self) -> None:
        """Until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()


def _updated_index(path: Path, settings: VerificationSettings) -> ItemIndex:
    """The verification index at ``path``, brought up to date with the configured sources (blocking)."""
    index = ItemIndex.open(path)
    try:
        index.update(settings.sources)
    except BaseException:
        index.close()
        raise
    return index


async def serve_forever(settings: NodeServerSettings, source: DetailSource, *, port_file: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    server = NodeServer(settings, source)
    await serve_until_signalled(server.start, server.stop, port_file=port_file)


def serve_command(config_path: Path, *, port_file: Path | None) -> int:
    """``hutong node serve --config node.toml``: answer the hub (details, verifications) until stopped."""
    from gateway.node.outbox import Outbox

    config = load_node_config(config_path)
    serve = config.serve
    tls = TlsMaterial.from_files(serve.cert or config.hub.cert, serve.key or config.hub.key, config.hub.ca)
    settings = NodeServerSettings(
        data_dir=config.data_dir,
        tls=tls,
        host=serve.host,
        port=serve.port,
        hub_name=serve.hub_name,
        crl_path=serve.crl,
        verification=config.verification,
    )
    outbox = Outbox.open(config.outbox_path)
    try:
        asyncio.run(serve_forever(settings, outbox, port_file=port_file))
    finally:
        outbox.close()
    return 0
