"""The production store: PostgreSQL (psycopg 3), for a national hub and its replicas.

The same :class:`~gateway.store.sql.SqlStore` as the embedded store runs here; this module
gives it PostgreSQL connections that speak the sqlite3 module's interface (``?`` placeholders
become ``%s``; statements executed often are prepared server-side by psycopg), the schema
migrations of ``migrations/postgresql`` (tracked in ``schema_migrations``), and a write
transaction that begins by taking a transaction-scoped advisory lock: every hub replica's
writer queues on it, so the exchange log gets its indices from one sequencer — the database —
and the audit log's compact range, read back when another replica moved it, stays exact.

``postgresql://user@host:5432/db?options=-csearch_path%3Dhutong`` picks a schema through libpq's
``options``; every other libpq parameter (``sslmode``, ``sslrootcert``, ``connect_timeout``, …)
is passed through as well.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.audit import HashFn, sha256
from gateway.errors import StoreUnavailable
from gateway.store.engine import migrations
from gateway.store.sql import SqlStore

__all__ = ["PgConnection", "PostgresEngine", "PostgresStore", "redact"]

#: The advisory lock every writer takes for its transaction (a fixed key: "hutong" in ASCII).
WRITER_LOCK = 0x6875746F6E67
#: Taken while migrating, so two replicas starting together do not both migrate.
MIGRATION_LOCK = WRITER_LOCK - 1
_TOKEN = re.compile(r"'(?:[^']|'')*'|\?|%")


def lock_key(base: int, schema: str) -> int:
    """A signed 64-bit advisory lock key for ``base`` in ``schema``."""
    digest = hashlib.blake2b(f"{base}/{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled), string literals left alone."""

    def swap(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        return text.replace("%", "%%")  # psycopg reads %-sequences inside literals too

    return _TOKEN.sub(swap, sql)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PgConnection:
    """A psycopg connection with the sqlite3 module's interface, in autocommit (explicit BEGIN/COMMIT)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        if parameters:
            cur.execute(translate(sql), list(parameters))
        else:
            # Without parameters psycopg uses the simple protocol: several statements may go at once.
            cur.execute(sql.encode())
        return cur

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        rows = [list(p) for p in parameters]
        if len(rows) == 1:  # the common audit append: a plain statement costs less than a pipeline
            cur.execute(translate(sql), rows[0])
        elif rows:
            cur.executemany(translate(sql), rows)
        return cur

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


class PostgresEngine:
    """A PostgreSQL database at ``url``."""

    name = "postgresql"
    snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    #: Replaced by the schema's own lock once connected (see :meth:`connect`).
    begin = f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    arrays = True
    inline_reads = False
    shared = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0, pool_size: int = 4) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    def describe(self) -> str:
        return redact(self.url)

    def _connect_args(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self._connect_timeout)),
            "application_name": "hutong-hub",
        }

    def connect(self, *, readonly: bool = False) -> PgConnection:
        try:
            raw = psycopg.connect(self.url, **self._connect_args())
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.describe()}: {str(exc).strip()}") from exc
        if readonly:
            raw.execute("SET default_transaction_read_only = on")
        else:
            # Advisory locks are per database; the hub's tables are per schema. Hubs of two
            # schemas in one database (staging beside production, parallel tests) must not queue
            # on each other's lock: the key is the schema's, derived the same way by every replica.
            schema = raw.execute("SELECT current_schema()").fetchone()
            self.begin = f"BEGIN; SELECT pg_advisory_xact_lock({lock_key(WRITER_LOCK, schema[0] if schema else '')})"
        return PgConnection(raw)

    def migrate(self, con: Any) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        migration_lock = lock_key(MIGRATION_LOCK, con.execute("SELECT current_schema()").fetchone()[0] or "")
        con.execute(f"SELECT pg_advisory_lock({migration_lock})")
        try:
            current = self.schema_version(con)
            for version, sql in migrations("postgresql"):
                if version > current:
                    con.execute("BEGIN")
                    try:
                        con.execute(sql)
                        con.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                        con.execute("COMMIT")
                    except BaseException:
                        con.execute("ROLLBACK")
                        raise
        finally:
            con.execute(f"SELECT pg_advisory_unlock({migration_lock})")

    def schema_version(self, con: Any) -> int:
        row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0])

    def script(self, con: Any, statements: Sequence[str]) -> None:
        con.execute("; ".join(statements))  # no parameters: the simple protocol takes them all at once

    def insert_rows(self, con: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """COPY: measured at 2.5 times the rows per second of a pipelined executemany of INSERTs."""
        with con.raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def alive(self, con: Any) -> bool:
        raw = con.raw
        return not (raw.closed or raw.broken)

    @contextlib.contextmanager
    def reading(self) -> Iterator[PgConnection]:
        """A pooled read-only connection (one found broken is discarded when it comes back)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs=self._connect_args(),
                    configure=_read_only,
                    timeout=self._connect_timeout,
                    name="hutong-readers",
                    open=True,
                )
            pool = self._pool
        try:
            with pool.connection() as raw:
                yield PgConnection(raw)
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"no connection to PostgreSQL at {self.describe()} within {self._connect_timeout:g}s"
            ) from exc

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def _read_only(raw: psycopg.Connection[Any]) -> None:
    raw.execute("SET default_transaction_read_only = on")


class PostgresStore(SqlStore):
    """The Store protocol on a PostgreSQL database."""

    def __init__(self, url: str, *, audit_hash: HashFn = sha256, readers: int = 4) -> None:
        self.url = url
        super().__init__(PostgresEngine(url, pool_size=readers), audit_hash=audit_hash, readers=readers)
