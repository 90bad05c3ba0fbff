"""The console's exchange-log pages and its person page: what auditors come for.

* ``/audit`` — search the log by time, province, method, purpose and person; the newest
  checkpoints; the hub's own verification of the log ("verified up to entry N", framed from
  ``/audit/status``, which refreshes itself: live without a script).
* ``/audit/entry/{index}`` — one entry whole, with its inclusion proof against the newest
  signed checkpoint, checked here from the hash of the bytes shown and shown so that anyone can
  check it again.
* ``/person`` — one person's records as the hub holds them (provinces, programmes, statuses),
  their duplicate findings and the log entries that touched them. ID numbers are masked unless
  the viewer holds ``query:detail``.

A page that names a person — an entry's person keys, a person search, the person page — is
itself an entry in the exchange log (``/hutong.hub.Console/...``, with the viewer, the stated
purpose and the person keys) written before the page is sent; if it cannot be written, the page
is not shown. The log list shows counts of persons, not their keys.

Such a view is written only for a request from the console's own pages (or typed into the
address bar): a browser sends a certificate login cross-site too, so another site could
otherwise write views in the viewer's name with a link or an image. A cross-site request gets a
page that says so, with a link that repeats it from here (``same_origin``, as forms are checked).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.audit import AuditEntry, ProofInvalid, leaf_hash, parse_checkpoint, verify_inclusion
from gateway.console.auth import ADMIN, AUDIT_READ, QUERY_DETAIL, Viewer
from gateway.console.pages import render, route, same_origin
from gateway.domain import identity
from gateway.domain.access import purpose_name
from gateway.domain.model import EnrollmentStatus, Program, Purpose
from gateway.domain.records import decode_enrollments
from gateway.errors import HutongError
from gateway.hub.interceptors import CallInfo
from gateway.store.base import AuditFilter, NodeRef

if TYPE_CHECKING:
    from gateway.hub.server import HubServer

__all__ = ["add_audit_pages"]

#: Entries per page of the log.
PAGE_SIZE = 50
#: Checkpoints listed.
CHECKPOINTS_SHOWN = 10
#: Seconds between reloads of the framed verification status.
STATUS_REFRESH_SECONDS = 5
_PERSON_KEY = re.compile(r"[0-9a-f]{32}")
_SERVICE = "/hutong.hub.Console/"
_PURPOSES = [purpose_name(p) for p in Purpose if p is not Purpose.UNSPECIFIED]


def add_audit_pages(app: web.Application, hub: HubServer) -> None:
    """Route the audit and person pages."""
    readers = (ADMIN, AUDIT_READ)
    app.router.add_get("/audit", route(hub, _audit, roles=readers))
    app.router.add_get("/audit/status", route(hub, _status, roles=readers))
    app.router.add_get("/audit/entry/{index}", route(hub, _entry, roles=readers))
    app.router.add_get("/person", route(hub, _person, roles=readers))
    app.router.add_post("/person", route(hub, _person, roles=readers))


class _BadQuery(Exception):
    """A filter the page cannot use; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _time_us(value: str, field: str) -> int:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (UTC) in microseconds; 0 for empty."""
    if not value:
        return 0
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _BadQuery(field, f"{value!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM), UTC") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def _person_key(hub: HubServer, value: str) -> tuple[bytes, str]:
    """(person key, how to show what was asked) of a person key in hex or an ID number."""
    value = value.strip()
    if _PERSON_KEY.fullmatch(value.lower()):
        return bytes.fromhex(value.lower()), value.lower()
    assert hub.keyer is not None
    try:
        number = identity.parse_id_number(value)
    except HutongError as exc:
        # The error names what is wrong without echoing the number.
        raise _BadQuery("person", f"neither a person key (32 hex digits) nor a valid ID number: {exc}") from None
    return hub.keyer.person_key(number.value), identity.mask_id_number(number.value)


def _purpose(value: str) -> str:
    if value not in _PURPOSES:
        raise _BadQuery("purpose", f"state why you look (one of {', '.join(_PURPOSES)})")
    return value


def _cross_site_refusal(request: web.Request, viewer: Viewer) -> web.Response | None:
    """The page that refuses a view that would be logged, asked from another site; None when it may proceed."""
    if same_origin(request):
        return None
    return render(
        "denied.html",
        status=403,
        title="Confirm this view",
        viewer=viewer,
        message="This page records your view in the exchange log, in your name, and the request came from another "
        "site, which may not make your browser do that. Nothing was recorded or shown.",
        continue_to=request.path_qs if request.method == "GET" else None,
    )


async def _record_view(
    hub: HubServer,
    request: web.Request,
    viewer: Viewer,
    method: str,
    *,
    purpose: str,
    person_keys: Iterable[bytes],
    counts: dict[str, int],
) -> None:
    """Write the exchange-log entry of a page view that names persons; the page is sent only after."""
    assert hub.audit is not None
    if not same_origin(request):  # each page refuses earlier (_cross_site_refusal); this keeps a new one honest
        raise web.HTTPForbidden(text="a view recorded in the exchange log must be asked from this console")
    keys = set(person_keys)
    call = CallInfo(
        method=method,
        request_id=request.headers.get("X-Request-Id", "") or secrets.token_hex(16),
        started=time.perf_counter(),
        caller=NodeRef(viewer.province, viewer.node) if viewer.via == "certificate" and viewer.node else None,
        full_method=_SERVICE + method,
        subject=viewer.uri,
        purpose=purpose,
        counts={**counts, "persons": len(keys)},
        person_keys=keys,
    )
    # The digest covers what was asked, by person key: never the typed ID number.
    asked = "\x1f".join([method, purpose, *sorted(k.hex() for k in keys), *(f"{k}={v}" for k, v in counts.items())])
    try:
        await hub.audit.record(call, asked.encode(), None)
    except HutongError as exc:
        raise web.HTTPServiceUnavailable(
            text=f"this view could not be recorded in the exchange log, so it is not shown: {exc}"
        ) from exc


# -- the log ------------------------------------------------------------------------------------


async def _audit(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    store = hub.store
    q = request.query
    form = {name: q.get(name, "") for name in ("since", "until", "province", "method", "purpose", "person", "why")}
    size, root = await store.audit_tree()
    error = ""
    rows: list[dict[str, Any]] = []
    after = 0
    next_after: int | None = None
    person_shown = ""
    if form["person"] and (refusal := _cross_site_refusal(request, viewer)) is not None:
        return refusal
    try:
        filt = AuditFilter(
            since_us=_time_us(form["since"], "since"),
            until_us=_time_us(form["until"], "until"),
            province=form["province"].strip(),
            method=form["method"].strip(),
            purpose=form["purpose"].strip(),
        )
        if form["province"] and not re.fullmatch(r"[0-9]{6}", filt.province):
            raise _BadQuery("province", "a province is a six-digit division code (440000)")
        filtered = any(form[k] for k in ("since", "until", "province", "method", "purpose", "person"))
        if "after" in q:
            if not q["after"].isdigit():
                raise _BadQuery("after", "an entry index")
            after = int(q["after"])
        elif not filtered:
            after = max(0, size - PAGE_SIZE)  # the newest page
        if form["person"]:
            why = _purpose(form["why"])
            if not _PERSON_KEY.fullmatch(form["person"].strip().lower()):
                raise _BadQuery(
                    "person",
                    "a person key (32 hex digits); to start from an ID number use the Person page, "
                    "which keeps the number out of addresses and history",
                )
            key, person_shown = _person_key(hub, form["person"])
            filt = dataclasses.replace(filt, person_key=key)
        found = await store.audit_entries(filt, after=after, limit=PAGE_SIZE + 1, size=size)
        if len(found) > PAGE_SIZE:
            found, next_after = found[:PAGE_SIZE], found[PAGE_SIZE][0]
        if form["person"]:
            await _record_view(
                hub, request, viewer, "SearchAuditLog", purpose=why, person_keys=[key], counts={"entries": len(found)}
            )
        rows = [_row(index, AuditEntry.decode(data)) for index, data in found]
    except _BadQuery as exc:
        error = str(exc)
    checkpoints = [_checkpoint_row(size_, time_us, note) for size_, time_us, note in await store.recent_checkpoints(10)]
    return render(
        "audit.html",
        status=400 if error else 200,
        title="Exchange log",
        viewer=viewer,
        form=form,
        error=error,
        rows=rows,
        size=size,
        root=root.hex(),
        after=after,
        next_after=next_after,
        person_shown=person_shown,
        purposes=_PURPOSES,
        checkpoints=checkpoints,
        monitor=_monitor_view(hub),
    )


def _row(index: int, entry: AuditEntry) -> dict[str, Any]:
    return {
        "index": index,
        "time": _time(entry.time_us),
        "who": entry.caller or entry.subject,
        "province": entry.province,
        "method": entry.method.rsplit("/", 1)[-1],
        "service": entry.method.rsplit("/", 1)[0].lstrip("/"),
        "purpose": entry.purpose,
        "outcome": entry.outcome,
        "counts": ", ".join(f"{k} {v:,}" for k, v in entry.counts.items()),
        "persons": len(entry.person_keys),
    }


def _checkpoint_row(size: int, time_us: int, note: str) -> dict[str, Any]:
    checkpoint = parse_checkpoint(note)
    return {"size": size, "time": _time(time_us), "root": checkpoint.root_hash.hex(), "note": note}


def _monitor_view(hub: HubServer) -> dict[str, Any] | None:
    monitor = getattr(hub, "audit_monitor", None)
    if monitor is None:
        return None
    status = monitor.status
    return {
        "verified": status.verified_size,
        "root": status.verified_root.hex(),
        "latest": status.checkpoint_size,
        "checked": _time(status.checked_at_us) if status.checked_at_us else "not yet",
        "problem": status.problem,
    }


async def _status(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    return render(
        "audit_status.html",
        title="Verification",
        viewer=None,
        monitor=_monitor_view(hub),
        refresh=STATUS_REFRESH_SECONDS,
    )


async def _entry(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    store = hub.store
    raw = request.match_info["index"]
    if not raw.isdigit():
        raise web.HTTPBadRequest(text=f"index: {raw!r} is not an entry index")
    index = int(raw)
    found = await store.audit_entry(index)
    latest = await store.latest_checkpoint()
    if found is None:
        raise web.HTTPNotFound(text=f"index: the exchange log has no entry {index}")
    data, stored_leaf = found
    entry = AuditEntry.decode(data)
    if entry.person_keys and (refusal := _cross_site_refusal(request, viewer)) is not None:
        return refusal
    assert hub.audit is not None
    # The proof is checked from the hash of the bytes the page shows, H(0x00 || entry), as
    # `hutong audit prove` does, never from the leaf hash stored beside them: an entry rewritten in
    # the database with its leaf hash left alone must not be shown as proved.
    leaf = leaf_hash(data, hub.audit.hash_fn)
    leaf_problem = ""
    if leaf != stored_leaf:
        leaf_problem = (
            f"the entry shown hashes to {leaf.hex()}, but the leaf hash stored with it is {stored_leaf.hex()}:"
            " the entry (or its leaf hash) was changed in the database after it was logged"
        )
    proof: dict[str, Any] = {"checkpoint": None}
    if latest is not None and latest[0] > index:
        size, note = latest
        checkpoint = parse_checkpoint(note)
        path = await store.inclusion_proof(index, size)
        try:
            verify_inclusion(leaf, index, size, path, checkpoint.root_hash, hub.audit.hash_fn)
            verdict = ""
        except ProofInvalid as exc:
            verdict = f"{leaf_problem}; {exc}" if leaf_problem else str(exc)
        proof = {
            "checkpoint": note,
            "size": size,
            "root": checkpoint.root_hash.hex(),
            "path": [h.hex() for h in path],
            "problem": verdict,
        }
    if entry.person_keys:
        await _record_view(
            hub,
            request,
            viewer,
            "ViewAuditEntry",
            purpose="audit",
            person_keys=[bytes.fromhex(k) for k in entry.person_keys],
            counts={"entry": index},
        )
    return render(
        "audit_entry.html",
        title=f"Entry {index:,}",
        viewer=viewer,
        index=index,
        entry=entry,
        time=_time(entry.time_us),
        leaf=leaf.hex(),
        leaf_problem=leaf_problem,
        json=data.decode(),
        proof=proof,
    )


# -- a person -----------------------------------------------------------------------------------


async def _person(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    store = hub.store
    if request.method == "POST":
        if not same_origin(request):
            raise web.HTTPForbidden(text="a person search must be posted from this console")
        q: Any = await request.post()
    else:
        q = request.query
    asked, why = str(q.get("q", "")).strip(), str(q.get("why", ""))
    if asked and (refusal := _cross_site_refusal(request, viewer)) is not None:
        return refusal
    reveal = q.get("reveal") == "1"
    context: dict[str, Any] = {
        "asked": "",
        "why": why,
        "purposes": _PURPOSES,
        "may_reveal": viewer.may(QUERY_DETAIL),
        "error": "",
        "person": None,
    }
    if not asked:
        return render("person.html", title="Person", viewer=viewer, **context)
    try:
        purpose = _purpose(why)
        key, shown = _person_key(hub, asked)
        if reveal and not viewer.may(QUERY_DETAIL):
            raise _BadQuery("reveal", "showing a full ID number needs the query:detail role")
    except _BadQuery as exc:
        context["error"] = str(exc)
        return render("person.html", status=400, title="Person", viewer=viewer, **context)
    is_number = not _PERSON_KEY.fullmatch(asked.lower())
    if is_number and request.method != "POST":
        context["error"] = "q: send an ID number with the form (POST), so that it stays out of addresses and history"
        return render("person.html", status=400, title="Person", viewer=viewer, **context)
    if reveal and is_number:
        shown = identity.parse_id_number(asked).value
    held = (await store.enrollments_of([key])).get(key, [])
    findings = await store.findings_of(key)
    size, _ = await store.audit_tree()
    touched = await store.audit_entries(AuditFilter(person_key=key), after=0, limit=PAGE_SIZE, size=size)
    await _record_view(
        hub,
        request,
        viewer,
        "ViewPerson",
        purpose=purpose,
        person_keys=[key],
        counts={"records": len(held), "revealed": int(reveal and is_number)},
    )
    records = [
        {
            "province": h.province_code,
            "record_id": h.record_id,
            "updated": _time(h.updated_at_us) or "not sent",
            "enrollments": [
                {
                    "program": _name(Program, e.program),
                    "status": _name(EnrollmentStatus, e.status),
                    "start": e.start_date.isoformat() if e.start_date else "",
                    "end": e.end_date.isoformat() if e.end_date else "",
                    "amount": f"{e.monthly_amount_fen / 100:,.2f}" if e.monthly_amount_fen else "",
                    "division": e.granting_division,
                }
                for e in decode_enrollments(h.enrollments)
            ],
        }
        for h in held
    ]
    context.update(
        asked=asked if not is_number else "",
        person={
            "shown": shown,
            "key": key.hex(),
            "records": records,
            "findings": [
                {
                    "id": f.finding_id,
                    "program": _name(Program, f.program),
                    "provinces": ", ".join(f.province_codes),
                    "open": f.open,
                    "detected": _time(f.detected_at_us),
                }
                for f in findings
            ],
            "entries": [_row(index, AuditEntry.decode(data)) for index, data in touched],
        },
        revealed=reveal and is_number,
    )
    return render("person.html", title="Person", viewer=viewer, **context)


def _name(kind: type[Program] | type[EnrollmentStatus], value: int) -> str:
    try:
        return kind(value).name.lower().replace("_", " ")
    except ValueError:
        return str(value)


def _time(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if us else ""
