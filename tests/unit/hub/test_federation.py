"""The hub's federation directory (``--node-directory``) and the time it gives province nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.hub.federation import (
    DetailFetcher,
    FederationSettings,
    NodeAddress,
    NodeDirectory,
    load_node_directory,
    parse_node_directory,
)
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
GZ2 = "hutong://province/440000/node/sz-02"
CD = "hutong://province/510000/node/cd-01"

EXAMPLE = f"""
# One table per node, keyed by its identity URI.
[nodes."{GZ}"]
address = "gz-01.gd.hutong.example:7444"
server_name = "gz-01.gd.hutong.example"

[nodes."{CD}"]
address = "10.51.0.7:7444"

[nodes."{GZ2}"]
address = "[2001:db8::7]:7444"
"""


def test_a_directory_file_lists_each_node_with_its_province_and_address(tmp_path: Path) -> None:
    path = tmp_path / "nodes.toml"
    path.write_text(EXAMPLE, encoding="utf-8")

    directory = load_node_directory(path)

    assert directory.nodes == (
        NodeAddress(GZ, "440000", "gz-01.gd.hutong.example:7444", "gz-01.gd.hutong.example"),
        NodeAddress(CD, "510000", "10.51.0.7:7444"),
        NodeAddress(GZ2, "440000", "[2001:db8::7]:7444"),
    )
    assert [n.uri for n in directory.for_province("440000")] == [GZ, GZ2]
    assert directory.for_province("410000") == ()


def test_department_sources_answer_verifications_but_hold_no_records() -> None:
    vehicles = "hutong://province/440000/node/gd-vehicles"
    directory = parse_node_directory(
        {
            "nodes": {
                GZ: {"address": "a:1"},
                GZ2: {"address": "b:1"},
                vehicles: {"address": "c:1", "department": "广东省公安厅 机动车登记"},
                CD: {"address": "d:1"},
            }
        }
    )
    assert [n.uri for n in directory.for_province("440000")] == [GZ, GZ2]  # record details: not the department
    # A verification asks one node per province and every department source.
    assert [n.uri for n in directory.verification_sources()] == [GZ, CD, vehicles]
    assert directory.verification_sources()[-1].department == "广东省公安厅 机动车登记"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"node": {}}, "node"),
        ({"nodes": []}, "nodes"),
        ({"nodes": {"gz-01": {"address": "h:1"}}}, 'nodes."gz-01"'),
        ({"nodes": {"hutong://province/990000/node/x": {"address": "h:1"}}}, 'nodes."hutong://province/990000/node/x"'),
        ({"nodes": {GZ: "h:1"}}, f'nodes."{GZ}"'),
        ({"nodes": {GZ: {}}}, f'nodes."{GZ}".address'),
        ({"nodes": {GZ: {"address": "h"}}}, f'nodes."{GZ}".address'),
        ({"nodes": {GZ: {"address": "h:0"}}}, f'nodes."{GZ}".address'),
        ({"nodes": {GZ: {"address": "h:744²"}}}, f'nodes."{GZ}".address'),  # isdigit() says yes, int() no
        ({"nodes": {GZ: {"address": "h:٧٤٤٤"}}}, f'nodes."{GZ}".address'),  # int() reads Arabic-Indic digits
        ({"nodes": {GZ: {"address": ":7444"}}}, f'nodes."{GZ}".address'),
        ({"nodes": {GZ: {"address": 7444}}}, f'nodes."{GZ}".address'),
        ({"nodes": {GZ: {"address": "h:1", "server_name": ""}}}, f'nodes."{GZ}".server_name'),
        ({"nodes": {GZ: {"address": "h:1", "port": 1}}}, f'nodes."{GZ}".port'),
        ({"nodes": {GZ: {"address": "h:1"}, CD: {"address": "h:1"}}}, f'nodes."{CD}".address'),
        ({"nodes": {GZ: {"address": "h:1", "department": " "}}}, f'nodes."{GZ}".department'),
        ({"nodes": {GZ: {"address": "h:1", "department": 3}}}, f'nodes."{GZ}".department'),
    ],
)
def test_every_mistake_names_its_key(document: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_node_directory(document)

    assert refused.value.field == field
    assert refused.value.reason == "NODE_DIRECTORY_INVALID"


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[nodes\n", encoding="utf-8")

    with pytest.raises(ConfigError) as missing:
        load_node_directory(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as invalid:
        load_node_directory(broken)

    assert (missing.value.reason, missing.value.field) == ("FILE_MISSING", "node_directory")
    assert (invalid.value.reason, invalid.value.field) == ("NODE_DIRECTORY_INVALID", "node_directory")


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Put structlog back as it was: ``main()`` points it at this test's captured stderr, closed afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("logging_restored")
def test_hub_serve_refuses_a_bad_directory_at_start_with_exit_3(
    demo_pki: DemoPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "nodes.toml"
    bad.write_text(f'[nodes."{GZ}"]\naddress = "gz-01"\n', encoding="utf-8")
    args = ["hub", "serve", "--data-dir", str(tmp_path / "hub"), "--node-directory", str(bad)]
    tls = [
        "--cert",
        str(demo_pki.hub_cert_path),
        "--key",
        str(demo_pki.hub_key_path),
        "--ca",
        str(demo_pki.ca_cert_path),
    ]

    assert main([*args, *tls]) == 3
    assert f'nodes."{GZ}".address' in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()


def test_nodes_get_the_callers_remaining_time_less_the_margin_and_never_more_than_the_cap(demo_pki: DemoPki) -> None:
    fetcher = DetailFetcher(
        NodeDirectory(), demo_pki.hub_tls, FederationSettings(max_seconds=10.0, deadline_margin=0.3)
    )

    assert fetcher.budget(None) == 10.0
    assert fetcher.budget(60.0) == 10.0
    assert fetcher.budget(2.0) == pytest.approx(1.7)
    assert fetcher.budget(0.2) < 0  # nothing left: every province is DEADLINE_EXCEEDED without a call
