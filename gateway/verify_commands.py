"""``hutong verify request|get``: a province asks the hub to verify a household's income and assets (核对).

For a caseworker's terminal and for scripts; a province's own system calls
``hutong.v1.VerificationService`` directly. The consent is given as the signed authorization's
file (its SHA-256 is computed here; the file itself never leaves the machine) or its hash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from gateway.client import HubClient
from gateway.domain import identity
from gateway.domain.model import Purpose
from gateway.domain.verification import ItemClass, Sensitivity, item_class_named
from gateway.errors import ConfigError
from hutong.v1 import verification_pb2
from pki import TlsMaterial

__all__ = ["get_verification", "request_verification"]

#: Exit code of a report some source did not answer (timed out, refused, failed).
PARTIAL = 4
#: Exit code when --wait ran out before the report was complete.
WAITED_OUT = 5


def _member(text: str, index: int) -> verification_pb2.VerifiedMember:
    number, _, name = text.partition(",")
    return verification_pb2.VerifiedMember(id_number=number.strip(), name=name.strip())


def _consent(consent_id: str, document: Path | None, sha256: str | None, signed_on: str) -> verification_pb2.Consent:
    if (document is None) == (sha256 is None):
        raise ConfigError(
            "give the signed authorization as --consent-file or its hash as --consent-sha256 (one of them)",
            reason="CONSENT_MISSING",
            field="consent",
        )
    if document is not None:
        try:
            sha256 = hashlib.sha256(document.read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {document}: {exc.strerror}", reason="FILE_UNREADABLE", field="consent-file"
            ) from exc
    try:
        day = dt.date.fromisoformat(signed_on)
    except ValueError:
        raise ConfigError(
            f"--consent-date {signed_on!r} is not YYYY-MM-DD", reason="CONSENT_INVALID", field="consent-date"
        ) from None
    consent = verification_pb2.Consent(consent_id=consent_id, document_sha256=sha256 or "")
    consent.signed_on.year, consent.signed_on.month, consent.signed_on.day = day.year, day.month, day.day
    return consent


async def request_verification(
    *,
    hub: str,
    tls: TlsMaterial,
    server_name: str | None,
    members: Sequence[str],
    consent_id: str,
    consent_file: Path | None,
    consent_sha256: str | None,
    consent_date: str,
    purpose: Purpose,
    classes: Sequence[str],
    request_id: str | None,
    wait: float,
    as_json: bool,
) -> int:
    """Start a verification; with ``wait``, wait for its report and print it."""
    request = verification_pb2.RequestVerificationRequest(
        request_id=request_id or str(uuid.uuid4()),
        members=[_member(m, i) for i, m in enumerate(members)],
        consent=_consent(consent_id, consent_file, consent_sha256, consent_date),
        purpose=purpose.value,  # type: ignore[arg-type]
        item_classes=[item_class_named(c, field=f"class[{i}]").value for i, c in enumerate(classes)],  # type: ignore[misc]
    )
    console = Console()
    async with HubClient(hub, tls=tls, server_name=server_name) as client:
        started = await client.request_verification(request)
        if not as_json:
            again = " (this request id had started it already)" if started.replayed else ""
            console.print(
                f"verification [bold]{started.verification_id}[/] started{again}; request id {request.request_id}"
            )
        if wait <= 0:
            if as_json:
                print(json_format.MessageToJson(started, indent=2))
            return 0
        deadline = time.monotonic() + wait
        while True:
            answer = await client.get_verification(started.verification_id)
            if answer.state == verification_pb2.VERIFICATION_STATE_COMPLETE or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return _show(console, answer, request.members, as_json)


async def get_verification(
    *, hub: str, tls: TlsMaterial, server_name: str | None, verification_id: str, as_json: bool
) -> int:
    """Print a verification's state and report."""
    async with HubClient(hub, tls=tls, server_name=server_name) as client:
        answer = await client.get_verification(verification_id)
    return _show(Console(), answer, (), as_json)


def _show(
    console: Console,
    answer: verification_pb2.GetVerificationResponse,
    members: Sequence[verification_pb2.VerifiedMember],
    as_json: bool,
) -> int:
    complete = answer.state == verification_pb2.VERIFICATION_STATE_COMPLETE
    partial = complete and any(s.outcome != verification_pb2.SOURCE_OUTCOME_ANSWERED for s in answer.report.sources)
    code = (PARTIAL if partial else 0) if complete else WAITED_OUT
    if as_json:
        print(json_format.MessageToJson(answer, indent=2, ensure_ascii=False))
        return code
    if not complete:
        console.print(f"verification {answer.verification_id} is still pending")
        return code
    sources = Table(title=f"sources of {answer.verification_id}")
    for column in ("source", "outcome", "items", "reason"):
        sources.add_column(column)
    for s in answer.report.sources:
        outcome = verification_pb2.SourceOutcome.Name(s.outcome).removeprefix("SOURCE_OUTCOME_").lower()
        sources.add_row(s.source_uri, outcome.replace("_", " "), str(s.items), s.reason)
    console.print(sources)
    items = Table(title="items")
    for column in ("member", "class", "sensitivity", "value (yuan)", "as of", "description", "reference", "source"):
        items.add_column(column)
    for i in answer.report.items:
        who = (
            identity.mask_id_number(members[i.member_index].id_number)
            if i.member_index < len(members)
            else f"#{i.member_index}"
        )
        day = f"{i.as_of.year:04d}-{i.as_of.month:02d}-{i.as_of.day:02d}" if i.as_of.year else ""
        items.add_row(
            who,
            ItemClass(i.item_class).config_name,
            Sensitivity(i.sensitivity).name.lower(),
            f"{i.amount_fen / 100:,.2f}",
            day,
            i.description,
            i.reference,
            i.source_uri,
        )
    console.print(items)
    return code
