from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from ian.certs import (
    IDENTITY_EXTENSION_OID,
    generate_certificate,
    load_certificate,
    verify_node_certificate,
    write_certificate,
)
from ian.errors import IdentityError
from ian.identity import Identity

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_certificate_shape() -> None:
    identity = Identity.generate()
    cert_pem, key_pem = generate_certificate(identity, valid_days=30, now=NOW)
    cert = _cert(cert_pem)
    cn = f"node-{identity.node_id}"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"node-{identity.node_id[:16]}.ian.local"]
    ext = cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    assert not ext.critical
    assert ext.value.value == b"\x04\x20" + identity.public_key
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)
    assert cert.not_valid_before_utc <= NOW
    # The identity key signed it; the subject key is the separate TLS key from key_pem.
    Ed25519PublicKey.from_public_bytes(identity.public_key).verify(
        cert.signature, cert.tbs_certificate_bytes
    )
    tls_key = serialization.load_pem_private_key(key_pem, password=None)
    assert tls_key.public_key() == cert.public_key()
    assert cert.public_key() != identity.private_key.public_key()
    assert b"BEGIN PRIVATE KEY" in key_pem  # PKCS#8, unencrypted


def test_serials_and_keys_differ_per_certificate() -> None:
    identity = Identity.generate()
    a, b = (_cert(generate_certificate(identity, now=NOW)[0]) for _ in range(2))
    assert a.serial_number != b.serial_number
    assert a.public_key() != b.public_key()


def test_verify_accepts_pem_and_der() -> None:
    identity = Identity.generate()
    cert_pem, key_pem = generate_certificate(identity, now=NOW)
    der = _cert(cert_pem).public_bytes(serialization.Encoding.DER)
    for data in (cert_pem, der):
        info = verify_node_certificate(data, expected_node_id=identity.node_id, now=NOW)
        assert info.node_id == identity.node_id
        assert info.subject == f"CN=node-{identity.node_id}"
        assert info.san == f"node-{identity.node_id[:16]}.ian.local"
        assert len(info.fingerprint_sha256) == 64
        assert info.days_left(NOW) == pytest.approx(365)
        assert info.not_after.tzinfo is not None
    tls_key = serialization.load_pem_private_key(key_pem, password=None)
    assert info.tls_public_key == tls_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_wrong_expected_node_id_rejected() -> None:
    cert_pem, _ = generate_certificate(Identity.generate(), now=NOW)
    other = Identity.generate().node_id
    with pytest.raises(IdentityError, match=f"expected {other}"):
        verify_node_certificate(cert_pem, expected_node_id=other, now=NOW)


def test_forged_certificate_claiming_victim_id_rejected() -> None:
    """An attacker copies the victim's identity key into the extension but signs with its own."""
    victim, attacker = Identity.generate(), Identity.generate()
    genuine = _cert(generate_certificate(victim, now=NOW)[0])
    forged = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(attacker.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
    )
    for ext in genuine.extensions:
        if not isinstance(ext.value, x509.SubjectKeyIdentifier | x509.AuthorityKeyIdentifier):
            forged = forged.add_extension(ext.value, ext.critical)
    pem = forged.sign(attacker.private_key, None).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError, match="not signed by the identity key"):
        verify_node_certificate(pem, expected_node_id=victim.node_id, now=NOW)


def test_certificate_without_identity_extension_rejected() -> None:
    identity = Identity.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node-{identity.node_id}")])
    plain = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(identity.private_key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(IdentityError, match="no IAN identity key extension"):
        verify_node_certificate(plain, now=NOW)


def test_expired_and_not_yet_valid_rejected() -> None:
    cert_pem, _ = generate_certificate(Identity.generate(), valid_days=10, now=NOW)
    with pytest.raises(IdentityError, match="expired on"):
        verify_node_certificate(cert_pem, now=NOW + timedelta(days=11))
    with pytest.raises(IdentityError, match="not valid before"):
        verify_node_certificate(cert_pem, now=NOW - timedelta(hours=1))
    info = verify_node_certificate(cert_pem, now=NOW + timedelta(days=11), check_validity=False)
    assert info.days_left(NOW + timedelta(days=11)) == pytest.approx(-1)


@pytest.mark.parametrize("garbage", [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n", b"\x30\x03abc"])
def test_garbage_rejected(garbage: bytes) -> None:
    with pytest.raises(IdentityError, match="cannot be parsed"):
        verify_node_certificate(garbage)


def test_write_and_load(tmp_path: Path) -> None:
    identity = Identity.generate()
    certs = tmp_path / "certs"
    write_certificate(certs, *generate_certificate(identity))
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert stat.S_IMODE((certs / "node_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((certs / "node_cert.pem").stat().st_mode) == 0o644
    info = load_certificate(certs, identity)
    assert info.node_id == identity.node_id
    assert sorted(p.name for p in certs.iterdir()) == ["node_cert.pem", "node_key.pem"]


def test_load_rejects_readable_key(tmp_path: Path) -> None:
    identity = Identity.generate()
    write_certificate(tmp_path, *generate_certificate(identity))
    (tmp_path / "node_key.pem").chmod(0o644)
    with pytest.raises(IdentityError) as info:
        load_certificate(tmp_path, identity)
    assert info.value.fix == f"chmod 600 {tmp_path / 'node_key.pem'}"


def test_load_rejects_mismatched_key(tmp_path: Path) -> None:
    identity = Identity.generate()
    cert_pem, _ = generate_certificate(identity)
    _, other_key = generate_certificate(identity)
    write_certificate(tmp_path, cert_pem, other_key)
    with pytest.raises(IdentityError, match="does not match"):
        load_certificate(tmp_path, identity)


def test_load_rejects_certificate_of_other_identity(tmp_path: Path) -> None:
    write_certificate(tmp_path, *generate_certificate(Identity.generate()))
    with pytest.raises(IdentityError, match=r"node_cert\.pem: certificate belongs to node") as info:
        load_certificate(tmp_path, Identity.generate())
    assert "ian certs rotate" in (info.value.fix or "")


def test_load_missing_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"node_cert\.pem is missing"):
        load_certificate(tmp_path, Identity.generate())
