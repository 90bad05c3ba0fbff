"""The hub's Prometheus metrics: what this process served, and what the database holds.

Two kinds of figure, in one registry per hub (several hubs in one process, as in tests, do not
mix their counts):

* **per process**, counted as calls end (:meth:`HubMetrics.observe`): RPCs by method and status
  code, and their latencies. Each replica reports its own; Prometheus sums them.
* **from the database**, read when scraped (:meth:`HubMetrics.render`): records synced by
  province, node and outcome, records held per province, the exchange log's size, and the
  notifications each province has not acknowledged yet. They are the same whichever replica
  is scraped, so they are gauges of the shared state, not counters of this process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.domain.model import Outcome
from gateway.hub.audit_monitor import MonitorStatus
from gateway.hub.interceptors import CallInfo
from gateway.store.sql import SqlStore

__all__ = ["CONTENT_TYPE", "HubMetrics"]

#: The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Latency buckets, seconds: a lookup takes milliseconds, a sync stream may take minutes.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_OUTCOMES = (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.STALE, Outcome.REJECTED)


class HubMetrics:
    """One hub's metrics registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpcs = Counter(
            "hutong_rpcs", "RPCs this hub process answered, by method and status code.", ["method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "hutong_rpc_duration_seconds", "Time from a call's arrival to its answer.", ["method"],
            buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.synced = Gauge(
            "hutong_records_synced", "Records the hub acknowledged, by the province and node that sent them.",
            ["province", "node", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.held = Gauge(
            "hutong_records_held", "Live records the hub holds, by province.", ["province"], registry=self.registry
        )
        self.audit_size = Gauge(
            "hutong_audit_tree_size", "Entries in the exchange log (committed).", registry=self.registry
        )
        self.audit_verified = Gauge(
            "hutong_audit_verified_size",
            "Entries of the exchange log this hub re-read, re-hashed and matched to a signed checkpoint.",
            registry=self.registry,
        )
        self.audit_problem = Gauge(
            "hutong_audit_inconsistent",
            "1 when this hub found its own exchange log inconsistent with what it signed (alert on it).",
            registry=self.registry,
        )
        self.unacknowledged = Gauge(
            "hutong_notifications_unacknowledged",
            "Events pushed to a province that none of its nodes has acknowledged yet (the notification lag).",
            ["province"], registry=self.registry,
        )  # fmt: skip
        self.overdue = Gauge(
            "hutong_notifications_overdue", "Events past their deadline without an outcome, by province.",
            ["province"], registry=self.registry,
        )  # fmt: skip

    def observe(self, call: CallInfo, seconds: float) -> None:
        """Count one finished call."""
        method = call.full_method or call.method
        self.rpcs.labels(method, call.code).inc()
        self.latency.labels(method).observe(seconds)

    async def render(self, store: SqlStore, monitor: MonitorStatus | None = None) -> bytes:
        """The exposition text, with the database's figures and the log verification read now."""
        nodes = await store.node_totals()
        held = await store.records_held()
        size, _ = await store.audit_tree()
        loop = await store.loop_state()
        self.synced.clear()
        for node in nodes:
            for outcome in _OUTCOMES:
                self.synced.labels(node.province, node.node, outcome.name.lower()).set(node.counts.get(outcome, 0))
        self.held.clear()
        for province, n in held.items():
            self.held.labels(province).set(n)
        self.audit_size.set(size)
        if monitor is not None:
            self.audit_verified.set(monitor.verified_size)
            self.audit_problem.set(0 if monitor.ok else 1)
        self.unacknowledged.clear()
        self.overdue.clear()
        for row in loop:
            self.unacknowledged.labels(row.province).set(row.pushed - row.acknowledged)
            self.overdue.labels(row.province).set(row.overdue)
        return generate_latest(self.registry)
