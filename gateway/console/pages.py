"""The console's pages: server-rendered HTML (Jinja2, autoescaped), no scripts.

Every page needs a login (:mod:`gateway.console.auth`); each says which role it needs. The pages
here show counts by province, node and tier and the CA's certificates, never a person;
:mod:`gateway.console.audit_pages` holds the exchange log and the person page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from gateway.console.auth import ADMIN, AUDIT_READ, SESSION_COOKIE, Viewer, viewer_of
from gateway.domain.model import Outcome
from gateway.errors import HutongError
from pki.operator import CertificateRecord, Registry

if TYPE_CHECKING:
    from gateway.hub.server import HubServer

__all__ = ["Page", "add_pages", "render", "route", "same_origin"]

log = structlog.get_logger("hutong.console")

#: Hours the Provinces page's chart covers.
CHART_HOURS = 72
#: Days before expiry a certificate counts as expiring soon.
EXPIRING_DAYS = 30
#: Colours of the Tiers page's chart (console.css: ``svg.tiers rect.t0`` to ``.t7``); more tiers reuse them.
TIER_COLOURS = 8
_ENV = Environment(loader=PackageLoader("gateway.console", "templates"), autoescape=select_autoescape(["html"]))
_CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-src 'self'; frame-ancestors 'self'"
)

Page = Callable[[web.Request, "HubServer", Viewer], Awaitable[web.Response]]


def add_pages(app: web.Application, hub: HubServer) -> None:
    """Route the pages, the login and their static assets (served by the hub itself: no CDN)."""
    from gateway.console.audit_pages import add_audit_pages

    app.router.add_get("/login", _login_form(hub))
    app.router.add_post("/login", _login(hub))
    app.router.add_post("/logout", _logout)
    app.router.add_get("/", route(hub, _overview, roles=()))
    app.router.add_get("/provinces", route(hub, _provinces, roles=(ADMIN, AUDIT_READ)))
    app.router.add_get("/loop", route(hub, _loop, roles=(ADMIN, AUDIT_READ)))
    app.router.add_get("/tiers", route(hub, _tiers, roles=(ADMIN, AUDIT_READ)))
    app.router.add_get("/certificates", route(hub, _certificates, roles=(ADMIN, AUDIT_READ)))
    add_audit_pages(app, hub)
    app.router.add_static("/static/", _static_dir(), show_index=False)


def _static_dir() -> str:
    from importlib import resources

    return str(resources.files("gateway.console") / "static")


def render(name: str, status: int = 200, **context: Any) -> web.Response:
    """A template as an HTML response."""
    html = _ENV.get_template(name).render(**context)
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            # same-origin, not no-referrer: with no-referrer Chromium posts forms with "Origin: null".
            "Referrer-Policy": "same-origin",
        },
    )


def route(hub: HubServer, handler: Page, *, roles: tuple[str, ...]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``handler`` behind the login and the roles it needs (one of ``roles``; none: any viewer)."""

    async def handle(request: web.Request) -> web.Response:
        viewer = viewer_of(request, hub)
        if viewer is None:
            return _login_page(request, status=401)
        if roles and not viewer.may(*roles):
            return render(
                "denied.html",
                status=403,
                title="Not allowed",
                viewer=viewer,
                message=f"This page needs one of the roles {', '.join(roles)}; you hold "
                f"{', '.join(sorted(viewer.scopes)) or 'none'}. The ministry grants roles in the hub's access policy "
                "(certificates) or in the console token it issues you.",
            )
        if hub.store is None:
            raise web.HTTPServiceUnavailable(text="the hub has not started")
        return await handler(request, hub, viewer)

    return handle


# -- login ---------------------------------------------------------------------------------------


def _next_path(value: str) -> str:
    """Where to go after logging in: a path on this console only (never another site)."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def _login_page(request: web.Request, *, status: int = 200, error: str = "", next_path: str = "") -> web.Response:
    return render(
        "login.html",
        status=status,
        title="Log in",
        viewer=None,
        error=error,
        next=_next_path(next_path or request.path_qs),
    )


def same_origin(request: web.Request) -> bool:
    """A form posted from this console's own pages (CSRF defence beside the SameSite=Strict cookie).

    Browsers say where a request comes from in ``Sec-Fetch-Site``, else in ``Origin``; a client that
    sends neither is not a browser, and a cross-site page cannot make a browser omit both.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


def _login_form(hub: HubServer) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        viewer = viewer_of(request, hub)
        if viewer is not None:
            raise web.HTTPSeeOther(_next_path(request.query.get("next", "/")))
        return _login_page(request, next_path=request.query.get("next", "/"))

    return handle


def _login(hub: HubServer) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if not same_origin(request):
            raise web.HTTPForbidden(text="a login must be posted from this console")
        form = await request.post()
        token, next_path = str(form.get("token", "")).strip(), str(form.get("next", "/"))
        if hub.tokens is None:
            raise web.HTTPServiceUnavailable(text="the hub has not started")
        try:
            claims = hub.tokens.verify_console(token)
        except HutongError as exc:
            log.warning("console_login_refused", reason=exc.reason, remote=request.remote)
            return _login_page(request, status=401, error=str(exc), next_path=next_path)
        log.info("console_login", subject=claims.subject, scopes=sorted(claims.scopes), remote=request.remote)
        response = web.HTTPSeeOther(_next_path(next_path))
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=max(1, int(claims.expires_at - time.time())),
            path="/",
            secure=request.secure,
            httponly=True,
            samesite="Strict",
        )
        raise response

    return handle


async def _logout(request: web.Request) -> web.Response:
    if not same_origin(request):
        raise web.HTTPForbidden(text="a logout must be posted from this console")
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/", secure=request.secure, httponly=True, samesite="Strict")
    raise response


# -- pages ---------------------------------------------------------------------------------------


async def _overview(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    held = await hub.store.records_held()
    size, _ = await hub.store.audit_tree()
    return render(
        "index.html",
        title="Overview",
        viewer=viewer,
        roles=[role for role in (ADMIN, AUDIT_READ) if viewer.may(role)],
        audit_size=size,
        records_held=sum(held.values()),
        provinces=len(held),
    )


async def _provinces(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    store = hub.store
    nodes = await store.node_totals()
    held = await store.records_held()
    loop = {row.province: row for row in await store.loop_state()}
    now_us = time.time_ns() // 1000
    per_hour = await store.synced_per_hour(now_us - CHART_HOURS * 3_600_000_000)
    certificates = await _node_certificates(hub)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for node in nodes:
        state = loop.get(node.province)
        cert = certificates.get(f"hutong://province/{node.province}/node/{node.node}")
        rows.append(
            {
                "province": node.province,
                "node": node.node,
                "certificate": _certificate_state(cert, now) if cert else "not in the registry",
                "expires": cert.not_after.strftime("%Y-%m-%d") if cert else "",
                "last_sync": _time(node.last_batch_at_us),
                "batches": node.batches,
                "held": held.get(node.province, 0),
                "created": node.counts.get(Outcome.CREATED, 0),
                "updated": node.counts.get(Outcome.UPDATED, 0),
                "rejected": node.counts.get(Outcome.REJECTED, 0),
                "unacknowledged": (state.pushed - state.acknowledged) if state else 0,
                "overdue": state.overdue if state else 0,
            }
        )
    return render(
        "provinces.html",
        title="Provinces",
        viewer=viewer,
        rows=rows,
        hours=CHART_HOURS,
        chart=_chart(per_hour, now_us // 3_600_000_000),
        registry=hub.settings.ca_registry is not None,
    )


async def _registry_records(hub: HubServer) -> list[CertificateRecord] | None:
    """Every certificate in the CA registry, soonest expiry first; None without a registry."""
    path = hub.settings.ca_registry
    if path is None:
        return None
    return await asyncio.to_thread(lambda: Registry.open(path).find())


async def _node_certificates(hub: HubServer) -> dict[str, CertificateRecord]:
    """Each node's newest certificate (latest expiry) by node URI; empty without a registry."""
    newest: dict[str, CertificateRecord] = {}
    for record in await _registry_records(hub) or []:
        if record.node_uri is not None:
            newest[record.node_uri] = record  # ascending expiry: the last one wins
    return newest


def _certificate_state(record: CertificateRecord, now: dt.datetime) -> str:
    """valid, expiring (within EXPIRING_DAYS), expired, revoked, not-yet-valid."""
    state = record.state(now)
    if state == "valid" and record.not_after - now <= dt.timedelta(days=EXPIRING_DAYS):
        return "expiring"
    return state


async def _certificates(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    records = await _registry_records(hub)
    if records is None:
        return render(
            "certificates.html",
            title="Certificates",
            viewer=viewer,
            configured=False,
        )
    now = dt.datetime.now(dt.UTC)
    province = request.query.get("province", "")
    state_filter = request.query.get("state", "")
    rows = []
    counts: dict[str, int] = defaultdict(int)
    unpublished = []
    for record in records:
        state = _certificate_state(record, now)
        counts[state] += 1
        enforced = hub.revocations is not None and hub.revocations.is_revoked(record.serial_number)
        if state == "revoked" and hub.revocations is not None and not enforced and record.not_after > now:
            unpublished.append(record.serial)
        if province and record.province != province:
            continue
        if state_filter and state != state_filter:
            continue
        rows.append(
            {
                "serial": record.serial,
                "kind": record.kind.value,
                "holder": record.holder,
                "province": record.province or "",
                "not_before": record.not_before.strftime("%Y-%m-%d %H:%M"),
                "not_after": record.not_after.strftime("%Y-%m-%d %H:%M"),
                "days_left": (record.not_after - now).days,
                "state": state,
                "revocation": record.revocation,
                "in_crl": enforced,
                "fingerprint": record.fingerprint_sha256,
            }
        )
    return render(
        "certificates.html",
        title="Certificates",
        viewer=viewer,
        configured=True,
        rows=rows,
        counts=dict(counts),
        total=len(records),
        unpublished=unpublished,
        crl=hub.settings.crl_path is not None,
        expiring_days=EXPIRING_DAYS,
        province=province,
        state=state_filter,
        states=["valid", "expiring", "expired", "revoked", "not-yet-valid"],
    )


async def _loop(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    rows = [
        {"province": p, "kind": k.replace("_", " "), "pushed": n, "acknowledged": a, "answered": r, "overdue": o}
        for p, k, n, a, r, o in await hub.store.loop_by_kind()
    ]
    return render("loop.html", title="The loop", viewer=viewer, rows=rows)


@dataclass(frozen=True, slots=True)
class _TierColumn:
    """A tier as the Tiers page shows it."""

    id: str
    label: str
    #: The chart's colour class (console.css).
    colour: str
    #: False for a tier the rules in force do not name: decided under older rules, shown by id.
    known: bool = True


@dataclass(frozen=True, slots=True)
class _TierRow:
    province: str
    #: Persons per column, in the columns' order.
    persons: tuple[int, ...]
    total: int


async def _tiers(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    counts = await hub.store.tier_counts()
    rules = hub.tier_rules
    # The rules' tiers in their order, then the tiers only decisions under older rules name, then the untiered.
    labels = {t.id: t.label for t in rules.tiers} if rules is not None else {}
    ids = [*labels, *sorted({c.tier for c in counts if c.tier and c.tier not in labels})]
    columns = [
        _TierColumn(tier, labels.get(tier, tier), f"t{i % TIER_COLOURS}", known=tier in labels)
        for i, tier in enumerate(ids)
    ]
    columns.append(_TierColumn("", "Untiered", "untiered"))
    held: dict[str, dict[str, int]] = defaultdict(dict)
    for c in counts:
        held[c.province][c.tier] = c.persons
    rows = [_TierRow(p, tuple(held[p].get(c.id, 0) for c in columns), sum(held[p].values())) for p in sorted(held)]
    totals = [sum(row.persons[i] for row in rows) for i in range(len(columns))]
    return render(
        "tiers.html",
        title="Tiers",
        viewer=viewer,
        rules=rules,
        columns=columns,
        rows=rows,
        totals=totals,
        total=sum(totals),
        chart=_tier_chart(rows, columns),
    )


def _time(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M") if us else "never"


def _chart(per_hour: list[tuple[str, int, int]], this_hour: int) -> Markup:
    """Records acknowledged per hour, all provinces stacked in one bar each: an inline SVG, no script."""
    totals: dict[int, int] = defaultdict(int)
    for _province, hour, n in per_hour:
        totals[hour] += n
    first = this_hour - CHART_HOURS + 1
    peak = max(totals.values(), default=0)
    width, height, bar = CHART_HOURS * 10, 100, 8
    parts = [
        f'<svg class="chart" id="synced-per-hour" viewBox="0 0 {width} {height + 14}" role="img"'
        f' aria-label="records acknowledged per hour, peak {peak}">'
    ]
    for offset in range(CHART_HOURS):
        n = totals.get(first + offset, 0)
        if n:
            h = max(1, round(height * n / peak))
            parts.append(
                f'<rect x="{offset * 10}" y="{height - h}" width="{bar}" height="{h}"'
                f' data-hour="{first + offset}" data-records="{n}"><title>{n:,} records</title></rect>'
            )
    parts.append(f'<text x="0" y="{height + 12}">{escape(_time((first) * 3_600_000_000))}</text>')
    parts.append(f'<text x="{width}" y="{height + 12}" text-anchor="end">now · peak {peak:,}/h</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only


def _tier_chart(rows: list[_TierRow], columns: list[_TierColumn]) -> Markup:
    """Persons per tier, one horizontal bar per province stacked by tier, then a legend: inline SVG, no script.

    Bars share one scale (the largest province's total), so provinces compare by length.
    """
    label_w, bar_w, row_h, bar_h, key_h = 56, 520, 22, 16, 16
    width = label_w + bar_w + 80
    peak = max((row.total for row in rows), default=0)
    legend_y = len(rows) * row_h + 10
    parts = [
        f'<svg class="chart tiers" id="tiers-chart" viewBox="0 0 {width} {legend_y + len(columns) * key_h}"'
        f' role="img" aria-label="persons per tier in each province, largest province {peak}">'
    ]
    for i, row in enumerate(rows):
        y, province = i * row_h, escape(row.province)
        parts.append(f'<text x="0" y="{y + 12}">{province}</text>')
        x = float(label_w)
        for column, n in zip(columns, row.persons, strict=True):
            if n:
                w = bar_w * n / peak
                parts.append(
                    f'<rect class="{column.colour}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}"'
                    f' data-province="{province}" data-tier="{escape(column.id)}" data-persons="{n}">'
                    f"<title>{province} · {escape(column.label)}: {n:,}</title></rect>"
                )
                x += w
        parts.append(f'<text class="total" x="{x + 4:.1f}" y="{y + 12}">{row.total:,}</text>')
    for j, column in enumerate(columns):
        y = legend_y + j * key_h
        key = escape(column.label if column.known else f"{column.id} (older rules)")
        parts.append(f'<rect class="{column.colour}" x="{label_w}" y="{y}" width="10" height="10"/>')
        parts.append(f'<text x="{label_w + 16}" y="{y + 9}" data-tier="{escape(column.id)}">{key}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only
