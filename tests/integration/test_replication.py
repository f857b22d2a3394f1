"""Replication between real nodes: one sequencer, followers that verify, sync and repair.

Every node declares the same extra goal (a ``trivial``-evaluator goal, :data:`NETWORK_ENV`), so
contributions are cheap and always accepted; the demo goal is used too. The module-scoped
network (A = sequencer, B and C followers seeded with A only) is shared by the tests that do not
need a topology of their own, in order; the last of them stops the sequencer.

Partition topology (``test_partition_then_heal``): only two nodes, A and F, and two proxies. F's
only seed is proxy P1 (-> A) and F advertises proxy P2 (-> F) as its address, so A learns F only
as P2 and both directions of the link go through a proxy. With a third node the partition would
leak: peer exchange hands F the third node's real address (and the third node F's), a path
around the proxies. Cutting P1 and P2 is a full partition of F.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.support.nodes import (
    DEMO_GOAL,
    DEMO_REJECTED,
    NETWORK_ENV,
    TRIVIAL_GOAL,
    NodeProcess,
    build_chain,
    contribution,
    run_ian,
    wait_connected,
    wait_same_chain,
    wait_until,
)

from ian.chain.mmr import InclusionProof, verify_inclusion

pytestmark = pytest.mark.integration


def submit(node: NodeProcess, body: dict) -> dict:
    r = node.post("/api/v1/contribute", body)
    assert r.status_code == 200, (node.data_dir.name, r.status_code, r.text)
    return r.json()


def submit_all(pairs: list[tuple[NodeProcess, dict]], workers: int = 8) -> list[dict]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: submit(*p), pairs))


def log_entry(node: NodeProcess, goal: str, index: int) -> dict:
    r = node.get(f"/api/v1/log/{goal}", **{"from": index, "limit": 1})
    r.raise_for_status()
    (entry,) = r.json()["entries"]
    return entry


def test_fresh_node_catches_up_thousands_of_blocks(ian_nodes) -> None:
    data_dir = ian_nodes.data_dir()
    height = build_chain(data_dir, blocks=2000, per_block=3)
    seq = ian_nodes.start(data_dir, NETWORK_ENV, wait=("api", "p2p"))
    assert seq.status()["role"] == "sequencer" and seq.status()["height"] == height
    fresh = ian_nodes.start_follower(seq, NETWORK_ENV)
    view = wait_same_chain(seq, [fresh], timeout=60)
    assert view["height"] == height
    assert view["goals"][TRIVIAL_GOAL]["log_size"] == 6000
    # A normal catch-up is nobody's misbehaviour: neither side charged the other.
    seen_by_fresh = fresh.get(f"/api/v1/peers/{seq.node_id}").json()
    seen_by_seq = seq.get(f"/api/v1/peers/{fresh.node_id}").json()
    assert seen_by_seq["rate_limit_violations"] == 0, seen_by_seq
    assert seen_by_fresh["failed_syncs"] == 0, seen_by_fresh
    assert not fresh.has_msg("rate_limited")
    # It keeps following after the catch-up. The sequencer's store came without a state file,
    # so it first asks its peers for blocks above its own (a restored sequencer must not
    # re-sequence heights they hold); until then it answers forwards with a 503, and a fast
    # catch-up can end before that check does.
    wait_until(lambda: seq.get("/readyz").status_code == 200, what="the sequencer accepting")
    submit(fresh, contribution(1, tag="after-catch-up"))
    wait_same_chain(seq, [fresh])


def test_fresh_node_catches_up_a_chain_of_full_blocks(ian_nodes) -> None:
    """Blocks of 1,000 entries are what the sequencer makes under load; 40 of them do not fit
    in one get_blocks reply (4 MiB frames), so the reply must be cut to fit."""
    data_dir = ian_nodes.data_dir()
    height = build_chain(data_dir, blocks=40, per_block=1000)
    seq = ian_nodes.start(data_dir, NETWORK_ENV, wait=("api", "p2p"))
    fresh = ian_nodes.start_follower(seq, NETWORK_ENV)
    view = wait_same_chain(seq, [fresh], timeout=30)
    assert view["height"] == height
    assert view["goals"][TRIVIAL_GOAL]["log_size"] == 40_000
    assert seq.node_id in fresh.connected()  # the sequencer was not scored away


def test_large_accepted_contribution_is_replicated(ian_nodes) -> None:
    """A contribution within the node's own limits (max_parameters_bytes, 10 MiB by default)
    is accepted by the sequencer; every follower must then hold it too."""
    seq, follower = ian_nodes.start_network(2, NETWORK_ENV)
    big = contribution(0, tag="big")
    big["agent_pack"]["parameters"] = base64.b64encode(b"x" * (5 * 1024 * 1024)).decode()
    r = seq.post("/api/v1/contribute", big, timeout=60)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    submit(seq, contribution(1, tag="after-big"))
    wait_same_chain(seq, [follower], timeout=20)


def test_partition_then_heal(ian_nodes, fault_proxy) -> None:
    a = ian_nodes.start(env=NETWORK_ENV, wait=("api", "p2p"))
    a_port = a.port("p2p")
    to_a = fault_proxy(("127.0.0.1", a_port))
    to_f = fault_proxy()  # target known once F has bound its port
    f = ian_nodes.start_follower(to_a.address, {**NETWORK_ENV, "IAN_P2P_ADVERTISE": to_f.address})
    to_f.target = ("127.0.0.1", f.port("p2p"))
    wait_connected(a, f)
    assert a.connected()[f.node_id]["address"] == to_f.address  # A only knows F via P2
    submit_all([(a, contribution(i, tag="before-cut")) for i in range(5)])
    wait_same_chain(a, [f])

    to_a.cut()
    to_f.cut()
    wait_until(
        lambda: not a.connected() and not f.connected(), timeout=10, what="both sides isolated"
    )
    assert f.status()["consensus_state"] == "ISOLATED"
    answers = submit_all([(a, contribution(i, tag="during-cut")) for i in range(10)])
    assert all(x["accepted"] for x in answers)
    # Both sides keep trying (F its seed, A its known peer), and the proxies refuse them.
    wait_until(lambda: to_a.refused >= 1, timeout=10, what="F to redial through P1")
    assert f.status()["height"] < a.status()["height"]
    assert not f.connected()

    to_a.heal()
    to_f.heal()
    wait_same_chain(a, [f], timeout=30)
    assert f.status()["consensus_state"] == "SYNCED"


def test_divergent_node_rolls_back_to_the_network_chain(ian_nodes) -> None:
    a = ian_nodes.start(env=NETWORK_ENV, wait=("api", "p2p"))
    for i in range(6):  # one block each
        submit(a, contribution(i, tag="network"))
    # D runs alone first (its own sequencer) and makes a chain of its own, which also touches
    # a goal the network's chain never did.
    d = ian_nodes.start(env=NETWORK_ENV, wait=("api", "p2p"))
    assert d.status()["role"] == "sequencer"
    submit(d, contribution(0, tag="rogue"))
    submit(d, contribution(1, goal=DEMO_GOAL, tag="rogue"))
    assert d.status()["height"] == 2
    assert d.terminate() == 0

    # Without the one-authority genesis D pinned while alone, it is a follower of the network.
    (d.data_dir / "genesis.json").unlink()
    d = ian_nodes.restart(d, {"IAN_SEED_NODES": a.p2p_address})
    d.wait_for_msg("DIVERGED")
    d.wait_for_msg("rolled back")
    view = wait_same_chain(a, [d], timeout=15)
    assert view["goals"][DEMO_GOAL]["log_size"] == 0
    status = d.status()
    assert status["role"] == "follower"
    assert status["consensus_state"] == "SYNCED"
    # And it follows the network from there on.
    submit(d, contribution(7, tag="network"))
    wait_same_chain(a, [d])


# ------------------------------------------------------------------ one shared network
# (last in the module: its final test stops the sequencer)


@pytest.fixture(scope="module")
def net(ian_module_nodes) -> list[NodeProcess]:
    return ian_module_nodes.start_network(3, NETWORK_ENV)


def test_round_robin_contributions_give_identical_roots_everywhere(net) -> None:
    a, b, c = net
    bodies = [contribution(i, tag="rr") for i in range(24)]
    bodies += [contribution(i, goal=DEMO_GOAL, tag="rr") for i in range(4)]
    bodies += [contribution(99, goal=DEMO_GOAL, params=DEMO_REJECTED, tag="rr")]
    answers = submit_all([(net[i % 3], body) for i, body in enumerate(bodies)])
    accepted = [x for x in answers if x["accepted"]]
    assert len(accepted) == 28, answers
    assert answers[-1]["rejection_type"] == "threshold"

    view = wait_same_chain(a, [b, c])
    assert view["goals"][TRIVIAL_GOAL]["log_size"] == 24
    assert view["goals"][DEMO_GOAL]["log_size"] == 4
    # Every answer, whichever node took the request, is the sequencer's durable result.
    for body, x in zip(bodies, answers, strict=True):
        if x["accepted"]:
            assert (
                log_entry(a, body["goal_id"], x["log_index"])["contribution_hash"]
                == (x["contribution_hash"])
            )
    # An inclusion proof served by a follower verifies against the sequencer's root.
    a_goal = a.status()["goals"][TRIVIAL_GOAL]
    for follower in (b, c):
        for index in (0, 13, 23):
            p = follower.get(f"/api/v1/proof/{TRIVIAL_GOAL}/{index}").json()
            proof = InclusionProof(
                leaf_index=p["log_index"],
                size=p["size"],
                path=tuple(bytes.fromhex(h) for h in p["path"]),
                peaks=tuple(bytes.fromhex(h) for h in p["peaks"]),
            )
            assert verify_inclusion(
                bytes.fromhex(a_goal["log_root"]),
                bytes.fromhex(p["leaf"]),
                proof,
                size=a_goal["log_size"],
            ), (follower.data_dir.name, index)
    # Leaderboards are equal entry by entry, not only by root.
    boards = [n.get(f"/api/v1/leaderboard/{TRIVIAL_GOAL}").json() for n in net]
    assert boards[0]["entries"] and boards[0] == boards[1] == boards[2]


def test_follower_status_and_forwarded_contribution(net) -> None:
    a, b, _c = net
    answer = submit(b, contribution(0, tag="status"))
    assert answer["accepted"] and answer["log_index"] is not None
    entry = log_entry(a, TRIVIAL_GOAL, answer["log_index"])
    assert entry["contribution_hash"] == answer["contribution_hash"]
    wait_same_chain(a, [b])

    r = run_ian("status", "--json", "--node-url", b.api_url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["role"] == "follower"
    assert doc["height"] == a.status()["height"]
    assert doc["network_height"] == doc["height"]
    assert doc["sync_lag"] == 0
    assert doc["consensus_state"] == "SYNCED"
    assert doc["peers"]["connected"] >= 1
    r = run_ian("status", "--json", "--node-url", a.api_url)
    assert json.loads(r.stdout)["role"] == "sequencer"


def test_killed_follower_catches_up_after_restart(net, ian_module_nodes) -> None:
    a, b, c = net
    c.kill()  # SIGKILL
    answers = submit_all([((a, b)[i % 2], contribution(i, tag="while-c-down")) for i in range(20)])
    assert all(x["accepted"] for x in answers)
    height_while_down = a.status()["height"]
    net[2] = c = ian_module_nodes.restart(c)
    wait_same_chain(a, [b, c])
    assert c.status()["height"] >= height_while_down
    assert c.status()["role"] == "follower"


def test_follower_answers_503_while_the_sequencer_is_down(net) -> None:
    a, b, _c = net
    a.kill()
    wait_until(
        lambda: a.node_id not in b.connected(), timeout=10, what="B to see the sequencer gone"
    )
    r = b.post("/api/v1/contribute", contribution(0, tag="no-sequencer"))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    # The follower itself stays up and readable.
    assert b.get("/health").status_code == 200
    assert b.status()["role"] == "follower"
