"""node_state.json carries each goal's leaderboard, so a restart does not rank every
contribution again; a missing, stale or edited one is ranked from the store (real data dirs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ian.chain.contributions import make_contribution
from ian.chain.goals import GoalSpec
from ian.config import load_settings
from ian.ledger.sequencer import build_block
from ian.node import Node
from ian.storage import node_state
from ian.storage.store import Store

GOAL = "TRIVIAL_GOAL"
SPEC = GoalSpec(id=GOAL, evaluator="trivial", leaderboard_capacity=5)


def open_node(root: Path) -> Node:
    return Node.open(load_settings(env={}, overrides={"data_dir": root, "goals": [SPEC]}))


def add_blocks(node: Node, first: int, blocks: int = 3, per_block: int = 7) -> None:
    st = node.state
    n = first
    for _ in range(blocks):
        batch = []
        for _ in range(per_block):
            n += 1
            batch.append(
                make_contribution(
                    goal_id=GOAL,
                    version="1.0",
                    parameters=b"p%d" % n,
                    metadata={},
                    contributor_id=f"c{n}",
                    seed=n,
                )
            )
        st.begin()
        _outcomes, block, entries = build_block(st, node.identity, batch, store=node.store)
        assert block is not None
        node.store.append_block(block, entries)
        st.height, st.head_hash = block.height, block.hash
        st.head_timestamp_ms = block.header.timestamp_ms
        st.begin()
        node._publish_all()  # what a committed block publishes (the views checkpoints save)


def board(node: Node) -> list[tuple]:
    return [
        (e.log_index, e.score, e.contribution_hash, e.contributor_id)
        for e in node.state.goals[GOAL].leaderboard.entries
    ]


@pytest.fixture
def ranked(monkeypatch) -> list[str]:
    """Goals whose leaderboard the store ranked (``Store.top_entries`` calls)."""
    calls: list[str] = []
    real = Store.top_entries

    def spy(self, goal_id, limit):
        calls.append(goal_id)
        return real(self, goal_id, limit)

    monkeypatch.setattr(Store, "top_entries", spy)
    return calls


def stopped_node(root: Path, *, clean: bool = True) -> list[tuple]:
    node = open_node(root)
    try:
        add_blocks(node, 0)
        node.checkpoint(clean=clean)
        return board(node)
    finally:
        node.close()


def test_the_leaderboard_survives_a_restart_without_ranking(tmp_path, ranked) -> None:
    expected = stopped_node(tmp_path / "d")
    saved = node_state.read_node_state(tmp_path / "d" / "node_state.json")
    assert saved is not None
    summary = saved.goals[GOAL]
    assert summary.leaderboard is not None and len(summary.leaderboard) == 5
    assert [e[0] for e in summary.leaderboard] == [e[0] for e in expected]
    ranked.clear()
    node = open_node(tmp_path / "d")
    try:
        assert board(node) == expected
        assert GOAL not in ranked
        assert node.views[GOAL].leaderboard_root.hex() == summary.leaderboard_root
    finally:
        node.close()


def test_a_state_file_without_leaderboards_is_ranked(tmp_path, ranked) -> None:
    """The first start after an upgrade: the file has no leaderboard entries yet."""
    expected = stopped_node(tmp_path / "d")
    path = tmp_path / "d" / "node_state.json"
    doc = json.loads(path.read_text())
    for g in doc["goals"].values():
        del g["leaderboard"]
    path.write_text(json.dumps(doc))
    ranked.clear()
    node = open_node(tmp_path / "d")
    try:
        assert board(node) == expected and GOAL in ranked
        node.checkpoint(clean=True)  # writes the entries from now on
    finally:
        node.close()
    assert node_state.read_node_state(path).goals[GOAL].leaderboard is not None


def test_a_stale_leaderboard_is_ranked_again(tmp_path, ranked) -> None:
    """A crash after blocks were committed but before the next checkpoint."""
    root = tmp_path / "d"
    stopped_node(root)
    stale = (root / "node_state.json").read_text()
    node = open_node(root)
    try:
        add_blocks(node, 100)
        expected = board(node)
    finally:
        node.close()
    (root / "node_state.json").write_text(stale)
    ranked.clear()
    node = open_node(root)
    try:
        assert board(node) == expected and GOAL in ranked
    finally:
        node.close()


@pytest.mark.parametrize("edit", ["contributor", "garbage", "not a list"])
def test_an_edited_leaderboard_is_ranked_again(tmp_path, ranked, edit) -> None:
    root = tmp_path / "d"
    expected = stopped_node(root)
    path = root / "node_state.json"
    doc = json.loads(path.read_text())
    entries = doc["goals"][GOAL]["leaderboard"]
    if edit == "contributor":
        entries[0][3] = "mallory"
    elif edit == "garbage":
        entries[0] = ["x", "y"]
    else:
        doc["goals"][GOAL]["leaderboard"] = {"a": 1}
    path.write_text(json.dumps(doc))
    ranked.clear()
    node = open_node(root)  # never refused: the entries are only a cache
    try:
        assert board(node) == expected and GOAL in ranked
    finally:
        node.close()
