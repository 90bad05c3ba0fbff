"""``hutong node sync`` against a real hub over mTLS: outbox, batches, acknowledgements, deltas, retirements."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export
from gateway.errors import ConfigError, HutongError
from gateway.hub.server import DATABASE_FILE, HubServer
from gateway.node.config import NodeConfig, load_node_config
from gateway.node.outbox import Outbox
from gateway.node.sync import SyncProgress, sync_files
from pki import DemoPki

ROOT = Path(__file__).resolve().parents[2]
GD_PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
GD_SAMPLE = ROOT / "adapters" / "samples" / "guangdong-440000.csv"
GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"


@pytest.fixture
def crypto_suite() -> str:
    """The node does not care about the hub's suite; one is enough here."""
    return "intl"


MakeConfig = Callable[..., NodeConfig]


@pytest.fixture
def node_config(tmp_path: Path, demo_pki: DemoPki, hub: HubServer) -> MakeConfig:
    """``node_config(uri=GZ, port=hub.port, **sync_keys)``: a node.toml written and loaded."""

    def make(uri: str = GZ, port: int | None = None, profile: Path = GD_PROFILE, **sync: Any) -> NodeConfig:
        creds = demo_pki.nodes[uri]
        settings = {"batch_size": 50, "window": 3, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.2,
                    "retry_deadline_seconds": 20} | sync  # fmt: skip
        lines = [
            "[node]",
            f'data_dir = "{tmp_path / "node"}"',
            f'profile = "{profile}"',
            "[hub]",
            f'address = "localhost:{port or hub.port}"',
            f'ca = "{demo_pki.ca_cert_path}"',
            f'cert = "{creds.cert_path}"',
            f'key = "{creds.key_path}"',
            "[sync]",
            *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
        ]
        path = tmp_path / "node.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return load_node_config(path)

    return make


def hub_records(hub: HubServer) -> dict[str, tuple[int, int]]:
    """record id → (version, retired reason) of every record the hub holds for 440000."""
    con = sqlite3.connect(hub.settings.data_dir / DATABASE_FILE)
    try:
        rows = con.execute("SELECT record_id, version, retired_reason FROM records WHERE province='440000'")
        return {rid: (version, retired) for rid, version, retired in rows}
    finally:
        con.close()


async def test_a_sample_export_reaches_the_hub_with_every_row_accounted_for(
    node_config: MakeConfig, hub: HubServer
) -> None:
    config = node_config()
    progress = SyncProgress()
    report = await sync_files(config, [GD_SAMPLE], progress=progress)

    assert report.run.state == "complete"
    assert report.adapt is not None
    assert (report.adapt["rows_read"], report.adapt["produced"], report.adapt["rejected"]) == (25, 18, 7)
    assert (report.counts["queued"], report.counts["households"]) == (18, report.adapt["households"])
    assert report.counts["created"] == 18
    assert report.counts["unacked_batches"] == 0
    assert progress.records_acked == 18
    assert len(hub_records(hub)) == 18
    # The adapter's rejects are kept, one JSON line each, with their reasons.
    assert report.rejects_file is not None
    rejects = [json.loads(line) for line in report.rejects_file.read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == 7
    assert all(r["errors"] and r["errors"][0]["reason"] for r in rejects)
    outbox = Outbox.open(config.outbox_path)
    try:
        status = outbox.status()
        assert (status.records, status.held_at_hub, status.unacked_batches) == (18, 18, 0)
        assert status.last_ack_us is not None
    finally:
        outbox.close()


async def test_a_re_export_sends_only_what_changed_and_retires_what_is_gone(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    config = node_config(batch_size=40)
    first = tmp_path / "export-1.csv"
    write_guangdong_export(first, range(200))
    report = await sync_files(config, [first])
    assert (report.counts["created"], report.counts["queued"], report.counts["households"]) == (200, 200, 200)
    held = hub_records(hub)

    # Second export: persons 0-9 left; 10-19 got a new amount; 200-204 are new.
    second = tmp_path / "export-2.csv"
    write_guangdong_export(second, range(10, 205), amount_fen=lambda n: 99_000 if n < 20 else 88_000)
    report = await sync_files(config, [second])
    assert (report.counts["queued"], report.counts["created"], report.counts["updated"]) == (15, 5, 10)
    assert report.counts["retired"] == 10
    assert report.retire_candidates == 10
    after = hub_records(hub)
    assert len(after) == 205
    gone = {guangdong_person(n)[0] for n in range(10)}
    assert {rid for rid, (_, retired) in after.items() if retired} == gone
    changed = {guangdong_person(n)[0] for n in range(10, 20)}
    for rid in changed:
        assert after[rid][0] > held[rid][0]
    unchanged = {guangdong_person(n)[0] for n in range(20, 200)}
    assert all(after[rid] == held[rid] for rid in unchanged)

    # The same export again: nothing to send, nothing to retire.
    again = await sync_files(config, [second])
    assert again.counts["queued"] == 0
    assert again.counts["retired"] == 0

    # A person who was retired comes back: sent again, and live at the hub.
    third = tmp_path / "export-3.csv"
    write_guangdong_export(third, range(0, 205))
    back = await sync_files(config, [third])
    assert back.counts["updated"] == 20  # the 10 back, and 10-19 whose amount went back
    assert not any(retired for _, retired in hub_records(hub).values())


async def test_a_truncated_export_does_not_empty_the_province(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    config = node_config(max_retire_fraction=0.2)
    full = tmp_path / "full.csv"
    write_guangdong_export(full, range(100))
    await sync_files(config, [full])
    truncated = tmp_path / "truncated.csv"
    write_guangdong_export(truncated, range(60))

    report = await sync_files(config, [truncated])
    assert report.retire_candidates == 40
    assert report.retire_refused is not None
    assert "max_retire_fraction" in report.retire_refused
    assert not any(retired for _, retired in hub_records(hub).values())

    report = await sync_files(config, [truncated], allow_mass_retire=True)
    assert report.counts["retired"] == 40
    assert sum(1 for _, retired in hub_records(hub).values() if retired) == 40


async def test_incremental_mode_never_retires(node_config: MakeConfig, hub: HubServer, tmp_path: Path) -> None:
    config = node_config(mode="incremental")
    write_guangdong_export(tmp_path / "a.csv", range(30))
    write_guangdong_export(tmp_path / "b.csv", range(30, 40))
    await sync_files(config, [tmp_path / "a.csv"])
    report = await sync_files(config, [tmp_path / "b.csv"])
    assert report.counts["created"] == 10
    assert report.retire_candidates == 0
    assert len(hub_records(hub)) == 40


async def test_a_hub_that_goes_away_mid_sync_is_waited_for_and_nothing_is_counted_twice(
    node_config: MakeConfig, hub_factory: Any, tmp_path: Path
) -> None:
    first = await hub_factory(data_dir=tmp_path / "hub-data")
    config = node_config(port=first.port, batch_size=100, window=2, retry_deadline_seconds=60)
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(3000))
    progress = SyncProgress()
    task = asyncio.ensure_future(sync_files(config, [export], progress=progress))
    while progress.batches_acked < 3:  # noqa: ASYNC110 - a counter the sync task advances
        await asyncio.sleep(0.01)
    await first.stop(0)  # the hub dies with batches in flight
    await asyncio.sleep(0.2)
    second = await hub_factory(data_dir=tmp_path / "hub-data", port=first.port)
    report = await asyncio.wait_for(task, 120)

    assert progress.reconnects >= 1
    assert report.run.state == "complete"
    c = report.counts
    # Every batch's outcomes counted once: a replayed acknowledgement is not applied again.
    assert c["created"] + c["updated"] + c["unchanged"] + c["stale"] + c["rejected"] == c["queued"] == 3000
    assert c["rejected"] == 0
    assert len(hub_records(second)) == 3000


class _CuttableProxy:
    """A TCP relay to the hub that can drop every connection and refuse new ones for a while."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._writers: set[asyncio.StreamWriter] = set()
        self.refusing = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.refusing = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_the_retry_deadline_counts_from_the_last_acknowledgement(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    # The connection breaks after the stream has run longer than the retry deadline; the hub is
    # back well within it. The node must wait: the deadline counts from the last acknowledgement,
    # not from when the stream opened.
    proxy = _CuttableProxy(hub.port)
    await proxy.start()
    deadline = 2.0
    config = node_config(port=proxy.port, batch_size=10, window=1, retry_deadline_seconds=deadline)
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(20_000))
    progress = SyncProgress()
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(sync_files(config, [export], progress=progress))
    try:
        while progress.batches_acked < 3 or loop.time() - started < deadline * 1.5:  # noqa: ASYNC110 - counters
            await asyncio.sleep(0.01)
        assert not task.done()
        proxy.cut()
        await asyncio.sleep(0.2)
        proxy.refusing = False
        report = await asyncio.wait_for(task, 300)
    finally:
        await proxy.stop()
    assert progress.reconnects >= 1
    assert report.counts["created"] + report.counts["unchanged"] == report.counts["queued"] == 20_000
    assert len(hub_records(hub)) == 20_000


async def test_an_interrupted_run_resumes_with_the_same_batches(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    # The node's hub is unreachable: everything is read into the outbox, nothing is acknowledged.
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(500))
    offline = node_config(port=1, retry_deadline_seconds=0.5)
    with pytest.raises(HutongError) as failed:
        await sync_files(offline, [export])
    assert failed.value.code_name == "UNAVAILABLE"
    outbox = Outbox.open(offline.outbox_path)
    try:
        status = outbox.status()
        assert status.unacked_items == 1000  # 500 records, 500 households
        assert status.last_error
        batch_ids = [b[0] for b in outbox._con.execute("SELECT batch_id FROM batches ORDER BY seq")]
    finally:
        outbox.close()

    # Run again without naming files: the run resumes, sends the same batches, and completes.
    online = node_config()
    report = await sync_files(online, [])
    assert report.resumed
    assert report.run.state == "complete"
    assert report.counts["created"] == 500
    outbox = Outbox.open(online.outbox_path)
    try:
        assert [b[0] for b in outbox._con.execute("SELECT batch_id FROM batches ORDER BY seq")] == batch_ids
    finally:
        outbox.close()


async def test_refusals_are_not_retried(node_config: MakeConfig, hub: HubServer) -> None:
    # A 河南 node with 广东's profile: the node refuses before anything is read.
    with pytest.raises(ConfigError) as mismatch:
        await sync_files(node_config(uri=ZZ), [GD_SAMPLE])
    assert mismatch.value.reason == "PROFILE_PROVINCE_MISMATCH"


def test_node_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    base = '[node]\ndata_dir = "d"\nprofile = "p.toml"\n[hub]\naddress = "h:1"\nca = "c"\ncert = "c"\nkey = "k"\n'
    for extra, field in (
        ("[sync]\nwindow = 0\n", "sync.window"),
        ('[sync]\nmode = "sometimes"\n', "sync.mode"),
        ("[sync]\nbatch_size = 9000\n", "sync.batch_size"),
        ("[sync]\ncolour = 1\n", "sync.colour"),
        ('[serve]\nlisten = "nowhere"\n', "serve.listen"),
    ):
        path.write_text(base + extra, encoding="utf-8")
        with pytest.raises(ConfigError) as bad:
            load_node_config(path)
        assert bad.value.field == field
    path.write_text(base.replace('address = "h:1"\n', ""), encoding="utf-8")
    with pytest.raises(ConfigError) as missing:
        load_node_config(path)
    assert missing.value.field == "hub.address"
    path.write_text(base, encoding="utf-8")
    config = load_node_config(path)
    assert config.data_dir == tmp_path / "d"
    assert config.sync.mode == "snapshot"


async def test_the_drop_directory_takes_each_file_once_it_is_complete(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    from gateway.node.commands import watch_drop_dir

    drop = tmp_path / "drop"
    drop.mkdir()
    config = node_config(drop_dir=str(drop), poll_seconds=0.05)
    write_guangdong_export(drop / "export-1.csv", range(20))
    (drop / "not-an-export.csv").write_text("garbage\n", encoding="utf-8")
    assert await watch_drop_dir(config, max_runs=2) == 4  # one file failed
    assert (drop / "done" / "export-1.csv").exists()
    assert (drop / "failed" / "not-an-export.csv").exists()
    assert len(hub_records(hub)) == 20


async def test_a_large_export_is_read_in_a_process_of_its_own_with_the_same_result(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.node.sync as node_sync

    monkeypatch.setattr(node_sync, "PROCESS_THRESHOLD_BYTES", 0)  # every export counts as large here
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(1500))
    progress = SyncProgress()
    report = await sync_files(node_config(), [export, GD_SAMPLE], progress=progress)
    assert report.adapt is not None
    assert (report.adapt["rows_read"], report.adapt["rejected"]) == (1525, 7)
    assert progress.rows_read == 1525
    assert report.counts["created"] == 1518
    assert len(hub_records(hub)) == 1518


async def test_records_with_invalid_id_numbers_reach_the_hub_flagged_for_linkage(
    node_config: MakeConfig, hub: HubServer, tmp_path: Path
) -> None:
    profile = tmp_path / "guangdong-unverified.toml"
    profile.write_text(
        GD_PROFILE.read_text(encoding="utf-8").replace(
            'encoding = "gbk"', 'encoding = "gbk"\ninvalid_id_numbers = "send-unverified"', 1
        ),
        encoding="utf-8",
    )
    report = await sync_files(node_config(profile=profile), [GD_SAMPLE])
    assert report.adapt is not None
    flagged = report.adapt["produced"] - 18
    assert flagged > 0
    assert report.counts["created"] == 18 + flagged
    assert report.counts["rejected"] == 0
    assert len(hub_records(hub)) == 18 + flagged
    con = sqlite3.connect(hub.settings.data_dir / DATABASE_FILE)
    try:
        held = con.execute("SELECT count(*) FROM linkage_unverified WHERE province='440000'").fetchone()[0]
    finally:
        con.close()
    assert held == flagged
