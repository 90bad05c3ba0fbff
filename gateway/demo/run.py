"""``hutong demo``: the whole exchange on one machine, over real mTLS, in under a minute.

1. a throwaway ministry CA, a hub certificate and one certificate per province node;
2. a hub (``hutong hub serve``, SQLite) in a child process on a free loopback port, with an
   access policy and the CA's CRL; every node call carries a certificate-bound access token;
3. a synthetic low-income population for three provinces, a few percent of whom moved and
   are enrolled in both provinces, and a few records with the errors real exports have;
4. the three nodes sync concurrently, each with its own certificate;
5. one batch is resent (idempotency), and the same records are sent again (UNCHANGED);
6. cross-province questions: CheckEnrollment and LookupPerson about a person enrolled twice;
7. one node's certificate is revoked while it is connected: the hub refuses its next call;
8. every call was an entry of the hub's exchange log: a province node witnesses two signed
   checkpoints and checks that the second extends the first (consistency proof);
9. the hub stops gracefully; its store is read back for the summary, and its exchange log is
   exported and verified offline against the ministry CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.audit import verify_binding
from gateway.audit.archive import export_log, verify_export
from gateway.audit_commands import witness_checkpoint
from gateway.client import HubClient
from gateway.demo.population import Population, PopulationSpec, batches, generate_population
from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.model import Outcome, Program, Purpose
from gateway.errors import ConfigError, HutongError
from gateway.hub.audit import open_audit_source
from gateway.hub.server import DATABASE_FILE
from gateway.hub.tokens import CONSOLE_AUDIENCE, TokenKeys, TokenService
from gateway.store.base import HubStats
from gateway.store.sqlite import SqliteStore
from hutong.v1 import notification_pb2, query_pb2, records_pb2
from pki import DemoPki, write_demo_pki
from pki.operator import Registry, RevocationReason, RevokedEntry, format_serial, write_public_pem

__all__ = ["DEMO_NODES", "run_demo", "spawn_server"]

#: (province code, node name): Guangdong receives many workers from Henan and Sichuan.
DEMO_NODES: tuple[tuple[str, str], ...] = (("440000", "gd-gz-01"), ("410000", "ha-zz-01"), ("510000", "sc-cd-01"))
BATCH_SIZE = 1000


@dataclass
class _Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    records: int = 0
    first_batch: records_pb2.SyncRecordsRequest | None = None
    first_ack: records_pb2.SyncRecordsResponse | None = None


@dataclass
class _Result:
    tallies: dict[str, _Tally]
    elapsed: float
    first_ack: records_pb2.SyncRecordsResponse
    replay: records_pb2.SyncRecordsResponse
    again: records_pb2.SyncRecordsResponse
    mover: str | None
    check: query_pb2.CheckEnrollmentResponse | None
    lookup: query_pb2.LookupPersonResponse | None
    revocation: str
    witnessed: tuple[int, int]
    loop: str = ""


def _province(code: str) -> str:
    return f"{PROVINCE_CODES.get(code, code)}"


def spawn_server(
    command: list[str], port_file: Path, log_path: Path, *, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server process that writes its bound port to ``port_file``; wait for the port."""
    port_file.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ConfigError(f"{command[0]} did not start; see {log_path}", reason="SERVER_START_FAILED")
        time.sleep(0.05)
    return process, int(port_file.read_text().strip())


#: The demo hub's access policy: what each node may do (see deploy/policy.example.toml).
DEMO_POLICY = """\
[defaults]
scopes = ["records:write", "query:enrollment"]
rate_per_second = 500
burst = 1000

[scopes."query:enrollment"]
purposes = ["eligibility-review", "duplicate-check", "cross-region-application", "monitoring-follow-up"]
"""


def _publish_crl(pki: DemoPki, path: Path, revoked: list[int], number: int) -> None:
    """Sign a CRL with the demo CA and swap it in atomically, as `hutong pki crl` does."""
    now = dt.datetime.now(dt.UTC)
    entries = [RevokedEntry(serial, now, x509.ReasonFlags.key_compromise) for serial in revoked]
    crl = pki.ca.sign_crl(entries, crl_number=number, next_update=dt.timedelta(days=1))
    write_public_pem(path, crl.public_bytes(serialization.Encoding.PEM), field="crl", overwrite=True)


def _start_hub(
    pki: DemoPki, data_dir: Path, log_path: Path, console_port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    (data_dir / "policy.toml").write_text(DEMO_POLICY, encoding="utf-8")
    _publish_crl(pki, data_dir / "crl.pem", [], 1)
    command = [
        sys.executable, "-m", "gateway.cli", "--log-level", "warning",
        "hub", "serve",
        "--data-dir", str(data_dir / "hub"),
        "--listen", "127.0.0.1:0",
        "--cert", str(pki.hub_cert_path), "--key", str(pki.hub_key_path), "--ca", str(pki.ca_cert_path),
        "--port-file", str(data_dir / "hub.port"),
        "--policy", str(data_dir / "policy.toml"),
        "--crl", str(data_dir / "crl.pem"),
        "--ca-registry", str(pki.registry_path),
        "--checkpoint-seconds", "0.5",
    ]  # fmt: skip
    if console_port is not None:
        command += ["--console-listen", f"127.0.0.1:{console_port}"]
    return spawn_server(command, data_dir / "hub.port", log_path)


async def _sync_province(
    client: HubClient, province: str, population: Population, progress: Progress, task: TaskID, tally: _Tally
) -> None:
    records = population.by_province[province]
    requests = list(batches(records, size=BATCH_SIZE, prefix=f"demo-{province}"))
    async for ack in client.sync(requests, window=4):
        if tally.first_ack is None:
            tally.first_batch, tally.first_ack = requests[0], ack
        tally.records += len(ack.record_outcomes)
        for outcome in ack.record_outcomes:
            tally.outcomes[Outcome(outcome).name] += 1
        for rejection in ack.record_rejections:
            tally.reasons[rejection.reason] += 1
        progress.advance(task, len(ack.record_outcomes))


async def _exchange(pki: DemoPki, root: Path, port: int, population: Population, console: Console) -> _Result:
    target = f"localhost:{port}"
    clients = {code: HubClient(target, tls=pki.nodes[_uri(code, name)].tls) for code, name in DEMO_NODES}
    tallies = {code: _Tally() for code, _ in DEMO_NODES}
    try:
        with Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console,
        ) as progress:  # fmt: skip
            tasks = {
                code: progress.add_task(f"{_province(code)} {code}", total=len(population.by_province[code]))
                for code, _ in DEMO_NODES
            }
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    _sync_province(clients[code], code, population, progress, tasks[code], tallies[code])
                    for code, _ in DEMO_NODES
                )
            )
            elapsed = time.perf_counter() - started

        # Idempotency: the very same batch again (same batch_id) returns the original acknowledgement...
        first_code = DEMO_NODES[0][0]
        tally = tallies[first_code]
        assert tally.first_batch is not None
        assert tally.first_ack is not None
        replay, *_ = [ack async for ack in clients[first_code].sync([tally.first_batch])]
        # ...and the same records under a new batch_id are recognised as already held.
        resend = records_pb2.SyncRecordsRequest(batch_id="demo-resend-1", records=tally.first_batch.records)
        again, *_ = [ack async for ack in clients[first_code].sync([resend])]

        # Henan's node remembers the log's newest signed checkpoint (trust on first use)...
        witness = clients[DEMO_NODES[1][0]]
        state = root / "witness" / "checkpoint.note"
        _, first_seen = await witness_checkpoint(witness, pki.ca_cert_path.read_bytes(), state)

        mover = population.movers[0] if population.movers else None
        check = lookup = None
        if mover is not None:
            asker = clients[DEMO_NODES[1][0]]
            check = await asker.check_enrollment(mover, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
            lookup = await asker.lookup_person(mover, Purpose.CROSS_REGION_APPLICATION)
        loop = await _close_one_loop(clients, DEMO_NODES[0][0])
        revocation = await _revoke_live(pki, root, clients[DEMO_NODES[2][0]], DEMO_NODES[2])
        # ...and, once the hub has signed a newer one, checks that it extends the first.
        latest = first_seen
        for _ in range(50):
            _, latest = await witness_checkpoint(witness, pki.ca_cert_path.read_bytes(), state)
            if latest.size > first_seen.size:
                break
            await asyncio.sleep(0.2)
    finally:
        for client in clients.values():
            await client.close()
    return _Result(
        tallies, elapsed, tally.first_ack, replay, again, mover, check, lookup, revocation,
        (first_seen.size, latest.size), loop,
    )  # fmt: skip


async def _first_event(
    client: HubClient, wanted: Callable[[notification_pb2.Event], bool], limit: int
) -> notification_pb2.Event | None:
    """The first event of the province's stream that ``wanted`` accepts (reading at most ``limit``)."""
    read = 0
    events = client.subscribe()
    try:
        async with asyncio.timeout(20):
            async for event in events:
                read += 1
                if wanted(event):
                    return event
                if read >= limit:
                    break
    except TimeoutError:
        pass
    finally:
        await events.aclose()
    return None


async def _close_one_loop(clients: dict[str, HubClient], code: str) -> str:
    """Both provinces of one duplicate finding take its notice and report back; the finding closes."""
    duplicate = notification_pb2.EVENT_KIND_DUPLICATE_ENROLLMENT
    event = await _first_event(clients[code], lambda e: e.kind == duplicate, 100_000)
    if event is None:
        return "no duplicate notice arrived"
    other_code = event.other_province_codes[0]
    other = await _first_event(clients[other_code], lambda e: e.finding_id == event.finding_id, 100_000)
    if other is None:
        return f"{_province(other_code)}'s notice did not arrive"
    await clients[code].acknowledge_events([event.event_id])
    await clients[other_code].acknowledge_events([other.event_id])
    one = await clients[code].report_outcome(
        "demo-report-1", event.event_id, notification_pb2.EVENT_OUTCOME_ASSISTED, "ended the dibao granted here"
    )
    two = await clients[other_code].report_outcome(
        "demo-report-2", other.event_id, notification_pb2.EVENT_OUTCOME_ALREADY_HANDLED, "moved; case closed here"
    )
    return (
        f"finding {event.finding_id[:12]}… pushed to {_province(code)} and {_province(other_code)}; "
        f"{_province(code)} reported assisted (closed={one.closed}), {_province(other_code)} already handled "
        f"(closed={two.closed})"
    )


async def _revoke_live(pki: DemoPki, root: Path, client: HubClient, node: tuple[str, str]) -> str:
    """Revoke one node's certificate while it is connected; report when the hub cut it off."""
    creds = pki.nodes[_uri(*node)]
    serial = x509.load_pem_x509_certificate(creds.tls.cert_chain_pem).serial_number
    if pki.registry_path is not None:  # as `hutong pki revoke` does, before the CRL
        Registry.open(pki.registry_path).revoke(
            format_serial(serial), reason=RevocationReason.KEY_COMPROMISE, at=dt.datetime.now(dt.UTC)
        )
    _publish_crl(pki, root / "crl.pem", [serial], 2)
    published = time.perf_counter()
    while time.perf_counter() - published < 15:
        try:
            await client.get_sync_state()
        except HutongError as exc:
            return f"{exc.reason} after {time.perf_counter() - published:.1f}s"
        await asyncio.sleep(0.2)
    return "still served 15s after the CRL was published"


def _uri(code: str, name: str) -> str:
    return f"hutong://province/{code}/node/{name}"


def run_demo(
    *,
    data_dir: Path | None = None,
    persons_per_province: int = 20_000,
    seed: int = 20261130,
    console_port: int | None = None,
) -> int:
    """Run the demo; returns the process exit code."""
    console = Console()
    own_dir = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="hutong-demo-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    if (root / "pki").exists():
        raise ConfigError(f"{root} already holds a demo; give an empty --data-dir", reason="DEMO_DIR_NOT_EMPTY")
    console.rule("[bold]Hutong 互通 demo[/]: ministry hub + three province nodes, mTLS, SQLite")
    pki = write_demo_pki(root / "pki", provinces=DEMO_NODES)
    console.print(f"CA and certificates in {root / 'pki'}")
    for code, name in DEMO_NODES:
        console.print(f"  node [cyan]{_uri(code, name)}[/] ({_province(code)})")

    t0 = time.perf_counter()
    population = generate_population(
        PopulationSpec(provinces=tuple(c for c, _ in DEMO_NODES), persons_per_province=persons_per_province, seed=seed)
    )
    total = sum(len(v) for v in population.by_province.values())
    console.print(
        f"generated {total:,} records ({persons_per_province:,} persons per province, {len(population.movers):,} "
        f"enrolled in two provinces, {len(population.bad_record_ids):,} with export errors) "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    log_path = root / "hub.log"
    hub, port = _start_hub(pki, root, log_path, console_port)
    console.print(f"hub listening on 127.0.0.1:{port} (mTLS, client certificates required); log: {log_path}")
    try:
        result = asyncio.run(_exchange(pki, root, port, population, console))
        if console_port is not None:
            _browse(console, root / "hub", console_port)
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub_exit = hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub_exit = hub.wait()
    stats = asyncio.run(_read_stats(root / "hub" / DATABASE_FILE))
    _summary(console, result, stats, total, hub_exit)
    _audit_summary(console, pki, root, result, kept=not own_dir or os.environ.get("HUTONG_DEMO_KEEP") == "1")
    if own_dir and os.environ.get("HUTONG_DEMO_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)
    else:
        console.print(f"data kept in {root}")
    return 0 if hub_exit == 0 else 1


def _browse(console: Console, hub_dir: Path, console_port: int) -> None:
    """Keep the hub up for the web console until Ctrl-C, with a login token for the demo operator."""
    tokens = TokenService(TokenKeys.load_or_create(hub_dir))
    token, _ = tokens.issue(
        "demo-operator",
        ["admin", "audit:read", "query:detail"],
        None,
        audience=CONSOLE_AUDIENCE,
        lifetime_seconds=8 * 3600,
    )
    console.rule("[bold]web console")
    console.print(
        f"open [bold]https://localhost:{console_port}/[/] (the demo CA is not in your browser's trust store: accept "
        "the warning), and log in with this console token (8 hours, roles admin, audit:read, query:detail):"
    )
    print(token, flush=True)
    console.print("Ctrl-C stops the hub and prints the summary.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")


async def _read_stats(path: Path) -> HubStats:
    store = SqliteStore(path)
    await store.open()
    try:
        return await store.stats()
    finally:
        await store.close()


def _summary(console: Console, r: _Result, stats: HubStats, total: int, hub_exit: int) -> None:
    tallies, elapsed = r.tallies, r.elapsed
    console.rule("[bold]summary")
    synced = sum(t.records for t in tallies.values())
    console.print(
        f"records synced: {synced:,} of {total:,} in {elapsed:.1f}s = [bold]{synced / elapsed:,.0f} records/s[/]"
    )
    table = Table(title="outcomes by province")
    table.add_column("province", no_wrap=True)
    for outcome in ("CREATED", "UPDATED", "UNCHANGED", "STALE", "REJECTED"):
        table.add_column(outcome.lower(), justify="right")
    table.add_column("held at hub", justify="right")
    for code, t in tallies.items():
        table.add_row(
            f"{_province(code)} {code}",
            *(f"{t.outcomes[o]:,}" for o in ("CREATED", "UPDATED", "UNCHANGED", "STALE", "REJECTED")),
            f"{stats.records_by_province.get(code, 0):,}",
        )
    console.print(table)
    reasons = Counter[str]()
    for t in tallies.values():
        reasons.update(t.reasons)
    if reasons:
        console.print("rejected, by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))

    replay, again = r.replay, r.again
    same = list(replay.record_outcomes) == list(r.first_ack.record_outcomes)
    console.print(
        f"resent batch {replay.batch_id}: replayed={replay.replayed}, original acknowledgement returned: {same}"
    )
    console.print(
        f"same records, new batch id: {again.record_counts.unchanged} unchanged, {again.record_counts.created} created,"
        f" {again.record_counts.rejected} rejected (the same bad rows again)"
    )
    open_findings = sum(stats.open_findings_by_program.values())
    console.print(
        f"[bold]duplicate enrollments found: {open_findings + stats.resolved_findings:,}[/] "
        + "(open: "
        + ", ".join(f"{p.name.lower()} {n}" for p, n in sorted(stats.open_findings_by_program.items()))
        + f"; closed by the provinces' reports: {stats.resolved_findings})"
    )
    mover, check, lookup = r.mover, r.check, r.lookup
    if mover is not None and check is not None and lookup is not None:
        masked = f"{mover[:6]}********{mover[-4:]}"
        answer = check.results[0]
        console.print(
            f"CheckEnrollment({masked}, purpose=duplicate_check, dibao) -> enrolled={answer.enrolled}, provinces="
            + ", ".join(f"{_province(p)} {p}" for p in answer.province_codes)
        )
        console.print(
            f"LookupPerson({masked}, purpose=cross_region_application) -> "
            f"{len(lookup.enrollments)} enrollments, disclosed fields: "
            + ", ".join(lookup.disclosed_fields)
            + f"; findings: {len(lookup.findings)}"
        )
    console.print(
        "every call carried a token bound to its node's certificate; the policy granted each node"
        " records:write and query:enrollment"
    )
    node = DEMO_NODES[2]
    console.print(
        f"revoked {_province(node[0])}'s node certificate live (CRL #2): its next call was refused, {r.revocation}"
    )
    if r.loop:
        console.print(f"closed loop (因需推送 → 结果反馈): {r.loop}")
    console.print(f"hub stopped gracefully (exit code {hub_exit})")


def _audit_summary(console: Console, pki: DemoPki, root: Path, r: _Result, *, kept: bool) -> None:
    """Export the hub's exchange log and verify it offline, trusting only the ministry CA."""
    source = open_audit_source(root / "hub")
    try:
        export_log(source, root / "audit-export")
    finally:
        source.close()
    started = time.perf_counter()
    binding = verify_binding((root / "audit-export" / "key-binding.json").read_bytes(), pki.ca_cert_path.read_bytes())
    report = verify_export(root / "audit-export", binding.verifier)
    console.print(
        f"exchange log: {report.size:,} entries (one per call and per batch), {report.checkpoints} signed checkpoints;"
        f" Henan's node saw it grow {r.witnessed[0]:,} → {r.witnessed[1]:,} entries, consistently"
    )
    console.print(
        f"exported the log and [bold]verified it offline[/] against the ministry CA in"
        f" {time.perf_counter() - started:.2f}s: every signature, every root"
    )
    if kept:
        console.print(f"  check it yourself: hutong audit verify {root / 'audit-export'} --ca {pki.ca_cert_path}")
