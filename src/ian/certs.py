"""The P2P TLS certificate, bound to the node identity.

Design:

- ``certs/node_key.pem`` is a *separate* Ed25519 key pair used only for TLS, so ``ian certs
  rotate`` can issue a new pair without changing the node identity.
- ``certs/node_cert.pem`` is an X.509 v3 certificate whose subject public key is that TLS key. It
  is **signed by the node's Ed25519 identity key** and **carries the identity public key** in a
  non-critical extension, so a peer needs no CA: it reads the identity key from the extension,
  derives the node id (sha256(key)[:20] hex), and checks the certificate signature with that key.
- Identity extension: OID ``2.25.156649005793251163510347268006538818568`` (a UUID-derived OID
  under the registration-free ``2.25`` arc, ITU-T X.667, so no enterprise number is squatted).
  Its ``extnValue`` is the DER ``OCTET STRING`` holding the raw 32-byte identity public key
  (``04 20 <key>``).
- Subject and issuer CN ``node-<node_id>``; SAN ``DNS:node-<first 16 hex of node_id>.ian.local``;
  random 159-bit serial; not-before back-dated a few minutes to tolerate peer clock skew;
  BasicConstraints CA=false, KeyUsage digitalSignature, ExtendedKeyUsage serverAuth+clientAuth.

:func:`verify_node_certificate` is what the P2P layer calls on a peer's certificate after the
TLS handshake; :func:`load_certificate` checks this node's own pair.
"""

from __future__ import annotations

import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from ian.atomic import atomic_write_bytes
from ian.errors import IdentityError
from ian.identity import Identity, node_id_for

__all__ = [
    "CERT_FILENAME",
    "IDENTITY_EXTENSION_OID",
    "KEY_FILENAME",
    "CertInfo",
    "cert_doc",
    "generate_certificate",
    "load_certificate",
    "node_common_name",
    "node_san",
    "verify_node_certificate",
    "write_certificate",
]

CERT_FILENAME = "node_cert.pem"
KEY_FILENAME = "node_key.pem"
IDENTITY_EXTENSION_OID = x509.ObjectIdentifier("2.25.156649005793251163510347268006538818568")
_OCTET_STRING_32 = b"\x04\x20"
_BACKDATE = timedelta(minutes=5)
_ROTATE_FIX = "run `ian certs rotate` to issue a new certificate for this identity"


def node_common_name(node_id: str) -> str:
    """Subject/issuer CN of a node certificate."""
    return f"node-{node_id}"


def node_san(node_id: str) -> str:
    """The DNS SAN of a node certificate."""
    return f"node-{node_id[:16]}.ian.local"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class CertInfo:
    """What a verified node certificate says. Datetimes are timezone-aware (UTC)."""

    node_id: str
    subject: str
    san: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    tls_public_key: bytes

    def days_left(self, now: datetime | None = None) -> float:
        """Days until expiry (negative once expired)."""
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400


def generate_certificate(
    identity: Identity, *, valid_days: int = 365, now: datetime | None = None
) -> tuple[bytes, bytes]:
    """Create a new TLS key pair and its certificate signed by ``identity``.

    Returns ``(cert_pem, key_pem)``; the key is unencrypted PKCS#8 PEM.
    """
    if valid_days < 1:
        raise ValueError("valid_days must be at least 1")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    tls_key = Ed25519PrivateKey.generate()
    identity_public = identity.private_key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_common_name(identity.node_id))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(node_san(identity.node_id))]),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(identity_public), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(
                IDENTITY_EXTENSION_OID, _OCTET_STRING_32 + identity.public_key
            ),
            critical=False,
        )
    )
    cert = builder.sign(private_key=identity.private_key, algorithm=None)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = tls_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def write_certificate(certs_dir: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Write the pair into ``certs_dir`` (made 0700): key first (0600), then cert (0644)."""
    certs_dir = Path(certs_dir)
    certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    certs_dir.chmod(0o700)
    atomic_write_bytes(certs_dir / KEY_FILENAME, key_pem, mode=0o600)
    atomic_write_bytes(certs_dir / CERT_FILENAME, cert_pem, mode=0o644)


def _parse(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"certificate cannot be parsed: {exc}") from exc


def _identity_key(cert: x509.Certificate) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise IdentityError("certificate carries no IAN identity key extension") from exc
    except ValueError as exc:  # malformed or duplicated extensions
        raise IdentityError(f"certificate extensions cannot be parsed: {exc}") from exc
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(raw) != 34 or not raw.startswith(_OCTET_STRING_32):
        raise IdentityError("certificate identity key extension is malformed")
    return raw[2:]


def _common_names(name: x509.Name) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def verify_node_certificate(
    cert_der_or_pem: bytes,
    *,
    expected_node_id: str | None = None,
    now: datetime | None = None,
    check_validity: bool = True,
) -> CertInfo:
    """Verify a node certificate (PEM or DER) without any CA and describe it.

    Checks: Ed25519 subject key; Ed25519 signature made by the identity key carried in the
    certificate; subject/issuer CN and SAN naming the node id derived from that key; the validity
    window at ``now`` (unless ``check_validity`` is false); ``expected_node_id`` when given.
    Raises :class:`IdentityError` saying which check failed.
    """
    cert = _parse(cert_der_or_pem)
    try:
        subject_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"certificate public key cannot be read: {exc}") from exc
    if not isinstance(subject_key, Ed25519PublicKey):
        raise IdentityError("certificate key is not an Ed25519 key")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
        raise IdentityError("certificate is not signed with Ed25519")

    identity_raw = _identity_key(cert)
    node_id = node_id_for(identity_raw)
    try:
        Ed25519PublicKey.from_public_bytes(identity_raw).verify(
            cert.signature, cert.tbs_certificate_bytes
        )
    except (InvalidSignature, ValueError) as exc:
        raise IdentityError(
            f"certificate is not signed by the identity key of node {node_id}"
        ) from exc

    expected_cn = node_common_name(node_id)
    if _common_names(cert.subject) != [expected_cn]:
        raise IdentityError(
            f"certificate subject {cert.subject.rfc4514_string()!r} is not {expected_cn}"
        )
    if _common_names(cert.issuer) != [expected_cn]:
        raise IdentityError(
            f"certificate issuer {cert.issuer.rfc4514_string()!r} is not {expected_cn}"
        )
    san = node_san(node_id)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("certificate has no subjectAltName") from exc
    if san not in names.get_values_for_type(x509.DNSName):
        raise IdentityError(f"certificate subjectAltName does not contain {san}")

    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if check_validity:
        now = now or datetime.now(UTC)
        if now < not_before:
            raise IdentityError(
                f"certificate of node {node_id} is not valid before {not_before.isoformat()}"
            )
        if now > not_after:
            raise IdentityError(f"certificate of node {node_id} expired on {not_after.isoformat()}")
    if expected_node_id is not None and node_id != expected_node_id:
        raise IdentityError(f"certificate belongs to node {node_id}, expected {expected_node_id}")

    return CertInfo(
        node_id=node_id,
        subject=cert.subject.rfc4514_string(),
        san=san,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=not_before,
        not_after=not_after,
        tls_public_key=_raw(subject_key),
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise IdentityError(f"{path} is missing", fix=_ROTATE_FIX) from exc
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {exc.strerror or exc}", fix=f"check owner/permissions of {path}"
        ) from exc


def load_certificate(
    certs_dir: Path,
    identity: Identity,
    *,
    now: datetime | None = None,
    check_validity: bool = True,
) -> CertInfo:
    """Load and check this node's certificate pair from ``certs_dir``.

    Checks the key file is not accessible by group/others, that the key matches the certificate,
    and that the certificate verifies for ``identity`` (see :func:`verify_node_certificate`).
    Raises :class:`IdentityError` naming the file and the fix.
    """
    certs_dir = Path(certs_dir)
    cert_path, key_path = certs_dir / CERT_FILENAME, certs_dir / KEY_FILENAME
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{key_path} is accessible by group/others (mode {mode:04o})",
            fix=f"chmod 600 {key_path}",
        )
    try:
        info = verify_node_certificate(
            cert_pem,
            expected_node_id=identity.node_id,
            now=now,
            check_validity=check_validity,
        )
    except IdentityError as exc:
        raise IdentityError(f"{cert_path}: {exc.message}", fix=_ROTATE_FIX) from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"{key_path} is not a readable private key", fix=_ROTATE_FIX) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{key_path} is not an Ed25519 key", fix=_ROTATE_FIX)
    if _raw(key.public_key()) != info.tls_public_key:
        raise IdentityError(f"{key_path} does not match {cert_path}", fix=_ROTATE_FIX)
    return info


def cert_doc(info: CertInfo) -> dict[str, object]:
    """The JSON form of a certificate description (also what ``ian certs show --json`` prints)."""
    return {
        "node_id": info.node_id,
        "subject": info.subject,
        "san": info.san,
        "fingerprint_sha256": info.fingerprint_sha256,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "days_left": round(info.days_left(), 2),
    }
