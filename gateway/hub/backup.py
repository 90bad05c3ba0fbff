"""Backups of a hub (``hutong hub backup``, ``hutong hub restore``): the database, the keys, the log's checkpoint.

A backup is one directory::

    manifest.json            what is here: each file's SHA-256, size, mode and role; the schema
                             version; the exchange log's origin, size, root and newest checkpoint
    hub.sqlite3              [0600] the SQLite database (absent for PostgreSQL: see below)
    keys.json                [0600] crypto suite, person-key secret, sealing keys
    token-keys.json          [0600] access-token signing keys
    audit-note.key           [0600] the key that signs the exchange log's checkpoints
    audit-key-binding.json   that key, vouched for by the hub certificate (when the hub runs with TLS)
    checkpoint.note          the newest signed checkpoint in the database copied

The SQLite copy is made with SQLite's online backup API in one step, i.e. inside one read
transaction: it is the database as committed at one instant, and since WAL readers never block
the writer the hub keeps serving meanwhile. The manifest is written last, so a directory without
one is an interrupted backup. A PostgreSQL database is backed up with ``pg_dump`` (the command
prints how; see deploy/README.md); the directory then holds the keys and the checkpoint only,
which lets whoever restores the dump check that it holds the log at least up to that checkpoint.

Restoring refuses a target data directory that is not empty, verifies every file against the
manifest before writing anything (naming the first file that does not match), checks that the
checkpoint is signed by the backed-up audit key, copies into a staging directory beside the
target and renames it into place, so an interrupted restore leaves no half-restored data directory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shlex
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit import CheckpointInvalid, HashFn, MerkleAccumulator, verify_checkpoint
from gateway.audit.archive import hash_function
from gateway.errors import ConfigError, StoreError
from gateway.hub.audit import AUDIT_KEY_FILE, KEY_BINDING_FILE, AuditKey, log_hash_name
from gateway.hub.config import DATABASE_FILE, StoreLocation, redact_password, store_for
from gateway.hub.keys import KEYS_FILE, load_or_create_keys
from gateway.hub.tokens import TOKEN_KEYS_FILE
from gateway.store.sqlite_audit import stored_tree

__all__ = [
    "BACKUP_FORMAT",
    "CHECKPOINT_FILE",
    "MANIFEST_FILE",
    "BackupFile",
    "Manifest",
    "back_up",
    "pg_dump_command",
    "pg_restore_command",
    "restore",
    "verify_backup",
]

BACKUP_FORMAT = "hutong-hub-backup/1"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.note"
#: The dump file name the printed pg_dump command writes into the backup directory.
PG_DUMP_FILE = "hub.pgdump"
#: Secret files of the data directory (mode 0600), then public ones (0644), copied when present.
_SECRET_FILES = (KEYS_FILE, TOKEN_KEYS_FILE, AUDIT_KEY_FILE)
_PUBLIC_FILES = (KEY_BINDING_FILE,)
_ROLES = ("database", "secret", "public", "checkpoint")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupFile:
    """One file of a backup, as the manifest lists it."""

    name: str
    #: ``database``, ``secret`` (a key file), ``public`` or ``checkpoint`` (kept in the backup only).
    role: str
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class Manifest:
    """What a backup holds; ``manifest.json``."""

    created: str
    #: ``sqlite`` or ``postgresql``.
    engine: str
    #: Where the database was (a path, or the URL without its password).
    store: str
    schema_version: int
    crypto_suite: str
    audit_origin: str
    audit_tree_size: int
    #: Hex root hash of the log's ``audit_tree_size`` entries.
    audit_root: str
    #: Size of the newest signed checkpoint (``checkpoint.note``), None before the first.
    checkpoint_size: int | None
    files: tuple[BackupFile, ...]

    def to_json(self) -> bytes:
        """The manifest file's content."""
        body: dict[str, Any] = {
            "format": BACKUP_FORMAT,
            "created": self.created,
            "store": {"engine": self.engine, "location": self.store, "schema_version": self.schema_version},
            "crypto_suite": self.crypto_suite,
            "audit": {
                "origin": self.audit_origin,
                "tree_size": self.audit_tree_size,
                "root": self.audit_root,
                "checkpoint_size": self.checkpoint_size,
            },
            "files": [
                {"name": f.name, "role": f.role, "sha256": f.sha256, "size": f.size, "mode": f"{f.mode:04o}"}
                for f in self.files
            ],
        }
        return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: Path) -> Manifest:
        """Parse ``manifest.json``; a ConfigError (BACKUP_INVALID) says what is wrong."""
        try:
            body = json.loads(data)
            if body.get("format") != BACKUP_FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {BACKUP_FORMAT!r}")
            store, audit = body["store"], body["audit"]
            files = tuple(
                BackupFile(
                    name=_plain_name(str(f["name"])),
                    role=_role(str(f["role"])),
                    sha256=str(f["sha256"]),
                    size=int(f["size"]),
                    mode=int(str(f["mode"]), 8),
                )
                for f in body["files"]
            )
            checkpoint = audit["checkpoint_size"]
            return cls(
                created=str(body["created"]),
                engine=str(store["engine"]),
                store=str(store["location"]),
                schema_version=int(store["schema_version"]),
                crypto_suite=str(body["crypto_suite"]),
                audit_origin=str(audit["origin"]),
                audit_tree_size=int(audit["tree_size"]),
                audit_root=str(audit["root"]),
                checkpoint_size=None if checkpoint is None else int(checkpoint),
                files=files,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{source} is not a hub backup manifest: {exc}", reason="BACKUP_INVALID", field="from"
            ) from exc

    def file(self, role: str) -> BackupFile | None:
        """The (first) file of ``role``."""
        return next((f for f in self.files if f.role == role), None)


def _plain_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"file name {name!r} is not a plain file name")
    return name


def _role(role: str) -> str:
    if role not in _ROLES:
        raise ValueError(f"unknown file role {role!r}")
    return role


# -- files ------------------------------------------------------------------------------------


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, target: Path, mode: int) -> tuple[str, int]:
    """Copy ``source`` to a new file ``target`` with ``mode`` from its first byte, flushed to disk; (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(source):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), mode)  # whatever the umask took away
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _entry(directory: Path, name: str, role: str, mode: int) -> BackupFile:
    path = directory / name
    return BackupFile(name, role, _sha256(path), path.stat().st_size, mode)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing(data_dir: Path, name: str) -> ConfigError:
    return ConfigError(
        f"{data_dir} holds no {name}: is it a hub's data directory, and has the hub run?",
        reason="FILE_MISSING",
        field="hub.data_dir",
    )


# -- backup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LogState:
    schema_version: int
    tree_size: int
    root: bytes
    #: (size, note) of the newest checkpoint.
    checkpoint: tuple[int, str] | None


def _sqlite_copy(source: Path, target: Path) -> None:
    """An online backup of the SQLite database ``source`` into the new file ``target`` (0600)."""
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {source}: {exc}", reason="STORE_UNAVAILABLE") from exc
    try:
        src.execute("PRAGMA busy_timeout=10000")
        dst = sqlite3.connect(target)
        try:
            # pages=-1: everything in one step, i.e. in one read transaction: a consistent copy.
            src.backup(dst, pages=-1)
            # One self-contained file: the hub turns WAL mode back on when it opens a restored copy.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {exc}", reason="BACKUP_FAILED") from exc
    finally:
        src.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_log_state(database: Path, hash_fn: HashFn) -> _LogState:
    """Schema version, the log's size and root, and the newest checkpoint, read from a (copied) database."""
    con = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        if version < 2:  # before the exchange log (migration 0002)
            return _LogState(version, 0, MerkleAccumulator(hash_fn).root(), None)
        size, peaks = stored_tree(con, hash_fn)
        row = con.execute("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        root = MerkleAccumulator(hash_fn, size=size, peaks=peaks).root()
        return _LogState(version, size, root, None if row is None else (int(row[0]), str(row[1])))
    finally:
        con.close()


async def _store_log_state(location: StoreLocation, data_dir: Path, hash_fn: HashFn) -> _LogState:
    """The same, asked of the store (PostgreSQL)."""
    store = store_for(location.postgres_url or "", data_dir, audit_hash=hash_fn)
    await store.open()
    try:
        size, root = await store.audit_tree()
        return _LogState(int(store.schema_version), size, root, await store.latest_checkpoint())
    finally:
        await store.close()


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise ConfigError(
                f"{out} exists and is not an empty directory; back up into a new directory",
                reason="BACKUP_TARGET_NOT_EMPTY",
                field="out",
            )
        out.chmod(0o700)
    else:
        out.mkdir(mode=0o700, parents=True)


def back_up(data_dir: Path, location: StoreLocation, out: Path) -> Manifest:
    """Back the hub in ``data_dir`` (database at ``location``) up into the new directory ``out``."""
    if not (data_dir / KEYS_FILE).exists():
        raise _missing(data_dir, KEYS_FILE)
    if not (data_dir / AUDIT_KEY_FILE).exists():
        raise _missing(data_dir, AUDIT_KEY_FILE)
    suite = load_or_create_keys(data_dir).suite
    hash_fn = hash_function(log_hash_name(suite))
    audit_key = AuditKey.load_or_create(data_dir, origin=None, default_origin="")
    if location.sqlite_path is not None and not location.sqlite_path.exists():
        raise ConfigError(f"no hub database at {location.sqlite_path}", reason="FILE_MISSING", field="store.url")
    _prepare_out(out)
    files: list[BackupFile] = []
    if location.sqlite_path is not None:
        _sqlite_copy(location.sqlite_path, out / DATABASE_FILE)
        state = _sqlite_log_state(out / DATABASE_FILE, hash_fn)
        files.append(_entry(out, DATABASE_FILE, "database", 0o600))
    else:
        state = asyncio.run(_store_log_state(location, data_dir, hash_fn))
    for names, role, mode in ((_SECRET_FILES, "secret", 0o600), (_PUBLIC_FILES, "public", 0o644)):
        for name in names:
            if (data_dir / name).exists():
                digest, size = _copy(data_dir / name, out / name, mode)
                files.append(BackupFile(name, role, digest, size, mode))
    checkpoint_size = None
    if state.checkpoint is not None:
        size, note = state.checkpoint
        # The copy's newest checkpoint must be the backed-up key's signature over this log: anything
        # else means the data directory's key and database do not belong together.
        try:
            verify_checkpoint(
                note, audit_key.origin, audit_key.private_key.public_key(), origin=audit_key.origin,
                hash_size=len(state.root),
            )  # fmt: skip
        except CheckpointInvalid as exc:
            raise ConfigError(
                f"the newest checkpoint in the database is not signed by {data_dir / AUDIT_KEY_FILE}: {exc}",
                reason="AUDIT_KEY_MISMATCH",
                field="hub.data_dir",
            ) from exc
        (out / CHECKPOINT_FILE).write_text(note, encoding="utf-8")
        (out / CHECKPOINT_FILE).chmod(0o644)
        files.append(_entry(out, CHECKPOINT_FILE, "checkpoint", 0o644))
        checkpoint_size = size
    manifest = Manifest(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        engine=location.engine,
        store=location.describe(),
        schema_version=state.schema_version,
        crypto_suite=suite.value,
        audit_origin=audit_key.origin,
        audit_tree_size=state.tree_size,
        audit_root=state.root.hex(),
        checkpoint_size=checkpoint_size,
        files=tuple(files),
    )
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_bytes(manifest.to_json())
    tmp.replace(out / MANIFEST_FILE)
    _fsync_dir(out)
    return manifest


def _url_for_command(location: StoreLocation | None) -> str:
    # Without its password: the command is printed, and pg_dump takes it from PGPASSFILE or PGPASSWORD.
    if location is None or location.postgres_url is None:
        return "postgresql://..."
    return shlex.quote(redact_password(location.postgres_url, mark=""))


def pg_dump_command(location: StoreLocation, out: Path) -> str:
    """The pg_dump command that completes a PostgreSQL backup in ``out``."""
    return (
        f"pg_dump --format=custom --no-owner --file={shlex.quote(str(out / PG_DUMP_FILE))} {_url_for_command(location)}"
    )


def pg_restore_command(location: StoreLocation | None, backup_dir: Path) -> str:
    """The pg_restore command that puts a dump taken with :func:`pg_dump_command` into an empty database."""
    dump = shlex.quote(str(backup_dir / PG_DUMP_FILE))
    return f"pg_restore --no-owner --exit-on-error --dbname={_url_for_command(location)} {dump}"


# -- restore ----------------------------------------------------------------------------------


def verify_backup(backup_dir: Path) -> Manifest:
    """The manifest, once every file it lists is present with its size and SHA-256; else a ConfigError naming it."""
    path = backup_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{backup_dir} holds no {MANIFEST_FILE}: not a hub backup, or one that did not finish",
            reason="BACKUP_INVALID",
            field="from",
        ) from None
    manifest = Manifest.from_json(data, source=path)
    names = [f.name for f in manifest.files]
    if len(set(names)) != len(names) or MANIFEST_FILE in names:
        raise ConfigError(f"{path} lists a file twice", reason="BACKUP_INVALID", field="from")
    if KEYS_FILE not in names or (manifest.engine == "sqlite" and manifest.file("database") is None):
        raise ConfigError(
            f"{path} lists no {KEYS_FILE} or no database: not a complete hub backup",
            reason="BACKUP_INVALID",
            field="from",
        )
    for f in manifest.files:
        file_path = backup_dir / f.name
        if not file_path.is_file():
            raise ConfigError(
                f"{file_path} is missing from the backup", reason="BACKUP_FILE_MISSING", field="from",
                metadata={"file": f.name},
            )  # fmt: skip
        size = file_path.stat().st_size
        digest = _sha256(file_path) if size == f.size else ""
        if size != f.size or digest != f.sha256:
            what = f"is {size} bytes, the manifest says {f.size}" if size != f.size else "does not match its SHA-256"
            raise ConfigError(
                f"{file_path} {what}: the backup is damaged or was altered", reason="BACKUP_CORRUPT", field="from",
                metadata={"file": f.name},
            )  # fmt: skip
    return manifest


def _check_checkpoint(backup_dir: Path, manifest: Manifest) -> None:
    """The backed-up checkpoint is signed by the backed-up audit key and names the manifest's size."""
    if manifest.checkpoint_size is None:
        return
    if AUDIT_KEY_FILE not in {f.name for f in manifest.files} or manifest.file("checkpoint") is None:
        raise ConfigError(
            f"{backup_dir / MANIFEST_FILE} names a checkpoint but the backup lacks it or {AUDIT_KEY_FILE}",
            reason="BACKUP_INVALID",
            field="from",
        )
    key = AuditKey.load_or_create(backup_dir, origin=None, default_origin="")
    note = (backup_dir / CHECKPOINT_FILE).read_text(encoding="utf-8")
    try:
        checkpoint = verify_checkpoint(
            note, key.origin, key.private_key.public_key(), origin=key.origin,
            hash_size=len(bytes.fromhex(manifest.audit_root)),
        )  # fmt: skip
    except CheckpointInvalid as exc:
        raise ConfigError(
            f"{backup_dir / CHECKPOINT_FILE} is not signed by the backed-up {AUDIT_KEY_FILE}: {exc}",
            reason="BACKUP_CORRUPT",
            field="from",
            metadata={"file": CHECKPOINT_FILE},
        ) from exc
    if checkpoint.size != manifest.checkpoint_size or checkpoint.size > manifest.audit_tree_size:
        raise ConfigError(
            f"{backup_dir / CHECKPOINT_FILE} covers {checkpoint.size} entries; the manifest says"
            f" {manifest.checkpoint_size} of {manifest.audit_tree_size}",
            reason="BACKUP_CORRUPT",
            field="from",
            metadata={"file": CHECKPOINT_FILE},
        )


def _require_empty(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ConfigError(
            f"{data_dir} is not empty; restore into a new or empty data directory (nothing was changed)",
            reason="DATA_DIR_NOT_EMPTY",
            field="hub.data_dir",
        )


def restore(backup_dir: Path, data_dir: Path, location: StoreLocation) -> Manifest:
    """Restore the backup in ``backup_dir`` into the new (or empty) ``data_dir``; the database to ``location``."""
    manifest = verify_backup(backup_dir)
    _check_checkpoint(backup_dir, manifest)
    if manifest.engine == "sqlite" and location.sqlite_path is None:
        raise ConfigError(
            f"{backup_dir} holds a SQLite database, but store.url names {location.describe()}: restore it to"
            " SQLite, then move the records with a resync",
            reason="STORE_ENGINE_MISMATCH",
            field="store.url",
        )
    _require_empty(data_dir)
    database = manifest.file("database")
    db_target = location.sqlite_path if database is not None else None
    db_inside = db_target is not None and db_target.parent.resolve() == data_dir.resolve()
    if db_target is not None and not db_inside and db_target.exists():
        raise ConfigError(f"{db_target} exists; nothing was changed", reason="FILE_EXISTS", field="store.url")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f".{data_dir.name}.restoring-{os.getpid()}"
    staging.mkdir(mode=0o700)
    outside: Path | None = None
    try:
        for f in manifest.files:
            if f.role == "checkpoint":
                continue  # kept in the backup: it is what the restored log must extend
            if f.role == "database":
                assert db_target is not None
                if db_inside:
                    _copy(backup_dir / f.name, staging / db_target.name, f.mode)
                else:
                    outside = db_target
                    db_target.parent.mkdir(parents=True, exist_ok=True)
                    _copy(backup_dir / f.name, db_target, f.mode)
            else:
                _copy(backup_dir / f.name, staging / f.name, f.mode)
        _fsync_dir(staging)
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        staging.rename(data_dir)
        _fsync_dir(data_dir.parent)
    except BaseException:
        for leftover in staging.glob("*") if staging.exists() else ():
            leftover.unlink()
        if staging.exists():
            staging.rmdir()
        if outside is not None:
            outside.unlink(missing_ok=True)
        raise
    return manifest
