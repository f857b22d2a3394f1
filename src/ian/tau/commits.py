"""``IAN_LOG_COMMIT`` documents and the durable log of what was sent to Tau and what Tau acked.

The commit (ARCHITECTURE §9), all hashes lowercase hex::

    {"type": "IAN_LOG_COMMIT", "goal_id", "log_root", "log_size", "leaderboard_root",
     "leaderboard_size", "height", "prev_commit_hash", "timestamp_ms", "committer",
     "committer_key", "signature"}

``committer`` (node id) and ``committer_key`` (Ed25519 public key, hex) go beyond the fields
ARCHITECTURE §9 lists: without them nobody reading Tau could check the signature.

``commit_hash`` = sha256(canonical_json(commit without "signature")) (see :mod:`ian.chain.hashing`);
``signature`` = Ed25519 signature by the node identity of those 32 digest bytes;
``prev_commit_hash`` = the ``commit_hash`` of the goal's previous commit, 64 zeros for the
first one. ``height`` is the chain height at which the roots were published; ``timestamp_ms``
is wall-clock Unix time in milliseconds when the commit was built.

Chain rule (what keeps ``prev_commit_hash`` valid on Tau): a goal has **at most one pending
commit**. It is built, signed and made durable *before* it is first sent, and then resent
byte-for-byte identical until Tau acknowledges it; only then may the goal's next commit be built,
chained to it and carrying the roots current at that moment. A pending commit is never replaced:
Tau may have received it even when the acknowledgement was lost, and a replacement with the same
``prev_commit_hash`` would fork the chain on Tau. Resending an identical commit is harmless.

Storage: table ``tau_commits`` in the node's store file (``chain.sqlite``), through this
module's own connection (WAL, ``synchronous=FULL``), created if missing. Every method returns
after its change is durable, so a restart neither loses a commit nor builds a second one in its
place. The table is this module's alone; the block store never reads it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ian.chain.blocks import GoalRoots
from ian.chain.hashing import canonical_json
from ian.errors import StoreError
from ian.identity import Identity, node_id_for, verify_signature

__all__ = [
    "COMMIT_TYPE",
    "GENESIS_COMMIT_HASH",
    "CommitStatus",
    "IanLogCommit",
    "StoredCommit",
    "TauCommitLog",
    "build_commit",
]

COMMIT_TYPE = "IAN_LOG_COMMIT"
GENESIS_COMMIT_HASH = "0" * 64

CommitStatus = Literal["pending", "acknowledged"]

_FIELDS = (
    "goal_id",
    "log_root",
    "log_size",
    "leaderboard_root",
    "leaderboard_size",
    "height",
    "prev_commit_hash",
    "timestamp_ms",
    "committer",
    "committer_key",
)


@dataclass(frozen=True, slots=True)
class IanLogCommit:
    """One signed ``IAN_LOG_COMMIT``; immutable once built (see the module docstring)."""

    goal_id: str
    log_root: str
    log_size: int
    leaderboard_root: str
    leaderboard_size: int
    height: int
    prev_commit_hash: str
    timestamp_ms: int
    committer: str = ""  # node id of the signer
    committer_key: str = ""  # its Ed25519 public key (hex): anyone can check the signature
    signature: str = ""

    def unsigned_doc(self) -> dict[str, Any]:
        """The document that is hashed and signed: every field but ``signature``."""
        doc: dict[str, Any] = {"type": COMMIT_TYPE}
        for name in _FIELDS:
            doc[name] = getattr(self, name)
        return doc

    def to_doc(self) -> dict[str, Any]:
        """The full document as sent to Tau."""
        return {**self.unsigned_doc(), "signature": self.signature}

    def digest(self) -> bytes:
        """sha256(canonical_json(unsigned_doc())): the 32 bytes that are signed."""
        return hashlib.sha256(canonical_json(self.unsigned_doc())).digest()

    @property
    def commit_hash(self) -> str:
        """The commit's hash (hex); the next commit of the goal names it as ``prev_commit_hash``."""
        return self.digest().hex()

    def verify(self, public_key: bytes | None = None) -> bool:
        """True iff ``signature`` is ``public_key``'s (default: ``committer_key``, which must
        belong to ``committer``) Ed25519 signature of :meth:`digest`."""
        if public_key is None:
            try:
                public_key = bytes.fromhex(self.committer_key)
            except ValueError:
                return False
            if node_id_for(public_key) != self.committer:
                return False
        try:
            signature = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_signature(public_key, signature, self.digest())

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> IanLogCommit:
        """Parse a commit document; ``ValueError`` naming the first bad or missing field."""
        if doc.get("type") != COMMIT_TYPE:
            raise ValueError(f"type must be {COMMIT_TYPE!r}, got {doc.get('type')!r}")
        values: dict[str, Any] = {}
        for name in (*_FIELDS, "signature"):
            if name not in doc:
                raise ValueError(f"{name} is missing")
            value = doc[name]
            numeric = name in ("log_size", "leaderboard_size", "height", "timestamp_ms")
            if numeric and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            if not numeric and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            values[name] = value
        return cls(**values)


def build_commit(
    identity: Identity,
    *,
    goal_id: str,
    roots: GoalRoots,
    height: int,
    prev_commit_hash: str,
    timestamp_ms: int,
) -> IanLogCommit:
    """Build and sign the commit of ``roots`` (published at chain ``height``) for ``goal_id``."""
    unsigned = IanLogCommit(
        goal_id=goal_id,
        log_root=roots.log_root.hex(),
        log_size=roots.log_size,
        leaderboard_root=roots.leaderboard_root.hex(),
        leaderboard_size=roots.leaderboard_size,
        height=height,
        prev_commit_hash=prev_commit_hash,
        timestamp_ms=timestamp_ms,
        committer=identity.node_id,
        committer_key=identity.public_key.hex(),
    )
    return replace(unsigned, signature=identity.sign(unsigned.digest()).hex())


@dataclass(frozen=True, slots=True)
class StoredCommit:
    """A commit as recorded in ``tau_commits``; ``seq`` counts a goal's commits from 1.

    Times are Unix seconds. ``attempts`` counts sends (the acknowledged one included);
    ``last_error`` is the latest failure message, ``reply`` the detail of Tau's SUCCESS line.
    """

    goal_id: str
    seq: int
    commit: IanLogCommit
    status: CommitStatus
    attempts: int
    last_error: str | None
    reply: str | None
    created_at: float
    acked_at: float | None

    @property
    def commit_hash(self) -> str:
        return self.commit.commit_hash

    def summary(self) -> dict[str, Any]:
        """A JSON-safe summary for status output and ``node_state.json``."""
        return {
            "goal_id": self.goal_id,
            "seq": self.seq,
            "commit_hash": self.commit_hash,
            "log_size": self.commit.log_size,
            "height": self.commit.height,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "at": self.acked_at,
            "reply": self.reply,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tau_commits (
    goal_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    commit_hash TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'acknowledged')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    reply TEXT,
    created_at REAL NOT NULL,
    acked_at REAL,
    PRIMARY KEY (goal_id, seq)
)
"""

_COLUMNS = "goal_id, seq, body, status, attempts, last_error, reply, created_at, acked_at"


class TauCommitLog:
    """The durable per-goal chain of Tau commits, in its own table of the store file.

    Invariants enforced here: per goal, ``seq`` increases by one, each commit's
    ``prev_commit_hash`` is the previous commit's hash (64 zeros for seq 1), and at most one
    commit is pending — and only the newest can be. Safe to call from any one thread at a time
    (an internal lock serialises calls); every write is one durable transaction.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the Tau commit log in {self.path}: {exc}",
                fix="check the data directory's disk and permissions (`ian doctor`)",
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- reads --------------------------------------------------------------------------------
    def head(self, goal_id: str) -> StoredCommit | None:
        """The goal's newest commit (pending or acknowledged), or None before the first."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM tau_commits WHERE goal_id = ? ORDER BY seq DESC LIMIT 1",
            (goal_id,),
        )
        return rows[0] if rows else None

    def heads(self) -> dict[str, StoredCommit]:
        """The newest commit of every goal that has one."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM tau_commits AS t WHERE seq = "
            "(SELECT MAX(seq) FROM tau_commits WHERE goal_id = t.goal_id) ORDER BY goal_id"
        )
        return {r.goal_id: r for r in rows}

    def acknowledged_heads(self) -> dict[str, StoredCommit]:
        """The newest acknowledged commit of every goal that has one."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM tau_commits AS t WHERE seq = (SELECT MAX(seq) FROM "
            "tau_commits WHERE goal_id = t.goal_id AND status = 'acknowledged') ORDER BY goal_id"
        )
        return {r.goal_id: r for r in rows}

    def commits(self, goal_id: str) -> list[StoredCommit]:
        """Every commit of ``goal_id`` in chain order."""
        return self._query(
            f"SELECT {_COLUMNS} FROM tau_commits WHERE goal_id = ? ORDER BY seq", (goal_id,)
        )

    def pending(self) -> list[StoredCommit]:
        """Commits not yet acknowledged, by goal (at most one per goal)."""
        return self._query(
            f"SELECT {_COLUMNS} FROM tau_commits WHERE status = 'pending' ORDER BY goal_id, seq"
        )

    # -- writes -------------------------------------------------------------------------------
    def append(self, commit: IanLogCommit, *, now: float | None = None) -> StoredCommit:
        """Record ``commit`` as the goal's next, pending commit; durable on return.

        Raises :class:`StoreError` if the goal still has a pending commit or ``commit`` does not
        chain onto the goal's head (wrong ``prev_commit_hash``).
        """
        created = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq, commit_hash, status FROM tau_commits WHERE goal_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                (commit.goal_id,),
            ).fetchone()
            seq, prev_hash = (row[0] + 1, row[1]) if row else (1, GENESIS_COMMIT_HASH)
            if row and row[2] == "pending":
                raise StoreError(
                    f"goal {commit.goal_id}: commit #{row[0]} is still pending; it must be "
                    "acknowledged before the next commit is built"
                )
            if commit.prev_commit_hash != prev_hash:
                raise StoreError(
                    f"goal {commit.goal_id}: commit names prev_commit_hash "
                    f"{commit.prev_commit_hash}, but the chain head is {prev_hash}"
                )
            conn.execute(
                "INSERT INTO tau_commits (goal_id, seq, commit_hash, body, status, attempts, "
                "created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?)",
                (
                    commit.goal_id,
                    seq,
                    commit.commit_hash,
                    json.dumps(commit.to_doc(), sort_keys=True),
                    created,
                ),
            )
        return StoredCommit(commit.goal_id, seq, commit, "pending", 0, None, None, created, None)

    def acknowledge(
        self, goal_id: str, seq: int, reply: str, *, now: float | None = None
    ) -> StoredCommit:
        """Mark a pending commit acknowledged by Tau (``reply`` = its SUCCESS detail)."""
        at = time.time() if now is None else now
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE tau_commits SET status = 'acknowledged', attempts = attempts + 1, "
                "reply = ?, acked_at = ? WHERE goal_id = ? AND seq = ? AND status = 'pending'",
                (reply, at, goal_id, seq),
            ).rowcount
            if not changed:
                raise StoreError(f"goal {goal_id}: no pending Tau commit #{seq} to acknowledge")
        return self._one(goal_id, seq)

    def record_failure(self, goal_id: str, seq: int, error: str) -> StoredCommit:
        """Count a failed send of a pending commit and remember why."""
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE tau_commits SET attempts = attempts + 1, last_error = ? "
                "WHERE goal_id = ? AND seq = ? AND status = 'pending'",
                (error, goal_id, seq),
            ).rowcount
            if not changed:
                raise StoreError(f"goal {goal_id}: no pending Tau commit #{seq}")
        return self._one(goal_id, seq)

    # -- internals ----------------------------------------------------------------------------
    def _one(self, goal_id: str, seq: int) -> StoredCommit:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM tau_commits WHERE goal_id = ? AND seq = ?", (goal_id, seq)
        )
        return rows[0]

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[StoredCommit]:
        try:
            with self._lock:
                rows = self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the Tau commit log in {self.path}: {exc}") from exc
        return [_row(r) for r in rows]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot write the Tau commit log in {self.path}: {exc}",
                    fix="check free disk space and the data directory (`ian doctor`)",
                ) from exc


def _row(r: tuple[Any, ...]) -> StoredCommit:
    goal_id, seq, body, status, attempts, last_error, reply, created_at, acked_at = r
    return StoredCommit(
        goal_id=goal_id,
        seq=seq,
        commit=IanLogCommit.from_doc(json.loads(body)),
        status=status,
        attempts=attempts,
        last_error=last_error,
        reply=reply,
        created_at=created_at,
        acked_at=acked_at,
    )
