"""``hutong audit ...`` end to end: a real hub process, real certificates, the exchange log on disk."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HUTONG = [sys.executable, "-m", "gateway.cli"]
VALID_ID = "11010519491231002X"
NODE = "hutong://province/440000/node/gd-gz-01"
POLICY = f"""\
[nodes."{NODE}"]
scopes = ["records:write", "query:enrollment", "audit:read"]
"""


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def served_hub(serve_hub: Callable[..., tuple[Path, int]], tmp_path: Path) -> tuple[Path, int]:
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    return serve_hub("--policy", str(tmp_path / "policy.toml"), "--checkpoint-seconds", "0.2")


def node_tls(certs: Path) -> list[str]:
    node = certs / "nodes" / "440000-gd-gz-01"
    return ["--cert", f"{node}.pem", "--key", f"{node}.key", "--ca", str(certs / "ca.pem")]


def ask(certs: Path, port: int, cwd: Path) -> None:
    args = ["query", "check", "--hub", f"localhost:{port}", "--id", VALID_ID, "--purpose", "duplicate-check"]
    result = run(*args, *node_tls(certs), cwd=cwd)
    assert result.returncode == 0, result.stderr


def test_watch_show_and_prove_against_a_served_hub(served_hub: tuple[Path, int], tmp_path: Path) -> None:
    certs, port = served_hub
    hub = ["--hub", f"localhost:{port}", *node_tls(certs)]
    state = tmp_path / "node" / "checkpoint.note"

    first = run("audit", "watch", "--state", str(state), *hub, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "first checkpoint of localhost/hutong-audit remembered" in first.stdout
    remembered = state.read_text()

    ask(certs, port, tmp_path)
    deadline = time.monotonic() + 30
    while True:  # until the hub has signed a checkpoint covering the query
        again = run("audit", "watch", "--state", str(state), *hub, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        if state.read_text() != remembered:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "consistent" in again.stdout

    shown = run("audit", "show", "--method", "CheckEnrollment", *hub, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "CheckEnrollment" in shown.stdout
    assert "duplicate-check" in shown.stdout
    assert VALID_ID not in shown.stdout  # persons appear as keys only

    proved = run("audit", "prove", "--entry", "0", *hub, cwd=tmp_path)
    assert proved.returncode == 0, proved.stderr
    assert "entry 0 is in the log localhost/hutong-audit" in proved.stdout
    beyond = run("audit", "prove", "--entry", "100000", *hub, cwd=tmp_path)
    assert beyond.returncode == 4
    assert "INDEX_INVALID" in beyond.stderr or "index" in beyond.stderr


def test_export_verify_and_tamper_detection(
    serve_hub: Callable[..., tuple[Path, int]], hub_args: list[str], tmp_path: Path
) -> None:
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    certs, port = serve_hub(*hub_args, "--policy", str(tmp_path / "policy.toml"), "--checkpoint-seconds", "0.2")
    for _ in range(3):
        ask(certs, port, tmp_path)
    time.sleep(0.5)  # a checkpoint covers the queries
    out = tmp_path / "audit"
    exported = run("audit", "export", *hub_args, "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "exported" in exported.stdout

    verified = run("audit", "verify", str(out), "--ca", str(certs / "ca.pem"), cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "verified" in verified.stdout
    assert run("audit", "verify", str(out), cwd=tmp_path).returncode == 3  # no trust anchor given

    shown = run("audit", "show", "--export", str(out), "--purpose", "duplicate-check", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("CheckEnrollment") == 3

    segment = next((out / "entries").iterdir())
    lines = gzip.decompress(segment.read_bytes()).split(b"\n")
    edited = next(i for i, line in enumerate(lines) if b"CheckEnrollment" in line)
    lines[edited] = lines[edited].replace(b"duplicate-check", b"eligibility-review")
    segment.write_bytes(gzip.compress(b"\n".join(lines)))
    tampered = run("audit", "verify", str(out), "--ca", str(certs / "ca.pem"), cwd=tmp_path)
    assert tampered.returncode == 4
    assert f"entry {edited}" in tampered.stderr
