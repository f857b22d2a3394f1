"""The embedded store: blocks, contributions and MMR nodes in one SQLite database (WAL).

Durability: a block and everything it adds (contributions, MMR nodes) are written in one
transaction; :meth:`Store.append_block` returns only after the commit is on disk
(``synchronous=FULL``), which is when the sequencer may answer "accepted".

Schema versions are recorded in ``meta``; a database from a newer schema is refused, never
rewritten, and one from an older schema is upgraded when it is opened for writing (see
:data:`SCHEMA_VERSION`). One writer connection (used by one thread at a time: the sequencer's
worker) and a separate reader connection for the API, which sees only committed data.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ian.chain import mmr
from ian.chain.blocks import Block, BlockHeader
from ian.chain.contributions import Contribution, make_contribution, wire_size_bound
from ian.chain.state import Outcome
from ian.errors import SchemaError, StoreError

#: 2: duplicate packs are found through an index of the first 8 bytes of ``pack_hash``
#: (``contributions_pack_prefix``) instead of a unique index of ``(goal_id, pack_hash)``. The
#: hashes are random, so nearly every insert changes a page of its own in that index; the prefix
#: index has about a third of the pages to read, write and checkpoint (16 vs 45 MiB for 1,000,000
#: contributions). With the checkpoint thread below, the durable insert on a store that big took
#: 17.1 instead of 34.2 µs a contribution (pipeline_bench). The sequencer and every verifier reject
#: a duplicate before it reaches the store, as they did.
#: 1: the first schema; upgraded to 2 by the first writable open (:meth:`Store._upgrade`).
SCHEMA_VERSION = 2

log = logging.getLogger("ian.storage")

#: The writer's own checkpoint, a backstop: pages in the WAL before a commit copies them into the
#: database itself (256 MiB). Normally the :class:`_Checkpointer` thread does that sooner.
WAL_BACKSTOP_PAGES = 65536
#: at most one background checkpoint this often (s): each copies a page once however many commits
#: changed it since the last (the pack index's pages are changed by nearly every block)
CHECKPOINT_INTERVAL_S = 0.5

#: MMR nodes this high or higher are kept in memory once read: a node never changes until a
#: truncation removes it (which empties the cache), a log of n leaves has about 2n / 2**h of them
#: (~20,000 for 10,000,000 leaves), and a proof then reads the rows near its leaf instead of one
#: row per level of a tree spread over the whole table.
CACHED_NODE_HEIGHT = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header TEXT NOT NULL,
    signature BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    entry_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS contributions (
    seq INTEGER PRIMARY KEY,
    goal_id TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    contribution_hash BLOB NOT NULL,
    pack_hash BLOB NOT NULL,
    contributor_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    version TEXT NOT NULL,
    parameters BLOB NOT NULL,
    metadata TEXT NOT NULL,
    score REAL NOT NULL,
    metrics TEXT NOT NULL,
    block_height INTEGER NOT NULL,
    mmr_nodes BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS contributions_log ON contributions (goal_id, log_index);
CREATE INDEX IF NOT EXISTS contributions_pack_prefix ON contributions (substr(pack_hash, 1, 8));
"""

#: what :meth:`Store.has_packs` asks, by schema version ({marks}: one ``?`` per hash). INDEXED BY:
#: without statistics SQLite would pick the goal's log index and scan the goal's rows.
_HAS_PACKS = {
    1: "SELECT pack_hash FROM contributions WHERE goal_id = ? AND pack_hash IN ({marks})",
    2: "SELECT pack_hash FROM contributions INDEXED BY contributions_pack_prefix "
    "WHERE substr(pack_hash, 1, 8) IN ({marks}) AND goal_id = ? AND pack_hash IN ({marks})",
}


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One row of a goal's contribution log. Also the API's JSON shape of a log entry
    (:data:`ian.api.models.LogEntryDoc`: these fields, the hashes in lowercase hex)."""

    goal_id: str
    log_index: int
    contribution_hash: bytes
    pack_hash: bytes
    contributor_id: str
    seed: int
    version: str
    score: float
    metrics: dict[str, float]
    block_height: int


#: a log entry as :meth:`Store.log_rows` reads it: ``(goal_id, log_index, contribution_hash,
#: pack_hash, contributor_id, seed, version, score, metrics JSON text, block_height)``
LogRow = tuple[str, int, bytes, bytes, str, int, str, float, str, int]


@dataclass(slots=True)
class NewEntry:
    """An accepted contribution as the sequencer hands it to :meth:`Store.append_block`."""

    contribution: Contribution
    log_index: int
    contribution_hash: bytes
    score: float
    metrics_json: str
    first_node_pos: int
    mmr_nodes: tuple[bytes, ...]

    @classmethod
    def accepted(cls, c: Contribution, outcome: Outcome) -> NewEntry:
        assert outcome.accepted and outcome.contribution_hash is not None
        assert outcome.log_index is not None and outcome.score is not None
        return cls(
            contribution=c,
            log_index=outcome.log_index,
            contribution_hash=outcome.contribution_hash,
            score=outcome.score,
            metrics_json=outcome.metrics_json,
            first_node_pos=outcome.first_node_pos,
            mmr_nodes=outcome.mmr_nodes,
        )


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class Store:
    """SQLite store. Writes go through :meth:`append_block`/:meth:`truncate_above` only."""

    def __init__(self, path: Path, *, readonly: bool = False, durable_commits: bool = True) -> None:
        """``durable_commits=False``: a commit returns before the disk has it (WAL mode keeps
        the file consistent; a crash may lose the last blocks). Only for a store that is
        rebuilt from another durable record after a crash: on a network of several
        authorities the consensus log is that record (``ian.ledger.consensus_chain``)."""
        self.path = path
        self.readonly = readonly
        self._write_lock = threading.Lock()
        # (goal_id, position) -> hash of MMR nodes at CACHED_NODE_HEIGHT and above; the
        # generation changes with every truncation, so a read that raced one adds nothing.
        self._node_cache: dict[tuple[str, int], bytes] = {}
        self._node_cache_gen = 0
        self._node_cache_lock = threading.Lock()
        #: the schema of the open file: older ones are upgraded by a writable open, and read as
        #: they are by a read-only one
        self.schema_version = SCHEMA_VERSION
        self._checkpointer: _Checkpointer | None = None
        try:
            if readonly:
                self._w = None
                self._r = _connect(path, readonly=True)
                self.schema_version = self._check_schema(self._r) or SCHEMA_VERSION
            else:
                self._w = _connect(path)
                self._w.execute("PRAGMA journal_mode = WAL")
                sync = "FULL" if durable_commits else "NORMAL"
                self._w.execute(f"PRAGMA synchronous = {sync}")
                self._w.execute("PRAGMA cache_size = -65536")
                self._w.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
                # After a burst the WAL file is cut back to 64 MiB when it starts over.
                self._w.execute(f"PRAGMA journal_size_limit = {64 * 2**20}")
                self._init_schema()
                self._r = _connect(path)
                self._checkpointer = _Checkpointer(path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"store {path} cannot be read: {exc}",
                fix="run `ian node verify`, or restore a backup with `ian restore`",
            ) from exc

    # -- schema ---------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        assert self._w is not None
        found = self._check_schema(self._w)
        if found is None:
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._w.execute(stmt)
                self._w.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        elif found < SCHEMA_VERSION:
            self._upgrade(found)

    def _upgrade(self, found: int) -> None:
        """Schema 1 -> 2 in one transaction (a crash leaves schema 1, upgraded again next time):
        the prefix index is built, the unique index dropped (its pages are reused by later
        inserts; the file does not shrink). Reads the table once: logged, as it takes a while on
        a big store (measured in the runbook's Upgrading section)."""
        assert self._w is not None and found == 1
        rows = self._w.execute("SELECT COALESCE(MAX(seq), 0) FROM contributions").fetchone()[0]
        log.warning(
            "store %s: upgrading schema %d -> %d (once: indexing %d contributions)",
            self.path,
            found,
            SCHEMA_VERSION,
            rows,
        )
        started = time.monotonic()
        with self._tx():
            self._w.execute(
                "CREATE INDEX IF NOT EXISTS contributions_pack_prefix "
                "ON contributions (substr(pack_hash, 1, 8))"
            )
            self._w.execute("DROP INDEX IF EXISTS contributions_pack")
            self._w.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        self.schema_version = SCHEMA_VERSION
        log.warning(
            "store %s: schema %d in %.1f s", self.path, SCHEMA_VERSION, time.monotonic() - started
        )

    def _check_schema(self, conn: sqlite3.Connection) -> int | None:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        version = int(row[0])
        if version < 1:
            raise SchemaError(f"store {self.path} has an invalid schema version {version}")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"store {self.path} has schema version {version}; this ian understands up to "
                f"{SCHEMA_VERSION}",
                fix="run a newer ian, or restore a backup made by this version",
            )
        return version

    def _tx(self) -> _Transaction:
        return _Transaction(self._w, self._checkpointer)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        for conn in (self._w, self._r):
            if conn is not None:
                conn.close()

    # -- writes ---------------------------------------------------------------------------------
    def append_block(self, block: Block, entries: Sequence[NewEntry]) -> None:
        """Write a block and its entries atomically and durably."""
        self.append_blocks([(block, entries)])

    def append_blocks(self, items: Sequence[tuple[Block, Sequence[NewEntry]]]) -> None:
        """Write consecutive blocks and their entries in ONE transaction (one fsync): all of
        them, durably, or none (a follower catching up applies a fetched batch this way)."""
        if self._w is None:
            raise StoreError("store is open read-only")
        if not items:
            return
        with self._write_lock:
            seq = self._w.execute("SELECT COALESCE(MAX(seq), 0) FROM contributions").fetchone()[0]
            block_rows = []
            rows = []
            for block, entries in items:
                header_json = json.dumps(
                    block.header.to_doc(), sort_keys=True, separators=(",", ":")
                )
                block_rows.append(
                    (block.height, block.hash, header_json, block.signature, seq + 1, len(entries))
                )
                seq += len(entries)
                for e in entries:
                    c = e.contribution
                    rows.append(
                        (
                            c.goal_id,
                            e.log_index,
                            e.contribution_hash,
                            c.pack_hash,
                            c.contributor_id,
                            c.seed,
                            c.version,
                            c.parameters,
                            c.metadata_json,
                            e.score,
                            e.metrics_json,
                            block.height,
                            b"".join(e.mmr_nodes),
                        )
                    )
            try:
                with self._tx():
                    self._w.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)", block_rows)
                    self._w.executemany(
                        "INSERT INTO contributions (goal_id, log_index, contribution_hash, "
                        "pack_hash, contributor_id, seed, version, parameters, metadata, score, "
                        "metrics, block_height, mmr_nodes) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
            except sqlite3.Error as exc:
                heights = f"{items[0][0].height}" + (
                    f"..{items[-1][0].height}" if len(items) > 1 else ""
                )
                raise StoreError(f"writing block {heights} failed: {exc}") from exc

    def truncate_above(self, height: int) -> int:
        """Remove every block above ``height`` and what they added; returns blocks removed."""
        if self._w is None:
            raise StoreError("store is open read-only")
        try:
            return self._truncate_above(height)
        finally:
            # After the commit: a reader that fetched a removed node before it, and adds it to
            # the cache after this, finds another generation and adds nothing.
            with self._node_cache_lock:
                self._node_cache.clear()
                self._node_cache_gen += 1

    def _truncate_above(self, height: int) -> int:
        assert self._w is not None
        with self._write_lock, self._tx():
            removed: int = self._w.execute(
                "SELECT COUNT(*) FROM blocks WHERE height > ?", (height,)
            ).fetchone()[0]
            first = self._w.execute(
                "SELECT MIN(first_seq) FROM blocks WHERE height > ?", (height,)
            ).fetchone()[0]
            if first is not None:  # contributions are in block order: cut by sequence number
                self._w.execute("DELETE FROM contributions WHERE seq >= ?", (first,))
            # Rows that belong to no kept block (a damaged store); a scan, but truncation is rare.
            self._w.execute("DELETE FROM contributions WHERE block_height > ?", (height,))
            self._w.execute("DELETE FROM blocks WHERE height > ?", (height,))
        return removed

    def copy_to(self, target: Path) -> Path:
        """A consistent copy of the whole database (SQLite online backup) at ``target``."""
        dest = sqlite3.connect(target)
        try:
            self._r.backup(dest)
        finally:
            dest.close()
        return target

    # -- reads ----------------------------------------------------------------------------------
    def head(self) -> tuple[int, bytes, int]:
        """(height, head hash, head timestamp_ms); (0, zeros, 0) when empty."""
        row = self._r.execute(
            "SELECT height, hash, header FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0, bytes(32), 0
        return row[0], row[1], json.loads(row[2])["timestamp_ms"]

    def block_header(self, height: int) -> tuple[BlockHeader, bytes, bytes] | None:
        row = self._r.execute(
            "SELECT header, hash, signature FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            return None
        return BlockHeader.from_doc(json.loads(row[0])), row[1], row[2]

    def block_hash(self, height: int) -> bytes | None:
        row = self._r.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else row[0]

    def blocks(self, start: int, max_blocks: int, *, max_bytes: int) -> list[Block]:
        """Blocks ``start``.. in order, at most ``max_blocks`` whose entries' wire size
        (:meth:`Contribution.wire_size`) stays within ``max_bytes`` — but at least one block —
        with their entries as they were submitted."""
        out: list[Block] = []
        size = 0
        conn = _connect(self.path, readonly=True)
        try:
            rows = conn.execute(
                "SELECT hash, header, signature, first_seq, entry_count FROM blocks "
                "WHERE height >= ? ORDER BY height LIMIT ?",
                (start, max_blocks),
            ).fetchall()
            for bhash, header, signature, first_seq, count in rows:
                entries = []
                block_size = len(header)
                for goal_id, version, params, metadata, contributor, seed in conn.execute(
                    "SELECT goal_id, version, parameters, metadata, contributor_id, seed "
                    "FROM contributions WHERE seq >= ? AND seq < ? ORDER BY seq",
                    (first_seq, first_seq + count),
                ):
                    block_size += wire_size_bound(len(params), len(metadata))
                    entries.append(
                        make_contribution(
                            goal_id=goal_id,
                            version=version,
                            parameters=params,
                            metadata=json.loads(metadata),
                            contributor_id=contributor,
                            seed=seed,
                        )
                    )
                if out and size + block_size > max_bytes:
                    break
                size += block_size
                out.append(
                    Block(
                        header=BlockHeader.from_doc(json.loads(header)),
                        hash=bhash,
                        signature=signature,
                        entries=tuple(entries),
                    )
                )
        finally:
            conn.close()
        return out

    def latest_roots(self) -> dict[str, dict[str, Any]]:
        """Per goal, the roots recorded by the newest block that touched it. Reads back from the
        head only until every goal with entries is found (start-up must not parse every
        header of a long chain)."""
        wanted = set(self.goal_ids())
        out: dict[str, dict[str, Any]] = {}
        for (header,) in self._r.execute("SELECT header FROM blocks ORDER BY height DESC"):
            if wanted <= out.keys():
                break
            for gid, roots in json.loads(header)["goals"].items():
                out.setdefault(gid, roots)
        return out

    def log_size(self, goal_id: str) -> int:
        row = self._r.execute(
            "SELECT MAX(log_index) FROM contributions WHERE goal_id = ?", (goal_id,)
        ).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def nodes(self, goal_id: str, positions: Sequence[int]) -> dict[int, bytes]:
        """MMR node hashes by position. Each contribution row holds the nodes its append added
        (its leaf, then the parents it completed), concatenated."""
        cache = self._node_cache
        out: dict[int, bytes] = {}
        wanted: dict[int, list[tuple[int, int]]] = {}
        for pos in positions:
            hit = cache.get((goal_id, pos))
            if hit is not None:
                out[pos] = hit
                continue
            leaf, offset = mmr.appended_by(pos)  # offset = the node's height
            wanted.setdefault(leaf, []).append((pos, offset))
        if not wanted:
            return out
        generation = self._node_cache_gen
        marks = ",".join("?" * len(wanted))
        fresh: dict[tuple[str, int], bytes] = {}
        for log_index, blob in self._r.execute(
            f"SELECT log_index, mmr_nodes FROM contributions "
            f"WHERE goal_id = ? AND log_index IN ({marks})",
            (goal_id, *wanted),
        ):
            for pos, offset in wanted[log_index]:
                node = blob[offset * 32 : offset * 32 + 32]
                if len(node) == 32:
                    out[pos] = node
                    if offset >= CACHED_NODE_HEIGHT:
                        fresh[(goal_id, pos)] = node
        if fresh:
            with self._node_cache_lock:
                if self._node_cache_gen == generation:
                    cache.update(fresh)
        return out

    def top_entries(self, goal_id: str, limit: int) -> list[tuple[int, float, bytes, str]]:
        """(log_index, score, contribution_hash, contributor_id) of the best ``limit``."""
        return self._r.execute(
            "SELECT log_index, score, contribution_hash, contributor_id FROM contributions "
            "WHERE goal_id = ? ORDER BY score DESC, log_index ASC LIMIT ?",
            (goal_id, limit),
        ).fetchall()

    def has_packs(
        self, goal_id: str, pack_hashes: Sequence[bytes], *, writer: bool = False
    ) -> set[bytes]:
        """The subset of ``pack_hashes`` already accepted for ``goal_id``.

        ``writer=True`` is for the sequencer's worker thread (the only user of the writer
        connection); the API's threads use the reader connection.
        """
        conn = self._w if writer and self._w is not None else self._r
        query = _HAS_PACKS[self.schema_version]
        prefixed = self.schema_version >= 2
        found: set[bytes] = set()
        for i in range(0, len(pack_hashes), 400):  # 2 x 400 + 1 <= SQLite's 999 parameters
            chunk = pack_hashes[i : i + 400]
            marks = ",".join("?" * len(chunk))
            args = (*(h[:8] for h in chunk), goal_id, *chunk) if prefixed else (goal_id, *chunk)
            found.update(h for (h,) in conn.execute(query.format(marks=marks), args))
        return found

    def log_rows(self, goal_id: str, start: int, limit: int) -> list[LogRow]:
        """A page of the log as stored: :class:`LogEntry`'s fields in its order, with
        ``metrics`` still the canonical JSON text it was hashed as (an encoder can copy it)."""
        rows: list[LogRow] = self._r.execute(
            "SELECT goal_id, log_index, contribution_hash, pack_hash, contributor_id, seed, "
            "version, score, metrics, block_height FROM contributions "
            "WHERE goal_id = ? AND log_index >= ? ORDER BY log_index LIMIT ?",
            (goal_id, start, limit),
        ).fetchall()
        return rows

    def log_entries(self, goal_id: str, start: int, limit: int) -> list[LogEntry]:
        rows = self.log_rows(goal_id, start, limit)
        if not rows:
            return []
        # One JSON document for the whole page's metrics: one decoder call, not one per row.
        metrics = json.loads("[" + ",".join([r[8] for r in rows]) + "]")
        return [
            LogEntry(
                goal_id=r[0],
                log_index=r[1],
                contribution_hash=r[2],
                pack_hash=r[3],
                contributor_id=r[4],
                seed=r[5],
                version=r[6],
                score=r[7],
                metrics=m,
                block_height=r[9],
            )
            for r, m in zip(rows, metrics, strict=True)
        ]

    def log_entry(self, goal_id: str, log_index: int) -> LogEntry | None:
        entries = self.log_entries(goal_id, log_index, 1)
        return entries[0] if entries and entries[0].log_index == log_index else None

    def pack(self, goal_id: str, log_index: int) -> tuple[str, bytes, dict[str, Any]] | None:
        """(version, parameters, metadata) of an accepted contribution."""
        row = self._r.execute(
            "SELECT version, parameters, metadata FROM contributions "
            "WHERE goal_id = ? AND log_index = ?",
            (goal_id, log_index),
        ).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def iter_contribution_hashes(self, goal_id: str) -> Iterator[bytes]:
        """Every accepted contribution hash of ``goal_id`` in log order (for verification)."""
        conn = _connect(self.path, readonly=True)
        try:
            yield from (
                h
                for (h,) in conn.execute(
                    "SELECT contribution_hash FROM contributions WHERE goal_id = ? "
                    "ORDER BY log_index",
                    (goal_id,),
                )
            )
        finally:
            conn.close()

    def goal_ids(self) -> list[str]:
        """The goals that have entries, in id order: one index seek per goal (a skip scan of
        the ``(goal_id, log_index)`` index), not a scan of every row."""
        out: list[str] = []
        row = self._r.execute(
            "SELECT goal_id FROM contributions ORDER BY goal_id LIMIT 1"
        ).fetchone()
        while row is not None:
            out.append(row[0])
            row = self._r.execute(
                "SELECT goal_id FROM contributions WHERE goal_id > ? ORDER BY goal_id LIMIT 1",
                (row[0],),
            ).fetchone()
        return out

    def count_contributions(self) -> int:
        count: int = self._r.execute("SELECT COUNT(*) FROM contributions").fetchone()[0]
        return count


class _Checkpointer:
    """Copies committed pages from the WAL into the database on its own thread and connection,
    so a commit never waits for that (SQLite's automatic checkpoint runs inside the commit that
    crosses its threshold: a stall of tens of ms every few blocks). PASSIVE: it never blocks the
    writer or a reader; the writer's own checkpoint (:data:`WAL_BACKSTOP_PAGES`) bounds the WAL
    should this thread fall behind or fail. A crash mid-checkpoint is safe (SQLite's WAL)."""

    def __init__(self, path: Path, interval: float = CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._done = threading.Condition()
        self.completed = 0  # checkpoints tried (diagnostics, tests)
        self._thread = threading.Thread(target=self._run, name="ian-store-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()

    def wait_completed(self, count: int, timeout: float) -> bool:
        """Whether ``count`` checkpoints have run, waiting up to ``timeout`` s for them."""
        with self._done:
            return self._done.wait_for(lambda: self.completed >= count, timeout)

    def _run(self) -> None:
        try:
            conn = _connect(self._path)
        except StoreError as exc:
            log.warning("store checkpoints left to the writer: %s", exc)
            return
        failing = False
        try:
            while True:
                self._wake.wait()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # disk full, I/O error: the writer's backstop stays
                    if not failing:  # once, not twice a second while the disk stays full
                        log.warning("store %s: background checkpoint failed: %s", self._path, exc)
                    failing = True
                else:
                    if failing:
                        log.warning("store %s: background checkpoints work again", self._path)
                    failing = False
                with self._done:
                    self.completed += 1
                    self._done.notify_all()
                if self._stopping.wait(self._interval):
                    return
        finally:
            conn.close()


class _Transaction:
    def __init__(self, conn: sqlite3.Connection | None, checkpointer: _Checkpointer | None) -> None:
        assert conn is not None
        self.conn = conn
        self.checkpointer = checkpointer

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                # A failed COMMIT (disk full, I/O error) may leave the transaction open; the
                # next BEGIN would then fail for good.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            if self.checkpointer is not None:
                self.checkpointer.poke()
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
