"""Federated record detail, the hub's side: the federation directory and the calls to province nodes.

The hub stores no record detail. For ``AssistanceQueryService.FetchRecordDetail`` it asks the
node of each province holding a record of the person (``ProvinceNodeService.FetchRecordDetail``,
served by ``hutong node serve``), all at once, over mTLS with the hub's own certificate and key
(the hub certificate allows client authentication, and a node accepts only hub certificates).

**The federation directory** (``hutong hub serve --node-directory FILE``) says where each node
listens; it is read and checked once, at start, and every mistake names its key::

    # One table per node, keyed by the node's identity URI (as in its certificate).
    [nodes."hutong://province/440000/node/gz-01"]
    address = "gz-01.gd.hutong.example:7444"    # HOST:PORT of `hutong node serve`
    server_name = "gz-01.gd.hutong.example"      # optional: the name to verify in the node's
                                                 # certificate, when not the address's host

A province may list several nodes: the hub asks them in the file's order until one holds the
record (the hub knows which province holds a record, not which of its nodes).

**Deadlines and retries**: every node call gets the time the incoming call has left, less a
small margin for the hub's own work (auditing and answering), and never more than
:attr:`FederationSettings.max_seconds`. A call failing UNAVAILABLE (node down, connection
refused) is retried with exponential backoff and jitter (tenacity) while that time lasts, up to
:attr:`FederationSettings.max_attempts` attempts; nothing else is retried (a refusal stays a
refusal, and a deadline is spent). A province whose node does not answer becomes a
``DetailFailure`` of the answer, never a failure of the whole call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
import tenacity

from gateway.domain.model import Purpose
from gateway.errors import ConfigError, PkiError
from gateway.hub.disclosure import filter_detail
from gateway.rpc_status import REQUEST_ID_KEY, error_from_rpc
from gateway.store.base import NodeRef
from gateway.toml_config import parse_port, read_toml
from hutong.v1 import node_pb2, node_pb2_grpc, query_pb2
from pki import NodeIdentity, TlsMaterial

__all__ = [
    "DetailFetcher",
    "FederationSettings",
    "NodeAddress",
    "NodeDirectory",
    "load_node_directory",
    "parse_node_directory",
]

log = structlog.get_logger("hutong.hub")

_NODE_KEYS = frozenset({"address", "server_name", "department"})
_MAX_MESSAGE = 4 * 1024 * 1024


@dataclass(frozen=True)
class NodeAddress:
    """Where one province node serves ``ProvinceNodeService``."""

    #: The node's identity URI, ``hutong://province/<code>/node/<name>``.
    uri: str
    #: The node's province (from its URI).
    province_code: str
    #: ``HOST:PORT`` of ``hutong node serve``.
    address: str
    #: The name to verify in the node's server certificate; empty: the address's host.
    server_name: str = ""
    #: For a department's source (public security's vehicles, the tax bureau's wages): the department's
    #: name. Such a node answers household verifications only, and is asked beside its province's node.
    department: str = ""


@dataclass(frozen=True)
class NodeDirectory:
    """Every node the hub may ask for record details, in the directory file's order."""

    nodes: tuple[NodeAddress, ...] = ()

    def verification_sources(self) -> tuple[NodeAddress, ...]:
        """Who a household verification asks: the first node of each province, and every department source."""
        first: dict[str, NodeAddress] = {}
        departments = []
        for node in self.nodes:
            if node.department:
                departments.append(node)
            else:
                first.setdefault(node.province_code, node)
        return (*first.values(), *departments)

    def for_province(self, province_code: str) -> tuple[NodeAddress, ...]:
        """The nodes of one province that hold its records (not department sources), in the file's order."""
        return tuple(n for n in self.nodes if n.province_code == province_code and not n.department)


def _where(uri: str, key: str | None = None) -> str:
    table = f'nodes."{uri}"'
    return f"{table}.{key}" if key else table


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be HOST:PORT", reason="NODE_DIRECTORY_INVALID", field=where)
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or parse_port(port, low=1) is None:
        raise ConfigError(
            f"{where} must be HOST:PORT with a port from 1 to 65535, not {value!r}",
            reason="NODE_DIRECTORY_INVALID",
            field=where,
        )
    return value


def parse_node_directory(data: Mapping[str, Any], *, source: str = "the node directory") -> NodeDirectory:
    """Build the directory from a parsed TOML document; a ConfigError names the first key at fault."""
    for key in data:
        if key != "nodes":
            raise ConfigError(
                f"unknown key {key} in {source} (known: nodes)", reason="NODE_DIRECTORY_INVALID", field=key
            )
    table = data.get("nodes", {})
    if not isinstance(table, Mapping):
        raise ConfigError("nodes must be a table of node tables", reason="NODE_DIRECTORY_INVALID", field="nodes")
    nodes: list[NodeAddress] = []
    seen: dict[str, str] = {}
    for uri, entry in table.items():
        try:
            identity = NodeIdentity.parse_uri(uri)
        except PkiError as exc:
            raise ConfigError(
                f"{_where(uri)}: nodes are keyed by their identity URI: {exc.message}",
                reason="NODE_DIRECTORY_INVALID",
                field=_where(uri),
            ) from exc
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{_where(uri)} must be a table", reason="NODE_DIRECTORY_INVALID", field=_where(uri))
        for key in entry:
            if key not in _NODE_KEYS:
                raise ConfigError(
                    f"unknown key {_where(uri, key)} (known: {', '.join(sorted(_NODE_KEYS))})",
                    reason="NODE_DIRECTORY_INVALID",
                    field=_where(uri, key),
                )
        if "address" not in entry:
            raise ConfigError(
                f"{_where(uri, 'address')} is required", reason="NODE_DIRECTORY_INVALID", field=_where(uri, "address")
            )
        address = _address(entry["address"], _where(uri, "address"))
        server_name = entry.get("server_name", "")
        if not isinstance(server_name, str) or ("server_name" in entry and not server_name.strip()):
            raise ConfigError(
                f"{_where(uri, 'server_name')} must be a non-empty host name",
                reason="NODE_DIRECTORY_INVALID",
                field=_where(uri, "server_name"),
            )
        if address in seen:
            raise ConfigError(
                f"{_where(uri, 'address')}: {address} is also the address of {seen[address]}",
                reason="NODE_DIRECTORY_INVALID",
                field=_where(uri, "address"),
            )
        department = entry.get("department", "")
        if not isinstance(department, str) or ("department" in entry and not department.strip()):
            raise ConfigError(
                f"{_where(uri, 'department')} must name the department",
                reason="NODE_DIRECTORY_INVALID",
                field=_where(uri, "department"),
            )
        seen[address] = uri
        nodes.append(NodeAddress(identity.uri, identity.province_code, address, server_name, department.strip()))
    return NodeDirectory(tuple(nodes))


def load_node_directory(path: Path) -> NodeDirectory:
    """Read and check a federation directory file (TOML)."""
    data = read_toml(path, what="node directory", field="node_directory", invalid="NODE_DIRECTORY_INVALID")
    return parse_node_directory(data, source=str(path))


@dataclass(frozen=True)
class FederationSettings:
    """How the hub calls province nodes for record details."""

    #: Longest the hub waits for nodes in one call, seconds; also the budget when the caller set no deadline.
    max_seconds: float = 10.0
    #: Seconds of the caller's remaining time kept for the hub's own work (audit, answer).
    deadline_margin: float = 0.3
    #: First wait before retrying a node that failed UNAVAILABLE, seconds (then doubling, with jitter).
    initial_backoff: float = 0.05
    #: Longest wait between attempts, seconds.
    max_backoff: float = 1.0
    #: Attempts per node and record, at most (the deadline usually ends them first).
    max_attempts: int = 4
    #: Seconds each source of a household verification gets to answer (its deadline).
    verification_seconds: float = 30.0


_FAILURE_MESSAGES = {
    query_pb2.DETAIL_FAILURE_REASON_NODE_UNAVAILABLE: "the province's node could not be reached",
    query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED: "the province's node did not answer within the deadline",
    query_pb2.DETAIL_FAILURE_REASON_NODE_REFUSED: "the province's node refused or failed the request",
    query_pb2.DETAIL_FAILURE_REASON_NODE_NOT_REGISTERED: "no node of this province is in the hub's node directory",
    query_pb2.DETAIL_FAILURE_REASON_RECORD_NOT_FOUND: "the province's node holds no detail for the hub's record",
}


def _failure(
    province_code: str, reason: query_pb2.DetailFailureReason.ValueType, cause: str = ""
) -> query_pb2.DetailFailure:
    message = _FAILURE_MESSAGES[reason] + (f" ({cause})" if cause else "")
    return query_pb2.DetailFailure(province_code=province_code, reason=reason, message=message)


def _reason_of(code: grpc.StatusCode) -> query_pb2.DetailFailureReason.ValueType:
    if code == grpc.StatusCode.UNAVAILABLE:
        return query_pb2.DETAIL_FAILURE_REASON_NODE_UNAVAILABLE
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED
    if code == grpc.StatusCode.NOT_FOUND:
        return query_pb2.DETAIL_FAILURE_REASON_RECORD_NOT_FOUND
    return query_pb2.DETAIL_FAILURE_REASON_NODE_REFUSED


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


class DetailFetcher:
    """Asks province nodes for record details on the hub's behalf; one channel per node, kept open."""

    def __init__(
        self, directory: NodeDirectory, tls: TlsMaterial, settings: FederationSettings = FederationSettings()
    ) -> None:
        self.directory = directory
        self.settings = settings
        self._credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
        self._channels: dict[str, tuple[grpc.aio.Channel, node_pb2_grpc.ProvinceNodeServiceStub]] = {}

    def budget(self, time_remaining: float | None) -> float:
        """Seconds the nodes get, from the incoming call's remaining time (None: no deadline)."""
        s = self.settings
        if time_remaining is None:
            return s.max_seconds
        return min(s.max_seconds, time_remaining - s.deadline_margin)

    def _stub(self, node: NodeAddress) -> node_pb2_grpc.ProvinceNodeServiceStub:
        held = self._channels.get(node.uri)
        if held is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                # Retry a node that was down soon after it comes back, not after gRPC's default
                # reconnect backoff (1 s, growing to 2 min): attempts are spaced by tenacity.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            if node.server_name:
                options.append(("grpc.ssl_target_name_override", node.server_name))
            channel = grpc.aio.secure_channel(node.address, self._credentials, options=options)
            held = self._channels[node.uri] = (channel, node_pb2_grpc.ProvinceNodeServiceStub(channel))
        return held[1]

    async def close(self) -> None:
        """Close every node channel."""
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close()

    async def fetch(
        self,
        held: Sequence[tuple[str, str]],
        *,
        purpose: Purpose,
        requester: NodeRef,
        request_id: str,
        budget: float,
    ) -> tuple[list[node_pb2.RecordDetail], list[query_pb2.DetailFailure]]:
        """Details of the records ``held`` ((province code, record id) pairs), asked of their nodes at once.

        Returns the details (each filtered by purpose again) and one failure per record whose
        province's nodes did not answer, both ordered by province.
        """
        deadline = time.monotonic() + budget
        requests = [
            node_pb2.ProvinceNodeServiceFetchRecordDetailRequest(
                record_id=record_id,
                purpose=purpose.value,  # type: ignore[arg-type]
                requester=node_pb2.Requester(node_uri=requester.uri, province_code=requester.province_code),
                hub_request_id=request_id,
            )
            for _, record_id in held
        ]
        results = await asyncio.gather(
            *(
                self._fetch_one(province, request, purpose, request_id, deadline)
                for (province, _), request in zip(held, requests, strict=True)
            )
        )
        details = [r for r in results if isinstance(r, node_pb2.RecordDetail)]
        failures: list[query_pb2.DetailFailure] = []
        for r in results:
            if isinstance(r, query_pb2.DetailFailure) and r not in failures:
                failures.append(r)
        details.sort(key=lambda d: (d.province_code, d.record.record_id))
        failures.sort(key=lambda f: (f.province_code, f.reason))
        return details, failures

    async def _fetch_one(
        self,
        province: str,
        request: node_pb2.ProvinceNodeServiceFetchRecordDetailRequest,
        purpose: Purpose,
        request_id: str,
        deadline: float,
    ) -> node_pb2.RecordDetail | query_pb2.DetailFailure:
        """One record from the first node of its province that has it."""
        nodes = self.directory.for_province(province)
        if not nodes:
            log.warning("detail_node_not_registered", province_code=province)
            return _failure(province, query_pb2.DETAIL_FAILURE_REASON_NODE_NOT_REGISTERED)
        failure = _failure(province, query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED)
        for node in nodes:
            if deadline - time.monotonic() <= 0:
                break
            try:
                response = await self._call(node, "FetchRecordDetail", request, request_id, deadline)
            except grpc.aio.AioRpcError as exc:
                reason = _reason_of(exc.code())
                cause = error_from_rpc(exc.code(), exc.details(), exc.trailing_metadata()).reason
                log.warning(
                    "detail_node_failed", node=node.uri, address=node.address, code=exc.code().name, reason=cause
                )
                failure = _failure(province, reason, f"{node.uri}: {exc.code().name}, {cause}")
                if reason == query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED:
                    break  # the time is spent: the province's other nodes would not answer in time either
                continue
            # The province is the one the directory (and the node's certificate) names, not the node's say.
            detail = response.detail
            detail.province_code = province
            detail.node_uri = node.uri
            return filter_detail(detail, purpose)
        return failure

    async def answer_verification(
        self, node: NodeAddress, request: node_pb2.ProvinceNodeServiceAnswerVerificationRequest, request_id: str
    ) -> node_pb2.ProvinceNodeServiceAnswerVerificationResponse:
        """One source's part of a household verification, within its deadline (UNAVAILABLE is retried)."""
        deadline = time.monotonic() + self.settings.verification_seconds
        response: node_pb2.ProvinceNodeServiceAnswerVerificationResponse = await self._call(
            node, "AnswerVerification", request, request_id, deadline
        )
        return response

    async def _call(self, node: NodeAddress, method: str, request: Any, request_id: str, deadline: float) -> Any:
        s = self.settings
        call = getattr(self._stub(node), method)
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_is_unavailable),
            wait=tenacity.wait_random_exponential(multiplier=s.initial_backoff, max=s.max_backoff),
            stop=tenacity.stop_after_attempt(s.max_attempts)
            | tenacity.stop_before_delay(max(0.0, deadline - time.monotonic())),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                response = await call(
                    request,
                    timeout=max(0.001, deadline - time.monotonic()),
                    metadata=((REQUEST_ID_KEY, request_id),),
                )
                return response
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises the last error
