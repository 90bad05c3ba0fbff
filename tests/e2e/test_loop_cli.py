"""``hutong hub rules-check``, ``hutong hub loop``, ``hutong node report`` and ``hutong node inbox`` as processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from .conftest import ServeHub

ROOT = Path(__file__).resolve().parents[2]
HUTONG = [sys.executable, "-m", "gateway.cli"]


def hutong(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_rules_check_prints_the_digest_or_names_the_bad_key(tmp_path: Path) -> None:
    good = hutong("hub", "rules-check", str(ROOT / "deploy" / "monitoring.example.toml"), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "3 rules; digest sha256:" in good.stdout
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rules]]\nid = "x"\ndescription = "d"\nenrolled = ["dibao", "lottery"]\n', encoding="utf-8")
    refused = hutong("hub", "rules-check", str(bad), cwd=tmp_path)
    assert refused.returncode == 3
    assert "rules[0].enrolled[1]" in refused.stderr


def test_a_node_reports_back_and_the_loop_shows_it(serve_hub: ServeHub, hub_args: list[str], tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[nodes."hutong://province/440000/node/gd-gz-01"]\n'
        'scopes = ["records:write", "query:enrollment", "signals:write"]\n',
        encoding="utf-8",
    )
    rules = ROOT / "deploy" / "monitoring.example.toml"
    _, port = serve_hub(*hub_args, "--monitoring-rules", str(rules), "--policy", str(policy))
    config = tmp_path / "node.toml"
    (tmp_path / "events").mkdir()
    config.write_text(
        f'[node]\ndata_dir = "node"\nprofile = "{ROOT / "adapters" / "profiles" / "guangdong-440000.toml"}"\n'
        f'[hub]\naddress = "localhost:{port}"\nca = "certs/ca.pem"\n'
        'cert = "certs/nodes/440000-gd-gz-01.pem"\nkey = "certs/nodes/440000-gd-gz-01.key"\n'
        '[inbox]\ndirectory = "events"\n',
        encoding="utf-8",
    )
    sample = ROOT / "adapters" / "samples" / "guangdong-440000.csv"
    synced = hutong("node", "sync", "--config", str(config), str(sample), cwd=tmp_path)
    assert synced.returncode == 4, synced.stderr  # the sample's bad rows
    # A department (here the same certificate, granted signals:write) reports a large medical expense for
    # the sample's first person, and one with a mistyped ID number: the hub pushes the first to 广东.
    signals = tmp_path / "signals.jsonl"
    signals.write_text(
        '{"signalId": "yb-2026-0001", "kind": "SIGNAL_KIND_LARGE_MEDICAL_EXPENSE", "idNumber": "440103196709156699",'
        ' "name": "何伟", "amountFen": "12000000"}\n'
        '{"signalId": "yb-2026-0002", "kind": "SIGNAL_KIND_DEATH", "idNumber": "440103196709156690", "name": "何伟"}\n',
        encoding="utf-8",
    )
    tls_args = ["--cert", "certs/nodes/440000-gd-gz-01.pem", "--key", "certs/nodes/440000-gd-gz-01.key"]
    for _ in range(2):  # the second run is answered with the first's results
        sent = hutong(
            "signals", "submit", str(signals), "--hub", f"localhost:{port}", *tls_args, "--ca", "certs/ca.pem",
            cwd=tmp_path,
        )  # fmt: skip
        assert sent.returncode == 4, sent.stderr
        assert "1 pushed, 1 refused" in sent.stdout
        assert "ID_NUMBER_BAD_CHECK_CHARACTER (id_number)" in sent.stdout
    inbox = hutong("node", "inbox", "--config", str(config), "--once", cwd=tmp_path)
    assert inbox.returncode == 0, inbox.stderr
    events = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((tmp_path / "events").glob("*.json"))]
    loop = hutong("hub", "loop", *hub_args, "--json", cwd=tmp_path)
    assert loop.returncode == 0, loop.stderr
    before = {row["province"]: row for row in json.loads(loop.stdout)}
    assert [e["kind"] for e in events] == ["EVENT_KIND_RISK_SIGNAL"]
    assert events[0]["signal"]["idNumber"] == "440103196709156699"
    assert before["440000"]["acknowledged"] == len(events)
    first = events[0]["eventId"]
    reported = hutong(
        "node", "report", first, "--outcome", "not-eligible", "--reason", "入户核查收入已超标", "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert reported.returncode == 0, reported.stderr
    assert first in reported.stdout
    again = hutong(
        "node", "report", first, "--outcome", "not-eligible", "--reason", "入户核查收入已超标", "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert "already reported" in again.stdout
    after = {
        row["province"]: row for row in json.loads(hutong("hub", "loop", *hub_args, "--json", cwd=tmp_path).stdout)
    }
    assert (after["440000"]["pushed"], after["440000"]["reported"], after["440000"]["open"]) == (1, 1, 0)
    assert after["440000"]["outcomes"] == {"not_eligible": 1}


def test_loop_refuses_a_directory_without_a_hub_database_and_a_database_of_an_older_release(tmp_path: Path) -> None:
    missing = hutong("hub", "loop", "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 3
    assert "FILE_MISSING" in missing.stderr
    assert not (tmp_path / "nothing").exists()  # not created by looking
    (tmp_path / "old").mkdir()
    con = sqlite3.connect(tmp_path / "old" / "hub.sqlite3")
    con.execute("PRAGMA user_version=2")
    con.close()
    old = hutong("hub", "loop", "--data-dir", str(tmp_path / "old"), cwd=tmp_path)
    assert old.returncode == 3
    assert "run `hutong hub migrate` first" in old.stderr
