"""The ministry CA on disk: an offline root, an online intermediate, the registry and the CRLs.

Layout of a CA directory made by ``hutong pki init DIR`` (modes in brackets)::

    DIR/                     [0700]
      root.pem               the root certificate: the trust anchor every node installs
      ca-chain.pem           intermediate + root: the hub's --ca bundle (chains and CRL signature)
      intermediate.pem       the online issuing CA (path length 0)
      intermediate.key       [0600] encrypted when a passphrase was given at init
      registry.sqlite3       [0600] every certificate issued, renewed or revoked (pki._registry)
      crl.pem                the intermediate's CRL, written by ``hutong pki crl``
      root-crl.pem           the root's CRL of revoked intermediates, written when one is revoked
      offline/               [0700]
        root.key             [0600] always encrypted; move it off this machine after init
      .lock                  [0600] serialises CRL publication between operators

Daily work (issue, renew, revoke, CRL) needs the intermediate only. The root key is needed
for nothing but revoking the intermediate (and refreshing the root's CRL); it is read from
``offline/root.key`` or wherever ``root_key_path`` points (a mounted offline medium).

Errors are :class:`gateway.errors.PkiError`; the reasons added here:

=========================  ====================================================
PASSPHRASE_TOO_SHORT       a new CA passphrase has fewer than 12 characters
PASSPHRASE_REUSED          the intermediate would share the root's passphrase
ISSUER_EXPIRED             the intermediate has expired: nothing can be issued
ISSUER_NOT_YET_VALID       the intermediate's validity has not started
ISSUER_REVOKED             the intermediate was revoked: nothing can be issued
ISSUER_MISMATCH            intermediate.pem is not the intermediate registered
CERT_UNKNOWN               the serial is not in the registry
CERT_MISMATCH              the file's certificate differs from the one registered
CERT_REVOKED               renewing a revoked certificate
CERT_EXPIRED               renewing a certificate that is no longer valid
CERT_ALREADY_RENEWED       renewing a certificate twice
CERT_ALREADY_REVOKED       revoking a certificate twice
IDENTITY_MISMATCH          a renewal CSR names another node or other hub names
RENEW_UNSUPPORTED          renewing a CA certificate
ROOT_NOT_REVOCABLE         revoking the root (distrust it instead)
ROOT_KEY_MISSING           the offline root key is not where it was looked for
SERVER_NAME_RESERVED       a node CSR asks for a DNS name or IP address of a hub certificate
=========================  ====================================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.errors import PkiError
from pki._ca import (
    DEFAULT_CA_NAME,
    DEFAULT_HUB_NAME,
    DEFAULT_INTERMEDIATE_NAME,
    CertificateAuthority,
    RevokedEntry,
    check_node_csr,
    csr_server_names,
    generate_key,
    make_csr,
)
from pki._files import (
    StrPath,
    ensure_absent,
    key_file_is_encrypted,
    make_private_dir,
    node_file_stem,
    pem_chain,
    read_certificate,
    write_pem_certificate,
    write_pem_private_key,
    write_public_pem,
)
from pki._identity import NodeIdentity
from pki._registry import (
    CertificateKind,
    CertificateRecord,
    CertificateStatus,
    Registry,
    RevocationReason,
    fingerprint_sha256,
    format_serial,
)
from pki._x509 import csr_signature_holds, extension_value, public_key_of

__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "CaDirectory",
    "IssuedCertificate",
    "NodeRequest",
    "Passphrase",
    "PublishedCrl",
    "check_new_passphrase",
    "read_passphrase_file",
    "write_node_request",
]

ROOT_CERT_FILE = "root.pem"
CHAIN_FILE = "ca-chain.pem"
INTERMEDIATE_CERT_FILE = "intermediate.pem"
INTERMEDIATE_KEY_FILE = "intermediate.key"
REGISTRY_FILE = "registry.sqlite3"
CRL_FILE = "crl.pem"
ROOT_CRL_FILE = "root-crl.pem"
OFFLINE_DIR = "offline"
ROOT_KEY_FILE = "root.key"
LOCK_FILE = ".lock"

_PEM = Encoding.PEM

#: Shortest passphrase accepted for a new CA key (root or intermediate).
MIN_PASSPHRASE_LENGTH = 12

#: A passphrase, or a callable asked for it only once it is really needed (so a prompt
#: comes after the cheap checks, and never for an unencrypted key).
Passphrase = bytes | Callable[[], bytes | None] | None


def _resolve(passphrase: Passphrase) -> bytes | None:
    return passphrase() if callable(passphrase) else passphrase


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


# --------------------------------------------------------------------------- passphrases


def read_passphrase_file(path: StrPath, *, field: str) -> bytes:
    """A passphrase from a file, without its trailing line break(s); errors name ``field``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = "FILE_MISSING" if isinstance(exc, FileNotFoundError | IsADirectoryError) else "FILE_ACCESS_DENIED"
        raise PkiError(
            f"cannot read passphrase file {path}: {exc.strerror or exc}",
            reason=reason,
            field=field,
            metadata={"path": str(path)},
        ) from exc
    passphrase = data.rstrip(b"\r\n")
    if not passphrase:
        raise PkiError(
            f"passphrase file {path} is empty",
            reason="PASSPHRASE_EMPTY",
            field=field,
            metadata={"path": str(path)},
        )
    return passphrase


def check_new_passphrase(passphrase: bytes, *, field: str) -> None:
    """Refuse a passphrase too short to protect a CA key."""
    length = len(passphrase.decode("utf-8", errors="replace"))
    if length < MIN_PASSPHRASE_LENGTH:
        raise PkiError(
            f"the passphrase has {length} characters; a CA key needs at least {MIN_PASSPHRASE_LENGTH}",
            reason="PASSPHRASE_TOO_SHORT",
            field=field,
            metadata={"length": str(length), "minimum": str(MIN_PASSPHRASE_LENGTH)},
        )


# --------------------------------------------------------------------------- the province's side


@dataclass(frozen=True)
class NodeRequest:
    """A node key and its CSR, as written at the province by ``hutong pki csr``."""

    identity: NodeIdentity
    key_path: Path
    csr_path: Path
    csr: x509.CertificateSigningRequest


def write_node_request(
    directory: StrPath,
    identity: NodeIdentity,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> NodeRequest:
    """Generate a node key and CSR: ``<province>-<name>.key`` (0600) and ``.csr`` in ``directory``.

    The key is unencrypted because gRPC reads it as is; it never leaves the province,
    only the CSR travels to the ministry. ``dns_names`` and ``ip_addresses`` ask for the names
    the hub will reach the node's federation server by (``hutong node serve``).
    """
    directory = Path(directory)
    stem = node_file_stem(identity)
    key_path, csr_path = directory / f"{stem}.key", directory / f"{stem}.csr"
    make_private_dir(directory)
    ensure_absent(key_path, field="out")
    ensure_absent(csr_path, field="out")
    key = generate_key()
    csr = make_csr(key, identity, dns_names=dns_names, ip_addresses=ip_addresses)
    write_pem_private_key(key_path, key)
    write_public_pem(csr_path, csr.public_bytes(_PEM), field="out")
    return NodeRequest(identity=identity, key_path=key_path, csr_path=csr_path, csr=csr)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate just issued and registered."""

    certificate: x509.Certificate
    #: Leaf first, then the intermediate: what a node or hub presents in the TLS handshake.
    chain: tuple[x509.Certificate, ...]
    record: CertificateRecord
    #: Other certificates of the same node still valid and unrevoked (a second holder, or a rollover).
    also_valid: tuple[CertificateRecord, ...] = ()
    #: The private key, for certificates whose key the CA generated (the hub's); None otherwise.
    key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)

    @property
    def chain_pem(self) -> bytes:
        """The chain as one PEM file."""
        return pem_chain(self.chain)


@dataclass(frozen=True)
class PublishedCrl:
    """A CRL just signed and written."""

    crl: x509.CertificateRevocationList
    number: int
    path: Path
    revoked: tuple[CertificateRecord, ...]


# --------------------------------------------------------------------------- the CA directory


@dataclass(frozen=True)
class CaDirectory:
    """A ministry CA directory: see the module docstring for its layout."""

    path: Path

    # ----------------------------------------------------------------- paths

    @property
    def root_cert_path(self) -> Path:
        """The root certificate (the trust anchor)."""
        return self.path / ROOT_CERT_FILE

    @property
    def root_key_path(self) -> Path:
        """Where init wrote the root key; operators move it offline."""
        return self.path / OFFLINE_DIR / ROOT_KEY_FILE

    @property
    def intermediate_cert_path(self) -> Path:
        """The online issuing CA's certificate."""
        return self.path / INTERMEDIATE_CERT_FILE

    @property
    def intermediate_key_path(self) -> Path:
        """The online issuing CA's key."""
        return self.path / INTERMEDIATE_KEY_FILE

    @property
    def chain_path(self) -> Path:
        """Intermediate + root, the hub's trust bundle."""
        return self.path / CHAIN_FILE

    @property
    def crl_path(self) -> Path:
        """The default place of the intermediate's CRL."""
        return self.path / CRL_FILE

    @property
    def root_crl_path(self) -> Path:
        """The default place of the root's CRL (revoked intermediates)."""
        return self.path / ROOT_CRL_FILE

    @property
    def registry(self) -> Registry:
        """The registry of issued certificates."""
        return Registry(self.path / REGISTRY_FILE)

    # ----------------------------------------------------------------- creating and opening

    @classmethod
    def init(
        cls,
        directory: StrPath,
        *,
        root_passphrase: bytes,
        intermediate_passphrase: bytes | None = None,
        root_days: int = 3650,
        intermediate_days: int = 1825,
        root_common_name: str = DEFAULT_CA_NAME,
        intermediate_common_name: str = DEFAULT_INTERMEDIATE_NAME,
        now: dt.datetime | None = None,
    ) -> CaDirectory:
        """Create a CA directory: root (key encrypted), intermediate signed by it, chain, registry.

        Everything is built in a hidden sibling directory and renamed into place at the end,
        so a failure leaves nothing behind and an existing CA is never touched (``FILE_EXISTS``).
        ``directory`` may exist if it is empty.
        """
        check_new_passphrase(root_passphrase, field="root_passphrase")
        if intermediate_passphrase is not None:
            check_new_passphrase(intermediate_passphrase, field="intermediate_passphrase")
            if intermediate_passphrase == root_passphrase:
                raise PkiError(
                    "the intermediate's passphrase must differ from the root's: the root key is kept "
                    "offline precisely so that daily work never needs its passphrase",
                    reason="PASSPHRASE_REUSED",
                    field="intermediate_passphrase",
                )
        directory = Path(directory)
        _check_init_target(directory)
        now = _now(now)
        root = CertificateAuthority.create(root_common_name, valid_days=root_days, now=now)
        intermediate_key = generate_key()
        intermediate_cert = root.issue_intermediate(
            intermediate_key.public_key(), common_name=intermediate_common_name, valid_days=intermediate_days, now=now
        )
        try:
            staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.init-"))
        except OSError as exc:
            raise PkiError(
                f"cannot create {directory}: {exc.strerror or exc}",
                reason="FILE_ACCESS_DENIED" if isinstance(exc, PermissionError) else "FILE_IO_FAILED",
                field="directory",
                metadata={"path": str(directory)},
            ) from exc
        try:
            made = cls(staging)
            make_private_dir(staging / OFFLINE_DIR)
            write_pem_private_key(made.root_key_path, root.key, passphrase=root_passphrase)
            write_pem_certificate(made.root_cert_path, root.cert)
            write_pem_private_key(made.intermediate_key_path, intermediate_key, passphrase=intermediate_passphrase)
            write_pem_certificate(made.intermediate_cert_path, intermediate_cert)
            write_public_pem(made.chain_path, pem_chain([intermediate_cert, root.cert]), field="directory")
            registry = Registry.create(staging / REGISTRY_FILE)
            root_serial = format_serial(root.cert.serial_number)
            registry.record_issued(root.cert, issuer_serial=None, issued_at=now)
            registry.record_issued(intermediate_cert, issuer_serial=root_serial, issued_at=now)
            os.close(os.open(staging / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            try:
                # rename(2) replaces an empty directory and fails on a non-empty one: atomic, no overwrite.
                staging.rename(directory)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise PkiError(
                        f"{directory} is no longer empty; refusing to overwrite it",
                        reason="FILE_EXISTS",
                        field="directory",
                        metadata={"path": str(directory)},
                    ) from exc
                raise PkiError(
                    f"cannot create {directory}: {exc.strerror or exc} (give a new directory's path)",
                    reason="FILE_IO_FAILED",
                    field="directory",
                    metadata={"path": str(directory)},
                ) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(directory)

    @classmethod
    def open(cls, directory: StrPath) -> CaDirectory:
        """An existing CA directory; ``FILE_MISSING`` (field ``ca_dir``) when it is not one."""
        directory = Path(directory)
        if not directory.is_dir():
            raise PkiError(
                f"CA directory {directory} does not exist (create one with `hutong pki init {directory}`)",
                reason="FILE_MISSING",
                field="ca_dir",
                metadata={"path": str(directory)},
            )
        Registry.open(directory / REGISTRY_FILE)
        return cls(directory)

    # ----------------------------------------------------------------- the CAs

    def root_certificate(self) -> x509.Certificate:
        """The root certificate."""
        return read_certificate(self.root_cert_path, field="ca_dir")

    def intermediate_certificate(self) -> x509.Certificate:
        """The intermediate's certificate."""
        return read_certificate(self.intermediate_cert_path, field="ca_dir")

    def intermediate_key_is_encrypted(self) -> bool:
        """Whether issuing needs the intermediate's passphrase."""
        return key_file_is_encrypted(self.intermediate_key_path, field="ca_dir")

    def issuer_record(self) -> CertificateRecord:
        """The registry's record of the intermediate, checked against ``intermediate.pem``."""
        cert = self.intermediate_certificate()
        record = self.registry.get(format_serial(cert.serial_number))
        if record.kind is not CertificateKind.INTERMEDIATE or record.fingerprint_sha256 != fingerprint_sha256(cert):
            raise PkiError(
                f"{self.intermediate_cert_path} is not the intermediate this CA's registry knows",
                reason="ISSUER_MISMATCH",
                field="ca_dir",
                metadata={"path": str(self.intermediate_cert_path), "serial": record.serial},
            )
        return record

    def check_issuer(self, now: dt.datetime | None = None) -> CertificateRecord:
        """The intermediate's record, if it may issue at ``now``: not expired, not revoked."""
        now = _now(now)
        record = self.issuer_record()
        meta = {"serial": record.serial, "not_before": record.not_before.isoformat()}
        meta["not_after"] = record.not_after.isoformat()
        if record.status is CertificateStatus.REVOKED:
            raise PkiError(
                f"the intermediate CA {record.serial} was revoked on {record.revocation}; it can no longer issue",
                reason="ISSUER_REVOKED",
                field="ca_dir",
                metadata={**meta, "revoked": record.revocation},
            )
        if now > record.not_after:
            raise PkiError(
                f"the intermediate CA {record.serial} expired on {record.not_after.isoformat()}; "
                "it can no longer issue",
                reason="ISSUER_EXPIRED",
                field="ca_dir",
                metadata=meta,
            )
        if now < record.not_before:
            raise PkiError(
                f"the intermediate CA {record.serial} is valid only from {record.not_before.isoformat()}",
                reason="ISSUER_NOT_YET_VALID",
                field="ca_dir",
                metadata=meta,
            )
        return record

    def _issuer(self, passphrase: Passphrase, now: dt.datetime) -> CertificateAuthority:
        self.check_issuer(now)
        return self._load_intermediate(passphrase)

    def _load_intermediate(self, passphrase: Passphrase) -> CertificateAuthority:
        with _passphrase_field("intermediate_passphrase"):
            return CertificateAuthority.load(
                self.intermediate_cert_path, self.intermediate_key_path, passphrase=_resolve(passphrase)
            )

    def load_root(self, passphrase: Passphrase, *, key_path: StrPath | None = None) -> CertificateAuthority:
        """The root CA with its key, from ``offline/root.key`` or ``key_path`` (an offline medium)."""
        key_path = Path(key_path) if key_path is not None else self.root_key_path
        if not key_path.exists():
            raise PkiError(
                f"the root key is not at {key_path}: it is kept offline; mount it and give its path (--root-key)",
                reason="ROOT_KEY_MISSING",
                field="root_key",
                metadata={"path": str(key_path)},
            )
        with _passphrase_field("root_passphrase"):
            return CertificateAuthority.load(self.root_cert_path, key_path, passphrase=_resolve(passphrase))

    # ----------------------------------------------------------------- issuing

    def issue_node(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        passphrase: Passphrase = None,
        valid_days: int = 90,
        server_names: bool = False,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Sign a node's CSR with the intermediate and register the certificate.

        The CSR is checked first (signature, exactly one ``hutong://`` URI naming a known
        province: ``CSR_INVALID``/``CSR_SIGNATURE_INVALID``), then the issuer, and only then
        is the passphrase asked for. With ``server_names`` the DNS names and IP addresses the
        CSR asks for are certified too (the operator has checked them), except a name a hub
        certificate of this CA holds (``SERVER_NAME_RESERVED``): a node certificate carrying the
        hub's name could pass, to other nodes, for the hub.
        """
        identity, public_key = check_node_csr(csr)
        now = _now(now)
        dns_names, ip_addresses = csr_server_names(csr) if server_names else ((), ())
        if dns_names or ip_addresses:
            self._check_not_hub_names([*dns_names, *ip_addresses], now=now)
        issuer = self._issuer(passphrase, now)
        cert = issuer.issue_node_certificate(
            identity, public_key, dns_names=dns_names, ip_addresses=ip_addresses, valid_days=valid_days, now=now
        )
        return self._register(cert, issuer, now=now)

    def _check_not_hub_names(self, names: Sequence[str], *, now: dt.datetime) -> None:
        held = {
            name: record.serial
            for record in self.registry.find(kinds=[CertificateKind.HUB], status=CertificateStatus.ISSUED)
            if record.state(now) == "valid"
            for name in record.hub_names
        }
        for name in names:
            if name in held:
                raise PkiError(
                    f"the CSR asks for {name}, a name of the hub certificate {held[name]}; a node certificate "
                    "never carries the hub's names",
                    reason="SERVER_NAME_RESERVED",
                    field="csr.san",
                    metadata={"name": name, "serial": held[name]},
                )

    def issue_hub(
        self,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str] = (),
        common_name: str = DEFAULT_HUB_NAME,
        passphrase: Passphrase = None,
        valid_days: int = 90,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A fresh key and a hub certificate for it (DNS/IP SANs), registered; the key is in the result."""
        now = _now(now)
        issuer = self._issuer(passphrase, now)
        key = generate_key()
        cert = issuer.issue_server_certificate(
            key.public_key(),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            common_name=common_name,
            valid_days=valid_days,
            now=now,
        )
        issued = self._register(cert, issuer, now=now)
        return IssuedCertificate(certificate=cert, chain=issued.chain, record=issued.record, key=key)

    def renew(
        self,
        cert: x509.Certificate,
        *,
        csr: x509.CertificateSigningRequest | None = None,
        passphrase: Passphrase = None,
        valid_days: int = 90,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A new certificate for the same identity, linked from the old one in the registry.

        Without ``csr`` the old public key is certified again; with one, its key is used and
        its identity must be the old one (``IDENTITY_MISMATCH`` otherwise). Only a currently
        valid, unrevoked, not yet renewed certificate of this CA can be renewed.
        """
        now = _now(now)
        old = self.find_record(cert)
        if old.kind not in (CertificateKind.NODE, CertificateKind.HUB):
            raise PkiError(
                f"certificate {old.serial} is a {old.kind.value} CA certificate; only node and hub "
                "certificates are renewed",
                reason="RENEW_UNSUPPORTED",
                field="cert",
                metadata={"serial": old.serial, "kind": old.kind.value},
            )
        _check_renewable(old, now)
        if old.kind is CertificateKind.NODE:
            assert old.node_uri is not None
            expected = NodeIdentity.parse_uri(old.node_uri)
            # The names certified with the identity carry over; changing them takes a new issue.
            dns_names, ip_addresses = _server_names_of(cert)
            if csr is None:
                public_key = _p256_public_key(cert)
            else:
                identity, public_key = check_node_csr(csr)
                if identity != expected:
                    raise PkiError(
                        f"the CSR names {identity.uri}, but certificate {old.serial} belongs to {expected.uri}",
                        reason="IDENTITY_MISMATCH",
                        field="csr.san_uri",
                        metadata={"uri": identity.uri, "expected_uri": expected.uri, "serial": old.serial},
                    )
            issuer = self._issuer(passphrase, now)
            new = issuer.issue_node_certificate(
                expected,
                public_key,
                dns_names=dns_names,
                ip_addresses=ip_addresses,
                valid_days=valid_days,
                now=now,
            )
        else:
            dns_names, ip_addresses = _server_names_of(cert)
            public_key = _p256_public_key(cert) if csr is None else _hub_csr_key(csr, dns_names, ip_addresses, old)
            common_name = _common_name(cert) or DEFAULT_HUB_NAME
            issuer = self._issuer(passphrase, now)
            new = issuer.issue_server_certificate(
                public_key,
                dns_names=dns_names,
                ip_addresses=ip_addresses,
                common_name=common_name,
                valid_days=valid_days,
                now=now,
            )
        return self._register(new, issuer, now=now, replaces=old.serial)

    def _register(
        self, cert: x509.Certificate, issuer: CertificateAuthority, *, now: dt.datetime, replaces: str | None = None
    ) -> IssuedCertificate:
        record = self.registry.record_issued(
            cert, issuer_serial=format_serial(issuer.cert.serial_number), issued_at=now, replaces=replaces
        )
        also_valid: tuple[CertificateRecord, ...] = ()
        if record.node_uri is not None:
            also_valid = tuple(
                other
                for other in self.registry.find(node_uri=record.node_uri, status=CertificateStatus.ISSUED)
                if other.serial not in (record.serial, replaces) and other.state(now) == "valid"
            )
        return IssuedCertificate(certificate=cert, chain=(cert, issuer.cert), record=record, also_valid=also_valid)

    # ----------------------------------------------------------------- looking up

    def find_record(self, which: int | x509.Certificate) -> CertificateRecord:
        """The registry record of a serial number, or of a certificate (which must be the one registered)."""
        serial = format_serial(which if isinstance(which, int) else which.serial_number)
        record = self.registry.get(serial)
        if isinstance(which, x509.Certificate) and record.fingerprint_sha256 != fingerprint_sha256(which):
            raise PkiError(
                f"the certificate given has serial {serial}, but it is not the certificate this CA "
                "registered under that serial",
                reason="CERT_MISMATCH",
                field="cert",
                metadata={"serial": serial, "fingerprint_sha256": fingerprint_sha256(which)},
            )
        return record

    def certificates(
        self,
        *,
        province: str | None = None,
        status: str | None = None,
        kinds: Sequence[CertificateKind] = (),
        now: dt.datetime | None = None,
    ) -> list[CertificateRecord]:
        """Registered certificates, soonest expiry first.

        ``status`` is a stored status (``issued``, ``revoked``) or a state at ``now``
        (``valid``, ``expired``).
        """
        now = _now(now)
        if status in (None, CertificateStatus.ISSUED.value, CertificateStatus.REVOKED.value):
            stored = CertificateStatus(status) if status is not None else None
            return self.registry.find(province=province, kinds=kinds, status=stored)
        if status not in ("valid", "expired"):
            raise PkiError(
                f"unknown status {status!r}: use issued, revoked, valid or expired",
                reason="STATUS_INVALID",
                field="status",
                metadata={"status": status},
            )
        records = self.registry.find(province=province, kinds=kinds)
        return [r for r in records if r.state(now) == status]

    def expiring(self, within: dt.timedelta, *, now: dt.datetime | None = None) -> list[CertificateRecord]:
        """Valid, unrevoked certificates expiring within ``within`` that nobody has renewed yet."""
        now = _now(now)
        records = self.registry.find(status=CertificateStatus.ISSUED, not_after_until=now + within)
        return [r for r in records if r.state(now) == "valid" and r.replaced_by is None]

    # ----------------------------------------------------------------- revoking

    def revoke(
        self,
        which: int | x509.Certificate,
        *,
        reason: RevocationReason,
        now: dt.datetime | None = None,
        root_passphrase: Passphrase = None,
        root_key_path: StrPath | None = None,
        root_crl_next_update: dt.timedelta = dt.timedelta(days=365),
    ) -> CertificateRecord:
        """Revoke a node or hub certificate in the registry (publish with :meth:`publish_crl`).

        Revoking the intermediate is a root operation: it needs the root key and its
        passphrase, and publishes the root's CRL (``root-crl.pem``) at once. The root itself
        is not revocable: to retire it, take it out of every trust bundle.
        """
        now = _now(now)
        record = self.find_record(which)
        if record.kind is CertificateKind.ROOT:
            raise PkiError(
                "a root certificate cannot be revoked: remove it from the trust bundles instead",
                reason="ROOT_NOT_REVOCABLE",
                field="serial",
                metadata={"serial": record.serial},
            )
        if record.kind is not CertificateKind.INTERMEDIATE:
            return self.registry.revoke(record.serial, reason=reason, at=now)
        # Prove root authority (key and passphrase) before changing anything.
        root = self.load_root(root_passphrase, key_path=root_key_path)
        revoked = self.registry.revoke(record.serial, reason=reason, at=now)
        self._publish(root, self.root_crl_path, next_update=root_crl_next_update, now=now)
        return revoked

    def publish_crl(
        self,
        *,
        passphrase: Passphrase = None,
        out: StrPath | None = None,
        next_update: dt.timedelta = dt.timedelta(hours=24),
        now: dt.datetime | None = None,
    ) -> PublishedCrl:
        """Sign the intermediate's CRL (every certificate it revoked) with the next CRL number; write it atomically."""
        now = _now(now)
        self.issuer_record()
        issuer = self._load_intermediate(passphrase)
        return self._publish(issuer, Path(out) if out is not None else self.crl_path, next_update=next_update, now=now)

    def publish_root_crl(
        self,
        *,
        root_passphrase: Passphrase = None,
        root_key_path: StrPath | None = None,
        out: StrPath | None = None,
        next_update: dt.timedelta = dt.timedelta(days=365),
        now: dt.datetime | None = None,
    ) -> PublishedCrl:
        """Sign the root's CRL (revoked intermediates) again, e.g. before its next update falls due."""
        now = _now(now)
        root = self.load_root(root_passphrase, key_path=root_key_path)
        return self._publish(
            root, Path(out) if out is not None else self.root_crl_path, next_update=next_update, now=now
        )

    def _publish(
        self, issuer: CertificateAuthority, out: Path, *, next_update: dt.timedelta, now: dt.datetime
    ) -> PublishedCrl:
        # Under the lock, number, snapshot, signature and file replacement happen in order:
        # two operators publishing at once cannot leave an older CRL on disk after a newer one.
        with self._exclusive():
            number, revoked = self.registry.next_crl(format_serial(issuer.cert.serial_number), at=now)
            entries = [
                RevokedEntry(
                    serial_number=r.serial_number,
                    revoked_at=r.revoked_at or now,
                    reason=r.reason.flag if r.reason is not None else None,
                )
                for r in revoked
            ]
            crl = issuer.sign_crl(entries, crl_number=number, next_update=next_update, now=now)
            write_public_pem(out, crl.public_bytes(_PEM), field="out", overwrite=True)
        return PublishedCrl(crl=crl, number=number, path=out, revoked=tuple(revoked))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if os.name != "posix":  # pragma: no cover - the ministry CA runs on POSIX hosts
            yield
            return
        import fcntl

        fd = os.open(self.path / LOCK_FILE, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _passphrase_field(field: str) -> Iterator[None]:
    """Name which CA's passphrase was missing or wrong: the file layer only knows "passphrase"."""
    try:
        yield
    except PkiError as exc:
        if not exc.reason.startswith("PASSPHRASE_"):
            raise
        raise PkiError(exc.message, reason=exc.reason, field=field, metadata=exc.metadata) from exc


def _check_init_target(directory: Path) -> None:
    if not directory.parent.is_dir():
        raise PkiError(
            f"cannot create {directory}: directory {directory.parent} does not exist",
            reason="FILE_MISSING",
            field="directory",
            metadata={"path": str(directory.parent)},
        )
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise PkiError(
            f"{directory} already exists and is not a directory; refusing to overwrite it",
            reason="FILE_EXISTS",
            field="directory",
            metadata={"path": str(directory)},
        )
    if (directory / REGISTRY_FILE).exists():
        raise PkiError(
            f"{directory} already holds a CA ({REGISTRY_FILE}); refusing to overwrite it",
            reason="FILE_EXISTS",
            field="directory",
            metadata={"path": str(directory / REGISTRY_FILE)},
        )
    if directory.is_dir():
        first = next(iter(sorted(directory.iterdir())), None)
        if first is not None:
            raise PkiError(
                f"{directory} is not empty (it holds {first.name}); refusing to overwrite a CA directory",
                reason="FILE_EXISTS",
                field="directory",
                metadata={"path": str(first)},
            )


def _check_renewable(record: CertificateRecord, now: dt.datetime) -> None:
    meta = {"serial": record.serial, "not_after": record.not_after.isoformat()}
    if record.replaced_by is not None:
        raise PkiError(
            f"certificate {record.serial} was already renewed as {record.replaced_by}; renew that one",
            reason="CERT_ALREADY_RENEWED",
            field="cert",
            metadata={**meta, "replaced_by": record.replaced_by},
        )
    state = record.state(now)
    if state == "revoked":
        raise PkiError(
            f"certificate {record.serial} is revoked; a revoked certificate is never renewed "
            "(issue a new one from a fresh CSR)",
            reason="CERT_REVOKED",
            field="cert",
            metadata=meta,
        )
    if state != "valid":
        raise PkiError(
            f"certificate {record.serial} is {state} (valid {record.not_before.isoformat()} to "
            f"{record.not_after.isoformat()}); only a currently valid certificate is renewed "
            "(issue a new one from a fresh CSR)",
            reason="CERT_EXPIRED" if state == "expired" else "CERT_NOT_YET_VALID",
            field="cert",
            metadata=meta,
        )


def _p256_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise PkiError(
            "the certificate's key is not ECDSA P-256",
            reason="KEY_TYPE_UNSUPPORTED",
            field="cert",
        )
    return key


def _server_names_of(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def _hub_csr_key(
    csr: x509.CertificateSigningRequest, dns_names: list[str], ip_addresses: list[str], old: CertificateRecord
) -> ec.EllipticCurvePublicKey:
    """The key of a hub renewal CSR, which must ask for exactly the names of the old certificate."""
    key = public_key_of(csr, source="the CSR", field="csr.public_key")
    if not csr_signature_holds(csr):
        raise PkiError(
            "the CSR's signature does not verify with its own public key",
            reason="CSR_SIGNATURE_INVALID",
            field="csr.signature",
        )
    san = extension_value(
        csr, x509.SubjectAlternativeName, source="the CSR", field="csr.extensions", reason="CSR_INVALID"
    )
    asked: tuple[list[str], list[str]] = ([], [])
    if san is not None:
        asked = (
            sorted(san.get_values_for_type(x509.DNSName)),
            sorted(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        )
    if asked != (sorted(dns_names), sorted(ip_addresses)):
        raise PkiError(
            f"the CSR asks for names {', '.join(asked[0] + asked[1]) or 'none'}, but certificate {old.serial} "
            f"is for {', '.join(dns_names + ip_addresses)}; issue a new hub certificate to change names",
            reason="IDENTITY_MISMATCH",
            field="csr.san",
            metadata={"serial": old.serial},
        )
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise PkiError(
            "the CSR's key is not ECDSA P-256",
            reason="KEY_TYPE_UNSUPPORTED",
            field="csr.public_key",
        )
    return key
