"""Who may call what, for which purpose, how often: the hub's access policy.

A node holds scopes; each RPC needs one scope; each query purpose is allowed under some
scopes only; each node has a rate limit. The policy is data (a TOML file documented in
``deploy/policy.example.toml``); this module validates it and answers questions, with errors
that name the scope, the purpose or the policy key at fault.

Without a policy file every node may sync its records and ask enrollment questions for any
purpose, limited only against runaway clients (20,000 calls/s): the behaviour of a hub before
policies existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.model import Purpose
from gateway.errors import ConfigError, PermissionDenied, ResourceExhausted

__all__ = [
    "SCOPES",
    "AccessPolicy",
    "NodePolicy",
    "TokenBucket",
    "purpose_name",
]

#: Every scope a node can hold.
SCOPES = (
    "records:write",
    "query:enrollment",
    "query:detail",
    "signals:write",
    "audit:read",
    "admin",
    # Identity linkage's review queue: list, accept, reject, split, lineage (LinkageReviewService).
    "linkage:review",
    # Household economic-status verification across provinces (VerificationService).
    "verification:request",
)

_PURPOSE_NAMES = {
    "eligibility-review": Purpose.ELIGIBILITY_REVIEW,
    "duplicate-check": Purpose.DUPLICATE_CHECK,
    "cross-region-application": Purpose.CROSS_REGION_APPLICATION,
    "monitoring-follow-up": Purpose.MONITORING_FOLLOW_UP,
    "audit": Purpose.AUDIT,
}
_ALL_PURPOSES = frozenset(_PURPOSE_NAMES.values())


def purpose_name(purpose: Purpose) -> str:
    """The policy file's name of a purpose (``duplicate-check``)."""
    return purpose.name.lower().replace("_", "-")


@dataclass(frozen=True)
class NodePolicy:
    """What one node may do."""

    scopes: frozenset[str]
    #: Calls per second the node may make on average.
    rate_per_second: float
    #: Calls the node may make at once before the rate applies.
    burst: int


@dataclass(frozen=True)
class AccessPolicy:
    """Scopes per node, purposes per scope, rate limits per node."""

    default: NodePolicy
    nodes: Mapping[str, NodePolicy] = field(default_factory=dict)
    purposes: Mapping[str, frozenset[Purpose]] = field(default_factory=dict)

    @classmethod
    def open_default(cls) -> AccessPolicy:
        """The policy of a hub without a policy file."""
        return cls(
            # A limit against runaway clients only; a policy file sets real per-node rates.
            default=NodePolicy(frozenset({"records:write", "query:enrollment"}), 20_000.0, 40_000),
            purposes={
                "query:enrollment": _ALL_PURPOSES,
                "query:detail": _ALL_PURPOSES,
                # Verifying a household's income and assets serves deciding on assistance, nothing else.
                "verification:request": frozenset({Purpose.ELIGIBILITY_REVIEW, Purpose.MONITORING_FOLLOW_UP}),
            },
        )

    def for_node(self, node_uri: str) -> NodePolicy:
        """The policy of one node (the default when it has none of its own)."""
        return self.nodes.get(node_uri, self.default)

    def require_scope(self, node_uri: str, scope: str) -> None:
        """Refuse, naming the scope, unless the node holds it."""
        if scope not in self.for_node(node_uri).scopes:
            raise PermissionDenied(
                f"this call needs scope {scope}, which the hub's policy does not grant to {node_uri}",
                reason="SCOPE_MISSING",
                metadata={"scope": scope, "node": node_uri},
            )

    def require_purpose(self, scope: str, purpose: Purpose) -> None:
        """Refuse, naming both, unless the purpose is allowed under the scope."""
        if purpose not in self.purposes.get(scope, frozenset()):
            raise PermissionDenied(
                f"purpose {purpose_name(purpose)} is not allowed under scope {scope}",
                reason="PURPOSE_NOT_ALLOWED",
                field="purpose",
                metadata={"scope": scope, "purpose": purpose_name(purpose)},
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AccessPolicy:
        """Build from the parsed policy file; every error names the key at fault."""
        _only(data, {"defaults", "scopes", "nodes"}, "")
        base = open_default = cls.open_default()
        defaults = _table(data.get("defaults", {}), "defaults")
        default = _node(defaults, "defaults", base.default)
        purposes = dict(open_default.purposes)
        for scope, table in _table(data.get("scopes", {}), "scopes").items():
            where = f"scopes.{scope}"
            _known_scope(scope, where)
            table = _table(table, where)
            _only(table, {"purposes"}, where)
            purposes[scope] = frozenset(
                _purpose(p, f"{where}.purposes") for p in _list(table.get("purposes", []), where)
            )
        nodes = {}
        for uri, table in _table(data.get("nodes", {}), "nodes").items():
            where = f'nodes."{uri}"'
            if not uri.startswith("hutong://province/"):
                raise ConfigError(
                    f"{where}: nodes are keyed by their hutong:// URI", reason="POLICY_INVALID", field=where
                )
            nodes[uri] = _node(_table(table, where), where, default)
        return cls(default=default, nodes=nodes, purposes=purposes)


def _node(table: Mapping[str, Any], where: str, base: NodePolicy) -> NodePolicy:
    _only(table, {"scopes", "rate_per_second", "burst"}, where)
    scopes = base.scopes
    if "scopes" in table:
        listed = _list(table["scopes"], f"{where}.scopes")
        for scope in listed:
            _known_scope(scope, f"{where}.scopes")
        scopes = frozenset(listed)
    rate = table.get("rate_per_second", base.rate_per_second)
    burst = table.get("burst", base.burst)
    # TOML allows nan and inf: a bucket refilled at either rate never runs dry.
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not math.isfinite(rate) or rate <= 0:
        raise ConfigError(
            f"{where}.rate_per_second must be a finite positive number",
            reason="POLICY_INVALID",
            field=f"{where}.rate_per_second",
        )
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise ConfigError(f"{where}.burst must be a positive integer", reason="POLICY_INVALID", field=f"{where}.burst")
    return NodePolicy(scopes, float(rate), burst)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table", reason="POLICY_INVALID", field=where)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list", reason="POLICY_INVALID", field=where)
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(
                f"unknown policy key {name} (known: {', '.join(sorted(allowed))})", reason="POLICY_INVALID", field=name
            )


def _known_scope(scope: Any, where: str) -> None:
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ConfigError(
            f"{where}: unknown scope {scope!r} (known: {', '.join(SCOPES)})", reason="POLICY_INVALID", field=where
        )


def _purpose(name: Any, where: str) -> Purpose:
    if not isinstance(name, str) or name not in _PURPOSE_NAMES:  # a table or list is unhashable
        raise ConfigError(
            f"{where}: unknown purpose {name!r} (known: {', '.join(_PURPOSE_NAMES)})",
            reason="POLICY_INVALID",
            field=where,
        )
    return _PURPOSE_NAMES[name]


class TokenBucket:
    """A token bucket: ``burst`` calls at once, then ``rate`` per second (clock injected)."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> None:
        """Spend one token, or raise RESOURCE_EXHAUSTED saying when to retry."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        wait = (1.0 - self._tokens) / self._rate
        raise ResourceExhausted(
            "rate limit exceeded; retry later",
            reason="RATE_LIMITED",
            metadata={"retry_after_ms": str(max(1, round(wait * 1000)))},
        )
