"""The data directory: where every file lives, idempotent initialisation, permission checks.

See ARCHITECTURE.md §3 for the layout. :func:`init_data_dir` only ever creates what is missing
and validates what exists; it never replaces an identity. It does not take ``node.lock``: the
caller (``ian node init`` or the node at start-up) decides whether it needs the lock.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ian.atomic import atomic_write_bytes
from ian.certs import (
    CERT_FILENAME,
    KEY_FILENAME,
    CertInfo,
    generate_certificate,
    load_certificate,
    write_certificate,
)
from ian.errors import DataDirError, IdentityError
from ian.identity import Identity, load_identity, save_identity

if TYPE_CHECKING:
    from ian.chain.genesis import Genesis

__all__ = [
    "DataDir",
    "InitResult",
    "check_permissions",
    "init_data_dir",
    "read_api_token",
]


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data directory; no I/O."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.json"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def cert_file(self) -> Path:
        return self.certs_dir / CERT_FILENAME

    @property
    def key_file(self) -> Path:
        return self.certs_dir / KEY_FILENAME

    @property
    def certs_old_dir(self) -> Path:
        return self.root / "certs-old"

    @property
    def node_state_file(self) -> Path:
        return self.root / "node_state.json"

    @property
    def genesis_file(self) -> Path:
        return self.root / "genesis.json"

    @property
    def peer_scores_file(self) -> Path:
        return self.root / "peer_scores.json"

    @property
    def store_file(self) -> Path:
        return self.root / "chain.sqlite"

    @property
    def consensus_file(self) -> Path:
        """The consensus log of a network of several authorities (``ian.consensus``)."""
        return self.root / "consensus.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "node.lock"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def api_token_file(self) -> Path:
        return self.root / "api_token"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"


@dataclass(frozen=True)
class InitResult:
    """Outcome of :func:`init_data_dir`; ``created`` lists paths relative to the root
    (``"."`` for the directory itself), empty when everything already existed."""

    datadir: DataDir
    identity: Identity
    cert: CertInfo
    created: list[str] = field(default_factory=list)


def _check_root(root: Path) -> bool:
    """Validate ``root``; create it 0700 when missing. Returns True when it was created."""
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise DataDirError(
                f"data dir {root} exists and is not a directory",
                fix="point IAN_DATA_DIR/--data-dir at a directory",
            )
        if not os.access(root, os.W_OK | os.X_OK):
            raise DataDirError(
                f"data dir {root} is not writable by uid {os.geteuid()}",
                fix=f"chown -R {os.geteuid()} {root}, or run as its owner",
            )
        return False
    try:
        root.mkdir(mode=0o700, parents=True)
        root.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise DataDirError(
            f"cannot create data dir {root}: {exc.strerror or exc}",
            fix=f"check owner/permissions of {root.parent}",
        ) from exc
    return True


def init_data_dir(root: Path, *, cert_valid_days: int = 365) -> InitResult:
    """Create whatever is missing in the data dir and validate what exists.

    Creates the directory (0700), identity.json (0600), certs/ (0700) with a new certificate pair,
    and api_token (0600). Existing files are loaded and checked, never overwritten. Raises
    :class:`DataDirError` (or its subclasses) when the directory or an existing file is unusable.
    """
    datadir = DataDir(Path(root))
    created: list[str] = []
    if _check_root(datadir.root):
        created.append(".")

    if datadir.identity_file.exists():
        identity = load_identity(datadir.identity_file)
    else:
        identity = Identity.generate()
        save_identity(identity, datadir.identity_file)
        created.append("identity.json")

    if not datadir.certs_dir.exists():
        datadir.certs_dir.mkdir(mode=0o700)
        datadir.certs_dir.chmod(0o700)
        created.append("certs/")
    have_cert, have_key = datadir.cert_file.exists(), datadir.key_file.exists()
    if not have_cert and not have_key:
        cert_pem, key_pem = generate_certificate(identity, valid_days=cert_valid_days)
        write_certificate(datadir.certs_dir, cert_pem, key_pem)
        created += [f"certs/{KEY_FILENAME}", f"certs/{CERT_FILENAME}"]
    elif have_cert != have_key:
        missing = datadir.key_file if not have_key else datadir.cert_file
        raise IdentityError(
            f"{missing} is missing but its pair exists",
            fix="run `ian certs rotate` to issue a new certificate pair",
        )
    cert = load_certificate(datadir.certs_dir, identity)

    if not datadir.api_token_file.exists():
        token = secrets.token_urlsafe(32)
        atomic_write_bytes(datadir.api_token_file, f"{token}\n".encode("ascii"), mode=0o600)
        created.append("api_token")

    return InitResult(datadir=datadir, identity=identity, cert=cert, created=created)


def read_genesis(datadir: DataDir) -> Genesis | None:
    """The genesis this data dir has pinned, or None before its node first started. Raises
    :class:`ian.errors.GenesisError` when the file is there but unreadable or invalid."""
    from ian.chain.genesis import Genesis

    path = datadir.genesis_file
    if not path.exists():
        return None
    return Genesis.read(path)


def read_api_token(datadir: DataDir) -> str | None:
    """The admin token from ``api_token``, or None when the file is missing or empty."""
    try:
        token = datadir.api_token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(
            f"cannot read {datadir.api_token_file}: {exc.strerror or exc}",
            fix=f"check owner/permissions of {datadir.api_token_file}",
        ) from exc
    return token or None


def check_permissions(datadir: DataDir) -> list[str]:
    """Human-readable ownership/permission problems (each with its fix); empty when all is well.

    Checks that the root and everything in it (and in certs/) belongs to the current user, that
    certs/ is 0700, and that identity.json, certs/node_key.pem and api_token are not accessible
    by group/others. Missing files are not reported here.
    """
    problems: list[str] = []
    uid = os.geteuid()

    def examine(path: Path) -> os.stat_result | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if st.st_uid != uid:
            problems.append(
                f"{path} is owned by uid {st.st_uid}, but the node runs as uid {uid} "
                f"(fix: chown -R {uid} {datadir.root})"
            )
        return st

    if examine(datadir.root) is None:
        return [f"data dir {datadir.root} does not exist (fix: ian node init)"]
    for child in sorted(datadir.root.iterdir()):
        examine(child)
    if datadir.certs_dir.is_dir():
        mode = stat.S_IMODE(datadir.certs_dir.stat().st_mode)
        if mode != 0o700:
            problems.append(
                f"{datadir.certs_dir} has mode {mode:04o}, expected 0700 "
                f"(fix: chmod 700 {datadir.certs_dir})"
            )
        for child in sorted(datadir.certs_dir.iterdir()):
            examine(child)

    for secret in (datadir.identity_file, datadir.key_file, datadir.api_token_file):
        try:
            mode = stat.S_IMODE(secret.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            problems.append(
                f"{secret} has mode {mode:04o}, expected 0600 (fix: chmod 600 {secret})"
            )
    return problems
