"""Restoring a data directory from an ``ian backup`` archive, atomically and reversibly.

Two ways to put the restored files in place, chosen automatically (see :func:`choose_mode`):

- **swap** (the data dir can be renamed): stage next to it in ``<data-dir>.restore-tmp``, then
  rename the data dir to ``<data-dir>.pre-restore-<UTC>`` and staging into its place.
- **in place** (the data dir is a mount point, as ``/data`` is in a container, or its parent is
  not writable): stage *inside* it in ``<data-dir>/.restore-staging-<UTC>/``, then move its
  current top-level entries into ``<data-dir>/.pre-restore-<UTC>/`` and the staged ones up.
  Every move is a rename inside one file system.

Sequence (each step either completes or leaves the original data dir untouched):

1. Refuse while a node holds ``<data-dir>/node.lock`` (:class:`NodeLockedError` naming the pid);
   otherwise take that lock and the exclusive maintenance lock and hold them to the end. Refuse
   while an interrupted in-place restore left its journal (see below).
2. Stream the archive once into the staging directory, checking every member before writing it
   and its SHA-256 while writing (see :func:`.backup.read_archive`; a ``.tar.zst`` archive is
   decompressed on another thread, ahead of the hashing and writing). Unsafe archives (absolute
   paths, ``..``, links, devices/FIFOs, unlisted members, checksum mismatch, truncation, newer
   format or schema) are refused before anything of theirs is written; nothing is written
   outside staging. Members named like the data dir's own bookkeeping (:data:`RESERVED`) are
   checked but never written.
3. Quick root check of the staged store (:func:`ian.ledger.recovery.load_chain_state`) against the
   manifest's height, head and per-goal roots; the identity inside must be the manifest's node,
   and must equal the existing data dir's identity unless ``force``. Meanwhile each staged file
   is fsynced once, on another thread, from the moment it is complete; step 5 waits for that.
4. ``node_state.json`` is deliberately **not** restored: without it the node replays and fully
   verifies the whole store on its first start (the documented behaviour of a missing state
   file), which is what a restore after suspected corruption needs. The archived copy is still
   checksummed. ``api_token``, ``backup_state.json`` and the consensus log (``consensus.db``,
   not with ``force``) stay with the data dir (copied into the
   swapped-in directory, or simply left in place), so the operator's token keeps working;
   ``backups/`` stays too (the archives are not part of the node's state).
5. Every staged file is durable and every staged directory is fsynced, then the swap:

   - swap mode: the journal ``<data-dir>.restore-journal.json`` is written atomically next to
     the data dir (the staging and aside names), the data dir is renamed aside (never deleted:
     ``ian prune`` ages these out), staging renamed into place, ``backups/`` moved into the new
     directory, the parent directory fsynced and the journal removed. A failed rename undoes
     the renames already made. If the process dies mid-way the journal stays, and the node and
     every later ``ian restore`` refuse exactly as for an in-place restore (below): a crash
     leaves the previous or the restored data dir reachable, never an empty one, and a node
     never starts (and so never makes a new identity) next to a pending restore.
   - in-place mode: the journal ``<data-dir>/.restore-journal.json`` is written atomically
     (phase ``aside``, the names to move out and in), the current entries are moved into the
     aside directory, the journal is rewritten (phase ``in``), the staged entries are moved up,
     the directories are fsynced and the journal removed. ``node.lock``, ``api_token``,
     ``backup_state.json``, ``backups/``, ``lost+found``, older ``.pre-restore-*`` and
     ``resync-*`` directories stay where they are (:func:`kept_in_place`). A failed move undoes
     the moves already made. If the process dies mid-way the journal stays: every later
     ``ian restore`` refuses with the exact recovery, :func:`finish_interrupted` completes the
     restore (``ian restore --resume``: the staged files were fully verified before the journal
     was written) or puts the previous files back (``ian restore --rollback``).

On any failure before step 5 the staging directory is removed and the data dir is as it was.
After step 5 the node starts with the archived roots and resyncs the rest from its peers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ian.atomic import _fsync_dir
from ian.errors import CorruptFileError, DataDirError, IdentityError, StoreError
from ian.maintenance.backup import (
    STORE_NAME,
    ArchiveError,
    FileEntry,
    Manifest,
    MemberWriter,
    Progress,
    compare_roots,
    read_archive,
    snapshot_roots,
)
from ian.maintenance.resync import RESYNC_PREFIX
from ian.storage.lock import NodeLock, maintenance_lock

__all__ = [
    "JOURNAL_NAME",
    "RESERVED",
    "SKIPPED_ON_RESTORE",
    "PendingRestore",
    "RestorePlan",
    "choose_mode",
    "finish_interrupted",
    "kept_in_place",
    "pending_restore",
    "restore_archive",
    "staging_dir",
    "swap_journal",
]

#: archived files that are checked but not put back (see the module docstring)
SKIPPED_ON_RESTORE = frozenset({"node_state.json"})
#: the consensus log (several authorities): never archived, it stays with the node — an
#: authority's term and vote must never go back (it would vote twice in a term), and blocks its
#: restored chain store lacks are applied again from it
CONSENSUS_FILES = ("consensus.db", "consensus.db-wal", "consensus.db-shm")
#: files of the replaced data dir that the restored one keeps (the consensus log only when the
#: restored identity is this node's: not with ``force``)
CARRIED_OVER = ("api_token", "backup_state.json", *CONSENSUS_FILES)
_SECRET = frozenset({"identity.json", "certs/node_key.pem", "api_token"})

#: the in-place journal, inside the data dir
JOURNAL_NAME = ".restore-journal.json"
#: the swap journal, next to the data dir: ``<data-dir><suffix>``
SWAP_JOURNAL_SUFFIX = ".restore-journal.json"
#: in-place staging and aside directories, inside the data dir: ``<prefix><UTC stamp>``
STAGING_PREFIX = ".restore-staging-"
ASIDE_PREFIX = ".pre-restore-"
#: top-level names of the data dir's own bookkeeping: an in-place restore leaves them where they
#: are and no archive member below them is ever written
RESERVED = frozenset({*CARRIED_OVER, "node.lock", "backups", "lost+found", JOURNAL_NAME})
_RESERVED_PREFIXES = (STAGING_PREFIX, ASIDE_PREFIX, RESYNC_PREFIX)
_JOURNAL_VERSION = 1


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def staging_dir(target: Path) -> Path:
    return target.with_name(target.name + ".restore-tmp")


def swap_journal(target: Path) -> Path:
    """Where a swap-mode restore of ``target`` keeps its journal (next to the data dir)."""
    return target.with_name(target.name + SWAP_JOURNAL_SUFFIX)


def aside_dir(target: Path, now: datetime) -> Path:
    return target.with_name(f"{target.name}.pre-restore-{_stamp(now)}")


def kept_in_place(name: str) -> bool:
    """True for a top-level entry of the data dir that an in-place restore does not move."""
    return name in RESERVED or name.startswith(_RESERVED_PREFIXES)


def choose_mode(target: Path, in_place: bool | None = None) -> tuple[bool, str]:
    """``(in_place, why)`` for a restore into ``target``; ``in_place=None`` decides: in place
    when ``target`` is a mount point (it cannot be renamed) or its parent is not writable."""
    if in_place is True:
        return True, "in place as requested"
    if in_place is False:
        return False, "by renaming the data dir, as requested"
    if target.is_dir():
        if os.path.ismount(target):
            return True, f"{target} is a mount point and cannot be renamed"
        if not os.access(target.parent, os.W_OK | os.X_OK):
            return True, f"{target.parent} is not writable"
    return False, f"{target.parent} is writable: the data dir is swapped whole"


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
    in_place: bool = False
    mode_reason: str = ""
    #: in place: the top-level entries moved into ``aside``
    moved_aside: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        return "in-place" if self.in_place else "swap"

    def to_doc(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "data_dir": str(self.target),
            "mode": self.mode,
            "mode_reason": self.mode_reason,
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


def _reserved_member(name: str) -> bool:
    return kept_in_place(name.split("/", 1)[0])


class _Stager:
    """Creates staged files (exclusive, no symlink following) below one directory.

    Each file is fsynced once, on a background thread as soon as it is complete, so the disk
    writes overlap reading the rest of the archive and the checks of the staged store;
    :meth:`wait` returns when every staged file is durable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: set[Path] = {root}
        self._syncs: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ian-restore-fsync")

    def open(self, entry: FileEntry) -> MemberWriter | None:
        if entry.name in SKIPPED_ON_RESTORE or _reserved_member(entry.name):
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
        return _SyncedFile(fd, path, self)

    def sync_later(self, fh: BinaryIO, path: Path) -> None:
        """fsync and close ``fh`` (flushed) on the background thread."""

        def sync() -> None:
            try:
                os.fsync(fh.fileno())
            except OSError as exc:
                raise DataDirError(
                    f"cannot write {path}: {exc.strerror or exc}",
                    fix=f"check free space and the file system holding {self.root}",
                ) from None
            finally:
                fh.close()

        self._syncs.append(self._pool.submit(sync))

    def wait(self) -> None:
        """Return when every staged file is on stable storage (raises the first failure)."""
        for done in self._syncs:
            done.result()

    def close(self) -> None:
        """Wait for the background fsyncs (their errors are not raised here) and stop."""
        self._pool.shutdown(wait=True)


class _SyncedFile:
    """A write-only staged file, fsynced (once, in the background) when closed."""

    def __init__(self, fd: int, path: Path, stager: _Stager) -> None:
        # Unbuffered: the archive reader hands over whole chunks of up to 1 MiB.
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self._path = path
        self._stager = stager

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            written = self._fh.write(view)
            if not written:
                raise OSError(errno.EIO, f"short write to {self._path}")
            view = view[written:]
        return len(data)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.flush()
        except BaseException:
            self._fh.close()
            raise
        self._stager.sync_later(self._fh, self._path)


def restore_archive(
    archive: Path,
    target: Path,
    *,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[RestorePlan], bool] | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
    in_place: bool | None = None,
) -> RestorePlan:
    """Verify ``archive`` and restore it as the data dir ``target`` (see the module docstring).

    ``in_place`` picks the mode: None decides (:func:`choose_mode`), True/False force it.
    ``dry_run`` does every check (extracting into staging, then removing it) and changes
    nothing. ``confirm(plan)`` is asked after all checks pass and before anything is moved;
    returning False aborts with nothing changed (``plan.done`` stays False). Raises
    :class:`NodeLockedError`, :class:`ArchiveError`, :class:`SchemaError`,
    :class:`IdentityError` (another node's archive without ``force``), :class:`StoreError`
    (roots do not match) or :class:`DataDirError` (I/O, disk full, an interrupted in-place
    restore waiting for ``--resume``/``--rollback``).
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
    use_in_place, reason = choose_mode(target, in_place)
    if use_in_place:
        if not target.is_dir():
            raise DataDirError(
                f"data dir {target} does not exist: an in-place restore restores inside it",
                fix=f"create it first: mkdir -p {target}",
            )
        if not os.access(target, os.W_OK | os.X_OK):
            raise DataDirError(
                f"{target} is not writable: an in-place restore stages its files inside it",
                fix=f"run as the node's user, or check owner/permissions of {target}",
            )
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(
            f"{parent} is not writable: a restore stages its files next to {target.name}",
            fix=f"check owner/permissions of {parent}, or create {target} as the node's user "
            "(ian restore then restores inside it)",
        )
    with contextlib.ExitStack() as stack:
        existing = target.is_dir()
        if existing:
            stack.enter_context(NodeLock(target / "node.lock"))
            stack.enter_context(maintenance_lock(target, exclusive=True))
        _refuse_if_interrupted(target)
        if use_in_place:
            return _restore_in_place(
                archive, target, force, dry_run, confirm, progress, when, reason
            )
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
            plan.mode_reason = reason
            if existing:
                for name in CARRIED_OVER:
                    if force and name in CONSENSUS_FILES:
                        continue
                    _carry(target / name, staging / name)
            # Locked before it becomes the data dir: a node starting right after the swap
            # waits for us instead of seeing a half-finished restore.
            stack.enter_context(NodeLock(staging / "node.lock"))
            _fsync_tree(staging)
            if dry_run or (confirm is not None and not confirm(plan)):
                return plan
            doc = _swap_journal_doc(plan, staging, when)
            _write_swap_journal(target, doc)
            moved = True  # from here on the journal owns staging: recovery needs it
            try:
                _swap_forward(target, doc)
            except BaseException as exc:
                _undo_swap_after_failure(target, doc, exc)
                raise
            plan.done = True
            return plan
        finally:
            if not moved:
                _remove_tree(staging)
    raise AssertionError("unreachable")  # pragma: no cover


def _fsync_tree(root: Path) -> None:
    for d in sorted({p.parent for p in root.rglob("*")} | {root}, reverse=True):
        _fsync_dir(d)


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
    """Steps 2-3: the archive read once into ``staging`` and checked; the staged files are
    durable when this returns."""
    stager = _Stager(staging)
    try:
        plan = _check_staged(
            archive, target, staging, stager, existing, force, dry_run, when, progress
        )
        stager.wait()  # every staged file is durable before anything is moved
    finally:
        stager.close()
    return plan


def _check_staged(
    archive: Path,
    target: Path,
    staging: Path,
    stager: _Stager,
    existing: bool,
    force: bool,
    dry_run: bool,
    when: datetime,
    progress: Progress | None,
) -> RestorePlan:
    """Read ``archive`` into ``staging`` through ``stager``, then check what was staged (while
    the staged files are being fsynced)."""
    from ian.certs import load_certificate
    from ian.identity import load_identity

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
        height, head_hash, goals, _schema = snapshot_roots(staging / STORE_NAME, manifest.specs())
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
    """Copy a file of the replaced data dir into staging (exclusive, streamed, fsynced)."""
    try:
        src = source.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataDirError(f"cannot read {source}: {exc.strerror or exc}") from None
    with src:
        mode = os.fstat(src.fileno()).st_mode & 0o777
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(dest, flags, mode)
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(src, fh, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())


def _remove_tree(path: Path) -> None:
    """Remove our own staging directory (never follows symlinks out of it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# --------------------------------------------------------------------------- swap


def _swap_journal_doc(plan: RestorePlan, staging: Path, when: datetime) -> dict[str, Any]:
    return {
        "format": "ian-restore-journal",
        "version": _JOURNAL_VERSION,
        "mode": "swap",
        "phase": "swap",
        "archive": str(plan.archive),
        "node_id": plan.manifest.node_id,
        "height": plan.manifest.height,
        "started_at": when.isoformat(),
        "staging": staging.name,
        "aside": plan.aside.name if plan.aside is not None else None,
    }


def _write_swap_journal(target: Path, doc: dict[str, Any]) -> None:
    from ian.atomic import atomic_write_json

    atomic_write_json(swap_journal(target), doc, mode=0o600)


def _swap_paths(target: Path, doc: dict[str, Any]) -> tuple[Path, Path | None]:
    aside = target.with_name(doc["aside"]) if doc["aside"] else None
    return target.with_name(doc["staging"]), aside


def _swap_forward(target: Path, doc: dict[str, Any]) -> None:
    """Complete the swap that ``doc`` describes, from wherever it stopped: the data dir goes
    aside, staging takes its place, ``backups/`` follows, the journal goes (the commit point).

    Idempotent: a rename already made is recognised by which directories exist."""
    staging, aside = _swap_paths(target, doc)
    if _present(staging):
        if _present(target):
            if aside is None or _present(aside):
                raise DataDirError(
                    f"{target}, {staging} and the previous data dir all exist: cannot tell "
                    "which to keep",
                    fix=f"compare them, keep the right one as {target}, then delete "
                    f"{swap_journal(target)}",
                )
            _rename(target, aside)
        _rename(staging, target)
    elif not _present(target):
        raise DataDirError(
            f"neither {staging} nor {target} exists: the staged restore is gone",
            fix=f"undo the restore instead: ian restore --rollback --data-dir {target}",
        )
    _fsync_dir(target.parent)
    if aside is not None and (aside / "backups").is_dir() and not _present(target / "backups"):
        with contextlib.suppress(OSError):
            _rename(aside / "backups", target / "backups")
            _fsync_dir(target)
            _fsync_dir(aside)
    _finish_swap(target)


def _swap_backward(target: Path, doc: dict[str, Any]) -> None:
    """Undo the swap that ``doc`` describes: the previous data dir (if any) is ``target``
    again, the staged or swapped-in one is discarded. Idempotent like :func:`_swap_forward`."""
    staging, aside = _swap_paths(target, doc)
    restored_in_place = _present(target) and not _present(staging)
    previous_aside = aside is not None and _present(aside)
    if restored_in_place and (previous_aside or aside is None):
        # The restored data dir took the place: it goes back to staging (then away).
        if previous_aside and aside is not None:
            backups = target / "backups"
            if backups.is_dir() and not _present(aside / "backups"):
                _rename(backups, aside / "backups")
        _rename(target, staging)
    if aside is not None and _present(aside):
        if _present(target):
            raise DataDirError(
                f"both {target} and the previous data dir {aside} exist: cannot tell which to keep",
                fix=f"compare them, keep the right one as {target}, then delete "
                f"{swap_journal(target)}",
            )
        _rename(aside, target)
    _fsync_dir(target.parent)
    _finish_swap(target)
    with contextlib.suppress(OSError):
        _remove_tree(staging)


def _finish_swap(target: Path) -> None:
    """The swap is settled: drop its journal (the commit point) and make that durable."""
    swap_journal(target).unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _undo_swap_after_failure(target: Path, doc: dict[str, Any], exc: BaseException) -> None:
    """A rename of the swap failed in this process: put the previous data dir back. Raises a
    :class:`DataDirError` with the recovery when even that fails (the journal stays)."""
    try:
        _swap_backward(target, doc)
    except BaseException as undo_exc:  # the journal keeps the way back
        what = undo_exc.message if isinstance(undo_exc, DataDirError) else str(undo_exc)
        raise DataDirError(
            f"the restore into {target} failed ({_describe_exc(exc)}) and could not be undone "
            f"({what}); {swap_journal(target)} records where it stopped",
            fix=_recovery_fix(target),
        ) from exc
    if isinstance(exc, OSError):
        raise DataDirError(
            f"cannot move the restored data into {target}: {_describe_exc(exc)}",
            fix="if the data dir is a mount point, pass --in-place",
        ) from None


# --------------------------------------------------------------------------- in place


def _rename(source: Path, dest: Path) -> None:
    """One move of the in-place swap or its recovery (a rename inside one file system)."""
    source.rename(dest)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _restore_in_place(
    archive: Path,
    target: Path,
    force: bool,
    dry_run: bool,
    confirm: Callable[[RestorePlan], bool] | None,
    progress: Progress | None,
    when: datetime,
    reason: str,
) -> RestorePlan:
    """Steps 2-5 inside ``target`` (locked by the caller, no journal there)."""
    for leftover in target.glob(STAGING_PREFIX + "*"):
        # Staging of a restore that died before its journal existed: never live data.
        _remove_tree(leftover)
    staging = target / f"{STAGING_PREFIX}{_stamp(when)}"
    try:
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise DataDirError(f"cannot create {staging}: {exc.strerror or exc}") from None
    swapped = False
    try:
        plan = _stage(archive, target, staging, True, force, dry_run, progress, when)
        old = tuple(sorted(p.name for p in target.iterdir() if not kept_in_place(p.name)))
        aside = target / f"{ASIDE_PREFIX}{_stamp(when)}"
        if old and _present(aside):
            raise DataDirError(
                f"{aside} already exists (a restore in the same second?)",
                fix="run the restore again in a moment",
            )
        plan.in_place, plan.mode_reason = True, reason
        plan.aside = aside if old else None
        plan.moved_aside = old
        _fsync_tree(staging)
        if dry_run or (confirm is not None and not confirm(plan)):
            return plan
        new = tuple(sorted(p.name for p in staging.iterdir()))
        doc = {
            "format": "ian-restore-journal",
            "version": _JOURNAL_VERSION,
            "phase": "aside",
            "started_at": when.isoformat(),
            "pid": os.getpid(),
            "archive": str(archive),
            "node_id": plan.manifest.node_id,
            "height": plan.manifest.height,
            "staging": staging.name,
            "aside": aside.name if old else None,
            "old": list(old),
            "new": list(new),
        }
        _write_journal(target, doc)
        swapped = True  # from here on the journal owns staging: recovery needs it
        try:
            _forward(target, doc)
        except BaseException as exc:
            _undo_after_failure(target, doc, exc)
            raise
        plan.done = True
        return plan
    finally:
        if not swapped:
            _remove_tree(staging)


def _write_journal(target: Path, doc: dict[str, Any]) -> None:
    from ian.atomic import atomic_write_json

    atomic_write_json(target / JOURNAL_NAME, doc, mode=0o600)


def _forward(target: Path, doc: dict[str, Any]) -> None:
    """Complete the in-place swap that ``doc`` (the journal) describes, from wherever it is.

    Idempotent: an entry already moved is skipped, so this also resumes after a crash."""
    staging = target / doc["staging"]
    aside = target / doc["aside"] if doc["aside"] else None
    if doc["phase"] == "aside":
        if aside is not None:
            if not aside.is_dir():
                aside.mkdir(mode=0o700)
            for name in doc["old"]:
                if _present(target / name) and not _present(aside / name):
                    _rename(target / name, aside / name)
            _fsync_dir(aside)
            _fsync_dir(target)
        doc["phase"] = "in"
        _write_journal(target, doc)
    for name in doc["new"]:
        src, dst = staging / name, target / name
        if _present(src) and not _present(dst):
            _rename(src, dst)
        elif not _present(dst):
            raise DataDirError(
                f"{src} is missing: the staged restore is incomplete",
                fix=f"undo the restore instead: ian restore --rollback --data-dir {target}",
            )
        elif _present(src):
            raise DataDirError(
                f"both {src} and {dst} exist: cannot tell which to keep",
                fix=f"undo the restore instead: ian restore --rollback --data-dir {target}",
            )
    if staging.is_dir():
        _fsync_dir(staging)
    _fsync_dir(target)
    _finish(target, staging)


def _backward(target: Path, doc: dict[str, Any]) -> None:
    """Undo the in-place swap that ``doc`` describes: the previous entries go back, the staged
    ones are discarded. Idempotent like :func:`_forward`."""
    staging = target / doc["staging"]
    aside = target / doc["aside"] if doc["aside"] else None
    if doc["phase"] == "in":
        # Every previous entry is aside; what is in the data dir under a new name is restored.
        for name in reversed(doc["new"]):
            if _present(target / name) and not _present(staging / name):
                if not staging.is_dir():
                    staging.mkdir(mode=0o700)
                _rename(target / name, staging / name)
        _fsync_dir(target)
    if aside is not None and aside.is_dir():
        for name in reversed(doc["old"]):
            if _present(aside / name) and not _present(target / name):
                _rename(aside / name, target / name)
        _fsync_dir(aside)
        _fsync_dir(target)
        left = sorted(p.name for p in aside.iterdir())
        if left:
            raise DataDirError(
                f"{aside} still holds {', '.join(left)} after putting the previous files back",
                fix=f"compare it with {target} and move what belongs there by hand, then "
                f"delete {target / JOURNAL_NAME}",
            )
        aside.rmdir()
    _finish(target, staging)


def _finish(target: Path, staging: Path) -> None:
    """The swap is settled: drop the journal (the commit point), then the staging dir."""
    (target / JOURNAL_NAME).unlink(missing_ok=True)
    _fsync_dir(target)
    with contextlib.suppress(OSError):
        _remove_tree(staging)


def _recovery_fix(target: Path) -> str:
    return (
        f"finish it: ian restore --resume --data-dir {target} (its archive was fully verified), "
        f"or undo it: ian restore --rollback --data-dir {target}; nothing has been deleted"
    )


def _undo_after_failure(target: Path, doc: dict[str, Any], exc: BaseException) -> None:
    """A move of the swap failed in this process: put the previous entries back. Raises a
    :class:`DataDirError` with the recovery when even that fails (the journal stays)."""
    try:
        _backward(target, doc)
    except BaseException as undo_exc:  # the journal keeps the way back
        what = undo_exc.message if isinstance(undo_exc, DataDirError) else str(undo_exc)
        raise DataDirError(
            f"the restore into {target} failed ({_describe_exc(exc)}) and could not be undone "
            f"({what}); {target / JOURNAL_NAME} records where it stopped",
            fix=_recovery_fix(target),
        ) from exc
    if isinstance(exc, OSError):
        raise DataDirError(
            f"cannot move the restored data into {target}: {_describe_exc(exc)}; "
            "the previous files are back in place",
            fix="check the file system (dmesg), then run the restore again",
        ) from None


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    if isinstance(exc, DataDirError):
        return exc.message
    return type(exc).__name__


# --------------------------------------------------------------------------- interrupted


@dataclass(frozen=True)
class PendingRestore:
    """A restore whose process died mid-swap, as its journal describes it: ``mode`` is
    ``in-place`` (journal inside the data dir) or ``swap`` (journal next to it)."""

    target: Path
    doc: dict[str, Any] = field(repr=False)

    @property
    def mode(self) -> str:
        return "swap" if self.doc.get("mode") == "swap" else "in-place"

    @property
    def journal(self) -> Path:
        return swap_journal(self.target) if self.mode == "swap" else self.target / JOURNAL_NAME

    @property
    def phase(self) -> str:
        return str(self.doc["phase"])

    @property
    def _base(self) -> Path:
        return self.target.parent if self.mode == "swap" else self.target

    @property
    def staging(self) -> Path:
        return self._base / str(self.doc["staging"])

    @property
    def aside(self) -> Path | None:
        return self._base / self.doc["aside"] if self.doc["aside"] else None

    def describe(self) -> str:
        if self.mode == "swap":
            step = "swapping the data dir"
        elif self.phase == "aside":
            step = "moving the previous files aside"
        else:
            step = "moving the restored files in"
        return (
            f"an interrupted restore of {self.doc.get('archive')} (node "
            f"{self.doc.get('node_id')}, height {self.doc.get('height')}, started "
            f"{self.doc.get('started_at')}) stopped while {step}"
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.target),
            "mode": self.mode,
            "journal": str(self.journal),
            "phase": self.phase,
            "archive": self.doc.get("archive"),
            "node_id": self.doc.get("node_id"),
            "height": self.doc.get("height"),
            "started_at": self.doc.get("started_at"),
            "staging": str(self.staging),
            "aside": str(self.aside) if self.aside else None,
        }


def _plain(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\x00" not in name
    )


def _valid_journal(doc: object) -> bool:
    if not isinstance(doc, dict) or doc.get("version") != _JOURNAL_VERSION:
        return False
    if doc.get("phase") not in ("aside", "in"):
        return False
    staging, aside = doc.get("staging"), doc.get("aside")
    if not (_plain(staging) and str(staging).startswith(STAGING_PREFIX)):
        return False
    if aside is not None and not (_plain(aside) and str(aside).startswith(ASIDE_PREFIX)):
        return False
    lists = [doc.get("old"), doc.get("new")]
    return all(
        isinstance(names, list) and all(_plain(n) and not kept_in_place(n) for n in names)
        for names in lists
    )


def _valid_swap_journal(doc: object, target: Path) -> bool:
    """A swap journal names only ``target``'s own staging and aside siblings."""
    if not isinstance(doc, dict) or doc.get("version") != _JOURNAL_VERSION:
        return False
    if doc.get("mode") != "swap" or doc.get("phase") != "swap":
        return False
    aside = doc.get("aside")
    aside_ok = aside is None or (
        _plain(aside) and str(aside).startswith(f"{target.name}.pre-restore-")
    )
    return doc.get("staging") == staging_dir(target).name and aside_ok


def _manual_fix(target: Path, swap: bool) -> str:
    if swap:
        return (
            f"recover by hand: the previous data dir is {target} or "
            f"{target.name}.pre-restore-* next to it, the restored one {staging_dir(target)}; "
            f"keep the right one as {target}, then delete {swap_journal(target)}"
        )
    return (
        f"recover by hand: the previous files are in {target}/{ASIDE_PREFIX}*, the restored "
        f"ones in {target}/{STAGING_PREFIX}*; put back what belongs in {target}, then delete "
        f"{target / JOURNAL_NAME}"
    )


def pending_restore(target: Path) -> PendingRestore | None:
    """The interrupted restore of ``target`` (in-place or swap mode), or None. Works whether
    or not ``target`` exists (a swap can stop between its renames). Raises
    :class:`CorruptFileError` when the journal cannot be trusted (then nothing is automatic)."""
    from ian.atomic import read_json

    target = Path(target).absolute()
    for path, swap in ((target / JOURNAL_NAME, False), (swap_journal(target), True)):
        try:
            doc = read_json(path, recovery=_manual_fix(target, swap))
        except (FileNotFoundError, NotADirectoryError):
            continue
        valid = _valid_swap_journal(doc, target) if swap else _valid_journal(doc)
        if not valid:
            raise CorruptFileError(
                f"{path} is not a restore journal this ian understands",
                fix=_manual_fix(target, swap),
            )
        return PendingRestore(target, doc)
    return None


def _refuse_if_interrupted(target: Path) -> None:
    pending = pending_restore(target)
    if pending is not None:
        raise DataDirError(
            f"{pending.describe()}; {pending.journal} records where",
            fix=_recovery_fix(target),
        )


def finish_interrupted(target: Path, action: Literal["resume", "rollback"]) -> PendingRestore:
    """Complete (``resume``) or undo (``rollback``) the interrupted restore of ``target``
    under its locks; returns what it was. Raises :class:`DataDirError` when there is none,
    :class:`NodeLockedError` while a node runs."""
    target = Path(target).absolute()
    if not target.is_dir() and not swap_journal(target).exists():
        raise DataDirError(f"data dir {target} does not exist", fix="check --data-dir")
    with contextlib.ExitStack() as stack:
        if target.is_dir():
            stack.enter_context(NodeLock(target / "node.lock"))
            stack.enter_context(maintenance_lock(target, exclusive=True))
        pending = pending_restore(target)
        if pending is None:
            raise DataDirError(
                f"no interrupted restore in {target} (no {JOURNAL_NAME})",
                fix="nothing to resume or roll back",
            )
        doc = dict(pending.doc)
        if pending.mode == "swap":
            # The other halves of the swap hold the lock files a node would take.
            for half in (pending.staging, pending.aside):
                if half is not None and half.is_dir():
                    stack.enter_context(NodeLock(half / "node.lock"))
            if action == "resume":
                _swap_forward(target, doc)
            else:
                _swap_backward(target, doc)
            return pending
        if action == "resume":
            if not pending.staging.is_dir() and pending.phase == "aside":
                raise DataDirError(
                    f"{pending.staging} is missing: the restore cannot be completed",
                    fix=f"undo it instead: ian restore --rollback --data-dir {target}",
                )
            _forward(target, doc)
        elif action == "rollback":
            _backward(target, doc)
        else:  # pragma: no cover - guarded by the type
            raise ValueError(action)
        return pending
