"""Tests of gateway.hub.keys: the hub's key file, its permissions and its crypto suite."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.domain.protection import CryptoSuite, FieldSealer, PersonKeyer
from gateway.errors import ConfigError
from gateway.hub.keys import KEYS_FILE, load_or_create_keys

AD = b"440000/r-1"
ID_NUMBER = "11010519491231002X"


def file_of(data_dir: Path) -> dict[str, object]:
    body: dict[str, object] = json.loads((data_dir / KEYS_FILE).read_text(encoding="utf-8"))
    return body


def test_first_start_creates_an_intl_key_file_readable_by_the_owner_only(tmp_path: Path) -> None:
    keys = load_or_create_keys(tmp_path / "data")
    path = tmp_path / "data" / KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.suite is CryptoSuite.INTL
    assert file_of(tmp_path / "data")["suite"] == "intl"
    assert [len(k) for k in keys.sealing_keys.values()] == [32]


def test_first_start_in_the_sm_suite_records_it_and_makes_sm4_keys(tmp_path: Path) -> None:
    keys = load_or_create_keys(tmp_path, suite="sm")
    assert keys.suite is CryptoSuite.SM
    assert file_of(tmp_path)["suite"] == "sm"
    assert [len(k) for k in keys.sealing_keys.values()] == [16]
    assert stat.S_IMODE((tmp_path / KEYS_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("suite", ["intl", "sm"])
def test_restart_reads_back_the_same_keys_and_suite(tmp_path: Path, suite: str) -> None:
    made = load_or_create_keys(tmp_path, suite=suite)
    blob = FieldSealer(made).seal(b"x", AD)
    for again in (load_or_create_keys(tmp_path, suite=suite), load_or_create_keys(tmp_path)):
        assert again == made
        assert FieldSealer(again).open(blob, AD) == b"x"
        assert PersonKeyer(again.person_key_secret, suite=again.suite).person_key(ID_NUMBER) == PersonKeyer(
            made.person_key_secret, suite=suite
        ).person_key(ID_NUMBER)


@pytest.mark.parametrize(("made_in", "configured"), [("sm", "intl"), ("intl", "sm")])
def test_a_hub_refuses_to_switch_suites_in_place(tmp_path: Path, made_in: str, configured: str) -> None:
    load_or_create_keys(tmp_path, suite=made_in)
    before = (tmp_path / KEYS_FILE).read_bytes()
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path, suite=configured)
    error = caught.value
    assert error.reason == "CRYPTO_SUITE_MISMATCH"
    assert error.field == "crypto_suite"
    assert "cannot switch suites in place" in error.message
    assert "every person key would change" in error.message
    assert error.metadata == {
        "path": str(tmp_path / KEYS_FILE),
        "configured_suite": configured,
        "key_file_suite": made_in,
    }
    assert (tmp_path / KEYS_FILE).read_bytes() == before


def test_a_key_file_from_before_suites_is_intl(tmp_path: Path) -> None:
    made = load_or_create_keys(tmp_path)
    path = tmp_path / KEYS_FILE
    body = file_of(tmp_path)
    del body["suite"]
    path.write_text(json.dumps(body), encoding="utf-8")
    assert load_or_create_keys(tmp_path) == made
    assert load_or_create_keys(tmp_path, suite="intl").suite is CryptoSuite.INTL
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path, suite="sm")
    assert caught.value.reason == "CRYPTO_SUITE_MISMATCH"


def test_an_unknown_configured_suite_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path / "data", suite="sm9")
    assert (caught.value.reason, caught.value.field) == ("CRYPTO_SUITE_UNKNOWN", "crypto_suite")
    assert not (tmp_path / "data").exists()


def test_a_key_file_naming_an_unknown_suite_is_invalid(tmp_path: Path) -> None:
    load_or_create_keys(tmp_path)
    body = file_of(tmp_path)
    body["suite"] = "gost"
    (tmp_path / KEYS_FILE).write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path)
    assert caught.value.reason == "KEY_FILE_INVALID"
    assert "gost" in caught.value.message


def test_a_key_file_whose_keys_do_not_fit_its_suite_is_refused_naming_the_field(tmp_path: Path) -> None:
    load_or_create_keys(tmp_path)  # 32-byte AES keys
    body = file_of(tmp_path)
    body["suite"] = "sm"
    (tmp_path / KEYS_FILE).write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path)
    assert caught.value.field == "sealing_keys"
    assert "16 bytes for SM4-GCM" in caught.value.message


@pytest.mark.parametrize("text", ["[]", "{}", "not json", '{"suite": ["sm"]}'])
def test_a_damaged_key_file_is_invalid(tmp_path: Path, text: str) -> None:
    load_or_create_keys(tmp_path)
    (tmp_path / KEYS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path)
    assert caught.value.reason == "KEY_FILE_INVALID"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_keys(tmp_path, suite="sm")
    (tmp_path / KEYS_FILE).chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(tmp_path, suite="sm")
    assert caught.value.reason == "KEY_PERMISSIONS_TOO_OPEN"
    assert "chmod 600" in caught.value.message
