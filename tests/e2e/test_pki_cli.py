"""``hutong pki`` end to end: real processes, real files, passphrases from files, no terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HUTONG = [sys.executable, "-m", "gateway.cli"]
VALID_ID = "11010519491231002X"
ROOT_PASS = "root passphrase, kept offline"
INTERMEDIATE_PASS = "intermediate passphrase"


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # stdin is never a terminal here, so no command can sit waiting at a passphrase prompt.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*HUTONG, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def ok(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = run(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "root.pass").write_text(ROOT_PASS + "\n")
    (tmp_path / "intermediate.pass").write_text(INTERMEDIATE_PASS + "\n")
    for name in ("root.pass", "intermediate.pass"):
        (tmp_path / name).chmod(0o600)
    return tmp_path


@pytest.fixture
def ca(workdir: Path) -> Path:
    """``hutong pki init ca`` with both passphrases from files."""
    ok(
        "pki", "init", "ca",
        "--root-passphrase-file", "root.pass", "--intermediate-passphrase-file", "intermediate.pass",
        cwd=workdir,
    )  # fmt: skip
    return workdir / "ca"


def issue_node(workdir: Path, province: str, name: str, *extra: str) -> Path:
    """csr at the province, issue at the ministry; returns the certificate chain file."""
    ok("pki", "csr", "--province", province, "--name", name, "--out", "province", cwd=workdir)
    csr = f"province/{province}-{name}.csr"
    ok(
        "pki",
        "issue",
        csr,
        "--ca-dir",
        "ca",
        "--intermediate-passphrase-file",
        "intermediate.pass",
        *extra,
        cwd=workdir,
    )
    return workdir / "province" / f"{province}-{name}.pem"


def test_init_csr_issue_revoke_crl_list_with_passphrase_files(ca: Path, workdir: Path) -> None:
    assert sorted(p.name for p in ca.iterdir()) == [
        ".lock", "ca-chain.pem", "intermediate.key", "intermediate.pem", "offline", "registry.sqlite3", "root.pem",
    ]  # fmt: skip
    assert (ca / "offline" / "root.key").stat().st_mode & 0o777 == 0o600

    gz = issue_node(workdir, "440000", "gz-01")
    zz = issue_node(workdir, "410000", "zz-01", "--days", "20")
    for chain in (gz, zz):
        assert chain.read_text().count("BEGIN CERTIFICATE") == 2  # leaf + intermediate
    assert (workdir / "province" / "440000-gz-01.key").stat().st_mode & 0o777 == 0o600

    listed = as_json(ok("pki", "list", "--ca-dir", "ca", "--json", cwd=workdir))
    assert sorted(r["kind"] for r in listed) == ["intermediate", "node", "node", "root"]
    gz_record = next(r for r in listed if r["node_uri"] == "hutong://province/440000/node/gz-01")
    assert gz_record["province"] == "440000"
    assert gz_record["status"] == "issued"
    assert len(gz_record["fingerprint_sha256"]) == 64

    revoked = ok("pki", "revoke", str(gz), "--ca-dir", "ca", "--reason", "key-compromise", cwd=workdir)
    assert gz_record["serial"] in revoked.stdout
    crl = ok("pki", "crl", "--ca-dir", "ca", "--intermediate-passphrase-file", "intermediate.pass", cwd=workdir)
    assert "CRL number 1" in crl.stdout

    inspected = as_json(ok("pki", "inspect", "ca/crl.pem", "--ca-dir", "ca", "--json", cwd=workdir))
    assert inspected["type"] == "crl"
    assert inspected["crl_number"] == 1
    assert inspected["signature_valid"] is True
    assert [(e["serial"], e["reason"]) for e in inspected["entries"]] == [(gz_record["serial"], "key-compromise")]

    ok("pki", "crl", "--ca-dir", "ca", "--intermediate-passphrase-file", "intermediate.pass", cwd=workdir)
    again = as_json(ok("pki", "inspect", "ca/crl.pem", "--json", cwd=workdir))
    assert again["crl_number"] == 2

    only_revoked = as_json(ok("pki", "list", "--ca-dir", "ca", "--status", "revoked", "--json", cwd=workdir))
    assert [r["serial"] for r in only_revoked] == [gz_record["serial"]]
    assert only_revoked[0]["reason"] == "key-compromise"
    henan = as_json(ok("pki", "list", "--ca-dir", "ca", "--province", "410000", "--json", cwd=workdir))
    assert [r["node_uri"] for r in henan] == ["hutong://province/410000/node/zz-01"]

    expiring = as_json(ok("pki", "expiring", "--ca-dir", "ca", "--within", "30d", "--json", cwd=workdir))
    assert [r["node_uri"] for r in expiring] == ["hutong://province/410000/node/zz-01"]
    assert as_json(ok("pki", "expiring", "--ca-dir", "ca", "--within", "12h", "--json", cwd=workdir)) == []

    table = ok("pki", "list", "--ca-dir", "ca", cwd=workdir).stdout
    assert gz_record["serial"] in table
    assert "revoked" in table
    assert "hutong://province/410000/node/zz-01" in table


def test_init_without_a_passphrase_file_and_without_a_terminal_exits_3(workdir: Path) -> None:
    result = run("pki", "init", "ca", cwd=workdir)

    assert result.returncode == 3
    assert "PASSPHRASE_REQUIRED" in result.stderr
    assert "--root-passphrase-file" in result.stderr
    assert not (workdir / "ca").exists()


def test_init_with_a_short_root_passphrase_exits_3(workdir: Path) -> None:
    (workdir / "short.pass").write_text("too short\n")

    result = run("pki", "init", "ca", "--root-passphrase-file", "short.pass", cwd=workdir)

    assert result.returncode == 3
    assert "PASSPHRASE_TOO_SHORT" in result.stderr


def test_init_refuses_to_overwrite_a_ca_directory(ca: Path, workdir: Path) -> None:
    before = (ca / "intermediate.key").read_bytes()

    result = run("pki", "init", "ca", "--root-passphrase-file", "root.pass", cwd=workdir)

    assert result.returncode == 3
    assert "FILE_EXISTS" in result.stderr
    assert (ca / "intermediate.key").read_bytes() == before


def test_init_without_intermediate_passphrase_warns_that_its_key_is_unencrypted(workdir: Path) -> None:
    result = ok("pki", "init", "ca", "--root-passphrase-file", "root.pass", cwd=workdir)

    assert "unencrypted" in result.stderr
    assert "offline" in result.stdout
    ok("pki", "csr", "--province", "440000", "--name", "gz-01", "--out", "province", cwd=workdir)
    ok("pki", "issue", "province/440000-gz-01.csr", "--ca-dir", "ca", cwd=workdir)


def test_csr_for_an_unknown_province_exits_3_naming_the_field(workdir: Path) -> None:
    result = run("pki", "csr", "--province", "990000", "--name", "x-01", "--out", "province", cwd=workdir)

    assert result.returncode == 3
    assert "PROVINCE_UNKNOWN" in result.stderr
    assert "province_code" in result.stderr
    assert not (workdir / "province").exists()


def test_issue_with_a_wrong_intermediate_passphrase_exits_3(ca: Path, workdir: Path) -> None:
    ok("pki", "csr", "--province", "440000", "--name", "gz-01", "--out", "province", cwd=workdir)
    (workdir / "wrong.pass").write_text("not the intermediate passphrase\n")

    args = ["pki", "issue", "province/440000-gz-01.csr", "--ca-dir", "ca"]
    wrong = run(*args, "--intermediate-passphrase-file", "wrong.pass", cwd=workdir)
    missing = run(*args, cwd=workdir)

    assert wrong.returncode == 3
    assert "PASSPHRASE_WRONG" in wrong.stderr
    assert "intermediate_passphrase" in wrong.stderr
    assert missing.returncode == 3
    assert "PASSPHRASE_REQUIRED" in missing.stderr
    assert not (workdir / "province" / "440000-gz-01.pem").exists()


def test_revoking_the_intermediate_with_a_wrong_root_passphrase_exits_3(ca: Path, workdir: Path) -> None:
    (workdir / "wrong.pass").write_text("not the root passphrase at all\n")

    result = run(
        "pki", "revoke", "ca/intermediate.pem", "--ca-dir", "ca", "--reason", "ca-compromise",
        "--root-passphrase-file", "wrong.pass",
        cwd=workdir,
    )  # fmt: skip

    assert result.returncode == 3
    assert "PASSPHRASE_WRONG" in result.stderr
    assert "root_passphrase" in result.stderr


def test_renew_with_a_new_key_keeps_the_node_and_refuses_another(ca: Path, workdir: Path) -> None:
    gz = issue_node(workdir, "440000", "gz-01")
    for province, name in (("440000", "gz-01"), ("410000", "zz-01")):
        ok("pki", "csr", "--province", province, "--name", name, "--out", "rekey", cwd=workdir)
    args = ["pki", "renew", str(gz), "--ca-dir", "ca", "--intermediate-passphrase-file", "intermediate.pass"]

    refused = run(*args, "--csr", "rekey/410000-zz-01.csr", cwd=workdir)
    renewed = run(*args, "--csr", "rekey/440000-gz-01.csr", cwd=workdir)

    assert refused.returncode == 3
    assert "IDENTITY_MISMATCH" in refused.stderr
    assert renewed.returncode == 0, renewed.stderr
    new = as_json(ok("pki", "inspect", "rekey/440000-gz-01.pem", "--ca-dir", "ca", "--json", cwd=workdir))
    old = as_json(ok("pki", "inspect", str(gz), "--ca-dir", "ca", "--json", cwd=workdir))
    assert new["node_identity"] == old["node_identity"] == "hutong://province/440000/node/gz-01"
    assert new["chain_verified"] is True
    assert old["replaced_by"] == new["serial"]


def test_expiring_with_a_bad_duration_is_a_usage_error(ca: Path, workdir: Path) -> None:
    result = run("pki", "expiring", "--ca-dir", "ca", "--within", "30", cwd=workdir)

    assert result.returncode == 2
    assert "30d or 12h" in result.stderr


def test_commands_on_a_directory_that_is_no_ca_exit_3(workdir: Path) -> None:
    result = run("pki", "list", "--ca-dir", "nowhere", cwd=workdir)

    assert result.returncode == 3
    assert "FILE_MISSING" in result.stderr
    assert "hutong pki init" in result.stderr


def test_inspect_of_a_csr_shows_identity_and_key_fingerprint(workdir: Path) -> None:
    made = ok("pki", "csr", "--province", "440000", "--name", "gz-01", "--out", "province", cwd=workdir)

    shown = ok("pki", "inspect", "province/440000-gz-01.csr", cwd=workdir).stdout

    assert "certificate signing request" in shown
    assert "hutong://province/440000/node/gz-01" in shown
    fingerprint = next(line.split()[-1] for line in made.stdout.splitlines() if "SHA-256" in line)
    assert fingerprint in shown


def test_quickstart_still_makes_a_throwaway_pki(workdir: Path) -> None:
    ok("pki", "quickstart", "demo", "--node", "440000/gz-01", cwd=workdir)

    assert (workdir / "demo" / "nodes" / "440000-gz-01.pem").is_file()


def test_a_hub_serves_ca_directory_certificates_and_cuts_off_a_revoked_node(ca: Path, workdir: Path) -> None:
    gz = issue_node(workdir, "440000", "gz-01")
    ok(
        "pki", "issue-hub", "--ca-dir", "ca", "--dns", "localhost", "--ip", "127.0.0.1", "--out-dir", "hub-tls",
        "--intermediate-passphrase-file", "intermediate.pass",
        cwd=workdir,
    )  # fmt: skip
    ok("pki", "crl", "--ca-dir", "ca", "--intermediate-passphrase-file", "intermediate.pass", cwd=workdir)
    port_file = workdir / "hub.port"
    log = (workdir / "hub.log").open("wb")
    hub = subprocess.Popen(
        [
            *HUTONG, "hub", "serve", "--data-dir", str(workdir / "hub"), "--listen", "127.0.0.1:0",
            "--cert", "hub-tls/hub.pem", "--key", "hub-tls/hub.key", "--ca", "ca/ca-chain.pem",
            "--crl", "ca/crl.pem", "--port-file", str(port_file),
        ],
        cwd=workdir,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert hub.poll() is None, (workdir / "hub.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = port_file.read_text().strip()
        query = [
            "query", "check", "--hub", f"localhost:{port}", "--id", VALID_ID, "--purpose", "duplicate-check",
            "--cert", str(gz), "--key", "province/440000-gz-01.key", "--ca", "ca/root.pem",
        ]  # fmt: skip

        assert run(*query, cwd=workdir).returncode == 0

        ok("pki", "revoke", str(gz), "--ca-dir", "ca", "--reason", "key-compromise", cwd=workdir)
        ok("pki", "crl", "--ca-dir", "ca", "--intermediate-passphrase-file", "intermediate.pass", cwd=workdir)
        deadline = time.monotonic() + 30
        while (refused := run(*query, cwd=workdir)).returncode == 0:
            assert time.monotonic() < deadline, "the hub never applied the new CRL"
            time.sleep(0.5)
        assert refused.returncode == 4
        assert "REVOKED" in refused.stderr
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
        log.close()
