"""The consensus core's durable state on disk: ``<data-dir>/consensus.db`` (SQLite).

What :class:`~ian.consensus.events.Durable` actions make durable, and what
:class:`~ian.consensus.events.Restart` reads back after a crash:

- ``meta``: ``term``, ``voted_for`` and ``applied_height`` (the driver's record of the blocks
  it has applied to the node's store);
- ``blocks``: the log, one row per height (the codec's block document as JSON);
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
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from ian.consensus.codec import (
    block_from_doc,
    block_to_doc,
    commit_certificate_from_doc,
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
from ian.consensus.types import Block, CommitCertificate
from ian.errors import StoreError

__all__ = ["ConsensusLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (height INTEGER PRIMARY KEY, doc TEXT NOT NULL);
"""


class ConsensusLog:
    """Durable consensus state of one node. Methods are safe from one thread at a time (the
    driver calls them from a worker thread, in order); a lock makes misuse harmless."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: only :meth:`load` (e.g. ``ian node verify`` beside a running node);
        the file must exist."""
        self.path = path
        self._lock = threading.Lock()
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False
                )
                return
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the consensus log {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ reading

    def load(self) -> DurableState:
        """Everything made durable so far (an empty state for a new file)."""
        with self._lock:
            try:
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                block_rows = self._db.execute("SELECT height, doc FROM blocks ORDER BY height")
                log = [self._block(h, doc) for h, doc in block_rows.fetchall()]
                cert_rows = self._db.execute("SELECT height, doc FROM certificates").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the consensus log {self.path}: {exc}") from exc
        for expected, block in enumerate(log, start=1):
            if block.height != expected:
                raise StoreError(f"{self.path}: the log has a gap before height {block.height}")
        certificates = {h: self._certificate(h, doc) for h, doc in cert_rows}
        voted_for = meta.get("voted_for") or None
        return DurableState(
            term=int(meta.get("term", "0")),
            voted_for=voted_for,
            log=log,
            certificates=certificates,
            applied_height=int(meta.get("applied_height", "0")),
        )

    def _block(self, height: int, doc: str) -> Block:
        try:
            block = block_from_doc(json.loads(doc))
        except (ValueError, ConsensusError) as exc:
            raise StoreError(f"{self.path}: block {height} is unreadable: {exc}") from exc
        if block.height != height:
            raise StoreError(f"{self.path}: row {height} holds block {block.height}")
        return block

    def _certificate(self, height: int, doc: str) -> CommitCertificate:
        try:
            return commit_certificate_from_doc(json.loads(doc))
        except (ValueError, ConsensusError) as exc:
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
        rows = [(b.height, json.dumps(block_to_doc(b), separators=(",", ":"))) for b in blocks]
        self._write("INSERT OR REPLACE INTO blocks (height, doc) VALUES (?, ?)", rows, sync=sync)

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
