"""What the SQL store needs from a database engine, and what each engine gives it.

The hub's store (:class:`gateway.store.sql.SqlStore`) and its ledgers (audit, loop, linkage)
run one dialect of SQL — the part SQLite ≥ 3.35 and PostgreSQL ≥ 13 share: ``?`` placeholders,
``INSERT … ON CONFLICT DO NOTHING / DO UPDATE``, ``RETURNING``, row values, ``CASE`` rather than
two-argument ``max``. Each engine supplies connections that speak the sqlite3 module's
interface (``execute``, ``executemany``, cursors with ``fetchone``/``fetchall``/``rowcount``),
its schema migrations, and how a write transaction begins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from importlib import resources
from typing import Any, Protocol

__all__ = ["Connection", "Cursor", "Engine", "migrations"]


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection as the store uses it: sqlite3's interface, in autocommit (explicit BEGIN/COMMIT)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """One database engine under the SQL store."""

    #: ``sqlite`` or ``postgresql``.
    name: str
    #: The statement that opens a write transaction (it must exclude other writers).
    begin: str
    #: The statement that opens a read transaction whose reads all see one committed state.
    snapshot: str
    #: Exceptions of the driver that mean the database failed a statement.
    errors: tuple[type[BaseException], ...]
    #: True when a list can be one parameter (``column = ANY(?)``), so one statement serves every length.
    arrays: bool
    #: True when reads are cheap enough to run on the event loop's thread (an embedded engine).
    inline_reads: bool
    #: True when other processes (hub replicas) may write the same database: in-memory state
    #: (the audit log's compact range, the linkage index) must be checked against it in every
    #: write transaction, and the linker reads its candidates from the database.
    shared: bool

    def describe(self) -> str:
        """Where the database is, for messages (no password)."""
        ...

    def connect(self, *, readonly: bool = False) -> Connection:
        """A new connection; raises StoreError (STORE_UNAVAILABLE) when the database cannot be reached."""
        ...

    def migrate(self, con: Connection) -> None:
        """Apply the pending schema migrations, each in its own transaction."""
        ...

    def schema_version(self, con: Connection) -> int:
        """The newest applied migration."""
        ...

    def script(self, con: Connection, statements: Sequence[str]) -> None:
        """Run parameterless statements in order, in one round trip where the engine can."""
        ...

    def insert_rows(self, con: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert new rows (no conflicts expected: a conflict fails the statement), as fast as the engine can."""
        ...

    def alive(self, con: Connection) -> bool:
        """False when ``con`` is broken (the server restarted, the network dropped): the store reconnects."""
        ...

    def reading(self) -> AbstractContextManager[Connection]:
        """A read-only connection for one read, from the engine's pool (engines without inline reads)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (its pool)."""
        ...


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) of ``gateway/store/migrations/<dialect>/NNNN_*.sql``, in order."""
    folder = resources.files("gateway.store") / "migrations" / dialect
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(out)
