"""Tests of ``hutong hub linkage train|status|model`` (gateway.linkage_commands) on a real hub, on both engines.

The hub's database is a SQLite file found with ``--data-dir``, or a PostgreSQL schema found with
``--config hub.toml`` (its ``store.url``), as an operator runs them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli import main
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, EnrollmentStatus, PersonRecord, Program
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.records import RecordPreparer
from gateway.hub.keys import load_or_create_keys
from gateway.hub.server import DATABASE_FILE
from gateway.store.base import NodeRef
from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_linkage import LinkageLedger

SURNAMES, GIVEN = "王李张刘陈杨黄赵吴周", "伟芳娜敏静秀英桂兰华明军强磊洋"


def _person(i: int) -> PersonRecord:
    birth = dt.date(1940 + i % 60, 1 + i % 12, 1 + i % 28)
    rec = PersonRecord(
        record_id=f"gd-{i}",
        version=1,
        id_number=make_id_number("440106", birth, 2 * i + 1),
        name=SURNAMES[i % 10] + GIVEN[i % 15] + GIVEN[(i // 15) % 15],
        gender=0,
        birth_date=None,
        hukou_division="440106",
        residence_division="440106",
        household_id="",
        enrollments=(Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2020, 1, 1), None, 1, "440106"),),
        updated_at_us=0,
    )
    return dataclasses.replace(rec, content_hash=hashlib.blake2b(repr(rec).encode(), digest_size=16).digest())


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """``main`` points structlog at this test's captured stderr: put the configuration back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(params=["sqlite", "postgresql"])
async def hub_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """How the commands find a hub holding 400 records, which linked with the bootstrap model.

    ``--data-dir DIR`` (SQLite in DIR), or ``--config hub.toml`` naming the data directory and a
    PostgreSQL ``store.url``.
    """
    data_dir = tmp_path / "etc" / "hub"
    keys = load_or_create_keys(data_dir)
    keyer, sealer = PersonKeyer(keys.person_key_secret, suite=keys.suite), FieldSealer(keys)
    store: SqlStore
    if request.param == "sqlite":
        store, args = SqliteStore(data_dir / DATABASE_FILE), ["--data-dir", str(data_dir)]
    else:
        from gateway.store.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")
        config = write_config(tmp_path, f'[hub]\ndata_dir = "hub"\n[store]\nurl = "{url}"\n')
        store, args = PostgresStore(url), ["--config", str(config)]
    await store.open()
    await store.open_linkage(LinkageLedger(keyer, sealer))
    prepared = RecordPreparer(keyer, sealer).prepare_batch("440000", [_person(i) for i in range(400)])
    await store.apply_batch(NodeRef("440000", "gz-01"), "b1", b"b1", prepared)
    await store.close()
    return args


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "hub.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_train_stores_a_new_version_that_status_and_model_show(
    hub_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "linkage", "train", *hub_args, "--min-records", "100", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert (trained["version"], trained["records"]) == (2, 400)
    assert main(["hub", "linkage", "status", *hub_args, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(m["version"], m["source"], m["records"]) for m in status["models"]] == [
        (1, "bootstrap", 0),
        (2, "trained", 400),
    ]
    assert status["unverified_records"] == 0
    assert status["reviews_open"] == 0
    assert main(["hub", "linkage", "model", *hub_args]) == 0
    model = json.loads(capsys.readouterr().out)
    assert model["format"] == "hutong.linkage.model/1"
    assert model["training"]["records"] == 400
    assert main(["hub", "linkage", "model", *hub_args, "--version", "1"]) == 0
    assert "with households" in capsys.readouterr().out


def test_train_refuses_a_hub_with_too_few_records_and_a_directory_that_is_no_hub(
    hub_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "linkage", "train", *hub_args]) == 3
    assert "needs at least 1,000" in capsys.readouterr().err
    assert main(["hub", "linkage", "model", *hub_args, "--version", "7"]) == 3
    assert main(["hub", "linkage", "status", "--data-dir", str(tmp_path / "nothing")]) == 3
    assert "no hub database" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
    assert main(["hub", "linkage", "status"]) == 3  # neither --config nor --data-dir
    assert "hub.data_dir" in capsys.readouterr().err
