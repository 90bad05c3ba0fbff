"""``hutong audit ...``: export, verify, show, prove and watch the hub's exchange log.

``export`` and ``verify`` work offline: the first reads a hub's data directory and database (as
``hutong hub serve`` finds them: ``--config hub.toml`` or ``--data-dir``), the second only an
export directory and a trust anchor (the ministry CA, through the hub's key binding, or a pinned
verifier key). ``show``, ``prove`` and ``watch`` ask a hub over mTLS with scope ``audit:read``
and check what they are given: a proof is verified against a checkpoint whose signature is
verified against a key the CA vouches for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from gateway.audit import (
    AuditEntry,
    Checkpoint,
    CheckpointWitness,
    EntryInvalid,
    NoteVerifier,
    parse_checkpoint,
    parse_verifier_key,
    verify_binding,
    verify_checkpoint,
    verify_inclusion,
)
from gateway.audit.archive import export_log, hash_function, read_export_entries, verify_export
from gateway.client import HubClient
from gateway.errors import ConfigError
from gateway.store.base import AuditFilter
from gateway.store.sqlite_audit import short_method
from hutong.v1 import audit_pb2
from pki import TlsMaterial

if TYPE_CHECKING:
    from gateway.hub.config import HubConfig

__all__ = [
    "audit_export",
    "audit_prove",
    "audit_show",
    "audit_verify",
    "audit_watch",
    "parse_time",
    "witness_checkpoint",
]

_KEY_BINDING_FILE = "key-binding.json"


def parse_time(text: str) -> int:
    """Microseconds since the epoch of an ISO 8601 date or time (local time when no offset is given)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"not an ISO 8601 date or time: {text!r}", reason="TIME_INVALID", field="time") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1_000_000)


def _when(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, tz=UTC).astimezone().isoformat(timespec="seconds")


# -- offline ---------------------------------------------------------------------------------


def audit_export(config: HubConfig, out: Path, *, segment_size: int) -> int:
    """``hutong audit export``: entries, leaf hashes, checkpoints and the key binding to ``out``.

    The keys come from the hub's data directory, the log from the database ``config`` names
    (SQLite or PostgreSQL), read-only: safe while the hub runs.
    """
    from gateway.hub.audit import open_audit_source

    source = open_audit_source(config.require_data_dir(), config.store_url)
    try:
        summary = export_log(source, out, segment_size=segment_size)
    finally:
        source.close()
    Console().print(
        f"exported {summary.size} entries of {source.origin} to {out}: {summary.segments_written} segment(s)"
        f" written, {summary.segments_kept} kept from an earlier export, {summary.checkpoints} checkpoint(s)"
    )
    return 0


def _export_verifier(directory: Path, *, ca: Path | None, verifier_key: str | None) -> NoteVerifier:
    if verifier_key is not None:
        return parse_verifier_key(verifier_key)
    if ca is None:
        raise ConfigError(
            "say whom to trust: --ca (the ministry CA, through the export's key binding) or --verifier-key",
            reason="TRUST_MISSING",
            field="ca",
        )
    binding_path = directory / _KEY_BINDING_FILE
    if not binding_path.exists():
        raise ConfigError(
            f"{directory} has no {_KEY_BINDING_FILE} (the hub ran without TLS); verify with --verifier-key",
            reason="FILE_MISSING",
            field="ca",
        )
    binding = verify_binding(binding_path.read_bytes(), ca.read_bytes())
    return binding.verifier


def audit_verify(
    directory: Path, *, ca: Path | None, verifier_key: str | None, known: Sequence[Path], check_entries: bool
) -> int:
    """``hutong audit verify``: every signature, every root, every consistency step; exit 4 naming the first fault."""
    verifier = _export_verifier(directory, ca=ca, verifier_key=verifier_key)
    notes = [path.read_text(encoding="utf-8") for path in known]
    report = verify_export(directory, verifier, known=notes, check_entries=check_entries)
    console = Console()
    console.print(f"[green]verified[/] {report.size} entries of {report.origin}, signed by {verifier.name}")
    newest = report.latest.size if report.latest is not None else 0
    console.print(f"  {report.checkpoints} checkpoint(s); the newest covers {newest} entries")
    console.print(f"  root at {report.size}: {report.root_hash.hex()}")
    if report.uncovered:
        console.print(f"  [yellow]{report.uncovered} entries are not yet covered by a signed checkpoint[/]")
    if notes:
        console.print(f"  consistent with {len(notes)} checkpoint(s) seen elsewhere")
    return 0


# -- online ----------------------------------------------------------------------------------


def _filter_request(filt: AuditFilter, page_size: int) -> audit_pb2.ListAuditEntriesRequest:
    request = audit_pb2.ListAuditEntriesRequest(
        province_code=filt.province,
        method=filt.method,
        purpose=filt.purpose,
        person_key=filt.person_key,
        page_size=page_size,
    )
    if filt.since_us:
        request.start_time.FromMicroseconds(filt.since_us)
    if filt.until_us:
        request.end_time.FromMicroseconds(filt.until_us)
    return request


def _matches(entry: AuditEntry, filt: AuditFilter) -> bool:
    return (
        (not filt.since_us or entry.time_us >= filt.since_us)
        and (not filt.until_us or entry.time_us < filt.until_us)
        and (not filt.province or entry.province == filt.province)
        and (not filt.method or filt.method in (entry.method, short_method(entry.method)))
        and (not filt.purpose or entry.purpose == filt.purpose)
        and (not filt.person_key or filt.person_key.hex() in entry.person_keys)
    )


def _export_rows(directory: Path, filt: AuditFilter) -> Iterator[tuple[int, bytes]]:
    for index, data in read_export_entries(directory):
        if _matches(AuditEntry.decode(data), filt):
            yield index, data


def _table(rows: Sequence[tuple[int, bytes]], title: str) -> Table:
    table = Table(title=title)
    for column in ("#", "time", "province", "node", "method", "purpose", "outcome", "counts", "persons"):
        table.add_column(column, overflow="fold")
    for index, data in rows:
        try:
            e = AuditEntry.decode(data)
        except EntryInvalid as exc:
            table.add_row(str(index), "", "", "", f"[red]not a canonical entry: {exc}[/]", "", "", "", "")
            continue
        node = e.caller.rsplit("/", 1)[-1] if e.caller else "(unauthenticated)"
        counts = " ".join(f"{k}={v}" for k, v in e.counts.items())
        method = short_method(e.method) + (f" batch {e.batch_id}" if e.batch_id else "")
        outcome = e.outcome if e.outcome == "OK" else f"[yellow]{e.outcome}[/]"
        table.add_row(
            str(index), _when(e.time_us), e.province, node, method, e.purpose, outcome, counts, str(len(e.person_keys))
        )
    return table


async def audit_show(
    filt: AuditFilter,
    *,
    limit: int,
    export: Path | None,
    hub: str | None,
    tls: TlsMaterial | None,
    server_name: str | None,
) -> int:
    """``hutong audit show``: entries as a table, from a hub or an export directory."""
    rows: list[tuple[int, bytes]] = []
    if export is not None:
        for row in _export_rows(export, filt):
            rows.append(row)
            if len(rows) >= limit:
                break
        source = str(export)
    else:
        if hub is None or tls is None:
            raise ConfigError("show needs --export, or --hub with mTLS", reason="SOURCE_MISSING", field="hub")
        async with HubClient(hub, tls=tls, server_name=server_name) as client:
            request = _filter_request(filt, min(limit, 1000))
            while len(rows) < limit:
                page = await client.list_audit_entries(request)
                rows.extend((e.index, e.entry) for e in page.entries)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        source = hub
    Console().print(_table(rows[:limit], f"exchange log of {source}: {len(rows[:limit])} entries"))
    return 0


async def _trusted_checkpoint(client: HubClient, ca_pem: bytes) -> tuple[audit_pb2.GetCheckpointResponse, NoteVerifier]:
    """The hub's newest checkpoint, its signature checked against a key the CA vouches for."""
    response = await client.get_checkpoint()
    if not response.key_binding:
        raise ConfigError(
            "the hub publishes no key binding (it runs without TLS), so its checkpoints cannot be tied to the CA",
            reason="KEY_BINDING_MISSING",
        )
    verifier = verify_binding(response.key_binding, ca_pem).verifier
    hash_size = len(hash_function(response.hash_algorithm)(b""))
    verify_checkpoint(response.checkpoint, verifier.name, verifier.public_key, hash_size=hash_size)
    return response, verifier


async def audit_prove(index: int, *, hub: str, tls: TlsMaterial, server_name: str | None) -> int:
    """``hutong audit prove``: fetch an entry's inclusion proof and check it against a verified checkpoint."""
    console = Console()
    async with HubClient(hub, tls=tls, server_name=server_name) as client:
        head, verifier = await _trusted_checkpoint(client, tls.ca_pem)
        hash_fn = hash_function(head.hash_algorithm)
        proof = await client.inclusion_proof(index, head.tree_size)
    leaf = hash_fn(b"\x00" + proof.entry)
    verify_inclusion(leaf, index, head.tree_size, list(proof.hashes), head.root_hash, hash_fn)
    console.print_json(proof.entry.decode("utf-8"))
    console.print(f"leaf hash {leaf.hex()}")
    for level, sibling in enumerate(proof.hashes):
        console.print(f"  path[{level}] {sibling.hex()}")
    checkpoint = parse_checkpoint(head.checkpoint, hash_size=len(leaf))
    signed = f", signed {_when(checkpoint.time_us)}" if checkpoint.time_us is not None else ""
    console.print(
        f"[green]entry {index} is in the log[/] {checkpoint.origin} of {head.tree_size} entries"
        f" (root {head.root_hash.hex()}{signed}; key {verifier.name}, vouched for by the CA)"
    )
    return 0


async def witness_checkpoint(client: HubClient, ca_pem: bytes, state: Path) -> tuple[int | None, Checkpoint]:
    """Fetch the hub's newest checkpoint, check it against the one remembered in ``state``, remember it.

    Returns the size remembered before (None on first use) and the new checkpoint. Raises
    LogInconsistent when the log was rolled back, forked or rewritten.
    """
    head, verifier = await _trusted_checkpoint(client, ca_pem)
    origin = parse_checkpoint(head.checkpoint, hash_size=len(head.root_hash)).origin
    witness = CheckpointWitness(state, verifier, origin, hash_fn=hash_function(head.hash_algorithm))
    before = witness.latest.size if witness.latest else None
    _, needed = witness.pending(head.checkpoint)
    proof = [] if needed is None else list((await client.consistency_proof(*needed)).hashes)
    return before, witness.accept(head.checkpoint, proof)


async def audit_watch(
    state: Path, *, hub: str, tls: TlsMaterial, server_name: str | None, interval: float | None, rounds: int | None
) -> int:
    """``hutong audit watch``: remember the newest checkpoint and check that each new one extends it.

    Raises LogInconsistent (exit 4) when the hub's log was rolled back, forked or rewritten.
    """
    console = Console()
    done = 0
    async with HubClient(hub, tls=tls, server_name=server_name) as client:
        while True:
            before, checkpoint = await witness_checkpoint(client, tls.ca_pem, state)
            if before is None:
                console.print(f"first checkpoint of {checkpoint.origin} remembered: {checkpoint.size} entries")
            else:
                console.print(f"[green]consistent[/]: {before} → {checkpoint.size} entries")
            done += 1
            if interval is None or (rounds is not None and done >= rounds):
                return 0
            await asyncio.sleep(interval)
