"""IAN_LOG_COMMIT building and signing, and the durable commit log in the store file."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from ian.chain.blocks import GoalRoots
from ian.chain.hashing import canonical_json
from ian.errors import StoreError
from ian.identity import Identity, verify_signature
from ian.storage.store import Store
from ian.tau import GENESIS_COMMIT_HASH, IanLogCommit, TauCommitLog, build_commit

ROOTS = GoalRoots(
    log_size=7, log_root=b"\x01" * 32, leaderboard_size=5, leaderboard_root=b"\x02" * 32
)


@pytest.fixture
def identity() -> Identity:
    return Identity.generate()


def commit_for(identity: Identity, prev: str, size: int = 7, goal: str = "G") -> IanLogCommit:
    return build_commit(
        identity,
        goal_id=goal,
        roots=replace(ROOTS, log_size=size),
        height=size + 10,
        prev_commit_hash=prev,
        timestamp_ms=1_700_000_000_123,
    )


def test_commit_document_hash_and_signature(identity: Identity) -> None:
    commit = commit_for(identity, GENESIS_COMMIT_HASH)
    doc = commit.to_doc()
    assert doc == {
        "type": "IAN_LOG_COMMIT",
        "goal_id": "G",
        "log_root": "01" * 32,
        "log_size": 7,
        "leaderboard_root": "02" * 32,
        "leaderboard_size": 5,
        "height": 17,
        "prev_commit_hash": "0" * 64,
        "timestamp_ms": 1_700_000_000_123,
        "committer": identity.node_id,
        "committer_key": identity.public_key.hex(),
        "signature": doc["signature"],
    }
    # Recomputed from the documented definition, not from the class.
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    digest = hashlib.sha256(canonical_json(unsigned)).digest()
    assert commit.commit_hash == digest.hex()
    assert verify_signature(identity.public_key, bytes.fromhex(doc["signature"]), digest)
    assert commit.verify(identity.public_key)
    assert commit.verify()  # with the key the commit carries, as a reader of Tau would
    assert not commit.verify(Identity.generate().public_key)
    other = Identity.generate()
    assert not replace(commit, committer_key=other.public_key.hex()).verify()
    assert not replace(commit, committer=other.node_id).verify()


@pytest.mark.parametrize(
    "change",
    [{"log_size": 8}, {"log_root": "03" * 32}, {"prev_commit_hash": "1" * 64}, {"height": 1}],
)
def test_any_change_breaks_the_signature(identity: Identity, change: dict) -> None:
    commit = commit_for(identity, GENESIS_COMMIT_HASH)
    assert not replace(commit, **change).verify(identity.public_key)


def test_garbage_signature_is_invalid(identity: Identity) -> None:
    commit = replace(commit_for(identity, GENESIS_COMMIT_HASH), signature="zz")
    assert not commit.verify(identity.public_key)


def test_from_doc_round_trip_and_errors(identity: Identity) -> None:
    commit = commit_for(identity, GENESIS_COMMIT_HASH)
    assert IanLogCommit.from_doc(commit.to_doc()) == commit
    for bad, message in [
        ({"type": "OTHER"}, "type must be"),
        ({"log_size": -1}, "log_size must be an integer >= 0"),
        ({"height": True}, "height must be an integer"),
        ({"log_root": 5}, "log_root must be a string"),
    ]:
        with pytest.raises(ValueError, match=message):
            IanLogCommit.from_doc(commit.to_doc() | bad)
    doc = commit.to_doc()
    del doc["signature"]
    with pytest.raises(ValueError, match="signature is missing"):
        IanLogCommit.from_doc(doc)


def test_log_enforces_the_chain_and_one_pending(tmp_path: Path, identity: Identity) -> None:
    log = TauCommitLog(tmp_path / "chain.sqlite")
    try:
        with pytest.raises(StoreError, match="chain head is 0000"):
            log.append(commit_for(identity, "ab" * 32))
        first = log.append(commit_for(identity, GENESIS_COMMIT_HASH), now=10.0)
        assert (first.seq, first.status, first.attempts) == (1, "pending", 0)
        with pytest.raises(StoreError, match="still pending"):
            log.append(commit_for(identity, first.commit_hash, size=8))
        failed = log.record_failure("G", 1, "Tau node refused")
        assert (failed.attempts, failed.last_error) == (1, "Tau node refused")
        acked = log.acknowledge("G", 1, "txhash", now=11.0)
        assert (acked.status, acked.attempts, acked.reply, acked.acked_at) == (
            "acknowledged",
            2,
            "txhash",
            11.0,
        )
        with pytest.raises(StoreError, match="no pending Tau commit #1"):
            log.acknowledge("G", 1, "again")
        with pytest.raises(StoreError, match="chain head is"):
            log.append(commit_for(identity, GENESIS_COMMIT_HASH, size=8))
        second = log.append(commit_for(identity, first.commit_hash, size=8))
        other = log.append(commit_for(identity, GENESIS_COMMIT_HASH, goal="H"))
        assert second.seq == 2 and other.seq == 1
        assert [c.seq for c in log.pending()] == [2, 1]
        assert {g: c.seq for g, c in log.heads().items()} == {"G": 2, "H": 1}
        assert {g: c.seq for g, c in log.acknowledged_heads().items()} == {"G": 1}
    finally:
        log.close()


def test_log_survives_reopen_and_shares_the_store_file(tmp_path: Path, identity: Identity) -> None:
    path = tmp_path / "chain.sqlite"
    store = Store(path)
    log = TauCommitLog(path)
    first = log.append(commit_for(identity, GENESIS_COMMIT_HASH))
    log.acknowledge("G", 1, "r1")
    log.append(commit_for(identity, first.commit_hash, size=9))
    log.close()
    assert store.head()[0] == 0  # the block store is untouched and still works
    store.close()

    reopened = TauCommitLog(path)
    try:
        chain = reopened.commits("G")
        assert [(c.seq, c.status) for c in chain] == [(1, "acknowledged"), (2, "pending")]
        assert chain[1].commit.prev_commit_hash == chain[0].commit_hash
        assert chain[1].commit.verify(identity.public_key)
    finally:
        reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM tau_commits").fetchone()[0] == 2


def test_unwritable_store_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the Tau commit log"):
        TauCommitLog(tmp_path / "missing-dir" / "chain.sqlite")
