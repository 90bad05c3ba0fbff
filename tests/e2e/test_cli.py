"""The ``hutong`` command end to end: real processes, real certificates, loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.demo.population import PopulationSpec, generate_population
from gateway.demo.run import DEMO_NODES
from gateway.errors import Unauthenticated
from gateway.hub.tokens import TokenKeys, TokenService

HUTONG = [sys.executable, "-m", "gateway.cli"]
VALID_ID = "11010519491231002X"


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_demo_runs_the_whole_exchange_and_reports_duplicates(tmp_path: Path) -> None:
    result = run("demo", "--persons", "800", "--data-dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "records synced: 2,472 of 2,472" in out
    assert "replayed=True, original acknowledgement returned: True" in out
    assert "duplicate enrollments found: 72" in out
    assert "closed by the provinces' reports: 1" in out
    assert "(closed=True)" in out
    assert "enrolled=True" in out
    assert "its next call was refused, CLIENT_CERTIFICATE_REVOKED" in out
    assert "hub stopped gracefully (exit code 0)" in out
    assert "exchange log: " in out
    assert "consistently" in out
    assert "verify it offline" in out or "verified it offline" in out
    verified = run(
        "audit", "verify", str(tmp_path / "demo" / "audit-export"), "--ca", str(tmp_path / "demo" / "pki" / "ca.pem"),
        cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    # Neither the hub's log nor its database carries a raw ID number or name.
    population = generate_population(
        PopulationSpec(provinces=tuple(code for code, _ in DEMO_NODES), persons_per_province=800)
    )
    records = [r for rs in population.by_province.values() for r in rs]
    mover = population.movers[0]
    assert f"CheckEnrollment({mover[:6]}********{mover[-4:]}" in out  # the same population as the demo
    log = (tmp_path / "demo" / "hub.log").read_text()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "demo" / "hub").glob("hub.sqlite3*"))
    assert records
    for record in records:
        assert record.id_number not in log
        assert record.id_number.encode() not in stored
        if len(record.name) > 1:
            assert record.name.encode() not in stored


def test_demo_refuses_a_directory_that_already_holds_one(tmp_path: Path) -> None:
    (tmp_path / "demo" / "pki").mkdir(parents=True)
    result = run("demo", "--persons", "10", "--data-dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 3
    assert "DEMO_DIR_NOT_EMPTY" in result.stderr


@pytest.fixture
def served_hub(serve_hub: Callable[..., tuple[Path, int]]) -> tuple[Path, int]:
    return serve_hub()


def node_tls(certs: Path) -> list[str]:
    node = certs / "nodes" / "440000-gd-gz-01"
    return ["--cert", f"{node}.pem", "--key", f"{node}.key", "--ca", str(certs / "ca.pem")]


def test_query_check_answers_from_a_served_hub(served_hub: tuple[Path, int], tmp_path: Path) -> None:
    certs, port = served_hub
    args = ["query", "check", "--hub", f"localhost:{port}", "--id", VALID_ID, "--purpose", "duplicate-check"]
    result = run(*args, "--program", "dibao", *node_tls(certs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dibao" in result.stdout
    assert "no" in result.stdout


def test_query_with_a_bad_check_character_exits_4_naming_the_field(
    served_hub: tuple[Path, int], tmp_path: Path
) -> None:
    certs, port = served_hub
    bad = VALID_ID[:-1] + "1"
    args = ["query", "lookup", "--hub", f"localhost:{port}", "--id", bad, "--purpose", "audit"]
    result = run(*args, *node_tls(certs), cwd=tmp_path)
    assert result.returncode == 4
    assert "id_number" in result.stderr
    assert "ID_NUMBER_BAD_CHECK_CHARACTER" in result.stderr
    assert bad not in result.stderr


def test_query_without_tls_material_exits_3(tmp_path: Path) -> None:
    result = run("query", "check", "--hub", "localhost:1", "--id", VALID_ID, "--purpose", "audit", cwd=tmp_path)
    assert result.returncode == 3
    assert "--cert" in result.stderr


def test_hub_serve_refuses_to_start_without_certificates(tmp_path: Path) -> None:
    result = run("hub", "serve", "--data-dir", str(tmp_path / "hub"), "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 3
    assert "TLS_MISSING" in result.stderr


def test_insecure_hub_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    args = ["hub", "serve", "--data-dir", str(tmp_path / "hub"), "--listen", "0.0.0.0:0", "--insecure"]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 3
    assert "INSECURE_NOT_LOOPBACK" in result.stderr


def test_id_check_proposes_the_original_for_a_typo(tmp_path: Path) -> None:
    result = run("id", "check", VALID_ID[:-1] + "1", cwd=tmp_path)
    assert result.returncode == 4
    assert VALID_ID in result.stdout
    ok = run("id", "check", VALID_ID.lower(), cwd=tmp_path)
    assert ok.returncode == 0
    assert "born 1949-12-31, female" in ok.stdout


def test_hub_jwks_and_key_rotation_from_the_command_line(served_hub: tuple[Path, int], tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    before = run("hub", "jwks", "--data-dir", str(data_dir), cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    kids = [k["kid"] for k in json.loads(before.stdout)["keys"]]
    assert len(kids) == 1
    rotated = run("hub", "rotate-token-key", "--data-dir", str(data_dir), cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    after = json.loads(run("hub", "jwks", "--data-dir", str(data_dir), cwd=tmp_path).stdout)
    assert after["keys"][0]["kid"] == kids[0]
    assert len(after["keys"]) == 2
    assert all(k["kty"] == "EC" and k["alg"] == "ES256" for k in after["keys"])
    missing = run("hub", "jwks", "--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 3


def test_a_console_token_from_the_command_line_logs_in_to_the_console_only(
    served_hub: tuple[Path, int], tmp_path: Path
) -> None:
    data_dir = tmp_path / "hub"
    made = run(
        "hub", "console-token", "--data-dir", str(data_dir), "--subject", "auditor:li.na", "--role", "audit:read",
        "--hours", "2", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    tokens = TokenService(TokenKeys.load_or_create(data_dir))
    claims = tokens.verify_console(made.stdout.strip())
    assert (claims.subject, claims.scopes, claims.thumbprint) == ("auditor:li.na", frozenset({"audit:read"}), None)
    assert 7190 < claims.expires_at - time.time() <= 7200
    with pytest.raises(Unauthenticated):
        tokens.verify(made.stdout.strip(), None)  # not an API token
    too_long = run(
        "hub", "console-token", "--data-dir", str(data_dir), "--subject", "x", "--role", "admin", "--hours", "48",
        cwd=tmp_path,
    )  # fmt: skip
    assert too_long.returncode == 3
    assert "--hours must be above 0 and at most 24" in too_long.stderr
    node = run(
        "hub", "console-token", "--data-dir", str(data_dir), "--subject", "hutong://province/440000/node/gz-01",
        "--role", "admin", cwd=tmp_path,
    )  # fmt: skip
    assert node.returncode == 3
    bad_role = run(
        "hub", "console-token", "--data-dir", str(data_dir), "--subject", "x", "--role", "root", cwd=tmp_path
    )
    assert bad_role.returncode == 2
