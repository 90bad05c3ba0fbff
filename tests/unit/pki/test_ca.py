from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from gateway.errors import PkiError
from pki import (
    CertificateAuthority,
    NodeIdentity,
    TlsMaterial,
    generate_key,
    identity_from_certificate,
    load_certificate,
    load_private_key,
    make_csr,
    write_demo_pki,
    write_node_credentials,
    write_pem_certificate,
    write_pem_private_key,
)
from pki.operator import Registry

GZ = NodeIdentity(province_code="440000", node_name="gz-01")
BJ = NodeIdentity(province_code="110000", node_name="bj-01")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


def test_public_names_are_pinned() -> None:
    assert sorted(pki.__all__) == [
        "CertificateAuthority",
        "DemoPki",
        "NodeCredentials",
        "NodeIdentity",
        "TlsMaterial",
        "X509_ERRORS",
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
    for name in pki.__all__:
        assert getattr(pki, name) is not None


# --------------------------------------------------------------------------- the CA itself


def test_created_ca_is_a_self_signed_p256_root_allowing_one_intermediate(ca: CertificateAuthority) -> None:
    ca.cert.verify_directly_issued_by(ca.cert)
    constraints = _ext(ca.cert, x509.BasicConstraints)
    usage = _ext(ca.cert, x509.KeyUsage).value

    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 1
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert isinstance(ca.cert.signature_hash_algorithm, hashes.SHA256)
    assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Hutong Ministry Root CA"
    _ext(ca.cert, x509.SubjectKeyIdentifier)


def test_ca_repr_does_not_show_the_private_key(ca: CertificateAuthority) -> None:
    assert "key" not in repr(ca)


def test_zero_validity_days_is_refused() -> None:
    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.create(valid_days=0)

    assert exc_info.value.reason == "VALIDITY_INVALID"
    assert exc_info.value.field == "valid_days"


# --------------------------------------------------------------------------- node certificates


def test_issued_node_certificate_verifies_against_the_ca(ca: CertificateAuthority) -> None:
    cert = ca.issue_node_certificate(GZ, generate_key().public_key())

    cert.verify_directly_issued_by(ca.cert)


def test_node_certificate_carries_its_identity_as_san_uri(ca: CertificateAuthority) -> None:
    cert = ca.issue_node_certificate(GZ, generate_key().public_key())
    san = _ext(cert, x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [GZ.uri]
    assert identity_from_certificate(cert) == GZ


def test_node_certificate_is_a_p256_leaf_for_client_and_server_auth(ca: CertificateAuthority) -> None:
    key = generate_key()
    cert = ca.issue_node_certificate(GZ, key.public_key(), valid_days=30)

    eku = _ext(cert, x509.ExtendedKeyUsage).value
    usage = _ext(cert, x509.KeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_node_certificate_subject_names_node_organisation_and_province(ca: CertificateAuthority) -> None:
    subject = ca.issue_node_certificate(GZ, generate_key().public_key()).subject

    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gz-01"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Hutong"
    assert subject.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)[0].value == "440000"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "440000"


def test_node_certificate_authority_key_id_is_the_ca_subject_key_id(ca: CertificateAuthority) -> None:
    cert = ca.issue_node_certificate(GZ, generate_key().public_key())

    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca.cert, x509.SubjectKeyIdentifier).value.digest


def test_each_certificate_gets_a_fresh_random_serial(ca: CertificateAuthority) -> None:
    public_key = generate_key().public_key()
    serials = {ca.issue_node_certificate(GZ, public_key).serial_number for _ in range(5)}

    assert len(serials) == 5


@pytest.mark.parametrize(
    "public_key",
    [
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["p384", "ed25519"],
)
def test_keys_other_than_p256_are_refused(ca: CertificateAuthority, public_key: object) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_node_certificate(GZ, public_key)  # type: ignore[arg-type]

    assert exc_info.value.reason == "KEY_TYPE_UNSUPPORTED"
    assert exc_info.value.field == "public_key"


def test_certificate_outliving_the_ca_is_refused() -> None:
    short_lived = CertificateAuthority.create(valid_days=10)

    with pytest.raises(PkiError) as exc_info:
        short_lived.issue_node_certificate(GZ, generate_key().public_key(), valid_days=90)

    assert exc_info.value.reason == "VALIDITY_EXCEEDS_CA"


# --------------------------------------------------------------------------- server certificates


def test_server_certificate_carries_dns_and_ip_names_and_both_auth_usages(ca: CertificateAuthority) -> None:
    cert = ca.issue_server_certificate(
        generate_key().public_key(), dns_names=["hub.example", "localhost"], ip_addresses=["127.0.0.1", "::1"]
    )

    cert.verify_directly_issued_by(ca.cert)
    san = _ext(cert, x509.SubjectAlternativeName).value
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert san.get_values_for_type(x509.DNSName) == ["hub.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hutong-hub"


def test_server_certificate_with_bad_ip_address_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_server_certificate(generate_key().public_key(), dns_names=["a"], ip_addresses=["300.1.1.1"])

    assert exc_info.value.reason == "IP_ADDRESS_INVALID"
    assert exc_info.value.field == "ip_addresses"


def test_server_certificate_without_any_name_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_server_certificate(generate_key().public_key(), dns_names=[])

    assert exc_info.value.reason == "SERVER_NAMES_MISSING"


def test_server_certificate_refuses_a_bare_string_as_dns_names(ca: CertificateAuthority) -> None:
    with pytest.raises(TypeError, match="dns_names"):
        ca.issue_server_certificate(generate_key().public_key(), dns_names="localhost")


# --------------------------------------------------------------------------- CSR flow


def test_csr_flow_issues_a_certificate_for_the_requesting_key_and_identity(ca: CertificateAuthority) -> None:
    node_key = generate_key()  # stays on the node
    csr = make_csr(node_key, GZ)

    cert = ca.issue_from_csr(csr, valid_days=30, expected=GZ)

    cert.verify_directly_issued_by(ca.cert)
    assert identity_from_certificate(cert) == GZ
    assert cert.public_key() == node_key.public_key()


def test_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    der = make_csr(generate_key(), GZ).public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der.replace(b"gz-01", b"gz-02"))

    with pytest.raises(PkiError) as exc_info:
        ca.issue_from_csr(tampered)

    assert exc_info.value.reason == "CSR_SIGNATURE_INVALID"
    assert exc_info.value.field == "csr.signature"


def _csr_with_sans(names: list[x509.GeneralName] | None) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(generate_key(), hashes.SHA256())


@pytest.mark.parametrize(
    ("names", "cause"),
    [
        (None, "NODE_IDENTITY_MISSING"),
        ([x509.DNSName("node.example")], "NODE_IDENTITY_MISSING"),
        (
            [
                x509.UniformResourceIdentifier("hutong://province/440000/node/a"),
                x509.UniformResourceIdentifier("hutong://province/440000/node/b"),
            ],
            "NODE_IDENTITY_AMBIGUOUS",
        ),
        ([x509.UniformResourceIdentifier("hutong://province/440000/node/A")], "NODE_IDENTITY_INVALID"),
        ([x509.UniformResourceIdentifier("hutong://province/990000/node/a")], "PROVINCE_UNKNOWN"),
    ],
    ids=["no-san", "no-hutong-uri", "two-uris", "bad-name", "unknown-province"],
)
def test_csr_without_exactly_one_valid_identity_is_refused(
    ca: CertificateAuthority, names: list[x509.GeneralName] | None, cause: str
) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_from_csr(_csr_with_sans(names))

    assert exc_info.value.reason == "CSR_INVALID"
    assert exc_info.value.field == "csr.san_uri"
    assert exc_info.value.metadata["cause_reason"] == cause


def test_csr_for_another_node_than_expected_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError) as exc_info:
        ca.issue_from_csr(make_csr(generate_key(), BJ), expected=GZ)

    assert exc_info.value.reason == "CSR_INVALID"


def test_csr_cannot_smuggle_in_extra_names_or_ca_powers(ca: CertificateAuthority) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(GZ.uri), x509.DNSName("hub.example")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(generate_key(), hashes.SHA256())
    )

    cert = ca.issue_from_csr(csr)

    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == []
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gz-01"


# --------------------------------------------------------------------------- files


def test_ca_round_trips_through_save_and_load(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")

    loaded = CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")

    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()


def test_saved_key_file_is_0600_and_certificate_0644(ca: CertificateAuthority, tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # a strict umask must not hide the certificate
    try:
        ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    finally:
        os.umask(old_umask)

    assert _mode(tmp_path / "ca.key") == 0o600
    assert _mode(tmp_path / "ca.pem") == 0o644


def test_saving_over_existing_files_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    before = (tmp_path / "ca.key").read_bytes()

    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.create().save(tmp_path / "ca.pem", tmp_path / "ca.key")

    assert exc_info.value.reason == "FILE_EXISTS"
    assert (tmp_path / "ca.key").read_bytes() == before


def test_private_key_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "node.key").symlink_to(target)

    with pytest.raises(PkiError) as exc_info:
        write_pem_private_key(tmp_path / "node.key", generate_key())

    assert exc_info.value.reason == "FILE_EXISTS"
    assert not target.exists()


def test_certificate_overwrite_needs_to_be_asked_for(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    first = ca.issue_node_certificate(GZ, generate_key().public_key())
    second = ca.issue_node_certificate(GZ, generate_key().public_key())
    write_pem_certificate(path, first)

    with pytest.raises(PkiError) as exc_info:
        write_pem_certificate(path, second)
    assert exc_info.value.reason == "FILE_EXISTS"

    write_pem_certificate(path, second, overwrite=True)
    assert load_certificate(path) == second
    assert _mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.pem"]


def test_writing_into_a_missing_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        write_pem_private_key(tmp_path / "nope" / "k.key", generate_key())

    assert exc_info.value.reason == "FILE_MISSING"
    assert exc_info.value.metadata["path"] == str(tmp_path / "nope" / "k.key")


def test_loading_a_missing_file_is_file_missing(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        load_certificate(tmp_path / "absent.pem")

    assert exc_info.value.reason == "FILE_MISSING"
    assert exc_info.value.field == "path"


def test_ca_load_names_which_file_is_missing(ca: CertificateAuthority, tmp_path: Path) -> None:
    write_pem_certificate(tmp_path / "ca.pem", ca.cert)

    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")

    assert exc_info.value.reason == "FILE_MISSING"
    assert exc_info.value.field == "key_path"


def test_loading_garbage_is_pem_invalid(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_bytes(b"not a certificate")
    (tmp_path / "bad.key").write_bytes(b"not a key")
    (tmp_path / "bad.key").chmod(0o600)

    with pytest.raises(PkiError) as cert_exc:
        load_certificate(tmp_path / "bad.pem")
    with pytest.raises(PkiError) as key_exc:
        load_private_key(tmp_path / "bad.key")

    assert cert_exc.value.reason == "PEM_INVALID"
    assert key_exc.value.reason == "PEM_INVALID"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_loading_a_key_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_pem_private_key(path, generate_key())
    path.chmod(mode)

    with pytest.raises(PkiError) as exc_info:
        load_private_key(path)

    assert exc_info.value.reason == "KEY_PERMISSIONS_TOO_OPEN"
    assert f"chmod 600 {path}" in exc_info.value.message


def test_encrypted_key_loads_with_its_passphrase(tmp_path: Path) -> None:
    key = generate_key()
    write_pem_private_key(tmp_path / "k.key", key, passphrase=b"s3cret")

    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    assert load_private_key(tmp_path / "k.key", b"s3cret").private_numbers() == key.private_numbers()


def test_wrong_passphrase_is_passphrase_wrong(tmp_path: Path) -> None:
    write_pem_private_key(tmp_path / "k.key", generate_key(), passphrase=b"s3cret")

    with pytest.raises(PkiError) as exc_info:
        load_private_key(tmp_path / "k.key", b"guess")

    assert exc_info.value.reason == "PASSPHRASE_WRONG"
    assert exc_info.value.field == "passphrase"


def test_encrypted_ca_key_without_passphrase_asks_for_one(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key", passphrase=b"s3cret")

    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert exc_info.value.reason == "PASSPHRASE_REQUIRED"

    assert CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key", passphrase=b"s3cret").cert == ca.cert


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as exc_info:
        write_pem_private_key(tmp_path / "k.key", generate_key(), passphrase=b"")

    assert exc_info.value.reason == "PASSPHRASE_EMPTY"
    assert not (tmp_path / "k.key").exists()


def test_ca_load_refuses_a_key_from_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    write_pem_certificate(tmp_path / "ca.pem", ca.cert)
    write_pem_private_key(tmp_path / "ca.key", generate_key())

    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")

    assert exc_info.value.reason == "KEY_CERT_MISMATCH"


def test_ca_load_refuses_a_leaf_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = generate_key()
    write_pem_certificate(tmp_path / "leaf.pem", ca.issue_node_certificate(GZ, key.public_key()))
    write_pem_private_key(tmp_path / "leaf.key", key)

    with pytest.raises(PkiError) as exc_info:
        CertificateAuthority.load(tmp_path / "leaf.pem", tmp_path / "leaf.key")

    assert exc_info.value.reason == "CA_CERT_INVALID"


# --------------------------------------------------------------------------- TLS material & demo PKI


def test_demo_pki_writes_the_documented_layout_with_safe_modes(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path / "pki", provinces=[("440000", "gz-01"), ("110000", "bj-01")])

    names = sorted(str(p.relative_to(demo.directory)) for p in demo.directory.rglob("*"))
    assert names == [
        "ca.key",
        "ca.pem",
        "hub.key",
        "hub.pem",
        "nodes",
        "nodes/110000-bj-01.key",
        "nodes/110000-bj-01.pem",
        "nodes/440000-gz-01.key",
        "nodes/440000-gz-01.pem",
        "registry.sqlite3",
    ]
    for key_path in demo.directory.rglob("*.key"):
        assert _mode(key_path) == 0o600
    assert _mode(demo.directory / "registry.sqlite3") == 0o600
    # The registry holds every certificate written, as a CA directory's does.
    assert demo.registry_path is not None
    kinds = sorted((r.kind.value, r.holder) for r in Registry.open(demo.registry_path).find())
    assert [k for k, _ in kinds] == ["hub", "node", "node", "root"]
    for cert_path in demo.directory.rglob("*.pem"):
        assert _mode(cert_path) == 0o644


def test_demo_pki_node_material_is_keyed_by_uri_and_chains_to_the_demo_ca(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path, provinces=[("440000", "gz-01"), ("110000", "bj-01")])
    ca_cert = load_certificate(demo.ca_cert_path)

    assert set(demo.node_tls) == {GZ.uri, BJ.uri}
    for uri, tls in demo.node_tls.items():
        cert = x509.load_pem_x509_certificate(tls.cert_chain_pem)
        cert.verify_directly_issued_by(ca_cert)
        assert identity_from_certificate(cert).uri == uri
        assert tls.ca_pem == demo.hub_tls.ca_pem
    hub_cert = load_certificate(demo.hub_cert_path)
    hub_cert.verify_directly_issued_by(ca_cert)
    assert _ext(hub_cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_demo_pki_tls_material_is_accepted_by_grpc(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path, provinces=[("440000", "gz-01")])
    hub, node = demo.hub_tls, demo.node_tls[GZ.uri]

    server = grpc.ssl_server_credentials(
        [(hub.private_key_pem, hub.cert_chain_pem)], root_certificates=hub.ca_pem, require_client_auth=True
    )
    channel = grpc.ssl_channel_credentials(node.ca_pem, node.private_key_pem, node.cert_chain_pem)

    assert isinstance(server, grpc.ServerCredentials)
    assert isinstance(channel, grpc.ChannelCredentials)


def test_tls_material_from_files_matches_the_demo_material(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path, provinces=[("440000", "gz-01")])
    node = demo.nodes[GZ.uri]

    assert TlsMaterial.from_files(demo.hub_cert_path, demo.hub_key_path, demo.ca_cert_path) == demo.hub_tls
    assert TlsMaterial.from_files(node.cert_path, node.key_path, demo.ca_cert_path) == node.tls


def test_tls_material_repr_hides_the_private_key(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path, provinces=[])

    assert b"PRIVATE KEY" in demo.hub_tls.private_key_pem
    assert "PRIVATE KEY" not in repr(demo.hub_tls)
    assert "PRIVATE KEY" not in repr(demo)


def test_tls_material_from_encrypted_key_is_unencrypted_pkcs8_for_grpc(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    creds = write_node_credentials(ca, tmp_path, GZ, passphrase=b"s3cret")
    ca_path = tmp_path / "ca.pem"
    write_pem_certificate(ca_path, ca.cert)

    tls = TlsMaterial.from_files(creds.cert_path, creds.key_path, ca_path, passphrase=b"s3cret")

    assert tls.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert tls == creds.tls


def test_tls_material_refuses_a_key_that_does_not_match_the_certificate(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    creds = write_node_credentials(ca, tmp_path, GZ)
    write_pem_private_key(tmp_path / "other.key", generate_key())

    with pytest.raises(PkiError) as exc_info:
        TlsMaterial.from_files(creds.cert_path, tmp_path / "other.key", creds.cert_path)

    assert exc_info.value.reason == "KEY_CERT_MISMATCH"


def test_node_credentials_are_not_rewritten_when_they_exist(ca: CertificateAuthority, tmp_path: Path) -> None:
    first = write_node_credentials(ca, tmp_path, GZ)
    before = first.key_path.read_bytes()

    with pytest.raises(PkiError) as exc_info:
        write_node_credentials(ca, tmp_path, GZ)

    assert exc_info.value.reason == "FILE_EXISTS"
    assert first.key_path.read_bytes() == before


def test_demo_pki_refuses_a_directory_that_already_holds_one(tmp_path: Path) -> None:
    write_demo_pki(tmp_path, provinces=[("440000", "gz-01")])

    with pytest.raises(PkiError) as exc_info:
        write_demo_pki(tmp_path, provinces=[("440000", "gz-01")])

    assert exc_info.value.reason == "FILE_EXISTS"


def test_demo_pki_refuses_duplicate_or_invalid_nodes_before_writing(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as dup:
        write_demo_pki(tmp_path / "a", provinces=[("440000", "gz-01"), ("440000", "gz-01")])
    with pytest.raises(PkiError) as bad:
        write_demo_pki(tmp_path / "b", provinces=[("990000", "x")])

    assert dup.value.reason == "NODE_IDENTITY_DUPLICATE"
    assert bad.value.reason == "PROVINCE_UNKNOWN"
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()
