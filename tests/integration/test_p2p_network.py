"""Three real nodes over loopback TLS: discovery through one seed, restart, bans that hold.

One module-scoped network (A = seed and sequencer, B and C followers that know only A) is
shared by the tests below, in order; each test leaves all three connected to each other.
"""

from __future__ import annotations

import json
import time

import pytest
from tests.support.nodes import NodeProcess, run_ian, wait_connected, wait_until

pytestmark = pytest.mark.integration

BAN_WATCH_S = 4.5


@pytest.fixture(scope="module")
def trio(ian_module_nodes) -> dict[str, NodeProcess]:
    # B joins before C, so C's first peer exchange with A (made on connect) names B.
    a = ian_module_nodes.start(wait=("api", "p2p"))
    b = ian_module_nodes.start_follower(a)
    wait_connected(b, a)
    c = ian_module_nodes.start_follower(a)
    wait_connected(c, a)
    return {"a": a, "b": b, "c": c}


def peers_cli(node: NodeProcess) -> dict:
    """`ian peers list --json` against the running node (online), parsed."""
    r = run_ian(
        "peers", "list", "--json", "--node-url", node.api_url, "--data-dir", str(node.data_dir)
    )
    assert r.returncode == 0, r.stderr
    assert "online via" in r.stderr
    return json.loads(r.stdout)


def connected_ids(doc: dict) -> set[str]:
    return {p["node_id"] for p in doc["connected"]}


def test_three_nodes_find_each_other_through_one_seed(trio) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    # C was only ever told about A: a connection to B comes from peer exchange.
    wait_connected(c, b)
    ids = {n: n.node_id for n in (a, b, c)}
    for node in (a, b, c):
        doc = peers_cli(node)
        others = {ids[o] for o in (a, b, c) if o is not node}
        assert connected_ids(doc) == others, doc
        known = {p["node_id"]: p for p in doc["peers"]}
        assert others <= set(known), doc
        for other in others:
            assert known[other]["connected"] is True
            assert known[other]["banned"] is False
            assert known[other]["addresses"], known[other]
    assert c.wait_for_msg(f"peer {b.node_id} connected")
    # Roles: the seed orders blocks; the others learnt it from the genesis the seed gave them.
    assert a.status()["role"] == "sequencer"
    for f in (b, c):
        assert f.status()["role"] == "follower"
        assert f.wait_for_msg(f"following sequencer {a.node_id}")


def test_killed_node_restarts_and_the_others_reconnect(trio, ian_module_nodes) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    b_id = b.node_id
    b.kill()  # SIGKILL: no goodbye, no clean shutdown
    wait_until(
        lambda: b_id not in a.connected() and b_id not in c.connected(),
        timeout=10,
        what="A and C to notice B is gone",
    )
    assert a.status()["peers"]["connected"] == 1
    b = trio["b"] = ian_module_nodes.restart(b)  # same ports: peers know its address
    for x, y in ((a, b), (c, b), (a, c)):
        wait_connected(x, y, timeout=30)
    for node in (a, b, c):
        wait_until(
            lambda node=node: node.status()["peers"]["connected"] == 2,
            timeout=10,
            what="peer counts back to 2",
        )


def test_banned_node_is_dropped_refused_and_back_after_unban(trio) -> None:
    a, b, c = trio["a"], trio["b"], trio["c"]
    wait_connected(a, c)
    c_id = c.node_id
    before = len(c.records)
    r = run_ian(
        "peers",
        "ban",
        c_id,
        "--for",
        "1h",
        "--reason",
        "test",
        "--json",
        "--node-url",
        a.api_url,
        "--data-dir",
        str(a.data_dir),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["target"] == c_id and doc["reason"] == "test"
    assert doc["disconnected"] == [c_id]
    wait_until(lambda: c_id not in a.connected(), timeout=5, what="C dropped by A")

    # C keeps dialling its seed A and is refused after TLS, with "banned" as the reason.
    refused = c.wait_for(
        lambda rec: "refused" in str(rec.get("msg", "")) and "banned" in str(rec.get("msg", "")),
        timeout=15,
    )
    assert c.records.index(refused) >= before
    # ... and never gets back in while the ban holds: watch over a few of C's redials and of
    # A's maintenance rounds (every 2 s), which would redial C if the ban did not hold.
    watch_until = time.monotonic() + BAN_WATCH_S
    while time.monotonic() < watch_until:
        assert c_id not in a.connected(), "a banned node reconnected"
        assert a.node_id not in c.connected(), "C holds a connection to A while banned"
        time.sleep(0.1)
    assert c.has_msg("refused: banned")
    shown = peers_cli(a)
    assert c_id not in connected_ids(shown)
    assert c_id in {p["node_id"] for p in shown["peers"] if p["banned"]}
    assert a.status()["peers"]["banned"] == 1
    assert a.metrics()["ian_peer_score_banned"] == 1
    # B is not affected by A's ban.
    assert c_id in b.connected()

    r = run_ian(
        "peers",
        "unban",
        c_id,
        "--json",
        "--node-url",
        a.api_url,
        "--data-dir",
        str(a.data_dir),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] is True
    wait_connected(a, c, timeout=30)
    assert a.status()["peers"]["banned"] == 0
