"""The ministry CA's operator API: what ``hutong pki init|csr|issue|renew|revoke|crl|list|...`` runs on.

A separate public module rather than names in :mod:`pki` itself: ``pki.__all__`` is what
province nodes import, and it stays small. See ``pki/README.md`` for the directory layout
and the commands.
"""

from __future__ import annotations

from pki._authority import (
    MIN_PASSPHRASE_LENGTH,
    CaDirectory,
    IssuedCertificate,
    NodeRequest,
    Passphrase,
    PublishedCrl,
    check_new_passphrase,
    read_passphrase_file,
    write_node_request,
)
from pki._ca import RevokedEntry, check_node_csr, csr_server_names
from pki._files import (
    ensure_absent,
    key_file_is_encrypted,
    make_private_dir,
    pem_chain,
    read_bytes,
    write_public_pem,
    write_secret_file,
)
from pki._inspect import CertificateReport, CrlEntryReport, CrlReport, CsrReport, inspect_file, public_key_sha256
from pki._registry import (
    CertificateKind,
    CertificateRecord,
    CertificateStatus,
    Registry,
    RevocationReason,
    fingerprint_sha256,
    format_serial,
    parse_serial,
)
from pki._x509 import load_csr

__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "CaDirectory",
    "CertificateKind",
    "CertificateRecord",
    "CertificateReport",
    "CertificateStatus",
    "CrlEntryReport",
    "CrlReport",
    "CsrReport",
    "IssuedCertificate",
    "NodeRequest",
    "Passphrase",
    "PublishedCrl",
    "Registry",
    "RevocationReason",
    "RevokedEntry",
    "check_new_passphrase",
    "check_node_csr",
    "csr_server_names",
    "ensure_absent",
    "fingerprint_sha256",
    "format_serial",
    "inspect_file",
    "key_file_is_encrypted",
    "load_csr",
    "make_private_dir",
    "parse_serial",
    "pem_chain",
    "public_key_sha256",
    "read_bytes",
    "read_passphrase_file",
    "write_node_request",
    "write_public_pem",
    "write_secret_file",
]
