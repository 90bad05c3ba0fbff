"""Certificate revocation on every call: the CA's CRL, reloaded when the file changes.

TLS checks a client certificate once, at the handshake; a node's connection may then live for
days. So the hub checks every call again: the certificate's serial against the current CRL and
its validity period against the clock. The CRL file is polled every few seconds and swapped in
whole once its signature verifies against one of the CA certificates the hub trusts, so a
revoked node is cut off within seconds of the operator publishing a CRL, with no restart. A CRL
that fails to load or verify is logged and ignored; the previous one stays in force.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["RevocationList"]

log = structlog.get_logger("hutong.hub.revocation")


class RevocationList:
    """The set of revoked serials from a CRL file, kept current by :meth:`watch`."""

    def __init__(
        self, crl_path: Path | None, issuers: Sequence[x509.Certificate], *, poll_seconds: float = 2.0
    ) -> None:
        self.path = crl_path
        self._issuers = list(issuers)
        self._poll = poll_seconds
        self._revoked: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self.crl_number: int | None = None
        self.next_update: dt.datetime | None = None

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial is revoked by the CRL in force."""
        return serial in self._revoked

    @property
    def revoked_count(self) -> int:
        """How many serials the CRL in force lists."""
        return len(self._revoked)

    def reload(self) -> bool:
        """Load the CRL file if it changed; returns True when a new CRL took effect."""
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                log.error("crl_missing", path=str(self.path), message="keeping the CRL in force")
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        data = self.path.read_bytes()
        try:
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        except ValueError as exc:
            log.error("crl_unreadable", path=str(self.path), error=str(exc))
            return False
        if not any(self._signed_by(crl, issuer) for issuer in self._issuers):
            log.error("crl_signature_invalid", path=str(self.path), issuer=crl.issuer.rfc4514_string())
            return False
        number = _crl_number(crl)
        if self.crl_number is not None and number is not None and number < self.crl_number:
            log.error("crl_older_than_in_force", path=str(self.path), number=number, in_force=self.crl_number)
            return False
        self._revoked = frozenset(entry.serial_number for entry in crl)
        self.crl_number = number
        self.next_update = crl.next_update_utc
        log.info("crl_loaded", path=str(self.path), revoked=len(self._revoked), number=number)
        return True

    async def watch(self) -> None:
        """Poll the CRL file for changes until cancelled."""
        while True:
            try:
                self.reload()
                if self.next_update is not None and self.next_update < dt.datetime.now(dt.UTC):
                    log.warning("crl_stale", next_update=self.next_update.isoformat())
            except OSError as exc:
                log.error("crl_reload_failed", error=str(exc))
            await asyncio.sleep(self._poll)

    @staticmethod
    def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        if crl.issuer != issuer.subject:
            return False
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            return False
        return crl.is_signature_valid(key)


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None
