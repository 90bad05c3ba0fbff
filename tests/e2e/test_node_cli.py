"""``hutong node sync`` and ``hutong node status`` as real processes against a real hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ServeHub

ROOT = Path(__file__).resolve().parents[2]
HUTONG = [sys.executable, "-m", "gateway.cli"]


def hutong(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "node"\nprofile = "{ROOT / "adapters" / "profiles" / "guangdong-440000.toml"}"\n'
        f'[hub]\naddress = "localhost:{port}"\nca = "certs/ca.pem"\n'
        'cert = "certs/nodes/440000-gd-gz-01.pem"\nkey = "certs/nodes/440000-gd-gz-01.key"\n',
        encoding="utf-8",
    )
    return config


def test_node_sync_reports_every_row_and_status_shows_the_outbox(serve_hub: ServeHub, tmp_path: Path) -> None:
    _, port = serve_hub()
    config = write_config(tmp_path, port)
    sample = ROOT / "adapters" / "samples" / "guangdong-440000.csv"
    result = hutong("node", "sync", "--config", str(config), str(sample), cwd=tmp_path)
    assert result.returncode == 4, result.stderr  # rows were rejected
    assert "rows read 25 = records 18 + rejected 7" in result.stderr
    rejects = tmp_path / "node" / "rejects" / "run-000001.rejects.jsonl"
    assert f"rows the adapter rejected: {rejects}" in result.stderr.replace("\n", "")
    assert len(rejects.read_text(encoding="utf-8").splitlines()) == 7

    status = hutong("node", "status", "--config", str(config), "--json", "--hub", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["records"], shown["held_at_hub"], shown["unacknowledged_batches"]) == (18, 18, 0)
    assert shown["last_run"]["state"] == "complete"
    assert shown["hub"]["records_held"] == 18
    assert shown["certificate_days_left"] > 0


def test_node_sync_exits_3_naming_the_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\ndata_dir = "node"\nprofile = "p.toml"\n[sync]\nwindow = "four"\n', encoding="utf-8")
    result = hutong("node", "sync", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 3
    assert "hub.address" in result.stderr or "sync.window" in result.stderr


def test_node_sync_exits_5_when_the_hub_stays_away_and_resumes_later(serve_hub: ServeHub, tmp_path: Path) -> None:
    _, port = serve_hub()
    config = write_config(tmp_path, 1)
    text = config.read_text(encoding="utf-8") + "[sync]\nretry_deadline_seconds = 0.5\nretry_max_seconds = 0.1\n"
    config.write_text(text, encoding="utf-8")
    sample = ROOT / "adapters" / "samples" / "guangdong-440000.csv"
    away = hutong("node", "sync", "--config", str(config), str(sample), cwd=tmp_path)
    assert away.returncode == 5, away.stderr
    assert "run `hutong node sync` again to resume" in away.stderr
    config.write_text(text.replace("localhost:1", f"localhost:{port}"), encoding="utf-8")
    resumed = hutong("node", "sync", "--config", str(config), cwd=tmp_path)
    assert resumed.returncode == 4, resumed.stderr
    assert "resumed" in resumed.stderr
    assert "rows read 25 = records 18 + rejected 7" in resumed.stderr
