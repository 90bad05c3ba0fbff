"""Node certificates that also name DNS names and IP addresses (to serve the hub), and the hub-certificate rule."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki_commands
from gateway.errors import PkiError
from pki import (
    CertificateAuthority,
    NodeIdentity,
    generate_key,
    hub_names_from_certificate,
    identity_from_certificate,
    make_csr,
    write_demo_pki,
)
from pki.operator import CaDirectory, CertificateKind, check_node_csr, csr_server_names, write_node_request

GZ = NodeIdentity(province_code="440000", node_name="gz-01")
INTERMEDIATE_PASS = b"intermediate passphrase"


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _names(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = _san(cert)
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Test CA")


@pytest.fixture
def ca_dir(tmp_path: Path) -> CaDirectory:
    return CaDirectory.init(
        tmp_path / "ca", root_passphrase=b"root passphrase, offline", intermediate_passphrase=INTERMEDIATE_PASS
    )


def test_a_node_csr_may_ask_for_dns_names_and_ip_addresses_beside_its_uri() -> None:
    csr = make_csr(generate_key(), GZ, dns_names=["gz-01.gd.example"], ip_addresses=["10.1.2.3"])

    identity, _ = check_node_csr(csr)

    assert identity == GZ
    assert csr_server_names(csr) == (("gz-01.gd.example",), ("10.1.2.3",))


def test_a_plain_node_csr_asks_for_no_server_names() -> None:
    assert csr_server_names(make_csr(generate_key(), GZ)) == ((), ())


@pytest.mark.parametrize("dns_name", ["*.gd.example", "bad..name", "-gz.example"])
def test_a_csr_asking_for_a_wildcard_or_malformed_dns_name_is_invalid(dns_name: str) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gz-01")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(GZ.uri), x509.DNSName(dns_name)]),
            critical=False,
        )
        .sign(generate_key(), hashes.SHA256())
    )

    with pytest.raises(PkiError) as refused:
        check_node_csr(csr)

    assert (refused.value.reason, refused.value.field) == ("CSR_INVALID", "csr.san_dns")


def test_the_ca_certifies_requested_names_only_when_told_to(ca: CertificateAuthority) -> None:
    csr = make_csr(generate_key(), GZ, dns_names=["gz-01.gd.example"], ip_addresses=["127.0.0.1"])

    plain = ca.issue_from_csr(csr)
    serving = ca.issue_from_csr(csr, server_names=True)

    assert _names(plain) == ([GZ.uri], [], [])
    assert _names(serving) == ([GZ.uri], ["gz-01.gd.example"], ["127.0.0.1"])
    assert identity_from_certificate(serving) == GZ


def test_a_node_certificate_with_server_names_is_still_a_node_in_the_registry(ca_dir: CaDirectory) -> None:
    csr = make_csr(generate_key(), GZ, ip_addresses=["10.1.2.3"])

    issued = ca_dir.issue_node(csr, passphrase=INTERMEDIATE_PASS, server_names=True)

    assert issued.record.kind is CertificateKind.NODE
    assert issued.record.node_uri == GZ.uri
    assert _names(issued.certificate)[2] == ["10.1.2.3"]


def test_a_node_csr_asking_for_the_hubs_name_is_refused(ca_dir: CaDirectory) -> None:
    ca_dir.issue_hub(dns_names=["hub.mca.example"], ip_addresses=["10.0.0.1"], passphrase=INTERMEDIATE_PASS)
    for dns, ip in ((["hub.mca.example"], []), ([], ["10.0.0.1"])):
        csr = make_csr(generate_key(), GZ, dns_names=dns, ip_addresses=ip)
        with pytest.raises(PkiError) as refused:
            ca_dir.issue_node(csr, passphrase=INTERMEDIATE_PASS, server_names=True)
        assert refused.value.reason == "SERVER_NAME_RESERVED"
        assert refused.value.field == "csr.san"


def test_renewal_keeps_the_names_certified_with_the_identity(ca_dir: CaDirectory) -> None:
    csr = make_csr(generate_key(), GZ, dns_names=["gz-01.gd.example"])
    old = ca_dir.issue_node(csr, passphrase=INTERMEDIATE_PASS, server_names=True).certificate

    renewed = ca_dir.renew(old, csr=make_csr(generate_key(), GZ), passphrase=INTERMEDIATE_PASS).certificate

    assert _names(renewed) == ([GZ.uri], ["gz-01.gd.example"], [])


def test_demo_node_certificates_name_loopback_so_a_node_can_serve_the_hub(tmp_path: Path) -> None:
    demo = write_demo_pki(tmp_path, provinces=[("440000", "gz-01")])
    cert = x509.load_pem_x509_certificate(demo.nodes[GZ.uri].tls.cert_chain_pem)

    assert _names(cert) == ([GZ.uri], [], ["127.0.0.1"])
    assert identity_from_certificate(cert) == GZ


# --------------------------------------------------------------------------- the hub-certificate rule


def test_a_hub_certificate_gives_its_names(ca: CertificateAuthority) -> None:
    cert = ca.issue_server_certificate(generate_key().public_key(), dns_names=["hub.example"], ip_addresses=["::1"])

    assert hub_names_from_certificate(cert) == ("hub.example", "::1")


def test_a_node_certificate_is_not_a_hub_certificate_even_with_server_names(ca: CertificateAuthority) -> None:
    cert = ca.issue_node_certificate(GZ, generate_key().public_key(), ip_addresses=["127.0.0.1"])

    with pytest.raises(PkiError) as refused:
        hub_names_from_certificate(cert)

    assert refused.value.reason == "NODE_CERTIFICATE"


def _leaf(
    ca: CertificateAuthority, names: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]
) -> x509.Certificate:
    builder = ca._leaf_builder(generate_key().public_key(), 30).subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def test_a_certificate_without_names_or_client_auth_is_not_a_hub_certificate(ca: CertificateAuthority) -> None:
    nameless = _leaf(ca, [], [ExtendedKeyUsageOID.CLIENT_AUTH])
    server_only = _leaf(ca, [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], [ExtendedKeyUsageOID.SERVER_AUTH])

    with pytest.raises(PkiError) as no_names:
        hub_names_from_certificate(nameless)
    with pytest.raises(PkiError) as no_client:
        hub_names_from_certificate(server_only)

    assert no_names.value.reason == "HUB_NAMES_MISSING"
    assert no_client.value.reason == "CLIENT_AUTH_NOT_ALLOWED"


# --------------------------------------------------------------------------- commands


def test_pki_csr_writes_a_csr_asking_for_the_given_names(tmp_path: Path) -> None:
    assert (
        pki_commands.pki_csr(
            province="440000", name="gz-01", out=tmp_path, dns_names=["gz-01.gd.example"], ip_addresses=["10.1.2.3"]
        )
        == 0
    )

    csr = x509.load_pem_x509_csr((tmp_path / "440000-gz-01.csr").read_bytes())
    assert csr_server_names(csr) == (("gz-01.gd.example",), ("10.1.2.3",))


def test_pki_issue_certifies_requested_names_only_with_server_names(ca_dir: CaDirectory, tmp_path: Path) -> None:
    request = write_node_request(tmp_path / "province", GZ, ip_addresses=["10.1.2.3"])
    passphrase_file = tmp_path / "intermediate.pass"
    passphrase_file.write_bytes(INTERMEDIATE_PASS)
    out = tmp_path / "gz.pem"

    def issue(*, server_names: bool) -> int:
        return pki_commands.pki_issue(
            request.csr_path,
            ca_dir=ca_dir.path,
            days=30,
            out=out,
            passphrase_file=passphrase_file,
            server_names=server_names,
        )

    with pytest.raises(PkiError) as refused:
        issue(server_names=False)
    assert (refused.value.reason, refused.value.field) == ("SERVER_NAMES_UNCONFIRMED", "server_names")
    assert not out.exists()

    assert issue(server_names=True) == 0
    assert _names(x509.load_pem_x509_certificate(out.read_bytes()))[2] == ["10.1.2.3"]
