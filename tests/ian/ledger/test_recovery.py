"""Rebuilding the chain state from the store, and finding tampering in it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ian.chain.goals import DEMO_GOAL
from ian.errors import ConfigError, StoreError
from ian.ledger.recovery import load_chain_state, open_chain_state, verify_store

DEMO = "DEMO_TRADING_AGENT"
TRIVIAL = "TRIVIAL_GOAL"


def sql(path, query: str, *args) -> list:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def filled(chain, packs):
    """Four blocks over two goals, with a rejected contribution in between."""
    chain.commit([packs.contribution(1), packs.contribution(2, goal_id=TRIVIAL)])
    chain.commit([packs.contribution(3, params=packs.rejected_params)])  # no block
    chain.commit([packs.contribution(4), packs.contribution(5)])
    chain.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(6, 12)])
    chain.commit([packs.contribution(12)])
    assert chain.state.height == 4
    return chain


def test_load_chain_state_equals_the_live_state(filled) -> None:
    live = filled.state
    loaded = load_chain_state(filled.store, filled.specs)
    assert loaded.height == live.height == 4
    assert loaded.head_hash == live.head_hash
    assert loaded.head_timestamp_ms == live.head_timestamp_ms
    for gid, goal in live.goals.items():
        assert loaded.goals[gid].roots() == goal.roots(), gid
        assert loaded.goals[gid].mmr == goal.mmr
        assert list(loaded.goals[gid].leaderboard.entries) == list(goal.leaderboard.entries)


def test_load_chain_state_of_an_empty_store(chain) -> None:
    state = load_chain_state(chain.store, chain.specs)
    assert state.height == 0
    assert all(g.mmr.size == 0 for g in state.goals.values())


def test_verify_store_replays_to_the_live_roots(filled) -> None:
    progress: list[tuple[int, int]] = []
    report = verify_store(
        filled.store,
        filled.specs,
        sequencer=filled.identity.node_id,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert report.ok, report.problem
    assert report.blocks == 4 and report.contributions == 11
    assert report.first_bad_height is None and report.problem is None
    for gid, goal in filled.state.goals.items():
        assert report.roots[gid] == goal.roots().to_doc()
    assert progress[-1] == (4, 4)
    doc = report.to_doc()
    assert json.loads(json.dumps(doc)) == doc


def test_verify_store_on_an_empty_store(chain) -> None:
    report = verify_store(chain.store, chain.specs)
    assert report.ok and report.blocks == 0 and report.contributions == 0


def seq_of(chain, goal_id: str, log_index: int) -> int:
    return sql(
        chain.store.path,
        "SELECT seq FROM contributions WHERE goal_id=? AND log_index=?",
        goal_id,
        log_index,
    )[0][0]


@pytest.mark.parametrize(
    ("column", "value"),
    [("score", 99.0), ("contributor_id", "mallory"), ("seed", 4242), ("metrics", '{"reward":1}')],
)
def test_tampered_contribution_row_is_found_at_its_block(filled, column, value) -> None:
    seq = seq_of(filled, DEMO, 2)  # in block 2
    sql(filled.store.path, f"UPDATE contributions SET {column}=? WHERE seq=?", value, seq)
    report = verify_store(filled.store, filled.specs)
    assert not report.ok
    assert report.first_bad_height == 2
    assert "hash mismatch" in report.problem and f"{DEMO}/2" in report.problem
    assert report.blocks == 2  # stopped at the first bad block


def test_tampered_contribution_hash_is_found(filled) -> None:
    seq = seq_of(filled, TRIVIAL, 3)  # block 3
    sql(
        filled.store.path,
        "UPDATE contributions SET contribution_hash=? WHERE seq=?",
        bytes(32),
        seq,
    )
    report = verify_store(filled.store, filled.specs)
    assert not report.ok and report.first_bad_height == 3


def test_tampered_mmr_node_is_found_at_its_block(filled) -> None:
    # TRIVIAL log index 4 is appended in block 3; its leaf (position 7) is the first node
    # stored with it.
    sql(
        filled.store.path,
        "UPDATE contributions SET mmr_nodes = CAST(? || substr(mmr_nodes, 33) AS BLOB) "
        "WHERE goal_id=? AND log_index=4",
        b"\x01" * 32,
        TRIVIAL,
    )
    report = verify_store(filled.store, filled.specs)
    assert not report.ok
    assert report.first_bad_height == 3
    assert "MMR nodes" in report.problem and f"{TRIVIAL}/4" in report.problem


def test_tampered_block_signature_is_found(filled) -> None:
    (sig,) = sql(filled.store.path, "SELECT signature FROM blocks WHERE height=3")[0]
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    sql(filled.store.path, "UPDATE blocks SET signature=? WHERE height=3", forged)
    report = verify_store(filled.store, filled.specs)
    assert not report.ok
    assert report.first_bad_height == 3
    assert "signature" in report.problem


def test_tampered_block_header_is_found(filled) -> None:
    (text,) = sql(filled.store.path, "SELECT header FROM blocks WHERE height=2")[0]
    doc = json.loads(text)
    doc["timestamp_ms"] += 1
    sql(
        filled.store.path,
        "UPDATE blocks SET header=? WHERE height=2",
        json.dumps(doc, sort_keys=True, separators=(",", ":")),
    )
    report = verify_store(filled.store, filled.specs)
    assert not report.ok and report.first_bad_height == 2
    assert "hash" in report.problem


def test_missing_block_is_found(filled) -> None:
    sql(filled.store.path, "DELETE FROM blocks WHERE height=2")
    report = verify_store(filled.store, filled.specs)
    assert not report.ok
    assert report.first_bad_height == 3
    assert "jump" in report.problem


def test_stray_contributions_are_found(filled, packs) -> None:
    sql(filled.store.path, "DELETE FROM blocks WHERE height=4")
    report = verify_store(filled.store, filled.specs)
    assert not report.ok
    assert "belong to no block" in report.problem


def test_repair_keeps_every_block_when_only_stray_rows_are_wrong(filled, tmp_path) -> None:
    sql(filled.store.path, "DELETE FROM blocks WHERE height=4")
    kept = tmp_path / "copy.sqlite"
    state = open_chain_state(
        filled.store, filled.specs, full=True, keep_copy=lambda: filled.store.copy_to(kept)
    )
    assert state.height == 3 and kept.exists()
    assert verify_store(filled.store, filled.specs).ok
    # The sequencer refuses instead: nobody could give its blocks back.
    sql(filled.store.path, "UPDATE contributions SET score = score + 1 WHERE log_index = 0")
    with pytest.raises(StoreError, match="store damaged at block") as info:
        open_chain_state(
            filled.store,
            filled.specs,
            full=True,
            keep_copy=lambda: filled.store.copy_to(tmp_path / "c2.sqlite"),
            repair=False,
        )
    assert "ian restore" in (info.value.fix or "")


def test_foreign_sequencer_is_found(filled) -> None:
    report = verify_store(filled.store, filled.specs, sequencer="ab" * 20)
    assert not report.ok and report.first_bad_height == 1
    assert "not the sequencer" in report.problem


def test_load_chain_state_refuses_a_tampered_peak(filled) -> None:
    size = filled.state.goals[DEMO].mmr.size  # 4 leaves: one peak at position 6
    assert size == 4
    # Position 6 is the third node added by leaf 3 (leaf 4, parent 5, parent 6).
    sql(
        filled.store.path,
        "UPDATE contributions SET mmr_nodes = CAST(substr(mmr_nodes, 1, 64) || ? AS BLOB) "
        "WHERE goal_id=? AND log_index=3",
        bytes(32),
        DEMO,
    )
    with pytest.raises(StoreError) as info:
        load_chain_state(filled.store, filled.specs)
    assert DEMO in info.value.message and info.value.fix


def test_load_chain_state_refuses_missing_mmr_nodes(filled) -> None:
    sql(filled.store.path, "UPDATE contributions SET mmr_nodes = x'' WHERE goal_id=?", TRIVIAL)
    with pytest.raises(StoreError, match="MMR nodes are missing"):
        load_chain_state(filled.store, filled.specs)


def test_load_chain_state_refuses_unconfigured_goals(filled) -> None:
    with pytest.raises(ConfigError) as info:
        load_chain_state(filled.store, [DEMO_GOAL])
    assert TRIVIAL in info.value.message
    assert "goals" in (info.value.fix or "")


# -- the saved leaderboards of node_state.json -----------------------------------------------


def saved_boards_of(state) -> dict:
    """What node_state.json carries per goal: the root and the entries in rank order."""
    return {
        gid: (
            g.leaderboard.root().hex(),
            [
                (e.log_index, e.score, e.contribution_hash.hex(), e.contributor_id)
                for e in g.leaderboard.entries
            ],
        )
        for gid, g in state.goals.items()
    }


def no_ranking(store, monkeypatch) -> None:
    def refuse(*_args):
        raise AssertionError("the leaderboard was ranked from the store")

    monkeypatch.setattr(store, "top_entries", refuse)


def assert_same_state(loaded, live) -> None:
    for gid, goal in live.goals.items():
        assert loaded.goals[gid].roots() == goal.roots(), gid
        assert list(loaded.goals[gid].leaderboard.entries) == list(goal.leaderboard.entries)


def test_a_saved_leaderboard_that_matches_the_store_is_used(filled, monkeypatch) -> None:
    boards = saved_boards_of(filled.state)
    no_ranking(filled.store, monkeypatch)
    assert_same_state(load_chain_state(filled.store, filled.specs, boards), filled.state)


def test_a_stale_saved_leaderboard_is_ranked_again(filled, packs, monkeypatch) -> None:
    """Saved, then more blocks (a crash before the next checkpoint): the saved root is not
    the newest block's, so the leaderboard comes from the store."""
    boards = saved_boards_of(filled.state)
    filled.commit([packs.contribution(n, goal_id=TRIVIAL) for n in range(40, 45)])
    ranked: list[str] = []
    real = filled.store.top_entries
    monkeypatch.setattr(
        filled.store, "top_entries", lambda gid, k: ranked.append(gid) or real(gid, k)
    )
    assert_same_state(load_chain_state(filled.store, filled.specs, boards), filled.state)
    assert ranked == [TRIVIAL]  # the untouched goal's saved board still matched its root


def test_a_saved_leaderboard_after_a_truncation_is_ranked_again(filled) -> None:
    boards = saved_boards_of(filled.state)
    filled.store.truncate_above(2)
    live = load_chain_state(filled.store, filled.specs)  # ranked from the store
    loaded = load_chain_state(filled.store, filled.specs, boards)
    assert_same_state(loaded, live)
    assert loaded.goals[TRIVIAL].roots() != filled.state.goals[TRIVIAL].roots()


@pytest.mark.parametrize(
    "damage",
    ["entry", "score", "order", "drop", "root", "hex", "types"],
)
def test_a_saved_leaderboard_that_does_not_hash_to_the_root_is_ignored(filled, damage) -> None:
    boards = saved_boards_of(filled.state)
    root, entries = boards[TRIVIAL]
    entries = list(entries)
    assert len(entries) >= 3
    i, score, chash, who = entries[0]
    if damage == "entry":  # a forged contributor under the right claimed root
        entries[0] = (i, score, chash, "mallory")
    elif damage == "score":
        entries[0] = (i, score + 1.0, chash, who)
    elif damage == "order":
        entries[0], entries[1] = entries[1], entries[0]
    elif damage == "drop":
        entries.pop()
    elif damage == "root":
        root = "00" * 32
    elif damage == "hex":
        entries[0] = (i, score, "zz", who)
    else:
        entries[0] = (None, score, chash, who)
    boards[TRIVIAL] = (root, entries)
    assert_same_state(load_chain_state(filled.store, filled.specs, boards), filled.state)


def test_without_saved_leaderboards_they_are_ranked(filled) -> None:
    assert_same_state(load_chain_state(filled.store, filled.specs, {}), filled.state)
    assert_same_state(load_chain_state(filled.store, filled.specs, None), filled.state)


def test_a_saved_leaderboard_never_hides_a_damaged_log(filled) -> None:
    """The cache spares the ranking only: MMR peaks are still read and checked."""
    boards = saved_boards_of(filled.state)
    sql(filled.store.path, "UPDATE contributions SET mmr_nodes = x'' WHERE goal_id=?", TRIVIAL)
    with pytest.raises(StoreError, match="MMR nodes are missing"):
        load_chain_state(filled.store, filled.specs, boards)
