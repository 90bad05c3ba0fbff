"""PEM files on disk, the TLS material gRPC consumes, and the throwaway demo PKI.

Every file-system and PEM-parsing failure is translated into a :class:`PkiError`
here, so callers see one set of reasons:

=========================  ====================================================
FILE_EXISTS                refusing to overwrite (keys never, certs unless asked)
FILE_MISSING               the file (or the directory to write into) is absent
FILE_ACCESS_DENIED         the OS refused to read or write it
FILE_IO_FAILED             any other OS error
KEY_PERMISSIONS_TOO_OPEN   a private key is accessible by group or others
PEM_INVALID                not a PEM certificate / private key
PASSPHRASE_REQUIRED        the key is encrypted and no passphrase was given
PASSPHRASE_UNEXPECTED      a passphrase was given for an unencrypted key
PASSPHRASE_WRONG           the passphrase does not decrypt the key
PASSPHRASE_EMPTY           an empty passphrase was given to encrypt a key
KEY_TYPE_UNSUPPORTED       the key is not ECDSA P-256
KEY_CERT_MISMATCH          the key does not belong to the certificate
NODE_IDENTITY_DUPLICATE    the same node was listed twice for the demo PKI
=========================  ====================================================
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import PkiError
from pki._identity import NodeIdentity
from pki._x509 import load_certificates

if TYPE_CHECKING:
    from pki._ca import CertificateAuthority

__all__ = [
    "DemoPki",
    "NodeCredentials",
    "TlsMaterial",
    "load_certificate",
    "load_private_key",
    "write_demo_pki",
    "write_node_credentials",
    "write_pem_certificate",
    "write_pem_private_key",
]

StrPath = str | os.PathLike[str]

KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644
# Private directories hold keys; 0700 keeps even their names from other users.
_KEY_DIR_MODE = 0o700

#: File names of the demo PKI inside its directory.
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
HUB_CERT_FILE = "hub.pem"
HUB_KEY_FILE = "hub.key"
NODES_DIR = "nodes"


# --------------------------------------------------------------------------- errors


def _os_error(exc: OSError, path: Path, *, field: str, action: str) -> PkiError:
    """Translate an OS error on ``path`` into the matching :class:`PkiError`."""
    meta = {"path": str(path)}
    if isinstance(exc, FileExistsError):
        return PkiError(
            f"{path} already exists; refusing to overwrite it",
            reason="FILE_EXISTS",
            field=field,
            metadata=meta,
        )
    if isinstance(exc, FileNotFoundError):
        missing = f"{path} does not exist" if action == "read" else f"directory {path.parent} does not exist"
        return PkiError(
            f"cannot {action} {path}: {missing}",
            reason="FILE_MISSING",
            field=field,
            metadata=meta,
        )
    if isinstance(exc, PermissionError):
        return PkiError(
            f"cannot {action} {path}: permission denied",
            reason="FILE_ACCESS_DENIED",
            field=field,
            metadata=meta,
        )
    return PkiError(
        f"cannot {action} {path}: {exc.strerror or exc}",
        reason="FILE_IO_FAILED",
        field=field,
        metadata=meta,
    )


def _check_p256_private_key(key: object, path: Path, *, field: str) -> ec.EllipticCurvePrivateKey:
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise PkiError(
            f"{path} holds a {type(key).__name__} key; Hutong uses ECDSA P-256 only",
            reason="KEY_TYPE_UNSUPPORTED",
            field=field,
            metadata={"path": str(path)},
        )
    return key


def check_key_matches_certificate(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, *, key_path: Path, cert_path: Path
) -> None:
    """Refuse a key that does not belong to the certificate (gRPC's own error is obscure)."""
    if cert.public_key() != key.public_key():
        raise PkiError(
            f"private key {key_path} does not belong to certificate {cert_path}",
            reason="KEY_CERT_MISMATCH",
            field="key_path",
            metadata={"key_path": str(key_path), "cert_path": str(cert_path)},
        )


# --------------------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fill(fd: int, data: bytes, mode: int) -> None:
    """Fix the mode, write everything, flush to disk, close."""
    try:
        # The umask may have narrowed the mode; certificates must stay world-readable.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_exclusive(path: Path, data: bytes, mode: int, *, field: str) -> None:
    """Create ``path`` with ``mode`` from the first byte on, failing if it exists.

    O_EXCL makes creation atomic and refuses to follow or replace anything already
    there (a symlink included); the mode is set at creation so a key is never
    readable by others, not even for a moment. A half-written file is removed.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        raise _os_error(exc, path, field=field, action="write") from exc
    try:
        _fill(fd, data, mode)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _os_error(exc, path, field=field, action="write") from exc
        raise


def _replace_atomically(path: Path, data: bytes, mode: int, *, field: str) -> None:
    """Write a sibling temporary file and rename it over ``path`` in one step."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _os_error(exc, path, field=field, action="write") from exc
    tmp = Path(tmp_name)
    try:
        _fill(fd, data, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _os_error(exc, path, field=field, action="write") from exc
        raise


def write_pem_private_key(path: StrPath, key: ec.EllipticCurvePrivateKey, *, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600, encrypted if a passphrase is given; never overwrite."""
    path = Path(path)
    if passphrase is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    elif not passphrase:
        raise PkiError(
            "an empty passphrase would leave the key unprotected; give a real one or None",
            reason="PASSPHRASE_EMPTY",
            field="passphrase",
        )
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_exclusive(path, pem, KEY_FILE_MODE, field="key_path")


def write_public_pem(path: StrPath, pem: bytes, *, field: str, overwrite: bool = False) -> None:
    """Write public PEM data (a chain, a CSR, a CRL) with mode 0644.

    Without ``overwrite`` the file must not exist yet; with it, the new content replaces the
    old in one rename, so a reader (a hub reloading its CRL) sees the old file or the new
    one, never half of either.
    """
    path = Path(path)
    if overwrite:
        _replace_atomically(path, pem, CERT_FILE_MODE, field=field)
    else:
        _write_exclusive(path, pem, CERT_FILE_MODE, field=field)


def write_secret_file(path: StrPath, data: bytes, *, field: str, overwrite: bool = False) -> None:
    """Write secret data (a key file) with mode 0600 from the first byte, flushed to disk.

    Without ``overwrite`` the file must not exist yet; with it, the new content replaces the
    old in one rename.
    """
    path = Path(path)
    if overwrite:
        _replace_atomically(path, data, KEY_FILE_MODE, field=field)
    else:
        _write_exclusive(path, data, KEY_FILE_MODE, field=field)


def ensure_absent(path: StrPath, *, field: str) -> None:
    """Refuse early, before any work is done, when ``path`` exists or could not be created.

    Issuing checks its output files with this first, so a certificate is never signed and
    registered only to find that it cannot be written.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise _os_error(FileExistsError(), path, field=field, action="write")
    if not path.parent.is_dir():
        raise _os_error(FileNotFoundError(), path, field=field, action="write")


def key_file_is_encrypted(path: StrPath, *, field: str = "key_path") -> bool:
    """Whether a PEM private key file is encrypted (PKCS#8 ``ENCRYPTED PRIVATE KEY``)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in read_bytes(Path(path), field=field)


def pem_chain(certs: Sequence[x509.Certificate]) -> bytes:
    """Certificates as one PEM bundle, in the order given (leaf first for a chain)."""
    return _pem(certs)


def write_pem_certificate(path: StrPath, cert: x509.Certificate, *, overwrite: bool = False) -> None:
    """Write ``cert`` as PEM with mode 0644; refuse to overwrite unless ``overwrite`` is true."""
    path = Path(path)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if overwrite:
        _replace_atomically(path, pem, CERT_FILE_MODE, field="cert_path")
    else:
        _write_exclusive(path, pem, CERT_FILE_MODE, field="cert_path")


# --------------------------------------------------------------------------- reading


def read_bytes(path: StrPath, *, field: str) -> bytes:
    """A file's bytes; a missing, unreadable or directory path is a PkiError naming ``field``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except IsADirectoryError as exc:
        raise PkiError(
            f"{path} is a directory, not a file",
            reason="FILE_MISSING",
            field=field,
            metadata={"path": str(path)},
        ) from exc
    except OSError as exc:
        raise _os_error(exc, path, field=field, action="read") from exc


def read_certificates(path: StrPath, *, field: str = "path") -> list[x509.Certificate]:
    """Every certificate in a PEM file (a chain or a CA bundle), in file order."""
    path = Path(path)
    data = read_bytes(path, field=field)
    return load_certificates(data, source=str(path), field=field, metadata={"path": str(path)})


def read_certificate(path: StrPath, *, field: str = "path") -> x509.Certificate:
    """The first certificate of a PEM file, errors naming ``field``."""
    return read_certificates(path, field=field)[0]


def read_private_key(
    path: StrPath, passphrase: bytes | None = None, *, field: str = "path"
) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a PEM file, errors naming ``field``."""
    path = Path(path)
    meta = {"path": str(path)}
    try:
        with path.open("rb") as handle:
            # fstat on the open file, so the mode checked is the mode of the bytes read.
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise PkiError(f"{path} is not a regular file", reason="FILE_MISSING", field=field, metadata=meta)
            if os.name == "posix" and mode & 0o077:
                raise PkiError(
                    f"private key {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}` and retry",
                    reason="KEY_PERMISSIONS_TOO_OPEN",
                    field=field,
                    metadata={**meta, "mode": f"{stat.S_IMODE(mode):04o}"},
                )
            data = handle.read()
    except OSError as exc:
        raise _os_error(exc, path, field=field, action="read") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        # cryptography signals a passphrase/encryption mismatch with TypeError.
        if passphrase is None:
            raise PkiError(
                f"private key {path} is encrypted; a passphrase is required",
                reason="PASSPHRASE_REQUIRED",
                field="passphrase",
                metadata=meta,
            ) from exc
        raise PkiError(
            f"private key {path} is not encrypted, but a passphrase was given",
            reason="PASSPHRASE_UNEXPECTED",
            field="passphrase",
            metadata=meta,
        ) from exc
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise PkiError(
                f"the passphrase does not decrypt private key {path}",
                reason="PASSPHRASE_WRONG",
                field="passphrase",
                metadata=meta,
            ) from exc
        raise PkiError(
            f"{path} holds no valid PEM private key",
            reason="PEM_INVALID",
            field=field,
            metadata=meta,
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise PkiError(
            f"{path} holds a private key Hutong cannot use: {exc}",
            reason="KEY_TYPE_UNSUPPORTED",
            field=field,
            metadata=meta,
        ) from exc
    return _check_p256_private_key(key, path, field=field)


def load_certificate(path: StrPath) -> x509.Certificate:
    """Load the (first) certificate from a PEM file."""
    return read_certificate(path, field="path")


def load_private_key(path: StrPath, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key from a PEM file, refusing files readable by group or others."""
    return read_private_key(path, passphrase, field="path")


# --------------------------------------------------------------------------- TLS material


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _unencrypted_pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes in the shape gRPC wants.

    Server: ``grpc.ssl_server_credentials([(m.private_key_pem, m.cert_chain_pem)],
    root_certificates=m.ca_pem, require_client_auth=True)``. Client:
    ``grpc.ssl_channel_credentials(m.ca_pem, m.private_key_pem, m.cert_chain_pem)``.
    """

    #: Leaf certificate first, then any intermediates, PEM.
    cert_chain_pem: bytes
    #: Unencrypted PKCS#8 PEM (gRPC cannot take a passphrase). Kept out of repr so it never lands in a log.
    private_key_pem: bytes = field(repr=False)
    #: The CA certificate(s) trusted to authenticate the peer, PEM.
    ca_pem: bytes

    @classmethod
    def from_files(
        cls, cert_path: StrPath, key_path: StrPath, ca_path: StrPath, *, passphrase: bytes | None = None
    ) -> TlsMaterial:
        """Read and check a certificate (chain), its private key and the trusted CA(s)."""
        chain = read_certificates(cert_path, field="cert_path")
        key = read_private_key(key_path, passphrase, field="key_path")
        check_key_matches_certificate(key, chain[0], key_path=Path(key_path), cert_path=Path(cert_path))
        cas = read_certificates(ca_path, field="ca_path")
        return cls(cert_chain_pem=_pem(chain), private_key_pem=_unencrypted_pkcs8(key), ca_pem=_pem(cas))

    @classmethod
    def from_objects(
        cls,
        chain: Sequence[x509.Certificate],
        key: ec.EllipticCurvePrivateKey,
        cas: Sequence[x509.Certificate],
    ) -> TlsMaterial:
        """Build from objects already in memory (leaf first in ``chain``)."""
        return cls(cert_chain_pem=_pem(chain), private_key_pem=_unencrypted_pkcs8(key), ca_pem=_pem(cas))


# --------------------------------------------------------------------------- node credentials & demo


def node_file_stem(identity: NodeIdentity) -> str:
    """File name stem of a node's credentials: ``<province_code>-<node_name>``."""
    return f"{identity.province_code}-{identity.node_name}"


def make_private_dir(directory: StrPath) -> None:
    """Create ``directory`` (and parents) with mode 0700 if missing."""
    _make_private_dir(Path(directory))


def _make_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=_KEY_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, directory, field="directory", action="write") from exc


@dataclass(frozen=True)
class NodeCredentials:
    """A node's certificate and key as written to disk, with the matching TLS material."""

    identity: NodeIdentity
    cert_path: Path
    key_path: Path
    tls: TlsMaterial


def write_node_credentials(
    ca: CertificateAuthority,
    directory: StrPath,
    identity: NodeIdentity,
    *,
    valid_days: int = 90,
    passphrase: bytes | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> NodeCredentials:
    """Generate a key, issue a node certificate, write ``<province>-<name>.pem/.key`` in ``directory``.

    ``dns_names`` and ``ip_addresses`` are certified beside the identity URI, for a node that
    serves the hub's detail requests (``hutong node serve``).
    """
    # Imported here: pki._ca builds on this module's file primitives, so a
    # module-level import would be circular.
    from pki._ca import generate_key

    directory = Path(directory)
    _make_private_dir(directory)
    stem = node_file_stem(identity)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    # Fail before generating anything if either file is already there.
    for existing in (cert_path, key_path):
        if existing.exists() or existing.is_symlink():
            raise _os_error(FileExistsError(), existing, field="directory", action="write")
    key = generate_key()
    cert = ca.issue_node_certificate(
        identity, key.public_key(), dns_names=dns_names, ip_addresses=ip_addresses, valid_days=valid_days
    )
    write_pem_private_key(key_path, key, passphrase=passphrase)
    write_pem_certificate(cert_path, cert)
    return NodeCredentials(
        identity=identity,
        cert_path=cert_path,
        key_path=key_path,
        tls=TlsMaterial.from_objects([cert], key, [ca.cert]),
    )


@dataclass(frozen=True)
class DemoPki:
    """A throwaway PKI on disk: one CA, the hub, and one credential pair per node."""

    directory: Path
    #: The demo CA itself, so tests can issue further (or rogue-looking) certificates.
    ca: CertificateAuthority = field(repr=False)
    ca_cert_path: Path
    ca_key_path: Path
    hub_cert_path: Path
    hub_key_path: Path
    hub_tls: TlsMaterial
    #: Per node, keyed by node URI (``hutong://province/<code>/node/<name>``).
    nodes: dict[str, NodeCredentials]
    #: The registry of every certificate above (``registry.sqlite3``, as in a CA directory), so the
    #: console's Certificates page and revocations work on the demo as on a real CA.
    registry_path: Path | None = None

    @property
    def node_tls(self) -> dict[str, TlsMaterial]:
        """TLS material per node, keyed by node URI."""
        return {uri: creds.tls for uri, creds in self.nodes.items()}


def write_demo_pki(
    directory: StrPath,
    *,
    provinces: Sequence[tuple[str, str]],
    hub_dns: Sequence[str] = ("localhost",),
    hub_ips: Sequence[str] = ("127.0.0.1", "::1"),
    node_ips: Sequence[str] = ("127.0.0.1",),
) -> DemoPki:
    """Create a throwaway CA, a hub certificate and one certificate per ``(province_code, node_name)``.

    Layout under ``directory``: ``ca.pem ca.key hub.pem hub.key registry.sqlite3 nodes/<province>-<name>.pem/.key``.
    Keys are unencrypted (mode 0600); existing files are never overwritten. Node certificates
    also name ``node_ips``, so that a node can serve the hub's detail requests on loopback.
    """
    from pki._authority import REGISTRY_FILE  # see write_node_credentials
    from pki._ca import CertificateAuthority, generate_key
    from pki._registry import Registry, format_serial

    directory = Path(directory)
    # Validate every identity before writing anything.
    identities = [NodeIdentity(province_code=code, node_name=name) for code, name in provinces]
    seen: set[str] = set()
    for identity in identities:
        if identity.uri in seen:
            raise PkiError(
                f"node {identity.uri} is listed twice",
                reason="NODE_IDENTITY_DUPLICATE",
                field="provinces",
                metadata={"uri": identity.uri},
            )
        seen.add(identity.uri)

    _make_private_dir(directory)
    ca = CertificateAuthority.create("Hutong Demo CA (throwaway)")
    ca_cert_path, ca_key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    ca.save(ca_cert_path, ca_key_path)

    hub_key = generate_key()
    hub_cert = ca.issue_server_certificate(hub_key.public_key(), dns_names=hub_dns, ip_addresses=hub_ips)
    hub_cert_path, hub_key_path = directory / HUB_CERT_FILE, directory / HUB_KEY_FILE
    write_pem_private_key(hub_key_path, hub_key)
    write_pem_certificate(hub_cert_path, hub_cert)

    nodes_dir = directory / NODES_DIR
    nodes = {
        identity.uri: write_node_credentials(ca, nodes_dir, identity, ip_addresses=node_ips) for identity in identities
    }
    registry = Registry.create(directory / REGISTRY_FILE)
    now = dt.datetime.now(dt.UTC)
    node_certs = [x509.load_pem_x509_certificate(creds.cert_path.read_bytes()) for creds in nodes.values()]
    for cert in (ca.cert, hub_cert, *node_certs):
        registry.record_issued(cert, issuer_serial=format_serial(ca.cert.serial_number), issued_at=now)
    return DemoPki(
        directory=directory,
        ca=ca,
        ca_cert_path=ca_cert_path,
        ca_key_path=ca_key_path,
        hub_cert_path=hub_cert_path,
        hub_key_path=hub_key_path,
        hub_tls=TlsMaterial.from_objects([hub_cert], hub_key, [ca.cert]),
        nodes=nodes,
        registry_path=registry.path,
    )
