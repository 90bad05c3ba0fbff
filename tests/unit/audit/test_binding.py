"""Key bindings: a CA-issued hub certificate vouching for the checkpoint key, with real certificates."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.binding import BINDING_TYPE, KeyBinding, bind_key, verify_binding
from gateway.audit.checkpoint import encode_verifier_key, sign_checkpoint, verify_checkpoint
from gateway.audit.errors import BindingInvalid
from pki import CertificateAuthority, DemoPki, generate_key

ORIGIN = "hub.example.gov.cn/audit"
GZ_URI = "hutong://province/440000/node/gz-01"
NOTE_KEY = Ed25519PrivateKey.generate()
VERIFIER_KEY = encode_verifier_key(ORIGIN, NOTE_KEY.public_key())
OTHER_VERIFIER_KEY = encode_verifier_key(ORIGIN, Ed25519PrivateKey.generate().public_key())
SIGNED_AT = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _resign(members: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """A binding document over ``members``, signed as the format says (independent of the module under test)."""
    unsigned = {name: value for name, value in members.items() if name != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signature = key.sign(canonical, ec.ECDSA(hashes.SHA256()))
    return json.dumps({**unsigned, "signature": base64.b64encode(signature).decode("ascii")}).encode("utf-8")


@pytest.fixture(scope="module")
def hub_key(demo_pki: DemoPki) -> ec.EllipticCurvePrivateKey:
    """The demo hub's TLS private key."""
    key = serialization.load_pem_private_key(demo_pki.hub_tls.private_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="module")
def binding(demo_pki: DemoPki) -> bytes:
    """A binding of the note key by the demo hub certificate."""
    return bind_key(
        VERIFIER_KEY,
        ORIGIN,
        cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
        private_key_pem=demo_pki.hub_tls.private_key_pem,
        signed_at=SIGNED_AT,
    )


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    """A CA the verifier does not trust."""
    return CertificateAuthority.create("Some Other CA")


def test_a_binding_verifies_to_its_key_origin_time_and_hub_certificate(demo_pki: DemoPki, binding: bytes) -> None:
    result = verify_binding(binding, demo_pki.hub_tls.ca_pem, origin=ORIGIN)
    hub_cert = x509.load_pem_x509_certificate(demo_pki.hub_tls.cert_chain_pem)
    assert result == KeyBinding(
        origin=ORIGIN,
        verifier=result.verifier,
        signed_at=SIGNED_AT,
        hub_names=("localhost", "127.0.0.1", "::1"),
        certificate_sha256=hub_cert.fingerprint(hashes.SHA256()).hex(),
    )
    assert str(result.verifier) == VERIFIER_KEY
    # The bound verifier checks checkpoints signed with the note key.
    note = sign_checkpoint(ORIGIN, 0, b"\x00" * 32, ORIGIN, NOTE_KEY)
    assert verify_checkpoint(note, result.verifier.name, result.verifier.public_key, origin=ORIGIN).size == 0


def test_the_document_signs_the_canonical_json_of_every_other_member(demo_pki: DemoPki, binding: bytes) -> None:
    members = json.loads(binding)
    assert set(members) == {"type", "origin", "verifier_key", "signed_at", "certificates", "signature"}
    assert members["type"] == BINDING_TYPE == "hutong-audit-key-binding/1"
    assert members["signed_at"] == SIGNED_AT.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert members["certificates"] == [demo_pki.hub_tls.cert_chain_pem.decode("ascii")]
    unsigned = {name: value for name, value in members.items() if name != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hub_key = x509.load_pem_x509_certificate(demo_pki.hub_tls.cert_chain_pem).public_key()
    assert isinstance(hub_key, ec.EllipticCurvePublicKey)
    hub_key.verify(base64.b64decode(members["signature"]), canonical, ec.ECDSA(hashes.SHA256()))


def test_the_document_layout_does_not_matter_only_its_members(demo_pki: DemoPki, binding: bytes) -> None:
    compact = json.dumps(json.loads(binding), separators=(",", ":")).encode("utf-8")
    assert verify_binding(compact, demo_pki.hub_tls.ca_pem).origin == ORIGIN


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("origin", "evil.example/audit"),
        ("verifier_key", OTHER_VERIFIER_KEY),
        ("signed_at", (SIGNED_AT - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    ],
    # Fixed ids: the values are made at import, differently in each xdist worker.
    ids=["origin", "verifier_key", "signed_at"],
)
def test_a_tampered_member_breaks_the_signature(demo_pki: DemoPki, binding: bytes, member: str, value: str) -> None:
    members = json.loads(binding)
    members[member] = value
    with pytest.raises(BindingInvalid, match="signature does not verify") as caught:
        verify_binding(json.dumps(members).encode("utf-8"), demo_pki.hub_tls.ca_pem)
    assert caught.value.field == "signature"
    assert caught.value.reason == "KEY_BINDING_INVALID"


def test_a_binding_for_another_log_is_refused_when_the_origin_is_given(demo_pki: DemoPki, binding: bytes) -> None:
    with pytest.raises(BindingInvalid, match=r"not other\.example/audit") as caught:
        verify_binding(binding, demo_pki.hub_tls.ca_pem, origin="other.example/audit")
    assert caught.value.field == "origin"


def test_a_binding_is_refused_by_a_verifier_trusting_another_ca(binding: bytes, other_ca: CertificateAuthority) -> None:
    with pytest.raises(BindingInvalid, match="does not chain to the CA") as caught:
        verify_binding(binding, _pem(other_ca.cert))
    assert caught.value.field == "certificates"


def test_a_hub_certificate_from_another_ca_is_refused(demo_pki: DemoPki, other_ca: CertificateAuthority) -> None:
    key = generate_key()
    cert = other_ca.issue_server_certificate(key.public_key(), dns_names=["localhost"])
    document = bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(cert), private_key_pem=_key_pem(key))
    with pytest.raises(BindingInvalid, match="does not chain to the CA"):
        verify_binding(document, demo_pki.hub_tls.ca_pem)


def test_a_province_node_certificate_cannot_vouch_for_a_log_key(demo_pki: DemoPki) -> None:
    node = demo_pki.nodes[GZ_URI].tls
    with pytest.raises(BindingInvalid, match="province node") as at_bind:
        bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=node.cert_chain_pem, private_key_pem=node.private_key_pem)
    assert at_bind.value.field == "cert_chain_pem"
    # A document made by hand, validly signed with the node's key, is refused all the same.
    node_key = serialization.load_pem_private_key(node.private_key_pem, password=None)
    assert isinstance(node_key, ec.EllipticCurvePrivateKey)
    forged = _resign(
        {
            "type": BINDING_TYPE,
            "origin": ORIGIN,
            "verifier_key": VERIFIER_KEY,
            "signed_at": SIGNED_AT.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "certificates": [node.cert_chain_pem.decode("ascii")],
        },
        node_key,
    )
    with pytest.raises(BindingInvalid, match="province node") as at_verify:
        verify_binding(forged, demo_pki.hub_tls.ca_pem)
    assert at_verify.value.field == "certificates"


def test_binding_refuses_a_private_key_that_is_not_the_certificates(demo_pki: DemoPki) -> None:
    with pytest.raises(BindingInvalid, match="does not belong to the hub certificate") as caught:
        bind_key(
            VERIFIER_KEY,
            ORIGIN,
            cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
            private_key_pem=demo_pki.nodes[GZ_URI].tls.private_key_pem,
        )
    assert caught.value.field == "private_key_pem"


def test_binding_refuses_a_malformed_verifier_key(demo_pki: DemoPki) -> None:
    with pytest.raises(BindingInvalid, match="not a valid verifier key") as caught:
        bind_key(
            "hub+0000+AAAA",
            ORIGIN,
            cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
            private_key_pem=demo_pki.hub_tls.private_key_pem,
        )
    assert caught.value.field == "verifier_key"


def test_a_binding_outlives_its_certificate_when_signed_while_it_was_valid() -> None:
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=400)
    ca = CertificateAuthority.create("Old CA", now=long_ago)
    key = generate_key()
    cert = ca.issue_server_certificate(key.public_key(), dns_names=["hub.example.gov.cn"], valid_days=30, now=long_ago)
    assert cert.not_valid_after_utc < now
    signed_at = (long_ago + dt.timedelta(days=10)).replace(microsecond=0)
    document = bind_key(
        VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(cert), private_key_pem=_key_pem(key), signed_at=signed_at
    )
    result = verify_binding(document, _pem(ca.cert), origin=ORIGIN)
    assert result.signed_at == signed_at
    assert result.hub_names == ("hub.example.gov.cn",)

    # Dated after the certificate expired: refused at bind time, and a hand-made one at verification.
    after_expiry = long_ago + dt.timedelta(days=60)
    with pytest.raises(BindingInvalid, match="not valid at") as at_bind:
        bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(cert), private_key_pem=_key_pem(key), signed_at=after_expiry)
    assert at_bind.value.field == "signed_at"
    members = json.loads(document)
    members["signed_at"] = after_expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(BindingInvalid, match="does not chain to the CA at"):
        verify_binding(_resign(members, key), _pem(ca.cert))


def test_a_binding_dated_in_the_future_is_refused(demo_pki: DemoPki) -> None:
    document = bind_key(
        VERIFIER_KEY,
        ORIGIN,
        cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
        private_key_pem=demo_pki.hub_tls.private_key_pem,
        signed_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    with pytest.raises(BindingInvalid, match="dated in the future") as caught:
        verify_binding(document, demo_pki.hub_tls.ca_pem)
    assert caught.value.field == "signed_at"


def test_a_hub_under_an_intermediate_verifies_against_the_root_or_the_intermediate() -> None:
    root = CertificateAuthority.create("Root")
    issuing_key = generate_key()
    issuing = CertificateAuthority(cert=root.issue_intermediate(issuing_key.public_key()), key=issuing_key)
    key = generate_key()
    cert = issuing.issue_server_certificate(
        key.public_key(), dns_names=["hub.example.gov.cn"], ip_addresses=["10.1.2.3"]
    )
    with_chain = bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(cert, issuing.cert), private_key_pem=_key_pem(key))
    leaf_only = bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(cert), private_key_pem=_key_pem(key))

    assert verify_binding(with_chain, _pem(root.cert)).hub_names == ("hub.example.gov.cn", "10.1.2.3")
    assert verify_binding(leaf_only, _pem(root.cert, issuing.cert)).origin == ORIGIN
    with pytest.raises(BindingInvalid, match="does not chain"):
        verify_binding(leaf_only, _pem(root.cert))


def test_a_pinned_hub_name_must_be_in_the_certificate(demo_pki: DemoPki, binding: bytes) -> None:
    assert verify_binding(binding, demo_pki.hub_tls.ca_pem, hub_name="127.0.0.1").hub_names[0] == "localhost"
    with pytest.raises(BindingInvalid, match=r"does not name hub\.example\.gov\.cn"):
        verify_binding(binding, demo_pki.hub_tls.ca_pem, hub_name="hub.example.gov.cn")


def _edited(binding: bytes, **changes: Any) -> bytes:
    members = json.loads(binding)
    for name, value in changes.items():
        if value is None:
            del members[name]
        else:
            members[name] = value
    return json.dumps(members).encode("utf-8")


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (lambda doc: b"\xff" + doc, "document", "not UTF-8"),
        (lambda doc: doc[:-3], "document", "not JSON"),
        (lambda doc: b"[]", "document", "not a JSON object"),
        (lambda doc: b'{"origin": "a", ' + doc[1:], "origin", "appears twice"),
        (lambda doc: _edited(doc, signature=None), "signature", "no signature member"),
        (lambda doc: _edited(doc, extra="x"), "extra", "unknown member extra"),
        (lambda doc: _edited(doc, type="hutong-audit-key-binding/2"), "type", "type must be"),
        (lambda doc: _edited(doc, origin=""), "origin", "origin must be"),
        (lambda doc: _edited(doc, origin="a\nb"), "origin", "origin must be"),
        (lambda doc: _edited(doc, verifier_key=7), "verifier_key", "must be a string"),
        (lambda doc: _edited(doc, verifier_key="name+00000000+AQ=="), "verifier_key", "not a valid verifier key"),
        (lambda doc: _edited(doc, signed_at="2025-03-01 08:00:00"), "signed_at", "RFC 3339"),
        (lambda doc: _edited(doc, signed_at="2025-03-01T08:00:00+08:00"), "signed_at", "RFC 3339"),
        (lambda doc: _edited(doc, signed_at="2025-02-30T08:00:00Z"), "signed_at", "not a valid date"),
        (lambda doc: _edited(doc, certificates=[]), "certificates", "non-empty list"),
        (lambda doc: _edited(doc, certificates="PEM"), "certificates", "non-empty list"),
        (lambda doc: _edited(doc, certificates=["not a PEM"]), "certificates", r"certificates\[0\] holds no valid PEM"),
        (lambda doc: _edited(doc, signature="***"), "signature", "not standard base64"),
        (lambda doc: _edited(doc, signature=3), "signature", "base64 string"),
    ],
)
def test_a_malformed_document_names_the_member_at_fault(
    demo_pki: DemoPki, binding: bytes, edit: Any, field: str, message: str
) -> None:
    with pytest.raises(BindingInvalid, match=message) as caught:
        verify_binding(edit(binding), demo_pki.hub_tls.ca_pem)
    assert caught.value.field == field


def test_two_certificates_in_one_pem_member_are_refused(demo_pki: DemoPki, binding: bytes) -> None:
    two = (demo_pki.hub_tls.cert_chain_pem + demo_pki.hub_tls.ca_pem).decode("ascii")
    with pytest.raises(BindingInvalid, match="holds 2 certificates"):
        verify_binding(_edited(binding, certificates=[two]), demo_pki.hub_tls.ca_pem)


def test_a_ca_file_without_certificates_is_refused(binding: bytes) -> None:
    with pytest.raises(BindingInvalid, match="ca_pem holds no valid PEM certificate") as caught:
        verify_binding(binding, b"not a certificate")
    assert caught.value.field == "ca_pem"


def test_a_signature_by_another_hub_key_is_refused(
    demo_pki: DemoPki, binding: bytes, hub_key: ec.EllipticCurvePrivateKey
) -> None:
    members = json.loads(binding)
    assert verify_binding(_resign(members, hub_key), demo_pki.hub_tls.ca_pem).origin == ORIGIN
    with pytest.raises(BindingInvalid, match="signature does not verify"):
        verify_binding(_resign(members, generate_key()), demo_pki.hub_tls.ca_pem)


def test_a_wildcard_name_is_skipped_when_choosing_the_name_to_check(other_ca: CertificateAuthority) -> None:
    key = generate_key()
    mixed = other_ca.issue_server_certificate(key.public_key(), dns_names=["*.hub.example", "hub.example"])
    document = bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(mixed), private_key_pem=_key_pem(key))
    assert verify_binding(document, _pem(other_ca.cert)).hub_names == ("*.hub.example", "hub.example")

    wildcard_only = other_ca.issue_server_certificate(key.public_key(), dns_names=["*.hub.example"])
    document = bind_key(VERIFIER_KEY, ORIGIN, cert_chain_pem=_pem(wildcard_only), private_key_pem=_key_pem(key))
    with pytest.raises(BindingInvalid, match="names no host that can be checked"):
        verify_binding(document, _pem(other_ca.cert))


def test_a_signing_time_with_microseconds_round_trips(demo_pki: DemoPki) -> None:
    signed_at = SIGNED_AT.replace(microsecond=120_000)
    document = bind_key(
        VERIFIER_KEY,
        ORIGIN,
        cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
        private_key_pem=demo_pki.hub_tls.private_key_pem,
        signed_at=signed_at.astimezone(dt.timezone(dt.timedelta(hours=8))),
    )
    assert json.loads(document)["signed_at"].endswith(".120000Z")
    assert verify_binding(document, demo_pki.hub_tls.ca_pem).signed_at == signed_at


def test_binding_refuses_a_naive_signing_time(demo_pki: DemoPki) -> None:
    with pytest.raises(BindingInvalid, match="timezone-aware"):
        bind_key(
            VERIFIER_KEY,
            ORIGIN,
            cert_chain_pem=demo_pki.hub_tls.cert_chain_pem,
            private_key_pem=demo_pki.hub_tls.private_key_pem,
            signed_at=dt.datetime(2025, 3, 1, 8, 0),  # naive on purpose
        )


def test_a_deeply_nested_document_is_refused_cleanly(demo_pki: DemoPki) -> None:
    with pytest.raises(BindingInvalid) as caught:
        verify_binding(b"[" * 100_000 + b"]" * 100_000, demo_pki.hub_tls.ca_pem)
    assert caught.value.field == "document"


def _hub_der_edited(demo_pki: DemoPki, old: bytes, new: bytes) -> str:
    der = x509.load_pem_x509_certificate(demo_pki.hub_tls.cert_chain_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(old) == 1
    body = base64.b64encode(der.replace(old, new)).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("old", "new", "cause_reason"),
    [
        # X.509 version 3 (INTEGER 2) made 8: cryptography's InvalidVersion.
        (bytes.fromhex("a003020102"), bytes.fromhex("a003020107"), "PEM_INVALID"),
        # subjectKeyIdentifier's OID made authorityKeyIdentifier's: DuplicateExtension.
        (bytes.fromhex("0603551d0e"), bytes.fromhex("0603551d23"), "CERTIFICATE_INVALID"),
    ],
    ids=["bad-version", "duplicate-extension"],
)
def test_a_malformed_hub_certificate_is_refused_naming_the_member(
    demo_pki: DemoPki, binding: bytes, old: bytes, new: bytes, cause_reason: str
) -> None:
    certificates = json.loads(binding)["certificates"]
    edited = _edited(binding, certificates=[_hub_der_edited(demo_pki, old, new), *certificates[1:]])

    with pytest.raises(BindingInvalid) as caught:
        verify_binding(edited, demo_pki.hub_tls.ca_pem)

    assert caught.value.field == "certificates"
    assert caught.value.metadata["position"] == "0"
    assert caught.value.metadata["cause_reason"] == cause_reason
