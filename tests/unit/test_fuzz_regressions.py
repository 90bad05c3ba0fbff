"""Fuzzing's inputs, replayed: seeds and saved crashes keep the parsers' contract, and a fixed crash stays fixed.

The contract (``fuzz/__init__.py``): bad input raises one of the project's errors or gives a result;
anything else, or a broken invariant, is a bug. Every file of ``fuzz/corpus/<target>/`` (the seeds,
from the repository's samples) and of ``fuzz/regressions/<target>/`` (inputs that once crashed a
parser) goes through the target's check function, without atheris. A crash not fixed yet is an
expected failure here (strict: fixing it turns the test red until its mark is removed), listed in
``KNOWN_BUGS`` with what is wrong and where the fix goes. The live hub's saved requests, and a
bounded run of random and mutated requests, go through a real hub.
"""

from __future__ import annotations

import csv
import decimal
import gzip
import importlib
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # fuzz/ is a folder of the repository, not an installed package


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


targets = _module("fuzz.targets")
live_server = _module("fuzz.live_server")
checkpoint_module = _module("gateway.audit.checkpoint")
entry_module = _module("gateway.audit.entry")

FUZZ = ROOT / "fuzz"
TARGETS: dict[str, Any] = targets.TARGETS

InvariantBroken: type[AssertionError] = _module("fuzz._harness").InvariantBroken
_NOT_UTF8 = "{} reads the file as UTF-8 and lets UnicodeDecodeError out: catch it as a ConfigError"
_UNKNOWN_HOME = (
    "Section.{} expands '~nosuchuser/...' and lets RuntimeError out: catch it (and ValueError) as a ConfigError"
)
_SUPERSCRIPT = "{}: str.isdigit() accepts '²', then int() raises ValueError: check the port with isascii() too"
_DATE_PATTERN = (
    "a date pattern naming a field twice (YYYY...YYYY) passes the profile's check, then re.compile raises re.error"
    " in adapters.mapping._compiled: refuse repeated tokens in _check_date_pattern (and in the node's date_format)"
)
_CERT = "cryptography raises {} (not a ValueError) for a malformed certificate: {} must catch it"

#: Saved inputs that still break the contract: "<target>/<file>" → (what is wrong and where to fix it, the
#: exception the replay raises). Remove an entry once its fix lands (the strict mark makes the test fail).
KNOWN_BUGS: dict[str, tuple[str, type[BaseException]]] = {
    "adapter_csv/header-bare-cr": (
        "a header line holding a bare CR (or a field over csv's 131,072-character limit) makes csv.reader raise"
        " csv.Error in adapters.csv_reader.read_delimited, where data rows are guarded: raise SourceError",
        csv.Error,
    ),
    "verification_csv/header-bare-cr": ("the same csv.Error, through the node's verification index", csv.Error),
    "adapter_xml/declared-encoding-zlib": (
        "<?xml encoding='zlib'?> (bz2, hex, uu, punycode, undefined...) names a bytes-to-bytes codec that"
        " adapters.xml_reader._codec_name accepts: refuse codecs whose codecs.lookup(...)._is_text_encoding is false",
        zlib.error,
    ),
    "adapter_xml/declared-encoding-base64": ("the same: base64 (quopri, rot13) decodes to bytes", AttributeError),
    "profile_toml/not-utf-8": (_NOT_UTF8.format("adapters.profile.load_profile (tomllib.load)"), UnicodeDecodeError),
    "profile_toml/date-pattern-repeats-a-field": (_DATE_PATTERN, re.error),
    "node_config_tree/verification-date-format-repeats-a-field": (_DATE_PATTERN, re.error),
    "profile_tree/fixed-width-record-code-not-in-encoding": (
        "a fixed-width record code (format.data/header/trailer) not encodable in the profile's encoding ('²' in GBK)"
        " makes read_fixed_width raise UnicodeEncodeError: check it encodes in parse_profile",
        UnicodeEncodeError,
    ),
    "profile_tree/date-pattern-repeats-a-field": (_DATE_PATTERN, re.error),
    "stored_canonical/tier-rules-when-not-a-table": (
        "rules_from_canonical catches ValueError, KeyError, TypeError; a 'when' that is not an object raises"
        " AttributeError in _canonical_when: catch it too (or check types)",
        AttributeError,
    ),
    "stored_canonical/tier-rules-times-not-a-number": (
        "the same, a 'times' that is not a number: decimal.InvalidOperation (an ArithmeticError)",
        decimal.InvalidOperation,
    ),
    "stored_canonical/standards-nested-too-deep": (
        "StandardsRegistry.from_canonical catches ValueError from json.loads, not RecursionError (deep nesting)",
        RecursionError,
    ),
    "stored_canonical/tier-rules-nested-too-deep": ("the same in tiers.rules_from_canonical", RecursionError),
    "stored_canonical/tier-rules-label-lone-surrogate": (
        "rules_from_canonical accepts a label holding a lone surrogate (JSON '\\ud800'); TierRules.digest then"
        " raises UnicodeEncodeError: refuse text that does not encode as UTF-8 in tiers._text",
        UnicodeEncodeError,
    ),
    "stored_canonical/standards-document-lone-surrogate": (
        "the same in StandardsRegistry.from_canonical: a document holding a lone surrogate, then .digest",
        UnicodeEncodeError,
    ),
    "tier_rules_toml/not-utf-8": (_NOT_UTF8.format("gateway.domain.tiers.load_tier_rules"), UnicodeDecodeError),
    "monitoring_toml/not-utf-8": (_NOT_UTF8.format("gateway.domain.monitoring.load_rules"), UnicodeDecodeError),
    "monitoring_tree/times-nan": (
        "times = nan: monitoring._bound compares Decimal('NaN') <= 0, which raises decimal.InvalidOperation:"
        " refuse non-finite times",
        decimal.InvalidOperation,
    ),
    "monitoring_tree/line-nan": (
        "a line of nan passes 'yuan <= 0', then int(Decimal('NaN')) raises ValueError in parse_rules:"
        " refuse non-finite amounts",
        ValueError,
    ),
    "monitoring_tree/line-inf": ("the same with inf: OverflowError", OverflowError),
    "monitoring_tree/line-name-not-text": (
        "income_below.line given as a table or list: 'line not in lines' raises TypeError (unhashable) in _bound:"
        " require a string",
        TypeError,
    ),
    "policy_toml/not-utf-8": (_NOT_UTF8.format("gateway.hub.server.load_policy"), UnicodeDecodeError),
    "policy_tree/purpose-not-text": (
        "scopes.<scope>.purposes holding a table or list: 'name not in _PURPOSE_NAMES' raises TypeError"
        " (unhashable) in access._purpose: require strings",
        TypeError,
    ),
    "policy_tree/rate-nan": (
        "rate_per_second = nan passes 'rate <= 0' and gives a token bucket that never refuses (min(burst, nan)"
        " is burst): refuse non-finite rates in access._node",
        InvariantBroken,
    ),
    "node_directory_toml/not-utf-8": (
        _NOT_UTF8.format("gateway.hub.federation.load_node_directory (tomllib.load)"),
        UnicodeDecodeError,
    ),
    "node_directory_tree/port-superscript-digit": (_SUPERSCRIPT.format("federation._address"), ValueError),
    "node_directory_tree/port-non-ascii-digits": (
        "federation._address accepts Arabic-Indic digits as the port ('host:٧٤٤٤'): require ASCII digits",
        InvariantBroken,
    ),
    "hub_config_tree/listen-port-superscript-digit": (_SUPERSCRIPT.format("toml_config.parse_listen"), ValueError),
    "hub_config_tree/path-unknown-user-home": (_UNKNOWN_HOME.format("path"), RuntimeError),
    "hub_config_tree/standards-path-unknown-user-home": (_UNKNOWN_HOME.format("path_of"), RuntimeError),
    "hub_config_tree/standards-path-nul-byte": (
        "a path with a NUL byte: Path.expanduser raises ValueError in toml_config.Section.path_of",
        ValueError,
    ),
    "node_config_tree/path-unknown-user-home": (_UNKNOWN_HOME.format("path"), RuntimeError),
    "node_config_tree/path-nul-byte": (
        "a path with a NUL byte: Path.expanduser raises ValueError in toml_config.Section.path",
        ValueError,
    ),
    "node_config_tree/serve-listen-superscript-digit": (_SUPERSCRIPT.format("toml_config.parse_listen"), ValueError),
    "node_config_tree/verification-source-path-nul-byte": (
        "a verification source file with a NUL byte is accepted, then ItemIndex._update_one's stat() raises"
        " ValueError (it catches OSError only)",
        ValueError,
    ),
    "node_config_tree/verification-source-is-a-directory": (
        "a verification source naming a directory: _file_sha256's open() raises IsADirectoryError outside"
        " _update_one's guard: check is_file(), or catch OSError around hashing too",
        IsADirectoryError,
    ),
    "audit_entry/nested-too-deep": (
        "AuditEntry.decode catches UnicodeDecodeError and ValueError, not RecursionError from json.loads",
        RecursionError,
    ),
    "audit_entry_tree/person-keys-not-text": (
        "person_keys holding objects (or numbers beside strings): set()/sorted() in AuditEntry.__post_init__ raise"
        " TypeError before each key's type is checked: check types first",
        TypeError,
    ),
    "audit_entry/person-keys-null-beside-text": (
        'the same through the raw bytes: [null, "ab"] makes sorted() raise TypeError',
        TypeError,
    ),
    "verification_jsonl/item-text-lone-surrogate": (
        'a JSON Lines source holding "\\ud800" in a text field: the item is accepted, then SQLite\'s'
        " INSERT raises UnicodeEncodeError in ItemIndex._insert_items: reject the row (ENCODING_INVALID),"
        " best in adapters.jsonl_reader for every JSON Lines reader",
        UnicodeEncodeError,
    ),
    "checkpoint/tree-size-over-int-digit-limit": (
        "a tree size of more than 4,300 digits: int() raises ValueError in parse_checkpoint_body: bound the"
        " length (20 digits) before converting",
        ValueError,
    ),
    "checkpoint/time-extension-over-int-digit-limit": ("the same in Checkpoint.time_us", ValueError),
    "audit_export/entries-not-gzip": (
        "read_export_entries (unverified display) lets gzip.BadGzipFile out: translate to ExportInvalid as"
        " verify_export's _read does",
        gzip.BadGzipFile,
    ),
    "audit_export/entries-gzip-cut-short": ("the same with EOFError", EOFError),
    "key_binding/certificate-bad-version": (
        _CERT.format("InvalidVersion", "binding._parse_certificates"),
        x509.InvalidVersion,
    ),
    "key_binding/certificate-duplicate-extension": (
        _CERT.format("DuplicateExtension", "binding._san"),
        x509.DuplicateExtension,
    ),
    "key_binding/certificate-malformed-subject": (
        "x509.verification raises ValueError for a leaf it cannot parse: binding._verify_chain catches"
        " VerificationError only",
        ValueError,
    ),
    "pki_certificate/bad-version": (
        _CERT.format("InvalidVersion", "pki._files.read_certificates"),
        x509.InvalidVersion,
    ),
    "pki_certificate/duplicate-extension": (
        _CERT.format("DuplicateExtension", "pki._identity._san_of (its comment says ValueError covers it)"),
        x509.DuplicateExtension,
    ),
    "pki_csr/bad-version": (_CERT.format("InvalidVersion", "gateway.pki_commands._read_csr"), x509.InvalidVersion),
    "pki_csr/unknown-curve": (
        "check_node_csr: csr.is_signature_valid raises UnsupportedAlgorithm for a key on an unknown curve:"
        " refuse it as KEY_TYPE_UNSUPPORTED",
        UnsupportedAlgorithm,
    ),
    "pki_csr/invalid-key": ("the same with ValueError ('Invalid key')", ValueError),
    "pki_inspect/certificate-duplicate-extension": (
        _CERT.format("DuplicateExtension", "pki._inspect.inspect_file"),
        x509.DuplicateExtension,
    ),
    "pki_inspect/crl-bad-version": (_CERT.format("InvalidVersion", "pki._inspect.inspect_file"), x509.InvalidVersion),
    "pki_inspect/crl-duplicate-extension": (
        _CERT.format("DuplicateExtension", "pki._inspect._crl (crl.extensions)"),
        x509.DuplicateExtension,
    ),
    "pki_inspect/certificate-subject-bitstring": (
        "a subject attribute of BitString type under another OID: Name.rfc4514_string raises TypeError"
        " in pki._inspect._certificate",
        TypeError,
    ),
    "pki_inspect/csr-subject-bitstring": ("the same in pki._inspect._csr", TypeError),
    "pki_inspect/certificate-unknown-curve": (
        "cert.public_key() raises UnsupportedAlgorithm in pki._inspect._certificate: report the key as unknown",
        UnsupportedAlgorithm,
    ),
    "pki_inspect/csr-unknown-key-type": ("the same for a CSR in pki._inspect._csr", UnsupportedAlgorithm),
}


def _inputs(folder: str) -> Iterator[Any]:
    for name in TARGETS:
        directory = FUZZ / folder / name
        for path in sorted(directory.iterdir()) if directory.is_dir() else ():
            key = f"{name}/{path.name}"
            marks = []
            if key in KNOWN_BUGS:
                reason, raises = KNOWN_BUGS[key]
                marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=raises))
            yield pytest.param(name, path, id=key, marks=marks)


def _replay(name: str, path: Path) -> None:
    with structlog.testing.capture_logs():  # the adapters and the node log every row they reject
        TARGETS[name].check(path.read_bytes())


def test_every_target_has_seeds() -> None:
    empty = [name for name in TARGETS if not any((FUZZ / "corpus" / name).glob("*"))]
    assert empty == []


def test_every_saved_input_belongs_to_a_target() -> None:
    folders = {p.name for p in (FUZZ / "regressions").iterdir() if p.is_dir()} - {"live_server"}
    assert folders <= set(TARGETS)
    listed = {key.split("/")[0] for key in KNOWN_BUGS}
    assert listed <= set(TARGETS)
    missing = [key for key in KNOWN_BUGS if not (FUZZ / "regressions" / key).is_file()]
    assert missing == []


@pytest.mark.parametrize(("name", "path"), list(_inputs("corpus")))
def test_seed_inputs_keep_the_contract(name: str, path: Path) -> None:
    _replay(name, path)


@pytest.mark.parametrize(("name", "path"), list(_inputs("regressions")))
def test_saved_crashes_stay_fixed(name: str, path: Path) -> None:
    _replay(name, path)


# ------------------------------------------------------------------ properties (hypothesis)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_keeps_the_id_number_contract(text: str) -> None:
    TARGETS["id_number"].check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(
    origin=st.text(
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\n\x7f"), min_size=1, max_size=40
    ),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\n\x7f"), min_size=1), max_size=3
    ),
)
def test_any_checkpoint_body_parses_back_to_itself(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    body = checkpoint_module.Checkpoint(origin, size, root, tuple(extensions)).body()
    assert checkpoint_module.parse_checkpoint_body(body) == checkpoint_module.Checkpoint(
        origin, size, root, tuple(extensions)
    )
    TARGETS["checkpoint"].check(body.encode("utf-8"))


_HEX = st.binary(min_size=1, max_size=32).map(bytes.hex)


@settings(max_examples=200, deadline=None)
@given(
    time_us=st.integers(0, 2**63 - 1),
    text=st.text(max_size=30),
    counts=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.integers(0, 2**63 - 1)),
    person_keys=st.lists(_HEX, max_size=4),
    digest=st.one_of(st.just(""), _HEX),
)
def test_any_audit_entry_decodes_from_its_encoding(
    time_us: int, text: str, counts: dict[str, int], person_keys: list[str], digest: str
) -> None:
    entry = entry_module.AuditEntry(
        time_us, text, text, "440000", text, f"/m{text}", text, "OK", counts, person_keys, digest, text
    )
    assert entry_module.AuditEntry.decode(entry.encode()) == entry
    TARGETS["audit_entry"].check(entry.encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_any_token_keeps_the_contract(token: bytes) -> None:
    TARGETS["tokens"].check(b"\x00" + token)
    TARGETS["tokens"].check(b"\x01" + token)


# --------------------------------------------------------------------------- the live hub

#: Saved requests (``fuzz/regressions/live_server/<file>``) the hub still answers badly → what is wrong.
KNOWN_LIVE_BUGS: dict[str, str] = {
    "list-audit-entries-end-time-beyond-int64-microseconds.json": (
        "ListAuditEntries with end_time.seconds = 2**63-1: its microseconds overflow SQLite's INTEGER and"
        " gateway/store/sqlite_audit.py list_entries raises OverflowError (INTERNAL): clamp or refuse times"
        " outside 0001..9999 as INVALID_ARGUMENT in the servicer"
    ),
    "undecodable-body.json": (
        "a body that does not decode as the request message is refused by grpc.aio itself with UNKNOWN"
        " ('Unexpected DecodeError'), before the hub's interceptor: register handlers taking raw bytes"
        " (as SyncRecords does) and parse in the interceptor, to answer INVALID_ARGUMENT with ErrorInfo"
    ),
}


def _live_cases() -> Iterator[Any]:
    for path, case in live_server.regression_cases():
        marks = []
        if path.name in KNOWN_LIVE_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_LIVE_BUGS[path.name], raises=AssertionError))
        yield pytest.param(case, id=path.name, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_live_cases()))
async def test_saved_requests_get_a_proper_status(case: Any, tmp_path: Path) -> None:
    async with live_server.live_hub(tmp_path) as live:
        answer = await live.call(case)
        assert answer.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            f"{case.method}: {answer.code.name} {answer.details}"
        )
        assert await live.healthy()


@pytest.mark.slow
async def test_random_and_mutated_requests_get_proper_statuses_and_the_hub_stays_healthy(tmp_path: Path) -> None:
    # A fixed seed: the same 300 requests every time. fuzz/run.py sends new ones on every run.
    report = await live_server.fuzz_hub(300, seed=20260101, directory=tmp_path, save=False)

    assert report.messages == 300
    assert report.unhealthy == 0
    assert report.new == {}, "requests answered INTERNAL/UNKNOWN by an unhandled exception (see the cases)"
    assert sum(report.codes.values()) == 300
    assert report.codes.get("OK", 0) > 0, "some requests must get through to a servicer and succeed"
