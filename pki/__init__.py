"""Hutong PKI: node identities, the certificate authority, and PEM/TLS files.

Every certificate is ECDSA P-256 with SHA-256. A node's identity is the single
``hutong://province/<code>/node/<name>`` URI in its certificate's SAN; a hub certificate
carries no such URI, only DNS names and IP addresses. Failures
raise :class:`gateway.errors.PkiError` with an UPPER_SNAKE ``reason``.
"""

from __future__ import annotations

from pki._ca import CertificateAuthority, generate_key, make_csr
from pki._files import (
    DemoPki,
    NodeCredentials,
    TlsMaterial,
    load_certificate,
    load_private_key,
    write_demo_pki,
    write_node_credentials,
    write_pem_certificate,
    write_pem_private_key,
)
from pki._identity import NodeIdentity, hub_names_from_certificate, identity_from_certificate
from pki._x509 import X509_ERRORS, load_certificates

__all__ = [
    "X509_ERRORS",
    "CertificateAuthority",
    "DemoPki",
    "NodeCredentials",
    "NodeIdentity",
    "TlsMaterial",
    "generate_key",
    "hub_names_from_certificate",
    "identity_from_certificate",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "make_csr",
    "write_demo_pki",
    "write_node_credentials",
    "write_pem_certificate",
    "write_pem_private_key",
]
