"""Revocation and expiry are enforced on every call, not only at the TLS handshake."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway import errors
from gateway.client import HubClient
from gateway.domain.model import Purpose
from pki import CertificateAuthority, DemoPki, NodeIdentity, TlsMaterial, generate_key
from pki.operator import RevokedEntry, write_public_pem

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SOME_ID = "11010519491231002X"


def write_crl(path: Path, ca: CertificateAuthority, serials: list[int], number: int) -> None:
    now = dt.datetime.now(dt.UTC)
    entries = [RevokedEntry(serial, now) for serial in serials]
    crl = ca.sign_crl(entries, crl_number=number, next_update=dt.timedelta(days=1))
    write_public_pem(path, crl.public_bytes(serialization.Encoding.PEM), field="crl", overwrite=True)


def serial_of(tls: TlsMaterial) -> int:
    return x509.load_pem_x509_certificate(tls.cert_chain_pem).serial_number


async def refused_within(client: HubClient, seconds: float) -> errors.HutongError:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            await client.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)
        except errors.HutongError as exc:
            return exc
        assert asyncio.get_running_loop().time() < deadline, "still served after the CRL was published"
        await asyncio.sleep(0.1)


async def test_a_revoked_node_is_cut_off_within_seconds_without_a_restart(
    hub_factory: Any, client_for: Callable[..., Any], demo_pki: DemoPki, tmp_path: Path
) -> None:
    crl = tmp_path / "crl.pem"
    write_crl(crl, demo_pki.ca, [], number=1)
    hub = await hub_factory(crl_path=crl, crl_poll_seconds=0.2)
    gz: HubClient = client_for(GZ, port=hub.port)
    zz: HubClient = client_for(ZZ, port=hub.port)
    await gz.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)  # the connection is up and trusted

    write_crl(crl, demo_pki.ca, [serial_of(demo_pki.nodes[GZ].tls)], number=2)
    refusal = await refused_within(gz, seconds=5)
    assert refusal.reason == "CLIENT_CERTIFICATE_REVOKED"
    assert refusal.code_name == "UNAUTHENTICATED"
    # Other nodes are untouched.
    await zz.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)


async def test_a_crl_not_signed_by_the_ca_is_ignored_and_the_previous_one_stays(
    hub_factory: Any, client_for: Callable[..., Any], demo_pki: DemoPki, tmp_path: Path
) -> None:
    crl = tmp_path / "crl.pem"
    write_crl(crl, demo_pki.ca, [serial_of(demo_pki.nodes[GZ].tls)], number=1)
    hub = await hub_factory(crl_path=crl, crl_poll_seconds=0.1)
    common_name = demo_pki.ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    forger = CertificateAuthority.create(common_name=str(common_name))
    assert forger.cert.subject == demo_pki.ca.cert.subject  # same name, other key: only the signature tells
    write_crl(crl, forger, [], number=2)
    await asyncio.sleep(0.5)
    gz: HubClient = client_for(GZ, port=hub.port)
    refusal = await refused_within(gz, seconds=1)
    assert refusal.reason == "CLIENT_CERTIFICATE_REVOKED"
    assert hub.revocations is not None
    assert hub.revocations.crl_number == 1


async def test_a_hub_refuses_to_start_with_an_unverifiable_crl(
    hub_factory: Any, demo_pki: DemoPki, tmp_path: Path
) -> None:
    crl = tmp_path / "crl.pem"
    write_crl(crl, CertificateAuthority.create(), [], number=1)
    with pytest.raises(errors.ConfigError) as refused:
        await hub_factory(crl_path=crl)
    assert refused.value.reason == "CRL_INVALID"


async def test_a_certificate_that_expires_on_an_open_connection_is_refused_from_then_on(
    hub: Any, client_for: Callable[..., Any], demo_pki: DemoPki
) -> None:
    key = generate_key()
    identity = NodeIdentity("440000", "short-lived")
    cert = demo_pki.ca.issue_node_certificate(identity, key.public_key(), valid_days=1)
    # Re-sign the same certificate with a validity that ends in two seconds.
    now = dt.datetime.now(dt.UTC)
    short = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(seconds=2))
    )
    for extension in cert.extensions:
        short = short.add_extension(extension.value, critical=extension.critical)
    signed = short.sign(demo_pki.ca.key, hashes.SHA256())
    tls = TlsMaterial.from_objects([signed], key, [demo_pki.ca.cert])
    client: HubClient = client_for(tls=tls)
    await client.check_enrollment(SOME_ID, Purpose.DUPLICATE_CHECK)
    await asyncio.sleep(2.5)
    refusal = await refused_within(client, seconds=2)
    assert refusal.reason == "CLIENT_CERTIFICATE_EXPIRED"
