"""The ministry CA directory: init, CSR flow, issue, renew, revoke, CRL, registry queries."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from gateway.errors import PkiError
from pki import CertificateAuthority, NodeIdentity, generate_key, identity_from_certificate, load_private_key, make_csr
from pki.operator import (
    CaDirectory,
    CertificateKind,
    CertificateStatus,
    RevocationReason,
    fingerprint_sha256,
    format_serial,
    parse_serial,
    write_node_request,
)

ROOT_PASS = b"root passphrase, offline"
INTERMEDIATE_PASS = b"intermediate passphrase"
GZ = NodeIdentity(province_code="440000", node_name="gz-01")
ZZ = NodeIdentity(province_code="410000", node_name="zz-01")
DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> CaDirectory:
    return CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS, intermediate_passphrase=INTERMEDIATE_PASS)


def _csr(identity: NodeIdentity = GZ) -> x509.CertificateSigningRequest:
    return make_csr(generate_key(), identity)


def _issue(ca: CaDirectory, identity: NodeIdentity = GZ, *, days: int = 90) -> x509.Certificate:
    return ca.issue_node(_csr(identity), passphrase=INTERMEDIATE_PASS, valid_days=days).certificate


def _reason_of(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def _ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


# --------------------------------------------------------------------------- init


def test_init_writes_the_documented_layout_with_private_key_modes(ca: CaDirectory) -> None:
    assert _mode(ca.path) == 0o700
    assert _mode(ca.path / "offline") == 0o700
    for key in (ca.root_key_path, ca.intermediate_key_path, ca.path / "registry.sqlite3"):
        assert _mode(key) == 0o600, key
    for public in (ca.root_cert_path, ca.intermediate_cert_path, ca.chain_path):
        assert _mode(public) == 0o644, public
    assert ca.root_key_path == ca.path / "offline" / "root.key"
    # Nothing left over from the staging directory next to it.
    assert sorted(p.name for p in ca.path.parent.iterdir()) == ["ca"]


def test_init_encrypts_both_ca_keys_with_their_passphrases(ca: CaDirectory) -> None:
    assert b"ENCRYPTED PRIVATE KEY" in ca.root_key_path.read_bytes()
    assert ca.intermediate_key_is_encrypted()
    root = load_private_key(ca.root_key_path, ROOT_PASS)
    assert root.public_key() == ca.root_certificate().public_key()
    intermediate = load_private_key(ca.intermediate_key_path, INTERMEDIATE_PASS)
    assert intermediate.public_key() == ca.intermediate_certificate().public_key()


def test_init_without_intermediate_passphrase_writes_that_key_unencrypted_but_0600(tmp_path: Path) -> None:
    ca = CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS)

    assert not ca.intermediate_key_is_encrypted()
    assert _mode(ca.intermediate_key_path) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in ca.root_key_path.read_bytes()
    assert ca.issue_node(_csr()).record.node_uri == GZ.uri


def test_init_refuses_to_overwrite_an_existing_ca_and_leaves_it_untouched(ca: CaDirectory) -> None:
    before = {p: p.read_bytes() for p in ca.path.rglob("*") if p.is_file()}

    with pytest.raises(PkiError) as exc_info:
        CaDirectory.init(ca.path, root_passphrase=b"another long passphrase")

    assert exc_info.value.reason == "FILE_EXISTS"
    assert exc_info.value.field == "directory"
    assert {p: p.read_bytes() for p in ca.path.rglob("*") if p.is_file()} == before


def test_init_refuses_a_non_empty_directory_but_accepts_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(PkiError) as exc_info:
        CaDirectory.init(tmp_path / "busy", root_passphrase=ROOT_PASS)
    assert exc_info.value.reason == "FILE_EXISTS"

    (tmp_path / "empty").mkdir()
    ca = CaDirectory.init(tmp_path / "empty", root_passphrase=ROOT_PASS)
    assert ca.root_cert_path.is_file()


@pytest.mark.parametrize(
    ("root", "intermediate", "reason", "field"),
    [
        (b"short", None, "PASSPHRASE_TOO_SHORT", "root_passphrase"),
        (ROOT_PASS, b"eleven char", "PASSPHRASE_TOO_SHORT", "intermediate_passphrase"),
        (ROOT_PASS, ROOT_PASS, "PASSPHRASE_REUSED", "intermediate_passphrase"),
    ],
    ids=["short-root", "short-intermediate", "same-for-both"],
)
def test_init_refuses_weak_passphrases_before_writing_anything(
    tmp_path: Path, root: bytes, intermediate: bytes | None, reason: str, field: str
) -> None:
    with pytest.raises(PkiError) as exc_info:
        CaDirectory.init(tmp_path / "ca", root_passphrase=root, intermediate_passphrase=intermediate)

    assert exc_info.value.reason == reason
    assert exc_info.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_intermediate_is_a_path_length_0_ca_signed_by_the_root(ca: CaDirectory) -> None:
    root, intermediate = ca.root_certificate(), ca.intermediate_certificate()

    intermediate.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = intermediate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert intermediate.not_valid_after_utc <= root.not_valid_after_utc


def test_chain_file_holds_the_intermediate_then_the_root(ca: CaDirectory) -> None:
    chain = x509.load_pem_x509_certificates(ca.chain_path.read_bytes())
    assert chain == [ca.intermediate_certificate(), ca.root_certificate()]


def test_registry_starts_with_the_root_and_the_intermediate(ca: CaDirectory) -> None:
    records = {r.kind: r for r in ca.certificates()}
    root, intermediate = ca.root_certificate(), ca.intermediate_certificate()

    assert set(records) == {CertificateKind.ROOT, CertificateKind.INTERMEDIATE}
    assert records[CertificateKind.ROOT].serial == format_serial(root.serial_number)
    assert records[CertificateKind.INTERMEDIATE].issuer_serial == records[CertificateKind.ROOT].serial
    assert records[CertificateKind.INTERMEDIATE].fingerprint_sha256 == fingerprint_sha256(intermediate)


def test_init_rejects_an_intermediate_outliving_the_root(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS, root_days=100, intermediate_days=200)
    assert exc_info.value.reason == "VALIDITY_EXCEEDS_CA"


# --------------------------------------------------------------------------- passphrases and files


def test_wrong_root_passphrase_is_passphrase_wrong(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.load_root(b"not the root passphrase")

    assert exc_info.value.reason == "PASSPHRASE_WRONG"
    assert exc_info.value.field == "root_passphrase"
    assert ca.load_root(ROOT_PASS).cert == ca.root_certificate()


def test_wrong_intermediate_passphrase_is_passphrase_wrong_and_issues_nothing(ca: CaDirectory) -> None:
    before = len(ca.certificates())

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr(), passphrase=b"not the intermediate one")

    assert exc_info.value.reason == "PASSPHRASE_WRONG"
    assert exc_info.value.field == "intermediate_passphrase"
    assert len(ca.certificates()) == before


def test_encrypted_intermediate_without_passphrase_is_passphrase_required(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr())
    assert exc_info.value.reason == "PASSPHRASE_REQUIRED"


def test_intermediate_key_open_to_others_is_refused(ca: CaDirectory) -> None:
    ca.intermediate_key_path.chmod(0o644)

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr(), passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "KEY_PERMISSIONS_TOO_OPEN"


def test_opening_a_directory_that_is_no_ca_names_the_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        CaDirectory.open(tmp_path)
    assert exc_info.value.reason == "FILE_MISSING"
    assert exc_info.value.field == "ca_dir"
    assert "registry.sqlite3" in exc_info.value.message

    with pytest.raises(PkiError) as missing:
        CaDirectory.open(tmp_path / "nowhere")
    assert missing.value.reason == "FILE_MISSING"


# --------------------------------------------------------------------------- CSR flow


def test_node_request_writes_a_0600_key_and_a_csr_for_it(tmp_path: Path) -> None:
    request = write_node_request(tmp_path / "province", GZ)

    assert request.key_path.name == "440000-gz-01.key"
    assert request.csr_path.name == "440000-gz-01.csr"
    assert _mode(request.key_path) == 0o600
    key = load_private_key(request.key_path)
    csr = x509.load_pem_x509_csr(request.csr_path.read_bytes())
    assert csr.public_key() == key.public_key()
    assert csr.is_signature_valid
    # The CSR holds the public key only.
    assert b"PRIVATE" not in request.csr_path.read_bytes()


def test_node_request_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    first = write_node_request(tmp_path, GZ)
    key_before = first.key_path.read_bytes()

    with pytest.raises(PkiError) as exc_info:
        write_node_request(tmp_path, GZ)

    assert exc_info.value.reason == "FILE_EXISTS"
    assert first.key_path.read_bytes() == key_before


def test_csr_flow_end_to_end_chains_leaf_to_intermediate_to_root(ca: CaDirectory, tmp_path: Path) -> None:
    request = write_node_request(tmp_path / "province", GZ)

    issued = ca.issue_node(request.csr, passphrase=INTERMEDIATE_PASS, valid_days=30)

    leaf, intermediate = issued.chain
    root = ca.root_certificate()
    assert intermediate == ca.intermediate_certificate()
    verified = PolicyBuilder().store(Store([root])).time(_now()).build_client_verifier().verify(leaf, [intermediate])
    assert verified.chain == [leaf, intermediate, root]
    assert verified.subjects == [x509.UniformResourceIdentifier(GZ.uri)]
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert identity_from_certificate(leaf) == GZ
    assert leaf.public_key() == load_private_key(request.key_path).public_key()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=30, minutes=5)
    assert issued.chain_pem == b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, intermediate))


def test_issued_certificate_is_recorded_with_its_details(ca: CaDirectory) -> None:
    leaf = _issue(ca)

    record = ca.find_record(leaf)

    assert record.serial == format_serial(leaf.serial_number)
    assert record.kind is CertificateKind.NODE
    assert record.node_uri == GZ.uri
    assert record.province == "440000"
    assert record.subject == leaf.subject.rfc4514_string()
    assert record.not_after == leaf.not_valid_after_utc.replace(microsecond=0)
    assert record.status is CertificateStatus.ISSUED
    assert record.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert record.issuer_serial == format_serial(ca.intermediate_certificate().serial_number)
    assert record.certificate() == leaf


def _csr_with_uris(*uris: str) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if uris:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(generate_key(), hashes.SHA256())


@pytest.mark.parametrize(
    ("uris", "cause"),
    [
        ((), "NODE_IDENTITY_MISSING"),
        (("hutong://province/440000/node/a", "hutong://province/440000/node/b"), "NODE_IDENTITY_AMBIGUOUS"),
        (("hutong://province/440000/node/Bad_Name",), "NODE_IDENTITY_INVALID"),
        (("hutong://province/990000/node/a",), "PROVINCE_UNKNOWN"),
        (("hutong://province/440100/node/a",), "PROVINCE_UNKNOWN"),
    ],
    ids=["no-uri", "two-uris", "bad-name", "unknown-province", "city-not-province"],
)
def test_csr_with_a_bad_identity_is_refused_naming_the_field_and_nothing_is_issued(
    ca: CaDirectory, uris: tuple[str, ...], cause: str
) -> None:
    asked: list[bool] = []

    def passphrase() -> bytes:
        asked.append(True)
        return INTERMEDIATE_PASS

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr_with_uris(*uris), passphrase=passphrase)

    assert exc_info.value.reason == "CSR_INVALID"
    assert exc_info.value.field == "csr.san_uri"
    assert exc_info.value.metadata["cause_reason"] == cause
    assert asked == []  # refused before the passphrase was even asked for
    assert [r.kind for r in ca.certificates(kinds=[CertificateKind.NODE])] == []


def test_unknown_province_error_names_the_code(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr_with_uris("hutong://province/990000/node/a"), passphrase=INTERMEDIATE_PASS)
    assert exc_info.value.metadata["province_code"] == "990000"
    assert "990000" in str(exc_info.value)


def test_csr_with_a_broken_signature_is_refused(ca: CaDirectory) -> None:
    der = _csr().public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der.replace(b"gz-01", b"gz-02"))

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(tampered, passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "CSR_SIGNATURE_INVALID"
    assert exc_info.value.field == "csr.signature"


def test_a_certificate_cannot_outlive_the_intermediate(tmp_path: Path) -> None:
    ca = CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS, intermediate_days=30)

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr(), valid_days=90)

    assert exc_info.value.reason == "VALIDITY_EXCEEDS_CA"


def test_issue_is_refused_when_the_intermediate_has_expired(tmp_path: Path) -> None:
    ten_days_ago = _now() - 10 * DAY
    ca = CaDirectory.init(
        tmp_path / "ca",
        root_passphrase=ROOT_PASS,
        intermediate_passphrase=INTERMEDIATE_PASS,
        intermediate_days=1,
        now=ten_days_ago,
    )
    assert ca.intermediate_certificate().not_valid_after_utc < _now()

    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr(), passphrase=INTERMEDIATE_PASS, valid_days=1)

    assert exc_info.value.reason == "ISSUER_EXPIRED"
    assert exc_info.value.field == "ca_dir"
    with pytest.raises(PkiError) as hub:
        ca.issue_hub(dns_names=["hub.example"], passphrase=INTERMEDIATE_PASS)
    assert hub.value.reason == "ISSUER_EXPIRED"


def test_revoking_the_intermediate_needs_the_root_and_stops_all_issuing(ca: CaDirectory) -> None:
    intermediate = ca.intermediate_certificate()

    record = ca.revoke(intermediate, reason=RevocationReason.KEY_COMPROMISE, root_passphrase=ROOT_PASS)

    assert record.status is CertificateStatus.REVOKED
    with pytest.raises(PkiError) as exc_info:
        ca.issue_node(_csr(), passphrase=INTERMEDIATE_PASS)
    assert exc_info.value.reason == "ISSUER_REVOKED"
    # The root's CRL lists the intermediate, signed by the root.
    root_crl = _load_crl(ca.root_crl_path)
    assert root_crl.is_signature_valid(_ec_key(ca.root_certificate()))
    assert not root_crl.is_signature_valid(_ec_key(intermediate))
    entry = root_crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
    assert entry is not None
    assert _reason_of(entry) is x509.ReasonFlags.key_compromise


def test_revoking_the_intermediate_with_a_wrong_root_passphrase_changes_nothing(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.revoke(
            ca.intermediate_certificate(), reason=RevocationReason.CA_COMPROMISE, root_passphrase=b"wrong wrong wrong"
        )

    assert exc_info.value.reason == "PASSPHRASE_WRONG"
    assert exc_info.value.field == "root_passphrase"
    assert ca.check_issuer().status is CertificateStatus.ISSUED
    assert not ca.root_crl_path.exists()


def test_root_key_moved_offline_is_read_from_where_the_operator_mounts_it(ca: CaDirectory, tmp_path: Path) -> None:
    offline = tmp_path / "usb"
    offline.mkdir(mode=0o700)
    moved = offline / "root.key"
    ca.root_key_path.rename(moved)

    with pytest.raises(PkiError) as exc_info:
        ca.load_root(ROOT_PASS)
    assert exc_info.value.reason == "ROOT_KEY_MISSING"
    assert exc_info.value.field == "root_key"

    assert ca.load_root(ROOT_PASS, key_path=moved).cert == ca.root_certificate()
    # Daily work never needs it.
    assert _issue(ca).issuer == ca.intermediate_certificate().subject


def test_the_root_cannot_be_revoked(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.revoke(ca.root_certificate(), reason=RevocationReason.CA_COMPROMISE, root_passphrase=ROOT_PASS)
    assert exc_info.value.reason == "ROOT_NOT_REVOCABLE"


# --------------------------------------------------------------------------- hub certificates


def test_issue_hub_makes_a_key_and_a_dns_ip_certificate_registered_as_hub(ca: CaDirectory) -> None:
    issued = ca.issue_hub(dns_names=["hub.example"], ip_addresses=["10.0.0.1"], passphrase=INTERMEDIATE_PASS)

    assert issued.key is not None
    assert issued.certificate.public_key() == issued.key.public_key()
    verifier = (
        PolicyBuilder()
        .store(Store([ca.root_certificate()]))
        .time(_now())
        .build_server_verifier(x509.DNSName("hub.example"))
    )
    verifier.verify(issued.certificate, [ca.intermediate_certificate()])
    assert issued.record.kind is CertificateKind.HUB
    assert issued.record.hub_names == ("hub.example", "10.0.0.1")
    assert issued.record.province is None


# --------------------------------------------------------------------------- renew


def test_renew_with_a_new_key_keeps_the_identity_and_links_old_to_new(ca: CaDirectory) -> None:
    old = _issue(ca)
    new_key = generate_key()

    renewed = ca.renew(old, csr=make_csr(new_key, GZ), passphrase=INTERMEDIATE_PASS, valid_days=60)

    assert identity_from_certificate(renewed.certificate) == GZ
    assert renewed.certificate.public_key() == new_key.public_key()
    assert renewed.certificate.serial_number != old.serial_number
    assert renewed.record.replaces == format_serial(old.serial_number)
    assert ca.find_record(old).replaced_by == renewed.record.serial
    # The old certificate stays valid until it expires: nodes switch over at their pace.
    assert ca.find_record(old).state(_now()) == "valid"


def test_renew_without_a_csr_certifies_the_same_key_again(ca: CaDirectory) -> None:
    old = _issue(ca)

    renewed = ca.renew(old, passphrase=INTERMEDIATE_PASS)

    assert renewed.certificate.public_key() == old.public_key()
    assert identity_from_certificate(renewed.certificate) == GZ


def test_renew_refuses_a_csr_naming_another_node(ca: CaDirectory) -> None:
    old = _issue(ca)

    with pytest.raises(PkiError) as exc_info:
        ca.renew(old, csr=_csr(ZZ), passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "IDENTITY_MISMATCH"
    assert exc_info.value.field == "csr.san_uri"
    assert exc_info.value.metadata["expected_uri"] == GZ.uri
    assert ca.find_record(old).replaced_by is None


def test_renew_of_a_hub_keeps_its_names_and_refuses_other_names(ca: CaDirectory) -> None:
    hub = ca.issue_hub(dns_names=["hub.example"], ip_addresses=["10.0.0.1"], passphrase=INTERMEDIATE_PASS)
    other_names = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hutong-hub")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(generate_key(), hashes.SHA256())
    )
    with pytest.raises(PkiError) as exc_info:
        ca.renew(hub.certificate, csr=other_names, passphrase=INTERMEDIATE_PASS)
    assert exc_info.value.reason == "IDENTITY_MISMATCH"

    renewed = ca.renew(hub.certificate, passphrase=INTERMEDIATE_PASS)
    assert renewed.record.hub_names == ("hub.example", "10.0.0.1")
    assert renewed.record.replaces == hub.record.serial


def test_renew_refuses_a_revoked_certificate(ca: CaDirectory) -> None:
    old = _issue(ca)
    ca.revoke(old, reason=RevocationReason.KEY_COMPROMISE)

    with pytest.raises(PkiError) as exc_info:
        ca.renew(old, passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "CERT_REVOKED"


def test_renew_refuses_an_expired_certificate(tmp_path: Path) -> None:
    month_ago = _now() - 30 * DAY
    ca = CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS, now=month_ago)
    expired = ca.issue_node(_csr(), valid_days=1, now=month_ago).certificate

    with pytest.raises(PkiError) as exc_info:
        ca.renew(expired)

    assert exc_info.value.reason == "CERT_EXPIRED"
    assert exc_info.value.field == "cert"


def test_renew_refuses_renewing_the_same_certificate_twice(ca: CaDirectory) -> None:
    old = _issue(ca)
    first = ca.renew(old, passphrase=INTERMEDIATE_PASS)

    with pytest.raises(PkiError) as exc_info:
        ca.renew(old, passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "CERT_ALREADY_RENEWED"
    assert exc_info.value.metadata["replaced_by"] == first.record.serial


def test_renew_refuses_a_certificate_this_ca_never_issued(ca: CaDirectory) -> None:
    stranger = CertificateAuthority.create("Some Other CA")
    foreign = stranger.issue_node_certificate(GZ, generate_key().public_key())

    with pytest.raises(PkiError) as exc_info:
        ca.renew(foreign, passphrase=INTERMEDIATE_PASS)

    assert exc_info.value.reason == "CERT_UNKNOWN"


def test_a_forged_certificate_reusing_a_registered_serial_is_cert_mismatch(ca: CaDirectory) -> None:
    genuine = _issue(ca)
    stranger = CertificateAuthority.create("Hutong Ministry Issuing CA")
    forged = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(generate_key().public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .sign(stranger.key, hashes.SHA256())
    )

    for attempt in (
        lambda: ca.renew(forged, passphrase=INTERMEDIATE_PASS),
        lambda: ca.revoke(forged, reason=RevocationReason.UNSPECIFIED),
    ):
        with pytest.raises(PkiError) as exc_info:
            attempt()
        assert exc_info.value.reason == "CERT_MISMATCH"
    assert ca.find_record(genuine).status is CertificateStatus.ISSUED


# --------------------------------------------------------------------------- revoke and CRL


def test_revoked_serial_appears_in_a_crl_signed_by_the_intermediate_with_reason_and_date(ca: CaDirectory) -> None:
    leaf, kept = _issue(ca), _issue(ca, ZZ)
    revoked_at = _now().replace(microsecond=0)

    ca.revoke(leaf.serial_number, reason=RevocationReason.KEY_COMPROMISE, now=revoked_at)
    published = ca.publish_crl(passphrase=INTERMEDIATE_PASS)

    crl = _load_crl(ca.crl_path)
    assert crl == published.crl
    intermediate = ca.intermediate_certificate()
    assert crl.issuer == intermediate.subject
    assert crl.is_signature_valid(_ec_key(intermediate))
    assert not crl.is_signature_valid(_ec_key(ca.root_certificate()))
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    assert _reason_of(entry) is x509.ReasonFlags.key_compromise
    assert entry.revocation_date_utc == revoked_at
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=24)
    assert _mode(ca.crl_path) == 0o644


@pytest.mark.parametrize("reason", list(RevocationReason), ids=lambda r: r.value)
def test_every_reason_code_is_carried_into_the_crl(ca: CaDirectory, reason: RevocationReason) -> None:
    leaf = _issue(ca)
    ca.revoke(leaf, reason=reason)

    crl = ca.publish_crl(passphrase=INTERMEDIATE_PASS).crl

    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    # RFC 5280 §5.3.1: no reason code rather than "unspecified".
    expected = None if reason is RevocationReason.UNSPECIFIED else reason.flag
    assert _reason_of(entry) is expected


def test_crl_number_increases_with_each_publication_and_is_stored(ca: CaDirectory) -> None:
    intermediate_serial = format_serial(ca.intermediate_certificate().serial_number)
    assert ca.registry.last_crl_number(intermediate_serial) is None

    numbers = [_crl_number(ca.publish_crl(passphrase=INTERMEDIATE_PASS).crl) for _ in range(3)]

    assert numbers == [1, 2, 3]
    assert ca.registry.last_crl_number(intermediate_serial) == 3
    assert _crl_number(_load_crl(ca.crl_path)) == 3


def test_crl_file_is_replaced_whole_so_a_reader_never_sees_half_of_it(ca: CaDirectory) -> None:
    ca.publish_crl(passphrase=INTERMEDIATE_PASS)
    ca.revoke(_issue(ca).serial_number, reason=RevocationReason.SUPERSEDED)

    with ca.crl_path.open("rb") as reader:  # a hub holding the old file open
        ca.publish_crl(passphrase=INTERMEDIATE_PASS)
        old = x509.load_pem_x509_crl(reader.read())

    # A new file was renamed over the old one; the old one was never truncated or rewritten in place.
    assert _crl_number(old) == 1
    assert len(old) == 0
    new = _load_crl(ca.crl_path)
    assert _crl_number(new) == 2
    assert len(new) == 1
    assert [p.name for p in ca.path.iterdir() if p.name.endswith(".tmp")] == []


def test_crl_can_be_written_elsewhere_with_another_next_update(ca: CaDirectory, tmp_path: Path) -> None:
    out = tmp_path / "public" / "hutong.crl"
    out.parent.mkdir()

    published = ca.publish_crl(passphrase=INTERMEDIATE_PASS, out=out, next_update=dt.timedelta(hours=6))

    assert published.path == out
    crl = _load_crl(out)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=6)


def test_revoking_twice_is_refused(ca: CaDirectory) -> None:
    leaf = _issue(ca)
    ca.revoke(leaf, reason=RevocationReason.CESSATION_OF_OPERATION)

    with pytest.raises(PkiError) as exc_info:
        ca.revoke(leaf, reason=RevocationReason.KEY_COMPROMISE)

    assert exc_info.value.reason == "CERT_ALREADY_REVOKED"
    assert ca.find_record(leaf).reason is RevocationReason.CESSATION_OF_OPERATION


def test_revoking_an_unknown_serial_is_cert_unknown(ca: CaDirectory) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.revoke(0xABC, reason=RevocationReason.UNSPECIFIED)
    assert exc_info.value.reason == "CERT_UNKNOWN"
    assert exc_info.value.metadata["serial"] == "abc"


@pytest.mark.parametrize("text", ["0xABC", "abc", "0a:bc", " 0A:BC "])
def test_serials_are_accepted_as_operators_paste_them(text: str) -> None:
    assert parse_serial(text) == 0xABC


@pytest.mark.parametrize("text", ["", "xyz", "0", "-1", "gz-01.pem"])
def test_garbage_serials_are_serial_invalid(text: str) -> None:
    with pytest.raises(PkiError) as exc_info:
        parse_serial(text)
    assert exc_info.value.reason == "SERIAL_INVALID"


# --------------------------------------------------------------------------- list and expiring


def test_list_filters_by_province_status_and_kind(ca: CaDirectory) -> None:
    gz, zz = _issue(ca), _issue(ca, ZZ)
    ca.revoke(zz, reason=RevocationReason.AFFILIATION_CHANGED)
    ca.issue_hub(dns_names=["hub.example"], passphrase=INTERMEDIATE_PASS)

    def serials(province: str | None = None, status: str | None = None) -> set[int]:
        return {r.serial_number for r in ca.certificates(province=province, status=status)}

    assert serials(province="440000") == {gz.serial_number}
    assert serials(status="revoked") == {zz.serial_number}
    assert serials(province="410000", status="issued") == set()
    assert gz.serial_number in serials(status="valid")
    assert zz.serial_number not in serials(status="valid")
    assert {r.kind for r in ca.certificates(kinds=[CertificateKind.HUB])} == {CertificateKind.HUB}
    assert len(ca.certificates()) == 5  # root, intermediate, two nodes, hub


def test_list_by_state_tells_expired_from_valid(tmp_path: Path) -> None:
    month_ago = _now() - 30 * DAY
    ca = CaDirectory.init(tmp_path / "ca", root_passphrase=ROOT_PASS, now=month_ago)
    expired = ca.issue_node(_csr(), valid_days=1, now=month_ago).certificate
    valid = ca.issue_node(_csr(ZZ)).certificate

    assert [r.serial_number for r in ca.certificates(status="expired")] == [expired.serial_number]
    assert valid.serial_number in {r.serial_number for r in ca.certificates(status="valid")}
    with pytest.raises(PkiError) as exc_info:
        ca.certificates(status="lost")
    assert exc_info.value.reason == "STATUS_INVALID"


def test_expiring_lists_valid_unrenewed_certificates_within_the_window(ca: CaDirectory) -> None:
    soon = _issue(ca, days=10)
    later = _issue(ca, ZZ, days=60)
    renewed = _issue(ca, NodeIdentity(province_code="510000", node_name="cd-01"), days=5)
    ca.renew(renewed, passphrase=INTERMEDIATE_PASS, valid_days=90)
    revoked = _issue(ca, NodeIdentity(province_code="110000", node_name="bj-01"), days=5)
    ca.revoke(revoked, reason=RevocationReason.KEY_COMPROMISE)

    within_30_days = {r.serial_number for r in ca.expiring(dt.timedelta(days=30))}
    within_12_hours = ca.expiring(dt.timedelta(hours=12))

    assert within_30_days == {soon.serial_number}
    assert later.serial_number in {r.serial_number for r in ca.expiring(dt.timedelta(days=61))}
    assert within_12_hours == []


def test_issuing_again_for_a_node_that_holds_a_valid_certificate_reports_it(ca: CaDirectory) -> None:
    first = _issue(ca)

    second = ca.issue_node(_csr(), passphrase=INTERMEDIATE_PASS)

    assert [r.serial_number for r in second.also_valid] == [first.serial_number]


def test_registry_file_stays_private_after_writes(ca: CaDirectory) -> None:
    _issue(ca)
    ca.publish_crl(passphrase=INTERMEDIATE_PASS)
    registry = ca.path / "registry.sqlite3"
    assert _mode(registry) == 0o600
    # SQLite's rollback journal is gone after each transaction; nothing else sits next to it.
    assert not (ca.path / "registry.sqlite3-journal").exists()
    assert os.access(registry, os.R_OK)


def test_operator_public_names_are_pinned() -> None:
    import pki.operator

    assert sorted(pki.operator.__all__) == [
        "CaDirectory",
        "CertificateKind",
        "CertificateRecord",
        "CertificateReport",
        "CertificateStatus",
        "CrlEntryReport",
        "CrlReport",
        "CsrReport",
        "IssuedCertificate",
        "MIN_PASSPHRASE_LENGTH",
        "NodeRequest",
        "Passphrase",
        "PublishedCrl",
        "Registry",
        "RevocationReason",
        "RevokedEntry",
        "check_new_passphrase",
        "check_node_csr",
        "csr_server_names",
        "ensure_absent",
        "fingerprint_sha256",
        "format_serial",
        "inspect_file",
        "key_file_is_encrypted",
        "load_csr",
        "make_private_dir",
        "parse_serial",
        "pem_chain",
        "public_key_sha256",
        "read_bytes",
        "read_passphrase_file",
        "write_node_request",
        "write_public_pem",
        "write_secret_file",
    ]
    for name in pki.operator.__all__:
        assert getattr(pki.operator, name) is not None
