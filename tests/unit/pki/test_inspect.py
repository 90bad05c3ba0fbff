"""``inspect_file``: certificates, CSRs and CRLs described, with the CA directory's view when given."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.errors import PkiError
from pki import CertificateAuthority, NodeIdentity, generate_key, make_csr
from pki.operator import (
    CaDirectory,
    CertificateReport,
    CrlReport,
    CsrReport,
    RevocationReason,
    format_serial,
    inspect_file,
    public_key_sha256,
    write_node_request,
    write_public_pem,
)

GZ = NodeIdentity(province_code="440000", node_name="gz-01")


@pytest.fixture
def ca(tmp_path: Path) -> CaDirectory:
    return CaDirectory.init(tmp_path / "ca", root_passphrase=b"root passphrase, offline")


def _issue_to_file(ca: CaDirectory, path: Path) -> int:
    issued = ca.issue_node(make_csr(generate_key(), GZ))
    write_public_pem(path, issued.chain_pem, field="out")
    return issued.certificate.serial_number


def test_certificate_report_shows_identity_serial_validity_and_fingerprint(ca: CaDirectory, tmp_path: Path) -> None:
    serial = _issue_to_file(ca, tmp_path / "gz.pem")

    report = inspect_file(tmp_path / "gz.pem")

    assert isinstance(report, CertificateReport)
    assert report.node_identity == GZ.uri
    assert report.identity_problem is None
    assert report.uris == (GZ.uri,)
    assert report.serial == format_serial(serial)
    assert report.issuer == ca.intermediate_certificate().subject.rfc4514_string()
    assert report.validity == "valid"
    assert report.key_type == "ECDSA secp256r1"
    assert report.extended_key_usage == ("clientAuth", "serverAuth")
    assert report.certificates_in_file == 2
    assert len(report.fingerprint_sha256) == 64
    assert report.registry_status is None  # no CA directory given
    assert report.chain_verified is None


def test_certificate_report_with_the_ca_directory_adds_registry_status_and_chain(
    ca: CaDirectory, tmp_path: Path
) -> None:
    serial = _issue_to_file(ca, tmp_path / "gz.pem")
    ca.revoke(serial, reason=RevocationReason.KEY_COMPROMISE)

    report = inspect_file(tmp_path / "gz.pem", ca=ca)

    assert isinstance(report, CertificateReport)
    assert report.registry_status == "revoked"
    assert report.revocation is not None
    assert "key-compromise" in report.revocation
    assert report.chain_verified is True


def test_a_certificate_from_another_ca_is_not_in_the_registry_and_does_not_chain(
    ca: CaDirectory, tmp_path: Path
) -> None:
    foreign = CertificateAuthority.create("Rogue CA").issue_node_certificate(GZ, generate_key().public_key())
    (tmp_path / "rogue.pem").write_bytes(foreign.public_bytes(serialization.Encoding.PEM))

    report = inspect_file(tmp_path / "rogue.pem", ca=ca)

    assert isinstance(report, CertificateReport)
    assert report.registry_status == "not issued by this CA"
    assert report.chain_verified is False
    assert report.verification_problem


def test_ca_certificates_report_no_identity_problem(ca: CaDirectory) -> None:
    report = inspect_file(ca.root_cert_path, ca=ca)

    assert isinstance(report, CertificateReport)
    assert report.is_ca
    assert report.node_identity is None
    assert report.identity_problem is None
    assert report.key_usage == ("key_cert_sign", "crl_sign")
    assert report.registry_status == "valid"
    assert report.chain_verified is True


def test_der_certificates_are_read_too(ca: CaDirectory, tmp_path: Path) -> None:
    (tmp_path / "root.der").write_bytes(ca.root_certificate().public_bytes(serialization.Encoding.DER))

    report = inspect_file(tmp_path / "root.der")

    assert isinstance(report, CertificateReport)
    assert report.serial == format_serial(ca.root_certificate().serial_number)


def test_csr_report_shows_identity_signature_and_key_fingerprint(tmp_path: Path) -> None:
    request = write_node_request(tmp_path, GZ)

    report = inspect_file(request.csr_path)

    assert isinstance(report, CsrReport)
    assert report.node_identity == GZ.uri
    assert report.signature_valid
    assert report.public_key_sha256 == public_key_sha256(request.csr.public_key())


def test_csr_report_explains_a_bad_identity(tmp_path: Path) -> None:
    # A CSR made by hand for a province that does not exist.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("hutong://province/990000/node/a")]),
            critical=False,
        )
        .sign(generate_key(), hashes.SHA256())
    )
    (tmp_path / "bad.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))

    report = inspect_file(tmp_path / "bad.csr")

    assert isinstance(report, CsrReport)
    assert report.node_identity is None
    assert report.identity_problem is not None
    assert "PROVINCE_UNKNOWN" in report.identity_problem


def test_crl_report_lists_entries_with_reasons_and_checks_the_signature(ca: CaDirectory) -> None:
    leaf = ca.issue_node(make_csr(generate_key(), GZ)).certificate
    ca.revoke(leaf, reason=RevocationReason.SUPERSEDED)
    ca.publish_crl()
    ca.publish_crl()

    report = inspect_file(ca.crl_path, ca=ca)

    assert isinstance(report, CrlReport)
    assert report.crl_number == 2
    assert report.issuer == ca.intermediate_certificate().subject.rfc4514_string()
    assert [(e.serial, e.reason) for e in report.entries] == [(format_serial(leaf.serial_number), "superseded")]
    assert report.signature_valid is True
    assert not report.stale


def test_crl_signed_by_another_ca_is_reported_as_not_ours(ca: CaDirectory, tmp_path: Path) -> None:
    other = CaDirectory.init(tmp_path / "other", root_passphrase=b"another root passphrase")
    other.publish_crl()

    report = inspect_file(other.crl_path, ca=ca)

    assert isinstance(report, CrlReport)
    assert report.signature_valid is False


def test_a_file_that_is_none_of_them_is_pem_invalid(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")

    with pytest.raises(PkiError) as exc_info:
        inspect_file(tmp_path / "junk.pem")

    assert exc_info.value.reason == "PEM_INVALID"
    assert exc_info.value.field == "file"


def test_a_missing_file_is_file_missing(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        inspect_file(tmp_path / "absent.pem")
    assert exc_info.value.reason == "FILE_MISSING"
