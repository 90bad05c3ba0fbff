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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export

HUTONG = [sys.executable, "-m", "gateway.cli"]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
RECORDS = int(os.environ.get("HUTONG_CRASH_RECORDS", "20000"))
NODE = "440000/gd-gz-01"
# A full pass takes about 150 µs per record on 2 cores; each test does about three.
pytestmark = pytest.mark.timeout(120 + RECORDS // 500)


def held_records(tmp: Path) -> dict[str, int]:
    """{record id: version} of 广东's records in the hub's SQLite database."""
    con = sqlite3.connect(tmp / "hub" / "hub.sqlite3")
    try:
        return dict(con.execute("SELECT record_id, version FROM records WHERE province='440000'").fetchall())
    finally:
        con.close()


@pytest.fixture
def world(tmp_path: Path, hub_process: Callable[..., Any]) -> tuple[Any, Path, Path]:
    """A hub process (tests/conftest.py: HubProcess), a node.toml for 440000/gd-gz-01, an export of RECORDS persons."""
    certs = tmp_path / "certs"
    made = subprocess.run([*HUTONG, "pki", "quickstart", str(certs), "--node", NODE], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    hub = hub_process(
        "--data-dir", str(tmp_path / "hub"), "--cert", str(certs / "hub.pem"), "--key", str(certs / "hub.key"),
        "--ca", str(certs / "ca.pem"),
    )  # fmt: skip
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
    return hub, config, export


def start_sync(tmp: Path, config: Path, export: Path) -> subprocess.Popen[bytes]:
    args = [*HUTONG, "node", "sync", "--config", str(config), str(export)]
    with (tmp / "node.log").open("ab") as log:
        return subprocess.Popen(args, cwd=tmp, stdout=log, stderr=log)


def wait_for(outbox: Any, node: subprocess.Popen[bytes], *, written: int = 0, acked: int = 0) -> bool:
    """Until the outbox holds ``written`` batches and ``acked`` acknowledged; False if the node finished first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        w, a = outbox.progress()
        if w >= written and a >= acked:
            return True
        if node.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the node made no progress")


def finish(tmp: Path, config: Path, export: Path) -> None:
    node = start_sync(tmp, config, export)
    assert node.wait(timeout=600) == 0, (tmp / "node.log").read_text()[-3000:]


def check_exactly_once(tmp: Path, outbox: Any) -> None:
    held = held_records(tmp)
    assert len(held) == RECORDS
    assert set(held) == {guangdong_person(n)[0] for n in range(RECORDS)}
    # Each record's outcome was counted exactly once, across every run and resend.
    created, outcomes, items, unacked, node_versions = outbox.tally()
    assert (created, outcomes, items, unacked) == (RECORDS, RECORDS, RECORDS, 0)
    assert node_versions == held  # the hub holds the very version the node queued


def test_the_node_killed_at_any_moment_resumes_and_the_hub_holds_each_record_once(
    world: tuple[Any, Path, Path], tmp_path: Path, outbox_view: Callable[[Path], Any]
) -> None:
    _, config, export = world
    outbox = outbox_view(tmp_path / "node" / "outbox.sqlite")
    rng = random.Random(RECORDS)
    batches = RECORDS // 500
    # While reading (little written), while sending (some acknowledged), and near the end.
    kill_points = [(1, 0), (0, rng.randint(1, batches // 2)), (0, rng.randint(batches // 2, batches - 1))]
    kills = 0
    for written, acked in kill_points:
        node = start_sync(tmp_path, config, export)
        if wait_for(outbox, node, written=written, acked=acked):
            node.send_signal(signal.SIGKILL)
            node.wait(timeout=30)
            kills += 1
    assert kills >= 2
    finish(tmp_path, config, export)
    check_exactly_once(tmp_path, outbox)
    again = subprocess.run(
        [*HUTONG, "node", "sync", "--config", str(config), str(export)], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert len(held_records(tmp_path)) == RECORDS


def test_the_hub_killed_mid_sync_is_waited_for_and_the_hub_holds_each_record_once(
    world: tuple[Any, Path, Path], tmp_path: Path, outbox_view: Callable[[Path], Any]
) -> None:
    hub, config, export = world
    outbox = outbox_view(tmp_path / "node" / "outbox.sqlite")
    rng = random.Random(RECORDS + 1)
    batches = RECORDS // 500
    node = start_sync(tmp_path, config, export)
    for acked in sorted(rng.sample(range(1, batches - 1), 2)):
        if not wait_for(outbox, node, acked=acked):
            break
        hub.kill()  # batches in flight, some applied and not yet acknowledged
        time.sleep(0.3)
        hub.start()
    assert hub.starts >= 2
    assert node.wait(timeout=600) == 0, (tmp_path / "node.log").read_text()[-3000:]
    check_exactly_once(tmp_path, outbox)
