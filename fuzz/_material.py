"""Real material the targets need, built once per process: a scratch directory, a demo PKI, keys, rules, an export.

Everything is made from the repository's own examples (``deploy/``, ``adapters/profiles``,
``adapters/samples``) with the project's own functions, so a target starts from what the
product really reads. The scratch directory is removed at exit (:func:`cleanup`).
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import functools
import json
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.profile import Profile, load_profile
from fuzz._harness import ROOT
from gateway.audit.archive import export_log, hash_function
from gateway.audit.binding import bind_key
from gateway.audit.checkpoint import NoteVerifier, encode_verifier_key, sign_checkpoint
from gateway.audit.entry import AuditEntry
from gateway.audit.merkle import leaf_hash, root_hash
from gateway.domain.model import Program
from gateway.domain.standards import StandardsRegistry, load_standards
from gateway.domain.tiers import Area, PersonFacts, TierRules, evaluate, load_tier_rules
from gateway.hub.tokens import CONSOLE_AUDIENCE, TokenKeys, TokenService, certificate_thumbprint
from pki import DemoPki, write_demo_pki

__all__ = [
    "DAY",
    "EXPORT_ORIGIN",
    "SAMPLES",
    "TODAY",
    "AuditExport",
    "Tokens",
    "audit_export",
    "base64url",
    "cleanup",
    "demo_pki",
    "evidence_documents",
    "key_binding",
    "node_directory_example",
    "note_key",
    "pem_of",
    "person_facts",
    "private_key_pem",
    "profiles",
    "sample_entries",
    "scratch",
    "standards",
    "tier_rules",
    "tokens",
    "toml_documents",
    "write_input",
]

#: The date ID numbers and records are checked against: fixed, so that an input replays the same.
TODAY = dt.date(2026, 1, 1)
#: The day tier decisions are made on.
DAY = dt.date(2026, 3, 1)
EXPORT_ORIGIN = "hub.fuzz.example/hutong-audit"
#: Sample file of each adapter format.
SAMPLES = {
    "csv": ROOT / "adapters/samples/guangdong-440000.csv",
    "fixed-width": ROOT / "adapters/samples/zhejiang-330000.dat",
    "jsonl": ROOT / "adapters/samples/beijing-110000.jsonl",
    "xml": ROOT / "adapters/samples/jiangsu-320000.xml",
    "dbf": ROOT / "adapters/samples/henan-410000.dbf",
    "xlsx": ROOT / "adapters/samples/sichuan-510000.xlsx",
}
_PROVINCES = (("440000", "gz-01"), ("410000", "zz-01"))


@functools.cache
def scratch() -> Path:
    """A private temporary directory for this process, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="hutong-fuzz-"))
    atexit.register(cleanup)
    return path


def cleanup() -> None:
    """Remove the scratch directory (atheris ends a run with ``os._exit``, so it calls this itself)."""
    if scratch.cache_info().currsize:
        shutil.rmtree(scratch(), ignore_errors=True)


def write_input(name: str, data: bytes) -> Path:
    """``data`` in the scratch file ``name`` (overwritten by the next input)."""
    path = scratch() / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@functools.cache
def profiles() -> dict[str, Profile]:
    """The repository's adapter profile of each format."""
    out: dict[str, Profile] = {}
    for path in sorted((ROOT / "adapters/profiles").glob("*.toml")):
        profile = load_profile(path)
        out.setdefault(profile.format, profile)
    return out


@functools.cache
def toml_documents(kind: str) -> tuple[dict[str, Any], ...]:
    """The repository's example TOML files of one kind, parsed: the documents tree targets edit."""
    patterns = {
        "profile": ["adapters/profiles/*.toml"],
        "policy": ["deploy/policy.example.toml"],
        "tiers": ["deploy/tiers.example.toml"],
        "monitoring": ["deploy/monitoring.example.toml"],
        "hub": ["deploy/hub.example.toml"],
        "node": ["deploy/node.example.toml", "deploy/nodes/*.toml"],
    }.get(kind)
    if patterns is None:
        return (tomllib.loads(node_directory_example()),) if kind == "node_directory" else ()
    documents = []
    for pattern in patterns:
        for path in sorted(ROOT.glob(pattern)):
            documents.append(tomllib.loads(path.read_text(encoding="utf-8")))
    return tuple(documents)


@functools.cache
def node_directory_example() -> str:
    """The federation directory example of ``deploy/README.md`` (the ```toml block of ``nodes.toml``)."""
    readme = (ROOT / "deploy/README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL):
        if block.startswith("# nodes.toml"):
            return str(block)
    raise LookupError("deploy/README.md has no nodes.toml example")


@functools.cache
def tier_rules() -> TierRules:
    """``deploy/tiers.example.toml``."""
    return load_tier_rules(ROOT / "deploy/tiers.example.toml")


@functools.cache
def standards() -> StandardsRegistry:
    """``deploy/standards.example.csv`` as a registry."""
    return StandardsRegistry.from_files(load_standards(ROOT / "deploy/standards.example.csv"))


@functools.cache
def person_facts() -> tuple[PersonFacts, ...]:
    """Persons that between them meet every kind of condition of the example tier rules."""
    out = []
    for index, (income, rigid, mask, area) in enumerate(
        [
            (-1, -1, 0, Area.UNKNOWN),
            (0, 0, Program.DIBAO.bit, Area.URBAN),
            (50_000, 80_000, 0, Area.RURAL),
            (120_000, 10_000, 0, Area.URBAN),
            (100_000, 400_000, 0, Area.UNKNOWN),
            (900_000, 0, Program.MEDICAL.bit | Program.DIBAO_MARGINAL.bit, Area.RURAL),
        ]
    ):
        for division in ("440106", "510104"):
            out.append(
                PersonFacts(bytes([index + 1]) * 32, division[:2] + "0000", division, area, mask, income, rigid, 3)
            )
    return tuple(out)


@functools.cache
def evidence_documents() -> tuple[dict[str, Any], ...]:
    """The evidence of the example rules' decisions on :func:`person_facts`, as parsed JSON."""
    return tuple(
        json.loads(evaluate(tier_rules(), standards(), facts, DAY).canonical_evidence()) for facts in person_facts()
    )


@functools.cache
def demo_pki() -> DemoPki:
    """A throwaway CA, a hub certificate and two node certificates."""
    return write_demo_pki(scratch() / "pki", provinces=_PROVINCES)


@dataclass(frozen=True)
class Tokens:
    """A token service with a real key, and tokens it issued."""

    service: TokenService
    #: The thumbprint API tokens are bound to.
    thumbprint: str
    api_token: str
    console_token: str


@functools.cache
def tokens() -> Tokens:
    """A token service and one API and one console token of it."""
    service = TokenService(TokenKeys([("20260101-f00dcafe", ec.generate_private_key(ec.SECP256R1()))]))
    pem = demo_pki().nodes["hutong://province/440000/node/gz-01"].tls.cert_chain_pem
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    thumbprint = certificate_thumbprint(der)
    api, _ = service.issue("hutong://province/440000/node/gz-01", ["records:write"], thumbprint)
    console, _ = service.issue("operator", ["admin"], None, audience=CONSOLE_AUDIENCE)
    return Tokens(service, thumbprint, api, console)


@functools.cache
def note_key() -> tuple[Ed25519PrivateKey, NoteVerifier]:
    """The checkpoint key of the export and of the checkpoint targets."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return key, NoteVerifier.of(EXPORT_ORIGIN, key.public_key())


@functools.cache
def key_binding() -> bytes:
    """A key binding document: the demo hub certificate vouching for :func:`note_key`."""
    key, _ = note_key()
    tls = demo_pki().hub_tls
    return bind_key(
        encode_verifier_key(EXPORT_ORIGIN, key.public_key()),
        EXPORT_ORIGIN,
        cert_chain_pem=tls.cert_chain_pem,
        private_key_pem=tls.private_key_pem,
    )


def sample_entries(count: int) -> list[bytes]:
    """Canonical audit entries, varied enough to use every member."""
    return [
        AuditEntry(
            time_us=1_767_225_600_000_000 + index,
            request_id=f"req-{index}",
            caller="hutong://province/440000/node/gz-01",
            province="440000",
            subject="hutong://province/440000/node/gz-01",
            method="/hutong.v1.AssistanceQueryService/CheckEnrollment",
            purpose="duplicate-check" if index % 2 else "低保 eligibility-review",
            outcome="OK" if index % 3 else "NOT_FOUND",
            counts={"matched": index % 4, "returned": index},
            person_keys=[f"{index:064x}", f"{index + 1:064x}"][: index % 3],
            payload_digest=f"{index:02x}" * 32,
            batch_id=f"batch-{index}" if index % 4 == 0 else "",
        ).encode()
        for index in range(count)
    ]


@dataclass
class _Log:
    """An in-memory :class:`gateway.audit.archive.AuditSource`."""

    entries: list[bytes]
    notes: list[str] = field(default_factory=list)
    origin: str = EXPORT_ORIGIN
    hash_name: str = "sha256"
    verifier_key: str = ""

    def tree_size(self) -> int:
        return len(self.entries)

    def read_entries(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        hash_fn = hash_function(self.hash_name)
        for entry in self.entries[start:end]:
            yield entry, leaf_hash(entry, hash_fn)

    def checkpoints(self) -> Iterator[str]:
        yield from self.notes

    def key_binding(self) -> bytes | None:
        return key_binding()


@dataclass(frozen=True)
class AuditExport:
    """An export of a small log on disk, and what verifies it."""

    directory: Path
    verifier: NoteVerifier
    #: Every file of the export, relative to ``directory``, sorted.
    files: tuple[str, ...]


@functools.cache
def audit_export() -> AuditExport:
    """A log of 10 entries in segments of 4, checkpoints signed at sizes 0, 3, 8 and 10."""
    key, verifier = note_key()
    entries = sample_entries(10)
    hash_fn = hash_function("sha256")
    leaves = [leaf_hash(entry, hash_fn) for entry in entries]
    notes = [
        sign_checkpoint(
            EXPORT_ORIGIN, size, root_hash(leaves[:size], hash_fn), EXPORT_ORIGIN, key, time_us=1_767_225_600 + size
        )
        for size in (0, 3, 8, 10)
    ]
    log = _Log(entries, notes, verifier_key=encode_verifier_key(EXPORT_ORIGIN, key.public_key()))
    directory = scratch() / "export"
    export_log(log, directory, segment_size=4)
    files = tuple(sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()))
    return AuditExport(directory, verifier, files)


def base64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs write their parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pem_of(der_or_pem: bytes) -> bytes:
    """A certificate in PEM (DER is wrapped)."""
    if der_or_pem.lstrip().startswith(b"-----BEGIN"):
        return der_or_pem
    body = base64.encodebytes(der_or_pem).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode("ascii")


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
