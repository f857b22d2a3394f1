"""`ian node verify`'s check of a consensus log, on a real consensus.db read a chunk at a time."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ian.chain.genesis import Authority, Genesis
from ian.chain.goals import BUILTIN_GOALS
from ian.consensus import Ack, Block, BlockKind, CommitCertificate, genesis_hash
from ian.identity import Identity
from ian.ledger import consensus_verify
from ian.ledger.consensus_verify import verify_certified_chain
from ian.storage.consensus_log import ConsensusLog

IDS = [Identity.generate() for _ in range(3)]
GENESIS = Genesis(
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    goals=list(BUILTIN_GOALS),
    authorities=[Authority(node_id=i.node_id, public_key=i.public_key.hex()) for i in IDS],
)
CHAIN = GENESIS.chain_id()


def certify(block: Block, signers: list[Identity]) -> CommitCertificate:
    acks = []
    for identity in signers:
        draft = Ack(CHAIN, block.term, block.height, block.hash, identity.node_id)
        acks.append(replace(draft, signature=identity.sign(draft.signed_bytes())))
    return CommitCertificate(CHAIN, block.term, block.height, block.hash, tuple(acks))


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConsensusLog:
    """11 blocks, certified at 4 and 9, read 4 at a time (chunks end at 4, 8 and 11)."""
    monkeypatch.setattr(consensus_verify, "CHUNK", 4)
    path = tmp_path / "consensus.db"
    writer = ConsensusLog(path)
    parent = genesis_hash(CHAIN)
    for h in range(1, 12):
        block = Block.build(
            CHAIN, height=h, term=1, parent_hash=parent, kind=BlockKind.DATA, payload=b"%d" % h
        )
        writer.append([block])
        if h in (4, 9):
            writer.store_certificate(certify(block, IDS[:2]))
        parent = block.hash
    writer.close()
    return ConsensusLog(path, readonly=True)


def tamper(log: ConsensusLog, table: str, height: int, change: dict[str, object]) -> None:
    db = sqlite3.connect(log.path)
    (text,) = db.execute(f"SELECT doc FROM {table} WHERE height = ?", (height,)).fetchone()
    db.execute(
        f"UPDATE {table} SET doc = ? WHERE height = ?",
        (json.dumps(json.loads(text) | change), height),
    )
    db.commit()
    db.close()


def test_a_sound_log_is_certified_to_its_last_certificate(log: ConsensusLog) -> None:
    report = verify_certified_chain(log, GENESIS, [])
    assert report.to_doc() == {
        "ok": True,
        "certified_height": 9,
        "certificates": 2,
        "chain_blocks": 0,
        "problem": None,
    }


def test_a_broken_hash_link_is_found_in_a_later_chunk(log: ConsensusLog) -> None:
    tamper(log, "blocks", 10, {"parent_hash": "00" * 32})
    report = verify_certified_chain(log, GENESIS, [])
    assert not report.ok and report.problem is not None
    assert "consensus block 10 does not hash-link" in report.problem


def test_a_certificate_of_too_few_or_false_signers_fails(log: ConsensusLog) -> None:
    db = sqlite3.connect(log.path)
    (text,) = db.execute("SELECT doc FROM certificates WHERE height = 9").fetchone()
    doc = json.loads(text)
    doc["acks"] = doc["acks"][:1]  # one of three: no majority
    db.execute("UPDATE certificates SET doc = ? WHERE height = 9", (json.dumps(doc),))
    db.commit()
    db.close()
    report = verify_certified_chain(log, GENESIS, [])
    assert not report.ok and report.certificates == 1  # the one at 4 held


def test_a_certificate_beyond_the_log_or_a_store_block_it_lacks_fails(
    log: ConsensusLog,
) -> None:
    report = verify_certified_chain(log, GENESIS, [b"\x01" * 32])
    assert report.problem == (
        "chain block 1 is not a certified block of this node's consensus log"
        " (none is certified at that height)"
    )
    db = sqlite3.connect(log.path)
    (text,) = db.execute("SELECT doc FROM certificates WHERE height = 9").fetchone()
    db.execute("INSERT INTO certificates VALUES (12, ?)", (text,))
    db.commit()
    db.close()
    report = verify_certified_chain(log, GENESIS, [])
    assert report.problem == "a certificate for height 12 is beyond the log"
