"""Rotating the P2P TLS certificate: a new key pair bound to the same node identity.

Files (all in the data dir): ``certs/`` is live, ``certs.new/`` is staging, ``certs-old/<UTC
yyyymmddTHHMMSSZ>/`` keeps each replaced pair (never deleted here; ``ian prune`` keeps the
newest few). Directories are 0700, keys 0600, certificates 0644.

Steps of :func:`rotate_certificate`, each atomic and followed by an fsync of the directory:

1. write the new pair into a fresh ``certs.new/`` and check it (:func:`ian.certs.load_certificate`);
2. rename ``certs/`` to ``certs-old/<stamp>/``;
3. rename ``certs.new/`` to ``certs/``.

States an interruption can leave, and what :func:`recover_interrupted_rotation` (run first by
every rotation; the node should run it at start-up too) does with them:

=====================================  ===================================================
``certs/`` ok, ``certs.new/`` present  crashed in step 1 or before step 2: drop staging
``certs/`` missing, ``certs.new/`` ok  crashed between steps 2 and 3: finish (step 3)
``certs/`` missing, no usable staging  put the newest ``certs-old/`` pair back, if any
=====================================  ===================================================

So the data dir always ends with exactly one live pair that belongs to the identity, and an
old pair is never lost. The node does not need to stop: it reads ``certs/`` only at start and
on reload (``POST /api/v1/admin/certs/reload`` or SIGHUP).
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ian.atomic import _fsync_dir
from ian.certs import CertInfo, generate_certificate, load_certificate, write_certificate
from ian.errors import DataDirError, IdentityError
from ian.identity import Identity
from ian.storage.datadir import DataDir

__all__ = [
    "STAGING_NAME",
    "recover_interrupted_rotation",
    "renewal_due",
    "rotate_certificate",
    "staging_dir",
]

STAGING_NAME = "certs.new"


def staging_dir(datadir: DataDir) -> Path:
    return datadir.root / STAGING_NAME


def renewal_due(cert: CertInfo, now: datetime, renew_days: float) -> bool:
    """True when ``cert`` expires within ``renew_days`` of ``now`` (or already has).

    Pure; the node calls it periodically with ``settings.cert_renew_days`` and then
    :func:`rotate_certificate`.
    """
    return cert.not_after - now <= timedelta(days=renew_days)


def _valid(certs_dir: Path, identity: Identity) -> bool:
    try:
        load_certificate(certs_dir, identity, check_validity=False)
    except IdentityError:
        return False
    return True


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def _free_old_slot(old_root: Path, now: datetime) -> Path:
    base = old_root / _stamp(now)
    slot, n = base, 1
    while slot.exists():
        n += 1
        slot = old_root / f"{base.name}-{n}"
    return slot


def recover_interrupted_rotation(datadir: DataDir, identity: Identity) -> str | None:
    """Bring the certificate files back to one live pair after an interrupted rotation.

    Returns what was done (for a log line) or None when there was nothing to do. Raises
    :class:`DataDirError` when a rename fails.
    """
    live, staging = datadir.certs_dir, staging_dir(datadir)
    try:
        if live.is_dir():
            if staging.exists():
                shutil.rmtree(staging)
                _fsync_dir(datadir.root)
                return f"removed the unfinished {staging.name}/ of an interrupted rotation"
            return None
        if staging.is_dir() and _valid(staging, identity):
            staging.rename(live)
            _fsync_dir(datadir.root)
            return f"finished an interrupted rotation: {staging.name}/ is now certs/"
        old_root = datadir.certs_old_dir
        if old_root.is_dir():
            for slot in sorted((p for p in old_root.iterdir() if p.is_dir()), reverse=True):
                if _valid(slot, identity):
                    if staging.exists():
                        shutil.rmtree(staging)
                    slot.rename(live)
                    _fsync_dir(old_root)
                    _fsync_dir(datadir.root)
                    return f"put back the previous certificate pair from {slot}"
    except OSError as exc:
        raise DataDirError(
            f"cannot repair the certificate files in {datadir.root}: {exc.strerror or exc}",
            fix=f"check owner/permissions of {datadir.root}",
        ) from None
    return None


def rotate_certificate(
    datadir: DataDir, identity: Identity, valid_days: int, *, now: datetime | None = None
) -> CertInfo:
    """Issue a new TLS pair for ``identity`` and make it live; the old pair goes to certs-old/.

    Durable when this returns. Callers serialise rotations (the CLI holds the data dir's
    exclusive maintenance lock; the node rotates from one task). Raises :class:`DataDirError`
    on I/O failure, leaving a state :func:`recover_interrupted_rotation` repairs.
    """
    now = now or datetime.now(UTC)
    recover_interrupted_rotation(datadir, identity)
    staging = staging_dir(datadir)
    cert_pem, key_pem = generate_certificate(identity, valid_days=valid_days, now=now)
    try:
        staging.mkdir(mode=0o700)
        write_certificate(staging, cert_pem, key_pem)
        info = load_certificate(staging, identity, now=now)
        _fsync_dir(datadir.root)
        if datadir.certs_dir.is_dir():
            old_root = datadir.certs_old_dir
            old_root.mkdir(mode=0o700, exist_ok=True)
            old_root.chmod(0o700)
            slot = _free_old_slot(old_root, now)
            datadir.certs_dir.rename(slot)
            _fsync_dir(old_root)
        staging.rename(datadir.certs_dir)
        _fsync_dir(datadir.root)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if datadir.certs_dir.is_dir() and staging.exists():
                shutil.rmtree(staging)
        raise DataDirError(
            f"certificate rotation in {datadir.root} failed: {exc.strerror or exc}",
            fix="free space / fix permissions, then run `ian certs rotate` again "
            "(it repairs an interrupted rotation first)",
        ) from None
    return info
