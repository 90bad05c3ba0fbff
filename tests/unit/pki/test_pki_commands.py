"""The ``hutong pki`` command layer: passphrase sources and prompts, durations, output files."""

from __future__ import annotations

import argparse
import datetime as dt
import io
from pathlib import Path

import pytest

from gateway import pki_commands
from gateway.errors import PkiError
from pki.operator import CaDirectory

ROOT_PASS = "root passphrase, offline"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _answers(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Pretend stdin is a terminal and getpass returns ``answers`` in turn; returns the prompts shown."""
    prompts: list[str] = []
    queue = list(answers)

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr(pki_commands.sys, "stdin", _Terminal())
    monkeypatch.setattr(pki_commands.getpass, "getpass", fake_getpass)
    return prompts


def _init(
    directory: Path, *, root_passphrase_file: Path | None = None, intermediate_passphrase_file: Path | None = None
) -> int:
    return pki_commands.pki_init(
        directory,
        root_passphrase_file=root_passphrase_file,
        intermediate_passphrase_file=intermediate_passphrase_file,
        root_days=3650,
        intermediate_days=1825,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", dt.timedelta(days=30)), ("12h", dt.timedelta(hours=12)), (" 7d ", dt.timedelta(days=7))],
)
def test_durations_are_days_or_hours(text: str, expected: dt.timedelta) -> None:
    assert pki_commands.duration_arg(text) == expected


@pytest.mark.parametrize("text", ["30", "0d", "3w", "-1d", "1.5d", "d"])
def test_other_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        pki_commands.duration_arg(text)


def test_init_prompts_twice_for_the_root_passphrase_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prompts = _answers(monkeypatch, ROOT_PASS, ROOT_PASS)

    assert _init(tmp_path / "ca") == 0

    assert len(prompts) == 2
    assert "root" in prompts[0]
    ca = CaDirectory.open(tmp_path / "ca")
    assert ca.load_root(ROOT_PASS.encode()).cert == ca.root_certificate()


def test_init_refuses_two_different_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _answers(monkeypatch, ROOT_PASS, ROOT_PASS + "x")

    with pytest.raises(PkiError) as exc_info:
        _init(tmp_path / "ca")

    assert exc_info.value.reason == "PASSPHRASE_MISMATCH"
    assert not (tmp_path / "ca").exists()


def test_init_without_a_terminal_or_a_file_is_passphrase_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pki_commands.sys, "stdin", io.StringIO())

    with pytest.raises(PkiError) as exc_info:
        _init(tmp_path / "ca")

    assert exc_info.value.reason == "PASSPHRASE_REQUIRED"
    assert "--root-passphrase-file" in exc_info.value.message


def test_passphrase_files_lose_their_trailing_newline_only(tmp_path: Path) -> None:
    (tmp_path / "root.pass").write_bytes(b"  spaced root passphrase  \r\n")

    assert _init(tmp_path / "ca", root_passphrase_file=tmp_path / "root.pass") == 0

    CaDirectory.open(tmp_path / "ca").load_root(b"  spaced root passphrase  ")


def test_an_empty_passphrase_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"\n")

    with pytest.raises(PkiError) as exc_info:
        _init(tmp_path / "ca", root_passphrase_file=tmp_path / "empty")

    assert exc_info.value.reason == "PASSPHRASE_EMPTY"
    assert exc_info.value.field == "root_passphrase_file"


def test_the_intermediate_passphrase_is_asked_only_after_the_csr_passed_its_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "root.pass").write_text(ROOT_PASS)
    (tmp_path / "int.pass").write_text("intermediate passphrase")
    _init(
        tmp_path / "ca", root_passphrase_file=tmp_path / "root.pass", intermediate_passphrase_file=tmp_path / "int.pass"
    )
    (tmp_path / "garbage.csr").write_text("not a CSR")
    prompts = _answers(monkeypatch, "intermediate passphrase")

    with pytest.raises(PkiError) as exc_info:
        pki_commands.pki_issue(
            tmp_path / "garbage.csr", ca_dir=tmp_path / "ca", days=90, out=None, passphrase_file=None
        )
    assert exc_info.value.reason == "CSR_INVALID"
    assert prompts == []

    pki_commands.pki_csr(province="440000", name="gz-01", out=tmp_path / "province")
    csr = tmp_path / "province" / "440000-gz-01.csr"
    assert pki_commands.pki_issue(csr, ca_dir=tmp_path / "ca", days=90, out=None, passphrase_file=None) == 0
    assert len(prompts) == 1
    assert (tmp_path / "province" / "440000-gz-01.pem").is_file()


def test_issue_refuses_an_existing_output_before_signing_anything(tmp_path: Path) -> None:
    (tmp_path / "root.pass").write_text(ROOT_PASS)
    _init(tmp_path / "ca", root_passphrase_file=tmp_path / "root.pass")
    pki_commands.pki_csr(province="440000", name="gz-01", out=tmp_path / "province")
    existing = tmp_path / "province" / "440000-gz-01.pem"
    existing.write_text("keep me")

    with pytest.raises(PkiError) as exc_info:
        pki_commands.pki_issue(
            tmp_path / "province" / "440000-gz-01.csr", ca_dir=tmp_path / "ca", days=90, out=None, passphrase_file=None
        )

    assert exc_info.value.reason == "FILE_EXISTS"
    assert existing.read_text() == "keep me"
    assert len(CaDirectory.open(tmp_path / "ca").certificates()) == 2  # root and intermediate only


def test_issue_hub_creates_its_output_directory_privately(tmp_path: Path) -> None:
    (tmp_path / "root.pass").write_text(ROOT_PASS)
    _init(tmp_path / "ca", root_passphrase_file=tmp_path / "root.pass")

    code = pki_commands.pki_issue_hub(
        ca_dir=tmp_path / "ca",
        dns_names=["hub.example"],
        ip_addresses=["10.0.0.1"],
        common_name="hutong-hub",
        days=30,
        out_dir=tmp_path / "hub",
        passphrase_file=None,
    )

    assert code == 0
    assert (tmp_path / "hub").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "hub" / "hub.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "hub" / "hub.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 2
