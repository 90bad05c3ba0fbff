"""Shared fixtures: a real demo PKI, real hubs on port 0 with mTLS, clients per node, record builders.

Tests run with ``--import-mode=importlib``, so nothing here can be imported by test modules;
builders are handed out as fixtures instead.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

from gateway.client import HubClient, RetryConfig
from gateway.domain.identity import make_id_number
from gateway.hub.server import HubServer, HubSettings
from hutong.v1 import person_pb2
from pki import DemoPki, TlsMaterial, write_demo_pki

#: The nodes of the demo PKI: (province code, node name).
PROVINCES: tuple[tuple[str, str], ...] = (("440000", "gz-01"), ("410000", "zz-01"), ("510000", "cd-01"))
#: A county of each province, used as residence and granting division of its records.
COUNTY_OF: dict[str, str] = {"440000": "440106", "410000": "410105", "510000": "510104"}

GZ_URI = "hutong://province/440000/node/gz-01"
ZZ_URI = "hutong://province/410000/node/zz-01"
CD_URI = "hutong://province/510000/node/cd-01"

#: Fast retries: tests must not sit in a 30-second backoff when a call fails UNAVAILABLE.
FAST_RETRY = RetryConfig(
    initial_backoff=0.01, max_backoff=0.05, total_deadline=3.0, max_attempts=2, attempt_timeout=10.0
)


#: The ``hutong`` command, run as a real process.
HUTONG = [sys.executable, "-m", "gateway.cli"]


class HubProcess:
    """One ``hutong hub serve`` process group on a loopback port that stays the same across restarts.

    The first start binds port 0 and learns the port from ``--port-file``; later starts (after
    :meth:`kill`, a SIGKILL of the whole group: the hub and its preparation workers) ask for that
    port again, so clients reconnect to the same address. Each start logs to ``hub-<n>.log``.
    """

    def __init__(self, workdir: Path, args: Sequence[str]) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        """The log of the current (or last) run."""
        return self.workdir / f"hub-{max(self.starts - 1, 0)}.log"

    def start(self, *, timeout: float = 60) -> int:
        """Start (or restart) the hub and wait until it serves; returns its port."""
        assert self.process is None or self.process.poll() is not None, "the hub is running"
        port_file = self.workdir / "hub.port"
        port_file.unlink(missing_ok=True)
        log_path = self.workdir / f"hub-{self.starts}.log"
        self.starts += 1
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    *HUTONG,
                    "hub",
                    "serve",
                    *self.args,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--port-file",
                    str(port_file),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # the hub and its preparation workers die together
            )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            assert self.process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self.port

    def kill(self) -> None:
        """SIGKILL the hub's process group, as a power cut would: whatever it had in flight is cut off."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, *, timeout: float = 60) -> int | None:
        """SIGTERM (a graceful stop) if it runs; its exit code, or None if it was not running."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


#: ``hub_process(*serve_args, workdir=tmp_path)``: a :class:`HubProcess`, not started; stopped after the test.
HubProcessFactory = Callable[..., HubProcess]


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcessFactory]:
    """Make ``hutong hub serve`` processes (``--listen`` and ``--port-file`` are added); SIGTERM after the test."""
    made: list[HubProcess] = []

    def make(*args: str, workdir: Path | None = None) -> HubProcess:
        hub = HubProcess(workdir or tmp_path, args)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        if hub.process is not None and hub.process.poll() is None:
            try:
                hub.stop()
            except subprocess.TimeoutExpired:
                os.killpg(hub.process.pid, signal.SIGKILL)
                hub.process.wait(timeout=30)


class OutboxView:
    """A read-only look at a node's ``outbox.sqlite`` from outside the node process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def progress(self) -> tuple[int, int]:
        """(batches written, batches acknowledged) as the outbox says now; (0, 0) before it exists."""
        if not self.path.exists():
            return 0, 0
        con = sqlite3.connect(self.path, timeout=10)
        try:
            written, acked = con.execute("SELECT count(*), count(acked_us) FROM batches").fetchone()
            return int(written), int(acked)
        except sqlite3.OperationalError:  # the schema is still being made
            return 0, 0
        finally:
            con.close()

    def tally(self) -> tuple[int, int, int, int, dict[str, int]]:
        """(records created, outcomes counted, items sent, batches unacknowledged, {record id: version queued}).

        Each record's outcome is counted once across every run and resend, so after a complete
        sync of N new records this is (N, N, N, 0, ...).
        """
        con = sqlite3.connect(self.path)
        try:
            created, outcomes, items = con.execute(
                "SELECT sum(created), sum(created + updated + unchanged + stale + rejected), sum(items)"
                " FROM batches WHERE kind='sync'"
            ).fetchone()
            unacked = con.execute("SELECT count(*) FROM batches WHERE acked_us IS NULL").fetchone()[0]
            versions = dict(con.execute("SELECT record_id, version FROM records").fetchall())
        finally:
            con.close()
        return int(created or 0), int(outcomes or 0), int(items or 0), int(unacked), versions


@pytest.fixture
def outbox_view() -> Callable[[Path], OutboxView]:
    """``outbox_view(path)``: an :class:`OutboxView` of the node outbox at ``path``."""
    return OutboxView


def missing(reason: str, *, required_by: str) -> NoReturn:
    """Skip the test for a missing prerequisite, saying what is missing; fail instead where the
    environment variable ``required_by`` is 1 (``.ci/run`` sets them, so CI never skips these)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prerequisite() -> Callable[..., NoReturn]:
    """:func:`missing`, for test modules (which cannot import this conftest)."""
    return missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a loopback port nothing listens on now (bound, then released), for a server
    that must be told its port (or a node that must be down)."""
    return _free_port


#: The PostgreSQL server tests use; CI sets HUTONG_REQUIRE_POSTGRES=1 so that its absence fails them.
POSTGRES_URL = os.environ.get("HUTONG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def _postgres_schema() -> Iterator[tuple[Any, str, str, dict[str, list[tuple[Any, ...]]]] | str]:
    """A schema migrated once per test worker and the rows its migrations seed; or why there is none."""
    import psycopg

    from gateway.store.postgres import PostgresEngine

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        yield f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).strip()}); set HUTONG_TEST_POSTGRES_URL"
        return
    schema = f"t_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            separator = "&" if "?" in POSTGRES_URL else "?"
            url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
            engine = PostgresEngine(url)
            con = engine.connect()
            try:
                engine.migrate(con)
            finally:
                con.close()
            tables = [
                name
                for (name,) in admin.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                    " AND c.relname <> 'schema_migrations'",
                    (schema,),
                )
            ]
            seeds = {t: admin.execute(f"SELECT * FROM {schema}.{t}").fetchall() for t in tables}
            yield admin, schema, url, seeds
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url(_postgres_schema: tuple[Any, str, str, dict[str, list[tuple[Any, ...]]]] | str) -> str:
    """The URL of an empty, migrated hub database on the test PostgreSQL server (a schema of it).

    The schema is migrated once per worker and emptied before each test (TRUNCATE, then the rows
    the migrations seed). Skips with the reason when no server is reachable, unless
    HUTONG_REQUIRE_POSTGRES=1 (CI), where it fails instead.
    """
    if isinstance(_postgres_schema, str):
        missing(_postgres_schema, required_by="HUTONG_REQUIRE_POSTGRES")
    admin, schema, url, seeds = _postgres_schema
    with admin.transaction():
        admin.execute("SET LOCAL lock_timeout = '10s'")
        # DELETE, not TRUNCATE: the tables are small, and TRUNCATE makes new files for each of the
        # 70 partitions (ten times slower).
        for table in seeds:
            admin.execute(f"DELETE FROM {schema}.{table}")
        for (sequence,) in admin.execute(
            "SELECT s.relname FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace"
            " WHERE n.nspname = %s AND s.relkind = 'S'",
            (schema,),
        ).fetchall():
            admin.execute(f"ALTER SEQUENCE {schema}.{sequence} RESTART")
        for table, rows in seeds.items():
            for row in rows:
                admin.execute(f"INSERT INTO {schema}.{table} VALUES ({', '.join(['%s'] * len(row))})", row)
    return url


@pytest.fixture
def postgres_server_url(_postgres_schema: tuple[Any, str, str, dict[str, list[tuple[Any, ...]]]] | str) -> str:
    """The test PostgreSQL server's URL (its ``test`` database), for tests that make databases of their own."""
    if isinstance(_postgres_schema, str):
        missing(_postgres_schema, required_by="HUTONG_REQUIRE_POSTGRES")
    return POSTGRES_URL


@pytest.fixture
def empty_postgres_url(_postgres_schema: tuple[Any, str, str, dict[str, list[tuple[Any, ...]]]] | str) -> Iterator[str]:
    """The URL of a new, empty schema (nothing migrated), for tests of migrating; dropped afterwards."""
    if isinstance(_postgres_schema, str):
        missing(_postgres_schema, required_by="HUTONG_REQUIRE_POSTGRES")
    admin = _postgres_schema[0]
    schema = f"e_{secrets.token_hex(6)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """One throwaway CA, a hub certificate and a certificate per demo node (per test worker)."""
    return write_demo_pki(tmp_path_factory.mktemp("pki"), provinces=PROVINCES)


@pytest.fixture(scope="session")
def node_uris() -> dict[str, str]:
    """Node URI by province code."""
    return {"440000": GZ_URI, "410000": ZZ_URI, "510000": CD_URI}


class HubFactory(Protocol):
    """Starts a hub: ``await hub_factory(data_dir=None, **HubSettings fields)``."""

    async def __call__(self, data_dir: Path | None = None, **settings: Any) -> HubServer: ...


@pytest.fixture(params=["intl", "sm"])
def crypto_suite(request: pytest.FixtureRequest) -> str:
    """Every test with a hub runs once per crypto suite (person keys, sealed fields)."""
    return str(request.param)


@pytest.fixture
async def hub_factory(demo_pki: DemoPki, tmp_path: Path, crypto_suite: str) -> AsyncIterator[HubFactory]:
    """Start real hubs (127.0.0.1, port 0, mTLS by default); every one is stopped after the test."""
    started: list[HubServer] = []

    async def start(data_dir: Path | None = None, **settings: Any) -> HubServer:
        settings.setdefault("crypto_suite", crypto_suite)
        settings.setdefault("tls", None if settings.get("insecure") else demo_pki.hub_tls)
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)  # a restart may ask for the port its predecessor had
        # Batches are prepared inline unless a test asks for worker processes (spawning them
        # costs a second per hub); tests/integration/test_hub_workers.py covers the pool.
        settings.setdefault("prepare_workers", 0)
        # Each hub gets its own data directory unless the test means to share one (a restart).
        hub = HubServer(HubSettings(data_dir=data_dir or tmp_path / f"hub-{len(started)}", **settings))
        started.append(hub)
        await hub.start()
        return hub

    yield start
    for hub in reversed(started):
        await hub.stop(0)


@pytest.fixture
async def hub(hub_factory: HubFactory) -> HubServer:
    """A running hub with default settings; ``hub.port`` is the bound port."""
    return await hub_factory()


ClientFor = Callable[..., HubClient]


@pytest.fixture
async def client_for(demo_pki: DemoPki, hub: HubServer) -> AsyncIterator[ClientFor]:
    """``client_for(uri)``: a HubClient speaking mTLS to ``hub`` as that demo node; closed after the test.

    ``client_for(uri, port=..., tls=..., retry=...)`` reaches another hub or uses other TLS material.
    """
    clients: list[HubClient] = []

    def make(
        uri: str | None = None,
        *,
        port: int | None = None,
        tls: TlsMaterial | None = None,
        retry: RetryConfig = FAST_RETRY,
        insecure_identity: str | None = None,
    ) -> HubClient:
        if tls is None and insecure_identity is None:
            assert uri is not None, "name a node or give TLS material"
            tls = demo_pki.nodes[uri].tls
        target = f"localhost:{port or hub.port}" if insecure_identity is None else f"127.0.0.1:{port or hub.port}"
        client = HubClient(target, tls=tls, retry=retry, insecure_identity=insecure_identity)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def sync_all() -> Callable[..., Awaitable[list[Any]]]:
    """``await sync_all(client, [SyncRecordsRequest, ...])``: every acknowledgement of one stream."""

    async def run(client: HubClient, batches: Sequence[Any], *, window: int = 4) -> list[Any]:
        return [ack async for ack in client.sync(list(batches), window=window)]

    return run


def _date(value: dt.date | None) -> person_pb2.Date | None:
    return None if value is None else person_pb2.Date(year=value.year, month=value.month, day=value.day)


def build_enrollment(
    *,
    province: str = "440000",
    program: int = person_pb2.PROGRAM_DIBAO,
    status: int = person_pb2.ENROLLMENT_STATUS_ACTIVE,
    start: dt.date | None = dt.date(2020, 1, 1),
    end: dt.date | None = None,
    amount_fen: int = 80_000,
    granting_division: str | None = None,
) -> person_pb2.Enrollment:
    """A valid enrollment granted in ``province`` unless told otherwise."""
    return person_pb2.Enrollment(
        program=program,
        status=status,
        start_date=_date(start),
        end_date=_date(end),
        monthly_amount_fen=amount_fen,
        granting_division=COUNTY_OF[province] if granting_division is None else granting_division,
    )


def build_record(
    record_id: str = "r-1",
    *,
    province: str = "440000",
    hukou_province: str | None = None,
    version: int = 1,
    birth: dt.date = dt.date(1960, 5, 6),
    sequence: int = 123,
    id_number: str | None = None,
    name: str = "张三",
    residence_division: str | None = None,
    enrollments: Sequence[person_pb2.Enrollment] | None = None,
    updated_at_us: int = 0,
    **fields: Any,
) -> person_pb2.PersonRecord:
    """A valid PersonRecord written by ``province``: hukou (and ID number) in ``hukou_province``, one active dibao."""
    hukou_division = COUNTY_OF[hukou_province or province]
    record = person_pb2.PersonRecord(
        record_id=record_id,
        version=version,
        id_number=make_id_number(hukou_division, birth, sequence) if id_number is None else id_number,
        name=name,
        hukou_division=hukou_division,
        residence_division=COUNTY_OF[province] if residence_division is None else residence_division,
        enrollments=[build_enrollment(province=province)] if enrollments is None else list(enrollments),
        **fields,
    )
    if updated_at_us:
        record.updated_at.FromMicroseconds(updated_at_us)
    return record


@pytest.fixture
def make_record() -> Callable[..., person_pb2.PersonRecord]:
    """``make_record(record_id, province=..., hukou_province=..., ...)``: a valid wire PersonRecord."""
    return build_record


@pytest.fixture
def make_enrollment() -> Callable[..., person_pb2.Enrollment]:
    """``make_enrollment(province=..., program=..., status=...)``: a valid wire Enrollment."""
    return build_enrollment


@pytest.fixture
def id_number_of() -> Callable[..., str]:
    """``id_number_of(province, birth=..., sequence=...)``: the ID number ``make_record`` would build."""

    def make(province: str = "440000", *, birth: dt.date = dt.date(1960, 5, 6), sequence: int = 123) -> str:
        return make_id_number(COUNTY_OF[province], birth, sequence)

    return make


@pytest.fixture
def corrupt_check() -> Callable[[str], str]:
    """The same ID number with a wrong check character."""

    def corrupt(number: str) -> str:
        return number[:-1] + ("0" if number[-1] != "0" else "1")

    return corrupt


@pytest.fixture
def bearer(client_for: ClientFor) -> Callable[..., Awaitable[tuple[tuple[str, str], ...]]]:
    """``await bearer(uri, port=...)``: metadata with a fresh access token, for raw stub calls."""

    async def make(uri: str, *, port: int | None = None) -> tuple[tuple[str, str], ...]:
        return await client_for(uri, port=port).call_metadata()

    return make


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common umask 022, under which SQLite alone would create 0644 files."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)
