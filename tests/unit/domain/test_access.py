"""Access policy: scopes, purposes, rate limits, and a policy file's errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.domain.access import AccessPolicy, TokenBucket
from gateway.domain.model import Purpose
from gateway.errors import ConfigError, PermissionDenied, ResourceExhausted

GZ = "hutong://province/440000/node/gd-gz-01"
OTHER = "hutong://province/410000/node/ha-zz-01"
EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "policy.example.toml"


def test_the_documented_example_policy_loads() -> None:
    policy = AccessPolicy.from_mapping(tomllib.loads(EXAMPLE.read_text()))
    assert "query:detail" in policy.for_node(GZ).scopes
    assert policy.for_node(OTHER).scopes == frozenset({"records:write", "query:enrollment"})
    assert Purpose.AUDIT not in policy.purposes["query:enrollment"]


def test_without_a_policy_every_node_may_sync_and_ask_for_any_purpose() -> None:
    policy = AccessPolicy.open_default()
    policy.require_scope(OTHER, "records:write")
    policy.require_scope(OTHER, "query:enrollment")
    for purpose in Purpose:
        if purpose is not Purpose.UNSPECIFIED:
            policy.require_purpose("query:enrollment", purpose)
    with pytest.raises(PermissionDenied):
        policy.require_scope(OTHER, "audit:read")


def test_a_missing_scope_is_refused_naming_the_scope() -> None:
    policy = AccessPolicy.from_mapping({"nodes": {GZ: {"scopes": ["query:enrollment"]}}})
    with pytest.raises(PermissionDenied) as refused:
        policy.require_scope(GZ, "records:write")
    assert refused.value.reason == "SCOPE_MISSING"
    assert refused.value.metadata["scope"] == "records:write"


def test_a_purpose_not_allowed_under_a_scope_is_refused_naming_both() -> None:
    policy = AccessPolicy.from_mapping({"scopes": {"query:enrollment": {"purposes": ["duplicate-check"]}}})
    policy.require_purpose("query:enrollment", Purpose.DUPLICATE_CHECK)
    with pytest.raises(PermissionDenied) as refused:
        policy.require_purpose("query:enrollment", Purpose.AUDIT)
    assert refused.value.reason == "PURPOSE_NOT_ALLOWED"
    assert refused.value.field == "purpose"
    assert refused.value.metadata == {"scope": "query:enrollment", "purpose": "audit"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"default": {}}, "default"),
        ({"defaults": {"scopes": ["records:read"]}}, "defaults.scopes"),
        ({"defaults": {"rate_per_second": 0}}, "defaults.rate_per_second"),
        ({"defaults": {"rate_per_second": float("nan")}}, "defaults.rate_per_second"),  # a bucket that never empties
        ({"defaults": {"rate_per_second": float("inf")}}, "defaults.rate_per_second"),
        ({"defaults": {"burst": 1.5}}, "defaults.burst"),
        ({"scopes": {"query:enrollment": {"purposes": ["curiosity"]}}}, "scopes.query:enrollment.purposes"),
        ({"scopes": {"query:enrollment": {"purposes": [{"a": 1}]}}}, "scopes.query:enrollment.purposes"),
        ({"nodes": {GZ: {"scopes": [["records:write"]]}}}, f'nodes."{GZ}".scopes'),
        ({"scopes": {"query:everything": {}}}, "scopes.query:everything"),
        ({"nodes": {"gz-01": {}}}, 'nodes."gz-01"'),
        ({"nodes": {GZ: {"scope": ["admin"]}}}, f'nodes."{GZ}".scope'),
    ],
)
def test_policy_errors_name_the_key(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        AccessPolicy.from_mapping(data)
    assert refused.value.reason == "POLICY_INVALID"
    assert refused.value.field == field


def test_a_token_bucket_allows_a_burst_then_the_rate_and_says_when_to_retry() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    with pytest.raises(ResourceExhausted) as limited:
        bucket.take(0.0)
    assert limited.value.reason == "RATE_LIMITED"
    assert limited.value.metadata["retry_after_ms"] == "100"
    bucket.take(0.1)  # one token refilled after 1/rate seconds
    with pytest.raises(ResourceExhausted):
        bucket.take(0.1)
