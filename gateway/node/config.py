"""``node.toml``: what a province node needs to know, validated before anything runs.

Every key is documented in ``deploy/CONFIG.md``; ``deploy/node.example.toml`` sets each one, and
``deploy/nodes/`` holds an example per province. A mistake raises
:class:`~gateway.errors.ConfigError` naming the key (``sync.window``, ``hub.cert``). Relative paths
are read from the config file's directory, so a node directory can be moved or mounted as a whole.
The reading helpers are shared with ``hub.toml`` (:mod:`gateway.toml_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.client import HubClient, RetryConfig
from gateway.errors import ConfigError
from gateway.node.verification import VerificationSettings, verification_settings
from gateway.toml_config import parse_listen, read_sections
from pki import TlsMaterial

__all__ = [
    "SECTIONS",
    "HubSettings",
    "InboxSettings",
    "NodeConfig",
    "ServeSettings",
    "SyncSettings",
    "load_node_config",
]

#: What a re-export is: the whole source (records it no longer holds are retired) or only changes.
SYNC_MODES = ("snapshot", "incremental")
#: Retirement reasons a withdrawn record may be given (``RetirementReason`` in records.proto).
RETIRE_REASONS = ("withdrawn", "exited")


@dataclass(frozen=True)
class HubSettings:
    """Where the hub is and how this node proves who it is."""

    address: str
    ca: Path
    cert: Path
    key: Path
    server_name: str = ""
    scopes: tuple[str, ...] = ("records:write", "query:enrollment")

    def tls(self) -> TlsMaterial:
        """The node's certificate, key and the ministry CA, read from disk."""
        return TlsMaterial.from_files(self.cert, self.key, self.ca)


@dataclass(frozen=True)
class SyncSettings:
    """How records travel to the hub."""

    #: Records per batch (the hub accepts at most 5,000).
    batch_size: int = 2000
    #: Batches sent and not yet acknowledged, at most.
    window: int = 4
    #: ``snapshot``: each sync run's files are the whole source; ``incremental``: only changes.
    mode: str = "snapshot"
    #: A snapshot that would retire more than this share of the records held stops instead.
    max_retire_fraction: float = 0.1
    #: The reason given to the hub for records a snapshot no longer holds.
    retire_reason: str = "withdrawn"
    #: A directory ``hutong node sync --watch`` takes new export files from.
    drop_dir: Path | None = None
    #: Seconds between looks at the drop directory.
    poll_seconds: float = 5.0
    #: Retries of a broken connection: backoff and the total time given to one sync run.
    retry: RetryConfig = field(
        default_factory=lambda: RetryConfig(
            initial_backoff=0.5, max_backoff=30.0, total_deadline=600.0, max_attempts=1000, attempt_timeout=60.0
        )
    )


@dataclass(frozen=True)
class ServeSettings:
    """The node's federation server (``hutong node serve``)."""

    host: str = "0.0.0.0"  # noqa: S104 - the hub calls in from another machine
    port: int = 7444
    #: Server certificate and key; the hub connection's are used when not given.
    cert: Path | None = None
    key: Path | None = None
    #: Accept only a hub certificate naming this DNS name or IP address; empty: any hub certificate of the CA.
    hub_name: str = ""
    #: The CA's CRL (PEM or DER), checked on every call and reloaded when it changes; ``hub.ca`` must hold
    #: the CA that signs it (the intermediate: use ``ca-chain.pem``).
    crl: Path | None = None


@dataclass(frozen=True)
class InboxSettings:
    """Where ``hutong node inbox`` delivers the hub's events: a webhook, a directory of JSON files, or both."""

    #: POST each event here (JSON); a 2xx answer means delivered.
    webhook_url: str = ""
    #: The HMAC-SHA256 key that signs each webhook body (a file holding it; mode 0600).
    webhook_secret_file: Path | None = None
    #: Seconds one webhook POST may take.
    webhook_timeout_seconds: float = 10.0
    #: Write each event as ``<sequence>-<event_id>.json`` here.
    directory: Path | None = None
    #: Longest wait between delivery attempts of one event.
    retry_max_seconds: float = 60.0


@dataclass(frozen=True)
class NodeConfig:
    """A whole ``node.toml``."""

    path: Path
    data_dir: Path
    profile: Path
    hub: HubSettings
    sync: SyncSettings
    serve: ServeSettings
    inbox: InboxSettings = field(default_factory=InboxSettings)
    #: Household verification: the purposes served and the node's sources (``[verification]``).
    verification: VerificationSettings = field(default_factory=VerificationSettings)

    def hub_client(self, retry: RetryConfig | None = None) -> HubClient:
        """A client of the hub as this node: its certificate, its scopes, the sync's retries unless given others."""
        return HubClient(
            self.hub.address,
            tls=self.hub.tls(),
            server_name=self.hub.server_name or None,
            retry=self.sync.retry if retry is None else retry,
            scopes=self.hub.scopes,
        )

    @property
    def outbox_path(self) -> Path:
        """The node's outbox database."""
        return self.data_dir / "outbox.sqlite"

    @property
    def inbox_path(self) -> Path:
        """The node's inbox database: events received from the hub and their delivery."""
        return self.data_dir / "inbox.sqlite"

    @property
    def rejects_dir(self) -> Path:
        """Where each sync run writes the rows it rejected, one JSON line each."""
        return self.data_dir / "rejects"


#: Every key ``node.toml`` accepts, by section (each one is documented in ``deploy/CONFIG.md``).
SECTIONS: dict[str, frozenset[str]] = {
    "node": frozenset({"data_dir", "profile"}),
    "hub": frozenset({"address", "server_name", "ca", "cert", "key", "scopes"}),
    "sync": frozenset(
        {
            "batch_size",
            "window",
            "mode",
            "max_retire_fraction",
            "retire_reason",
            "drop_dir",
            "poll_seconds",
            "retry_initial_seconds",
            "retry_max_seconds",
            "retry_deadline_seconds",
            "attempt_timeout_seconds",
        }
    ),
    "serve": frozenset({"listen", "cert", "key", "hub_name", "crl"}),
    "inbox": frozenset(
        {"webhook_url", "webhook_secret_file", "webhook_timeout_seconds", "directory", "retry_max_seconds"}
    ),
    # Each [[verification.sources]] table has its own keys: gateway.node.verification.SOURCE_KEYS.
    "verification": frozenset({"purposes", "consent_valid_days", "sources"}),
}


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and check ``node.toml``; a ConfigError names the first key that is wrong."""
    path = Path(path)
    sections = read_sections(path, SECTIONS, what="node config")
    node, hub, sync, serve, inbox = (sections[s] for s in ("node", "hub", "sync", "serve", "inbox"))

    hub_settings = HubSettings(
        address=hub.text("address"),
        server_name=hub.text("server_name", ""),
        ca=hub.path("ca"),
        cert=hub.path("cert"),
        key=hub.path("key"),
        scopes=tuple(hub.texts("scopes", ("records:write", "query:enrollment"))),
    )
    defaults = SyncSettings()
    retry = RetryConfig(
        initial_backoff=sync.number("retry_initial_seconds", defaults.retry.initial_backoff),
        max_backoff=sync.number("retry_max_seconds", defaults.retry.max_backoff),
        total_deadline=sync.number("retry_deadline_seconds", defaults.retry.total_deadline),
        max_attempts=defaults.retry.max_attempts,
        attempt_timeout=sync.number("attempt_timeout_seconds", defaults.retry.attempt_timeout),
    )
    mode = sync.text("mode", defaults.mode)
    if mode not in SYNC_MODES:
        raise ConfigError(f"sync.mode must be one of {', '.join(SYNC_MODES)}, not {mode!r}", field="sync.mode")
    reason = sync.text("retire_reason", defaults.retire_reason)
    if reason not in RETIRE_REASONS:
        raise ConfigError(
            f"sync.retire_reason must be one of {', '.join(RETIRE_REASONS)}, not {reason!r}",
            field="sync.retire_reason",
        )
    fraction = sync.number("max_retire_fraction", defaults.max_retire_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError("sync.max_retire_fraction must lie between 0 and 1", field="sync.max_retire_fraction")
    sync_settings = SyncSettings(
        batch_size=sync.integer("batch_size", defaults.batch_size, 1, 5000),
        window=sync.integer("window", defaults.window, 1, 64),
        mode=mode,
        max_retire_fraction=fraction,
        retire_reason=reason,
        drop_dir=sync.optional_path("drop_dir"),
        poll_seconds=sync.number("poll_seconds", defaults.poll_seconds),
        retry=retry,
    )
    # An empty host means every interface: the hub calls in from another machine.
    listen = serve.text("listen", "0.0.0.0:7444")
    host, port = parse_listen(listen, field="serve.listen", default_host="0.0.0.0")  # noqa: S104
    serve_settings = ServeSettings(
        host=host,
        port=port,
        cert=serve.optional_path("cert"),
        key=serve.optional_path("key"),
        hub_name=serve.text("hub_name") if "hub_name" in serve.table else "",
        crl=serve.optional_path("crl"),
    )
    if (serve_settings.cert is None) != (serve_settings.key is None):
        raise ConfigError("serve.cert and serve.key go together", field="serve.cert")
    url = inbox.text("webhook_url", "")
    if url and not url.startswith(("https://", "http://")):
        raise ConfigError("inbox.webhook_url must be an http(s) URL", field="inbox.webhook_url")
    inbox_settings = InboxSettings(
        webhook_url=url,
        webhook_secret_file=inbox.optional_path("webhook_secret_file"),
        webhook_timeout_seconds=inbox.number("webhook_timeout_seconds", InboxSettings.webhook_timeout_seconds),
        directory=inbox.optional_path("directory"),
        retry_max_seconds=inbox.number("retry_max_seconds", InboxSettings.retry_max_seconds),
    )
    if url and inbox_settings.webhook_secret_file is None:
        raise ConfigError(
            "inbox.webhook_url needs inbox.webhook_secret_file: every body is signed", field="inbox.webhook_secret_file"
        )
    verification = verification_settings(sections["verification"], base=path.resolve().parent)
    return NodeConfig(
        path=path,
        data_dir=node.path("data_dir"),
        profile=node.path("profile"),
        hub=hub_settings,
        sync=sync_settings,
        serve=serve_settings,
        inbox=inbox_settings,
        verification=verification,
    )
