"""The embedded store: one SQLite database in WAL mode.

SQLite allows one writer, which is the store's writer thread (the sqlite3 module releases the
GIL inside the engine, so the event loop runs while SQLite works). Reads run on the event
loop's thread: point lookups by indexed person key take microseconds, and WAL lets them run
while the writer commits.

Durability: ``synchronous=FULL`` by default, so an acknowledged batch survives power loss,
not just a crash of the process.

Permissions: the database holds person keys, sealed personal data and the exchange log, so a
new file is created 0600 whatever the umask, and SQLite gives its ``-wal`` and ``-shm`` files
the mode of the database. An existing file open to group or others is used as it is (refusing
would stop deployments that work today) with a ``database_file_open_to_others`` warning naming it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway.audit import HashFn, sha256
from gateway.errors import StoreError
from gateway.store.engine import migrations
from gateway.store.sql import SqlStore, finding_id

__all__ = ["DATABASE_FILE_MODE", "SqliteEngine", "SqliteStore", "check_database_file", "finding_id"]

log = structlog.get_logger("hutong.store")

#: The mode of a database file the store creates: the owner's only, like the hub's key files.
DATABASE_FILE_MODE = 0o600
#: The files SQLite keeps beside a database (WAL mode, and a rollback journal); they take its mode.
_COMPANIONS = ("-wal", "-shm", "-journal")


def check_database_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; else warn if it, or a companion, is open to others.

    The file is made here with ``O_EXCL`` so that it is private from its first byte (SQLite would
    create it with the umask's mode), and its mode is set exactly (a umask may take more bits).
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), DATABASE_FILE_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror or exc}", reason="STORE_UNAVAILABLE") from exc
    else:
        try:
            os.fchmod(fd, DATABASE_FILE_MODE)
        finally:
            os.close(fd)
        return
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        try:
            mode = file.stat().st_mode
        except OSError:
            continue  # no companion file (yet), or nothing to say about it
        if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "database_file_open_to_others",
                path=str(file),
                mode=f"{stat.S_IMODE(mode):04o}",
                hint=f"chmod 600 {file}",
            )


class SqliteEngine:
    """SQLite files: WAL, ``BEGIN IMMEDIATE`` for writes, ``PRAGMA user_version`` as the schema version."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    snapshot = "BEGIN"  # WAL: a read transaction sees the database as of its first read
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    arrays = False
    inline_reads = True
    shared = False

    def __init__(self, path: Path, *, synchronous: str = "FULL", cache_mib: int = 64) -> None:
        self.path = path
        self._synchronous = synchronous
        self._cache_kib = cache_mib * 1024
        # The file's mode is checked (or set) by the first connection only: once per open store.
        self._file_checked = False

    def describe(self) -> str:
        return str(self.path)

    def connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._file_checked:
            check_database_file(self.path)
            self._file_checked = True
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}", reason="STORE_UNAVAILABLE") from exc
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={self._synchronous}")
        con.execute(f"PRAGMA cache_size=-{self._cache_kib}")
        con.execute("PRAGMA busy_timeout=10000")
        # Checkpoint every ~80 MB of WAL instead of every 4 MB: the person-key index takes
        # random inserts, and frequent checkpoints rewrite the same index pages over and over
        # (measured: about a third less time per ingested record).
        con.execute("PRAGMA wal_autocheckpoint=20000")
        con.execute("PRAGMA foreign_keys=ON")
        if readonly:
            con.execute("PRAGMA query_only=ON")
        return con

    def migrate(self, con: Any) -> None:
        current = self.schema_version(con)
        for version, sql in migrations("sqlite"):
            if version > current:
                con.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version={version};\nCOMMIT;")

    def schema_version(self, con: Any) -> int:
        return int(con.execute("PRAGMA user_version").fetchone()[0])

    def script(self, con: Any, statements: Sequence[str]) -> None:
        for statement in statements:  # in-process: nothing to save by joining them
            con.execute(statement)

    def insert_rows(self, con: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        marks = ",".join("?" * len(columns))
        con.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def alive(self, con: Any) -> bool:
        return True  # a file does not go away under an open connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        con = self.connect(readonly=True)
        try:
            yield con
        finally:
            con.close()

    def close(self) -> None:
        return None


class SqliteStore(SqlStore):
    """The Store protocol on one SQLite file."""

    def __init__(
        self, path: Path | str, *, synchronous: str = "FULL", cache_mib: int = 64, audit_hash: HashFn = sha256
    ) -> None:
        self.path = Path(path)
        super().__init__(SqliteEngine(self.path, synchronous=synchronous, cache_mib=cache_mib), audit_hash=audit_hash)
