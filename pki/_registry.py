"""The registry of every certificate the ministry CA issued: one SQLite file in the CA directory.

Operators and auditors read it to see who holds what; the CRL is built from it. Every
change (issue, renew, revoke, a new CRL number) is one ``BEGIN IMMEDIATE`` transaction,
so two operators working at once are serialised and a crash leaves either the whole
change or none of it. Rows are never deleted: a revoked or expired certificate stays on
record with its PEM, and a renewal links the old row to the new one (``replaced_by``).

Times are stored as ISO 8601 UTC strings of one fixed shape, so they sort as text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.errors import PkiError
from pki._files import KEY_FILE_MODE, StrPath
from pki._identity import hutong_uris, identity_from_certificate

__all__ = [
    "CertificateKind",
    "CertificateRecord",
    "CertificateStatus",
    "Registry",
    "RevocationReason",
    "fingerprint_sha256",
    "format_serial",
    "parse_serial",
]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE certificates (
    serial              TEXT PRIMARY KEY,          -- lowercase hex, no leading zeros
    kind                TEXT NOT NULL CHECK (kind IN ('root', 'intermediate', 'node', 'hub')),
    subject             TEXT NOT NULL,             -- RFC 4514
    node_uri            TEXT,                      -- hutong://province/<code>/node/<name>, nodes only
    hub_names           TEXT,                      -- DNS names and IP addresses, comma-separated, hubs only
    province            TEXT,                      -- GB/T 2260 province code, nodes only
    issuer_serial       TEXT,                      -- the signing CA's serial (a root names itself)
    not_before          TEXT NOT NULL,
    not_after           TEXT NOT NULL,
    issued_at           TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('issued', 'revoked')),
    revoked_at          TEXT,
    reason              TEXT,
    fingerprint_sha256  TEXT NOT NULL UNIQUE,      -- lowercase hex of the DER certificate
    replaces            TEXT REFERENCES certificates (serial),
    replaced_by         TEXT REFERENCES certificates (serial),
    pem                 TEXT NOT NULL,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL AND reason IS NOT NULL))
);
CREATE INDEX certificates_by_province ON certificates (province);
CREATE INDEX certificates_by_not_after ON certificates (not_after);
CREATE INDEX certificates_by_issuer ON certificates (issuer_serial, status);

-- The last CRL number each CA used; CRL numbers only ever grow (RFC 5280 §5.2.3).
CREATE TABLE crl_numbers (
    issuer_serial  TEXT PRIMARY KEY,
    last_number    INTEGER NOT NULL CHECK (last_number >= 1),
    published_at   TEXT NOT NULL
);
"""


class CertificateKind(enum.StrEnum):
    """What a registered certificate is for."""

    ROOT = "root"
    INTERMEDIATE = "intermediate"
    NODE = "node"
    HUB = "hub"


class CertificateStatus(enum.StrEnum):
    """The status stored in the registry; expiry is computed from ``not_after``, not stored."""

    ISSUED = "issued"
    REVOKED = "revoked"


class RevocationReason(enum.StrEnum):
    """RFC 5280 reason codes, spelled as on the command line."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    CERTIFICATE_HOLD = "certificate-hold"

    @property
    def flag(self) -> x509.ReasonFlags:
        """The matching ``cryptography`` reason flag."""
        return x509.ReasonFlags[self.value.replace("-", "_")]


def format_serial(serial: int) -> str:
    """A serial number as the registry and the CLI spell it: lowercase hex."""
    return f"{serial:x}"


def parse_serial(text: str) -> int:
    """A serial number from hex as operators paste it: ``0x`` prefix, colons and case are accepted."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16) if cleaned else -1
    except ValueError:
        value = -1
    if value < 1:
        raise PkiError(
            f"{text!r} is neither a certificate file nor a hexadecimal serial number",
            reason="SERIAL_INVALID",
            field="serial",
            metadata={"serial": text[:80]},
        )
    return value


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what ``openssl x509 -fingerprint -sha256`` shows)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _parse_time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _required_time(row: sqlite3.Row, column: str) -> dt.datetime:
    return dt.datetime.fromisoformat(row[column])


@dataclass(frozen=True)
class CertificateRecord:
    """One registered certificate, as stored."""

    serial: str
    kind: CertificateKind
    subject: str
    node_uri: str | None
    hub_names: tuple[str, ...]
    province: str | None
    issuer_serial: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    issued_at: dt.datetime
    status: CertificateStatus
    revoked_at: dt.datetime | None
    reason: RevocationReason | None
    fingerprint_sha256: str
    replaces: str | None
    replaced_by: str | None
    pem: str = field(repr=False)

    @property
    def serial_number(self) -> int:
        """The serial as an integer."""
        return int(self.serial, 16)

    @property
    def holder(self) -> str:
        """Who holds it, in one string: the node URI, the hub's names, or the CA's subject."""
        if self.node_uri is not None:
            return self.node_uri
        if self.hub_names:
            return ", ".join(self.hub_names)
        return self.subject

    @property
    def revocation(self) -> str:
        """When and why it was revoked, e.g. ``2026-03-01T08:00:00+00:00 (key-compromise)``; empty if it was not."""
        if self.revoked_at is None:
            return ""
        reason = self.reason.value if self.reason is not None else RevocationReason.UNSPECIFIED.value
        return f"{self.revoked_at.isoformat()} ({reason})"

    def state(self, now: dt.datetime) -> str:
        """``revoked``, ``expired``, ``not-yet-valid`` or ``valid`` at ``now``."""
        if self.status is CertificateStatus.REVOKED:
            return "revoked"
        if now > self.not_after:
            return "expired"
        if now < self.not_before:
            return "not-yet-valid"
        return "valid"

    def certificate(self) -> x509.Certificate:
        """The certificate itself, parsed from the stored PEM."""
        return x509.load_pem_x509_certificate(self.pem.encode("ascii"))


_COLUMNS = (
    "serial, kind, subject, node_uri, hub_names, province, issuer_serial, not_before, not_after, issued_at, "
    "status, revoked_at, reason, fingerprint_sha256, replaces, replaced_by, pem"
)


def _record(row: sqlite3.Row) -> CertificateRecord:
    return CertificateRecord(
        serial=row["serial"],
        kind=CertificateKind(row["kind"]),
        subject=row["subject"],
        node_uri=row["node_uri"],
        hub_names=tuple(row["hub_names"].split(",")) if row["hub_names"] else (),
        province=row["province"],
        issuer_serial=row["issuer_serial"],
        not_before=_required_time(row, "not_before"),
        not_after=_required_time(row, "not_after"),
        issued_at=_required_time(row, "issued_at"),
        status=CertificateStatus(row["status"]),
        revoked_at=_parse_time(row["revoked_at"]),
        reason=RevocationReason(row["reason"]) if row["reason"] else None,
        fingerprint_sha256=row["fingerprint_sha256"],
        replaces=row["replaces"],
        replaced_by=row["replaced_by"],
        pem=row["pem"],
    )


def _hub_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _has_hutong_uri(cert: x509.Certificate) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return bool(hutong_uris(san))


class Registry:
    """The SQLite registry file of a CA directory."""

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)

    # ----------------------------------------------------------------- opening

    @classmethod
    def create(cls, path: StrPath) -> Registry:
        """Create a new, empty registry (mode 0600); refuses an existing file."""
        path = Path(path)
        try:
            # Created here with O_EXCL so the mode is 0600 from the first byte; SQLite then
            # gives its journal files the same mode.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), KEY_FILE_MODE)
        except FileExistsError as exc:
            raise PkiError(
                f"{path} already exists; refusing to overwrite it",
                reason="FILE_EXISTS",
                field="registry",
                metadata={"path": str(path)},
            ) from exc
        except OSError as exc:
            raise _registry_error(exc, path) from exc
        os.close(fd)
        registry = cls(path)
        with registry._connect() as conn:
            # One script, one transaction: executescript would commit any transaction opened around it.
            conn.executescript(f"BEGIN;\n{_SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        return registry

    @classmethod
    def open(cls, path: StrPath) -> Registry:
        """Open an existing registry, checking that it is one this version understands."""
        path = Path(path)
        if not path.is_file():
            raise PkiError(
                f"{path} does not exist: this is not a Hutong CA directory (create one with `hutong pki init`)",
                reason="FILE_MISSING",
                field="ca_dir",
                metadata={"path": str(path)},
            )
        registry = cls(path)
        with registry._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise PkiError(
                f"{path} has registry schema version {version}; this Hutong reads version {SCHEMA_VERSION}",
                reason="REGISTRY_VERSION_UNSUPPORTED",
                field="registry",
                metadata={"path": str(path), "version": str(version)},
            )
        return registry

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE) below.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.path) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.Error as exc:
            raise _registry_error(exc, self.path) from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the write lock is taken up front, so read-then-write never races."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ----------------------------------------------------------------- writing

    def record_issued(
        self,
        cert: x509.Certificate,
        *,
        issuer_serial: str | None,
        issued_at: dt.datetime,
        replaces: str | None = None,
    ) -> CertificateRecord:
        """Register a newly signed certificate; with ``replaces``, link the renewed one to it in the same step."""
        kind = _kind_of(cert)
        node_uri = province = None
        if kind is CertificateKind.NODE:
            identity = identity_from_certificate(cert)
            node_uri, province = identity.uri, identity.province_code
        serial = format_serial(cert.serial_number)
        hub_names = ",".join(_hub_names(cert)) if kind is CertificateKind.HUB else None
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO certificates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    serial,
                    kind.value,
                    cert.subject.rfc4514_string(),
                    node_uri,
                    hub_names,
                    province,
                    issuer_serial if issuer_serial is not None else serial,
                    _iso(cert.not_valid_before_utc),
                    _iso(cert.not_valid_after_utc),
                    _iso(issued_at),
                    CertificateStatus.ISSUED.value,
                    None,
                    None,
                    fingerprint_sha256(cert),
                    replaces,
                    None,
                    cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                ),
            )
            if replaces is not None:
                linked = conn.execute(
                    "UPDATE certificates SET replaced_by = ? WHERE serial = ? AND replaced_by IS NULL",
                    (serial, replaces),
                ).rowcount
                if linked != 1:
                    # Another renewal got there first: keep one line of succession, undo this one.
                    raise PkiError(
                        f"certificate {replaces} has already been renewed",
                        reason="CERT_ALREADY_RENEWED",
                        field="cert",
                        metadata={"serial": replaces},
                    )
            row = conn.execute(f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return _record(row)

    def revoke(self, serial: str, *, reason: RevocationReason, at: dt.datetime) -> CertificateRecord:
        """Mark a certificate revoked; refuses an unknown or already revoked serial."""
        with self._transaction() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?", (serial,)).fetchone()
            if row is None:
                raise _unknown(serial)
            record = _record(row)
            if record.status is CertificateStatus.REVOKED:
                raise PkiError(
                    f"certificate {serial} was already revoked on {record.revocation}",
                    reason="CERT_ALREADY_REVOKED",
                    field="serial",
                    metadata={"serial": serial, "revoked": record.revocation},
                )
            conn.execute(
                "UPDATE certificates SET status = ?, revoked_at = ?, reason = ? WHERE serial = ?",
                (CertificateStatus.REVOKED.value, _iso(at), reason.value, serial),
            )
            row = conn.execute(f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return _record(row)

    def next_crl(self, issuer_serial: str, *, at: dt.datetime) -> tuple[int, list[CertificateRecord]]:
        """Take the next CRL number of ``issuer_serial`` and, in the same snapshot, every certificate it revoked."""
        with self._transaction() as conn:
            row = conn.execute("SELECT last_number FROM crl_numbers WHERE issuer_serial = ?", (issuer_serial,))
            last = row.fetchone()
            number = 1 if last is None else int(last["last_number"]) + 1
            conn.execute(
                "INSERT INTO crl_numbers (issuer_serial, last_number, published_at) VALUES (?, ?, ?) "
                "ON CONFLICT (issuer_serial) DO UPDATE SET last_number = excluded.last_number, "
                "published_at = excluded.published_at",
                (issuer_serial, number, _iso(at)),
            )
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM certificates WHERE issuer_serial = ? AND status = ? AND serial != ? "
                "ORDER BY revoked_at, serial",
                (issuer_serial, CertificateStatus.REVOKED.value, issuer_serial),
            ).fetchall()
        return number, [_record(r) for r in rows]

    # ----------------------------------------------------------------- reading

    def get(self, serial: str) -> CertificateRecord:
        """The record of ``serial``; ``CERT_UNKNOWN`` when this CA never issued it."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            raise _unknown(serial)
        return _record(row)

    def last_crl_number(self, issuer_serial: str) -> int | None:
        """The number of the last CRL ``issuer_serial`` published, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT last_number FROM crl_numbers WHERE issuer_serial = ?", (issuer_serial,)
            ).fetchone()
        return None if row is None else int(row["last_number"])

    def find(
        self,
        *,
        province: str | None = None,
        kinds: Sequence[CertificateKind] = (),
        status: CertificateStatus | None = None,
        node_uri: str | None = None,
        not_after_until: dt.datetime | None = None,
    ) -> list[CertificateRecord]:
        """Records matching every filter given, soonest expiry first."""
        clauses: list[str] = []
        params: list[str] = []
        if province is not None:
            clauses.append("province = ?")
            params.append(province)
        if kinds:
            clauses.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(kind.value for kind in kinds)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if node_uri is not None:
            clauses.append("node_uri = ?")
            params.append(node_uri)
        if not_after_until is not None:
            clauses.append("not_after <= ?")
            params.append(_iso(not_after_until))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM certificates {where} ORDER BY not_after, serial", params
            ).fetchall()
        return [_record(r) for r in rows]


def _kind_of(cert: x509.Certificate) -> CertificateKind:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        return CertificateKind.ROOT if cert.issuer == cert.subject else CertificateKind.INTERMEDIATE
    return CertificateKind.NODE if _has_hutong_uri(cert) else CertificateKind.HUB


def _unknown(serial: str) -> PkiError:
    return PkiError(
        f"no certificate with serial {serial} is in the registry: this CA did not issue it",
        reason="CERT_UNKNOWN",
        field="serial",
        metadata={"serial": serial},
    )


def _registry_error(exc: Exception, path: Path) -> PkiError:
    return PkiError(
        f"the registry {path} cannot be used: {exc}",
        reason="REGISTRY_FAILED",
        field="registry",
        metadata={"path": str(path)},
    )
