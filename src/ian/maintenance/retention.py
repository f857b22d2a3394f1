"""What ``ian prune`` removes: pure selection over file listings, plus the scan and the removal.

The selection (:func:`plan`, :func:`beyond_newest`, :func:`stale_leftovers`) is pure: values
in, the list of :class:`PruneItem` out, no clock and no file system. :func:`scan` lists what
is there and :func:`remove` deletes a plan's items; nothing else here touches the disk.

Rules (ARCHITECTURE §11, runbook "Cleaning Up Old Data"):

- backups: archives named ``ian-backup-*.tar.zst`` (or ``ian-backup-*.tar``, the previous,
  uncompressed format) in ``<data-dir>/backups/``; the newest
  ``backups_keep`` (``settings.backup_retention``) by modification time stay. Other files
  there (an operator's own names) are never touched.
- certificate pairs: directories in ``certs-old/``; the newest ``cert_pairs_keep`` by name (the
  names are UTC stamps) stay.
- restore leftovers: ``<data-dir>.pre-restore-*`` directories next to the data dir (a swap
  restore) and ``<data-dir>/.pre-restore-*`` inside it (an in-place restore), counted together;
  the newest ``pre_restore_keep`` by their UTC stamp stay.
- resync copies: ``<data-dir>/resync-*`` directories (the store set aside by an offline
  ``ian node resync``); the newest ``resync_keep`` by their UTC stamp stay.
- temporary files: ``*.part`` / ``*.tmp`` files in the data dir, ``certs/`` and ``backups/``,
  a ``<data-dir>.restore-tmp`` directory and ``<data-dir>/.restore-staging-*`` directories, but
  only when older than ``leftover_min_age_s`` (default 1 h), so a backup, restore or atomic
  write in progress is never removed.

The aside and staging directories of an interrupted restore (named in its journal, inside the
data dir for in-place mode and next to it for swap mode, see :mod:`.restore`) are never
listed: they are the way back (``ian restore --rollback``) and forward (``--resume``). When
that journal cannot be read, no restore directory of that data dir is listed at all.

Stale peers are the peer book's business (:meth:`ian.p2p.peer_book.PeerBook.prune`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ian.storage.datadir import DataDir

__all__ = [
    "Entry",
    "Inventory",
    "PruneItem",
    "RetentionPolicy",
    "beyond_newest",
    "plan",
    "remove",
    "scan",
    "stale_leftovers",
]

LEFTOVER_SUFFIXES = (".part", ".tmp")
#: archive names: the current format (ian.maintenance.backup.ARCHIVE_SUFFIX) and the previous
BACKUP_GLOBS = ("ian-backup-*.tar.zst", "ian-backup-*.tar")
PRE_RESTORE_MARK = ".pre-restore-"
RESYNC_PREFIX = (
    "resync-"  # ian.maintenance.resync.RESYNC_PREFIX (not imported: keep this module light)
)
STAGING_PREFIX = ".restore-staging-"  # ian.maintenance.restore.STAGING_PREFIX


@dataclass(frozen=True, slots=True)
class Entry:
    """A file or directory as listed: ``size`` in bytes (recursive for directories)."""

    path: Path
    size: int
    mtime: float
    is_dir: bool = False


@dataclass(frozen=True, slots=True)
class PruneItem:
    """One thing to remove and why."""

    kind: str  # "backup", "cert_pair", "pre_restore", "resync", "leftover"
    path: Path
    size: int
    reason: str
    is_dir: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "size": self.size, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    backups_keep: int = 7
    cert_pairs_keep: int = 3
    pre_restore_keep: int = 1
    resync_keep: int = 1
    leftover_min_age_s: float = 3600.0

    def __post_init__(self) -> None:
        keeps = (self.backups_keep, self.cert_pairs_keep, self.pre_restore_keep, self.resync_keep)
        if min(keeps) < 0:
            raise ValueError("retention counts must be >= 0")
        if self.leftover_min_age_s < 0:
            raise ValueError("leftover_min_age_s must be >= 0")


@dataclass(frozen=True)
class Inventory:
    """What :func:`scan` found, per category."""

    backups: Sequence[Entry] = ()
    cert_pairs: Sequence[Entry] = ()
    pre_restore: Sequence[Entry] = ()
    leftovers: Sequence[Entry] = ()
    resync: Sequence[Entry] = ()


# --------------------------------------------------------------------------- pure selection


def beyond_newest(entries: Iterable[Entry], keep: int, *, by: str = "mtime") -> list[Entry]:
    """Every entry except the newest ``keep`` (by ``mtime``; by ``name`` for stamped names; by
    ``stamp``, the part after the last ``-``, for ``<prefix>-<UTC stamp>`` names with different
    prefixes); ties broken by name so the result is deterministic. Oldest first."""
    if by == "mtime":
        ordered = sorted(entries, key=lambda e: (e.mtime, e.path.name), reverse=True)
    elif by == "name":
        ordered = sorted(entries, key=lambda e: e.path.name, reverse=True)
    elif by == "stamp":
        ordered = sorted(
            entries, key=lambda e: (e.path.name.rpartition("-")[2], e.path.name), reverse=True
        )
    else:
        raise ValueError(f"unknown order {by!r}")
    return list(reversed(ordered[keep:]))


def stale_leftovers(entries: Iterable[Entry], now: float, min_age_s: float) -> list[Entry]:
    """Entries last modified at least ``min_age_s`` before ``now``, oldest first."""
    return sorted((e for e in entries if now - e.mtime >= min_age_s), key=lambda e: e.mtime)


def plan(inventory: Inventory, policy: RetentionPolicy, now: float) -> list[PruneItem]:
    """Everything ``ian prune`` removes for ``inventory`` under ``policy`` at time ``now``."""
    items = [
        PruneItem("backup", e.path, e.size, f"beyond the newest {policy.backups_keep} backups")
        for e in beyond_newest(inventory.backups, policy.backups_keep)
    ]
    # Directories kept by count, newest first: (kind, entries, keep, what they are, order).
    kept_dirs = (
        (
            "cert_pair",
            inventory.cert_pairs,
            policy.cert_pairs_keep,
            "old certificate pairs",
            "name",
        ),
        (
            "pre_restore",
            inventory.pre_restore,
            policy.pre_restore_keep,
            "pre-restore copies",
            "stamp",
        ),
        ("resync", inventory.resync, policy.resync_keep, "resync copies", "stamp"),
    )
    for kind, entries, keep, what, by in kept_dirs:
        items += [
            PruneItem(kind, e.path, e.size, f"beyond the newest {keep} {what}", is_dir=True)
            for e in beyond_newest(entries, keep, by=by)
        ]
    hours = policy.leftover_min_age_s / 3600
    items += [
        PruneItem(
            "leftover",
            e.path,
            e.size,
            f"unfinished temporary file older than {hours:g} h",
            is_dir=e.is_dir,
        )
        for e in stale_leftovers(inventory.leftovers, now, policy.leftover_min_age_s)
    ]
    return items


# --------------------------------------------------------------------------- I/O


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_size
    return total


def _entry(path: Path) -> Entry | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if path.is_symlink():
        return None
    is_dir = path.is_dir()
    return Entry(path, _tree_size(path) if is_dir else st.st_size, st.st_mtime, is_dir)


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def scan(datadir: DataDir) -> Inventory:
    """List the prunable things of ``datadir`` (never follows symlinks)."""
    root = datadir.root
    backups = [
        e
        for p in _children(datadir.backups_dir)
        if any(p.match(g) for g in BACKUP_GLOBS) and (e := _entry(p)) is not None and not e.is_dir
    ]
    cert_pairs = [
        e for p in _children(datadir.certs_old_dir) if (e := _entry(p)) is not None and e.is_dir
    ]
    siblings = _children(root.parent)
    prefix = root.name + PRE_RESTORE_MARK
    inside = _children(root)
    protected = _interrupted_restore_dirs(root)

    def dirs(paths: Iterable[Path], start: str) -> list[Entry]:
        return [
            e
            for p in paths
            if p.name.startswith(start)
            and p.absolute() not in protected
            and (e := _entry(p)) is not None
            and e.is_dir
        ]

    pre_restore = dirs(siblings, prefix) + dirs(inside, PRE_RESTORE_MARK)
    resync = dirs(inside, RESYNC_PREFIX)
    leftovers: list[Entry] = dirs(inside, STAGING_PREFIX)
    for directory in (root, datadir.certs_dir, datadir.backups_dir):
        for p in _children(directory):
            if p.name.endswith(LEFTOVER_SUFFIXES):
                e = _entry(p)
                if e is not None and not e.is_dir:
                    leftovers.append(e)
    staging = root.with_name(root.name + ".restore-tmp")
    e = _entry(staging)
    if e is not None and e.is_dir and staging.absolute() not in protected:
        leftovers.append(e)
    return Inventory(backups, cert_pairs, pre_restore, leftovers, resync)


def _interrupted_restore_dirs(root: Path) -> frozenset[Path]:
    """The directories (inside ``root`` or next to it) that an interrupted restore still
    needs (see the module docstring)."""
    from ian.errors import DataDirError
    from ian.maintenance.restore import JOURNAL_NAME, pending_restore, swap_journal

    in_place, swap = (root / JOURNAL_NAME).exists(), swap_journal(root).exists()
    if not in_place and not swap:
        return frozenset()
    try:
        pending = pending_restore(root)
    except DataDirError:  # unreadable or untrusted journal: protect every candidate of its kind
        marks = (PRE_RESTORE_MARK, STAGING_PREFIX)
        inside = [p for p in _children(root) if in_place and p.name.startswith(marks)]
        beside = [
            p
            for p in _children(root.parent)
            if swap
            and (
                p.name.startswith(root.name + PRE_RESTORE_MARK)
                or p.name == root.name + ".restore-tmp"
            )
        ]
        return frozenset(p.absolute() for p in inside + beside)
    if pending is None:
        return frozenset()
    return frozenset(p for p in (pending.staging, pending.aside) if p is not None)


def remove(items: Iterable[PruneItem]) -> list[tuple[PruneItem, str | None]]:
    """Delete each item; returns (item, error text or None). Keeps going after a failure."""
    results: list[tuple[PruneItem, str | None]] = []
    for item in items:
        try:
            if item.is_dir:
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
            results.append((item, None))
        except FileNotFoundError:
            results.append((item, None))  # already gone: nothing left to free
        except OSError as exc:
            results.append((item, exc.strerror or str(exc)))
    return results
