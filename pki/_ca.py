"""The certificate authority: create, load, save, and issue node and server certificates.

Everything is ECDSA P-256 with SHA-256, the suite gRPC's TLS supports (DESIGN §5).
Only ``cryptography``'s x509 builders are used; nothing here is home-made crypto.

The operator tooling (:mod:`pki._authority`) builds on it: an offline root made
with :meth:`CertificateAuthority.create` (path length 1), an online intermediate
from :meth:`CertificateAuthority.issue_intermediate` (path length 0), leaves and
CRLs signed by the intermediate. Every issuing method takes an optional ``now``
so tests and the operator tooling share one clock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import PkiError
from pki._files import (
    StrPath,
    check_key_matches_certificate,
    read_certificate,
    read_private_key,
    write_pem_certificate,
    write_pem_private_key,
)
from pki._identity import NodeIdentity, hutong_uris, single_identity
from pki._x509 import csr_signature_holds, extension_value, public_key_of

__all__ = ["CertificateAuthority", "RevokedEntry", "check_node_csr", "csr_server_names", "generate_key", "make_csr"]

ORGANIZATION = "Hutong"
DEFAULT_CA_NAME = "Hutong Ministry Root CA"
DEFAULT_INTERMEDIATE_NAME = "Hutong Ministry Issuing CA"
DEFAULT_HUB_NAME = "hutong-hub"
# A host name of ASCII (A-label) labels; wildcards are never certified for a node.
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")
# Backdate notBefore a little: a node whose clock runs slightly behind the CA's
# must not reject a certificate issued a second ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)


def _signature_hash() -> hashes.SHA256:
    return hashes.SHA256()


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    """``now`` (which must be timezone-aware) or the current time, in UTC."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        # A naive time would be read as local time by some callers and UTC by others.
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _require_p256(public_key: object, *, field: str) -> ec.EllipticCurvePublicKey:
    if not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1)):
        curve = getattr(getattr(public_key, "curve", None), "name", None)
        kind = f"EC {curve}" if curve else type(public_key).__name__
        raise PkiError(
            f"public key is {kind}; Hutong certificates use ECDSA P-256 only",
            reason="KEY_TYPE_UNSUPPORTED",
            field=field,
            metadata={"key_type": kind},
        )
    return public_key


def _node_subject(identity: NodeIdentity) -> x509.Name:
    # Informational only: authorization reads the SAN URI, never the subject.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, identity.province_code),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.province_code),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.node_name),
        ]
    )


def _node_san(
    identity: NodeIdentity, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()
) -> x509.SubjectAlternativeName:
    # The URI is the identity; DNS names and IP addresses only let the hub verify the node as a
    # TLS server (hutong node serve) by host name.
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if dns_names or ip_addresses:
        names.extend(_server_names(dns_names, ip_addresses))
    return x509.SubjectAlternativeName(names)


def csr_server_names(csr: x509.CertificateSigningRequest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The DNS names and IP addresses a node's CSR asks for besides its identity URI (both may be empty)."""
    san = extension_value(
        csr, x509.SubjectAlternativeName, source="the CSR", field="csr.extensions", reason="CSR_INVALID"
    )
    if san is None:
        return (), ()
    dns_names = tuple(san.get_values_for_type(x509.DNSName))
    ip_addresses = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    for dns_name in dns_names:
        if not _DNS_NAME.fullmatch(dns_name):
            raise PkiError(
                f"the CSR asks for DNS name {dns_name[:200]!r}, which is not a host name (ASCII labels, no wildcard)",
                reason="CSR_INVALID",
                field="csr.san_dns",
                metadata={"dns_name": dns_name[:200], "cause_reason": "DNS_NAME_INVALID"},
            )
    return dns_names, ip_addresses


def check_node_csr(csr: x509.CertificateSigningRequest) -> tuple[NodeIdentity, ec.EllipticCurvePublicKey]:
    """The node identity and public key a CSR asks for, after checking its signature and single SAN URI.

    DNS names and IP addresses beside the URI are accepted (a node serving the hub's detail
    requests needs them) when they are well formed; :func:`csr_server_names` reads them, and
    the CA certifies them only when told to.

    Errors: ``CSR_SIGNATURE_INVALID`` (field ``csr.signature``), ``KEY_TYPE_UNSUPPORTED`` or
    ``PUBLIC_KEY_INVALID`` (``csr.public_key``), ``CSR_INVALID`` (``csr.san_uri``, ``csr.san_dns`` or
    ``csr.extensions``;
    the underlying identity reason, e.g. ``PROVINCE_UNKNOWN``, in ``metadata["cause_reason"]``).
    """
    # The key first: checking the signature of a key of an unknown type or curve raises.
    public_key = _require_p256(public_key_of(csr, source="the CSR", field="csr.public_key"), field="csr.public_key")
    if not csr_signature_holds(csr):
        raise PkiError(
            "the CSR's signature does not verify with its own public key",
            reason="CSR_SIGNATURE_INVALID",
            field="csr.signature",
        )
    san = extension_value(
        csr, x509.SubjectAlternativeName, source="the CSR", field="csr.extensions", reason="CSR_INVALID"
    )
    uris = hutong_uris(san) if san is not None else []
    try:
        identity = single_identity(uris, subject="the CSR", field="csr.san_uri")
    except PkiError as exc:
        raise PkiError(
            exc.message,
            reason="CSR_INVALID",
            field="csr.san_uri",
            metadata={**exc.metadata, "cause_reason": exc.reason},
        ) from exc
    csr_server_names(csr)
    return identity, public_key


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL: which certificate, since when, and why."""

    serial_number: int
    revoked_at: dt.datetime
    #: None for "unspecified": RFC 5280 §5.3.1 asks for no reason code rather than unspecified (0).
    reason: x509.ReasonFlags | None = None


def make_csr(
    key: ec.EllipticCurvePrivateKey,
    identity: NodeIdentity,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.CertificateSigningRequest:
    """A certificate signing request for ``identity``, signed with ``key`` (done on the node).

    ``dns_names`` and ``ip_addresses`` ask for names the hub can verify when it calls the node
    (``hutong node serve``); the identity is still the URI alone.
    """
    _require_p256(key.public_key(), field="key")
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_node_subject(identity))
        .add_extension(_node_san(identity, dns_names, ip_addresses), critical=False)
        .sign(key, _signature_hash())
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key, able to issue Hutong certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls, common_name: str = DEFAULT_CA_NAME, *, valid_days: int = 3650, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """A new self-signed root CA with a fresh P-256 key."""
        _check_valid_days(valid_days)
        key = generate_key()
        name = _ca_name(common_name)
        now = _utc_now(now)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            # Path length 1 leaves room for one intermediate (offline root, online intermediate).
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _signature_hash())
        )
        return cls(cert=cert, key=key)

    def issue_intermediate(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        common_name: str = DEFAULT_INTERMEDIATE_NAME,
        valid_days: int = 1825,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """An issuing CA under this root: path length 0, keyCertSign and cRLSign only."""
        public_key = _require_p256(public_key, field="public_key")
        not_before, not_after = self._validity(valid_days, now)
        return (
            x509.CertificateBuilder()
            .subject_name(_ca_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # Path length 0: the online intermediate can sign leaves, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
            .sign(self.key, _signature_hash())
        )

    def sign_crl(
        self,
        entries: Sequence[RevokedEntry],
        *,
        crl_number: int,
        next_update: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL listing ``entries``, numbered ``crl_number``, valid until ``now + next_update``."""
        if crl_number < 1:
            raise PkiError(
                f"CRL numbers start at 1 (got {crl_number})",
                reason="CRL_NUMBER_INVALID",
                field="crl_number",
                metadata={"crl_number": str(crl_number)},
            )
        if next_update <= dt.timedelta(0):
            raise PkiError(
                "the next update of a CRL must lie in the future",
                reason="CRL_NEXT_UPDATE_INVALID",
                field="next_update",
                metadata={"next_update_seconds": str(int(next_update.total_seconds()))},
            )
        now = _utc_now(now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for entry in entries:
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial_number)
                .revocation_date(_utc_now(entry.revoked_at))
            )
            if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
                revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        return builder.sign(self.key, _signature_hash())

    @classmethod
    def load(cls, cert_path: StrPath, key_path: StrPath, *, passphrase: bytes | None = None) -> CertificateAuthority:
        """Load a CA from PEM files, checking that the key matches and the certificate is a CA."""
        cert = read_certificate(cert_path, field="cert_path")
        key = read_private_key(key_path, passphrase, field="key_path")
        check_key_matches_certificate(key, cert, key_path=Path(key_path), cert_path=Path(cert_path))
        # read_certificate parsed the extensions: none can raise here.
        constraints = extension_value(cert, x509.BasicConstraints, source=str(cert_path), field="cert_path")
        if constraints is None or not constraints.ca:
            raise PkiError(
                f"{cert_path} is not a CA certificate (BasicConstraints ca=True is missing)",
                reason="CA_CERT_INVALID",
                field="cert_path",
                metadata={"path": str(cert_path)},
            )
        return cls(cert=cert, key=key)

    def save(self, cert_path: StrPath, key_path: StrPath, *, passphrase: bytes | None = None) -> None:
        """Write the certificate (0644) and key (0600, encrypted given a passphrase); never overwrite."""
        # Key first: if it already exists we stop before leaving a lone certificate behind.
        write_pem_private_key(key_path, self.key, passphrase=passphrase)
        write_pem_certificate(cert_path, self.cert)

    # ----------------------------------------------------------------- issuing

    def issue_node_certificate(
        self,
        identity: NodeIdentity,
        public_key: ec.EllipticCurvePublicKey,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        valid_days: int = 90,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A node's mTLS certificate: SAN URI identity (plus any DNS/IP names to serve on), client and server auth."""
        builder = (
            self._leaf_builder(_require_p256(public_key, field="public_key"), valid_days, now)
            .subject_name(_node_subject(identity))
            .add_extension(_node_san(identity, dns_names, ip_addresses), critical=False)
            # serverAuth too: the hub will call nodes back for federated queries.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        return builder.sign(self.key, _signature_hash())

    def issue_server_certificate(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str] = (),
        common_name: str = DEFAULT_HUB_NAME,
        valid_days: int = 90,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """The hub's certificate: DNS/IP SANs, server auth (and client auth to call nodes)."""
        names = _server_names(dns_names, ip_addresses)
        builder = (
            self._leaf_builder(_require_p256(public_key, field="public_key"), valid_days, now)
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        return builder.sign(self.key, _signature_hash())

    def issue_from_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        valid_days: int = 90,
        expected: NodeIdentity | None = None,
        server_names: bool = False,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A node certificate for a CSR, after checking it with :func:`check_node_csr`.

        Only the identity and the public key are taken from the CSR, and with ``server_names``
        also the DNS names and IP addresses it asks for; every other requested name or
        extension is ignored, as the CA decides what it signs. Give ``expected`` to refuse a
        CSR naming any other node.
        """
        identity, public_key = check_node_csr(csr)
        dns_names, ip_addresses = csr_server_names(csr) if server_names else ((), ())
        if expected is not None and identity != expected:
            raise PkiError(
                f"the CSR names {identity.uri}, not the expected {expected.uri}",
                reason="CSR_INVALID",
                field="csr.san_uri",
                metadata={"uri": identity.uri, "expected_uri": expected.uri},
            )
        return self.issue_node_certificate(
            identity, public_key, dns_names=dns_names, ip_addresses=ip_addresses, valid_days=valid_days, now=now
        )

    # ----------------------------------------------------------------- internals

    def _validity(self, valid_days: int, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
        """notBefore and notAfter of a certificate this CA signs, refusing one that would outlive the CA."""
        _check_valid_days(valid_days)
        now = _utc_now(now)
        not_after = now + dt.timedelta(days=valid_days)
        ca_not_after = self.cert.not_valid_after_utc
        if not_after > ca_not_after:
            # A certificate outliving its CA would fail validation on the CA's last day without warning.
            raise PkiError(
                f"a certificate valid for {valid_days} days would outlive the CA, "
                f"which expires {ca_not_after.isoformat()}",
                reason="VALIDITY_EXCEEDS_CA",
                field="valid_days",
                metadata={"valid_days": str(valid_days), "ca_not_after": ca_not_after.isoformat()},
            )
        # Never before the CA itself: a chain whose leaf predates its issuer fails strict validators.
        return max(now - _CLOCK_SKEW, self.cert.not_valid_before_utc), not_after

    def _leaf_builder(
        self, public_key: ec.EllipticCurvePublicKey, valid_days: int, now: dt.datetime | None = None
    ) -> x509.CertificateBuilder:
        """Issuer, key, serial, validity and the extensions every leaf shares."""
        not_before, not_after = self._validity(valid_days, now)
        return (
            x509.CertificateBuilder()
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            # A CA made elsewhere may lack an SKI; derive the same value from its key.
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _check_valid_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise PkiError(
            f"valid_days must be a whole number of days, at least 1 (got {valid_days!r})",
            reason="VALIDITY_INVALID",
            field="valid_days",
            metadata={"valid_days": repr(valid_days)},
        )


def _server_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    # A bare str is a Sequence[str] too; iterating it would make one SAN per character.
    for arg, value in (("dns_names", dns_names), ("ip_addresses", ip_addresses)):
        if isinstance(value, str):
            raise TypeError(f"{arg} must be a sequence of strings, not a single string")
    names: list[x509.GeneralName] = []
    for dns_name in dns_names:
        try:
            if not dns_name or dns_name != dns_name.strip():
                raise ValueError("empty or padded with whitespace")
            names.append(x509.DNSName(dns_name))
        except ValueError as exc:
            raise PkiError(
                f"DNS name {dns_name!r} is not usable: give an ASCII (A-label) host name",
                reason="DNS_NAME_INVALID",
                field="dns_names",
                metadata={"dns_name": dns_name},
            ) from exc
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise PkiError(
                f"{ip!r} is not an IPv4 or IPv6 address",
                reason="IP_ADDRESS_INVALID",
                field="ip_addresses",
                metadata={"ip_address": ip},
            ) from exc
    if not names:
        raise PkiError(
            "a server certificate needs at least one DNS name or IP address",
            reason="SERVER_NAMES_MISSING",
            field="dns_names",
        )
    return names
