"""Start-up pins a genesis and takes its sequencer and goals from it (real data dirs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ian.chain.genesis import Genesis
from ian.chain.goals import DEMO_GOAL, GoalSpec
from ian.config import load_settings
from ian.errors import GenesisError
from ian.identity import Identity
from ian.node import CONSENSUS_STATUS_INTERVAL_S, Node

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OTHER = Identity.generate()
EXTRA = GoalSpec(id="EXTRA", evaluator="trivial")


def open_node(data: Path, **env: str) -> Node:
    settings = load_settings(env={f"IAN_{k.upper()}": v for k, v in env.items()},
                             overrides={"data_dir": data})  # fmt: skip
    return Node.open(settings)


def write(path: Path, genesis: Genesis) -> Path:
    path.write_text(genesis.to_json())
    return path


def other_chain(tmp_path: Path, goals: list[GoalSpec] | None = None) -> Path:
    g = Genesis.one_authority(OTHER.node_id, OTHER.public_key, goals or [DEMO_GOAL], now=T0)
    return write(tmp_path / "other.json", g)


def test_a_lone_node_pins_a_genesis_naming_itself(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = open_node(data)
    try:
        me = node.identity.node_id
        assert node.role == "sequencer"
        assert node.genesis is not None and node.genesis.authority_ids == (me,)
        chain = node.genesis.chain_id()
    finally:
        node.close()
    assert Genesis.read(data / "genesis.json").chain_id() == chain
    # Restarted (even with seeds now): the same chain, still its sequencer.
    node = open_node(data, seed_nodes="tcp://127.0.0.1:9")
    try:
        assert node.genesis is not None and node.genesis.chain_id() == chain
        assert node.role == "sequencer"
    finally:
        node.close()


def test_a_follower_takes_sequencer_and_goals_from_ian_genesis(tmp_path: Path) -> None:
    data = tmp_path / "data"
    given = other_chain(tmp_path, [DEMO_GOAL, EXTRA])
    node = open_node(data, genesis=str(given), seed_nodes="tcp://127.0.0.1:9")
    try:
        assert node.role == "follower" and node.sequencer_id == OTHER.node_id
        assert [g.id for g in node.goals] == ["DEMO_TRADING_AGENT", "EXTRA"]
        assert set(node.state.goals) == {"DEMO_TRADING_AGENT", "EXTRA"}
    finally:
        node.close()
    assert (data / "genesis.json").read_text() == given.read_text()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"sequencer": "ab" * 20}, "sequencer is set to abab"),
        ({"network_id": "elsewhere"}, "genesis is network 'ian-local'"),
        ({"goals": json.dumps([EXTRA.model_dump(mode="json")])}, "configured goals"),
        ({"chain_id": "00" * 32}, "IAN_CHAIN_ID is 0000"),
    ],
)
def test_settings_that_contradict_the_genesis_stop_start_up(
    tmp_path: Path, env: Mapping[str, str], message: str
) -> None:
    given = other_chain(tmp_path)
    with pytest.raises(GenesisError, match=message) as info:
        open_node(tmp_path / "data", genesis=str(given), seed_nodes="tcp://127.0.0.1:9", **env)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data" / "genesis.json").exists()


def test_a_different_genesis_after_pinning_stops_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    open_node(data).close()
    pinned = (data / "genesis.json").read_text()
    with pytest.raises(GenesisError, match="but this data dir is pinned to chain"):
        open_node(data, genesis=str(other_chain(tmp_path)))
    assert (data / "genesis.json").read_text() == pinned
    # The matching chain id is accepted; a wrong one is not.
    chain = Genesis.read(data / "genesis.json").chain_id()
    open_node(data, chain_id=chain.upper()).close()


def test_a_quorum_genesis_runs_consensus(tmp_path: Path) -> None:
    """Several authorities: the node opens its consensus log and elects instead of following a
    configured sequencer; a follower of that chain is a learner."""
    keys = [Identity.generate() for _ in range(3)]
    g = Genesis(
        created_at=T0,
        goals=[DEMO_GOAL],
        authorities=[{"node_id": k.node_id, "public_key": k.public_key.hex()} for k in keys],
    )
    path = write(tmp_path / "g3.json", g)
    node = open_node(tmp_path / "follower", genesis=str(path))
    try:
        assert node.consensus is not None and node.bridge is not None
        assert node.role == "follower" and node.sequencer_id is None
        assert (tmp_path / "follower" / "consensus.db").is_file()
        # Heights travel in consensus messages: status gossip only feeds the peers listing.
        assert node.p2p.status_min_interval == CONSENSUS_STATUS_INTERVAL_S
    finally:
        node.close()
    with pytest.raises(GenesisError, match="authorities elect their leader"):
        open_node(tmp_path / "other", genesis=str(path), sequencer="self")
