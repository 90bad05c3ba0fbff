"""deploy/CONFIG.md and the example configs cannot rot: the loaders read the examples and every key is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.hub import config as hub_config
from gateway.node import config as node_config

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
KEY_CELL = re.compile(r"^\| `([a-z_]+\.[a-z_]+)` \|", re.MULTILINE)


def keys_of(sections: dict[str, frozenset[str]]) -> set[str]:
    return {f"{section}.{key}" for section, keys in sections.items() for key in keys}


def documented(title: str) -> set[str]:
    """The keys in the first column of the table under ``## `title```, up to the next heading."""
    text = (DEPLOY / "CONFIG.md").read_text(encoding="utf-8")
    start = text.index(f"## `{title}`")
    end = text.find("\n## ", start + 1)
    return set(KEY_CELL.findall(text[start : end if end != -1 else len(text)]))


def set_in(path: Path) -> set[str]:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    return {f"{section}.{key}" for section, table in doc.items() for key in table}


def test_the_hub_example_loads_and_sets_every_key_the_hub_accepts() -> None:
    config = hub_config.load_hub_config(DEPLOY / "hub.example.toml")
    assert set_in(DEPLOY / "hub.example.toml") == keys_of(hub_config.SECTIONS)
    assert config.data_dir == Path("/var/lib/hutong/hub")
    # Relative paths are the file's: installed as /etc/hutong/hub.toml they are under /etc/hutong.
    assert config.cert == DEPLOY / "tls" / "hub.pem"
    assert config.store().sqlite_path == Path("/var/lib/hutong/hub/hub.sqlite3")


def test_the_node_example_loads_and_sets_every_key_a_node_accepts() -> None:
    config = node_config.load_node_config(DEPLOY / "node.example.toml")
    assert set_in(DEPLOY / "node.example.toml") == keys_of(node_config.SECTIONS)
    assert config.inbox.webhook_secret_file == DEPLOY / "webhook.secret"
    assert config.serve.crl == DEPLOY / "tls" / "crl.pem"


@pytest.mark.parametrize(
    ("title", "sections"), [("hub.toml", hub_config.SECTIONS), ("node.toml", node_config.SECTIONS)], ids=["hub", "node"]
)
def test_config_md_documents_exactly_the_keys_the_loader_accepts(
    title: str, sections: dict[str, frozenset[str]]
) -> None:
    table = documented(title)
    accepted = keys_of(sections)
    assert accepted - table == set(), "accepted by the loader, missing from deploy/CONFIG.md"
    assert table - accepted == set(), "in deploy/CONFIG.md, refused by the loader"


def test_the_province_examples_point_to_the_reference() -> None:
    for example in sorted((DEPLOY / "nodes").glob("*.toml")):
        assert "deploy/CONFIG.md" in example.read_text(encoding="utf-8"), example.name
