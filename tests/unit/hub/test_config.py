"""``hub.toml``: every key read and checked, relative paths from the file, flags over keys, the store URL."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli import main
from gateway.domain.standards import Standard
from gateway.errors import ConfigError
from gateway.hub.config import (
    SECTIONS,
    HubConfig,
    load_hub_config,
    store_for,
    store_location,
)
from gateway.hub.ops_commands import hub_config, hub_settings
from gateway.store.sqlite import SqliteStore
from pki import DemoPki

FULL = """
[hub]
data_dir = "state"
listen = "[::1]:7450"
health_listen = ":7080"
console_listen = "127.0.0.1:7081"
port_file = "run/hub.port"
grace_seconds = 12.5
crypto_suite = "sm"
insecure = false
prepare_workers = 3

[tls]
cert = "tls/hub.pem"
key = "/abs/hub.key"
ca = "tls/ca.pem"
crl = "tls/crl.pem"
ca_registry = "/var/lib/hutong-ca/registry.sqlite3"

[store]
url = "sqlite:db/hub.sqlite3"

[audit]
origin = "hub.example/hutong-audit"
checkpoint_seconds = 30

[sync]
max_batch = 2000

[limits]
stream_idle_seconds = 120

[policy]
file = "policy.toml"

[federation]
node_directory = "nodes.toml"

[monitoring]
rules = "monitoring.toml"

[tiers]
rules = "tiers.toml"
standards = ["standards/gd.csv", "/abs/ha.csv"]

[verification]
consent_valid_days = 90
source_seconds = 12.5
"""


def write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_every_key_is_read_and_relative_paths_are_the_config_files(tmp_path: Path) -> None:
    config = load_hub_config(write(tmp_path, FULL))
    etc = (tmp_path / "etc").resolve()

    assert config.data_dir == etc / "state"
    assert (config.host, config.port) == ("::1", 7450)
    assert config.health_listen == ("0.0.0.0", 7080)  # noqa: S104 - an empty host is every interface
    assert config.console_listen == ("127.0.0.1", 7081)
    assert config.port_file == etc / "run" / "hub.port"
    assert config.grace_seconds == 12.5
    assert config.crypto_suite == "sm"
    assert config.insecure is False
    assert config.prepare_workers == 3
    assert config.ca_registry == Path("/var/lib/hutong-ca/registry.sqlite3")
    assert config.tier_rules == etc / "tiers.toml"
    assert (config.consent_valid_days, config.verification_seconds) == (90, 12.5)
    assert config.standards == (etc / "standards" / "gd.csv", Path("/abs/ha.csv"))
    assert (config.cert, config.key, config.ca, config.crl) == (
        etc / "tls" / "hub.pem",
        Path("/abs/hub.key"),
        etc / "tls" / "ca.pem",
        etc / "tls" / "crl.pem",
    )
    # A relative SQLite path is the file's too, made absolute so that --data-dir cannot move it.
    assert config.store_url == f"sqlite:///{(etc / 'db' / 'hub.sqlite3').as_posix().lstrip('/')}"
    assert config.store().sqlite_path == etc / "db" / "hub.sqlite3"
    assert (config.audit_origin, config.checkpoint_seconds, config.max_batch) == (
        "hub.example/hutong-audit",
        30.0,
        2000,
    )
    assert config.stream_idle_seconds == 120.0
    assert (config.policy, config.node_directory, config.monitoring_rules) == (
        etc / "policy.toml",
        etc / "nodes.toml",
        etc / "monitoring.toml",
    )


def test_an_empty_file_gives_the_defaults_of_the_flags(tmp_path: Path) -> None:
    config = load_hub_config(write(tmp_path, ""))
    assert config == HubConfig(path=config.path)
    assert (config.host, config.port, config.grace_seconds, config.max_batch) == ("127.0.0.1", 7443, 10.0, 5000)
    assert config.checkpoint_seconds == 10.0
    assert config.stream_idle_seconds == 300.0  # a silent client stream is ended after five minutes
    assert config.store_url == ""
    with pytest.raises(ConfigError) as missing:
        config.require_data_dir()
    assert missing.value.field == "hub.data_dir"


def test_every_section_of_the_loader_is_in_the_full_example_above() -> None:
    # The FULL text sets every key: a key added to the loader without a test of it fails here.
    import tomllib

    doc = tomllib.loads(FULL)
    assert {s: set(keys) for s, keys in doc.items()} == {s: set(keys) for s, keys in SECTIONS.items()}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[hub]\nlisten = '7443'\n", "hub.listen"),
        ("[hub]\nlisten = 'host:70000'\n", "hub.listen"),
        ("[hub]\nhealth_listen = 7080\n", "hub.health_listen"),
        ('[hub]\nconsole_listen = "nowhere"\n', "hub.console_listen"),
        ("[hub]\ngrace_seconds = 0\n", "hub.grace_seconds"),
        ("[hub]\ngrace_seconds = '10'\n", "hub.grace_seconds"),
        ("[hub]\ncrypto_suite = 'aes'\n", "hub.crypto_suite"),
        ("[hub]\ninsecure = 'no'\n", "hub.insecure"),
        ("[hub]\nprepare_workers = -1\n", "hub.prepare_workers"),
        ("[hub]\ndata_dir = ''\n", "hub.data_dir"),
        ("[hub]\ndatadir = '/x'\n", "hub.datadir"),
        ("[tls]\ncert = 5\n", "tls.cert"),
        ("[store]\nurl = 'mysql://db/hub'\n", "store.url"),
        ("[store]\nurl = 'sqlite://host/hub.db'\n", "store.url"),
        ("[store]\nurl = 'sqlite:'\n", "store.url"),
        ("[store]\nurl = 'hub.sqlite3'\n", "store.url"),
        ("[audit]\ncheckpoint_seconds = -1\n", "audit.checkpoint_seconds"),
        ("[audit]\norigin = ''\n", "audit.origin"),
        ("[sync]\nmax_batch = 0\n", "sync.max_batch"),
        ("[sync]\nmax_batch = 1.5\n", "sync.max_batch"),
        ("[limits]\nstream_idle_seconds = 0\n", "limits.stream_idle_seconds"),
        ("[limits]\nstream_idle_seconds = 86401\n", "limits.stream_idle_seconds"),
        ("[limits]\nstream_idle_seconds = 'never'\n", "limits.stream_idle_seconds"),
        ("[policy]\npath = 'p.toml'\n", "policy.path"),
        ("[federation]\nnode_directory = ['a']\n", "federation.node_directory"),
        ("[monitoring]\nrules = true\n", "monitoring.rules"),
        ("[nodes]\n", "nodes"),
        ("hub = 1\n", "hub"),
    ],
)
def test_a_wrong_key_is_a_config_error_naming_it(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_hub_config(write(tmp_path, text))
    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_hub_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as broken:
        load_hub_config(write(tmp_path, "[hub\n"))
    assert (missing.value.reason, missing.value.field) == ("CONFIG_MISSING", "config")
    assert (broken.value.reason, broken.value.field) == ("CONFIG_INVALID", "config")


def test_flags_that_were_given_override_the_file_and_the_others_leave_it(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = hub_config(path, data_dir=Path("elsewhere"), port=9000, host=None, max_batch=None, insecure=None)
    assert config.data_dir == Path("elsewhere")
    assert (config.host, config.port) == ("::1", 9000)
    assert config.max_batch == 2000
    assert config.crypto_suite == "sm"
    with pytest.raises(TypeError):
        HubConfig().with_flags(no_such_setting=1)


def test_without_a_file_the_flags_alone_configure_the_hub() -> None:
    config = hub_config(None, data_dir=Path("d"), grace_seconds=3.0)
    assert config == HubConfig(data_dir=Path("d"), grace_seconds=3.0)


def test_the_settings_take_every_value_of_the_config(tmp_path: Path, demo_pki: DemoPki) -> None:
    config = HubConfig(
        data_dir=tmp_path / "hub",
        host="127.0.0.2",
        port=7000,
        health_listen=("127.0.0.1", 7081),
        grace_seconds=4.0,
        crypto_suite="sm",
        prepare_workers=0,
        cert=demo_pki.hub_cert_path,
        key=demo_pki.hub_key_path,
        ca=demo_pki.ca_cert_path,
        crl=tmp_path / "crl.pem",
        store_url="sqlite:///" + (tmp_path / "db.sqlite3").as_posix().lstrip("/"),
        audit_origin="o.example/log",
        checkpoint_seconds=2.0,
        max_batch=100,
        stream_idle_seconds=45.0,
    )
    settings = hub_settings(config)
    assert (settings.data_dir, settings.host, settings.port) == (tmp_path / "hub", "127.0.0.2", 7000)
    assert settings.health_listen == ("127.0.0.1", 7081)
    assert (settings.grace_seconds, settings.crypto_suite, settings.prepare_workers) == (4.0, "sm", 0)
    assert settings.tls is not None
    assert settings.tls.cert_chain_pem == demo_pki.hub_tls.cert_chain_pem
    assert (settings.crl_path, settings.store_url) == (tmp_path / "crl.pem", config.store_url)
    assert (settings.audit_origin, settings.checkpoint_seconds, settings.max_batch_items) == ("o.example/log", 2.0, 100)
    assert settings.stream_idle_seconds == 45.0
    # Without prepare_workers: one per CPU, as the hub has always done.
    assert hub_settings(HubConfig(data_dir=tmp_path, insecure=True)).prepare_workers == -1


def test_the_settings_read_the_tier_rules_and_merge_the_standards_files(tmp_path: Path) -> None:
    deploy = Path(__file__).resolve().parents[3] / "deploy"
    extra = tmp_path / "extra.csv"
    extra.write_text(
        "division,standard,monthly_yuan,effective_from\n510100,dibao_urban,1000,2026-01-01\nnot,a,row\n",
        encoding="utf-8",
    )
    config = hub_config(
        None,
        data_dir=tmp_path,
        insecure=True,
        tier_rules=deploy / "tiers.example.toml",
        standards=(deploy / "standards.example.csv", extra),
        consent_valid_days=30,
        verification_seconds=5.0,
    )
    settings = hub_settings(config)
    assert (settings.consent_valid_days, settings.federation.verification_seconds) == (30, 5.0)
    assert settings.tier_rules is not None
    assert [t.id for t in settings.tier_rules.tiers] == ["core", "marginal", "rigid_expenditure", "other_monitored"]
    assert settings.standards is not None
    chengdu = settings.standards.at("510104", Standard.DIBAO_URBAN, dt.date(2026, 3, 1))
    assert chengdu is not None
    assert chengdu.monthly_fen == 100_000  # the later file's row: the bad row beside it was logged, not fatal


def test_the_settings_name_the_tls_key_that_is_missing(tmp_path: Path, demo_pki: DemoPki) -> None:
    with pytest.raises(ConfigError) as caught:
        hub_settings(HubConfig(data_dir=tmp_path, cert=demo_pki.hub_cert_path, ca=demo_pki.ca_cert_path))
    assert (caught.value.reason, caught.value.field) == ("TLS_MISSING", "tls.key")
    assert "tls.key (--key)" in str(caught.value)


def test_the_store_url_forms(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert store_location("", data).sqlite_path == data / "hub.sqlite3"
    assert store_location("sqlite:///srv/hub/h.db", data).sqlite_path == Path("/srv/hub/h.db")
    assert store_location("sqlite:/srv/hub/h.db", data).sqlite_path == Path("/srv/hub/h.db")
    assert store_location("sqlite:sub/h.db", data).sqlite_path == data / "sub" / "h.db"
    pg = store_location("postgresql://hutong:s3cret@db.internal:5432/hutong?sslmode=require", data)
    assert (pg.engine, pg.sqlite_path) == ("postgresql", None)
    assert pg.postgres_url == "postgresql://hutong:s3cret@db.internal:5432/hutong?sslmode=require"
    assert "s3cret" not in pg.describe()
    assert pg.describe() == "postgresql://hutong:***@db.internal:5432/hutong?sslmode=require"
    assert store_location("postgres://db/hutong", data).engine == "postgresql"


def test_the_store_factory_makes_a_sqlite_store_where_the_hub_always_kept_it(tmp_path: Path) -> None:
    from gateway.audit import sha256

    store = store_for("", tmp_path, audit_hash=sha256)
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "hub.sqlite3"
    elsewhere = store_for("sqlite:///" + (tmp_path / "x.db").as_posix().lstrip("/"), tmp_path, audit_hash=sha256)
    assert isinstance(elsewhere, SqliteStore)
    assert elsewhere.path == tmp_path / "x.db"


def test_a_postgresql_url_without_the_postgresql_store_names_store_url_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.audit import sha256

    # None in sys.modules makes the import fail, as it does where the postgres extra is not installed.
    monkeypatch.setitem(sys.modules, "gateway.store.postgres", None)
    with pytest.raises(ConfigError) as caught:
        store_for("postgresql://hutong@db/hutong", tmp_path, audit_hash=sha256)
    assert (caught.value.reason, caught.value.field) == ("POSTGRES_NOT_INSTALLED", "store.url")
    assert "pip install 'hutong[postgres]'" in str(caught.value)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Put structlog back as it was: ``main()`` points it at this test's captured stderr."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize("command", ["serve", "migrate", "backup", "restore"])
def test_every_hub_operations_command_exits_3_naming_a_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = write(tmp_path, "[hub]\ndata_dir = 'd'\n[audit]\ncheckpoint_seconds = 'often'\n")
    extra = {"backup": ["--out", str(tmp_path / "b")], "restore": ["--from", str(tmp_path / "b")]}.get(command, [])
    assert main(["hub", command, "--config", str(path), *extra]) == 3
    assert "audit.checkpoint_seconds" in capsys.readouterr().err
    assert not (tmp_path / "etc" / "d").exists()


@pytest.mark.usefixtures("logging_restored")
def test_serve_without_a_data_dir_exits_3_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "serve", "--insecure", "--config", str(write(tmp_path, "[hub]\n"))]) == 3
    assert "hub.data_dir" in capsys.readouterr().err


def test_standards_without_tier_rules_are_refused_naming_the_key(tmp_path: Path) -> None:
    config = load_hub_config(write(tmp_path, '[hub]\ndata_dir = "d"\n[tiers]\nstandards = ["s.csv"]\n'))
    with pytest.raises(ConfigError) as refused:
        config.checked()
    assert refused.value.field == "tiers.rules"
