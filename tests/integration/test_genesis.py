"""Genesis with real `ian node run` processes on loopback: pinned on first start, enforced after."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ian.chain.genesis import Genesis
from ian.chain.goals import DEMO_GOAL
from ian.identity import Identity


def test_a_seedless_node_pins_its_genesis_and_refuses_another(ian_nodes, ian, tmp_path) -> None:
    node = ian_nodes.start()
    pinned = node.data_dir / "genesis.json"
    genesis = Genesis.read(pinned)
    me = json.loads((node.data_dir / "identity.json").read_text())["node_id"]
    assert genesis.authority_ids == (me,)
    line = node.wait_for_msg("made a one-authority genesis naming this node")
    assert genesis.chain_id() in line["msg"]
    status = node.status()
    assert status["chain_id"] == genesis.chain_id() and status["leader_id"] == me
    assert status["authorities"] == [{"node_id": me, "reachable": True, "match_height": 0}]
    assert status["commit_height"] == status["height"] == 0
    # A follower that only has a seed learns the chain and its leader from it.
    follower = ian_nodes.start_follower(node)
    follower.wait_for_msg("trust on first use")
    seen = follower.status()
    assert seen["chain_id"] == genesis.chain_id() and seen["leader_id"] == me
    assert seen["authorities"][0]["reachable"] is True
    assert Genesis.read(follower.data_dir / "genesis.json") == genesis
    assert follower.terminate() == 0
    assert node.terminate() == 0

    shown = ian("network", "show", "--data-dir", str(node.data_dir), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["chain_id"] == genesis.chain_id()

    other = Identity.generate()
    foreign = tmp_path / "foreign.json"
    foreign.write_text(
        Genesis.one_authority(
            other.node_id, other.public_key, [DEMO_GOAL], now=datetime.now(UTC)
        ).to_json()
    )
    again = ian_nodes.spawn(data_dir=node.data_dir, env={"IAN_GENESIS": str(foreign)})
    assert again.proc.wait(20) == 3
    again.wait_stderr_closed()
    errors = [ln for ln in again.stderr_text().splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "but this data dir is pinned to chain" in errors[0]
    assert Genesis.read(pinned) == genesis
