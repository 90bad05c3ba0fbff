"""``hub.toml``: every setting of ``hutong hub serve`` in one file, validated before anything runs.

Every key is documented in ``deploy/CONFIG.md`` and set in ``deploy/hub.example.toml``; each
section groups what an operator changes together. Command-line flags still work and override
the file (:meth:`HubConfig.with_flags`). A mistake raises :class:`~gateway.errors.ConfigError`
naming the key (``tls.cert``, ``store.url``); relative paths are read from the config file's
directory (:mod:`gateway.toml_config`, shared with ``node.toml``).

Where the hub keeps its database is ``store.url`` (:func:`store_location`, :func:`store_for`):
the default is SQLite in the data directory, exactly where a hub without a config file keeps it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from gateway.audit import HashFn
from gateway.errors import ConfigError
from gateway.hub.records_service import MAX_BATCH_ITEMS
from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteStore
from gateway.toml_config import parse_listen, read_sections

__all__ = [
    "CRYPTO_SUITES",
    "DATABASE_FILE",
    "SECTIONS",
    "STREAM_IDLE_SECONDS",
    "HubConfig",
    "StoreLocation",
    "load_hub_config",
    "redact_password",
    "store_for",
    "store_location",
]

#: The SQLite database in the data directory, unless ``store.url`` says otherwise.
DATABASE_FILE = "hub.sqlite3"
#: The crypto suites a hub may be created with (``gateway.domain.protection.CryptoSuite``).
CRYPTO_SUITES = ("intl", "sm")
#: The largest ``sync.max_batch``: a batch travels in one gRPC message of at most 32 MiB.
_MAX_BATCH_LIMIT = 50_000
_INSTALL_POSTGRES = "pip install 'hutong[postgres]'"
#: Default ``limits.stream_idle_seconds``: a client stream silent this long is ended by the hub.
STREAM_IDLE_SECONDS = 300.0
#: The largest ``limits.stream_idle_seconds`` (a day): an idle limit is a limit.
_MAX_STREAM_IDLE = 86_400.0

#: Every key ``hub.toml`` accepts, by section (each one is documented in ``deploy/CONFIG.md``).
SECTIONS: dict[str, frozenset[str]] = {
    "hub": frozenset(
        {
            "data_dir",
            "listen",
            "health_listen",
            "console_listen",
            "port_file",
            "grace_seconds",
            "crypto_suite",
            "insecure",
            "prepare_workers",
        }
    ),
    "tls": frozenset({"cert", "key", "ca", "crl", "ca_registry"}),
    "store": frozenset({"url"}),
    "audit": frozenset({"origin", "checkpoint_seconds"}),
    "sync": frozenset({"max_batch"}),
    "limits": frozenset({"stream_idle_seconds"}),
    "policy": frozenset({"file"}),
    "federation": frozenset({"node_directory"}),
    "monitoring": frozenset({"rules"}),
    "tiers": frozenset({"rules", "standards"}),
    "verification": frozenset({"consent_valid_days", "source_seconds"}),
}


@dataclass(frozen=True)
class StoreLocation:
    """Where the hub's database lives: a SQLite file, or a PostgreSQL server shared by replicas."""

    engine: Literal["sqlite", "postgresql"]
    #: The SQLite database file (None for PostgreSQL).
    sqlite_path: Path | None = None
    #: The PostgreSQL connection URL as configured (libpq syntax; None for SQLite).
    postgres_url: str | None = None

    def describe(self) -> str:
        """For messages and logs: the SQLite path, or the PostgreSQL URL without its password."""
        if self.sqlite_path is not None:
            return str(self.sqlite_path)
        assert self.postgres_url is not None
        return redact_password(self.postgres_url)


def redact_password(url: str, *, mark: str = "***") -> str:
    """``url`` with any password replaced by ``mark``; with ``mark=""`` the password is left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{mark}@{host}" if mark else f"{user}@{host}"))


def store_location(url: str, data_dir: Path, *, field: str = "store.url") -> StoreLocation:
    """Parse a store URL: empty (``<data_dir>/hub.sqlite3``), ``sqlite:///ABS``, ``sqlite:REL``, ``postgresql://``.

    A relative SQLite path is read from ``data_dir`` here; the config loader has already made the
    ones written in ``hub.toml`` absolute, from the file's directory.
    """
    if not url:
        return StoreLocation("sqlite", sqlite_path=data_dir / DATABASE_FILE)
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise ConfigError(
            f"{field} must be a URL (sqlite:///path, sqlite:relative/path or postgresql://...), not {url!r}",
            reason="STORE_URL_INVALID",
            field=field,
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        if rest.startswith("//"):
            if not rest.startswith("///"):
                raise ConfigError(
                    f"{field}: a SQLite URL names a file, not a host: sqlite:///absolute/path or sqlite:relative/path",
                    reason="STORE_URL_INVALID",
                    field=field,
                )
            rest = rest[2:]
        if not rest or rest.endswith("/"):
            raise ConfigError(f"{field}: the SQLite URL names no file", reason="STORE_URL_INVALID", field=field)
        path = Path(rest)
        return StoreLocation("sqlite", sqlite_path=path if path.is_absolute() else data_dir / path)
    if scheme in ("postgresql", "postgres"):
        if not rest.startswith("//"):
            raise ConfigError(
                f"{field}: a PostgreSQL URL starts postgresql://", reason="STORE_URL_INVALID", field=field
            )
        return StoreLocation("postgresql", postgres_url=url)
    raise ConfigError(
        f"{field}: unknown store {scheme!r}; use sqlite:///path or postgresql://...",
        reason="STORE_URL_INVALID",
        field=field,
    )


def store_for(url: str, data_dir: Path, *, audit_hash: HashFn, synchronous: str = "FULL") -> SqlStore:
    """The hub's store for ``url`` (see :func:`store_location`), not yet opened.

    PostgreSQL comes with the ``postgres`` extra (psycopg); it is imported only when configured,
    so a SQLite hub never needs it.
    """
    location = store_location(url, data_dir)
    if location.sqlite_path is not None:
        return SqliteStore(location.sqlite_path, synchronous=synchronous, audit_hash=audit_hash)
    try:
        module = importlib.import_module("gateway.store.postgres")
    except ImportError as exc:
        raise ConfigError(
            f"store.url names a PostgreSQL database, but the PostgreSQL store is not installed: {_INSTALL_POSTGRES}"
            f" ({exc})",
            reason="POSTGRES_NOT_INSTALLED",
            field="store.url",
        ) from exc
    store: SqlStore = module.PostgresStore(location.postgres_url, audit_hash=audit_hash)
    return store


@dataclass(frozen=True)
class HubConfig:
    """Every setting of one hub, from ``hub.toml`` and/or flags; paths are resolved, nothing is read yet."""

    #: The config file (None when every setting came from flags).
    path: Path | None = None
    #: The hub's state: keys, token keys, the audit key, and (by default) the SQLite database.
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    #: 0 picks a free port (see ``port_file``).
    port: int = 7443
    #: (host, port) of the plaintext health-only port for probes (Kubernetes ``grpc`` probes); None: none.
    health_listen: tuple[str, int] | None = None
    #: (host, port) of the HTTPS console (probes, metrics, token keys, CRL); None: none.
    console_listen: tuple[str, int] | None = None
    #: Written with the bound port once serving.
    port_file: Path | None = None
    #: Seconds open calls get on shutdown.
    grace_seconds: float = 10.0
    #: "intl" or "sm"; fixed when the data directory is created (None: the key file's, or intl).
    crypto_suite: str | None = None
    #: Plaintext on loopback, for debugging only.
    insecure: bool = False
    #: Processes preparing batches; None: one per CPU.
    prepare_workers: int | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    crl: Path | None = None
    #: The CA directory's ``registry.sqlite3``, read by the console's Certificates page; None: no page.
    ca_registry: Path | None = None
    #: Empty: SQLite at ``<data_dir>/hub.sqlite3``.
    store_url: str = ""
    audit_origin: str | None = None
    checkpoint_seconds: float = 10.0
    max_batch: int = MAX_BATCH_ITEMS
    #: Seconds a client stream (SyncRecords) may send nothing before the hub ends it (DEADLINE_EXCEEDED).
    stream_idle_seconds: float = STREAM_IDLE_SECONDS
    policy: Path | None = None
    node_directory: Path | None = None
    monitoring_rules: Path | None = None
    #: Days a household's signed consent to a verification stays valid.
    consent_valid_days: int = 180
    #: Seconds each source of a household verification gets to answer.
    verification_seconds: float = 30.0
    #: Tier rules (TOML, deploy/tiers.example.toml); None: the hub does not tier.
    tier_rules: Path | None = None
    #: Local standards the provinces publish (CSV, deploy/standards.example.csv), merged in order.
    standards: tuple[Path, ...] = ()

    def with_flags(self, **flags: Any) -> HubConfig:
        """This config with every flag that was given (not None) in place of the file's value."""
        unknown = set(flags) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"not hub settings: {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in flags.items() if v is not None})

    def checked(self) -> HubConfig:
        """This config, once the values flags may have set pass the file's checks (a ConfigError names the key)."""
        for key, flag, ok, what in (
            ("hub.grace_seconds", "--grace", self.grace_seconds > 0, "a positive number"),
            ("audit.checkpoint_seconds", "--checkpoint-seconds", self.checkpoint_seconds > 0, "a positive number"),
            ("sync.max_batch", "--max-batch", 1 <= self.max_batch <= _MAX_BATCH_LIMIT, f"from 1 to {_MAX_BATCH_LIMIT}"),
            ("hub.port", "--listen", 0 <= self.port <= 65535, "a port number"),
        ):
            if not ok:
                raise ConfigError(f"{key} ({flag}) must be {what}", field=key)
        if self.standards and self.tier_rules is None:
            raise ConfigError(
                "tiers.standards (--standards) are read only for tiering: set tiers.rules (--tier-rules) too",
                reason="CONFIG_MISSING",
                field="tiers.rules",
            )
        return self

    def require_data_dir(self) -> Path:
        """The data directory; a ConfigError when neither the file nor ``--data-dir`` gave one."""
        if self.data_dir is None:
            raise ConfigError(
                "the hub needs a data directory: hub.data_dir in --config, or --data-dir",
                reason="CONFIG_MISSING",
                field="hub.data_dir",
            )
        return self.data_dir

    def store(self) -> StoreLocation:
        """Where the database is."""
        return store_location(self.store_url, self.require_data_dir())


def load_hub_config(path: str | Path) -> HubConfig:
    """Read and check ``hub.toml``; a ConfigError names the first key that is wrong."""
    path = Path(path)
    s = read_sections(path, SECTIONS, what="hub config")
    hub, tls, store, audit, sync = (s[name] for name in ("hub", "tls", "store", "audit", "sync"))
    idle = s["limits"].number("stream_idle_seconds", STREAM_IDLE_SECONDS)
    if idle > _MAX_STREAM_IDLE:
        raise s["limits"].fail("stream_idle_seconds", f"a positive number of seconds, at most {_MAX_STREAM_IDLE:g}")
    defaults = HubConfig()
    host, port = parse_listen(
        hub.text("listen", f"{defaults.host}:{defaults.port}"), field="hub.listen", default_host=defaults.host
    )
    suite = hub.text("crypto_suite") if "crypto_suite" in hub else None
    if suite is not None and suite not in CRYPTO_SUITES:
        raise hub.fail("crypto_suite", " or ".join(repr(c) for c in CRYPTO_SUITES))
    origin = audit.text("origin") if "origin" in audit else None
    url = store.text("url") if "url" in store else ""
    data_dir = hub.optional_path("data_dir")
    if url:
        # Checked now, against the file's directory: a relative SQLite path is the file's, like every other path.
        location = store_location(url, path.resolve().parent)
        if location.sqlite_path is not None:
            url = "sqlite:///" + location.sqlite_path.as_posix().lstrip("/")
    return HubConfig(
        path=path,
        data_dir=data_dir,
        host=host,
        port=port,
        health_listen=(
            parse_listen(hub.text("health_listen"), field="hub.health_listen", default_host="0.0.0.0")  # noqa: S104
            if "health_listen" in hub
            else None
        ),
        console_listen=(
            parse_listen(hub.text("console_listen"), field="hub.console_listen", default_host="0.0.0.0")  # noqa: S104
            if "console_listen" in hub
            else None
        ),
        port_file=hub.optional_path("port_file"),
        grace_seconds=hub.number("grace_seconds", defaults.grace_seconds),
        crypto_suite=suite,
        insecure=hub.boolean("insecure", defaults.insecure),
        prepare_workers=hub.integer("prepare_workers", 0, 0, 256) if "prepare_workers" in hub else None,
        cert=tls.optional_path("cert"),
        key=tls.optional_path("key"),
        ca=tls.optional_path("ca"),
        crl=tls.optional_path("crl"),
        ca_registry=tls.optional_path("ca_registry"),
        store_url=url,
        audit_origin=origin,
        checkpoint_seconds=audit.number("checkpoint_seconds", defaults.checkpoint_seconds),
        max_batch=sync.integer("max_batch", defaults.max_batch, 1, _MAX_BATCH_LIMIT),
        stream_idle_seconds=idle,
        policy=s["policy"].optional_path("file"),
        node_directory=s["federation"].optional_path("node_directory"),
        monitoring_rules=s["monitoring"].optional_path("rules"),
        consent_valid_days=s["verification"].integer("consent_valid_days", defaults.consent_valid_days, 1, 3660),
        verification_seconds=s["verification"].number("source_seconds", defaults.verification_seconds),
        tier_rules=s["tiers"].optional_path("rules"),
        standards=tuple(s["tiers"].path_of(name) for name in s["tiers"].texts("standards", ())),
    )
