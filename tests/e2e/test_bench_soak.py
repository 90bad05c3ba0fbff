"""bench/bench_soak.py for a few seconds: its loops stop by themselves, nothing is lost, and it reports.

Behaviour only: the figures it prints depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_soak.py"


@pytest.mark.slow
def test_a_short_soak_fails_no_call_loses_nothing_verifies_the_log_and_prints_its_report(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable, str(BENCH), "--minutes", "0.15", "--sample-seconds", "2", "--provinces", "3",
            "--records-per-second", "600", "--json", str(report_path),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    for part in ("throughput", "latency, ms", "failed calls by status code: none", "hub RSS", "open fds"):
        assert part in out
    assert "verified offline against the CA" in out
    assert "all checks passed" in out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["failures"] == {}
    assert report["checks"]
    assert all(report["checks"].values())
    for kind in ("records", "queries", "events"):
        assert report["throughput"][kind]["total"] > 0, kind
    for rpc in ("SyncRecords (batch)", "CheckEnrollment", "BatchCheckEnrollment", "LookupPerson", "AcknowledgeEvents"):
        assert report["latency_ms"][rpc]["calls"] > 0, rpc
    assert len(report["provinces"]) == 3
    for province in report["provinces"].values():
        assert province["created"] > 0
        assert province["held_sync_state"] == province["held_store"] == province["created"]
        assert province["events_received"] == province["events_raised"] == province["events_acknowledged"]
        assert province["unexpected"] == {}
    assert report["audit"]["verified"]
    assert report["audit"]["entries"] >= report["audit"]["entries_at_least"] > 0
    assert len(report["samples"]) >= 3
    assert all(sample["rss_mib"] > 0 and sample["fds"] > 0 for sample in report["samples"])
