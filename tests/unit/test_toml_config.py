"""gateway.toml_config: the one way TOML files, configured paths and ports are read, every fault a ConfigError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.profile import load_profile
from gateway.domain.monitoring import load_rules
from gateway.domain.tiers import load_tier_rules
from gateway.errors import ConfigError
from gateway.hub.federation import load_node_directory
from gateway.hub.server import load_policy
from gateway.node.config import load_node_config
from gateway.toml_config import Section, config_path, parse_listen, parse_port, read_toml

#: Every loader of a TOML file, and the field its errors name.
LOADERS: list[tuple[Callable[[Path], Any], str]] = [
    (load_profile, "profile"),
    (load_tier_rules, "tier_rules"),
    (load_rules, "monitoring_rules"),
    (load_policy, "policy"),
    (load_node_directory, "node_directory"),
    (load_node_config, "config"),
]


@pytest.mark.parametrize(("load", "field"), LOADERS, ids=[field for _, field in LOADERS])
def test_every_loader_refuses_a_file_that_is_not_utf8_naming_its_field(
    tmp_path: Path, load: Callable[[Path], Any], field: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('name = "广东"\n'.encode("gbk"))  # GBK, not UTF-8: UnicodeDecodeError must not leak

    with pytest.raises(ConfigError) as refused:
        load(path)

    assert (refused.value.reason, refused.value.field) == ("ENCODING_INVALID", field)
    assert "is not UTF-8 text (byte 8 does not decode)" in refused.value.message


def test_read_toml_names_the_field_for_a_missing_file_a_directory_and_text_that_is_not_toml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[rules\n", encoding="utf-8")
    faults = {}
    for name, path in (("missing", tmp_path / "absent.toml"), ("directory", tmp_path), ("invalid", broken)):
        with pytest.raises(ConfigError) as refused:
            read_toml(path, what="rules file", field="rules", invalid="RULES_INVALID")
        faults[name] = (refused.value.reason, refused.value.field)

    assert faults == {
        "missing": ("FILE_MISSING", "rules"),
        "directory": ("FILE_MISSING", "rules"),
        "invalid": ("RULES_INVALID", "rules"),
    }


@pytest.mark.parametrize(
    "value",
    ["~no-such-user-of-hutong/ca.pem", "certs/ca\x00.pem", "~\x00/ca.pem"],
    ids=["unknown-user-home", "nul-byte", "nul-byte-in-user"],
)
def test_a_path_that_can_name_no_file_is_a_config_error_naming_the_key(tmp_path: Path, value: str) -> None:
    section = Section({"ca": value, "standards": ["a.csv", value]}, "hub", tmp_path)

    with pytest.raises(ConfigError) as by_key:
        section.path("ca")
    with pytest.raises(ConfigError) as by_item:
        section.path_of(value)  # an item of a list key: the error names the item

    assert (by_key.value.reason, by_key.value.field) == ("PATH_INVALID", "hub.ca")
    assert (by_item.value.reason, by_item.value.field) == ("PATH_INVALID", "hub.standards[1]")


def test_a_relative_path_is_read_from_the_config_directory_and_home_is_expanded(tmp_path: Path) -> None:
    assert config_path("certs/ca.pem", tmp_path, field="hub.ca") == tmp_path / "certs/ca.pem"
    assert config_path("~/ca.pem", tmp_path, field="hub.ca") == Path.home() / "ca.pem"


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("7443", 7443),
        ("0", 0),
        ("65535", 65535),
        ("65536", None),
        ("744²", None),  # str.isdigit() says yes; int() raises ValueError
        ("٧٤٤٤", None),  # Arabic-Indic digits: int() reads 7444
        ("", None),
        ("+1", None),
        ("0" * 40 + "1", None),
    ],
)
def test_a_port_is_ascii_digits_from_0_to_65535(text: str, port: int | None) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("value", ["127.0.0.1:744²3", "[::]:٧٤٤٤", "localhost", "h:70000"])
def test_a_listen_address_with_a_bad_port_is_a_config_error_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_listen(value, field="serve.listen", default_host="127.0.0.1")
    assert refused.value.field == "serve.listen"
    assert parse_listen("[::1]:7443", field="serve.listen", default_host="127.0.0.1") == ("::1", 7443)
    assert parse_port("0", low=1) is None
