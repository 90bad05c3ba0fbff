"""What the small CLI subcommands do: queries against a hub, quick certificates, ID checks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.client import HubClient
from gateway.domain import identity
from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.model import Program, Purpose
from gateway.errors import ConfigError, HutongError
from gateway.hub.tokens import CONSOLE_AUDIENCE, TOKEN_KEYS_FILE, TokenKeys, TokenService
from hutong.v1 import node_pb2, person_pb2, query_pb2
from pki import TlsMaterial, write_demo_pki

__all__ = ["id_check", "issue_console_token", "pki_quickstart", "print_jwks", "rotate_token_key", "run_query"]


def _province(code: str) -> str:
    return f"{code} {PROVINCE_CODES.get(code, '')}".strip()


async def run_query(
    kind: str,
    *,
    hub: str,
    id_number: str,
    purpose: int,
    programs: Sequence[int],
    tls: TlsMaterial,
    server_name: str | None,
    province_code: str = "",
    as_json: bool = False,
) -> int:
    """``hutong query check|lookup|detail``: print the hub's answer."""
    console = Console()
    async with HubClient(hub, tls=tls, server_name=server_name) as client:
        if kind == "detail":
            details = await client.fetch_record_detail(id_number, Purpose(purpose), province_code=province_code)
            if as_json:
                print(json_format.MessageToJson(details, indent=2, ensure_ascii=False))
            else:
                _print_details(console, details, Purpose(purpose))
            # A partial answer is an answer (exit 0); when no province's node answered, exit 5 (unreachable).
            return 0 if details.details or not details.failures else 5
        if kind == "check":
            answer = await client.check_enrollment(id_number, Purpose(purpose), [Program(p) for p in programs])
            table = Table(title="CheckEnrollment")
            table.add_column("programme")
            table.add_column("enrolled")
            table.add_column("holding provinces")
            for r in answer.results:
                table.add_row(
                    Program(r.program).name.lower(),
                    "yes" if r.enrolled else "no",
                    ", ".join(_province(p) for p in r.province_codes),
                )
            console.print(table)
            return 0
        page_token = ""
        table = Table(title=f"LookupPerson (purpose: {Purpose(purpose).name.lower()})")
        for column in ("province", "programme", "status", "since", "until", "monthly (yuan)", "record"):
            table.add_column(column)
        findings: list[query_pb2.DuplicateEnrollmentFinding] = []
        disclosed: Sequence[str] = ()
        while True:
            page = await client.lookup_person(id_number, Purpose(purpose), page_token=page_token)
            disclosed = list(page.disclosed_fields)
            findings.extend(page.findings)
            for e in page.enrollments:
                en = e.enrollment
                table.add_row(
                    _province(e.province_code),
                    Program(en.program).name.lower(),
                    ("active", "suspended", "exited", "deceased")[en.status - 1] if en.status else "",
                    _date(en.start_date) if en.HasField("start_date") else "",
                    _date(en.end_date) if en.HasField("end_date") else "",
                    f"{en.monthly_amount_fen / 100:.2f}" if "monthly_amount_fen" in disclosed else "",
                    e.record_id,
                )
            page_token = page.next_page_token
            if not page_token:
                break
        console.print(table)
        console.print("disclosed for this purpose: " + ", ".join(disclosed))
        for f in findings:
            state = "OPEN" if f.status == 1 else "resolved"
            console.print(
                f"[bold red]duplicate enrollment[/] {Program(f.program).name.lower()} in "
                + " and ".join(_province(p) for p in f.province_codes)
                + f" ({state}, finding {f.finding_id})"
            )
    return 0


def _date(d: person_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


_STATUSES = ("active", "suspended", "exited", "deceased")
_FAILURES = {
    query_pb2.DETAIL_FAILURE_REASON_NODE_UNAVAILABLE: "node unavailable",
    query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED: "deadline exceeded",
    query_pb2.DETAIL_FAILURE_REASON_NODE_REFUSED: "node refused",
    query_pb2.DETAIL_FAILURE_REASON_NODE_NOT_REGISTERED: "no node registered",
    query_pb2.DETAIL_FAILURE_REASON_RECORD_NOT_FOUND: "record not found at the node",
}


def _detail_table(detail: node_pb2.RecordDetail) -> Table:
    """One record detail as a two-column table of the fields disclosed."""
    r = detail.record
    table = Table(title=f"{_province(detail.province_code)} — {detail.node_uri}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    shown = set(detail.disclosed_fields)
    for name, value in (
        ("record_id", r.record_id),
        ("version", str(r.version) if r.version else ""),
        ("id_number", r.id_number),
        ("name", r.name),
        ("gender", ("", "male", "female")[r.gender] if r.gender in (0, 1, 2) else str(r.gender)),
        ("birth_date", _date(r.birth_date) if r.HasField("birth_date") else ""),
        ("hukou_division", r.hukou_division),
        ("residence_division", r.residence_division),
        ("household_id", r.household_id),
        ("updated_at", r.updated_at.ToJsonString() if r.HasField("updated_at") else ""),
        ("source", f"{detail.source.file} {detail.source.location}" if detail.HasField("source") else ""),
        ("exported_at", detail.exported_at.ToJsonString() if detail.HasField("exported_at") else ""),
    ):
        if name in shown and value:
            table.add_row(name, value)
    for e in r.enrollments:
        parts = [Program(e.program).name.lower(), _STATUSES[e.status - 1] if e.status else ""]
        if e.HasField("start_date"):
            parts.append("since " + _date(e.start_date))
        if e.HasField("end_date"):
            parts.append("until " + _date(e.end_date))
        if "enrollments.monthly_amount_fen" in shown:
            parts.append(f"{e.monthly_amount_fen / 100:.2f} yuan/month")
        table.add_row("enrollment", " ".join(p for p in parts if p) + f" ({e.granting_division})")
    for key in sorted(detail.attributes):
        table.add_row(key, detail.attributes[key])
    return table


def _print_details(console: Console, answer: query_pb2.FetchRecordDetailResponse, purpose: Purpose) -> None:
    console.print(f"FetchRecordDetail (purpose: {purpose.name.lower()})")
    for detail in answer.details:
        console.print(_detail_table(detail))
    for f in answer.failures:
        console.print(
            f"[bold red]{_province(f.province_code)}[/]: {_FAILURES.get(f.reason, 'failed')} — {escape(f.message)}"
        )


def pki_quickstart(directory: Path, nodes: Sequence[str]) -> int:
    """``hutong pki quickstart``: a throwaway CA, hub and node certificates."""
    provinces = []
    for spec in nodes:
        province, sep, name = spec.partition("/")
        if not sep:
            raise ConfigError(f"--node expects PROVINCE/NAME, got {spec!r}", reason="NODE_SPEC_INVALID", field="node")
        provinces.append((province, name))
    made = write_demo_pki(directory, provinces=provinces)
    console = Console()
    console.print(f"CA:  {made.ca_cert_path}")
    console.print(f"hub: {made.hub_cert_path}  {made.hub_key_path}")
    for uri, creds in made.nodes.items():
        console.print(f"node {uri}: {creds.cert_path}  {creds.key_path}")
    console.print("[yellow]throwaway CA: its key is stored unencrypted; use it only to try Hutong out[/]")
    return 0


def id_check(raw: str) -> int:
    """``hutong id check``: validate an ID number, propose corrections for a typo."""
    console = Console()
    try:
        parsed = identity.parse_id_number(raw)
    except HutongError as exc:
        console.print(f"[red]invalid[/]: {exc}")
        proposals = identity.propose_corrections(identity.normalize_id_number(raw))
        if proposals:
            console.print("single-typo corrections to confirm against the person's documents:")
            for p in proposals:
                console.print(f"  {p}")
        return 4
    console.print(
        f"valid {parsed.kind.name.lower()} number: {parsed.value}; province {_province(parsed.province_code)},"
        f" born {parsed.birth_date.isoformat()}, {parsed.gender.name.lower()}"
    )
    return 0


def print_jwks(data_dir: Path) -> int:
    """``hutong hub jwks``: the public keys of the hub's token-signing keys."""
    print(json.dumps(_token_keys(data_dir).jwks(), indent=2))
    return 0


def issue_console_token(data_dir: Path, *, subject: str, roles: list[str], hours: float) -> int:
    """``hutong hub console-token``: a console login token, printed on stdout."""
    if not 0 < hours <= 24:
        raise ConfigError("--hours must be above 0 and at most 24", reason="LIFETIME_INVALID", field="hours")
    if not subject.strip() or subject.startswith("hutong://"):
        raise ConfigError(
            "--subject must name a person (node identities log in with their certificate)",
            reason="SUBJECT_INVALID",
            field="subject",
        )
    service = TokenService(_token_keys(data_dir))
    token, _ = service.issue(
        subject.strip(), roles, None, audience=CONSOLE_AUDIENCE, lifetime_seconds=round(hours * 3600)
    )
    print(token)
    return 0


def rotate_token_key(data_dir: Path, *, keep: int) -> int:
    """``hutong hub rotate-token-key``: a new signing key; older ones keep verifying API tokens."""
    if keep < 1:
        raise ConfigError("--keep must be at least 1", reason="KEEP_INVALID", field="keep")
    rotated = _token_keys(data_dir).rotated(keep=keep)
    rotated.save(data_dir / TOKEN_KEYS_FILE)
    Console().print(
        f"new signing key {rotated.active[0]}; restart the hub (every replica, with this file) to use it. "
        "Console sessions signed by older keys end then; API tokens stay valid until they expire."
    )
    return 0


def _token_keys(data_dir: Path) -> TokenKeys:
    if not (data_dir / TOKEN_KEYS_FILE).exists():
        raise ConfigError(
            f"{data_dir} holds no {TOKEN_KEYS_FILE}; start the hub once to create it",
            reason="FILE_MISSING",
            field="data_dir",
        )
    return TokenKeys.load_or_create(data_dir)
