"""Assembly of the hub: store, keys, servicers, interceptors, health, reflection, TLS.

mTLS from the first byte: the hub requires a client certificate issued by the ministry CA.
A plaintext port exists only with ``insecure=True``, binds loopback only, and says so
loudly in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from gateway.audit.archive import hash_function
from gateway.console.app import ConsoleServer
from gateway.domain.access import AccessPolicy
from gateway.domain.linkage import LinkSettings
from gateway.domain.monitoring import MonitoringRules
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.standards import StandardsRegistry
from gateway.domain.tiers import TierRules
from gateway.domain.verification import CONSENT_VALID_DAYS
from gateway.errors import ConfigError
from gateway.hub.audit import AuditKey, AuditRecorder, default_origin, log_hash_name
from gateway.hub.audit_monitor import AUDIT_MONITOR_FILE, AuditMonitor
from gateway.hub.audit_service import AuditServicer
from gateway.hub.auth_service import AuthServicer
from gateway.hub.config import DATABASE_FILE, STREAM_IDLE_SECONDS, store_for
from gateway.hub.federation import DetailFetcher, FederationSettings, NodeDirectory
from gateway.hub.interceptors import Authenticator, Authorizer, CallInfo, HubInterceptor, LogContext
from gateway.hub.keys import load_or_create_keys
from gateway.hub.linkage_service import LinkageReviewServicer, linkage_started
from gateway.hub.loop_service import NotificationServicer, SignalServicer
from gateway.hub.metrics import HubMetrics
from gateway.hub.preparation import BatchPreparer
from gateway.hub.query_service import AssistanceQueryServicer
from gateway.hub.records_service import MAX_BATCH_ITEMS, RecordExchangeServicer, raw_sync_handler
from gateway.hub.revocation import RevocationList
from gateway.hub.tiering import Tierer
from gateway.hub.tokens import TokenKeys, TokenService
from gateway.hub.verification import VerificationServicer, Verifier
from gateway.serving import serve_until_signalled
from gateway.store.sql import SqlStore
from gateway.store.sqlite_linkage import LinkageLedger
from gateway.toml_config import read_toml
from hutong.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    linkage_pb2,
    linkage_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    signal_pb2,
    signal_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from pki import TlsMaterial

__all__ = ["DATABASE_FILE", "SCOPES_BY_METHOD", "HubServer", "HubSettings", "load_policy", "serve_forever"]

log = structlog.get_logger("hutong.hub")


#: The scope each RPC needs; an RPC missing here is refused.
SCOPES_BY_METHOD = {
    "IssueToken": "",  # authenticated by the client certificate alone
    "SyncRecords": "records:write",
    "GetSyncState": "records:write",
    "RetireRecords": "records:write",
    "CheckEnrollment": "query:enrollment",
    "BatchCheckEnrollment": "query:enrollment",
    "LookupPerson": "query:enrollment",
    # Forwarded to the province nodes holding the person's records (gateway.hub.federation).
    "FetchRecordDetail": "query:detail",
    # Checkpoints and consistency proofs hold only sizes and hashes, signed to be checked by
    # anyone: every enrolled node may witness the log. Entries and inclusion proofs (which carry
    # an entry) need audit:read.
    "GetCheckpoint": "",
    "GetConsistencyProof": "",
    "ListAuditEntries": "audit:read",
    "GetInclusionProof": "audit:read",
    # The closed loop: a province's node takes its events and reports back under its write scope;
    # departments submit risk signals under their own.
    "Subscribe": "records:write",
    "AcknowledgeEvents": "records:write",
    "ReportOutcome": "records:write",
    "SubmitSignals": "signals:write",
    # Identity linkage's review queue and lineage (gateway.hub.linkage_service).
    "ListReviewItems": "linkage:review",
    "DecideReviewItem": "linkage:review",
    "SplitLink": "linkage:review",
    "GetLineage": "linkage:review",
    # Household verification (gateway.hub.verification): fanned out to every province node.
    "RequestVerification": "verification:request",
    "GetVerification": "verification:request",
}
_MAX_MESSAGE = 32 * 1024 * 1024
#: A connection with no call open for this long is closed (GOAWAY; a client reconnects on its next call).
_MAX_CONNECTION_IDLE_MS = 15 * 60 * 1000
#: The hub pings an idle connection every minute and drops it when a ping goes unanswered this long:
#: a node that vanished without closing (power, network) does not hold its streams open.
_KEEPALIVE_TIMEOUT_MS = 20_000
_STATUS_FLUSH_SECONDS = 0.2
_SERVICES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    records_pb2.DESCRIPTOR.services_by_name["RecordExchangeService"].full_name,
    query_pb2.DESCRIPTOR.services_by_name["AssistanceQueryService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    signal_pb2.DESCRIPTOR.services_by_name["SignalService"].full_name,
    linkage_pb2.DESCRIPTOR.services_by_name["LinkageReviewService"].full_name,
    verification_pb2.DESCRIPTOR.services_by_name["VerificationService"].full_name,
)


@dataclass(frozen=True)
class HubSettings:
    """How to run one hub."""

    #: Holds the key files and, by default, the SQLite database.
    data_dir: Path
    #: The database (``gateway.hub.config.store_location``): empty for SQLite at ``<data_dir>/hub.sqlite3``,
    #: ``sqlite:///path``, or ``postgresql://...`` (a database replicas share).
    store_url: str = ""
    #: Address to listen on.
    host: str = "127.0.0.1"
    #: Port to listen on; 0 picks a free one (see ``HubServer.port``).
    port: int = 7443
    #: Server certificate, key and the CA that client certificates must chain to.
    tls: TlsMaterial | None = None
    #: Plaintext on loopback, for local debugging only.
    insecure: bool = False
    #: (host, port) of a plaintext port serving only ``grpc.health.v1.Health``, for probes that cannot
    #: present a client certificate (Kubernetes ``grpc`` probes); None: no such port. It tells
    #: SERVING or NOT_SERVING and nothing else.
    health_listen: tuple[str, int] | None = None
    #: (host, port) of the console (``gateway.console``: probes, metrics, token keys, CRL), HTTPS with the
    #: hub's certificate (plain HTTP with ``insecure``); None: no console.
    console_listen: tuple[str, int] | None = None
    #: Largest batch (records, and separately households) accepted.
    max_batch_items: int = MAX_BATCH_ITEMS
    #: Seconds a client stream (SyncRecords) may send nothing before the hub ends it with
    #: DEADLINE_EXCEEDED ``STREAM_IDLE``; None: no limit.
    stream_idle_seconds: float | None = STREAM_IDLE_SECONDS
    #: Seconds open calls get to finish on shutdown.
    grace_seconds: float = 10.0
    #: SQLite ``synchronous`` level: FULL survives power loss; NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    #: Scopes per node, purposes per scope, rate limits (see deploy/policy.example.toml);
    #: None means every node may sync and ask enrollment questions.
    policy: AccessPolicy | None = None
    #: Require a certificate-bound access token (AuthService.IssueToken) on every other call.
    require_tokens: bool = True
    #: Lifetime of access tokens, seconds.
    token_lifetime_seconds: int = 900
    #: The ministry CA's CRL (PEM or DER), checked on every call and reloaded when it changes.
    crl_path: Path | None = None
    #: The CA directory's registry of issued certificates (``registry.sqlite3``), read-only: the console's
    #: Certificates page and each node's certificate on the Provinces page. None: the console has neither.
    ca_registry: Path | None = None
    #: Seconds between checks of the CRL file for a new version.
    crl_poll_seconds: float = 2.0
    #: Crypto suite for person keys and sealed fields: "intl" (HMAC-SHA-256, AES-256-GCM) or "sm"
    #: (HMAC-SM3, SM4-GCM). Fixed when the hub's key file is created; None accepts the file's.
    crypto_suite: str | None = None
    #: Processes preparing batches (validation, hashing, sealing); 0 prepares on the event loop.
    #: Default (-1): one per CPU. The hub's own process mostly waits on SQLite, which releases
    #: the GIL, so it shares the CPUs with them (measured on 2 CPUs: 2 workers ingest 16 %
    #: faster than 1).
    prepare_workers: int = -1
    #: The exchange log's permanent name (C2SP checkpoint origin and key name). Default on first
    #: start: ``<first DNS name of the hub certificate>/hutong-audit``; afterwards, the key file's.
    audit_origin: str | None = None
    #: Seconds between signed checkpoints while the log grows (one is also signed at shutdown).
    checkpoint_seconds: float = 10.0
    #: Seconds between the hub's own checks of its log (``gateway.hub.audit_monitor``): entries
    #: re-read, re-hashed and matched to the newest signed checkpoint.
    audit_verify_seconds: float = 10.0
    #: The province nodes FetchRecordDetail is forwarded to (``--node-directory``); None: no node is
    #: known, and every province's detail is a NODE_NOT_REGISTERED failure.
    node_directory: NodeDirectory | None = None
    #: Days a household's signed consent to a verification stays valid.
    consent_valid_days: int = CONSENT_VALID_DAYS
    #: Deadlines and retries of the calls to province nodes.
    federation: FederationSettings = field(default_factory=FederationSettings)
    #: Seconds between looks for events past their respond_by time (escalated as OVERDUE).
    escalate_seconds: float = 60.0
    #: Monitoring rules evaluated on households as they change (``--monitoring-rules``); None: none.
    monitoring_rules: MonitoringRules | None = None
    #: Tier rules (gateway.domain.tiers); None: the hub does not tier persons.
    tier_rules: TierRules | None = None
    #: The local standards the tier rules read; None: an empty registry (income conditions do not hold).
    standards: StandardsRegistry | None = None
    #: Seconds between rounds of tier decisions for persons whose inputs changed.
    tier_seconds: float = 5.0
    #: Identity linkage's thresholds: link at or above ``link_threshold`` (0.99), review from
    #: ``review_threshold`` (0.5).
    linkage: LinkSettings = field(default_factory=LinkSettings)
    #: A hub without a linkage model trains one at start from this many live records; below, the bootstrap model.
    linkage_train_min_records: int = 10_000


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HubServer:
    """A running hub: ``await start()``, then ``await stop()``."""

    def __init__(self, settings: HubSettings) -> None:
        if settings.insecure:
            if not _is_loopback(settings.host):
                raise ConfigError(
                    "--insecure serves plaintext and binds loopback only; refusing to listen on " + settings.host,
                    reason="INSECURE_NOT_LOOPBACK",
                    field="host",
                )
            if settings.console_listen is not None and not _is_loopback(settings.console_listen[0]):
                # Without TLS the console is plain HTTP: its tokens and person pages would cross the network.
                raise ConfigError(
                    "--insecure serves the console in plain HTTP and binds loopback only; refusing to listen on "
                    + settings.console_listen[0],
                    reason="INSECURE_NOT_LOOPBACK",
                    field="console_listen",
                )
        elif settings.tls is None:
            raise ConfigError(
                "the hub needs a certificate, key and CA (or --insecure for a loopback-only debug port)",
                reason="TLS_MISSING",
                field="tls",
            )
        if settings.insecure and settings.node_directory is not None:
            raise ConfigError(
                "a node directory needs TLS: the hub calls province nodes with its own certificate",
                reason="NODE_DIRECTORY_WITHOUT_TLS",
                field="node_directory",
            )
        if settings.stream_idle_seconds is not None and settings.stream_idle_seconds <= 0:
            raise ConfigError(
                "stream_idle_seconds must be positive", reason="STREAM_IDLE_INVALID", field="stream_idle_seconds"
            )
        if settings.checkpoint_seconds <= 0:
            raise ConfigError(
                "checkpoint_seconds must be positive", reason="CHECKPOINT_INTERVAL_INVALID", field="checkpoint_seconds"
            )
        self.settings = settings
        self.store: SqlStore | None = None
        self.audit: AuditRecorder | None = None
        #: The hub's own continuous check of its exchange log, once started.
        self.audit_monitor: AuditMonitor | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._records: RecordExchangeServicer | None = None
        self._preparer: BatchPreparer | None = None
        self.revocations: RevocationList | None = None
        self.tokens: TokenService | None = None
        #: Person keys from ID numbers (the console's person search), once started.
        self.keyer: PersonKeyer | None = None
        #: The access policy in force (scopes per node): the console's roles come from it.
        self.policy: AccessPolicy | None = None
        self._crl_watch: asyncio.Task[None] | None = None
        self.details: DetailFetcher | None = None
        #: Household verifications (gateway.hub.verification), once started.
        self.verifier: Verifier | None = None
        #: Tiered identification (gateway.hub.tiering), when the hub runs with tier rules.
        self.tierer: Tierer | None = None
        self.tier_rules: TierRules | None = None
        self._notifications: NotificationServicer | None = None
        self._escalation: asyncio.Task[None] | None = None
        self._health_server: grpc.aio.Server | None = None
        self._console: ConsoleServer | None = None
        #: RPC counts and latencies of this process; the database's figures when scraped.
        self.metrics = HubMetrics()
        #: True from the moment :meth:`stop` begins (readiness fails at once).
        self.draining = False
        self.port = 0
        #: The bound console port (``console_listen``), 0 without one.
        self.console_port = 0
        #: The bound health-only port (``health_listen``), 0 without one.
        self.health_port = 0

    async def start(self) -> int:
        """Open the store, bind, and start serving; returns the bound port."""
        s = self.settings
        keys = load_or_create_keys(s.data_dir, suite=s.crypto_suite)
        # The log's tree hash follows the crypto suite (SHA-256, or SM3 under sm), fixed with the keys.
        tree_hash = log_hash_name(keys.suite)
        self.store = store_for(
            s.store_url, s.data_dir, synchronous=s.sqlite_synchronous, audit_hash=hash_function(tree_hash)
        )
        audit_key = AuditKey.load_or_create(s.data_dir, origin=s.audit_origin, default_origin=default_origin(s.tls))
        binding = audit_key.write_binding(s.data_dir, s.tls) if s.tls is not None else b""
        await self.store.open()
        self.audit = AuditRecorder(self.store, audit_key, tree_hash, checkpoint_seconds=s.checkpoint_seconds)
        await self.audit.start()
        self.audit_monitor = AuditMonitor(
            self.store,
            audit_key.verifier,
            audit_key.origin,
            self.audit.hash_fn,
            state_file=s.data_dir / AUDIT_MONITOR_FILE,
        )
        self.audit_monitor.start(s.audit_verify_seconds)
        if s.monitoring_rules is not None:
            await self._load_rules(s.monitoring_rules)
        self.tier_rules = s.tier_rules
        if s.tier_rules is not None:
            self.tierer = Tierer(
                self.store, s.tier_rules, s.standards or StandardsRegistry(), self.audit, interval=s.tier_seconds
            )
            await self.tierer.start()
        self.keyer = keyer = PersonKeyer(keys.person_key_secret, suite=keys.suite)
        # Identity linkage: the model and the warm index, before the first batch (README, "Identity linkage").
        ledger = LinkageLedger(keyer, FieldSealer(keys), s.linkage, train_min_records=s.linkage_train_min_records)
        await linkage_started(await self.store.open_linkage(ledger), self.audit)
        workers = s.prepare_workers if s.prepare_workers >= 0 else (os.cpu_count() or 2)
        self._preparer = BatchPreparer(keys, workers=workers, max_items=s.max_batch_items)
        await asyncio.get_running_loop().run_in_executor(None, self._preparer.warm_up)
        if s.crl_path is not None:
            if s.tls is None:
                raise ConfigError("a CRL needs TLS", reason="CRL_WITHOUT_TLS", field="crl")
            if not s.crl_path.exists():
                raise ConfigError(f"CRL file {s.crl_path} does not exist", reason="FILE_MISSING", field="crl")
            self.revocations = RevocationList(
                s.crl_path, x509.load_pem_x509_certificates(s.tls.ca_pem), poll_seconds=s.crl_poll_seconds
            )
            if not self.revocations.reload():
                raise ConfigError(
                    f"CRL file {s.crl_path} is unreadable or not signed by the CA; see the log",
                    reason="CRL_INVALID",
                    field="crl",
                )
            self._crl_watch = asyncio.create_task(self.revocations.watch())
        self.policy = policy = s.policy or AccessPolicy.open_default()
        self.tokens = TokenService(TokenKeys.load_or_create(s.data_dir), lifetime_seconds=s.token_lifetime_seconds)
        chain = HubInterceptor(
            [
                Authenticator(insecure=s.insecure, revocations=self.revocations),
                Authorizer(policy, SCOPES_BY_METHOD, tokens=self.tokens if s.require_tokens else None),
                LogContext(self.metrics.observe),
            ],
            recorder=self.audit,
            stream_idle_seconds=s.stream_idle_seconds,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # Nodes ping every 20 s while a call is open (gateway/client.py), a silent stream included.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.max_connection_idle_ms", _MAX_CONNECTION_IDLE_MS),
            ],
        )
        self._records = RecordExchangeServicer(
            self.store, self._preparer, max_batch_items=s.max_batch_items, audit=self.audit
        )
        chain.register(
            server,
            records_pb2_grpc.add_RecordExchangeServiceServicer_to_server,
            self._records,
            overrides=raw_sync_handler(self._records),
        )
        if s.tls is not None:
            self.details = DetailFetcher(s.node_directory or NodeDirectory(), s.tls, s.federation)
        chain.register(
            server,
            query_pb2_grpc.add_AssistanceQueryServiceServicer_to_server,
            AssistanceQueryServicer(self.store, keyer, policy, details=self.details),
        )
        sealer = FieldSealer(keys)
        self._notifications = NotificationServicer(self.store, sealer)
        chain.register(server, notification_pb2_grpc.add_NotificationServiceServicer_to_server, self._notifications)
        chain.register(
            server, signal_pb2_grpc.add_SignalServiceServicer_to_server, SignalServicer(self.store, keyer, sealer)
        )
        chain.register(server, auth_pb2_grpc.add_AuthServiceServicer_to_server, AuthServicer(self.tokens, policy))
        chain.register(
            server, linkage_pb2_grpc.add_LinkageReviewServiceServicer_to_server, LinkageReviewServicer(self.store)
        )
        chain.register(
            server, audit_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(self.store, self.audit, binding)
        )
        self.verifier = Verifier(
            self.store, keyer, sealer, self.audit, self.details, consent_valid_days=s.consent_valid_days
        )
        chain.register(
            server,
            verification_pb2_grpc.add_VerificationServiceServicer_to_server,
            VerificationServicer(self.verifier, policy),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*_SERVICES, reflection.SERVICE_NAME, "grpc.health.v1.Health"), server)
        address = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        if s.insecure:
            self.port = server.add_insecure_port(address)
            log.warning(
                "insecure_plaintext_port",
                address=address,
                message="NO TLS, NO CLIENT CERTIFICATES: callers name themselves. Loopback debugging only.",
            )
        else:
            assert s.tls is not None
            credentials = grpc.ssl_server_credentials(
                [(s.tls.private_key_pem, s.tls.cert_chain_pem)],
                root_certificates=s.tls.ca_pem,
                require_client_auth=True,
            )
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}", reason="LISTEN_FAILED", field="listen")
        await server.start()
        self._server = server
        self.verifier.start()
        if s.health_listen is not None:
            await self._start_health_port(*s.health_listen)
        if s.console_listen is not None:
            self._console = ConsoleServer(self, *s.console_listen)
            self.console_port = await self._console.start()
        self._escalation = asyncio.create_task(self._escalate_overdue(s.escalate_seconds))
        # The hub allocates many short-lived objects per batch and holds few cycles: move
        # what start-up built out of the collector's way and collect young objects less often
        # (measured: the collector otherwise takes about 40 % of batch preparation time).
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        for name in ("", *_SERVICES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "hub_started",
            host=s.host,
            port=self.port,
            mtls=not s.insecure,
            data_dir=str(s.data_dir),
            crypto_suite=str(keys.suite),
            federation_nodes=len(s.node_directory.nodes) if s.node_directory else 0,
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new work, let open calls finish within the grace period, close the store."""
        if self._server is None:
            return
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("hub_stopping", grace_seconds=grace)
        self.draining = True
        await self._health.enter_graceful_shutdown()
        if self._crl_watch is not None:
            self._crl_watch.cancel()
        if self._escalation is not None:
            self._escalation.cancel()
        if self._notifications is not None:
            self._notifications.begin_drain()
        started = time.monotonic()
        if self._records is not None:
            self._records.begin_drain()
            # Let open streams acknowledge what they hold and end with HUB_SHUTTING_DOWN, then
            # give their final status a moment on the wire before connections are closed
            # (closing at once can turn it into a transport error at the node).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._records.wait_idle()
                    await asyncio.sleep(_STATUS_FLUSH_SECONDS)
        await self._server.stop(max(0.0, grace - (time.monotonic() - started)))
        self._server = None
        if self.verifier is not None:
            await self.verifier.stop()
        if self.tierer is not None:
            await self.tierer.stop()
        if self.details is not None:
            await self.details.close()
        if self._preparer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._preparer.close)
        if self.audit_monitor is not None:
            await self.audit_monitor.stop()
        if self.audit is not None:
            await self.audit.stop()
        if self.store is not None:
            await self.store.close()
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._console is not None:
            await self._console.stop()
            self._console = None
        log.info("hub_stopped")

    async def _start_health_port(self, host: str, port: int) -> None:
        """Serve the health service alone, in plaintext: it shares the TLS port's statuses (NOT_SERVING on drain)."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise ConfigError(f"cannot listen on {address}", reason="LISTEN_FAILED", field="hub.health_listen")
        await server.start()
        self._health_server = server
        log.info("health_port_started", address=address, port=self.health_port, services="grpc.health.v1.Health")

    async def _load_rules(self, rules: MonitoringRules) -> None:
        """Run with these rules; a set the hub has not run with before is an entry in the exchange log."""
        assert self.store is not None
        assert self.audit is not None
        self.store.loop.rules = rules
        canonical = rules.canonical()
        if await self.store.record_monitoring_rules(rules.digest, canonical):
            call = CallInfo(
                method="LoadMonitoringRules",
                request_id=rules.digest.hex()[:32],
                started=time.perf_counter(),
                full_method="/hutong.hub.Operator/LoadMonitoringRules",
                subject="hub-operator",
                counts={"rules": len(rules.rules)},
            )
            await self.audit.record(call, canonical.encode(), None)
            log.info("monitoring_rules_changed", digest=rules.digest.hex(), rules=len(rules.rules))

    async def _escalate_overdue(self, every: float) -> None:
        """Now and then: events past their respond_by without an outcome become OVERDUE notices."""
        assert self.store is not None
        while True:
            try:
                overdue = await self.store.mark_overdue()
            except Exception as exc:  # the next round tries again; the hub keeps serving
                log.error("escalation_failed", error=str(exc))
            else:
                if overdue:
                    log.info("events_overdue", escalated=overdue)
            await asyncio.sleep(every)

    @property
    def preparer(self) -> BatchPreparer | None:
        """The batch preparer (None before start)."""
        return self._preparer

    async def wait(self) -> None:
        """Until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()


def load_policy(path: Path) -> AccessPolicy:
    """Read and validate a policy file (TOML)."""
    data = read_toml(path, what="policy file", field="policy", invalid="POLICY_INVALID")
    return AccessPolicy.from_mapping(data)


async def serve_forever(settings: HubSettings, *, port_file: Path | None = None) -> None:
    """Run a hub until SIGTERM or SIGINT, then drain and stop."""
    hub = HubServer(settings)
    await serve_until_signalled(hub.start, hub.stop, port_file=port_file)
