from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.errors import PkiError
from pki import CertificateAuthority, NodeIdentity, generate_key, identity_from_certificate
from pki._identity import PROVINCE_CODES


def _reason(exc_info: pytest.ExceptionInfo[PkiError]) -> str:
    return exc_info.value.reason


def test_uri_names_province_and_node() -> None:
    identity = NodeIdentity(province_code="440000", node_name="gz-01")

    assert identity.uri == "hutong://province/440000/node/gz-01"
    assert str(identity) == identity.uri


def test_uri_round_trips_through_parse_uri() -> None:
    identity = NodeIdentity(province_code="820000", node_name="macau-2")

    assert NodeIdentity.parse_uri(identity.uri) == identity


def test_identity_is_frozen_and_hashable() -> None:
    identity = NodeIdentity(province_code="110000", node_name="bj")

    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.node_name = "other"  # type: ignore[misc]
    assert {identity, NodeIdentity(province_code="110000", node_name="bj")} == {identity}


def test_all_34_province_level_codes_are_known() -> None:
    assert len(PROVINCE_CODES) == 34
    for code in PROVINCE_CODES:
        NodeIdentity(province_code=code, node_name="n")


@pytest.mark.parametrize("code", ["100000", "990000", "470000", "720000"])
def test_unknown_province_prefix_is_rejected(code: str) -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity(province_code=code, node_name="n")

    assert _reason(exc_info) == "PROVINCE_UNKNOWN"
    assert exc_info.value.field == "province_code"


def test_city_level_code_is_not_a_province() -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity(province_code="440100", node_name="gz")

    assert _reason(exc_info) == "PROVINCE_UNKNOWN"
    assert "province-level" in exc_info.value.message


@pytest.mark.parametrize("code", ["44000", "4400000", "44000a", "４４００００", "", "440000\n"])
def test_malformed_province_code_is_invalid(code: str) -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity(province_code=code, node_name="n")

    assert _reason(exc_info) == "NODE_IDENTITY_INVALID"
    assert exc_info.value.field == "province_code"


@pytest.mark.parametrize("name", ["a", "gz-01", "z" * 63, "a-", "node-9-x"])
def test_node_names_of_lowercase_letters_digits_and_hyphens_are_accepted(name: str) -> None:
    assert NodeIdentity(province_code="440000", node_name=name).node_name == name


@pytest.mark.parametrize("name", ["", "1gz", "-gz", "GZ", "gz_01", "gz.01", "gz 01", "z" * 64, "gz\n", "güangzhou"])
def test_bad_node_names_are_rejected(name: str) -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity(province_code="440000", node_name=name)

    assert _reason(exc_info) == "NODE_IDENTITY_INVALID"
    assert exc_info.value.field == "node_name"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "hutong://province/440000/node/",
        "hutong://province/440000/node/gz-01/",
        "hutong://province/440000/node/gz-01?x=1",
        "hutong://province/440000/node/gz-01#frag",
        "HUTONG://province/440000/node/gz-01",
        "https://province/440000/node/gz-01",
        "hutong://province//node/gz-01",
        "hutong://provinces/440000/node/gz-01",
        "hutong://province/440000/nodes/gz-01",
        "hutong://province/44000/node/gz-01",
        "hutong://province/440000/node/GZ-01",
        "hutong://user@province/440000/node/gz-01",
        " hutong://province/440000/node/gz-01",
        "hutong://province/440000/node/gz-01\n",
    ],
)
def test_malformed_uris_are_rejected_naming_the_san_uri_field(uri: str) -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity.parse_uri(uri)

    assert _reason(exc_info) == "NODE_IDENTITY_INVALID"
    assert exc_info.value.field == "san_uri"


def test_malformed_uri_error_shows_the_expected_shape() -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity.parse_uri("hutong://node/gz-01")

    assert "hutong://province/<6-digit province code>/node/<node name>" in exc_info.value.message


def test_uri_with_unknown_province_is_rejected_as_unknown() -> None:
    with pytest.raises(PkiError) as exc_info:
        NodeIdentity.parse_uri("hutong://province/990000/node/x")

    assert _reason(exc_info) == "PROVINCE_UNKNOWN"
    assert exc_info.value.field == "san_uri"


# --------------------------------------------------------------------------- from certificates


def _cert_with_uris(ca: CertificateAuthority, uris: list[str]) -> x509.Certificate:
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "t")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if uris:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names.append(x509.DNSName("node.example"))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_identity_is_read_from_an_issued_node_certificate(ca: CertificateAuthority) -> None:
    identity = NodeIdentity(province_code="440000", node_name="gz-01")
    cert = ca.issue_node_certificate(identity, generate_key().public_key())

    assert identity_from_certificate(cert) == identity


def test_other_uris_next_to_the_hutong_uri_are_ignored(ca: CertificateAuthority) -> None:
    cert = _cert_with_uris(ca, ["https://example.org/x", "hutong://province/110000/node/bj-01"])

    assert identity_from_certificate(cert) == NodeIdentity(province_code="110000", node_name="bj-01")


def test_certificate_without_san_has_no_identity(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError) as exc_info:
        identity_from_certificate(_cert_with_uris(ca, []))

    assert _reason(exc_info) == "NODE_IDENTITY_MISSING"


def test_certificate_without_hutong_uri_has_no_identity(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError) as exc_info:
        identity_from_certificate(_cert_with_uris(ca, ["https://example.org/"]))

    assert _reason(exc_info) == "NODE_IDENTITY_MISSING"


def test_certificate_with_two_hutong_uris_is_ambiguous(ca: CertificateAuthority) -> None:
    cert = _cert_with_uris(ca, ["hutong://province/440000/node/a", "hutong://province/110000/node/b"])

    with pytest.raises(PkiError) as exc_info:
        identity_from_certificate(cert)

    assert _reason(exc_info) == "NODE_IDENTITY_AMBIGUOUS"


def test_oddly_cased_hutong_uri_is_rejected_not_skipped(ca: CertificateAuthority) -> None:
    cert = _cert_with_uris(ca, ["HUTONG://province/440000/node/a"])

    with pytest.raises(PkiError) as exc_info:
        identity_from_certificate(cert)

    assert _reason(exc_info) == "NODE_IDENTITY_INVALID"
