"""Malformed certificates, CSRs and CRLs are refused as ``PkiError`` naming the field, wherever they are read.

cryptography reports them with ``InvalidVersion``, ``DuplicateExtension``, ``TypeError`` and
``UnsupportedAlgorithm`` besides ``ValueError`` (the fuzzer found each); :mod:`pki._x509` translates
them once. The inputs are real objects with a few DER bytes changed: parsing checks no signature.
"""

from __future__ import annotations

import base64
import datetime as dt
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import PkiError
from pki import X509_ERRORS, NodeIdentity, generate_key, identity_from_certificate, load_certificates, make_csr
from pki._files import read_certificates
from pki.operator import CertificateReport, CsrReport, check_node_csr, inspect_file, load_csr

GZ = NodeIdentity(province_code="440000", node_name="gz-01")
_DER = serialization.Encoding.DER
_PEM = serialization.Encoding.PEM
#: The DER of P-256's OID (1.2.840.10045.3.1.7) and of one no library knows (…3.1.127).
_P256_OID = bytes.fromhex("06082a8648ce3d030107")
_UNKNOWN_CURVE_OID = bytes.fromhex("06082a8648ce3d03017f")
#: DER of the OIDs of subjectKeyIdentifier, authorityKeyIdentifier and cRLNumber.
_SKI, _AKI, _CRL_NUMBER = bytes.fromhex("0603551d0e"), bytes.fromhex("0603551d23"), bytes.fromhex("0603551d14")
_NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _edited(der: bytes, old: bytes, new: bytes, *, times: int = 1) -> bytes:
    assert der.count(old) == times, f"{old.hex()} occurs {der.count(old)} times"
    return der.replace(old, new)


def _certificate(common_name: str = "hub.example.gov.cn") -> bytes:
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(1)
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(GZ.uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(_DER)


def _pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    # Written by hand: cryptography would not load the edited DER to write it back.
    text = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{text}\n-----END {label}-----\n".encode("ascii")


def _bad_version(der: bytes) -> bytes:
    return _edited(der, bytes.fromhex("a003020102"), bytes.fromhex("a003020107"))


def _duplicate_extension(der: bytes) -> bytes:
    return _edited(der, _SKI, _AKI)  # two authorityKeyIdentifier extensions


def _subject_bitstring(der: bytes) -> bytes:
    # The common name (of the subject and the issuer: self-signed) as a BIT STRING (tag 3, no unused
    # bits): only X500_UNIQUE_IDENTIFIER may be one.
    text = b"Xbitstring-test"
    old, new = b"\x0c\x0f" + text, b"\x03\x0f\x00" + text[1:]
    return _edited(der, old, new, times=2)


def _unknown_curve(der: bytes) -> bytes:
    return _edited(der, _P256_OID, _UNKNOWN_CURVE_OID)


def _csr() -> bytes:
    return make_csr(generate_key(), GZ).public_bytes(_DER)


def _crl() -> bytes:
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hutong CA")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(_NOW)
        .next_update(_NOW + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(_DER)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- certificates


@pytest.mark.parametrize(
    ("edit", "reason", "cause"),
    [
        (_bad_version, "PEM_INVALID", "InvalidVersion"),
        (_duplicate_extension, "CERTIFICATE_INVALID", "DuplicateExtension"),
        (_subject_bitstring, "CERTIFICATE_INVALID", "TypeError"),
    ],
    ids=["bad-version", "duplicate-extension", "subject-bitstring"],
)
def test_a_malformed_certificate_file_is_refused_naming_the_field(
    tmp_path: Path, edit: Callable[[bytes], bytes], reason: str, cause: str
) -> None:
    path = _write(tmp_path, "chain.pem", _pem(edit(_certificate(common_name="Xbitstring-test"))))

    with pytest.raises(PkiError) as caught:
        read_certificates(path, field="ca_path")

    assert caught.value.reason == reason
    assert caught.value.field == "ca_path"
    assert caught.value.metadata["path"] == str(path)
    assert caught.value.metadata["cause"] == cause
    if reason == "CERTIFICATE_INVALID":
        assert caught.value.metadata["position"] == "0"


def test_the_position_of_the_malformed_certificate_in_a_bundle_is_named() -> None:
    good = _pem(_certificate())
    bad = _pem(_duplicate_extension(_certificate()))

    with pytest.raises(PkiError) as caught:
        load_certificates(good + bad, source="bundle", field="ca_pem")

    assert caught.value.metadata["position"] == "1"
    assert "number 2 of 2" in caught.value.message


def test_a_certificate_read_elsewhere_with_duplicate_extensions_names_no_node() -> None:
    # A TLS peer's certificate does not come through the loaders: the SAN reader translates too.
    cert = x509.load_der_x509_certificate(_duplicate_extension(_certificate()))

    with pytest.raises(PkiError) as caught:
        identity_from_certificate(cert)

    assert caught.value.reason == "CERTIFICATE_INVALID"
    assert caught.value.field == "extensions"


def test_x509_errors_cover_what_cryptography_raises_for_malformed_input() -> None:
    assert {x509.InvalidVersion, x509.DuplicateExtension, ValueError, TypeError} <= set(X509_ERRORS)


# --------------------------------------------------------------------------- CSRs


def test_a_csr_with_a_bad_version_is_refused_as_csr_invalid() -> None:
    der = _edited(_csr(), bytes.fromhex("020100"), bytes.fromhex("020105"))

    with pytest.raises(PkiError) as caught:
        load_csr(der, source="request.csr", field="csr_file")

    assert (caught.value.reason, caught.value.field) == ("CSR_INVALID", "csr_file")


def test_a_csr_key_on_an_unknown_curve_is_refused_as_key_type_unsupported() -> None:
    csr = load_csr(_unknown_curve(_csr()), source="request.csr", field="csr_file")

    with pytest.raises(PkiError) as caught:
        check_node_csr(csr)

    assert (caught.value.reason, caught.value.field) == ("KEY_TYPE_UNSUPPORTED", "csr.public_key")


def test_a_csr_key_that_is_no_point_of_its_curve_is_refused_as_public_key_invalid() -> None:
    key = generate_key().public_key().public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    point = key[-64:]  # the uncompressed point's coordinates, after the 0x04 byte
    csr = load_csr(_edited(_csr_with_key(key), point, bytes(64)), source="request.csr", field="csr_file")

    with pytest.raises(PkiError) as caught:
        check_node_csr(csr)

    assert (caught.value.reason, caught.value.field) == ("PUBLIC_KEY_INVALID", "csr.public_key")


def _csr_with_key(spki: bytes) -> bytes:
    # make_csr signs with a fresh key; put that key's SubjectPublicKeyInfo in place of ``spki``'s twin.
    private = generate_key()
    csr = make_csr(private, GZ).public_bytes(_DER)
    own = private.public_key().public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _edited(csr, own, spki)


# --------------------------------------------------------------------------- inspect


def test_inspect_refuses_a_certificate_with_duplicate_extensions_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "dup.pem", _pem(_duplicate_extension(_certificate())))

    with pytest.raises(PkiError) as caught:
        inspect_file(path)

    assert (caught.value.reason, caught.value.field) == ("CERTIFICATE_INVALID", "file")


def test_inspect_refuses_a_der_certificate_with_duplicate_extensions_too(tmp_path: Path) -> None:
    path = _write(tmp_path, "dup.der", _duplicate_extension(_certificate()))

    with pytest.raises(PkiError) as caught:
        inspect_file(path)

    assert caught.value.reason == "CERTIFICATE_INVALID"


def test_inspect_reports_a_key_on_an_unknown_curve_as_unknown(tmp_path: Path) -> None:
    path = _write(tmp_path, "curve.pem", _pem(_unknown_curve(_certificate())))

    report = inspect_file(path)

    assert isinstance(report, CertificateReport)
    assert report.key_type.startswith("unknown (KEY_TYPE_UNSUPPORTED")


def test_inspect_reports_a_csr_with_an_unknown_curve_without_its_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "curve.csr", _pem(_unknown_curve(_csr()), "CERTIFICATE REQUEST"))

    report = inspect_file(path)

    assert isinstance(report, CsrReport)
    assert report.key_type.startswith("unknown")
    assert report.signature_valid is False
    assert report.public_key_sha256.startswith("unavailable")


@pytest.mark.parametrize(
    ("old", "new"),
    [(bytes.fromhex("020101"), bytes.fromhex("020105")), (_AKI, _CRL_NUMBER)],
    ids=["bad-version", "duplicate-extension"],
)
def test_inspect_refuses_a_malformed_crl_as_crl_invalid(tmp_path: Path, old: bytes, new: bytes) -> None:
    der = _crl()
    # The version is the first INTEGER of the CRL: edit that occurrence only.
    edited = der.replace(old, new, 1)
    path = _write(tmp_path, "list.crl", _pem(edited, "X509 CRL"))

    with pytest.raises(PkiError) as caught:
        inspect_file(path)

    assert (caught.value.reason, caught.value.field) == ("CRL_INVALID", "file")


def test_a_p256_key_survives_the_loaders() -> None:
    cert = load_certificates(_pem(_certificate()), source="x", field="f")[0]

    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
