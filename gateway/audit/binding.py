"""Key bindings: a hub certificate vouching for the Ed25519 key that signs the log's checkpoints.

The hub signs checkpoints with a long-lived Ed25519 note key, so that a checkpoint stays
verifiable after the hub's TLS certificate is renewed. Auditors and province nodes trust the
ministry CA, not a bare key: a **key binding** is a small JSON document, signed with the hub's
TLS private key (ECDSA P-256 over SHA-256), saying "this hub certificate vouches for this
checkpoint verifier key for this log origin"::

    {
      "type": "hutong-audit-key-binding/1",
      "origin": "<checkpoint origin>",
      "verifier_key": "<C2SP verifier key string>",
      "signed_at": "<RFC 3339 UTC, e.g. 2025-03-01T08:00:00Z>",
      "certificates": ["<PEM hub certificate>", "<PEM intermediate>", ...],
      "signature": "<base64 of the DER ECDSA signature>"
    }

The signature covers the *canonical JSON* of every member but ``signature``: keys sorted,
separators ``(",", ":")``, ``ensure_ascii=False``, UTF-8. A verifier re-encodes the members it
parsed, so the whitespace of the document itself does not matter.

:func:`verify_binding` checks the chain with ``cryptography``'s ``x509.verification`` at the
binding's ``signed_at``, so a binding signed while its certificate was valid stays valid after
the certificate expires (checkpoints outlive TLS certificates). Two things it cannot check:

* **revocation**: the CRL is checked by whoever fetches it (a revoked hub certificate must make
  its bindings untrusted from the revocation date on);
* **back-dating**: whoever holds the private key of an expired certificate can still sign a
  binding dated inside its validity. A binding dated in the future is refused, and the
  certificate's fingerprint is returned so that an auditor can pin the one it expects.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from gateway.audit.checkpoint import NoteVerifier, parse_verifier_key
from gateway.audit.errors import BindingInvalid, KeyInvalid
from gateway.errors import PkiError
from pki import X509_ERRORS, load_certificates

__all__ = ["BINDING_TYPE", "KeyBinding", "bind_key", "verify_binding"]

#: The ``type`` member of a key binding document; a new format gets a new version.
BINDING_TYPE = "hutong-audit-key-binding/1"

_MEMBERS = frozenset({"type", "origin", "verifier_key", "signed_at", "certificates", "signature"})
_RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
# The default chain depth of x509.verification; a longer list cannot be a chain it accepts.
_MAX_CERTIFICATES = 8
# A binding may be dated a little ahead of the verifier's clock, not more.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_NODE_URI_SCHEME = "hutong:"


@dataclass(frozen=True, slots=True)
class KeyBinding:
    """A verified key binding: which checkpoint key the CA-issued hub certificate vouches for."""

    #: The checkpoint origin (log name) the key signs for.
    origin: str
    #: The checkpoint verifier bound to the hub certificate.
    verifier: NoteVerifier
    #: When the hub signed the binding (UTC); the certificate chain was valid then.
    signed_at: dt.datetime
    #: The hub certificate's DNS names and IP addresses, in SAN order.
    hub_names: tuple[str, ...]
    #: SHA-256 of the hub certificate's DER encoding, lowercase hex.
    certificate_sha256: str


def _canonical(members: dict[str, Any]) -> bytes:
    return json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _format_time(value: dt.datetime) -> str:
    text = value.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"


def _utc(value: dt.datetime, *, field: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would be read as local time by some callers and UTC by others.
        raise BindingInvalid(f"{field} must be timezone-aware", field=field)
    return value.astimezone(dt.UTC)


def _check_origin(origin: object, *, field: str = "origin") -> str:
    if not isinstance(origin, str) or not origin or not origin.isprintable():
        raise BindingInvalid("origin must be a non-empty single line of printable text", field=field)
    return origin


def _parse_verifier_key(text: object, *, field: str = "verifier_key") -> NoteVerifier:
    if not isinstance(text, str):
        raise BindingInvalid("verifier_key must be a string", field=field)
    try:
        return parse_verifier_key(text)
    except KeyInvalid as exc:
        raise BindingInvalid(f"verifier_key is not a valid verifier key: {exc.message}", field=field) from exc


def _san(cert: x509.Certificate, *, field: str) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except X509_ERRORS as exc:  # malformed or duplicated extensions
        raise BindingInvalid(f"the hub certificate's extensions cannot be parsed: {exc}", field=field) from exc


def _hub_names(cert: x509.Certificate, *, field: str = "certificates") -> tuple[str, ...]:
    """The DNS/IP names of a hub certificate; refuses a node certificate or one naming no host."""
    san = _san(cert, field=field)
    if san is None:
        raise BindingInvalid("the certificate has no subjectAltName, so it names no hub", field=field)
    # Any hutong: URI (in any case) is a node identity: a province node must never vouch for a log key.
    if any(uri.lower().startswith(_NODE_URI_SCHEME) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)):
        raise BindingInvalid(
            "the certificate is a province node's (it carries a hutong:// identity URI), not the hub's",
            field=field,
        )
    names: list[str] = []
    for name in san:
        if isinstance(name, x509.DNSName):
            names.append(name.value)
        elif isinstance(name, x509.IPAddress):
            names.append(str(name.value))
    if not names:
        raise BindingInvalid("the certificate names no DNS name or IP address, so it is no hub's", field=field)
    return tuple(names)


def _subject(name: str) -> verification.Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _server_verifier(
    anchors: list[x509.Certificate], names: Sequence[str], at: dt.datetime
) -> verification.ServerVerifier:
    """A WebPKI server verifier at ``at`` for the first of ``names`` it can take as a subject."""
    builder = verification.PolicyBuilder().store(verification.Store(anchors)).time(at)
    for name in names:
        try:
            return builder.build_server_verifier(_subject(name))
        except ValueError:
            # A wildcard or otherwise odd DNS name cannot be a subject to check; try the next one.
            continue
    raise BindingInvalid(
        f"the hub certificate names no host that can be checked ({', '.join(names)})", field="certificates"
    )


def _load_certificates(
    pem: bytes, *, source: str, field: str, metadata: dict[str, str] | None = None
) -> list[x509.Certificate]:
    """Certificates read by the PKI's one loader, its refusal restated as a :class:`BindingInvalid`."""
    try:
        return load_certificates(pem, source=source, field=field, metadata=metadata)
    except PkiError as exc:
        raise BindingInvalid(exc.message, field=field, metadata={**exc.metadata, "cause_reason": exc.reason}) from exc


def _load_chain(cert_chain_pem: bytes) -> list[x509.Certificate]:
    return _load_certificates(cert_chain_pem, source="cert_chain_pem", field="cert_chain_pem")


def bind_key(
    verifier_key: str,
    origin: str,
    *,
    cert_chain_pem: bytes,
    private_key_pem: bytes,
    signed_at: dt.datetime | None = None,
) -> bytes:
    """A key binding document: the hub certificate (leaf of ``cert_chain_pem``) vouching for ``verifier_key``.

    ``private_key_pem`` is the hub's unencrypted TLS private key; it must belong to the leaf,
    which must be a hub certificate (DNS/IP names, no node identity) valid at ``signed_at``
    (default: now). Raises :class:`BindingInvalid` naming the faulty argument.
    """
    _parse_verifier_key(verifier_key)
    _check_origin(origin)
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) if signed_at is None else _utc(signed_at, field="signed_at")
    chain = _load_chain(cert_chain_pem)
    leaf = chain[0]
    _hub_names(leaf, field="cert_chain_pem")
    if not leaf.not_valid_before_utc <= when <= leaf.not_valid_after_utc:
        raise BindingInvalid(
            f"the hub certificate is not valid at {_format_time(when)} "
            f"(valid {_format_time(leaf.not_valid_before_utc)} to {_format_time(leaf.not_valid_after_utc)})",
            field="signed_at",
        )
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BindingInvalid("private_key_pem is not an unencrypted PEM private key", field="private_key_pem") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != leaf.public_key():
        raise BindingInvalid("the private key does not belong to the hub certificate", field="private_key_pem")
    members: dict[str, Any] = {
        "type": BINDING_TYPE,
        "origin": origin,
        "verifier_key": verifier_key,
        "signed_at": _format_time(when),
        "certificates": [cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in chain],
    }
    signature = key.sign(_canonical(members), ec.ECDSA(hashes.SHA256()))
    members["signature"] = base64.b64encode(signature).decode("ascii")
    return (json.dumps(members, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise BindingInvalid(f"member {key} appears twice", field=key)
        members[key] = value
    return members


def _parse_document(document: bytes) -> dict[str, Any]:
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BindingInvalid("the key binding is not UTF-8 text", field="document") from exc
    try:
        members = json.loads(text, object_pairs_hook=_unique_members)
    except json.JSONDecodeError as exc:
        raise BindingInvalid(f"the key binding is not JSON: {exc.msg} at line {exc.lineno}", field="document") from exc
    except RecursionError as exc:
        raise BindingInvalid("the key binding nests too deeply to be one", field="document") from exc
    if not isinstance(members, dict):
        raise BindingInvalid("the key binding is not a JSON object", field="document")
    missing, unknown = sorted(_MEMBERS - members.keys()), sorted(members.keys() - _MEMBERS)
    if missing:
        raise BindingInvalid(f"the key binding has no {missing[0]} member", field=missing[0])
    if unknown:
        raise BindingInvalid(f"the key binding has an unknown member {unknown[0]}", field=unknown[0])
    if members["type"] != BINDING_TYPE:
        raise BindingInvalid(f"type must be {BINDING_TYPE}", field="type")
    return members


def _parse_signed_at(value: object) -> dt.datetime:
    if not isinstance(value, str) or not _RFC3339_UTC.fullmatch(value):
        raise BindingInvalid("signed_at must be an RFC 3339 UTC time such as 2025-03-01T08:00:00Z", field="signed_at")
    try:
        return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise BindingInvalid("signed_at is not a valid date and time", field="signed_at") from exc


def _parse_certificates(value: object) -> list[x509.Certificate]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise BindingInvalid("certificates must be a non-empty list of PEM strings", field="certificates")
    if len(value) > _MAX_CERTIFICATES:
        raise BindingInvalid(f"certificates holds more than {_MAX_CERTIFICATES} certificates", field="certificates")
    certs: list[x509.Certificate] = []
    for position, pem in enumerate(value):
        try:
            data = pem.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BindingInvalid(
                f"certificates[{position}] is not a PEM certificate",
                field="certificates",
                metadata={"position": str(position)},
            ) from exc
        loaded = _load_certificates(
            data, source=f"certificates[{position}]", field="certificates", metadata={"position": str(position)}
        )
        if len(loaded) != 1:
            raise BindingInvalid(
                f"certificates[{position}] holds {len(loaded)} certificates, not one",
                field="certificates",
                metadata={"position": str(position)},
            )
        certs.append(loaded[0])
    return certs


def _parse_signature(value: object) -> bytes:
    if not isinstance(value, str):
        raise BindingInvalid("signature must be a base64 string", field="signature")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BindingInvalid("signature is not standard base64", field="signature") from exc


def _load_anchors(ca_pem: bytes) -> list[x509.Certificate]:
    return _load_certificates(ca_pem, source="ca_pem", field="ca_pem")


#: What a chain that does not verify raises: the validator's verdict, or a part it could not parse.
_CHAIN_ERRORS: tuple[type[Exception], ...] = (verification.VerificationError, *X509_ERRORS)


def _verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: list[x509.Certificate],
    *,
    names: Sequence[str],
    at: dt.datetime,
) -> None:
    # The server profile, because a hub is known by its host name: serverAuth EKU, the name in
    # its SAN, not a CA. (Node certificates carry serverAuth too; _hub_names refuses them.)
    verifier = _server_verifier(anchors, names, at)
    try:
        verifier.verify(leaf, list(intermediates))
    except _CHAIN_ERRORS as exc:
        raise BindingInvalid(
            f"the hub certificate does not chain to the CA at {_format_time(at)}: {exc}",
            field="certificates",
            metadata={"signed_at": _format_time(at)},
        ) from exc


def verify_binding(
    document: bytes,
    ca_pem: bytes,
    *,
    origin: str | None = None,
    hub_name: str | None = None,
) -> KeyBinding:
    """The key binding in ``document`` once its hub certificate chains to ``ca_pem`` and its signature holds.

    ``ca_pem`` holds the trusted CA certificates (a root, intermediates, or both). The chain
    is checked as it stood at the binding's ``signed_at``, with the WebPKI server profile; the
    leaf must be a hub certificate (DNS/IP names, no ``hutong://`` node identity). With
    ``origin``, the binding must be for that log; with ``hub_name``, the certificate must name
    that host. Revocation is not checked here: the CRL is checked by whoever fetches it.
    Every failure raises :class:`BindingInvalid` naming the member at fault.
    """
    members = _parse_document(document)
    bound_origin = _check_origin(members["origin"])
    verifier = _parse_verifier_key(members["verifier_key"])
    signed_at = _parse_signed_at(members["signed_at"])
    certs = _parse_certificates(members["certificates"])
    signature = _parse_signature(members["signature"])
    anchors = _load_anchors(ca_pem)
    leaf, intermediates = certs[0], certs[1:]
    if signed_at > dt.datetime.now(dt.UTC) + _CLOCK_SKEW:
        raise BindingInvalid(
            f"the binding is dated in the future ({members['signed_at']})",
            field="signed_at",
            metadata={"signed_at": members["signed_at"]},
        )
    names = _hub_names(leaf)
    if hub_name is not None and hub_name not in names:
        raise BindingInvalid(
            f"the hub certificate does not name {hub_name}",
            field="certificates",
            metadata={"hub_name": hub_name, "hub_names": ",".join(names)},
        )
    _verify_chain(leaf, intermediates, anchors, names=names if hub_name is None else (hub_name,), at=signed_at)
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BindingInvalid("the hub certificate's key is not an ECDSA key", field="certificates")
    signed = {name: value for name, value in members.items() if name != "signature"}
    try:
        public_key.verify(signature, _canonical(signed), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise BindingInvalid("the signature does not verify with the hub certificate's key", field="signature") from exc
    if origin is not None and bound_origin != origin:
        raise BindingInvalid(
            f"the binding is for log {bound_origin}, not {origin}",
            field="origin",
            metadata={"origin": bound_origin, "expected_origin": origin},
        )
    return KeyBinding(
        origin=bound_origin,
        verifier=verifier,
        signed_at=signed_at,
        hub_names=names,
        certificate_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
    )
