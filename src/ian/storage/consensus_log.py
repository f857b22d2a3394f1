"""The consensus core's durable state on disk: ``<data-dir>/consensus.db`` (SQLite).

What :class:`~ian.consensus.events.Durable` actions make durable, and what
:class:`~ian.consensus.events.Restart` reads back after a crash:

- ``meta``: ``term``, ``voted_for`` and ``applied_height`` (the driver's record of the blocks
  it has applied to the node's store);
- ``blocks``: the log, one row per height (the codec's block document as JSON), and
  ``is_change``: whether the block changes the authorities (indexed: a start-up reads those,
  and only the recent blocks, not the whole log — see :mod:`ian.consensus.log`; the core reads
  older ones back through this class as its cold log). The document is what older versions
  wrote, so a node rolled back to one still reads the file; rows such a version wrote have
  no mark (NULL), and a writable open marks them (an index finds them without a scan);
- ``certificates``: commit certificates by height.

Every write is one transaction. Term, vote, blocks and truncations are written with
``synchronous = FULL``, so such an action is on stable storage when its method returns (the
durability contract of :mod:`ian.consensus.events`): an append of several blocks survives a
crash whole or not at all. Certificates and the applied mark are written without their own
fsync: the write-ahead log keeps transactions in order, so the next synced write makes them
durable too, and a crash can lose only the newest of them — harmlessly: a lost certificate is
re-made (the blocks it covered are on a majority), and a lost applied mark makes the node apply
again blocks its chain store recognises by hash. That keeps two fsyncs off every commit.
Nothing committed is ever removed: a truncation at or below the highest stored certificate is
refused (:class:`StoreError`) — the core never asks for one, so such a request is a bug, not
something to carry out.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from ian.consensus.codec import (
    block_from_json,
    block_to_doc,
    commit_certificate_from_json,
    commit_certificate_to_doc,
)
from ian.consensus.errors import ConsensusError
from ian.consensus.events import (
    AppendLog,
    Durable,
    DurableState,
    PersistHardState,
    StoreCertificate,
    TruncateLog,
)
from ian.consensus.log import window_base
from ian.consensus.types import Block, CommitCertificate
from ian.errors import StoreError

__all__ = ["ConsensusLog"]

log = logging.getLogger("ian.storage")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, doc TEXT NOT NULL, is_change INTEGER
);
CREATE TABLE IF NOT EXISTS certificates (height INTEGER PRIMARY KEY, doc TEXT NOT NULL);
"""

# Rows without a mark: all of them in a file from before the column, and any an older version
# appended since (it writes height and doc only).
_MARK = """
BEGIN IMMEDIATE;
CREATE INDEX IF NOT EXISTS blocks_unmarked ON blocks (height) WHERE is_change IS NULL;
UPDATE blocks SET is_change = json_extract(doc, '$.change') IS NOT NULL WHERE is_change IS NULL;
CREATE INDEX IF NOT EXISTS blocks_changes ON blocks (height) WHERE is_change = 1;
COMMIT;
"""

RESTART_KEEP = 64
"""Applied blocks a start-up holds in memory (besides those not yet applied); the core's
``memory_bytes`` bounds them from then on."""


class ConsensusLog:
    """Durable consensus state of one node. Methods are safe from one thread at a time (the
    driver calls them from a worker thread, in order); a lock makes misuse harmless."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: only reads (e.g. ``ian node verify`` beside a running node); the file
        must exist."""
        self.path = path
        self._lock = threading.Lock()
        try:
            if readonly:
                self._db = _connect_readonly(path)
            else:
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(_SCHEMA)
                if not self._has_marks():
                    log.info(
                        "consensus log %s: marking its authority changes (once, after an "
                        "upgrade: about 10 s a GB)",
                        path,
                    )
                    self._db.execute("ALTER TABLE blocks ADD COLUMN is_change INTEGER")
                self._db.executescript(_MARK)
            # Only a read-only open can find a file from before the mark (and unmarked rows).
            self._marked = not readonly or self._marked_through()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the consensus log {path}: {exc}") from exc
        # Reads for the core (the event loop's thread) have their own connection, so they never
        # wait for a write's fsync on the driver's worker thread (WAL: readers do not block).
        self._reader_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None

    def _has_marks(self) -> bool:
        return any(row[1] == "is_change" for row in self._db.execute("PRAGMA table_info(blocks)"))

    def _marked_through(self) -> bool:
        """Every row has its authority-change mark (a read-only open cannot add them)."""
        if not self._has_marks():
            return False
        return (
            self._db.execute("SELECT 1 FROM blocks WHERE is_change IS NULL LIMIT 1").fetchone()
            is None
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # ------------------------------------------------------------------ reading

    def load(self, keep: int | None = None) -> DurableState:
        """Everything made durable so far (an empty state for a new file). With ``keep``, only
        the blocks from ``keep`` below the applied mark up are read (and the authority changes
        below them): the state's ``cold`` log is this object, which reads the others on demand.
        Without it, the whole log (an offline check)."""
        with self._lock:
            try:
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                applied = int(meta.get("applied_height", "0"))
                base = 0
                if keep is not None and self._marked:
                    ((certified,),) = self._db.execute(
                        "SELECT COALESCE(MAX(height), 0) FROM certificates"
                    )
                    ((stored,),) = self._db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks")
                    base = min(window_base(applied, certified, keep), stored)
                rows = self._db.execute(
                    "SELECT height, doc FROM blocks WHERE height > ? ORDER BY height", (base,)
                ).fetchall()
                change_rows = (
                    self._db.execute(
                        "SELECT height, doc FROM blocks WHERE is_change = 1 AND height <= ? "
                        "ORDER BY height",
                        (base,),
                    ).fetchall()
                    if base
                    else []
                )
                cert_rows = self._db.execute(
                    "SELECT height, doc FROM certificates WHERE height >= ?", (base,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the consensus log {self.path}: {exc}") from exc
        log = [self._block(*row) for row in rows]
        for expected, block in enumerate(log, start=base + 1):
            if block.height != expected:
                raise StoreError(f"{self.path}: the log has a gap before height {block.height}")
        certificates = {h: self._certificate(h, doc) for h, doc in cert_rows}
        voted_for = meta.get("voted_for") or None
        return DurableState(
            term=int(meta.get("term", "0")),
            voted_for=voted_for,
            log=log,
            certificates=certificates,
            applied_height=applied,
            base=base,
            cold=None if keep is None or not self._marked else self,
            changes=[self._block(*row) for row in change_rows],
        )

    def _block(self, height: int, doc: str) -> Block:
        try:
            block = block_from_json(doc)
        except ConsensusError as exc:
            raise StoreError(f"{self.path}: block {height} is unreadable: {exc}") from exc
        if block.height != height:
            raise StoreError(f"{self.path}: row {height} holds block {block.height}")
        return block

    # ------------------------------------------------------------------ the core's cold log

    def blocks(self, first: int, last: int, max_bytes: int | None = None) -> list[Block]:
        """The blocks at ``first..last`` (see :class:`ian.consensus.log.ColdLog`). Rows are
        read one at a time: those past ``max_bytes`` are never fetched."""
        out: list[Block] = []
        size = 0
        with self._reader_lock:
            try:
                rows = self._reader_connection().execute(
                    "SELECT height, doc FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
                    (first, last),
                )
                # Closed however the loop ends (a bad row raises): an open cursor would keep
                # its read snapshot and hold back the writer's checkpoints.
                with closing(rows):
                    for height, doc in rows:
                        if height != first + len(out):
                            break  # a gap: reported below
                        block = self._block(height, doc)
                        size += len(block.payload)
                        if max_bytes is not None and size > max_bytes and out:
                            break
                        out.append(block)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the consensus log {self.path}: {exc}") from exc
        if not out or (max_bytes is None and len(out) != last - first + 1):
            raise StoreError(f"{self.path}: blocks {first}..{last} are missing")
        return out

    def certificate(self, height: int) -> CommitCertificate | None:
        rows = self._read("SELECT height, doc FROM certificates WHERE height = ?", (height,))
        return self._certificate(*rows[0]) if rows else None

    def certified_heights(self, low: int, high: int) -> list[int]:
        rows = self._read(
            "SELECT height FROM certificates WHERE height BETWEEN ? AND ? ORDER BY height",
            (low, high),
        )
        return [h for (h,) in rows]

    # ------------------------------------------------------------------ whole-log checks

    def last_height(self) -> int:
        """The height of the last block stored (0 for none)."""
        ((height,),) = self._read("SELECT COALESCE(MAX(height), 0) FROM blocks", ())
        return int(height)

    def certificates(self, low: int, high: int) -> list[CommitCertificate]:
        """The stored certificates at heights ``low..high``, ascending."""
        rows = self._read(
            "SELECT height, doc FROM certificates WHERE height BETWEEN ? AND ? ORDER BY height",
            (low, high),
        )
        return [self._certificate(h, doc) for h, doc in rows]

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._reader_lock:
            try:
                return self._reader_connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the consensus log {self.path}: {exc}") from exc

    def _reader_connection(self) -> sqlite3.Connection:
        """The connection for reads (opened on first use; call with the reader lock held)."""
        if self._reader is None:
            self._reader = _connect_readonly(self.path)
        return self._reader

    def _certificate(self, height: int, doc: str) -> CommitCertificate:
        try:
            return commit_certificate_from_json(doc)
        except ConsensusError as exc:
            raise StoreError(f"{self.path}: certificate {height} is unreadable: {exc}") from exc

    # ------------------------------------------------------------------ durable actions

    def perform(self, action: Durable, *, learner: bool = False) -> None:
        """Make one durable action durable (returns once it is on stable storage). A learner's
        appends are not synced: it votes for nothing and acks nothing, and blocks a crash loses
        are certified ones it takes again (its chain store recognises them by hash)."""
        if isinstance(action, PersistHardState):
            self.persist_hard_state(action.term, action.voted_for)
        elif isinstance(action, TruncateLog):
            self.truncate(action.from_height)
        elif isinstance(action, AppendLog):
            self.append(action.blocks, sync=not learner)
        elif isinstance(action, StoreCertificate):
            self.store_certificate(action.certificate)
        else:  # pragma: no cover - every Durable subclass is handled above
            raise TypeError(f"not a durable action: {action!r}")

    def persist_hard_state(self, term: int, voted_for: str | None) -> None:
        self._write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("term", str(term)), ("voted_for", voted_for or "")],
        )

    def set_applied(self, height: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("applied_height", str(height))],
            sync=False,
        )

    def append(self, blocks: Iterable[Block], *, sync: bool = True) -> None:
        rows = [
            (b.height, json.dumps(block_to_doc(b), separators=(",", ":")), b.change is not None)
            for b in blocks
        ]
        self._write(
            "INSERT OR REPLACE INTO blocks (height, doc, is_change) VALUES (?, ?, ?)",
            rows,
            sync=sync,
        )

    def store_certificate(self, certificate: CommitCertificate) -> None:
        doc = json.dumps(commit_certificate_to_doc(certificate), separators=(",", ":"))
        self._write(
            "INSERT OR REPLACE INTO certificates (height, doc) VALUES (?, ?)",
            [(certificate.height, doc)],
            sync=False,
        )

    def truncate(self, from_height: int) -> None:
        with self._lock:
            try:
                (certified,) = self._db.execute(
                    "SELECT COALESCE(MAX(height), 0) FROM certificates"
                ).fetchone()
                if from_height <= certified:
                    raise StoreError(
                        f"refusing to truncate the consensus log from {from_height}: "
                        f"height {certified} is committed"
                    )
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM blocks WHERE height >= ?", (from_height,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot truncate the consensus log: {exc}") from exc

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]], *, sync: bool = True) -> None:
        with self._lock:
            try:
                if not sync:
                    self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot write the consensus log {self.path}: {exc}") from exc
            finally:
                if not sync:
                    self._db.execute("PRAGMA synchronous = FULL")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _connect_readonly(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)
