"""One check per parser of untrusted input: ``check(data: bytes) -> None`` raises on a broken contract.

Each check feeds ``data`` to the parser the way the product does (a file written to disk and
read by its loader, a string, a parsed document) and accepts a result or one of the project's
errors (:func:`~fuzz._harness.allowed`); any other exception escapes, and so does a broken
invariant (:func:`~fuzz._harness.expect`). Targets named ``*_tree`` take a real example
document and apply the edits the input's bytes choose (:mod:`fuzz._tree`); the others take the
input as the file, string or bytes the parser reads, sometimes after a first byte that chooses
an option (say so in their docstring, and their seeds in ``fuzz/corpus`` carry it).

``TARGETS`` (from :mod:`fuzz._harness`) lists them all; ``fuzz/run.py`` runs them under atheris
and ``tests/unit/test_fuzz_regressions.py`` replays saved inputs through them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import io
import json
import math
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.profile import (
    CODE_TARGETS,
    ENCODINGS,
    FORMATS,
    RECORD_FIELDS,
    TRANSFORMS,
    Profile,
    load_profile,
    parse_profile,
)
from adapters.run import Reject, adapt, record_to_json
from fuzz import _material as material
from fuzz._harness import ROOT, TARGETS, ByteReader, InvariantBroken, allowed, expect, target
from fuzz._tree import mutate, strings_of, to_json, to_toml
from gateway.audit.archive import read_export_entries, verify_export
from gateway.audit.binding import verify_binding
from gateway.audit.checkpoint import (
    encode_signer_key,
    parse_checkpoint,
    parse_checkpoint_body,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    verify_checkpoint,
)
from gateway.audit.entry import AuditEntry
from gateway.domain.access import SCOPES, AccessPolicy
from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.identity import (
    is_valid_id_number,
    mask_id_number,
    normalize_id_number,
    parse_id_number,
    propose_corrections,
)
from gateway.domain.model import PersonRecord
from gateway.domain.monitoring import HouseholdFacts, MonitoringRules, load_rules, parse_rules
from gateway.domain.standards import StandardsRegistry, parse_standards
from gateway.domain.tiers import TierRules, evaluate, load_tier_rules, parse_tier_rules, reproduce, rules_from_canonical
from gateway.errors import HutongError
from gateway.hub.config import load_hub_config
from gateway.hub.federation import NodeDirectory, load_node_directory, parse_node_directory
from gateway.hub.interceptors import Authenticator
from gateway.hub.server import load_policy
from gateway.node.config import load_node_config
from gateway.node.verification import ItemIndex, SourceMapping
from gateway.pki_commands import _read_csr as read_csr
from pki import NodeIdentity, hub_names_from_certificate, identity_from_certificate
from pki._ca import check_node_csr, csr_server_names
from pki._files import read_certificates
from pki._inspect import inspect_file

__all__ = ["TARGETS"]


# ------------------------------------------------------------------------------------ adapters

#: What an adapter run goes through besides its reader: the mapping and the hub's record rules.
_ADAPTING = ("adapters", "gateway.domain.records", "gateway.domain.identity", "gateway.domain.divisions")
#: Encodings an adapter target may read a sample's format with (None: the profile's own).
_ENCODING_VARIANTS: tuple[str | None, ...] = (None, *ENCODINGS)


def _adapt(profile: Profile, path: Path) -> None:
    """Run ``profile`` over ``path``; every row must be a record or a reject, and both must serialise."""
    records: list[PersonRecord] = []
    rejects: list[Reject] = []
    summary = allowed(adapt, profile, [path], on_record=records.append, on_reject=rejects.append, today=material.TODAY)
    if summary is None:
        return
    for file in summary.files:
        expect(
            file.rows_read == file.produced + file.rejected,
            "adapter-rows-accounted",
            f"read {file.rows_read}, produced {file.produced}, rejected {file.rejected}",
        )
    expect(summary.produced == len(records) and summary.rejected == len(rejects), "adapter-outcomes-counted")
    for reject in rejects:
        expect(reject.problems, "adapter-reject-says-why")
        json.loads(reject.to_json())
    for record in records:
        expect(record.id_number_unverified or len(record.id_number) == 18, "adapter-id-number-normalised")
        line = record_to_json(record)
        json.loads(line)
        # Records are written as UTF-8 lines and sent as protobuf strings: text with a lone surrogate
        # (a JSON "\ud800") can be neither.
        expect(_encodes(line), "adapter-record-is-utf-8", "a field holds a lone surrogate")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _adapter_check(fmt: str, data: bytes) -> None:
    reader = ByteReader(data)
    encoding = reader.pick(_ENCODING_VARIANTS)
    profile = material.profiles()[fmt]
    if encoding is not None:
        profile = dataclasses.replace(profile, encoding=encoding)
    _adapt(profile, material.write_input(f"source.{fmt}", reader.rest()))


@target("adapter_csv", *_ADAPTING)
def adapter_csv(data: bytes) -> None:
    """A CSV export through the Guangdong profile (first byte: the encoding, profile's own or one of ENCODINGS)."""
    _adapter_check("csv", data)


@target("adapter_fixed_width", *_ADAPTING)
def adapter_fixed_width(data: bytes) -> None:
    """A fixed-width export through the Zhejiang profile (first byte: the encoding)."""
    _adapter_check("fixed-width", data)


@target("adapter_jsonl", *_ADAPTING)
def adapter_jsonl(data: bytes) -> None:
    """A JSON Lines export through the Beijing profile (first byte: the encoding)."""
    _adapter_check("jsonl", data)


@target("adapter_xml", *_ADAPTING)
def adapter_xml(data: bytes) -> None:
    """An XML export through the Jiangsu profile (first byte: the encoding)."""
    _adapter_check("xml", data)


@target("adapter_dbf", *_ADAPTING, "dbfread", max_len=32768)
def adapter_dbf(data: bytes) -> None:
    """A DBF table through the Henan profile (first byte: the encoding)."""
    _adapter_check("dbf", data)


@functools.cache
def xlsx_parts() -> tuple[tuple[str, bytes], ...]:
    """The parts (zip members) of the Sichuan sample workbook, in archive order."""
    with zipfile.ZipFile(material.SAMPLES["xlsx"]) as archive:
        return tuple((info.filename, archive.read(info)) for info in archive.infolist())


@target("adapter_xlsx", *_ADAPTING, "openpyxl", "zipfile", max_len=65536)
def adapter_xlsx(data: bytes) -> None:
    """A workbook through the Sichuan profile: first byte < 0x80, the rest is the file; else the next byte
    picks a part of the sample workbook, which the rest replaces (the zip stays valid, its XML does not)."""
    reader = ByteReader(data)
    if reader.byte() & 0x80:
        parts = xlsx_parts()
        index = reader.below(len(parts))
        content = reader.rest()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for position, (name, body) in enumerate(parts):
                archive.writestr(name, content if position == index else body)
        file = buffer.getvalue()
    else:
        file = reader.rest()
    _adapt(material.profiles()["xlsx"], material.write_input("source.xlsx", file))


# ------------------------------------------------------------------------------------ profiles


def _profile_then_adapt(profile: Profile | None) -> None:
    if profile is not None and profile.format in material.SAMPLES:
        _adapt(profile, material.SAMPLES[profile.format])


@target("profile_toml", "adapters", "tomllib")
def profile_toml(data: bytes) -> None:
    """A profile file through load_profile; an accepted profile then reads its format's sample."""
    _profile_then_adapt(allowed(load_profile, material.write_input("profile.toml", data)))


_PROFILE_WORDS = (
    *FORMATS,
    *ENCODINGS,
    *TRANSFORMS,
    *RECORD_FIELDS,
    *(name for table in CODE_TARGETS.values() for name in table),
    "yuan",
    "fen",
    "excel",
    "YYYYMMDD",
    "YYYY-MM-DD HH:mm:ss",
    "send-unverified",
)


@functools.cache
def _words(kind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    documents = material.toml_documents(kind) if kind != "evidence" else material.evidence_documents()
    return tuple(sorted({*strings_of(list(documents)), *extra}))


@target("profile_tree", "adapters")
def profile_tree(data: bytes) -> None:
    """An edited repository profile through parse_profile; an accepted profile then reads its format's sample."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.toml_documents("profile")), reader, words=_words("profile", _PROFILE_WORDS))
    _profile_then_adapt(allowed(parse_profile, document))


# --------------------------------------------------------------------------------- ID numbers


@target("id_number", "gateway.domain.identity", max_len=256)
def id_number(data: bytes) -> None:
    """Text (UTF-8, errors replaced) through normalize_id_number, parse_id_number and propose_corrections."""
    text = data.decode("utf-8", "replace")
    normal = normalize_id_number(text)
    expect(normalize_id_number(normal) == normal, "id-normalise-idempotent")
    expect(len(mask_id_number(normal)) == len(normal), "id-mask-keeps-length")
    parsed = allowed(parse_id_number, text, today=material.TODAY)
    expect(is_valid_id_number(text, today=material.TODAY) == (parsed is not None), "id-valid-agrees-with-parse")
    proposals = propose_corrections(text, today=material.TODAY)
    if parsed is None:
        for proposal in proposals:
            expect(is_valid_id_number(proposal, today=material.TODAY), "id-proposal-valid")
        return
    expect(not proposals, "id-valid-has-no-proposal")
    value = parsed.value
    expect(len(value) == 18 and value.isascii(), "id-normal-form", "18 ASCII characters")
    expect(parse_id_number(value, today=material.TODAY).value == value, "id-parse-idempotent")
    expect(parsed.province_code in PROVINCE_CODES, "id-province-known")
    expect(parsed.birth_date <= material.TODAY, "id-birth-not-future")
    _ = (parsed.gender, parsed.kind, parsed.sequence, repr(parsed))  # every property must answer


# ---------------------------------------------------------------------------------- standards


@target("standards_csv", "gateway.domain.standards", "gateway.domain.divisions")
def standards_csv(data: bytes) -> None:
    """A standards file through parse_standards (first byte: encoding detected or given, and province or not)."""
    reader = ByteReader(data)
    option = reader.byte()
    encoding = (None, "utf-8", "utf-8-sig", "gbk", "gb18030")[option % 5]
    province = "440000" if option & 0x80 else None
    loaded = allowed(parse_standards, reader.rest(), encoding=encoding, province=province)
    if loaded is None:
        return
    expect(loaded.rows_read == loaded.loaded + len(loaded.rejected), "standards-rows-accounted")
    registry = StandardsRegistry.from_files(loaded)
    again = StandardsRegistry.from_canonical(registry.canonical())
    expect(again.canonical() == registry.canonical(), "standards-canonical-round-trip")
    loaded.summary()


@target("stored_canonical", "gateway.domain.standards", "gateway.domain.tiers")
def stored_canonical(data: bytes) -> None:
    """Stored canonical JSON (first byte: standards registry or tier rules) through from_canonical."""
    reader = ByteReader(data)
    as_rules = reader.byte() % 2
    text = reader.rest().decode("utf-8", "replace")
    if as_rules:
        rules = allowed(rules_from_canonical, text)
        if rules is not None:
            expect(rules_from_canonical(rules.canonical()).digest == rules.digest, "tier-rules-canonical-round-trip")
        return
    registry = allowed(StandardsRegistry.from_canonical, text)
    if registry is not None:
        expect(StandardsRegistry.from_canonical(registry.canonical()) == registry, "standards-canonical-round-trip")


# -------------------------------------------------------------------------------------- tiers


def _check_tier_rules(rules: TierRules | None) -> None:
    """Accepted rules survive their canonical form, decide every example person, and each decision reproduces."""
    if rules is None:
        return
    try:
        again = rules_from_canonical(rules.canonical())
    except HutongError as exc:
        raise InvariantBroken("tier-rules-canonical-round-trip", repr(exc)) from exc
    expect(again.digest == rules.digest, "tier-rules-canonical-round-trip")
    for facts in material.person_facts():
        decision = evaluate(rules, material.standards(), facts, material.DAY)
        decision.summary()
        try:
            reproduced = reproduce(json.loads(decision.canonical_evidence()), rules)
        except HutongError as exc:
            raise InvariantBroken("tier-decision-reproduces", repr(exc)) from exc
        expect(reproduced.tier == decision.tier, "tier-decision-reproduces")


@target("tier_rules_toml", "gateway.domain.tiers", "tomllib")
def tier_rules_toml(data: bytes) -> None:
    """A tier rules file through load_tier_rules; accepted rules are checked as in _check_tier_rules."""
    _check_tier_rules(allowed(load_tier_rules, material.write_input("tiers.toml", data)))


_TIER_WORDS = (
    "dibao",
    "dibao_urban",
    "dibao_rural",
    "extreme_poverty",
    "times",
    "standard",
    "enrolled",
    "not_enrolled",
    "members_at_least",
    "income_below",
    "income_at_least",
    "income_after_rigid_below",
    "rigid_expenditure_ratio_at_least",
    "rural",
    "urban",
    "none",
)


@target("tier_rules_tree", "gateway.domain.tiers")
def tier_rules_tree(data: bytes) -> None:
    """The example tier rules, edited, written as TOML, through parse_tier_rules, then as _check_tier_rules."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.toml_documents("tiers")), reader, words=_words("tiers", _TIER_WORDS))
    _check_tier_rules(allowed(parse_tier_rules, to_toml(document)))


@target("tier_evidence", "gateway.domain.tiers", "gateway.domain.standards")
def tier_evidence(data: bytes) -> None:
    """The evidence of a real decision, edited, through reproduce (JSON text, so it is JSON data only)."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.evidence_documents()), reader, words=_words("evidence", _TIER_WORDS))
    # Through JSON text, as stored evidence is read: JSON data only (an edited-in date becomes text).
    allowed(reproduce, json.loads(to_json(document)), material.tier_rules())


# --------------------------------------------------------------------------------- monitoring

_HOUSEHOLDS = tuple(
    HouseholdFacts("440000", f"h{index}", division, income, programs, members, ("r1",))
    for index, (division, income, programs, members) in enumerate(
        [("440106", -1, 0, 1), ("440106", 0, 1, 3), ("440100", 50_000, 0b10, 2), ("441900", 10**12, 0, 9)]
    )
)


def _check_monitoring(rules: MonitoringRules | None) -> None:
    if rules is None:
        return
    rules.digest  # noqa: B018 - the canonical form must be writable
    for household in _HOUSEHOLDS:
        rules.evaluate(household)


@target("monitoring_toml", "gateway.domain.monitoring", "tomllib")
def monitoring_toml(data: bytes) -> None:
    """A monitoring rules file through load_rules; accepted rules are evaluated on a few households."""
    _check_monitoring(allowed(load_rules, material.write_input("monitoring.toml", data)))


@target("monitoring_tree", "gateway.domain.monitoring")
def monitoring_tree(data: bytes) -> None:
    """The example monitoring rules, edited, written as TOML, through parse_rules, then evaluated."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.toml_documents("monitoring")), reader, words=_words("monitoring"))
    _check_monitoring(allowed(parse_rules, to_toml(document)))


# ------------------------------------------------------------------------------------- policy


def _check_policy(policy: AccessPolicy | None) -> None:
    if policy is None:
        return
    for node in (policy.default, *policy.nodes.values()):
        expect(
            math.isfinite(node.rate_per_second) and node.rate_per_second > 0,
            "policy-rate-finite-positive",
            f"rate_per_second {node.rate_per_second}: a token bucket with it limits nothing",
        )
        expect(isinstance(node.burst, int) and node.burst >= 1, "policy-burst-positive")
        expect(node.scopes <= set(SCOPES), "policy-scopes-known")


@target("policy_toml", "gateway.domain.access", "gateway.hub.server", "tomllib")
def policy_toml(data: bytes) -> None:
    """An access policy file through load_policy; rates must be finite and positive."""
    _check_policy(allowed(load_policy, material.write_input("policy.toml", data)))


@target("policy_tree", "gateway.domain.access")
def policy_tree(data: bytes) -> None:
    """The example policy, edited, through AccessPolicy.from_mapping; rates must be finite and positive."""
    reader = ByteReader(data)
    words = _words("policy", (*SCOPES, "eligibility-review", "duplicate-check", "audit"))
    document = mutate(reader.pick(material.toml_documents("policy")), reader, words=words)
    _check_policy(allowed(AccessPolicy.from_mapping, document))


# ------------------------------------------------------------------------------- node directory


def _check_directory(directory: NodeDirectory | None) -> None:
    if directory is None:
        return
    for node in directory.nodes:
        expect(NodeIdentity.parse_uri(node.uri).uri == node.uri, "directory-uri-canonical")
        _, _, port = node.address.rpartition(":")
        expect(port.isascii() and 1 <= int(port) <= 65535, "directory-port-in-range")
        directory.for_province(node.province_code)
    directory.verification_sources()


@target("node_directory_toml", "gateway.hub.federation", "pki._identity", "tomllib")
def node_directory_toml(data: bytes) -> None:
    """A federation directory file through load_node_directory."""
    _check_directory(allowed(load_node_directory, material.write_input("nodes.toml", data)))


@target("node_directory_tree", "gateway.hub.federation", "pki._identity")
def node_directory_tree(data: bytes) -> None:
    """The directory example of deploy/README.md, edited, through parse_node_directory."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.toml_documents("node_directory")), reader, words=_words("node_directory"))
    _check_directory(allowed(parse_node_directory, document))


# ------------------------------------------------------------------------------ hub and node config


@target("hub_config_tree", "gateway.hub.config", "gateway.toml_config")
def hub_config_tree(data: bytes) -> None:
    """deploy/hub.example.toml, edited, written as hub.toml, through load_hub_config."""
    reader = ByteReader(data)
    document = mutate(reader.pick(material.toml_documents("hub")), reader, words=_words("hub"))
    allowed(load_hub_config, material.write_input("config/hub.toml", to_toml(document).encode("utf-8")))


@functools.cache
def _node_config_dir() -> Path:
    """A scratch config directory holding the verification files node.example.toml names."""
    directory = material.scratch() / "inputs" / "config"
    shutil.copytree(ROOT / "deploy/verification", directory / "verification", dirs_exist_ok=True)
    return directory


def _readable_here(mapping: SourceMapping, base: Path) -> bool:
    # Only files of the scratch directory, directories, and paths no file can have (a NUL in them):
    # a mapping edited to name /dev/zero or a system file is not the parser's input.
    file = mapping.file
    if "\x00" in str(file):
        return True
    return file.is_dir() or (file.resolve().is_relative_to(base.resolve()) and not file.is_symlink())


@target("node_config_tree", "gateway.node", "gateway.toml_config", "adapters")
def node_config_tree(data: bytes) -> None:
    """deploy/node.example.toml (or deploy/nodes/*), edited, through load_node_config; its sources are indexed."""
    reader = ByteReader(data)
    document = mutate(
        reader.pick(material.toml_documents("node")), reader, words=_words("node", ("csv", "jsonl", "yuan", "fen"))
    )
    base = _node_config_dir()
    config = allowed(load_node_config, material.write_input("config/node.toml", to_toml(document).encode("utf-8")))
    if config is None or not config.verification.sources:
        return
    if all(_readable_here(mapping, base) for mapping in config.verification.sources):
        _index(list(config.verification.sources))


# --------------------------------------------------------------------------- verification sources


@functools.cache
def _verification_sources() -> dict[str, SourceMapping]:
    """The example node's verification sources (deploy/node.example.toml), by format."""
    config = load_node_config(ROOT / "deploy/node.example.toml")
    return {mapping.format: mapping for mapping in config.verification.sources}


@functools.cache
def _item_index() -> ItemIndex:
    return ItemIndex.open(material.scratch() / "verification.sqlite")


def _index(mappings: list[SourceMapping]) -> None:
    summaries = allowed(_item_index().update, mappings)
    for summary in summaries or ():
        expect(summary.rows == summary.loaded + summary.rejected, "verification-rows-accounted")


def _verification_check(fmt: str, data: bytes) -> None:
    mapping = _verification_sources()[fmt]
    path = material.write_input(f"verification.{fmt}", data)
    _index([dataclasses.replace(mapping, file=path)])


@target("verification_csv", "gateway.node.verification", "adapters.csv_reader", "adapters.mapping")
def verification_csv(data: bytes) -> None:
    """A verification source file (CSV, GBK) through the node's ItemIndex with node.example.toml's mapping."""
    _verification_check("csv", data)


@target("verification_jsonl", "gateway.node.verification", "adapters.jsonl_reader", "adapters.mapping")
def verification_jsonl(data: bytes) -> None:
    """A verification source file (JSON Lines) through the node's ItemIndex with node.example.toml's mapping."""
    _verification_check("jsonl", data)


# -------------------------------------------------------------------------------------- audit


def _check_entry(data: bytes) -> None:
    entry = allowed(AuditEntry.decode, data)
    if entry is not None:
        expect(entry.encode() == data, "audit-entry-canonical", "decode(b).encode() == b")


@target("audit_entry", "gateway.audit.entry", max_len=16384)
def audit_entry(data: bytes) -> None:
    """Bytes through AuditEntry.decode; an accepted entry encodes back to the same bytes."""
    _check_entry(data)


@functools.cache
def _entry_documents() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(entry) for entry in material.sample_entries(6))


@target("audit_entry_tree", "gateway.audit.entry")
def audit_entry_tree(data: bytes) -> None:
    """A real entry's JSON, edited, written canonically (sorted keys, no spaces), through AuditEntry.decode."""
    reader = ByteReader(data)
    document = mutate(reader.pick(_entry_documents()), reader, words=strings_of(list(_entry_documents())))
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    _check_entry(text.encode("utf-8", "surrogatepass"))


@target("checkpoint", "gateway.audit.checkpoint", max_len=16384)
def checkpoint(data: bytes) -> None:
    """Text through parse_note, parse_checkpoint_body, parse_checkpoint and verify_checkpoint; parts re-encode."""
    text = data.decode("utf-8", "replace")
    _, verifier = material.note_key()
    note = allowed(parse_note, text)
    if note is not None:
        lines = "".join(f"— {s.name} {base64.b64encode(s.key_hash + s.signature).decode()}\n" for s in note.signatures)
        expect(note.text + "\n" + lines == text, "note-re-encodes")
    body = allowed(parse_checkpoint_body, text)
    if body is not None:
        expect(body.body() == text, "checkpoint-body-re-encodes")
        body.time_us  # noqa: B018 - the time extension must read
    parsed = allowed(parse_checkpoint, text)
    if parsed is not None:
        parsed.time_us  # noqa: B018
    verified = allowed(verify_checkpoint, text, verifier.name, verifier.public_key)
    if verified is not None:
        verified.time_us  # noqa: B018


@target("note_keys", "gateway.audit.checkpoint", max_len=1024)
def note_keys(data: bytes) -> None:
    """Text through parse_verifier_key and parse_signer_key; accepted keys encode back to the same text."""
    text = data.decode("utf-8", "replace")
    verifier = allowed(parse_verifier_key, text)
    if verifier is not None:
        expect(str(verifier) == text, "verifier-key-re-encodes")
    signer = allowed(parse_signer_key, text)
    if signer is not None:
        expect(encode_signer_key(*signer) == text, "signer-key-re-encodes")


@functools.cache
def _binding_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(material.key_binding())
    return document


@target("key_binding", "gateway.audit.binding", "gateway.audit.checkpoint")
def key_binding(data: bytes) -> None:
    """A key binding through verify_binding: first byte 0 the rest is the document; 1 the real one edited;
    2 the real one with its hub certificate's DER edited (pairs of position and byte)."""
    reader = ByteReader(data)
    mode = reader.byte() % 3
    if mode == 0:
        document = reader.rest()
    elif mode == 1:
        base = _binding_document()
        document = to_json(mutate(base, reader, words=strings_of(base)), indent=2)
    else:
        base = dict(_binding_document())
        der = bytearray(x509.load_pem_x509_certificate(base["certificates"][0].encode()).public_bytes(_DER))
        while not reader.exhausted:
            der[reader.below(len(der))] = reader.byte()
        base["certificates"] = [material.pem_of(bytes(der)).decode("ascii"), *base["certificates"][1:]]
        document = to_json(base, indent=2)
    allowed(verify_binding, document, material.demo_pki().hub_tls.ca_pem)


@target("audit_export", "gateway.audit", "gzip", max_len=32768)
def audit_export(data: bytes) -> None:
    """A real export with one file changed, through verify_export (entries checked) and read_export_entries.

    First byte: 0 replace a file (next byte: which) by the rest; 1 the same, gzip-compressed; 2 log.json
    edited as JSON; 3 remove a file; 4 add a stray file; 5 the rest as a known checkpoint.
    """
    export = material.audit_export()
    reader = ByteReader(data)
    mode = reader.byte() % 6
    touched = export.directory / (reader.pick(export.files) if mode != 2 else "log.json")
    if mode == 4:
        stray = reader.pick(("00000000000000000012", "x", "00000000000000000040"))
        touched = touched.with_name(stray + "".join(touched.suffixes))
    original = touched.read_bytes() if touched.exists() else None
    known: list[str] = []
    if mode in (0, 4):
        touched.write_bytes(reader.rest())
    elif mode == 1:
        touched.write_bytes(gzip.compress(reader.rest(), mtime=0))
    elif mode == 2:
        manifest = json.loads(original or b"{}")
        touched.write_bytes(to_json(mutate(manifest, reader, words=strings_of(manifest))))
    elif mode == 3:
        touched.unlink()
    else:
        known.append(reader.rest().decode("utf-8", "replace"))
    try:
        allowed(verify_export, export.directory, export.verifier, known=known, check_entries=True)
        allowed(lambda: sum(1 for _ in read_export_entries(export.directory)))
    finally:
        if original is None:
            touched.unlink(missing_ok=True)
        else:
            touched.write_bytes(original)


# ----------------------------------------------------------------------------------------- PKI

_DER = serialization.Encoding.DER


@target("pki_inspect", "pki", max_len=8192)
def pki_inspect(data: bytes) -> None:
    """A file (PEM or DER certificate, chain, CSR or CRL) through inspect_file (``hutong pki inspect``)."""
    allowed(inspect_file, material.write_input("inspect.pem", data))


@target("pki_certificate", "pki", "gateway.hub.interceptors", max_len=8192)
def pki_certificate(data: bytes) -> None:
    """A certificate file (DER wrapped as PEM) through read_certificates (what loads a chain or a CA bundle),
    each certificate then through identity_from_certificate, hub_names_from_certificate and the hub's peer
    authenticator."""
    certificates = allowed(read_certificates, material.write_input("certificate.pem", material.pem_of(data)))
    for cert in certificates or ():
        identity = allowed(identity_from_certificate, cert)
        if identity is not None:
            expect(NodeIdentity.parse_uri(identity.uri) == identity, "certificate-identity-canonical")
        allowed(hub_names_from_certificate, cert)
        allowed(Authenticator._parse, cert.public_bytes(serialization.Encoding.PEM))


@target("pki_csr", "pki", "gateway.pki_commands", max_len=8192)
def pki_csr(data: bytes) -> None:
    """A CSR file (PEM or DER) read as ``hutong pki issue`` reads it, through check_node_csr and
    csr_server_names; an accepted one is issued by the demo CA and must name the same node."""
    csr = allowed(read_csr, material.write_input("request.csr", data))
    if csr is None:
        return
    checked = allowed(check_node_csr, csr)
    allowed(csr_server_names, csr)
    if checked is None:
        return
    cert = allowed(material.demo_pki().ca.issue_from_csr, csr, server_names=True)
    if cert is not None:
        expect(identity_from_certificate(cert) == checked[0], "issued-certificate-names-the-csr-node")


# -------------------------------------------------------------------------------------- tokens


@target("tokens", "gateway.hub.tokens", "jwt", max_len=8192)
def tokens(data: bytes) -> None:
    """A bearer token through TokenService.verify and verify_console: first byte even, the rest is the token;
    odd, the rest is split into header, claims and signature, each base64url-encoded."""
    material_tokens = material.tokens()
    reader = ByteReader(data)
    if reader.byte() % 2 == 0:
        token = reader.rest().decode("utf-8", "replace")
    else:
        header = reader.take(reader.below(1024))
        claims = reader.take(reader.below(2048))
        token = ".".join(material.base64url(part) for part in (header, claims, reader.rest()))
    allowed(material_tokens.service.verify, token, material_tokens.thumbprint)
    allowed(material_tokens.service.verify_console, token)
