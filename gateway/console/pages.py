"""The console's pages: server-rendered HTML (Jinja2, autoescaped), no scripts.

Every page needs a login (:mod:`gateway.console.auth`); each says which role it needs. The
pages here show no person-level data: counts by province and node only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from gateway.console.auth import ADMIN, AUDIT_READ, Viewer, viewer_of
from gateway.domain.model import Outcome

if TYPE_CHECKING:
    from gateway.hub.server import HubServer

__all__ = ["add_pages"]

#: Hours the Provinces page's chart covers.
CHART_HOURS = 72
_ENV = Environment(loader=PackageLoader("gateway.console", "templates"), autoescape=select_autoescape(["html"]))

Page = Callable[[web.Request, "HubServer", Viewer], Awaitable[web.Response]]


def add_pages(app: web.Application, hub: HubServer) -> None:
    """Route the pages and their static assets (served by the hub itself: no CDN)."""
    app.router.add_get("/", _page(hub, _overview, roles=()))
    app.router.add_get("/provinces", _page(hub, _provinces, roles=(ADMIN, AUDIT_READ)))
    app.router.add_get("/loop", _page(hub, _loop, roles=(ADMIN, AUDIT_READ)))
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
            "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _page(hub: HubServer, handler: Page, *, roles: tuple[str, ...]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        viewer = viewer_of(request, hub)
        if viewer is None:
            return render(
                "denied.html",
                status=401,
                title="Log in",
                viewer=None,
                message="The console needs your certificate: present a ministry CA certificate with your "
                "hutong:// identity to this port (import it into the browser).",
            )
        if roles and not viewer.may(*roles):
            return render(
                "denied.html",
                status=403,
                title="Not allowed",
                viewer=viewer,
                message=f"This page needs one of the roles {', '.join(roles)}; you hold "
                f"{', '.join(sorted(viewer.scopes)) or 'none'}. The ministry grants roles in the hub's access policy.",
            )
        if hub.store is None:
            raise web.HTTPServiceUnavailable(text="the hub has not started")
        return await handler(request, hub, viewer)

    return handle


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
    rows = []
    for node in nodes:
        state = loop.get(node.province)
        rows.append(
            {
                "province": node.province,
                "node": node.node,
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
    )


async def _loop(request: web.Request, hub: HubServer, viewer: Viewer) -> web.Response:
    assert hub.store is not None
    rows = [
        {"province": p, "kind": k.replace("_", " "), "pushed": n, "acknowledged": a, "answered": r, "overdue": o}
        for p, k, n, a, r, o in await hub.store.loop_by_kind()
    ]
    return render("loop.html", title="The loop", viewer=viewer, rows=rows)


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
