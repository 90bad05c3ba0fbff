"""``hutong hub serve --config``, ``migrate``, ``backup`` and ``restore`` as an operator runs them: real processes.

The backup test backs up a hub that is serving and syncing (an in-process hub from tests/conftest.py;
the backup runs as its own process, as it would from a timer), restores it into a new data
directory, starts a hub on it, and checks the records, the idempotency records and the exchange
log, which must verify and extend the checkpoint the backup holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.client import HubClient
from gateway.domain.model import Purpose
from hutong.v1 import person_pb2, records_pb2
from pki import DemoPki

HUTONG = [sys.executable, "-m", "gateway.cli"]
GZ = "hutong://province/440000/node/gz-01"
CREATED = records_pb2.OUTCOME_CREATED


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


async def run_async(*args: str, cwd: Path) -> tuple[int, str, str]:
    """The same, without blocking the event loop: the in-process hub keeps serving meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *HUTONG, *args, cwd=cwd, env={**os.environ, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def records(prefix: str, count: int, make_record: Callable[..., Any], first_sequence: int) -> list[Any]:
    """``count`` records of distinct persons born on distinct days (sequence numbers stay odd and even alike)."""
    return [
        make_record(f"{prefix}-{i}", birth=dt.date(1950, 1, 1) + dt.timedelta(days=first_sequence + i), sequence=101)
        for i in range(count)
    ]


def batches(prefix: str, items: list[Any], size: int = 10) -> list[records_pb2.SyncRecordsRequest]:
    return [
        records_pb2.SyncRecordsRequest(batch_id=f"{prefix}-{n}", records=items[n : n + size])
        for n in range(0, len(items), size)
    ]


async def enrolled(client: HubClient, record: person_pb2.PersonRecord) -> bool:
    answer = await client.check_enrollment(record.id_number, Purpose.AUDIT)
    return any(r.enrolled for r in answer.results)


# -- backup and restore ---------------------------------------------------------------------------


async def test_a_backup_of_a_live_hub_restores_into_a_hub_with_its_records_and_a_log_that_verifies(
    hub_factory: Any,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    sync_all: Callable[..., Any],
    demo_pki: DemoPki,
    tmp_path: Path,
) -> None:
    live_dir, backup_dir, restored_dir = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    live = await hub_factory(data_dir=live_dir, checkpoint_seconds=0.05)
    gz = client_for(GZ, port=live.port)
    before = records("a", 40, make_record, 0)
    during = records("b", 60, make_record, 1000)
    after = records("c", 20, make_record, 2000)
    first_acks = await sync_all(gz, batches("a", before))
    await asyncio.sleep(0.2)  # a checkpoint covering the first records

    # The backup runs while the hub applies more batches.
    (code, out, err), _ = await asyncio.gather(
        run_async("hub", "backup", "--data-dir", str(live_dir), "--out", str(backup_dir), cwd=tmp_path),
        sync_all(gz, batches("b", during)),
    )
    assert code == 0, err
    await sync_all(gz, batches("c", after))

    manifest = json.loads((backup_dir / "manifest.json").read_text(encoding="utf-8"))
    files = {f["name"]: f for f in manifest["files"]}
    assert set(files) == {
        "hub.sqlite3", "keys.json", "token-keys.json", "audit-note.key", "audit-key-binding.json", "checkpoint.note",
    }  # fmt: skip
    for name in ("hub.sqlite3", "keys.json", "token-keys.json", "audit-note.key"):
        assert files[name]["mode"] == "0600"
        assert stat.S_IMODE((backup_dir / name).stat().st_mode) == 0o600
    assert manifest["store"]["schema_version"] >= 4
    assert 0 < manifest["audit"]["checkpoint_size"] <= manifest["audit"]["tree_size"]
    assert f"schema version {manifest['store']['schema_version']}" in out
    assert not (backup_dir / "hub.sqlite3-wal").exists()  # one self-contained file

    restored = run("hub", "restore", "--from", str(backup_dir), "--data-dir", str(restored_dir), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    for name in ("keys.json", "token-keys.json", "audit-note.key", "hub.sqlite3"):
        assert stat.S_IMODE((restored_dir / name).stat().st_mode) == 0o600
    assert not (restored_dir / "checkpoint.note").exists()

    hub = await hub_factory(data_dir=restored_dir)
    client = client_for(GZ, port=hub.port)
    held = (await client.get_sync_state()).records_held
    assert len(before) <= held <= len(before) + len(during)
    # Person keys are reproduced (the restored keys.json), so the persons are found again; the
    # records synced after the backup are not there.
    assert all([await enrolled(client, r) for r in before])
    assert not any([await enrolled(client, r) for r in after])
    # The idempotency records came along: a resent batch gets its original acknowledgement.
    (replayed,) = await sync_all(client, batches("a", before)[:1])
    assert list(replayed.record_outcomes) == [CREATED] * 10 == list(first_acks[0].record_outcomes)
    await hub.stop(0)

    # The restored log verifies offline and extends the checkpoint the backup holds.
    export = run("audit", "export", "--data-dir", str(restored_dir), "--out", str(tmp_path / "export"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    verify = run(
        "audit", "verify", str(tmp_path / "export"), "--ca", str(demo_pki.ca_cert_path),
        "--known", str(backup_dir / "checkpoint.note"), cwd=tmp_path,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified" in verify.stdout


def make_backup(tmp_path: Path) -> Path:
    """A backup of a hub that ran once (a plaintext loopback hub, stopped by SIGTERM)."""
    data = tmp_path / "hub"
    port_file = tmp_path / "hub.port"
    log = tmp_path / "hub.log"
    with log.open("wb") as out:
        hub = subprocess.Popen(
            [*HUTONG, "hub", "serve", "--insecure", "--data-dir", str(data), "--listen", "127.0.0.1:0",
             "--port-file", str(port_file)],
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert hub.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(timeout=30) == 0, log.read_text()
    made = run("hub", "backup", "--data-dir", str(data), "--out", str(tmp_path / "backup"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    return tmp_path / "backup"


def test_restore_checks_every_file_first_and_refuses_a_data_dir_that_is_not_empty(tmp_path: Path) -> None:
    backup = make_backup(tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine", encoding="utf-8")
    refused = run("hub", "restore", "--from", str(backup), "--data-dir", str(occupied), cwd=tmp_path)
    assert refused.returncode == 3
    assert "DATA_DIR_NOT_EMPTY" in refused.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    # Restoring into an existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    assert (
        run("hub", "restore", "--from", str(backup), "--data-dir", str(tmp_path / "empty"), cwd=tmp_path).returncode
        == 0
    )

    # One flipped byte in one file: nothing is written, and the file is named.
    keys = backup / "token-keys.json"
    data = bytearray(keys.read_bytes())
    data[10] ^= 0x01
    keys.write_bytes(bytes(data))
    damaged = run("hub", "restore", "--from", str(backup), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert damaged.returncode == 3
    assert "token-keys.json" in damaged.stderr
    assert "BACKUP_CORRUPT" in damaged.stderr
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]

    (backup / "token-keys.json").unlink()
    missing = run("hub", "restore", "--from", str(backup), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert missing.returncode == 3
    assert "BACKUP_FILE_MISSING" in missing.stderr
    assert "token-keys.json" in missing.stderr

    (backup / "manifest.json").unlink()
    unfinished = run("hub", "restore", "--from", str(backup), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert unfinished.returncode == 3
    assert "manifest.json" in unfinished.stderr


def test_a_checkpoint_the_backed_up_key_did_not_sign_is_refused(tmp_path: Path) -> None:
    backup = make_backup(tmp_path)
    note = backup / "checkpoint.note"
    forged = note.read_text(encoding="utf-8").replace("\n0\n", "\n1\n", 1)
    assert forged != note.read_text(encoding="utf-8")
    note.write_text(forged, encoding="utf-8")
    # Whoever edits a file can also edit the manifest: the signature is what they cannot redo.
    manifest = json.loads((backup / "manifest.json").read_text(encoding="utf-8"))
    for f in manifest["files"]:
        if f["name"] == "checkpoint.note":
            f["sha256"] = hashlib.sha256(note.read_bytes()).hexdigest()
            f["size"] = note.stat().st_size
    (backup / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    refused = run("hub", "restore", "--from", str(backup), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert refused.returncode == 3
    assert "checkpoint.note" in refused.stderr
    assert not (tmp_path / "new").exists()


def test_backup_refuses_a_directory_that_is_not_a_hubs_and_a_target_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    absent = run("hub", "backup", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert absent.returncode == 3
    assert "keys.json" in absent.stderr
    assert "hub.data_dir" in absent.stderr

    backup = make_backup(tmp_path)
    again = run("hub", "backup", "--data-dir", str(tmp_path / "hub"), "--out", str(backup), cwd=tmp_path)
    assert again.returncode == 3
    assert "BACKUP_TARGET_NOT_EMPTY" in again.stderr


async def test_a_postgresql_hub_backs_up_its_keys_and_checkpoint_and_prints_the_pg_dump_route(
    empty_postgres_url: str,  # first: its schema is dropped after every hub has stopped
    hub_factory: Any,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    sync_all: Callable[..., Any],
    crypto_suite: str,
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        f'[hub]\ndata_dir = "hub"\ncrypto_suite = "{crypto_suite}"\n[store]\nurl = "{empty_postgres_url}"\n'
        '[audit]\norigin = "hub.test/hutong-audit"\n',
    )
    newest = max(
        int(entry.name.split("_", 1)[0])
        for entry in (resources.files("gateway.store") / "migrations" / "postgresql").iterdir()
        if entry.name.endswith(".sql")
    )
    code, out, err = await run_async("hub", "migrate", "--config", str(config), "--create-keys", cwd=tmp_path)
    assert code == 0, err
    assert f"schema version 0 -> {newest} ({newest} migration(s) applied)" in out
    code, out, err = await run_async("hub", "migrate", "--config", str(config), cwd=tmp_path)
    assert f"schema version {newest} -> {newest} (nothing to apply)" in out

    data = tmp_path / "etc" / "hub"
    hub = await hub_factory(data_dir=data, store_url=empty_postgres_url, audit_origin="hub.test/hutong-audit")
    await sync_all(client_for(GZ, port=hub.port), batches("a", records("a", 20, make_record, 0)))
    await hub.audit.checkpoint()

    code, out, err = await run_async(
        "hub", "backup", "--config", str(config), "--out", str(tmp_path / "b"), cwd=tmp_path
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["store"]["engine"] == "postgresql"
    assert manifest["store"]["schema_version"] == newest
    assert {f["name"] for f in manifest["files"]} == {
        "keys.json", "token-keys.json", "audit-note.key", "audit-key-binding.json", "checkpoint.note",
    }  # fmt: skip
    tree_size, _ = await hub.store.audit_tree()
    assert 0 < manifest["audit"]["checkpoint_size"] <= manifest["audit"]["tree_size"] <= tree_size
    await hub.stop(0)
    (dump,) = [line for line in out.splitlines() if line.startswith("pg_dump ")]
    assert shlex.split(dump) == [
        "pg_dump", "--format=custom", "--no-owner", f"--file={tmp_path / 'b' / 'hub.pgdump'}", empty_postgres_url,
    ]  # fmt: skip

    restored = run("hub", "restore", "--from", str(tmp_path / "b"), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert "pg_restore --no-owner --exit-on-error" in restored.stdout
    assert (tmp_path / "new" / "keys.json").read_bytes() == (data / "keys.json").read_bytes()
    assert not (tmp_path / "new" / "hub.sqlite3").exists()


# -- migrate --------------------------------------------------------------------------------------


def test_migrate_creates_a_database_then_finds_nothing_to_apply(tmp_path: Path) -> None:
    created = run("hub", "migrate", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    newest = max(
        int(entry.name.split("_", 1)[0])
        for entry in (resources.files("gateway.store") / "migrations" / "sqlite").iterdir()
        if entry.name.endswith(".sql")
    )
    assert f"schema version {newest}" in created.stdout
    again = run("hub", "migrate", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"schema version {newest} -> {newest} (nothing to apply)" in again.stdout


def test_migrate_applies_what_an_older_database_lacks(tmp_path: Path) -> None:
    folder = resources.files("gateway.store") / "migrations" / "sqlite"
    scripts = sorted(
        (int(e.name.split("_", 1)[0]), e.read_text(encoding="utf-8"))
        for e in folder.iterdir()
        if e.name.endswith(".sql")
    )
    (tmp_path / "hub").mkdir()
    con = sqlite3.connect(tmp_path / "hub" / "hub.sqlite3")
    con.executescript(scripts[0][1] + f"\nPRAGMA user_version={scripts[0][0]};")
    con.close()
    result = run("hub", "migrate", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, newest = scripts[0][0], scripts[-1][0]
    assert f"schema version {first} -> {newest} ({newest - first} migration(s) applied)" in result.stdout
    con = sqlite3.connect(tmp_path / "hub" / "hub.sqlite3")
    assert con.execute("PRAGMA user_version").fetchone()[0] == newest
    con.close()


def test_migrate_create_keys_makes_one_set_for_replicas_and_keeps_it(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    args = ["hub", "migrate", "--data-dir", str(data), "--create-keys"]
    nameless = run(*args, cwd=tmp_path)
    assert nameless.returncode == 3
    assert "audit.origin" in nameless.stderr
    made = run(
        *args, "--config", str(write_config(tmp_path, '[audit]\norigin = "hub.test/hutong-audit"\n')), cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert "created keys.json, token-keys.json, audit-note.key" in made.stdout
    for name in ("keys.json", "token-keys.json", "audit-note.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    first = {name: (data / name).read_bytes() for name in ("keys.json", "token-keys.json", "audit-note.key")}
    assert (data / "audit-note.key").read_text(encoding="utf-8").startswith("PRIVATE+KEY+hub.test/hutong-audit+")
    kept = run(*args, "--config", str(tmp_path / "etc" / "hub.toml"), cwd=tmp_path)
    assert kept.returncode == 0
    assert "the key files exist" in kept.stdout
    assert {name: (data / name).read_bytes() for name in first} == first


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "hub.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- serve ----------------------------------------------------------------------------------------


def test_hub_serves_from_its_config_file_and_a_flag_overrides_a_key(tmp_path: Path) -> None:
    certs = tmp_path / "etc" / "tls"
    made = run("pki", "quickstart", str(certs), "--node", "440000/gz-01", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # Relative paths are the config file's; the listen key names a port the flag replaces.
    config = write_config(
        tmp_path,
        '[hub]\ndata_dir = "state"\nlisten = "127.0.0.1:1"\nport_file = "hub.port"\ngrace_seconds = 5\n'
        '[tls]\ncert = "tls/hub.pem"\nkey = "tls/hub.key"\nca = "tls/ca.pem"\n'
        '[audit]\norigin = "hub.test/hutong-audit"\ncheckpoint_seconds = 1\n',
    )
    port_file = tmp_path / "etc" / "hub.port"
    log = tmp_path / "hub.log"
    with log.open("wb") as out:
        hub = subprocess.Popen(
            [*HUTONG, "hub", "serve", "--config", str(config), "--listen", "127.0.0.1:0"], stdout=out, stderr=out,
            cwd=tmp_path / "etc" / "tls",  # not the config's directory: paths must not depend on the cwd
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert hub.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert port != 1
        assert (tmp_path / "etc" / "state" / "keys.json").exists()
        node = certs / "nodes" / "440000-gz-01"
        query = run(
            "query", "check", "--hub", f"localhost:{port}", "--id", "11010519491231002X", "--purpose", "audit",
            "--cert", f"{node}.pem", "--key", f"{node}.key", "--ca", str(certs / "ca.pem"), cwd=tmp_path,
        )  # fmt: skip
        assert query.returncode == 0, query.stderr
        assert "CheckEnrollment" in query.stdout
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=30) == 0, log.read_text()
    assert "hub.test/hutong-audit" in (tmp_path / "etc" / "state" / "audit-note.key").read_text(encoding="utf-8")
