"""Who is looking at the console, and what they may see.

Two logins, one set of roles:

* **Certificate.** Operators and auditors present a ministry CA certificate carrying a
  ``hutong://`` SAN URI to the console's TLS port (verified by the handshake). The hub's access
  policy gives that identity its scopes. A revoked certificate (the CRL the hub enforces) is no
  login.
* **Console token.** ``hutong hub console-token`` signs a JWT with the hub's token key, audience
  ``hutong-console`` (the gRPC API refuses it, and the console refuses API tokens), carrying the
  person's name as subject and their roles as scopes. Pasted into ``/login``, it becomes an
  ``HttpOnly``, ``SameSite=Strict`` session cookie that lives as long as the token; scripts may send
  it as ``Authorization: Bearer``. Only the newest token key verifies it, so rotating the keys
  (``hutong hub rotate-token-key``, then a restart) ends every session.

Roles are scopes: ``admin`` (operators), ``audit:read`` (auditors), and ``query:detail``, which
lets a viewer reveal full ID numbers and names on the person page (masked for everyone else).
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

__all__ = ["ADMIN", "AUDIT_READ", "QUERY_DETAIL", "SESSION_COOKIE", "Viewer", "token_viewer", "viewer_of"]

ADMIN = "admin"
AUDIT_READ = "audit:read"
QUERY_DETAIL = "query:detail"
#: The session cookie holding a console token.
SESSION_COOKIE = "hutong_console"


@dataclass(frozen=True)
class Viewer:
    """A logged-in operator or auditor."""

    #: Who: the certificate's ``hutong://`` URI, or the console token's subject.
    uri: str
    scopes: frozenset[str]
    #: ``certificate`` or ``token``.
    via: str = "certificate"
    #: The province and node name of a certificate's identity ("" for a console token).
    province: str = ""
    node: str = ""

    def may(self, *roles: str) -> bool:
        """Whether the viewer holds one of ``roles``."""
        return any(role in self.scopes for role in roles)


def viewer_of(request: web.Request, hub: HubServer) -> Viewer | None:
    """The viewer of ``request``: its client certificate, else its console token; None without either."""
    viewer = _certificate_viewer(request, hub)
    if viewer is not None:
        return viewer
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(SESSION_COOKIE, "")
    return token_viewer(token, hub) if token else None


def token_viewer(token: str, hub: HubServer) -> Viewer | None:
    """The viewer a console token names, or None when it is not a valid, unexpired console token."""
    if hub.tokens is None:
        return None
    try:
        claims = hub.tokens.verify_console(token)
    except HutongError:
        return None
    return Viewer(claims.subject, claims.scopes, via="token")


def _certificate_viewer(request: web.Request, hub: HubServer) -> Viewer | None:
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
    return Viewer(uri, frozenset(scopes), province=identity.province_code, node=identity.node_name)
