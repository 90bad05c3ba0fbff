"""``hutong node sync`` and ``hutong hub serve`` as real processes, killed with SIGKILL mid-sync.

After every kill the command runs again; at the end the hub holds exactly the export's records —
none lost, none twice — and the node counted each record's outcome once. The size is
``HUTONG_CRASH_RECORDS`` (default 20,000; ``bench/bench_node.py --crash`` runs the same check at
1,000,000).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export

HUTONG = [sys.executable, "-m", "gateway.cli"]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
RECORDS = int(os.environ.get("HUTONG_CRASH_RECORDS", "20000"))
NODE = "440000/gd-gz-01"
# A full pass takes about 150 µs per record on 2 cores; each test does about three.
pytestmark = pytest.mark.timeout(120 + RECORDS // 500)


class Hub:
    """One ``hutong hub serve`` process group on a fixed loopback port, restartable."""

    def __init__(self, tmp: Path, certs: Path) -> None:
        self.tmp = tmp
        self.certs = certs
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        port_file = self.tmp / "hub.port"
        port_file.unlink(missing_ok=True)
        log_path = self.tmp / f"hub-{self.starts}.log"
        self.starts += 1
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    *HUTONG, "hub", "serve", "--data-dir", str(self.tmp / "hub"), "--listen", f"127.0.0.1:{self.port}",
                    "--cert", str(self.certs / "hub.pem"), "--key", str(self.certs / "hub.key"),
                    "--ca", str(self.certs / "ca.pem"), "--port-file", str(port_file),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # the hub and its preparation workers die together
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def records(self) -> dict[str, int]:
        con = sqlite3.connect(self.tmp / "hub" / "hub.sqlite3")
        try:
            return dict(con.execute("SELECT record_id, version FROM records WHERE province='440000'").fetchall())
        finally:
            con.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Hub, Path, Path]]:
    """A hub process, a node.toml for 440000/gd-gz-01, and an export of RECORDS persons."""
    certs = tmp_path / "certs"
    made = subprocess.run([*HUTONG, "pki", "quickstart", str(certs), "--node", NODE], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    hub = Hub(tmp_path, certs)
    hub.start()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "node"\nprofile = "{PROFILE}"\n'
        f'[hub]\naddress = "localhost:{hub.port}"\nca = "certs/ca.pem"\n'
        'cert = "certs/nodes/440000-gd-gz-01.pem"\nkey = "certs/nodes/440000-gd-gz-01.key"\n'
        "[sync]\nbatch_size = 500\nwindow = 4\nretry_initial_seconds = 0.1\nretry_max_seconds = 0.5\n"
        "retry_deadline_seconds = 120\n",
        encoding="utf-8",
    )
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(RECORDS))
    yield hub, config, export
    hub.stop()


def start_sync(tmp: Path, config: Path, export: Path) -> subprocess.Popen[bytes]:
    args = [*HUTONG, "node", "sync", "--config", str(config), str(export)]
    with (tmp / "node.log").open("ab") as log:
        return subprocess.Popen(args, cwd=tmp, stdout=log, stderr=log)


def outbox_progress(tmp: Path) -> tuple[int, int]:
    """(batches written, batches acknowledged) as the outbox says now; (0, 0) before it exists."""
    path = tmp / "node" / "outbox.sqlite"
    if not path.exists():
        return 0, 0
    con = sqlite3.connect(path, timeout=10)
    try:
        written, acked = con.execute("SELECT count(*), count(acked_us) FROM batches").fetchone()
        return int(written), int(acked)
    except sqlite3.OperationalError:  # the schema is still being made
        return 0, 0
    finally:
        con.close()


def wait_for(tmp: Path, node: subprocess.Popen[bytes], *, written: int = 0, acked: int = 0) -> bool:
    """Until the outbox holds ``written`` batches and ``acked`` acknowledged; False if the node finished first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        w, a = outbox_progress(tmp)
        if w >= written and a >= acked:
            return True
        if node.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the node made no progress")


def finish(tmp: Path, config: Path, export: Path) -> None:
    node = start_sync(tmp, config, export)
    assert node.wait(timeout=600) == 0, (tmp / "node.log").read_text()[-3000:]


def check_exactly_once(tmp: Path, hub: Hub) -> None:
    held = hub.records()
    assert len(held) == RECORDS
    assert set(held) == {guangdong_person(n)[0] for n in range(RECORDS)}
    con = sqlite3.connect(tmp / "node" / "outbox.sqlite")
    try:
        # Each record's outcome was counted exactly once, across every run and resend.
        created, outcomes, items = con.execute(
            "SELECT sum(created), sum(created + updated + unchanged + stale + rejected), sum(items)"
            " FROM batches WHERE kind='sync'"
        ).fetchone()
        node_versions = dict(con.execute("SELECT record_id, version FROM records").fetchall())
        unacked = con.execute("SELECT count(*) FROM batches WHERE acked_us IS NULL").fetchone()[0]
    finally:
        con.close()
    assert (created, outcomes, items, unacked) == (RECORDS, RECORDS, RECORDS, 0)
    assert node_versions == held  # the hub holds the very version the node queued


def test_the_node_killed_at_any_moment_resumes_and_the_hub_holds_each_record_once(
    world: tuple[Hub, Path, Path], tmp_path: Path
) -> None:
    hub, config, export = world
    rng = random.Random(RECORDS)
    batches = RECORDS // 500
    # While reading (little written), while sending (some acknowledged), and near the end.
    kill_points = [(1, 0), (0, rng.randint(1, batches // 2)), (0, rng.randint(batches // 2, batches - 1))]
    kills = 0
    for written, acked in kill_points:
        node = start_sync(tmp_path, config, export)
        if wait_for(tmp_path, node, written=written, acked=acked):
            node.send_signal(signal.SIGKILL)
            node.wait(timeout=30)
            kills += 1
    assert kills >= 2
    finish(tmp_path, config, export)
    check_exactly_once(tmp_path, hub)
    again = subprocess.run(
        [*HUTONG, "node", "sync", "--config", str(config), str(export)], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert len(hub.records()) == RECORDS


def test_the_hub_killed_mid_sync_is_waited_for_and_the_hub_holds_each_record_once(
    world: tuple[Hub, Path, Path], tmp_path: Path
) -> None:
    hub, config, export = world
    rng = random.Random(RECORDS + 1)
    batches = RECORDS // 500
    node = start_sync(tmp_path, config, export)
    for acked in sorted(rng.sample(range(1, batches - 1), 2)):
        if not wait_for(tmp_path, node, acked=acked):
            break
        hub.kill()  # batches in flight, some applied and not yet acknowledged
        time.sleep(0.3)
        hub.start()
    assert hub.starts >= 2
    assert node.wait(timeout=600) == 0, (tmp_path / "node.log").read_text()[-3000:]
    check_exactly_once(tmp_path, hub)
