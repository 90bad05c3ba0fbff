"""``hutong hub serve|migrate|backup|restore``: run the hub and look after its data, from ``hub.toml`` and flags.

Each command takes ``--config hub.toml`` (every key: deploy/CONFIG.md) and/or the flags; a flag
overrides the file's key. Exit codes as everywhere in ``hutong``: 0 done, 3 configuration or
files wrong (naming the key or file), 1 unexpected.

The other operator commands that read or write a hub's database (``hub loop``, ``hub linkage``,
``audit export``) find it the same way, through :func:`hub_config` and :func:`hub_store` or
:func:`hub_database`: SQLite or PostgreSQL, as ``store.url`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog
from rich.console import Console
from rich.markup import escape

from gateway.audit.archive import hash_function
from gateway.domain.standards import StandardsRegistry, load_standards
from gateway.errors import ConfigError
from gateway.hub import backup as backups
from gateway.hub.audit import AUDIT_KEY_FILE, AuditKey, default_origin, log_hash_name
from gateway.hub.config import HubConfig, load_hub_config, store_for
from gateway.hub.keys import KEYS_FILE, load_or_create_keys
from gateway.hub.server import HubSettings, load_policy, serve_forever
from gateway.hub.tokens import TOKEN_KEYS_FILE, TokenKeys
from gateway.store.engine import Connection, Engine, migrations
from gateway.store.sql import SqlStore
from pki import TlsMaterial

__all__ = ["create_key_files", "hub_config", "hub_database", "hub_settings", "hub_store", "run_hub_ops"]

log = structlog.get_logger("hutong.hub")


def hub_config(config: Path | None, **flags: object) -> HubConfig:
    """``hub.toml`` (when given) with the flags that were given in place of its keys."""
    base = load_hub_config(config) if config is not None else HubConfig()
    return base.with_flags(**flags).checked()


def _tls(config: HubConfig) -> TlsMaterial:
    cert, key, ca = config.cert, config.key, config.ca
    if cert is None or key is None or ca is None:
        missing = [name for name, path in (("cert", cert), ("key", key), ("ca", ca)) if path is None]
        raise ConfigError(
            "mTLS needs tls.cert, tls.key and tls.ca (flags --cert, --key, --ca); missing: "
            + ", ".join(f"tls.{m} (--{m})" for m in missing),
            reason="TLS_MISSING",
            field=f"tls.{missing[0]}",
        )
    return TlsMaterial.from_files(cert, key, ca)


def hub_settings(config: HubConfig) -> HubSettings:
    """Everything ``hutong hub serve`` runs with: certificates, policy, directory and rules read and checked."""
    from gateway.domain.monitoring import load_rules
    from gateway.domain.tiers import load_tier_rules
    from gateway.hub.federation import FederationSettings, load_node_directory

    data_dir = config.require_data_dir()
    config.store()  # a bad store.url stops here, before anything is created
    return HubSettings(
        data_dir=data_dir,
        store_url=config.store_url,
        host=config.host,
        port=config.port,
        tls=None if config.insecure else _tls(config),
        insecure=config.insecure,
        health_listen=config.health_listen,
        console_listen=config.console_listen,
        max_batch_items=config.max_batch,
        stream_idle_seconds=config.stream_idle_seconds,
        crl_path=config.crl,
        ca_registry=config.ca_registry,
        crypto_suite=config.crypto_suite,
        policy=load_policy(config.policy) if config.policy else None,
        grace_seconds=config.grace_seconds,
        audit_origin=config.audit_origin,
        checkpoint_seconds=config.checkpoint_seconds,
        node_directory=load_node_directory(config.node_directory) if config.node_directory else None,
        monitoring_rules=load_rules(config.monitoring_rules) if config.monitoring_rules else None,
        consent_valid_days=config.consent_valid_days,
        federation=FederationSettings(verification_seconds=config.verification_seconds),
        tier_rules=load_tier_rules(config.tier_rules) if config.tier_rules else None,
        standards=_standards(config.standards) if config.tier_rules else None,
        prepare_workers=-1 if config.prepare_workers is None else config.prepare_workers,
    )


def _standards(paths: Sequence[Path]) -> StandardsRegistry:
    """The registry of the standards files, in order; rejected rows are logged with their lines, not fatal."""
    files = []
    for path in paths:
        loaded = load_standards(path)
        for row in loaded.rejected:
            log.warning("standards_row_rejected", file=str(path), line=row.line, reason=row.reason, detail=row.message)
        log.info(
            "standards_loaded",
            file=str(path),
            rows=loaded.rows_read,
            loaded=loaded.loaded,
            rejected=len(loaded.rejected),
        )
        files.append(loaded)
    return StandardsRegistry.from_files(*files)


def run_hub_ops(args: argparse.Namespace) -> int:
    """Dispatch ``hutong hub serve|migrate|backup|restore``."""
    command = args.hub_command
    if command == "serve":
        config = hub_config(
            args.config,
            data_dir=args.data_dir,
            host=args.listen[0] if args.listen else None,
            port=args.listen[1] if args.listen else None,
            health_listen=args.health_listen,
            console_listen=args.console_listen,
            port_file=args.port_file,
            grace_seconds=args.grace,
            crypto_suite=args.crypto_suite,
            insecure=args.insecure,
            cert=args.cert,
            key=args.key,
            ca=args.ca,
            crl=args.crl,
            ca_registry=args.ca_registry,
            audit_origin=args.audit_origin,
            checkpoint_seconds=args.checkpoint_seconds,
            max_batch=args.max_batch,
            policy=args.policy,
            node_directory=args.node_directory,
            monitoring_rules=args.monitoring_rules,
            tier_rules=args.tier_rules,
            standards=tuple(args.standards) if args.standards else None,
        )
        asyncio.run(serve_forever(hub_settings(config), port_file=config.port_file))
        return 0
    config = hub_config(args.config, data_dir=args.data_dir)
    if command == "migrate":
        return migrate(config, create_keys=args.create_keys)
    if command == "backup":
        return backup(config, args.out)
    if command == "restore":
        return restore(config, args.source)
    raise AssertionError(command)  # pragma: no cover - argparse enforces the choices


# -- migrate ----------------------------------------------------------------------------------


def _sqlite_version(path: Path) -> int | None:
    """The schema version of an existing SQLite database, read without changing it; None if there is none."""
    if not path.exists():
        return None
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a SQLite database: {exc}", reason="STORE_INVALID", field="store.url") from exc
    finally:
        con.close()


def _schema_version(engine: Engine, con: Connection) -> int:
    """The schema version of a database, read without changing it; 0 for a shared one without a schema yet."""
    try:
        return engine.schema_version(con)
    except engine.errors:  # no schema_migrations table: nothing applied yet
        return 0


def _shared_version(store: SqlStore) -> int:
    """The schema version of a shared (PostgreSQL) database before migrating; 0 for one without a schema yet."""
    con = store.engine.connect(readonly=True)
    try:
        return _schema_version(store.engine, con)
    finally:
        con.close()


def _tree_hash_name(data_dir: Path) -> str:
    """The exchange log's tree hash: the suite's in keys.json, sha256 before there is one."""
    # The tree hash only matters once the log has entries, and then keys.json exists and names the suite.
    if (data_dir / KEYS_FILE).exists():
        return log_hash_name(load_or_create_keys(data_dir).suite)
    return "sha256"


async def _migrate(data_dir: Path, url: str) -> tuple[int | None, int]:
    """(version before, or None for SQLite, which is read beforehand; version after) of the store at ``url``."""
    store = store_for(url, data_dir, audit_hash=hash_function(_tree_hash_name(data_dir)))
    before = None if store.engine.name == "sqlite" else await asyncio.to_thread(_shared_version, store)
    await store.open()  # applies every pending migration, each in its own transaction
    try:
        return before, int(store.schema_version)
    finally:
        await store.close()


def create_key_files(config: HubConfig) -> list[str]:
    """Create the key files a hub's first start would, where missing; the names of those created.

    Hub replicas must share one set (the same person-key secret, sealing keys, token keys and log
    key), so it is made once, before they start, rather than by whichever replica starts first.
    """
    data_dir = config.require_data_dir()
    missing = [name for name in (KEYS_FILE, TOKEN_KEYS_FILE, AUDIT_KEY_FILE) if not (data_dir / name).exists()]
    tls = None
    if AUDIT_KEY_FILE in missing and config.audit_origin is None:
        if config.cert is None or config.key is None or config.ca is None:
            raise ConfigError(
                "a new exchange log needs its permanent name: set audit.origin (--audit-origin), or tls.cert,"
                " tls.key and tls.ca to name it after the hub certificate",
                reason="CONFIG_MISSING",
                field="audit.origin",
            )
        tls = _tls(config)
    # Each also checks a file that exists: the suite it holds, its permissions.
    load_or_create_keys(data_dir, suite=config.crypto_suite)
    TokenKeys.load_or_create(data_dir)
    AuditKey.load_or_create(data_dir, origin=config.audit_origin, default_origin=default_origin(tls))
    return missing


def migrate(config: HubConfig, *, create_keys: bool = False) -> int:
    """``hutong hub migrate``: apply pending schema migrations; print the version before and after."""
    data_dir = config.require_data_dir()
    location = config.store()
    console = Console()
    if create_keys:
        created = create_key_files(config)
        console.print(f"created {', '.join(created)} in {escape(str(data_dir))}" if created else "the key files exist")
    before = _sqlite_version(location.sqlite_path) if location.sqlite_path is not None else None
    shared_before, after = asyncio.run(_migrate(data_dir, config.store_url))
    before = shared_before if shared_before is not None else before
    where = escape(location.describe())
    if before is None:
        console.print(f"created {where}: schema version {after}")
    else:
        applied = "nothing to apply" if before == after else f"{after - before} migration(s) applied"
        console.print(f"{where}: schema version {before} -> {after} ({applied})")
    return 0


# -- backup and restore -----------------------------------------------------------------------


def _file_error(exc: OSError, field: str) -> ConfigError:
    return ConfigError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), reason="FILE_ERROR", field=field)


def backup(config: HubConfig, out: Path) -> int:
    """``hutong hub backup``: the database (SQLite online backup), the key files, the newest checkpoint, a manifest."""
    data_dir = config.require_data_dir()
    location = config.store()
    try:
        manifest = backups.back_up(data_dir, location, out)
    except OSError as exc:
        raise _file_error(exc, "out") from exc
    console = Console()
    checkpoint = (
        "no checkpoint yet" if manifest.checkpoint_size is None else f"checkpoint at {manifest.checkpoint_size:,}"
    )
    console.print(
        f"backed up {escape(str(data_dir))} to {escape(str(out))}: {len(manifest.files)} files, schema version"
        f" {manifest.schema_version}, exchange log {manifest.audit_tree_size:,} entries ({checkpoint})"
    )
    for f in manifest.files:  # plain print: one line per file, however narrow the terminal
        print(f"  {f.name:<24} {f.mode:04o} {f.size:>16,} bytes  sha256:{f.sha256}")
    if location.engine == "postgresql":
        console.print(
            "[yellow]the database itself is in PostgreSQL: this directory holds the keys and the checkpoint only."
            " Dump the database now, into the same directory (password from PGPASSFILE or PGPASSWORD):[/]"
        )
        print(backups.pg_dump_command(location, out))
    return 0


def restore(config: HubConfig, source: Path) -> int:
    """``hutong hub restore``: verify every file of the backup, then restore it into an empty data directory."""
    data_dir = config.require_data_dir()
    location = config.store()
    try:
        manifest = backups.restore(source, data_dir, location)
    except OSError as exc:
        raise _file_error(exc, "hub.data_dir") from exc
    console = Console()
    console.print(
        f"verified {len(manifest.files)} files and restored the backup of {escape(manifest.created)} into"
        f" {escape(str(data_dir))}: schema version {manifest.schema_version}, exchange log"
        f" {manifest.audit_tree_size:,} entries of {escape(manifest.audit_origin)}"
    )
    if manifest.engine == "postgresql":
        console.print(
            "[yellow]restored the keys only: the database was in PostgreSQL. Restore its dump into an empty"
            " database before starting the hub:[/]"
        )
        print(backups.pg_restore_command(location, source))
    return 0


# -- the database of a hub that exists, for the commands that read or write it -----------------


def hub_store(config: HubConfig) -> SqlStore:
    """The store of a hub that has run, not opened, with its log's tree hash (keys.json's suite).

    A SQLite database that does not exist is refused (exit 3), never created: a mistyped
    ``--data-dir`` must not leave an empty database behind.
    """
    data_dir = config.require_data_dir()
    location = config.store()
    if location.sqlite_path is not None and not location.sqlite_path.exists():
        raise ConfigError(
            f"no hub database at {location.sqlite_path}: is that the hub's data directory (or store.url), and has"
            " the hub run?",
            reason="FILE_MISSING",
            field="store.url" if config.store_url else "hub.data_dir",
        )
    return store_for(config.store_url, data_dir, audit_hash=hash_function(_tree_hash_name(data_dir)))


def _require_current_schema(engine: Engine, con: Connection) -> None:
    """Refuse (exit 3) a database whose schema is older than this release's: ``hutong hub migrate`` first.

    The operator commands never migrate: on a shared database that is done once, before the
    replicas of a new release start, not as the side effect of a report.
    """
    newest = max(version for version, _ in migrations(engine.name))
    version = _schema_version(engine, con)
    if version < newest:
        raise ConfigError(
            f"{engine.describe()} holds schema version {version}; this release needs {newest}:"
            " run `hutong hub migrate` first",
            reason="SCHEMA_OUTDATED",
            field="store.url",
        )


@contextlib.contextmanager
def hub_database(config: HubConfig) -> Iterator[Connection]:
    """A read-only connection to a hub's database (see :func:`hub_store`), closed on leaving.

    Its reads run in one read transaction, so they agree with each other while a hub writes:
    a WAL snapshot on SQLite, a REPEATABLE READ READ ONLY transaction on PostgreSQL. Neither
    blocks the hub's writers.
    """
    engine = hub_store(config).engine
    con = engine.connect(readonly=True)
    try:
        _require_current_schema(engine, con)
        con.execute(engine.snapshot)
        yield con
    finally:
        con.close()  # ends the read transaction: nothing was written
