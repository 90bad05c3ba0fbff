"""Node identities and their ``hutong://`` SAN URIs; what tells a hub certificate from a node's.

A node's identity lives in exactly one place: the URI subject alternative name
of its certificate, ``hutong://province/<code>/node/<name>``. The hub reads the
province from the verified certificate only (DESIGN §5); the subject DN is
informational.

A certificate of the ministry CA is a **node** certificate when it carries a ``hutong://``
SAN URI (it may also carry DNS names and IP addresses, so that a node can serve the hub's
federated detail requests), and a **hub** certificate when it carries none but names at least
one DNS name or IP address and allows client authentication. The CA registry and the node's
federation server (``hutong node serve``, which only the hub may call) apply this one rule:
:func:`hub_names_from_certificate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import PkiError
from pki._x509 import extension_value

__all__ = ["NodeIdentity", "hub_names_from_certificate", "identity_from_certificate"]

URI_SCHEME = "hutong"

# The 34 province-level divisions of GB/T 2260 (71 81 82: Taiwan, Hong Kong, Macau).
# Kept here rather than imported from gateway.domain.divisions so that pki stays
# independent of the domain layer and can ship as operator tooling on its own.
# fmt: off
_PROVINCE_PREFIXES = (
    "11", "12", "13", "14", "15",
    "21", "22", "23",
    "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46",
    "50", "51", "52", "53", "54",
    "61", "62", "63", "64", "65",
    "71", "81", "82",
)
# fmt: on
PROVINCE_CODES: frozenset[str] = frozenset(f"{prefix}0000" for prefix in _PROVINCE_PREFIXES)

_SIX_DIGITS = re.compile(r"[0-9]{6}")
_NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_URI_SHAPE = re.compile(r"hutong://province/(?P<province>[^/]*)/node/(?P<name>[^/]*)")
_URI_TEMPLATE = "hutong://province/<6-digit province code>/node/<node name>"
# Long enough to recognise a bad value in an error, short enough to keep logs sane.
_MAX_ECHO = 200


def _echo(value: str) -> str:
    return value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."


def _check_province_code(province_code: str, *, field: str) -> None:
    if not _SIX_DIGITS.fullmatch(province_code):
        raise PkiError(
            f"province code {_echo(province_code)!r} is not 6 ASCII digits",
            reason="NODE_IDENTITY_INVALID",
            field=field,
            metadata={"province_code": _echo(province_code)},
        )
    if province_code not in PROVINCE_CODES:
        hint = (
            "it must be province-level (2 digits followed by 0000)"
            if not province_code.endswith("0000")
            else "no province has this prefix in GB/T 2260"
        )
        raise PkiError(
            f"province code {province_code!r} is not a known province: {hint}",
            reason="PROVINCE_UNKNOWN",
            field=field,
            metadata={"province_code": province_code},
        )


def _check_node_name(node_name: str, *, field: str) -> None:
    if not _NODE_NAME.fullmatch(node_name):
        raise PkiError(
            f"node name {_echo(node_name)!r} is invalid: use 1-63 characters from "
            "lowercase a-z, 0-9 and '-', starting with a letter",
            reason="NODE_IDENTITY_INVALID",
            field=field,
            metadata={"node_name": _echo(node_name)},
        )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a node is: its province and its name within that province."""

    #: GB/T 2260 province-level code, e.g. ``"440000"`` (Guangdong).
    province_code: str
    #: Name unique within the province: lowercase ``[a-z0-9-]``, 1-63 chars, starts with a letter.
    node_name: str

    def __post_init__(self) -> None:
        _check_province_code(self.province_code, field="province_code")
        _check_node_name(self.node_name, field="node_name")

    @property
    def uri(self) -> str:
        """The SAN URI naming this node, e.g. ``hutong://province/440000/node/gz-01``."""
        return f"{URI_SCHEME}://province/{self.province_code}/node/{self.node_name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse_uri(cls, uri: str) -> NodeIdentity:
        """Parse a canonical ``hutong://province/<code>/node/<name>`` URI."""
        # Exact match on purpose: an identity compared and logged as a string must
        # have one spelling only, so no case folding, trailing slash, query or fragment.
        match = _URI_SHAPE.fullmatch(uri)
        if match is None:
            raise PkiError(
                f"node identity URI {_echo(uri)!r} is malformed: expected {_URI_TEMPLATE}",
                reason="NODE_IDENTITY_INVALID",
                field="san_uri",
                metadata={"uri": _echo(uri)},
            )
        _check_province_code(match["province"], field="san_uri")
        _check_node_name(match["name"], field="san_uri")
        return cls(province_code=match["province"], node_name=match["name"])


def hutong_uris(general_names: x509.SubjectAlternativeName) -> list[str]:
    """Every SAN URI with the ``hutong`` scheme, in any case: odd spellings get rejected, not skipped."""
    return [
        uri
        for uri in general_names.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith(f"{URI_SCHEME}:")
    ]


def single_identity(uris: list[str], *, subject: str, field: str = "san_uri") -> NodeIdentity:
    """The identity from a list that must hold exactly one ``hutong://`` URI."""
    if not uris:
        raise PkiError(
            f"{subject} carries no {URI_SCHEME}:// SAN URI, so it names no node",
            reason="NODE_IDENTITY_MISSING",
            field=field,
        )
    if len(uris) > 1:
        raise PkiError(
            f"{subject} carries {len(uris)} {URI_SCHEME}:// SAN URIs; exactly one is allowed",
            reason="NODE_IDENTITY_AMBIGUOUS",
            field=field,
            metadata={"count": str(len(uris))},
        )
    return NodeIdentity.parse_uri(uris[0])


def identity_from_certificate(cert: x509.Certificate) -> NodeIdentity:
    """The node identity carried by a certificate's single ``hutong://`` SAN URI."""
    san = _san_of(cert)
    return single_identity(hutong_uris(san) if san is not None else [], subject="certificate")


def _san_of(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    return extension_value(cert, x509.SubjectAlternativeName, source="the certificate", field="extensions")


def hub_names_from_certificate(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses of a hub certificate; a node's (or a nameless) certificate is refused.

    The chain is not checked here (TLS did that); only what kind of certificate of the CA this is.
    Errors: ``NODE_CERTIFICATE`` (it carries a ``hutong://`` URI: a node, not the hub),
    ``HUB_NAMES_MISSING`` (no DNS name or IP address), ``CLIENT_AUTH_NOT_ALLOWED`` (its extended
    key usage does not allow TLS client authentication).
    """
    san = _san_of(cert)
    if san is not None and hutong_uris(san):
        raise PkiError(
            "the certificate names a province node (it carries a hutong:// SAN URI), not the hub",
            reason="NODE_CERTIFICATE",
            field="san_uri",
        )
    names: list[str] = []
    if san is not None:
        names = [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    if not names:
        raise PkiError(
            "the certificate carries no DNS name or IP address, so it names no hub",
            reason="HUB_NAMES_MISSING",
            field="san",
        )
    usages = extension_value(cert, x509.ExtendedKeyUsage, source="the certificate", field="extensions")
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise PkiError(
            "the certificate's extended key usage does not allow TLS client authentication",
            reason="CLIENT_AUTH_NOT_ALLOWED",
            field="extended_key_usage",
        )
    return tuple(names)
