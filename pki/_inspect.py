"""What a certificate, CSR or CRL file holds, as plain data for ``hutong pki inspect``.

Given a CA directory, a certificate's chain is verified with ``cryptography``'s
path validation (root as the only trust anchor, the intermediate as an untrusted
intermediate), its registry status is looked up, and a CRL's signature is checked
against the intermediate and the root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.errors import PkiError
from pki._authority import CaDirectory
from pki._files import StrPath, read_bytes
from pki._identity import URI_SCHEME, single_identity
from pki._registry import RevocationReason, fingerprint_sha256, format_serial
from pki._x509 import X509_ERRORS, csr_signature_holds, load_certificates, load_crl, load_csr, public_key_of

__all__ = ["CertificateReport", "CrlEntryReport", "CrlReport", "CsrReport", "inspect_file", "public_key_sha256"]


@dataclass(frozen=True)
class CertificateReport:
    """A certificate file (its first certificate; the rest of a chain is counted)."""

    path: Path
    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    #: ``valid``, ``expired`` or ``not-yet-valid`` by the clock alone.
    validity: str
    is_ca: bool
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    #: The ``hutong://`` node identity, when the certificate carries a valid one.
    node_identity: str | None
    #: Why a leaf names no node (none for CA certificates or hub certificates without a hutong URI).
    identity_problem: str | None
    key_type: str
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    fingerprint_sha256: str
    #: Certificates in the file: 2 for a leaf + intermediate chain.
    certificates_in_file: int
    #: With a CA directory: the registry's view (``valid``, ``revoked``, ``expired``, ``not in registry``...).
    registry_status: str | None = None
    revocation: str | None = None
    replaced_by: str | None = None
    #: With a CA directory: whether the chain verifies up to its root.
    chain_verified: bool | None = None
    verification_problem: str | None = None


@dataclass(frozen=True)
class CsrReport:
    """A certificate signing request file."""

    path: Path
    subject: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    node_identity: str | None
    identity_problem: str | None
    signature_valid: bool
    key_type: str
    #: SHA-256 of the DER SubjectPublicKeyInfo: compare with the key at the province.
    public_key_sha256: str


@dataclass(frozen=True)
class CrlEntryReport:
    """One revoked certificate of a CRL."""

    serial: str
    revoked_at: dt.datetime
    #: Spelled as ``hutong pki revoke --reason`` takes it, e.g. ``key-compromise``.
    reason: str


@dataclass(frozen=True)
class CrlReport:
    """A certificate revocation list file."""

    path: Path
    issuer: str
    last_update: dt.datetime
    next_update: dt.datetime | None
    crl_number: int | None
    #: True once ``next_update`` has passed: relying parties should fetch a newer one.
    stale: bool
    entries: tuple[CrlEntryReport, ...]
    #: With a CA directory: whether the intermediate or the root signed it.
    signature_valid: bool | None = None


Report = CertificateReport | CsrReport | CrlReport


def inspect_file(path: StrPath, *, ca: CaDirectory | None = None, now: dt.datetime | None = None) -> Report:
    """Describe a PEM or DER certificate (chain), CSR or CRL; ``PEM_INVALID`` when it is none of them."""
    path = Path(path)
    now = now or dt.datetime.now(dt.UTC)
    data = read_bytes(path, field="file")
    source, meta = str(path), {"path": str(path)}
    if b"-----BEGIN" in data:
        if b"CERTIFICATE REQUEST-----" in data:
            return _csr(path, load_csr(data, source=source, field="file", metadata=meta))
        if b"-----BEGIN X509 CRL-----" in data:
            return _crl(path, load_crl(data, source=source, field="file", metadata=meta), ca, now)
        if b"-----BEGIN CERTIFICATE-----" in data:
            return _certificate(path, load_certificates(data, source=source, field="file", metadata=meta), ca, now)
    else:
        # DER says nothing of its kind: the first loader that takes the bytes decides it, then its checks apply.
        if _loads(x509.load_der_x509_certificate, data):
            certs = load_certificates(data, source=source, field="file", der=True, metadata=meta)
            return _certificate(path, certs, ca, now)
        if _loads(x509.load_der_x509_csr, data):
            return _csr(path, load_csr(data, source=source, field="file", metadata=meta))
        if _loads(x509.load_der_x509_crl, data):
            return _crl(path, load_crl(data, source=source, field="file", der=True, metadata=meta), ca, now)
    raise PkiError(
        f"{path} holds no certificate, CSR or CRL (PEM or DER)",
        reason="PEM_INVALID",
        field="file",
        metadata={"path": str(path)},
    )


def _crl_signed_by(crl: x509.CertificateRevocationList, key: ec.EllipticCurvePublicKey) -> bool:
    try:
        return crl.is_signature_valid(key)
    except X509_ERRORS:  # a signature algorithm cryptography does not know: not one of this CA's
        return False


def _loads(loader: Callable[[bytes], object], data: bytes) -> bool:
    try:
        loader(data)
    except X509_ERRORS:
        return False
    return True


# --------------------------------------------------------------------------- certificates


def _certificate(
    path: Path, certs: list[x509.Certificate], ca: CaDirectory | None, now: dt.datetime
) -> CertificateReport:
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    dns, ips, uris = _names(cert.extensions)
    identity, problem = _identity(uris, subject="the certificate")
    if is_ca or (not _hutong(uris) and dns + ips):
        problem = None  # a CA, or a hub named by DNS/IP: neither is meant to name a node
    if now > cert.not_valid_after_utc:
        validity = "expired"
    elif now < cert.not_valid_before_utc:
        validity = "not-yet-valid"
    else:
        validity = "valid"
    report = CertificateReport(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format_serial(cert.serial_number),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        validity=validity,
        is_ca=is_ca,
        dns_names=dns,
        ip_addresses=ips,
        uris=uris,
        node_identity=identity,
        identity_problem=problem,
        key_type=_key_type(cert),
        key_usage=_key_usage(cert),
        extended_key_usage=_extended_key_usage(cert),
        fingerprint_sha256=fingerprint_sha256(cert),
        certificates_in_file=len(certs),
    )
    if ca is None:
        return report
    return _with_ca_view(report, cert, certs[1:], ca, now)


def _with_ca_view(
    report: CertificateReport,
    cert: x509.Certificate,
    rest: list[x509.Certificate],
    ca: CaDirectory,
    now: dt.datetime,
) -> CertificateReport:
    try:
        record = ca.find_record(cert)
    except PkiError as exc:
        status = "not issued by this CA" if exc.reason == "CERT_UNKNOWN" else f"{exc.message} [{exc.reason}]"
        revocation = replaced_by = None
    else:
        status, revocation, replaced_by = record.state(now), record.revocation or None, record.replaced_by
    verified, problem = _verify_chain(cert, rest, ca, now)
    return replace(
        report,
        registry_status=status,
        revocation=revocation,
        replaced_by=replaced_by,
        chain_verified=verified,
        verification_problem=problem,
    )


#: What a chain that does not verify raises: the validator's verdict, or a part it could not parse.
_CHAIN_ERRORS: tuple[type[Exception], ...] = (VerificationError, InvalidSignature, *X509_ERRORS)


def _verify_chain(
    cert: x509.Certificate, rest: list[x509.Certificate], ca: CaDirectory, now: dt.datetime
) -> tuple[bool, str | None]:
    root = ca.root_certificate()
    intermediate = ca.intermediate_certificate()
    try:
        if cert == root:
            return True, None
        if cert.issuer == root.subject:
            cert.verify_directly_issued_by(root)
            return True, None
        verifier = PolicyBuilder().store(Store([root])).time(now).build_client_verifier()
        verifier.verify(cert, [*rest, intermediate])
    except _CHAIN_ERRORS as exc:
        # The validator explains itself; InvalidSignature carries no message, so name it.
        return False, str(exc) or type(exc).__name__
    return True, None


# --------------------------------------------------------------------------- CSRs and CRLs


def _csr(path: Path, csr: x509.CertificateSigningRequest) -> CsrReport:
    dns, ips, uris = _names(csr.extensions)
    identity, problem = _identity(uris, subject="the CSR")
    try:
        key_sha256 = public_key_sha256(public_key_of(csr, source="the CSR", field="file"))
    except PkiError:
        key_sha256 = "unavailable (the key cannot be read)"
    return CsrReport(
        path=path,
        subject=csr.subject.rfc4514_string(),
        dns_names=dns,
        ip_addresses=ips,
        uris=uris,
        node_identity=identity,
        identity_problem=problem,
        signature_valid=csr_signature_holds(csr),
        key_type=_key_type(csr),
        public_key_sha256=key_sha256,
    )


def _crl(path: Path, crl: x509.CertificateRevocationList, ca: CaDirectory | None, now: dt.datetime) -> CrlReport:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    entries = []
    for entry in crl:
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            flag = x509.ReasonFlags.unspecified
        reason_text = _REASON_NAMES.get(flag, flag.value)
        entries.append(
            CrlEntryReport(
                serial=format_serial(entry.serial_number),
                revoked_at=entry.revocation_date_utc,
                reason=reason_text,
            )
        )
    signature_valid: bool | None = None
    if ca is not None:
        signature_valid = False
        for issuer in (ca.intermediate_certificate(), ca.root_certificate()):
            key = issuer.public_key()
            if crl.issuer == issuer.subject and isinstance(key, ec.EllipticCurvePublicKey):
                signature_valid = signature_valid or _crl_signed_by(crl, key)
    next_update = crl.next_update_utc
    return CrlReport(
        path=path,
        issuer=crl.issuer.rfc4514_string(),
        last_update=crl.last_update_utc,
        next_update=next_update,
        crl_number=number,
        stale=next_update is not None and now > next_update,
        entries=tuple(entries),
        signature_valid=signature_valid,
    )


# --------------------------------------------------------------------------- details


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of a public key's DER SubjectPublicKeyInfo, lowercase hex: for reading out over the phone."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return digest.finalize().hex()


def _names(extensions: x509.Extensions) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), (), ()
    return (
        tuple(san.get_values_for_type(x509.DNSName)),
        tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
    )


_REASON_NAMES = {reason.flag: reason.value for reason in RevocationReason}


def _hutong(uris: tuple[str, ...]) -> list[str]:
    return [uri for uri in uris if uri.lower().startswith(f"{URI_SCHEME}:")]


def _identity(uris: tuple[str, ...], *, subject: str) -> tuple[str | None, str | None]:
    try:
        return single_identity(_hutong(uris), subject=subject).uri, None
    except PkiError as exc:
        return None, f"{exc.message} [{exc.reason}]"


def _key_type(obj: x509.Certificate | x509.CertificateSigningRequest) -> str:
    try:
        key = public_key_of(obj, source="the file", field="file")
    except PkiError as exc:
        return f"unknown ({exc.reason}: {exc.__cause__ or exc.message})"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def _key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name for name in _KEY_USAGES if getattr(usage, name))


def _extended_key_usage(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in usage)


_EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}
