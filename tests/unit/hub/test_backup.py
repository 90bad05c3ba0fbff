"""gateway.hub.backup: the manifest, restoring a database kept outside the data directory, the pg_dump route."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.hub import backup
from gateway.hub.config import HubConfig, store_location
from gateway.hub.ops_commands import migrate

ORIGIN = "hub.test/hutong-audit"


def new_hub(data_dir: Path, store_url: str = "") -> HubConfig:
    """A data directory as `hutong hub migrate --create-keys` leaves it: keys and a database, no log yet."""
    config = HubConfig(data_dir=data_dir, audit_origin=ORIGIN, store_url=store_url)
    assert migrate(config, create_keys=True) == 0
    return config


def test_a_hub_that_never_served_backs_up_without_a_checkpoint_and_restores(tmp_path: Path) -> None:
    config = new_hub(tmp_path / "hub")
    manifest = backup.back_up(tmp_path / "hub", config.store(), tmp_path / "b")
    assert (manifest.audit_tree_size, manifest.checkpoint_size, manifest.audit_origin) == (0, None, ORIGIN)
    assert manifest.file("checkpoint") is None
    assert {f.name for f in manifest.files} == {"hub.sqlite3", "keys.json", "token-keys.json", "audit-note.key"}
    assert backup.verify_backup(tmp_path / "b") == manifest

    target = tmp_path / "restored"
    assert backup.restore(tmp_path / "b", target, store_location("", target)) == manifest
    for f in manifest.files:
        assert (target / f.name).read_bytes() == (tmp_path / "b" / f.name).read_bytes()
        assert stat.S_IMODE((target / f.name).stat().st_mode) == f.mode
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_the_database_goes_where_store_url_says_and_an_existing_one_is_never_overwritten(tmp_path: Path) -> None:
    config = new_hub(tmp_path / "hub")
    backup.back_up(tmp_path / "hub", config.store(), tmp_path / "b")
    elsewhere = tmp_path / "db" / "hub.sqlite3"
    location = store_location("sqlite:///" + elsewhere.as_posix().lstrip("/"), tmp_path / "new")
    backup.restore(tmp_path / "b", tmp_path / "new", location)
    assert elsewhere.is_file()
    assert not (tmp_path / "new" / "hub.sqlite3").exists()
    assert (tmp_path / "new" / "keys.json").is_file()

    with pytest.raises(ConfigError) as caught:
        backup.restore(tmp_path / "b", tmp_path / "newer", location)
    assert (caught.value.reason, caught.value.field) == ("FILE_EXISTS", "store.url")
    assert not (tmp_path / "newer").exists()


def test_a_sqlite_backup_is_not_restored_over_a_postgresql_store(tmp_path: Path) -> None:
    config = new_hub(tmp_path / "hub")
    backup.back_up(tmp_path / "hub", config.store(), tmp_path / "b")
    with pytest.raises(ConfigError) as caught:
        backup.restore(tmp_path / "b", tmp_path / "new", store_location("postgresql://db/hutong", tmp_path / "new"))
    assert (caught.value.reason, caught.value.field) == ("STORE_ENGINE_MISMATCH", "store.url")


@pytest.mark.parametrize("name", ["../keys.json", "/etc/passwd", "a/b", "", ".."])
def test_a_manifest_naming_anything_but_a_plain_file_is_refused(tmp_path: Path, name: str) -> None:
    config = new_hub(tmp_path / "hub")
    backup.back_up(tmp_path / "hub", config.store(), tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    body["files"][1]["name"] = name
    path.write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        backup.verify_backup(tmp_path / "b")
    assert caught.value.reason == "BACKUP_INVALID"


def test_a_manifest_of_another_format_is_refused(tmp_path: Path) -> None:
    config = new_hub(tmp_path / "hub")
    backup.back_up(tmp_path / "hub", config.store(), tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    path.write_text(path.read_text(encoding="utf-8").replace(backup.BACKUP_FORMAT, "hutong-hub-backup/9"))
    with pytest.raises(ConfigError) as caught:
        backup.verify_backup(tmp_path / "b")
    assert caught.value.reason == "BACKUP_INVALID"
    assert "hutong-hub-backup/9" in str(caught.value)


def test_the_printed_postgresql_commands_never_carry_the_password(tmp_path: Path) -> None:
    location = store_location("postgresql://hutong:s3cret@db.internal:5432/hutong?sslmode=require", tmp_path)
    dump = backup.pg_dump_command(location, tmp_path / "my backup")
    restore = backup.pg_restore_command(location, tmp_path / "my backup")
    assert "s3cret" not in dump + restore
    assert "'postgresql://hutong@db.internal:5432/hutong?sslmode=require'" in dump
    assert f"--file='{tmp_path / 'my backup' / 'hub.pgdump'}'" in dump
    assert restore.startswith("pg_restore --no-owner --exit-on-error --dbname='postgresql://hutong@db.internal")
