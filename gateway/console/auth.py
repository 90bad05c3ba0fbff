"""Who is looking at the console: the client certificate of the TLS connection, and its scopes.

Operators and auditors log in with the same PKI as the provinces' nodes: a certificate of the
ministry CA carrying a ``hutong://`` SAN URI, presented to the console's TLS port (verified by
the handshake against the CA). The hub's access policy gives that identity its scopes; the
console's roles are two of them: ``admin`` (operators) and ``audit:read`` (auditors). A revoked
certificate (the CRL the hub enforces) is no login.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509

from gateway.errors import HutongError
from pki import identity_from_certificate

if TYPE_CHECKING:
    from gateway.hub.server import HubServer

__all__ = ["ADMIN", "AUDIT_READ", "Viewer", "viewer_of"]

ADMIN = "admin"
AUDIT_READ = "audit:read"


@dataclass(frozen=True)
class Viewer:
    """A logged-in operator or auditor."""

    uri: str
    scopes: frozenset[str]

    def may(self, *roles: str) -> bool:
        """Whether the viewer holds one of ``roles``."""
        return any(role in self.scopes for role in roles)


def viewer_of(request: web.Request, hub: HubServer) -> Viewer | None:
    """The viewer of ``request``, or None without a valid client certificate."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    if hub.revocations is not None and hub.revocations.is_revoked(cert.serial_number):
        return None
    try:
        identity = identity_from_certificate(cert)
    except HutongError:
        return None
    uri = identity.uri
    scopes = hub.policy.for_node(uri).scopes if hub.policy is not None else frozenset()
    return Viewer(uri, frozenset(scopes))
