"""Restoring a data directory from an ``ian backup`` archive, atomically and reversibly.

Sequence (each step either completes or leaves the original data dir untouched):

1. Refuse while a node holds ``<data-dir>/node.lock`` (:class:`NodeLockedError` naming the pid);
   otherwise take that lock and the exclusive maintenance lock and hold them to the end.
2. Stream the archive once into the staging directory ``<data-dir>.restore-tmp`` (a sibling, so
   the final rename stays on one file system), checking every member before writing it and its
   SHA-256 while writing (see :func:`ian.backup.read_archive`). Unsafe archives (absolute paths,
   ``..``, links, devices/FIFOs, unlisted members, checksum mismatch, truncation, newer format or
   schema) are refused before anything of theirs is written; nothing is written outside staging.
3. Quick root check of the staged store (:func:`ian.recovery.load_chain_state`) against the
   manifest's height, head and per-goal roots; the identity inside must be the manifest's node,
   and must equal the existing data dir's identity unless ``force``.
4. ``node_state.json`` is deliberately **not** restored: without it the node replays and fully
   verifies the whole store on its first start (the documented behaviour of a missing state
   file), which is what a restore after suspected corruption needs. The archived copy is still
   checksummed. ``api_token`` and ``backup_state.json`` are carried over from the data dir being
   replaced, so the operator's token keeps working.
5. Every staged file and directory is fsynced; then the current data dir is renamed to
   ``<data-dir>.pre-restore-<UTC yyyymmddTHHMMSSZ>`` (never deleted: ``ian prune`` ages these
   out) and staging renamed into place; the parent directory is fsynced. If the second rename
   fails, the first is undone. ``backups/`` is then moved from the old directory into the new
   one (the archives are not part of the node's state).

On any failure before step 5 the staging directory is removed and the data dir is as it was.
After step 5 the node starts with the archived roots and resyncs the rest from its peers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ian.atomic import _fsync_dir
from ian.backup import (
    STORE_NAME,
    ArchiveError,
    FileEntry,
    Manifest,
    Progress,
    compare_roots,
    maintenance_lock,
    read_archive,
    snapshot_roots,
)
from ian.errors import CorruptFileError, DataDirError, IdentityError, StoreError
from ian.lock import NodeLock

__all__ = ["SKIPPED_ON_RESTORE", "RestorePlan", "restore_archive", "staging_dir"]

#: archived files that are checked but not put back (see the module docstring)
SKIPPED_ON_RESTORE = frozenset({"node_state.json"})
#: files of the replaced data dir that the restored one keeps
CARRIED_OVER = ("api_token", "backup_state.json")
_SECRET = frozenset({"identity.json", "certs/node_key.pem", "api_token"})


def staging_dir(target: Path) -> Path:
    return target.with_name(target.name + ".restore-tmp")


def aside_dir(target: Path, now: datetime) -> Path:
    return target.with_name(f"{target.name}.pre-restore-{now.strftime('%Y%m%dT%H%M%SZ')}")


@dataclass
class RestorePlan:
    """What a restore does (or did): ``aside`` is None when there was no data dir to keep."""

    archive: Path
    target: Path
    aside: Path | None
    manifest: Manifest
    existing_node_id: str | None
    dry_run: bool
    done: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "data_dir": str(self.target),
            "moved_aside_to": str(self.aside) if self.aside else None,
            "node_id": self.manifest.node_id,
            "existing_node_id": self.existing_node_id,
            "height": self.manifest.height,
            "head_hash": self.manifest.head_hash,
            "goals": self.manifest.goals,
            "dry_run": self.dry_run,
            "restored": self.done,
            "node_state": "omitted: the node fully re-verifies the store on its next start",
        }


def _existing_node_id(target: Path) -> str | None:
    """Node id of the data dir being replaced; None when it has no identity.json."""
    from ian.atomic import read_json

    path = target / "identity.json"
    try:
        doc = read_json(path, recovery="")
    except FileNotFoundError:
        return None
    except (CorruptFileError, DataDirError):
        return "unreadable"
    return str(doc.get("node_id")) if isinstance(doc, dict) else "unreadable"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Stager:
    """Creates staged files (exclusive, no symlink following) below one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: set[Path] = {root}

    def open(self, entry: FileEntry) -> BinaryIO | None:
        if entry.name in SKIPPED_ON_RESTORE:
            return None
        path = self.root / entry.name
        parent = path.parent
        mode = 0o600 if entry.name in _SECRET else 0o644
        try:
            if parent not in self.dirs:
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                parent.chmod(0o700)
                self.dirs.add(parent)
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
            )
            os.fchmod(fd, mode)
        except OSError as exc:
            raise DataDirError(
                f"cannot create {path}: {exc.strerror or exc}",
                fix=f"check free space and permissions of {self.root.parent}",
            ) from None
        return _SyncedFile(fd)


class _SyncedFile:
    """A write-only file that is fsynced when closed."""

    def __init__(self, fd: int) -> None:
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()


def restore_archive(
    archive: Path,
    target: Path,
    *,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[RestorePlan], bool] | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> RestorePlan:
    """Verify ``archive`` and restore it as the data dir ``target`` (see the module docstring).

    ``dry_run`` does every check (extracting into staging, then removing it) and changes
    nothing. ``confirm(plan)`` is asked after all checks pass and before anything is moved;
    returning False aborts with nothing changed (``plan.done`` stays False). Raises
    :class:`NodeLockedError`, :class:`ArchiveError`, :class:`SchemaError`,
    :class:`IdentityError` (another node's archive without ``force``), :class:`StoreError`
    (roots do not match) or :class:`DataDirError` (I/O, disk full).
    """
    archive = Path(archive).resolve()
    target = Path(target).absolute()
    when = now or datetime.now(UTC)
    if target.exists() and not target.is_dir():
        raise DataDirError(
            f"data dir {target} exists and is not a directory", fix="check --data-dir"
        )
    parent = target.parent
    if not parent.is_dir():
        raise DataDirError(
            f"parent directory {parent} does not exist", fix=f"create it: mkdir -p {parent}"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"{parent} is not writable: a restore stages its files next to {target.name}",
            fix=f"check owner/permissions of {parent}",
        )
    with contextlib.ExitStack() as stack:
        existing = target.is_dir()
        if existing:
            stack.enter_context(NodeLock(target / "node.lock"))
            stack.enter_context(maintenance_lock(target, exclusive=True))
        staging = staging_dir(target)
        if staging.exists() or staging.is_symlink():
            # A leftover of an interrupted restore: staging is never live data.
            _remove_tree(staging)
        try:
            staging.mkdir(mode=0o700)
        except OSError as exc:
            raise DataDirError(f"cannot create {staging}: {exc.strerror or exc}") from None
        moved = False
        try:
            plan = _stage(archive, target, staging, existing, force, dry_run, progress, when)
            if existing:
                for name in CARRIED_OVER:
                    _carry(target / name, staging / name)
            # Locked before it becomes the data dir: a node starting right after the swap
            # waits for us instead of seeing a half-finished restore.
            stack.enter_context(NodeLock(staging / "node.lock"))
            for d in sorted({p.parent for p in staging.rglob("*")} | {staging}, reverse=True):
                _fsync_dir(d)
            if dry_run or (confirm is not None and not confirm(plan)):
                return plan
            if plan.aside is not None:
                target.rename(plan.aside)
            try:
                staging.rename(target)
            except OSError as exc:
                if plan.aside is not None:
                    plan.aside.rename(target)
                raise DataDirError(
                    f"cannot move the restored data into {target}: {exc.strerror or exc}"
                ) from None
            moved = True
            _fsync_dir(parent)
            if plan.aside is not None and (plan.aside / "backups").is_dir():
                with contextlib.suppress(OSError):
                    (plan.aside / "backups").rename(target / "backups")
                    _fsync_dir(target)
                    _fsync_dir(plan.aside)
            plan.done = True
            return plan
        finally:
            if not moved:
                _remove_tree(staging)
    raise AssertionError("unreachable")  # pragma: no cover


def _stage(
    archive: Path,
    target: Path,
    staging: Path,
    existing: bool,
    force: bool,
    dry_run: bool,
    progress: Progress | None,
    when: datetime,
) -> RestorePlan:
    from ian.certs import load_certificate
    from ian.identity import load_identity

    stager = _Stager(staging)
    manifest = read_archive(archive, stager.open, progress=progress)
    identity = load_identity(staging / "identity.json")
    if identity.node_id != manifest.node_id:
        raise ArchiveError(
            f"archive {archive}: identity.json is node {identity.node_id}, the manifest says "
            f"{manifest.node_id}",
            fix="use another backup",
        )
    existing_id = _existing_node_id(target) if existing else None
    if existing_id is not None and existing_id != manifest.node_id and not force:
        raise IdentityError(
            f"archive {archive.name} belongs to node {manifest.node_id}, but {target} is node "
            f"{existing_id}",
            fix="pass --force to replace this node's identity (the current data dir is kept "
            "aside), or pick this node's backup",
        )
    try:
        height, head_hash, goals = snapshot_roots(staging / STORE_NAME, manifest.specs())
    except StoreError as exc:
        raise ArchiveError(
            f"archive {archive}: the store inside fails the root check: {exc.message}",
            fix="use another backup; `ian backup verify` checks one fully",
        ) from None
    compare_roots(archive, manifest, height, head_hash, goals)
    if (staging / "certs" / "node_cert.pem").exists():
        try:
            load_certificate(staging / "certs", identity, check_validity=False)
        except IdentityError as exc:
            raise ArchiveError(
                f"archive {archive}: its certificate is unusable: {exc.message}",
                fix="use another backup",
            ) from None
    return RestorePlan(
        archive=archive,
        target=target,
        aside=aside_dir(target, when) if existing else None,
        manifest=manifest,
        existing_node_id=existing_id,
        dry_run=dry_run,
    )


def _carry(source: Path, dest: Path) -> None:
    """Copy a small file from the replaced data dir into staging (exclusive, fsynced)."""
    try:
        data = source.read_bytes()
        mode = source.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataDirError(f"cannot read {source}: {exc.strerror or exc}") from None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove_tree(path: Path) -> None:
    """Remove our own staging directory (never follows symlinks out of it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
