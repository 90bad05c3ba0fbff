"""The example node configurations in deploy/nodes/ load, and each names a shipped profile of its province."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.profile import load_profile
from gateway.node.config import load_node_config

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "deploy" / "nodes").glob("*.toml"))


def test_there_is_an_example_per_shipped_profile() -> None:
    assert {p.name for p in EXAMPLES} == {p.name for p in (ROOT / "adapters" / "profiles").glob("*.toml")}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_loads_and_matches_its_profile(example: Path) -> None:
    config = load_node_config(example)
    profile = load_profile(ROOT / "adapters" / "profiles" / config.profile.name)
    assert f"/{profile.province}-" in str(config.hub.cert)
    assert config.sync.batch_size <= 5000
    assert config.serve.port == 7444
