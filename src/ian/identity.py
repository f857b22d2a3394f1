"""The node identity: an Ed25519 key pair and the node id derived from it.

``identity.json`` (mode 0600) holds exactly::

    {"node_id": "<40 hex>", "public_key": "<base64 raw 32 bytes>", "private_key": "<base64 raw 32>"}

``node_id`` is the first 20 bytes of sha256(raw public key) as lowercase hex, so anyone holding a
public key can check the id it claims. The identity never changes for the life of a node: losing
the file means becoming a new node, which is why nothing here ever overwrites it silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ian.atomic import atomic_write_json, read_json
from ian.errors import CorruptFileError, IdentityError

__all__ = [
    "IDENTITY_KEYS",
    "Identity",
    "load_identity",
    "node_id_for",
    "save_identity",
    "verify_signature",
]

IDENTITY_KEYS = ("node_id", "public_key", "private_key")
KEY_SIZE = 32

_RECOVERY = (
    "restore identity.json from a backup (`ian restore ARCHIVE`); deleting it makes "
    "`ian node init` create a NEW node identity"
)


def node_id_for(public_key_raw: bytes) -> str:
    """Node id of a raw 32-byte Ed25519 public key: sha256(key)[:20] as 40 lowercase hex."""
    return hashlib.sha256(public_key_raw).digest()[:20].hex()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Identity:
    """A node's Ed25519 identity. ``public_key`` is the raw 32-byte key."""

    node_id: str
    public_key: bytes
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Identity:
        """Build the identity (public key and node id) belonging to ``private_key``."""
        public = _raw_public(private_key.public_key())
        return cls(node_id=node_id_for(public), public_key=public, private_key=private_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    def private_key_raw(self) -> bytes:
        """The raw 32-byte private key (secret)."""
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``data``."""
        return self.private_key.sign(data)

    def to_json(self) -> dict[str, str]:
        """The identity.json object (contains the private key)."""
        return {
            "node_id": self.node_id,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "private_key": base64.b64encode(self.private_key_raw()).decode("ascii"),
        }


def verify_signature(public_key_raw: bytes, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key_raw``.

    Never raises: malformed keys or signatures are simply invalid.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def save_identity(identity: Identity, path: Path, *, overwrite: bool = False) -> None:
    """Write identity.json atomically with mode 0600.

    Refuses (:class:`IdentityError`) to replace an existing file unless ``overwrite`` is set, even
    when another process creates it concurrently.
    """
    path = Path(path)
    try:
        atomic_write_json(path, identity.to_json(), mode=0o600, exclusive=not overwrite)
    except FileExistsError as exc:
        raise IdentityError(
            f"{path} already exists; refusing to overwrite the node identity",
            fix="keep the existing identity, or move it aside first to really replace it",
        ) from exc


def _decode_key(path: Path, doc: dict[str, Any], name: str) -> bytes:
    value = doc[name]
    if not isinstance(value, str):
        raise CorruptFileError(f"{path} is corrupt: {name} is not a string", fix=_RECOVERY)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CorruptFileError(
            f"{path} is corrupt: {name} is not valid base64", fix=_RECOVERY
        ) from exc
    if len(raw) != KEY_SIZE:
        raise CorruptFileError(
            f"{path} is corrupt: {name} is {len(raw)} bytes, expected {KEY_SIZE}", fix=_RECOVERY
        )
    return raw


def load_identity(path: Path) -> Identity:
    """Load and fully validate identity.json.

    Raises :class:`IdentityError` when the file is missing, accessible by group/others, or its
    keys and node id do not belong together; :class:`CorruptFileError` when it is not a JSON
    object with the three base64 32-byte fields.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise IdentityError(
            f"{path} does not exist", fix="run `ian node init`, or restore it from a backup"
        ) from exc
    # Group/other write access is as unsafe as read access: it lets someone swap the identity.
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise IdentityError(
            f"{path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o})",
            fix=f"chmod 600 {path}",
        )
    doc = read_json(path, recovery=_RECOVERY)
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{path} is corrupt: not a JSON object", fix=_RECOVERY)
    missing = [key for key in IDENTITY_KEYS if key not in doc]
    if missing:
        raise CorruptFileError(f"{path} is corrupt: missing {', '.join(missing)}", fix=_RECOVERY)
    public_raw = _decode_key(path, doc, "public_key")
    private_raw = _decode_key(path, doc, "private_key")
    private_key = Ed25519PrivateKey.from_private_bytes(private_raw)
    if _raw_public(private_key.public_key()) != public_raw:
        raise IdentityError(
            f"{path.name}: private_key does not match public_key",
            fix=f"the file was edited or mixed up; {_RECOVERY}",
        )
    if doc["node_id"] != node_id_for(public_raw):
        raise IdentityError(
            f"{path.name}: node_id does not match public_key",
            fix=f"the file was edited or mixed up; {_RECOVERY}",
        )
    return Identity(node_id=doc["node_id"], public_key=public_raw, private_key=private_key)
