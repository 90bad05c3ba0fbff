"""Write the seed corpora, ``fuzz/corpus/<target>/``, from the repository's samples and examples.

Run ``python fuzz/seeds.py`` after a sample, an example or a target's input layout changes; the
corpora are committed. Seeds are what the product really reads: the adapters' samples, the
files of ``deploy/``, and certificates, tokens, entries, checkpoints and an export made by the
project's own code (throwaway keys, generated afresh on each run). Tree targets get short
byte strings: each picks a base document and a few edits.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import ipaddress
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.profile import ENCODINGS
from fuzz import _material as material
from fuzz._harness import FUZZ_DIR, ROOT
from fuzz.targets import TARGETS, xlsx_parts
from gateway.audit.checkpoint import encode_signer_key, encode_verifier_key
from gateway.domain.identity import make_id_number
from pki import NodeIdentity, make_csr
from pki._ca import RevokedEntry

__all__ = ["CORPUS_DIR", "DICTIONARIES", "DICTIONARY_DIR", "seeds", "write_corpora", "write_dictionaries"]

CORPUS_DIR = FUZZ_DIR / "corpus"
DICTIONARY_DIR = FUZZ_DIR / "dictionaries"
_DER = serialization.Encoding.DER
_PEM = serialization.Encoding.PEM


def _variant(encoding: str | None) -> bytes:
    """The first byte of an adapter input choosing ``encoding`` (None: the profile's own)."""
    return bytes([(None, *ENCODINGS).index(encoding)])


def _tree_seeds(name: str, documents: int) -> Iterator[tuple[str, bytes]]:
    yield "unedited", b""
    for index in range(1, documents):
        yield f"document-{index}", bytes([index])
    for number in range(8):
        digest = hashlib.sha256(f"{name}-{number}".encode()).digest()
        yield f"edits-{number}", digest[: 8 + number * 3]


def _odd_certificate() -> x509.Certificate:
    """A certificate naming one of every kind of SAN the builder can write (mutations start near the rest)."""
    ca = material.demo_pki().ca
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier("hutong://province/440000/node/gz-01"),
        x509.UniformResourceIdentifier("HUTONG://province/440000/node/gz-02"),
        x509.DNSName("gz-01.gd.hutong.example"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
        x509.RFC822Name("ops@hutong.example"),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
        x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "节点")])),
        x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03abc"),
    ]
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _csrs() -> Iterator[tuple[str, x509.CertificateSigningRequest]]:
    key = ec.generate_private_key(ec.SECP256R1())
    identity = NodeIdentity("440000", "gz-03")
    yield "node", make_csr(key, identity)
    yield "node-serving", make_csr(key, identity, dns_names=["gz-03.gd.example"], ip_addresses=["10.44.0.3"])
    two = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(identity.uri),
            x509.UniformResourceIdentifier("hutong://province/510000/node/cd-09"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    yield "two-identities", builder.add_extension(two, critical=False).sign(key, hashes.SHA256())


def seeds() -> dict[str, list[tuple[str, bytes]]]:
    """Every target's seeds: (file name, content)."""
    out: dict[str, list[tuple[str, bytes]]] = {name: [] for name in TARGETS}

    def add(name: str, seed: str, data: bytes) -> None:
        out[name].append((seed, data))

    samples = {fmt: path.read_bytes() for fmt, path in material.SAMPLES.items()}
    for fmt, name in (
        ("csv", "adapter_csv"),
        ("fixed-width", "adapter_fixed_width"),
        ("jsonl", "adapter_jsonl"),
        ("xml", "adapter_xml"),
        ("dbf", "adapter_dbf"),
        ("xlsx", "adapter_xlsx"),
    ):
        add(name, "sample", _variant(None) + samples[fmt])
    as_utf8 = samples["csv"].decode("gbk", "replace").encode("utf-8")
    add("adapter_csv", "sample-utf-8", _variant("utf-8") + as_utf8)
    add("adapter_csv", "sample-utf-8-bom", _variant("utf-8-sig") + b"\xef\xbb\xbf" + as_utf8)
    add("adapter_csv", "header-only", _variant(None) + samples["csv"].split(b"\n", 1)[0] + b"\n")
    add("adapter_jsonl", "one-object", _variant(None) + samples["jsonl"].split(b"\n", 1)[0] + b"\n")
    for index, (part, body) in enumerate(xlsx_parts()):
        add("adapter_xlsx", f"part-{index}-{part.replace('/', '_')}", bytes([0x80, index]) + body)

    for path in sorted((ROOT / "adapters/profiles").glob("*.toml")):
        add("profile_toml", path.stem, path.read_bytes())
    for name, kind in (
        ("profile_tree", "profile"),
        ("tier_rules_tree", "tiers"),
        ("monitoring_tree", "monitoring"),
        ("policy_tree", "policy"),
        ("node_directory_tree", "node_directory"),
        ("hub_config_tree", "hub"),
        ("node_config_tree", "node"),
    ):
        out[name].extend(_tree_seeds(name, len(material.toml_documents(kind))))
    out["tier_evidence"].extend(_tree_seeds("tier_evidence", len(material.evidence_documents())))
    out["audit_entry_tree"].extend(_tree_seeds("audit_entry_tree", 6))

    day = dt.date(1985, 7, 15)
    valid = make_id_number("440106", day, 123)
    for seed, text in (
        ("valid", valid),
        ("valid-x", make_id_number("110101", dt.date(1990, 1, 1), 5)),
        ("lower-x", make_id_number("110101", dt.date(1990, 1, 1), 5).lower()),
        ("fifteen-digits", "440106850715123"),
        ("centenarian", "440106050715997"),
        ("full-width", valid.translate({ord(str(d)): chr(0xFF10 + d) for d in range(10)})),
        ("spaced", f" {valid[:6]} {valid[6:14]}\u3000{valid[14:]} "),
        ("hong-kong-permit", make_id_number("810000", day, 2)),
        ("foreign-permanent", make_id_number("944106", day, 8)),
        ("bad-check", valid[:17] + ("0" if valid[17] != "0" else "1")),
        ("future-birth", make_id_number("440106", dt.date(2030, 1, 1), 1)),
        ("empty", ""),
    ):
        add("id_number", seed, text.encode("utf-8"))

    standards = (ROOT / "deploy/standards.example.csv").read_bytes()
    add("standards_csv", "example", b"\x00" + standards)
    add("standards_csv", "example-province", b"\x80" + standards)
    add("standards_csv", "example-gbk", b"\x03" + standards.decode("utf-8").encode("gbk", "replace"))
    add("stored_canonical", "standards", b"\x00" + material.standards().canonical().encode("utf-8"))
    add("stored_canonical", "tier-rules", b"\x01" + material.tier_rules().canonical().encode("utf-8"))
    add("tier_rules_toml", "example", (ROOT / "deploy/tiers.example.toml").read_bytes())
    add("monitoring_toml", "example", (ROOT / "deploy/monitoring.example.toml").read_bytes())
    add("policy_toml", "example", (ROOT / "deploy/policy.example.toml").read_bytes())
    add("node_directory_toml", "readme-example", material.node_directory_example().encode("utf-8"))
    for path in sorted((ROOT / "deploy/verification").iterdir()):
        if path.suffix in (".csv", ".jsonl"):
            add(f"verification_{path.suffix[1:]}", path.stem, path.read_bytes())

    for index, entry in enumerate(material.sample_entries(4)):
        add("audit_entry", f"entry-{index}", entry)
    export = material.audit_export()
    key, verifier = material.note_key()
    for path in sorted((export.directory / "checkpoints").iterdir()):
        note = path.read_bytes()
        add("checkpoint", f"note-{path.stem.lstrip('0') or '0'}", note)
        add("checkpoint", f"body-{path.stem.lstrip('0') or '0'}", note.split(b"\n\n", 1)[0] + b"\n")
    add("note_keys", "verifier", encode_verifier_key(verifier.name, key.public_key()).encode("utf-8"))
    add("note_keys", "signer", encode_signer_key(verifier.name, key).encode("utf-8"))
    binding = material.key_binding()
    add("key_binding", "document", b"\x00" + binding)
    add("key_binding", "edited", b"\x01\x03\x00")
    add("key_binding", "certificate-edited", b"\x02")
    for index, file in enumerate(export.files):
        add(
            "audit_export",
            f"replace-{file.replace('/', '_')}",
            bytes([0, index]) + (export.directory / file).read_bytes(),
        )
        if file.endswith(".gz"):
            content = gzip.decompress((export.directory / file).read_bytes())
            add("audit_export", f"gzip-{file.replace('/', '_')}", bytes([1, index]) + content)
    add("audit_export", "manifest-edited", b"\x02")
    add("audit_export", "known-checkpoint", b"\x05\x00" + (export.directory / export.files[0]).read_bytes())

    pki = material.demo_pki()
    certificates = {
        "ca": pki.ca.cert,
        "hub": x509.load_pem_x509_certificate(pki.hub_tls.cert_chain_pem),
        "node": x509.load_pem_x509_certificate(pki.nodes["hutong://province/440000/node/gz-01"].tls.cert_chain_pem),
        "odd-names": _odd_certificate(),
    }
    for seed, cert in certificates.items():
        for name in ("pki_certificate", "pki_inspect"):
            add(name, f"{seed}.der", cert.public_bytes(_DER))
            add(name, f"{seed}.pem", cert.public_bytes(_PEM))
    add("pki_inspect", "chain.pem", pki.hub_tls.cert_chain_pem + pki.hub_tls.ca_pem)
    crl = pki.ca.sign_crl(
        [RevokedEntry(12345, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), x509.ReasonFlags.key_compromise)],
        crl_number=7,
        next_update=dt.timedelta(days=7),
    )
    add("pki_inspect", "crl.der", crl.public_bytes(_DER))
    add("pki_inspect", "crl.pem", crl.public_bytes(_PEM))
    for seed, csr in _csrs():
        for name in ("pki_csr", "pki_inspect"):
            add(name, f"csr-{seed}.der", csr.public_bytes(_DER))
            add(name, f"csr-{seed}.pem", csr.public_bytes(_PEM))

    tokens = material.tokens()
    add("tokens", "api", b"\x00" + tokens.api_token.encode("ascii"))
    add("tokens", "console", b"\x00" + tokens.console_token.encode("ascii"))
    header = b'{"alg":"ES256","kid":"20260101-f00dcafe","typ":"JWT"}'
    claims = b'{"aud":"hutong","exp":4102444800,"iat":1767225600,"iss":"hutong","sub":"x"}'
    add(
        "tokens",
        "parts",
        b"\x01" + len(header).to_bytes(2, "big") + header + len(claims).to_bytes(2, "big") + claims + b"sig",
    )
    return out


_JSON = ("{", "}", "[", "]", '":', '","', "null", "true", "1e999", "-0", "\\u0000", "\\ud800", "[" * 64)
_TOML = ("[[", "]]", " = ", "nan", "inf", "-inf", '"""', "1979-05-27T07:32:00Z", "0x7f", "\\u00b2", "[" * 64)
_CODECS = ("utf-16", "utf-32", "gb2312", "gbk", "gb18030", "latin-1", "utf-7", "rot13", "zlib", "base64", "hex", "bz2")
#: Tokens libFuzzer splices into a target's inputs (``-dict``): what random bytes would seldom spell.
DICTIONARIES: dict[str, tuple[str, ...]] = {
    "adapter_xml": (
        '<?xml version="1.0" encoding="',
        '"?>',
        "<!DOCTYPE a [<!ENTITY e 'x'>]>",
        "<![CDATA[",
        "&e;",
        "xmlns:js=",
        "urn:jiangsu-mz:shjz:1.0",
        "\ufeff",
        *_CODECS,
    ),
    "adapter_csv": ('"', '""', ",", "\r", "\r\n", "\x00", "\ufeff", "合计"),
    "verification_csv": ('"', '""', ",", "\r", "\r\n", "\x00", "\ufeff", "年", "月", "日"),
    "adapter_jsonl": _JSON,
    "verification_jsonl": _JSON,
    "audit_entry": (*_JSON, '"person_keys":', '"counts":', '"time_us":', '"v":1', "9" * 20),
    "stored_canonical": (*_JSON, '"schema":1', '"values":', '"tiers":', '"when":', '"times":'),
    "checkpoint": ("\n\n", "— ", "time ", "=", "9" * 64, "+"),
    "note_keys": ("+", "PRIVATE+KEY+", "AQ", "="),
    "profile_toml": (*_TOML, "[source]", "[format]", "[record]", "[[enrollments]]", "[codes.", "YYYY", "excel"),
    "tier_rules_toml": (*_TOML, "[[tiers]]", "[tiers.when]", "[[tiers.when]]", "times", "standard", "dibao"),
    "monitoring_toml": (*_TOML, "[lines.dibao]", "[[rules]]", "income_below", "line", "times"),
    "policy_toml": (*_TOML, "[defaults]", "[scopes.", "[nodes.", "rate_per_second", "burst", "purposes"),
    "node_directory_toml": (*_TOML, '[nodes."hutong://province/440000/node/', "address", ":7444", "²"),
    "tokens": (".", "eyJ", "e30", "W1tb", "ES256", "kid", "none"),
}


def _dictionary_line(token: str) -> str:
    """A token as libFuzzer reads it: printable ASCII as itself, every other byte of its UTF-8 as ``\\xNN``."""
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token.encode("utf-8"))
    return f'"{body}"'


def write_dictionaries(directory: Path = DICTIONARY_DIR) -> dict[str, int]:
    """Write ``<target>.dict`` (libFuzzer's format) for the targets of :data:`DICTIONARIES`."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.dict"):
        old.unlink()
    for name, tokens in DICTIONARIES.items():
        lines = [f"# {name}: written by fuzz/seeds.py", *(_dictionary_line(t) for t in dict.fromkeys(tokens))]
        (directory / f"{name}.dict").write_text("\n".join(lines) + "\n", encoding="ascii")
    return {name: len(tokens) for name, tokens in DICTIONARIES.items()}


def write_corpora(directory: Path = CORPUS_DIR) -> dict[str, int]:
    """Replace every target's corpus directory with its seeds; the count per target."""
    counts = {}
    for name, entries in seeds().items():
        target_dir = directory / name
        shutil.rmtree(target_dir, ignore_errors=True)
        target_dir.mkdir(parents=True)
        for seed, data in entries:
            (target_dir / seed).write_bytes(data)
        counts[name] = len(entries)
    return counts


if __name__ == "__main__":
    dictionaries = write_dictionaries()
    for target_name, count in write_corpora().items():
        extra = f", {dictionaries[target_name]} dictionary tokens" if target_name in dictionaries else ""
        print(f"{target_name:24} {count:3} seeds{extra}")
    material.cleanup()
