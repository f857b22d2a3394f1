"""The consensus log on disk: what the core made durable comes back after a reopen, exactly;
nothing committed can be truncated; a damaged file is an error, never a silently shorter log."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from ian.consensus import (
    Ack,
    AppendLog,
    AuthorityChange,
    Block,
    BlockKind,
    CommitCertificate,
    DurableState,
    PersistHardState,
    StoreCertificate,
    TruncateLog,
    genesis_hash,
)
from ian.consensus.codec import block_to_doc
from ian.errors import StoreError
from ian.identity import Identity
from ian.storage.consensus_log import ConsensusLog

CHAIN = "c" * 64
IDS = [Identity.generate() for _ in range(3)]


def chain_of(n: int, term: int = 1) -> list[Block]:
    blocks: list[Block] = []
    parent = genesis_hash(CHAIN)
    for height in range(1, n + 1):
        kind = BlockKind.DATA
        change = None
        if height == 2:
            kind = BlockKind.AUTHORITY_CHANGE
            change = AuthorityChange("add", "ab" * 20, bytes(range(32)))
        block = Block.build(
            CHAIN,
            height=height,
            term=term,
            parent_hash=parent,
            kind=kind,
            payload=bytes([height]) * (1000 * height) if kind is BlockKind.DATA else b"",
            change=change,
        )
        blocks.append(block)
        parent = block.hash
    return blocks


def certificate_for(block: Block) -> CommitCertificate:
    acks = []
    for identity in IDS[:2]:
        ack = Ack(CHAIN, block.term, block.height, block.hash, identity.node_id)
        acks.append(
            Ack(
                CHAIN,
                block.term,
                block.height,
                block.hash,
                identity.node_id,
                identity.sign(ack.signed_bytes()),
            )
        )
    return CommitCertificate(CHAIN, block.term, block.height, block.hash, tuple(acks))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "consensus.db"


def test_a_new_log_is_empty(path: Path) -> None:
    log = ConsensusLog(path)
    assert log.load() == DurableState()
    log.close()


def test_everything_made_durable_comes_back_after_a_reopen(path: Path) -> None:
    blocks = chain_of(4)
    cert = certificate_for(blocks[2])
    log = ConsensusLog(path)
    log.perform(PersistHardState(term=3, voted_for=IDS[1].node_id))
    log.perform(AppendLog(tuple(blocks[:2])))
    log.perform(AppendLog(tuple(blocks[2:])))
    log.perform(StoreCertificate(cert))
    log.set_applied(3)
    log.close()

    state = ConsensusLog(path).load()
    assert state == DurableState(
        term=3,
        voted_for=IDS[1].node_id,
        log=blocks,
        certificates={3: cert},
        applied_height=3,
    )
    assert state.log[1].change == AuthorityChange("add", "ab" * 20, bytes(range(32)))


def test_a_vote_can_be_withdrawn_by_a_new_term(path: Path) -> None:
    log = ConsensusLog(path)
    log.persist_hard_state(2, IDS[0].node_id)
    log.persist_hard_state(3, None)
    state = log.load()
    assert (state.term, state.voted_for) == (3, None)


def test_truncation_removes_the_uncommitted_suffix_only(path: Path) -> None:
    blocks = chain_of(5)
    log = ConsensusLog(path)
    log.append(blocks)
    log.store_certificate(certificate_for(blocks[1]))
    log.perform(TruncateLog(4))
    assert log.load().log == blocks[:3]
    for height in (1, 2):
        with pytest.raises(StoreError, match="committed"):
            log.truncate(height)
    assert log.load().log == blocks[:3]
    # A leader's new suffix replaces what was truncated.
    other = Block.build(
        CHAIN, height=4, term=2, parent_hash=blocks[2].hash, kind=BlockKind.LEADER_START
    )
    log.append([other])
    assert log.load().log == [*blocks[:3], other]


def test_a_gap_or_a_damaged_row_is_an_error(path: Path) -> None:
    blocks = chain_of(3)
    log = ConsensusLog(path)
    log.append(blocks)
    log.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM blocks WHERE height = 2")
    db.commit()
    with pytest.raises(StoreError, match="gap"):
        ConsensusLog(path).load()
    db.execute('INSERT INTO blocks (height, doc) VALUES (2, \'{"not": "a block"}\')')
    db.commit()
    with pytest.raises(StoreError, match="block 2 is unreadable"):
        ConsensusLog(path).load()
    db.execute("UPDATE blocks SET doc = 'not json' WHERE height = 2")
    db.commit()
    with pytest.raises(StoreError, match="unreadable"):
        ConsensusLog(path).load()
    db.close()


def test_a_file_that_is_not_a_database_is_an_error(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="consensus log"):
        ConsensusLog(path).load()


def test_a_windowed_load_reads_recent_blocks_and_serves_the_rest_on_demand(path: Path) -> None:
    blocks = chain_of(12)  # height 2 changes the authorities
    certs = {h: certificate_for(blocks[h - 1]) for h in (3, 7, 9, 11)}
    log = ConsensusLog(path)
    log.append(blocks)
    for cert in certs.values():
        log.store_certificate(cert)
    log.set_applied(10)
    log.close()

    log = ConsensusLog(path)
    state = log.load(keep=4)
    # 4 below the lower of the applied mark (10) and the highest certificate (11)
    assert state.base == 6 and state.log == blocks[6:] and state.height == 12
    assert state.changes == [blocks[1]]
    assert state.certificates == {7: certs[7], 9: certs[9], 11: certs[11]}
    assert state.cold is log
    assert state.block(2) == blocks[1] and state.block(12) == blocks[11]
    # the cold log: payloads come back as stored, bounded batches, certificates by height
    assert log.blocks(1, 6) == blocks[:6]
    assert log.blocks(3, 6, max_bytes=7000) == blocks[2:4]  # 3000 + 4000 bytes
    assert log.blocks(5, 6, max_bytes=1) == blocks[4:5]  # always one
    assert log.certificate(3) == certs[3] and log.certificate(4) is None
    assert log.certified_heights(1, 9) == [3, 7, 9]
    with pytest.raises(StoreError, match="missing"):
        log.blocks(13, 14)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM blocks WHERE height = 4")
    db.commit()
    db.close()
    assert log.blocks(1, 6, max_bytes=10**6) == blocks[:3]  # up to the gap ...
    for max_bytes in (None, 10**6):
        with pytest.raises(StoreError, match="missing"):
            log.blocks(4, 6, max_bytes)  # ... which the next read reports
    with pytest.raises(StoreError, match="missing"):
        log.blocks(1, 6)
    log.append([blocks[3]])
    assert log.load() == dataclasses.replace(
        state, log=blocks, certificates=certs, base=0, cold=None, changes=[]
    )
    log.close()


def test_a_log_of_an_older_version_is_marked_and_stays_readable_by_it(path: Path) -> None:
    """An older version wrote (height, doc) rows and may write them again after a rollback:
    a writable open marks the authority changes among them; the documents stay as they were."""
    blocks = chain_of(8)  # height 2 changes the authorities
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE blocks (height INTEGER PRIMARY KEY, doc TEXT NOT NULL);"
        "CREATE TABLE certificates (height INTEGER PRIMARY KEY, doc TEXT NOT NULL);"
    )
    old_rows = [(b.height, json.dumps(block_to_doc(b))) for b in blocks[:6]]
    db.executemany("INSERT INTO blocks VALUES (?, ?)", old_rows)
    db.execute("INSERT INTO meta VALUES ('applied_height', '5')")
    db.commit()
    db.close()

    readonly = ConsensusLog(path, readonly=True)  # cannot mark: reads it whole
    state = readonly.load(keep=1)
    assert (state.base, state.log, state.cold) == (0, blocks[:6], None)
    readonly.close()

    log = ConsensusLog(path)  # marks in place
    log.store_certificate(certificate_for(blocks[4]))
    log.append(blocks[6:])
    state = log.load(keep=1)
    assert state.base == 4 and state.log == blocks[4:]
    assert state.changes == [blocks[1]]
    assert log.blocks(1, 4) == blocks[:4]
    log.close()
    db = sqlite3.connect(path)  # the rows are what an older version reads and writes
    assert db.execute("SELECT height, doc FROM blocks WHERE height <= 6").fetchall() == old_rows
    # Rolled back, an older version rewrites the change block (NULL mark) ...
    db.execute("DELETE FROM blocks WHERE height >= 2")
    db.executemany("INSERT INTO blocks (height, doc) VALUES (?, ?)", old_rows[1:])
    db.commit()
    db.close()
    assert ConsensusLog(path, readonly=True).load(keep=1).base == 0  # unmarked rows: all read
    log = ConsensusLog(path)  # ... and the next writable open marks it again
    state = log.load(keep=1)
    assert state.base == 4 and state.changes == [blocks[1]]
    log.close()
