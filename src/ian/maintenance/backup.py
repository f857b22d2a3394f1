"""Consistent backups of a data directory, taken while the node keeps running.

Archive format (``ian-backup`` version 1, ``.tar.zst``): a POSIX tar stream compressed with
Zstandard, so ``zstd -dc ARCHIVE | tar -tv`` (or ``tar --zstd -tvf ARCHIVE``) reads it. The
settings were picked by measurement on a store of 1,000,000 contributions (mostly hashes and
signatures): Zstandard's levels 1-4 make an archive 0.5-1% *bigger* than the runbook's
``tar -czvf`` (gzip -6) of the same data dir, and level 5, the first that is smaller, costs
more than twice the CPU of the setting used: level 2 with a minimum match of 4 bytes and a 2^17
hash table, 1.4% smaller than gzip -6 for under a fifth of its CPU time, compressed on two
worker threads (:func:`compressor`). Archives written before (a plain, uncompressed tar
with the same members and manifest, ``.tar``) are still read, verified, inspected and restored:
readers tell the two apart by the first bytes (the Zstandard frame magic), not by the name.

Members, in order:

``manifest.json`` (always first)
    ``{"format", "format_version", "node_id", "height", "head_hash", "goals": {goal_id:
    {log_size, log_root, leaderboard_size, leaderboard_root}}, "goal_specs": [...],
    "schema_version", "tool_version", "created_at", "files": [{"name", "size", "sha256",
    "mode"}]}``. Roots, height and head come from the *snapshot* database, never the live one.
``identity.json``, ``genesis.json``, ``certs/node_cert.pem``, ``certs/node_key.pem``,
``peer_scores.json``, ``node_state.json``, ``config.toml`` (those that exist, :data:`SMALL_FILES`),
then the databases (:data:`DATABASES`: ``chain.sqlite``).

How a snapshot stays consistent while the node writes: the source is opened read-only and a read
transaction is opened on it *before* SQLite's online backup API copies the pages, so every step
of the copy sees the same WAL snapshot and the node's writer is never blocked (WAL readers do not
block writers). The copy is switched to rollback-journal mode so the archived database is one
self-contained file. The small JSON/PEM files are read once into memory; each is replaced
atomically by its writers, so each read sees one whole version (they are not a transaction with
the store: ``node_state.json`` may describe a slightly different height, which is why restore
does not use it).

One pass: each database snapshot is read once, and every chunk is hashed and handed to the
compressor (whose worker threads compress while the next chunk is read), while the snapshot's
roots are checked on another thread. The manifest, which needs those digests and roots, is
still the first member: the file is laid out as three Zstandard frames, ``[manifest member]
[skippable frame: padding][every other member, then the end of the tar]``. The body is written
first, after a gap reserved for the manifest (an upper bound of its compressed size, computed
from the goal specs and the files before anything is written); the manifest's frame is written
into the gap at the end and a skippable frame (which every Zstandard decoder ignores) fills the
rest. Decompressed, the three frames are one ordinary tar stream. Reading the manifest alone
decompresses only the first frame.

Durability: the archive is written to ``PATH.part``, fsynced once, then renamed to ``PATH`` (never
over an existing file) and the directory fsynced; ``backup_state.json`` is written atomically
after that. A crash leaves at most a ``*.part`` file, which ``ian prune`` removes once it is
older than its safety margin.

Locking: a backup never needs ``node.lock``. It holds a *shared* ``flock`` on the data directory
itself (:func:`ian.storage.lock.maintenance_lock`); ``ian restore`` and ``ian certs rotate`` hold
it exclusively, so a backup never runs while the directory is being swapped or the certificates
replaced, while any number of backups (and ``ian prune``) may run together.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import queue
import re
import secrets
import sqlite3
import stat
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

import zstandard

from ian.atomic import _fsync_dir, atomic_write_json, read_json
from ian.chain.goals import GoalSpec
from ian.errors import CorruptFileError, DataDirError, IanError, SchemaError, StoreError
from ian.storage.datadir import DataDir
from ian.storage.lock import maintenance_lock
from ian.storage.store import SCHEMA_VERSION, Store

__all__ = [
    "ARCHIVE_SUFFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ArchiveError",
    "BackupResult",
    "FileEntry",
    "Manifest",
    "SnapshotRoots",
    "VerifyResult",
    "create_backup",
    "default_archive_path",
    "list_members",
    "read_archive",
    "read_last_backup",
    "read_manifest",
    "snapshot_roots",
    "verify_archive",
]

FORMAT = "ian-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STORE_NAME = "chain.sqlite"
ARCHIVE_PREFIX = "ian-backup-"
ARCHIVE_SUFFIX = ".tar.zst"
STATE_FILE = "backup_state.json"
#: a manifest larger than this is refused (a real one is a few KiB)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: files copied besides the store, relative to the data dir; secrets get mode 0600
SMALL_FILES: tuple[str, ...] = (
    "identity.json",
    "genesis.json",
    "certs/node_cert.pem",
    "certs/node_key.pem",
    "peer_scores.json",
    "node_state.json",
    "config.toml",
)
#: SQLite databases, relative to the data dir, each archived as a consistent snapshot taken
#: through SQLite's online backup API (never blocking the node's writer); the store is
#: required, any other is archived when it exists, so a new one is one more name here. The
#: consensus log (``consensus.db``) is deliberately not one: it stays with the node
#: (:data:`ian.maintenance.restore.CONSENSUS_FILES`).
DATABASES: tuple[str, ...] = (STORE_NAME,)
REQUIRED_FILES = frozenset({"identity.json", STORE_NAME})
SECRET_FILES = frozenset({"identity.json", "certs/node_key.pem"})
_CHUNK = 1 << 20
_SNAPSHOT_PAGES = 4096
#: Zstandard settings, picked by measurement (see the module docstring and bench/backup_bench.py)
ZSTD_LEVEL = 2
ZSTD_MIN_MATCH = 4
ZSTD_HASH_LOG = 17
ZSTD_THREADS = 2
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC = 0x184D2A50
_SKIPPABLE_HEADER = 8
#: how far the prefetching decompressor may run ahead of the reader, in chunks of _CHUNK
_PREFETCH_CHUNKS = 8
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ARCHIVE_FIX = "use another backup (`ian backup inspect` lists what an archive holds)"

#: ``progress(stage, done, total)``; stages are "snapshot" (pages), "archive" and "read" (bytes)
Progress = Callable[[str, int, int], None]


class ArchiveError(CorruptFileError):
    """A backup archive is unreadable, truncated, inconsistent or unsafe to extract."""

    code = "archive"


def _archive_error(archive: Path, detail: str, fix: str = _ARCHIVE_FIX) -> ArchiveError:
    return ArchiveError(f"archive {archive}: {detail}", fix=fix)


# --------------------------------------------------------------------------- manifest


def safe_member_name(name: str) -> bool:
    """True for a relative POSIX path without ``..``, ``.``, empty parts, ``\\`` or NUL."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and len(parts) <= 4


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One archived file: ``name`` relative to the data dir, ``size`` bytes, hex ``sha256``."""

    name: str
    size: int
    sha256: str
    mode: int

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "mode": self.mode}


@dataclass(frozen=True)
class Manifest:
    """The archive's table of contents and the chain position it captures."""

    node_id: str
    height: int
    head_hash: str
    goals: dict[str, dict[str, Any]]
    goal_specs: list[dict[str, Any]]
    schema_version: int
    tool_version: str
    created_at: str
    files: list[FileEntry]
    format_version: int = FORMAT_VERSION

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "node_id": self.node_id,
            "height": self.height,
            "head_hash": self.head_hash,
            "goals": self.goals,
            "goal_specs": self.goal_specs,
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            "files": [f.to_doc() for f in self.files],
        }

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.name == name), None)

    def specs(self) -> list[GoalSpec]:
        """The goal specs the backed-up node ran with (needed to rebuild leaderboards)."""
        return [GoalSpec.model_validate(doc) for doc in self.goal_specs]

    @classmethod
    def from_doc(cls, doc: Any, *, archive: Path) -> Manifest:
        """Validate a parsed manifest; :class:`ArchiveError` / :class:`SchemaError` say why."""

        def bad(detail: str) -> ArchiveError:
            return _archive_error(archive, f"manifest.json {detail}")

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise bad("is not an IAN backup manifest")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad("has no valid format_version")
        if version > FORMAT_VERSION:
            raise SchemaError(
                f"archive {archive} has backup format {version}; this ian reads up to "
                f"{FORMAT_VERSION}",
                fix="restore it with a newer ian",
            )
        schema = doc.get("schema_version")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise bad("has no valid schema_version")
        if schema > SCHEMA_VERSION:
            raise SchemaError(
                f"archive {archive} holds a store of schema version {schema}; this ian "
                f"understands up to {SCHEMA_VERSION}",
                fix="restore it with a newer ian",
            )
        try:
            files = []
            for f in doc["files"]:
                entry = FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"]), int(f["mode"]))
                if not safe_member_name(entry.name) or entry.name == MANIFEST_NAME:
                    raise bad(f"lists an unsafe file name {entry.name!r}")
                if entry.size < 0 or not _HEX64.match(entry.sha256):
                    raise bad(f"has an invalid size or sha256 for {entry.name}")
                files.append(entry)
            names = [f.name for f in files]
            if len(set(names)) != len(names):
                raise bad("lists a file twice")
            missing = sorted(REQUIRED_FILES - set(names))
            if missing:
                raise bad(f"does not list {', '.join(missing)}")
            goals = doc["goals"]
            specs = doc["goal_specs"]
            if not isinstance(goals, dict) or not isinstance(specs, list):
                raise bad("has malformed goals")
            for gid, roots in goals.items():
                if not isinstance(roots, dict) or not {
                    "log_size",
                    "log_root",
                    "leaderboard_size",
                    "leaderboard_root",
                } <= set(roots):
                    raise bad(f"has malformed roots for goal {gid}")
            return cls(
                node_id=str(doc["node_id"]),
                height=int(doc["height"]),
                head_hash=str(doc["head_hash"]),
                goals=goals,
                goal_specs=specs,
                schema_version=schema,
                tool_version=str(doc["tool_version"]),
                created_at=str(doc["created_at"]),
                files=files,
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IanError):
                raise
            raise bad(f"is malformed ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- snapshot


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ian-node")
    except PackageNotFoundError:
        return "0+unknown"


def _utc_stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def default_archive_path(datadir: DataDir, node_id: str, now: datetime | None = None) -> Path:
    """``<data_dir>/backups/ian-backup-<node_id[:12]>-<UTC yyyymmddTHHMMSSZ>.tar``."""
    when = now or datetime.now(UTC)
    name = f"{ARCHIVE_PREFIX}{node_id[:12]}-{_utc_stamp(when)}{ARCHIVE_SUFFIX}"
    return datadir.backups_dir / name


def _snapshot_store(source: Path, target: Path, progress: Progress | None) -> None:
    """Copy ``source`` into the new file ``target`` as of one instant (see module docstring)."""
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {source}: {exc}") from exc
    dst: sqlite3.Connection | None = None
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        # Pin one WAL snapshot for the whole copy: the backup steps below reuse this read
        # transaction, so concurrent commits by the node neither block nor restart the copy.
        src.execute("BEGIN")
        src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        dst = sqlite3.connect(target, isolation_level=None)
        # A scratch file, read once and deleted: the archive is what gets fsynced, so the copy
        # need not be synced at every step (that wrote the whole store to disk an extra time).
        dst.execute("PRAGMA synchronous = OFF")

        def step(_status: int, remaining: int, total: int) -> None:
            if progress is not None:
                progress("snapshot", total - remaining, total)

        src.backup(dst, pages=_SNAPSHOT_PAGES, progress=step)
        src.execute("COMMIT")
        # One self-contained file that opens read-only anywhere (the node turns WAL back on).
        dst.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.OperationalError) and "disk" in str(exc).lower():
            raise DataDirError(
                f"cannot write the snapshot {target}: {exc}",
                fix=f"free space on the file system holding {target.parent}",
            ) from exc
        raise StoreError(f"snapshot of {source} failed: {exc}") from exc
    finally:
        if dst is not None:
            dst.close()
        src.close()


class SnapshotRoots(NamedTuple):
    """What :func:`snapshot_roots` read: the head, the per-goal roots and the file's schema."""

    height: int
    head_hash: str
    goals: dict[str, Any]
    schema_version: int


def snapshot_roots(store_path: Path, specs: list[GoalSpec]) -> SnapshotRoots:
    """The head (height, hash hex), per-goal roots and schema version of the store at
    ``store_path``, opened read-only (an older schema is read as it is, not upgraded).

    Uses the quick root check (:func:`ian.ledger.recovery.load_chain_state`): raises
    :class:`StoreError` when the peaks/leaderboards disagree with the newest block, and
    :class:`SchemaError` for a newer schema.
    """
    from ian.ledger.recovery import load_chain_state

    store = Store(store_path, readonly=True)
    try:
        state = load_chain_state(store, specs)
        schema = store.schema_version
    finally:
        store.close()
    goals = {gid: g.roots().to_doc() for gid, g in sorted(state.goals.items()) if g.mmr.size}
    return SnapshotRoots(state.height, state.head_hash.hex(), goals, schema)


# --------------------------------------------------------------------------- writing


def _tar_header(name: str, size: int, mode: int, mtime: float) -> bytes:
    """The header block(s) of one regular member (a pax header first only when needed)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(mtime)
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    """The zero bytes that complete a member's last 512-byte block."""
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _member(name: str, data: bytes, mode: int, mtime: float) -> bytes:
    return _tar_header(name, len(data), mode, mtime) + data + _padding(len(data))


def compressor(threads: int = ZSTD_THREADS) -> zstandard.ZstdCompressor:
    """The Zstandard compressor of the archive body (see :data:`ZSTD_LEVEL`)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL,
        min_match=ZSTD_MIN_MATCH,
        hash_log=ZSTD_HASH_LOG,
        threads=threads if (os.cpu_count() or 1) > 1 else 0,
        write_checksum=1,
    )
    return zstandard.ZstdCompressor(compression_params=params)


def _compress_bound(size: int) -> int:
    """ZSTD_COMPRESSBOUND: the largest frame Zstandard makes of ``size`` bytes, plus room for
    the frame header and checksum."""
    small = (128 * 1024 - size) >> 11 if size < 128 * 1024 else 0
    return size + (size >> 8) + small + 64


def skippable_frame(size: int) -> bytes:
    """The header of a Zstandard skippable frame of ``size`` payload bytes."""
    return struct.pack("<II", _SKIPPABLE_MAGIC, size)


def _read_small(datadir: DataDir, name: str) -> bytes | None:
    path = datadir.root / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(
            f"cannot read {path}: {exc.strerror or exc}", fix=f"check owner/permissions of {path}"
        ) from None


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: durable at ``path`` when this exists."""

    path: Path
    size: int
    manifest: Manifest
    seconds: float

    def to_doc(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "node_id": self.manifest.node_id,
            "height": self.manifest.height,
            "head_hash": self.manifest.head_hash,
            "goals": self.manifest.goals,
            "files": [f.to_doc() for f in self.manifest.files],
        }


def _os_error(path: Path, exc: OSError) -> DataDirError:
    fix = (
        f"free space on the file system holding {path.parent}"
        if exc.errno == errno.ENOSPC
        else f"check owner/permissions of {path.parent}"
    )
    return DataDirError(f"cannot write {path}: {exc.strerror or exc}", fix=fix)


def create_backup(
    datadir: DataDir,
    specs: list[GoalSpec],
    *,
    output: Path | None = None,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Write a consistent archive of ``datadir`` and record it in ``backup_state.json``.

    Works with or without a running node. ``output`` defaults to :func:`default_archive_path`;
    an existing ``output`` is never replaced. Raises :class:`DataDirError` for a missing data
    dir, identity or store and for write failures (disk full names the fix), :class:`StoreError`
    when the snapshot's roots disagree with its newest block. Nothing but ``*.part``/``*.tmp``
    files (removed on the way out whenever the process survives) is left behind on failure.
    """
    started = time.monotonic()
    root = datadir.root
    if not root.is_dir():
        raise DataDirError(f"data dir {root} does not exist", fix="check --data-dir / IAN_DATA_DIR")
    if not datadir.store_file.is_file():
        raise DataDirError(
            f"no store at {datadir.store_file}: nothing to back up",
            fix="check --data-dir; the node creates the store on its first start",
        )
    with maintenance_lock(root, exclusive=False):
        identity_raw = _read_small(datadir, "identity.json")
        if identity_raw is None:
            raise DataDirError(
                f"{datadir.identity_file} is missing", fix="check --data-dir (no node lives here)"
            )
        identity_doc = read_json(datadir.identity_file, recovery="restore it from a backup")
        node_id = str(identity_doc.get("node_id", "")) if isinstance(identity_doc, dict) else ""
        when = now or datetime.now(UTC)
        target = default_archive_path(datadir, node_id, when)
        if output is not None:
            # An existing directory gets the default file name (e.g. another volume).
            target = Path(output) / target.name if Path(output).is_dir() else Path(output)
        if target.exists():
            raise DataDirError(
                f"{target} already exists; not overwriting it", fix="choose another --output"
            )
        try:
            if output is None:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif not target.parent.is_dir():
                raise DataDirError(
                    f"directory {target.parent} does not exist", fix="create it or fix --output"
                )
        except OSError as exc:
            raise _os_error(target, exc) from None
        token = secrets.token_hex(6)
        snapshots: list[tuple[str, Path]] = []
        part = target.with_name(target.name + ".part")
        try:
            for i, name in enumerate(DATABASES):
                source = root / name
                if name != STORE_NAME and not source.is_file():
                    continue
                snapshot = target.parent / f".ian-snapshot-{token}-{i}.sqlite.tmp"
                snapshots.append((name, snapshot))
                _snapshot_store(source, snapshot, progress)
            small: list[tuple[str, bytes]] = [("identity.json", identity_raw)]
            for name in SMALL_FILES[1:]:
                data = _read_small(datadir, name)
                if data is not None:
                    small.append((name, data))
            store_snapshot = dict(snapshots)[STORE_NAME]
            with ThreadPoolExecutor(1, thread_name_prefix="ian-backup-roots") as pool:
                roots = pool.submit(snapshot_roots, store_snapshot, specs)
                try:
                    manifest = _write_archive(
                        part,
                        snapshots,
                        small,
                        roots,
                        node_id=node_id,
                        specs=specs,
                        created=when,
                        progress=progress,
                    )
                except BaseException:
                    if roots.done() and roots.exception() is not None:
                        roots.result()  # the root check's error explains the failure best
                    raise
            try:
                # link+unlink: never replaces a file that appeared meanwhile.
                os.link(part, target)
                part.unlink()
                _fsync_dir(target.parent)
            except FileExistsError:
                raise DataDirError(
                    f"{target} already exists; not overwriting it", fix="choose another --output"
                ) from None
            except OSError as exc:
                raise _os_error(target, exc) from None
        finally:
            for _name, snapshot in snapshots:
                for leftover in (snapshot, snapshot.with_name(snapshot.name + "-journal")):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            with contextlib.suppress(OSError):
                part.unlink()
        size = target.stat().st_size
        result = BackupResult(
            path=target, size=size, manifest=manifest, seconds=time.monotonic() - started
        )
        record_backup(datadir, result)
        return result


def _manifest_text(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.to_doc(), indent=2) + "\n").encode("utf-8")


def _reserve_for_manifest(manifest: Manifest, specs: list[GoalSpec], mtime: float) -> int:
    """Bytes to keep free at the start of the file for the manifest's frame and the skippable
    frame after it: the bound of a manifest whose unknown values (height, head, every goal's
    roots, the databases' digests) have their longest possible form, doubled for slack."""
    widest = 2**64
    longest = Manifest(
        **{
            **manifest.__dict__,
            "height": widest,
            "head_hash": "f" * 64,
            "goals": {
                spec.id: {
                    "log_size": widest,
                    "log_root": "f" * 64,
                    "leaderboard_size": widest,
                    "leaderboard_root": "f" * 64,
                }
                for spec in specs
            },
        }
    )
    member = len(_tar_header(MANIFEST_NAME, 0, 0o600, mtime)) + len(_manifest_text(longest))
    return 2 * _compress_bound(member + tarfile.BLOCKSIZE) + _SKIPPABLE_HEADER


def _stream_member(
    out: zstandard.ZstdCompressionWriter,
    name: str,
    path: Path,
    size: int,
    mtime: float,
    advance: Callable[[int], None],
) -> str:
    """Append ``path`` (``size`` bytes) as member ``name``: each chunk is read once, hashed and
    handed to the compressor. Returns the hex SHA-256."""
    digest = hashlib.sha256()
    count = 0
    out.write(_tar_header(name, size, 0o644, mtime))
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            count += len(chunk)
            advance(len(chunk))
    if count != size:
        raise StoreError(f"snapshot {path} changed size while being archived")
    out.write(_padding(size))
    return digest.hexdigest()


def _write_archive(
    part: Path,
    databases: list[tuple[str, Path]],
    small: list[tuple[str, bytes]],
    roots: Future[SnapshotRoots],
    *,
    node_id: str,
    specs: list[GoalSpec],
    created: datetime,
    progress: Progress | None,
) -> Manifest:
    """Write the archive to ``part`` (fsynced when this returns); returns the final manifest.

    ``roots`` is the snapshot's root check running on another thread: its result fills the
    manifest, its failure stops the write."""
    mtime = created.timestamp()
    entries = [
        FileEntry(
            name,
            len(data),
            hashlib.sha256(data).hexdigest(),
            0o600 if name in SECRET_FILES else 0o644,
        )
        for name, data in small
    ]
    sizes = {name: path.stat().st_size for name, path in databases}
    unknown = "0" * 64  # until the database is streamed
    draft = Manifest(
        node_id=node_id,
        height=0,
        head_hash=unknown,
        goals={},
        goal_specs=[s.model_dump(mode="json") for s in specs],
        schema_version=SCHEMA_VERSION,
        tool_version=tool_version(),
        created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        files=[*entries, *(FileEntry(name, sizes[name], unknown, 0o644) for name, _ in databases)],
    )
    reserve = _reserve_for_manifest(draft, specs, mtime)
    total = len(_manifest_text(draft)) + sum(f.size for f in draft.files)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if roots.done():
            roots.result()  # the root check failed: stop here, with its error
        if progress is not None:
            progress("archive", done, total)

    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _os_error(part, exc) from None
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK) as fh:
            fh.seek(reserve)
            with compressor().stream_writer(fh, write_size=_CHUNK, closefd=False) as body:
                for (name, data), entry in zip(small, entries, strict=True):
                    body.write(_member(name, data, entry.mode, mtime))
                    advance(len(data))
                for name, path in databases:
                    digest = _stream_member(body, name, path, sizes[name], mtime, advance)
                    entries.append(FileEntry(name, sizes[name], digest, 0o644))
                body.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end of the tar
            fh.flush()
            snap = roots.result()
            manifest = Manifest(
                **{
                    **draft.__dict__,
                    "height": snap.height,
                    "head_hash": snap.head_hash,
                    "goals": snap.goals,
                    # the copy's (a store not yet upgraded is archived as it is)
                    "schema_version": snap.schema_version,
                    "files": entries,
                }
            )
            text = _manifest_text(manifest)
            head = compressor(threads=0).compress(_member(MANIFEST_NAME, text, 0o600, mtime))
            gap = reserve - len(head) - _SKIPPABLE_HEADER
            if gap < 0:  # pragma: no cover - the reserve is an upper bound
                raise StoreError(f"the manifest of {part} outgrew its reserved space")
            os.pwrite(fd, head + skippable_frame(gap) + b"\0" * gap, 0)
            os.fsync(fd)
            if progress is not None:
                progress("archive", total, total)
    except OSError as exc:
        raise _os_error(part, exc) from None
    return manifest


# --------------------------------------------------------------------------- backup state


def record_backup(datadir: DataDir, result: BackupResult) -> None:
    """Atomically write ``backup_state.json`` = ``{"last_success_at", "path", "height"}``."""
    atomic_write_json(
        datadir.root / STATE_FILE,
        {
            "last_success_at": time.time(),
            "path": str(result.path.absolute()),
            "height": result.manifest.height,
        },
        mode=0o644,
    )


def read_last_backup(datadir: DataDir) -> float | None:
    """Epoch seconds of the last successful backup, or None (no backup, or unreadable state).

    Cheap and never raising, so the node can call it at every metrics scrape for
    ``ian_backup_last_success_timestamp_seconds``.
    """
    try:
        doc = json.loads((datadir.root / STATE_FILE).read_bytes())
        value = doc["last_success_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


# --------------------------------------------------------------------------- reading


_END = object()


class _Decompressed(io.RawIOBase):
    """The tar stream inside a ``.tar.zst`` archive, read forwards only (``seek`` skips ahead),
    which is all :mod:`tarfile` needs to read members in order.

    With ``prefetch`` a thread decompresses up to :data:`_PREFETCH_CHUNKS` chunks ahead, so
    decompression (which releases the GIL) overlaps whatever the reader does with the data
    (hashing, writing). ``raw_pos`` is how far into the compressed file the decompressor is.
    Damage in the compressed data raises :class:`zstandard.ZstdError` from :meth:`read`.
    """

    def __init__(self, fh: BinaryIO, *, prefetch: bool) -> None:
        super().__init__()
        self._fh = fh
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            fh, read_size=_CHUNK, read_across_frames=True
        )
        self._buf = b""
        self._at = 0  # read position inside _buf
        self._pos = 0  # position in the decompressed stream
        self.raw_pos = 0
        self._queue: queue.Queue[object] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if prefetch:
            self._queue = queue.Queue(_PREFETCH_CHUNKS)
            self._thread = threading.Thread(
                target=self._produce, name="ian-archive-reader", daemon=True
            )
            self._thread.start()

    def _produce(self) -> None:
        assert self._queue is not None
        try:
            while not self._stop.is_set():
                chunk = self._reader.read(_CHUNK)
                self.raw_pos = self._fh.tell()
                if not chunk:
                    break
                self._queue.put(chunk)
        except BaseException as exc:  # handed to the reader, raised there
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    def _next_chunk(self) -> bytes:
        if self._queue is None:
            chunk = self._reader.read(_CHUNK)
            self.raw_pos = self._fh.tell()
            return chunk
        if self._thread is None:  # the producer has finished
            return b""
        item = self._queue.get()
        if item is _END:
            self._thread.join()
            self._thread = None
            return b""
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes)
        return item

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the stream."""
        parts: list[bytes] = []
        want = size if size >= 0 else 1 << 62
        while want > 0:
            if self._at >= len(self._buf):
                self._buf, self._at = self._next_chunk(), 0
                if not self._buf:
                    break
            take = min(want, len(self._buf) - self._at)
            if self._at == 0 and take == len(self._buf):
                parts.append(self._buf)
            else:
                parts.append(self._buf[self._at : self._at + take])
            self._at += take
            want -= take
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True  # forwards only; tarfile seeks only to skip the rest of a member

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._pos:
            raise io.UnsupportedOperation("a compressed archive is read forwards only")
        while self._pos < target:
            if not self.read(min(target - self._pos, _CHUNK)):
                break
        return self._pos

    def close(self) -> None:
        """Stop the prefetching thread (draining what it queued) and close the reader."""
        if self._queue is not None and self._thread is not None:
            self._stop.set()
            while self._queue.get() is not _END:
                pass
            self._thread.join()
            self._thread = None
        super().close()


def is_compressed(archive: Path) -> bool:
    """True when ``archive`` starts with a Zstandard frame (a ``.tar.zst`` archive)."""
    with archive.open("rb") as fh:
        return fh.read(4) == _ZSTD_MAGIC


@contextlib.contextmanager
def _open_tar(
    archive: Path, *, prefetch: bool = False
) -> Iterator[tuple[tarfile.TarFile, Callable[[], int]]]:
    """The archive as a :class:`tarfile.TarFile` read front to back, whichever the container,
    and a function telling how far into the archive file reading has got."""
    try:
        fh = archive.open("rb", buffering=0)
    except FileNotFoundError:
        raise ArchiveError(
            f"archive {archive} does not exist", fix="check the path (see `ls <data-dir>/backups`)"
        ) from None
    except IsADirectoryError:
        raise ArchiveError(
            f"archive {archive} is a directory", fix="give the archive file"
        ) from None
    except OSError as exc:
        raise ArchiveError(
            f"cannot read archive {archive}: {exc.strerror or exc}",
            fix=f"check owner/permissions of {archive}",
        ) from None
    stream: _Decompressed | None = None
    try:
        try:
            magic = os.pread(fh.fileno(), 4, 0)
            if magic == _ZSTD_MAGIC:
                stream = _Decompressed(fh, prefetch=prefetch)
                # typeshed's tarfile.open overloads omit copybufsize (passed on to TarFile).
                tar = tarfile.open(fileobj=stream, mode="r:", copybufsize=_CHUNK)  # type: ignore[call-overload]  # noqa: SIM115
            else:
                # An archive of the previous format (plain tar): member data is read straight
                # from the file; truncation is an error either way.
                tar = tarfile.open(fileobj=fh, mode="r:*", copybufsize=_CHUNK)  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
            raise _archive_error(archive, f"is not a tar archive ({exc})") from None
        try:
            if stream is not None:
                decompressed = stream
                yield tar, lambda: decompressed.raw_pos
            else:
                yield tar, fh.tell
        finally:
            tar.close()
    finally:
        if stream is not None:
            stream.close()
        fh.close()


def _first_manifest(archive: Path, tar: tarfile.TarFile) -> Manifest:
    first = tar.next()
    if first is None:
        raise _archive_error(archive, "is empty")
    if first.name != MANIFEST_NAME or not first.isreg():
        raise _archive_error(archive, f"first member is {first.name!r}, not {MANIFEST_NAME}")
    if first.size > MAX_MANIFEST_BYTES:
        raise _archive_error(archive, f"{MANIFEST_NAME} is implausibly large ({first.size} bytes)")
    data = tar.extractfile(first)
    assert data is not None
    raw = data.read()
    if len(raw) != first.size:
        raise _archive_error(archive, "is truncated inside manifest.json")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise _archive_error(archive, f"manifest.json is not valid JSON ({exc})") from None
    return Manifest.from_doc(doc, archive=archive)


def _check_member(archive: Path, member: tarfile.TarInfo, manifest: Manifest) -> FileEntry:
    name = member.name
    if not safe_member_name(name):
        raise _archive_error(archive, f"member {name!r} has an unsafe path; refusing to extract")
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise _archive_error(archive, f"member {name!r} is a {kind} link; refusing to extract")
    if member.ischr() or member.isblk() or member.isfifo():
        raise _archive_error(archive, f"member {name!r} is a device file or FIFO; refusing it")
    if not member.isreg() or member.issparse():
        raise _archive_error(archive, f"member {name!r} is not a regular file; refusing it")
    entry = manifest.file(name)
    if entry is None:
        raise _archive_error(archive, f"member {name!r} is not listed in the manifest")
    if member.size != entry.size:
        raise _archive_error(
            archive, f"member {name!r} is {member.size} bytes, the manifest says {entry.size}"
        )
    return entry


class MemberWriter(Protocol):
    """Where :func:`read_archive` writes one member's data: a writable binary file."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def read_archive(
    archive: Path,
    sink: Callable[[FileEntry], MemberWriter | None],
    *,
    progress: Progress | None = None,
) -> Manifest:
    """Read ``archive`` once, front to back, checking everything before trusting anything.

    ``sink(entry)`` returns a writable binary file for the member's data, or None to only
    check it; the file is closed by the caller of ``sink`` (see :mod:`.restore`). Checks,
    each an :class:`ArchiveError` naming the first problem: manifest first and valid (a newer
    format or schema is :class:`SchemaError`), every member a regular file with a safe path
    listed in the manifest exactly once with the listed size and SHA-256, no listed member
    missing, no truncation. Data is handed to ``sink`` while being hashed, so a caller must
    discard what it wrote when this raises.
    """
    archive = Path(archive)
    total = archive.stat().st_size if archive.is_file() else 0
    done = 0
    with _open_tar(archive, prefetch=True) as (tar, position):
        try:
            manifest = _first_manifest(archive, tar)
            seen: set[str] = set()
            # tar.next(), not iteration: iterating a TarFile starts again at the manifest.
            while (member := tar.next()) is not None:
                entry = _check_member(archive, member, manifest)
                if entry.name in seen:
                    raise _archive_error(archive, f"member {entry.name!r} appears twice")
                seen.add(entry.name)
                # The data straight from the stream tarfile reads (a member is one contiguous
                # run: sparse ones are refused), without extractfile's extra copies; the next
                # tar.next() skips the padding.
                source = tar.fileobj
                assert source is not None
                source.seek(member.offset_data)
                out = sink(entry)
                digest = hashlib.sha256()
                count = 0
                try:
                    while count < entry.size and (
                        chunk := source.read(min(_CHUNK, entry.size - count))
                    ):
                        digest.update(chunk)
                        count += len(chunk)
                        if out is not None:
                            out.write(chunk)
                        if progress is not None:
                            done = position()
                            progress("read", done, total)
                finally:
                    if out is not None:
                        out.close()
                if count != entry.size:
                    raise _archive_error(archive, f"is truncated inside {entry.name!r}")
                if digest.hexdigest() != entry.sha256:
                    raise _archive_error(
                        archive,
                        f"member {entry.name!r} does not match its SHA-256 in the manifest",
                    )
            missing = [f.name for f in manifest.files if f.name not in seen]
            if missing:
                raise _archive_error(
                    archive,
                    f"is truncated or incomplete: {', '.join(missing)} missing",
                )
        except (tarfile.TarError, EOFError, zstandard.ZstdError) as exc:
            raise _archive_error(archive, f"is truncated or damaged ({exc})") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DataDirError(
                    f"disk full while extracting {archive}: {exc.strerror}",
                    fix="free space on the target file system",
                ) from None
            raise _archive_error(archive, f"cannot be read ({exc})") from None
    if progress is not None:
        progress("read", total, total)
    return manifest


def read_manifest(archive: Path) -> Manifest:
    """The manifest alone (first member), without reading the rest of the archive."""
    archive = Path(archive)
    with _open_tar(archive) as (tar, _position):
        try:
            return _first_manifest(archive, tar)
        except (tarfile.TarError, EOFError, zstandard.ZstdError) as exc:
            raise _archive_error(archive, f"is truncated or damaged ({exc})") from None
        except OSError as exc:
            raise _archive_error(archive, f"cannot be read ({exc})") from None


def list_members(archive: Path) -> list[dict[str, Any]]:
    """Every member's header (name, type, size, mode) without extracting or hashing data."""
    archive = Path(archive)
    with _open_tar(archive) as (tar, _position):
        try:
            return [
                {
                    "name": m.name,
                    "type": "file" if m.isreg() else "dir" if m.isdir() else "other",
                    "size": m.size,
                    "mode": stat.S_IMODE(m.mode),
                }
                for m in tar.getmembers()
            ]
        except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
            raise _archive_error(archive, f"is truncated or damaged ({exc})") from None


# --------------------------------------------------------------------------- verification


def compare_roots(
    archive: Path, manifest: Manifest, height: int, head_hash: str, goals: dict[str, Any]
) -> None:
    """Raise :class:`ArchiveError` unless the store's position and roots equal the manifest's."""
    if height != manifest.height or head_hash != manifest.head_hash:
        raise _archive_error(
            archive,
            f"store head is height {height} ({head_hash[:16]}…), the manifest says "
            f"{manifest.height} ({manifest.head_hash[:16]}…)",
        )
    for gid in sorted(set(goals) | set(manifest.goals)):
        mine, theirs = goals.get(gid), manifest.goals.get(gid)
        if (
            mine is None
            or theirs is None
            or any(
                mine[k] != theirs[k]
                for k in ("log_size", "log_root", "leaderboard_size", "leaderboard_root")
            )
        ):
            raise _archive_error(
                archive, f"roots of goal {gid} in the store differ from the manifest"
            )


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_archive`; ``problem`` names the first failure."""

    ok: bool
    archive: Path
    manifest: Manifest | None
    problem: str | None = None
    blocks: int = 0
    contributions: int = 0

    def to_doc(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "archive": str(self.archive),
            "problem": self.problem,
            "node_id": self.manifest.node_id if self.manifest else None,
            "height": self.manifest.height if self.manifest else None,
            "blocks": self.blocks,
            "contributions": self.contributions,
            "goals": self.manifest.goals if self.manifest else None,
        }


def verify_archive(
    archive: Path,
    *,
    work_dir: Path | None = None,
    progress: Progress | None = None,
    block_progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Full check of an archive: every checksum, the manifest's consistency, and a full replay
    of the store inside (:func:`ian.ledger.recovery.verify_store`) whose roots must equal the
    manifest's. Only ``chain.sqlite`` is extracted, into a temporary directory (under
    ``work_dir`` if given) that is always removed. Never raises for a bad archive: the result
    names the first problem.
    """
    import tempfile

    from ian.ledger.recovery import verify_store

    archive = Path(archive)
    manifest: Manifest | None = None
    with tempfile.TemporaryDirectory(prefix="ian-verify-", dir=work_dir) as tmp:
        db_path = Path(tmp) / STORE_NAME
        try:

            def sink(entry: FileEntry) -> MemberWriter | None:
                if entry.name == STORE_NAME:
                    return db_path.open("xb")
                return None

            manifest = read_archive(archive, sink, progress=progress)
            store = Store(db_path, readonly=True)
            try:
                report = verify_store(store, manifest.specs(), progress=block_progress)
                height, head, _ts = store.head()
            finally:
                store.close()
            if not report.ok:
                raise _archive_error(
                    archive,
                    f"store fails verification at block {report.first_bad_height}: "
                    f"{report.problem}",
                )
            goals = {gid: r for gid, r in report.roots.items() if r["log_size"]}
            compare_roots(archive, manifest, height, head.hex(), goals)
        except IanError as exc:
            return VerifyResult(ok=False, archive=archive, manifest=manifest, problem=str(exc))
    return VerifyResult(
        ok=True,
        archive=archive,
        manifest=manifest,
        blocks=report.blocks,
        contributions=report.contributions,
    )
