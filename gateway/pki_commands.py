"""What ``hutong pki ...`` does: thin commands over :mod:`pki.operator`, printing with rich.

Each command reads its files and passphrases, calls the CA directory, and prints what it
did and what to do next. Failures are :class:`gateway.errors.PkiError` (exit code 3).
Passphrases come from ``--*-passphrase-file`` or, on a terminal, a getpass prompt; never
from the command line, where they would land in the shell history and the process list.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import getpass
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.errors import PkiError
from pki import NodeIdentity, load_certificate, write_pem_private_key
from pki.operator import (
    MIN_PASSPHRASE_LENGTH,
    CaDirectory,
    CertificateKind,
    CertificateRecord,
    CertificateReport,
    CrlReport,
    CsrReport,
    IssuedCertificate,
    Passphrase,
    RevocationReason,
    csr_server_names,
    ensure_absent,
    inspect_file,
    load_csr,
    make_private_dir,
    parse_serial,
    public_key_sha256,
    read_bytes,
    read_passphrase_file,
    write_node_request,
    write_public_pem,
)

__all__ = [
    "STATUSES",
    "duration_arg",
    "pki_crl",
    "pki_csr",
    "pki_expiring",
    "pki_init",
    "pki_inspect",
    "pki_issue",
    "pki_issue_hub",
    "pki_list",
    "pki_renew",
    "pki_revoke",
    "run_pki",
]

#: Values of ``hutong pki list --status``: stored statuses, then states computed from the clock.
STATUSES = ("issued", "revoked", "valid", "expired")

_DURATION = re.compile(r"\s*([0-9]+)\s*([dh])\s*")


def duration_arg(text: str) -> dt.timedelta:
    """An argparse type: ``30d`` (days) or ``12h`` (hours), more than zero."""
    match = _DURATION.fullmatch(text)
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30d or 12h, got {text!r}")
    amount = int(match[1])
    return dt.timedelta(days=amount) if match[2] == "d" else dt.timedelta(hours=amount)


def run_pki(args: argparse.Namespace) -> int:
    """Run the ``hutong pki`` subcommand ``args`` asks for (all but ``quickstart``)."""
    command = args.pki_command
    if command == "init":
        return pki_init(
            args.directory,
            root_passphrase_file=args.root_passphrase_file,
            intermediate_passphrase_file=args.intermediate_passphrase_file,
            root_days=args.root_days,
            intermediate_days=args.intermediate_days,
        )
    if command == "csr":
        return pki_csr(
            province=args.province,
            name=args.name,
            out=args.out,
            dns_names=args.dns or [],
            ip_addresses=args.ip or [],
        )
    if command == "issue":
        return pki_issue(
            args.csr_file,
            ca_dir=args.ca_dir,
            days=args.days,
            out=args.out,
            passphrase_file=args.intermediate_passphrase_file,
            server_names=args.server_names,
        )
    if command == "issue-hub":
        return pki_issue_hub(
            ca_dir=args.ca_dir,
            dns_names=args.dns or [],
            ip_addresses=args.ip or [],
            common_name=args.common_name,
            days=args.days,
            out_dir=args.out_dir,
            passphrase_file=args.intermediate_passphrase_file,
        )
    if command == "renew":
        return pki_renew(
            args.cert_file,
            ca_dir=args.ca_dir,
            csr_file=args.csr,
            days=args.days,
            out=args.out,
            passphrase_file=args.intermediate_passphrase_file,
        )
    if command == "revoke":
        return pki_revoke(
            args.target,
            ca_dir=args.ca_dir,
            reason=RevocationReason(args.reason),
            root_passphrase_file=args.root_passphrase_file,
            root_key=args.root_key,
        )
    if command == "crl":
        return pki_crl(
            ca_dir=args.ca_dir,
            out=args.out,
            next_update_hours=args.next_update_hours,
            passphrase_file=args.intermediate_passphrase_file,
            root=args.root,
            root_passphrase_file=args.root_passphrase_file,
            root_key=args.root_key,
        )
    if command == "list":
        return pki_list(
            ca_dir=args.ca_dir, province=args.province, status=args.status, kind=args.kind, as_json=args.json
        )
    if command == "expiring":
        return pki_expiring(ca_dir=args.ca_dir, within=args.within, as_json=args.json)
    if command == "inspect":
        return pki_inspect(args.file, ca_dir=args.ca_dir, as_json=args.json)
    raise AssertionError(command)  # pragma: no cover - argparse enforces the choices


# --------------------------------------------------------------------------- passphrases


def _prompt(label: str, *, field: str, flag: str, confirm: bool = False) -> bytes:
    """Ask on the terminal; without one, fail naming the flag to use instead."""
    if not sys.stdin.isatty():
        raise PkiError(
            f"the {label} is needed: give {flag} FILE (no terminal to prompt on)",
            reason="PASSPHRASE_REQUIRED",
            field=field,
        )
    try:
        first = getpass.getpass(f"{label}: ")
        if confirm and getpass.getpass(f"{label} (again): ") != first:
            raise PkiError("the two passphrases differ", reason="PASSPHRASE_MISMATCH", field=field)
    except EOFError as exc:
        raise PkiError(f"no {label} was entered", reason="PASSPHRASE_REQUIRED", field=field) from exc
    if not first:
        raise PkiError(f"the {label} is empty", reason="PASSPHRASE_EMPTY", field=field)
    return first.encode("utf-8")


def _intermediate_passphrase(ca: CaDirectory, passphrase_file: Path | None) -> Passphrase:
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file, field="intermediate_passphrase_file")
    if not ca.intermediate_key_is_encrypted():
        return None
    return lambda: _prompt(
        "intermediate CA key passphrase", field="intermediate_passphrase", flag="--intermediate-passphrase-file"
    )


def _root_passphrase(passphrase_file: Path | None) -> Passphrase:
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file, field="root_passphrase_file")
    return lambda: _prompt("root CA key passphrase", field="root_passphrase", flag="--root-passphrase-file")


# --------------------------------------------------------------------------- output


def _out() -> Console:
    return Console(highlight=False)


def _warn(text: str) -> None:
    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {text}")


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _days_left(value: dt.datetime, now: dt.datetime) -> str:
    seconds = (value - now).total_seconds()
    if seconds < 0:
        return "expired"
    if seconds < 86_400:
        return f"{int(seconds // 3600)} h left"
    return f"{int(seconds // 86_400)} d left"


def _json(value: Any) -> str:
    def default(obj: object) -> object:
        if isinstance(obj, dt.datetime):
            return obj.isoformat()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(type(obj).__name__)

    return json.dumps(value, indent=2, default=default, ensure_ascii=False)


def _print_issued(issued: IssuedCertificate, ca: CaDirectory, written: Sequence[Path]) -> None:
    console = _out()
    record = issued.record
    console.print(f"issued [bold]{record.serial}[/] to {escape(record.holder)}, valid until {_when(record.not_after)}")
    for path in written:
        console.print(f"  wrote {escape(str(path))}")
    console.print(
        f"trust anchor for nodes (--ca): {escape(str(ca.root_cert_path))}; for the hub: {escape(str(ca.chain_path))}"
    )
    for other in issued.also_valid:
        _warn(f"{record.holder} also holds {other.serial}, valid until {_when(other.not_after)}")


# --------------------------------------------------------------------------- commands


def pki_init(
    directory: Path,
    *,
    root_passphrase_file: Path | None,
    intermediate_passphrase_file: Path | None,
    root_days: int,
    intermediate_days: int,
) -> int:
    """``hutong pki init DIR``: the offline root, the online intermediate, chain and registry."""
    if root_passphrase_file is not None:
        root_passphrase = read_passphrase_file(root_passphrase_file, field="root_passphrase_file")
    else:
        root_passphrase = _prompt(
            f"new root CA key passphrase (at least {MIN_PASSPHRASE_LENGTH} characters)",
            field="root_passphrase",
            flag="--root-passphrase-file",
            confirm=True,
        )
    intermediate_passphrase = (
        None
        if intermediate_passphrase_file is None
        else read_passphrase_file(intermediate_passphrase_file, field="intermediate_passphrase_file")
    )
    ca = CaDirectory.init(
        directory,
        root_passphrase=root_passphrase,
        intermediate_passphrase=intermediate_passphrase,
        root_days=root_days,
        intermediate_days=intermediate_days,
    )
    root, intermediate = ca.root_certificate(), ca.intermediate_certificate()
    console = _out()
    console.print(f"created the ministry CA in [bold]{escape(str(ca.path))}[/]")
    table = Table(show_header=True)
    for column in ("", "serial", "valid until", "certificate"):
        table.add_column(column, overflow="fold")
    for label, cert, path in (
        ("root CA", root, ca.root_cert_path),
        ("intermediate CA", intermediate, ca.intermediate_cert_path),
    ):
        table.add_row(label, f"{cert.serial_number:x}", _when(cert.not_valid_after_utc), escape(str(path)))
    console.print(table)
    console.print(f"hub trust bundle (--ca): {escape(str(ca.chain_path))}")
    console.print(f"node trust anchor (--ca): {escape(str(ca.root_cert_path))}")
    console.print(
        f"[bold]move {escape(str(ca.root_key_path))} to offline storage now[/]: the root key is needed only "
        "to revoke the intermediate (`hutong pki revoke ... --root-key FILE`)"
    )
    if intermediate_passphrase is None:
        _warn(
            f"the intermediate key {ca.intermediate_key_path} is stored unencrypted (mode 0600): whoever can "
            "read it can issue certificates; give --intermediate-passphrase-file to encrypt it"
        )
    return 0


def pki_csr(
    *, province: str, name: str, out: Path, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()
) -> int:
    """``hutong pki csr``: at the province, a node key (kept) and its CSR (sent to the ministry)."""
    identity = NodeIdentity(province_code=province, node_name=name)
    request = write_node_request(out, identity, dns_names=dns_names, ip_addresses=ip_addresses)
    console = _out()
    console.print(f"node identity: [bold]{identity.uri}[/]")
    if dns_names or ip_addresses:
        console.print(
            f"  asks to serve as: {escape(', '.join([*dns_names, *ip_addresses]))}"
            " (the ministry certifies them with `hutong pki issue --server-names`)"
        )
    console.print(f"  key (stays here, mode 0600): {escape(str(request.key_path))}")
    console.print(f"  CSR (send to the ministry):  {escape(str(request.csr_path))}")
    console.print(
        f"public key SHA-256: {public_key_sha256(request.csr.public_key())}\n"
        "read it to the ministry over another channel; `hutong pki inspect` shows the same value there"
    )
    return 0


def pki_issue(
    csr_file: Path,
    *,
    ca_dir: Path,
    days: int,
    out: Path | None,
    passphrase_file: Path | None,
    server_names: bool = False,
) -> int:
    """``hutong pki issue CSR``: a node certificate from a CSR, written with the intermediate."""
    ca = CaDirectory.open(ca_dir)
    out = out if out is not None else csr_file.with_suffix(".pem")
    ensure_absent(out, field="out")
    csr = _read_csr(csr_file)
    dns_names, ip_addresses = csr_server_names(csr)
    if (dns_names or ip_addresses) and not server_names:
        # Names in a node certificate let it serve TLS under them: the operator confirms them, never by default.
        raise PkiError(
            f"the CSR also asks for the names {', '.join([*dns_names, *ip_addresses])}; check them "
            "(`hutong pki inspect`) and pass --server-names to certify them with the node's identity",
            reason="SERVER_NAMES_UNCONFIRMED",
            field="server_names",
        )
    issued = ca.issue_node(
        csr, passphrase=_intermediate_passphrase(ca, passphrase_file), valid_days=days, server_names=server_names
    )
    write_public_pem(out, issued.chain_pem, field="out")
    _print_issued(issued, ca, [out])
    return 0


def pki_issue_hub(
    *,
    ca_dir: Path,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    common_name: str,
    days: int,
    out_dir: Path,
    passphrase_file: Path | None,
) -> int:
    """``hutong pki issue-hub``: a hub key and certificate with DNS/IP names."""
    ca = CaDirectory.open(ca_dir)
    make_private_dir(out_dir)
    cert_path, key_path = out_dir / "hub.pem", out_dir / "hub.key"
    ensure_absent(cert_path, field="out_dir")
    ensure_absent(key_path, field="out_dir")
    issued = ca.issue_hub(
        dns_names=list(dns_names),
        ip_addresses=list(ip_addresses),
        common_name=common_name,
        passphrase=_intermediate_passphrase(ca, passphrase_file),
        valid_days=days,
    )
    if issued.key is None:  # pragma: no cover - issue_hub always generates the key
        raise AssertionError("issue_hub returned no key")
    write_pem_private_key(key_path, issued.key)
    write_public_pem(cert_path, issued.chain_pem, field="out_dir")
    _print_issued(issued, ca, [cert_path, key_path])
    return 0


def pki_renew(
    cert_file: Path,
    *,
    ca_dir: Path,
    csr_file: Path | None,
    days: int,
    out: Path | None,
    passphrase_file: Path | None,
) -> int:
    """``hutong pki renew CERT``: the same identity again, with the CSR's new key if one is given."""
    ca = CaDirectory.open(ca_dir)
    cert = load_certificate(cert_file)
    if out is None:
        out = (
            csr_file.with_suffix(".pem")
            if csr_file is not None
            else cert_file.with_name(f"{cert_file.stem}-renewed.pem")
        )
    ensure_absent(out, field="out")
    csr = _read_csr(csr_file) if csr_file is not None else None
    issued = ca.renew(cert, csr=csr, passphrase=_intermediate_passphrase(ca, passphrase_file), valid_days=days)
    write_public_pem(out, issued.chain_pem, field="out")
    _print_issued(issued, ca, [out])
    _out().print(f"renews {issued.record.replaces} (linked in the registry); it stays valid until it expires")
    return 0


def pki_revoke(
    target: str,
    *,
    ca_dir: Path,
    reason: RevocationReason,
    root_passphrase_file: Path | None,
    root_key: Path | None,
) -> int:
    """``hutong pki revoke SERIAL|CERT_FILE``: mark revoked; the CRL publishes it."""
    ca = CaDirectory.open(ca_dir)
    path = Path(target)
    which: int | x509.Certificate = load_certificate(path) if path.is_file() else parse_serial(target)
    record = ca.revoke(
        which, reason=reason, root_passphrase=_root_passphrase(root_passphrase_file), root_key_path=root_key
    )
    console = _out()
    console.print(f"revoked [bold]{record.serial}[/] ({escape(record.holder)}): {record.revocation}")
    if record.kind is CertificateKind.INTERMEDIATE:
        console.print(
            f"the root's CRL now lists it: {escape(str(ca.root_crl_path))}; this CA can no longer issue "
            "until a new intermediate replaces it"
        )
    else:
        console.print("publish it: `hutong pki crl --ca-dir ...` (hubs reload the CRL file within seconds)")
    return 0


def pki_crl(
    *,
    ca_dir: Path,
    out: Path | None,
    next_update_hours: int | None,
    passphrase_file: Path | None,
    root: bool,
    root_passphrase_file: Path | None,
    root_key: Path | None,
) -> int:
    """``hutong pki crl``: sign and atomically write the CRL with the next CRL number."""
    ca = CaDirectory.open(ca_dir)
    if root:
        published = ca.publish_root_crl(
            root_passphrase=_root_passphrase(root_passphrase_file),
            root_key_path=root_key,
            out=out,
            next_update=dt.timedelta(hours=24 * 365 if next_update_hours is None else next_update_hours),
        )
    else:
        published = ca.publish_crl(
            passphrase=_intermediate_passphrase(ca, passphrase_file),
            out=out,
            next_update=dt.timedelta(hours=24 if next_update_hours is None else next_update_hours),
        )
    console = _out()
    console.print(
        f"CRL number {published.number} written to {escape(str(published.path))}: "
        f"{len(published.revoked)} revoked, next update {_when(published.crl.next_update_utc)}"
    )
    console.print("publish it again before its next update: hubs warn about a stale CRL")
    return 0


def pki_list(*, ca_dir: Path, province: str | None, status: str | None, kind: str | None, as_json: bool) -> int:
    """``hutong pki list``: every registered certificate, filtered."""
    ca = CaDirectory.open(ca_dir)
    now = dt.datetime.now(dt.UTC)
    kinds = [CertificateKind(kind)] if kind is not None else []
    records = ca.certificates(province=province, status=status, kinds=kinds, now=now)
    filters = ", ".join(f"{k} {v}" for k, v in (("province", province), ("status", status), ("kind", kind)) if v)
    _print_records(records, now=now, title=f"certificates ({filters})" if filters else "certificates", as_json=as_json)
    return 0


def pki_expiring(*, ca_dir: Path, within: dt.timedelta, as_json: bool) -> int:
    """``hutong pki expiring --within 30d``: valid certificates nobody has renewed yet that expire soon."""
    ca = CaDirectory.open(ca_dir)
    now = dt.datetime.now(dt.UTC)
    records = ca.expiring(within, now=now)
    _print_records(records, now=now, title=f"expiring before {_when(now + within)} (not yet renewed)", as_json=as_json)
    return 0


def pki_inspect(file: Path, *, ca_dir: Path | None, as_json: bool) -> int:
    """``hutong pki inspect FILE``: a certificate, CSR or CRL, with registry status given a CA directory."""
    ca = CaDirectory.open(ca_dir) if ca_dir is not None else None
    now = dt.datetime.now(dt.UTC)
    report = inspect_file(file, ca=ca, now=now)
    if as_json:
        kind = {CertificateReport: "certificate", CsrReport: "csr", CrlReport: "crl"}[type(report)]
        print(_json({"type": kind, **dataclasses.asdict(report)}))
        return 0
    console = _out()
    table = Table(show_header=False, title=escape(str(file)))
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for label, value in _report_rows(report, now):
        table.add_row(label, escape(value))
    console.print(table)
    if isinstance(report, CrlReport) and report.entries:
        entries = Table(title=f"revoked certificates ({len(report.entries)})")
        for column in ("serial", "revoked", "reason"):
            entries.add_column(column, overflow="fold")
        for entry in report.entries:
            entries.add_row(entry.serial, _when(entry.revoked_at), entry.reason)
        console.print(entries)
    return 0


# --------------------------------------------------------------------------- helpers


def _read_csr(path: Path) -> x509.CertificateSigningRequest:
    data = read_bytes(path, field="csr_file")
    return load_csr(data, source=str(path), field="csr_file", metadata={"path": str(path)})


def _record_json(record: CertificateRecord, now: dt.datetime) -> dict[str, object]:
    data = dataclasses.asdict(record)
    data.pop("pem")
    data["state"] = record.state(now)
    return data


def _print_records(records: Sequence[CertificateRecord], *, now: dt.datetime, title: str, as_json: bool) -> None:
    if as_json:
        print(_json([_record_json(r, now) for r in records]))
        return
    table = Table(title=title, caption=f"{len(records)} certificate(s)")
    # Serials stay on one line (operators paste them into `revoke`); the rest may fold.
    table.add_column("serial", no_wrap=True, min_width=max((len(r.serial) for r in records), default=6))
    for column in ("kind", "holder", "province", "not after", "status", "renewed as"):
        table.add_column(column, overflow="fold")
    for r in records:
        state = r.state(now)
        status = f"revoked {_when(r.revoked_at)} ({r.reason.value if r.reason else ''})" if r.revoked_at else state
        if state == "valid":
            status = f"valid, {_days_left(r.not_after, now)}"
        table.add_row(
            r.serial,
            r.kind.value,
            escape(r.holder),
            r.province or "",
            _when(r.not_after),
            status,
            r.replaced_by or "",
        )
    _out().print(table)


def _report_rows(report: CertificateReport | CsrReport | CrlReport, now: dt.datetime) -> list[tuple[str, str]]:
    def names(dns: Sequence[str], ips: Sequence[str], uris: Sequence[str]) -> str:
        return ", ".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips), *(f"URI:{u}" for u in uris)])

    if isinstance(report, CsrReport):
        return [
            ("type", "certificate signing request"),
            ("subject", report.subject),
            ("SANs", names(report.dns_names, report.ip_addresses, report.uris)),
            ("node identity", report.node_identity or f"none: {report.identity_problem}"),
            ("signature", "valid" if report.signature_valid else "INVALID"),
            ("key", report.key_type),
            ("public key SHA-256", report.public_key_sha256),
        ]
    if isinstance(report, CrlReport):
        rows = [
            ("type", "certificate revocation list"),
            ("issuer", report.issuer),
            ("CRL number", "" if report.crl_number is None else str(report.crl_number)),
            ("last update", _when(report.last_update)),
            ("next update", _when(report.next_update) + (" (STALE)" if report.stale else "")),
            ("revoked", str(len(report.entries))),
        ]
        if report.signature_valid is not None:
            rows.append(
                ("signature", "valid (signed by this CA)" if report.signature_valid else "NOT signed by this CA")
            )
        return rows
    if report.node_identity is not None:
        identity = report.node_identity
    elif report.identity_problem is not None:
        identity = f"none: {report.identity_problem}"
    else:
        identity = "none (a CA certificate)" if report.is_ca else "none (a hub, named by DNS/IP)"
    rows = [
        ("type", "CA certificate" if report.is_ca else "certificate"),
        ("subject", report.subject),
        ("issuer", report.issuer),
        ("serial", report.serial),
        ("valid", f"{_when(report.not_before)} to {_when(report.not_after)} ({_days_left(report.not_after, now)})"),
        ("SANs", names(report.dns_names, report.ip_addresses, report.uris)),
        ("node identity", identity),
        ("key", report.key_type),
        ("key usage", ", ".join(report.key_usage)),
        ("extended key usage", ", ".join(report.extended_key_usage)),
        ("fingerprint SHA-256", report.fingerprint_sha256),
        ("certificates in file", str(report.certificates_in_file)),
    ]
    if report.registry_status is not None:
        status = report.registry_status
        if report.revocation:
            status += f" {report.revocation}"
        if report.replaced_by:
            status += f", renewed as {report.replaced_by}"
        rows.append(("registry status", status))
    if report.chain_verified is not None:
        rows.append(
            (
                "chain",
                "verifies to this CA's root" if report.chain_verified else f"FAILS: {report.verification_problem}",
            )
        )
    return rows
