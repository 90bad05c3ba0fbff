"""Certificates, CSRs and CRLs from bytes: cryptography's parse errors translated in one place.

cryptography parses an X.509 object lazily and reports a malformed one with more than
``ValueError``: ``InvalidVersion`` (on loading), ``DuplicateExtension`` and
``UnsupportedGeneralNameType`` (on reading the extensions), ``TypeError`` (a name attribute of
the wrong ASN.1 type, on reading the subject) and ``UnsupportedAlgorithm`` (a key of an unknown
type or curve, on reading the public key or checking a signature). The loaders here read the
subject, the issuer and the extensions at once, so what they return can be inspected without
another exception; only the public key is left to :func:`public_key_of`, because ``hutong pki
inspect`` must still describe a certificate whose key it cannot use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from gateway.errors import PkiError

__all__ = [
    "X509_ERRORS",
    "csr_signature_holds",
    "extension_value",
    "load_certificates",
    "load_crl",
    "load_csr",
    "public_key_of",
]

#: Everything cryptography raises for a certificate, CSR or CRL it cannot parse (or a key it cannot use).
X509_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)

_Parsed = x509.Certificate | x509.CertificateSigningRequest | x509.CertificateRevocationList
E = TypeVar("E", bound=x509.ExtensionType)


def _readable(obj: _Parsed) -> None:
    """Parse now what cryptography parses on first use (the names and the extensions)."""
    if isinstance(obj, x509.CertificateSigningRequest):
        obj.subject.rfc4514_string()
    else:
        obj.issuer.rfc4514_string()
        if isinstance(obj, x509.Certificate):
            obj.subject.rfc4514_string()
    for extension in obj.extensions:
        extension.value  # noqa: B018 - parsed on first access
    if isinstance(obj, x509.CertificateRevocationList):
        for entry in obj:
            for extension in entry.extensions:
                extension.value  # noqa: B018


def _invalid(
    what: str, source: str, exc: Exception, *, reason: str, field: str, metadata: Mapping[str, str] | None
) -> PkiError:
    detail = str(exc) or type(exc).__name__
    return PkiError(
        f"{source} holds {what} that cannot be parsed: {detail}",
        reason=reason,
        field=field,
        metadata={**(metadata or {}), "cause": type(exc).__name__},
    )


def load_certificates(
    data: bytes, *, source: str, field: str, der: bool = False, metadata: Mapping[str, str] | None = None
) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or the one DER certificate), each readable.

    Errors name ``field``: ``PEM_INVALID`` when ``data`` holds no certificate, ``CERTIFICATE_INVALID``
    (with the certificate's ``position``) when one is malformed.
    """
    try:
        certs = [x509.load_der_x509_certificate(data)] if der else x509.load_pem_x509_certificates(data)
    except X509_ERRORS as exc:
        # Not a ValueError (say, InvalidVersion): a certificate of a kind no one issues, so none at all.
        kind = "DER" if der else "PEM"
        cause = {} if type(exc) is ValueError else {"cause": type(exc).__name__}
        raise PkiError(
            f"{source} holds no valid {kind} certificate",
            reason="PEM_INVALID",
            field=field,
            metadata={**(metadata or {}), **cause},
        ) from exc
    for position, cert in enumerate(certs):
        try:
            _readable(cert)
        except X509_ERRORS as exc:
            at = {**(metadata or {}), "position": str(position)}
            raise _invalid(
                f"a certificate (number {position + 1} of {len(certs)})" if len(certs) > 1 else "a certificate",
                source,
                exc,
                reason="CERTIFICATE_INVALID",
                field=field,
                metadata=at,
            ) from exc
    return certs


def load_csr(
    data: bytes, *, source: str, field: str, metadata: Mapping[str, str] | None = None
) -> x509.CertificateSigningRequest:
    """The certificate signing request in ``data`` (PEM or DER), readable; ``CSR_INVALID`` naming ``field``."""
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except X509_ERRORS as exc:
        raise PkiError(
            f"{source} holds no certificate signing request (PEM or DER)",
            reason="CSR_INVALID",
            field=field,
            metadata=metadata,
        ) from exc
    try:
        _readable(csr)
    except X509_ERRORS as exc:
        raise _invalid("a CSR", source, exc, reason="CSR_INVALID", field=field, metadata=metadata) from exc
    return csr


def load_crl(
    data: bytes, *, source: str, field: str, der: bool = False, metadata: Mapping[str, str] | None = None
) -> x509.CertificateRevocationList:
    """The CRL in ``data`` (PEM, or DER), readable with its entries; ``CRL_INVALID`` naming ``field``."""
    try:
        crl = x509.load_der_x509_crl(data) if der else x509.load_pem_x509_crl(data)
    except X509_ERRORS as exc:
        raise PkiError(
            f"{source} holds no valid {'DER' if der else 'PEM'} CRL: {str(exc) or type(exc).__name__}",
            reason="CRL_INVALID",
            field=field,
            metadata=metadata,
        ) from exc
    try:
        _readable(crl)
    except X509_ERRORS as exc:
        raise _invalid("a CRL", source, exc, reason="CRL_INVALID", field=field, metadata=metadata) from exc
    return crl


def extension_value(
    obj: _Parsed | x509.RevokedCertificate,
    kind: type[E],
    *,
    source: str,
    field: str,
    reason: str = "CERTIFICATE_INVALID",
) -> E | None:
    """The value of ``obj``'s extension of class ``kind``, None without one; ``reason`` when they cannot be parsed.

    For objects that did not come through the loaders here (a TLS peer's certificate, one built in memory).
    """
    try:
        return obj.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except X509_ERRORS as exc:
        raise PkiError(
            f"{source}'s extensions cannot be parsed: {str(exc) or type(exc).__name__}",
            reason=reason,
            field=field,
            metadata={"cause": type(exc).__name__},
        ) from exc


def public_key_of(
    obj: x509.Certificate | x509.CertificateSigningRequest, *, source: str, field: str
) -> CertificatePublicKeyTypes:
    """``obj``'s public key; ``KEY_TYPE_UNSUPPORTED`` (an unknown type or curve) or ``PUBLIC_KEY_INVALID``."""
    try:
        return obj.public_key()
    except UnsupportedAlgorithm as exc:
        raise PkiError(
            f"{source} holds a public key of a type Hutong cannot use: {exc}",
            reason="KEY_TYPE_UNSUPPORTED",
            field=field,
            metadata={"key_type": "unknown"},
        ) from exc
    except X509_ERRORS as exc:
        raise PkiError(
            f"{source} holds a malformed public key: {str(exc) or type(exc).__name__}",
            reason="PUBLIC_KEY_INVALID",
            field=field,
        ) from exc


def csr_signature_holds(csr: x509.CertificateSigningRequest) -> bool:
    """Whether the CSR's signature verifies with its own key (False when the key or algorithm is unknown)."""
    try:
        return csr.is_signature_valid
    except X509_ERRORS:
        return False
