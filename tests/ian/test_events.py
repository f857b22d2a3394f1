"""The event bus: envelopes, ordering, topic filters, dropping slow subscribers; and the pure
translations of node facts (outcomes, blocks, peer events) into event data."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from ian.chain.blocks import GoalRoots
from ian.config import load_settings
from ian.events import (
    TOPICS,
    EventBus,
    block_contributions,
    block_data,
    outcome_event,
    publish_block_contributions,
)
from ian.identity import Identity
from ian.ledger.recovery import load_chain_state
from ian.ledger.replication import Replicator
from ian.p2p import messages as msg
from ian.p2p.connection import PeerInfo
from ian.p2p.peer_book import PeerEvent
from ian.p2p.peer_events import PeerEvents
from ian.p2p.switch import PeerConnected, PeerDisconnected, PeerStatus
from ian.tau import MockTauServer, TauBridge
from ian.tau.bridge import TickOutcome

pytestmark = pytest.mark.anyio


async def take(sub: Any, n: int) -> list[Any]:
    out = []
    with anyio.fail_after(5):
        async for event in sub:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_events_arrive_in_order_with_envelope_and_increasing_seq() -> None:
    bus = EventBus(clock=lambda: 1234.5)
    sub = bus.subscribe()
    bus.publish("block", "applied", {"height": 1})
    bus.publish("peer", "connected", {"node_id": "a"})
    bus.publish("block", "applied", {"height": 2})
    events = await take(sub, 3)
    assert [(e.topic, e.type, e.seq) for e in events] == [
        ("block", "applied", 1),
        ("peer", "connected", 2),
        ("block", "applied", 3),
    ]
    first = events[0]
    assert json.loads(first.json) == first.to_dict()
    assert first.to_dict() == {
        "topic": "block",
        "type": "applied",
        "ts": 1234.5,
        "seq": 1,
        "data": {"height": 1},
    }
    assert bus.seq == 3


async def test_a_subscription_sees_only_its_topics_and_seq_keeps_counting() -> None:
    bus = EventBus()
    blocks = bus.subscribe({"block"})
    everything = bus.subscribe([])  # empty = every topic
    assert everything.topics == TOPICS
    bus.publish("peer", "connected", {})
    bus.publish("sync", "state", {})
    bus.publish("block", "applied", {"height": 1})
    [only] = await take(blocks, 1)
    assert (only.topic, only.seq) == ("block", 3)
    assert blocks.pending == 0
    assert [e.seq for e in await take(everything, 3)] == [1, 2, 3]


async def test_a_reader_waiting_for_events_is_woken_by_publish() -> None:
    bus = EventBus()
    sub = bus.subscribe({"tau"})
    got: list[Any] = []

    async def reader() -> None:
        got.extend(await take(sub, 1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        bus.publish("tau", "breaker", {"state": "OPEN"})
    assert got[0].data == {"state": "OPEN"}


async def test_a_slow_subscriber_is_dropped_and_a_fast_one_keeps_receiving() -> None:
    bus = EventBus(queue_size=3)
    slow = bus.subscribe({"block"})
    fast = bus.subscribe({"block"})
    for height in range(1, 4):
        bus.publish("block", "applied", {"height": height})
        assert (await take(fast, 1))[0].data["height"] == height
    assert not slow.closed and slow.pending == 3
    bus.publish("block", "applied", {"height": 4})  # the 4th unread event: over the bound
    assert slow.closed
    assert slow.closed_reason is not None and "too slow" in slow.closed_reason
    assert slow.pending == 0  # dropped, not buffered
    assert [e async for e in slow] == []
    assert bus.dropped == 1 and bus.subscriber_count == 1
    assert (await take(fast, 1))[0].data["height"] == 4
    bus.publish("block", "applied", {"height": 5})
    assert (await take(fast, 1))[0].data["height"] == 5


async def test_a_dropped_subscriber_blocked_elsewhere_learns_it_from_wait_closed() -> None:
    bus = EventBus(queue_size=1)
    sub = bus.subscribe({"block"})
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.wait_closed)
        await anyio.wait_all_tasks_blocked()
        bus.publish("block", "applied", {})
        bus.publish("block", "applied", {})
    assert sub.closed_reason is not None


async def test_unsubscribe_stops_delivery_but_keeps_what_was_queued() -> None:
    bus = EventBus()
    sub = bus.subscribe({"peer"})
    bus.publish("peer", "connected", {"n": 1})
    async with sub:
        pass  # leaving the context unsubscribes
    assert sub.closed and sub.closed_reason is None
    assert bus.subscriber_count == 0
    bus.publish("peer", "connected", {"n": 2})
    assert [e.data["n"] async for e in sub] == [1]
    sub.close()  # idempotent


async def test_closing_the_bus_ends_every_subscription_with_a_reason() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    bus.publish("block", "applied", {})
    bus.close("stopping")
    assert bus.closed
    assert sub.closed_reason == "stopping"
    assert [e async for e in sub] == []
    late = bus.subscribe({"block"})
    assert late.closed and late.closed_reason == "stopping"
    bus.publish("block", "applied", {})  # reaches nobody, does not fail


def test_unknown_topics_are_refused() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match=r"unknown topic.*nope"):
        bus.subscribe({"block", "nope"})
    with pytest.raises(ValueError, match="unknown topic"):
        bus.publish("nope", "x", {})
    with pytest.raises(ValueError):
        EventBus(queue_size=0)


# -- translations ---------------------------------------------------------------------------------


def test_outcomes_become_contribution_events_without_packs(chain, packs) -> None:
    good, bad = chain.commit(
        [packs.contribution(1), packs.contribution(2, params=packs.rejected_params)]
    )
    type_, data = outcome_event(good)
    assert type_ == "accepted"
    assert data["goal_id"] == packs.demo_goal and data["log_index"] == 0
    assert data["score"] == good.score and data["rejection_type"] is None
    assert data["contribution_hash"] == good.contribution_hash.hex()
    type_, data = outcome_event(bad)
    assert type_ == "rejected" and data["rejection_type"] == bad.rejection_type
    assert data["log_index"] is None and data["contribution_hash"] is None
    assert "parameters" not in json.dumps(data) and "agent_pack" not in data


def test_block_data_and_the_contributions_a_follower_derives_from_a_block(chain, packs) -> None:
    chain.commit([packs.contribution(0)])  # log index 0 of the demo goal
    chain.commit(
        [
            packs.contribution(1),
            packs.contribution(2, goal_id=packs.trivial_goal),
            packs.contribution(3),
        ]
    )
    [block] = chain.store.blocks(2, 1, max_bytes=1 << 30)
    data = block_data(block)
    assert data["height"] == 2 and data["entries"] == 3
    assert data["hash"] == block.hash.hex()
    assert set(data["goals"]) == {packs.demo_goal, packs.trivial_goal}
    assert data["goals"][packs.demo_goal]["log_size"] == 3
    json.dumps(data)
    derived = block_contributions(block)
    assert [(d["goal_id"], d["log_index"]) for d in derived] == [
        (packs.demo_goal, 1),
        (packs.trivial_goal, 0),
        (packs.demo_goal, 2),
    ]
    assert all(d["source"] == "block" and d["accepted"] for d in derived)
    assert derived[0]["contributor_id"] == "contributor-1"


async def test_a_blocks_contribution_events_are_built_only_for_a_subscriber(chain, packs) -> None:
    """A follower applying thousands of entries a second builds no event nobody wants; ``seq``
    still counts them, so a subscriber arriving later sees the same numbers."""
    chain.commit([packs.contribution(i) for i in range(3)])
    [block] = chain.store.blocks(1, 1, max_bytes=1 << 30)
    bus = EventBus()
    blocks = bus.subscribe({"block"})
    assert bus.wants("block") and not bus.wants("contribution")
    publish_block_contributions(bus, block)
    bus.publish("block", "applied", block_data(block))
    [applied] = await take(blocks, 1)
    assert applied.seq == 4 and blocks.pending == 0
    contributions = bus.subscribe({"contribution"})
    assert bus.wants("contribution")
    publish_block_contributions(bus, block)
    got = await take(contributions, 3)
    assert [e.seq for e in got] == [5, 6, 7]
    assert [e.data for e in got] == block_contributions(block)
    assert blocks.pending == 0


def _peer(node_id: str = "ab" * 20) -> PeerInfo:
    return PeerInfo(
        node_id=node_id,
        address="tcp://10.0.0.5:9000",
        remote_ip="10.0.0.5",
        direction="outbound",
        connected_since=0.0,
        last_seen=0.0,
        height=7,
        head_hash="00" * 32,
        agent="test",
        sequencer=False,
        protocol_version=1,
        cert_fingerprint="ff",
    )


def test_peer_listener_publishes_connect_disconnect_and_bans() -> None:
    published: list[tuple[str, str, dict]] = []
    listener = PeerEvents(
        lambda *a: published.append(a), ban_reason=lambda nid: f"node {nid} banned: spam"
    )
    nid = "ab" * 20
    listener(PeerConnected(_peer(nid)))
    listener(PeerStatus(nid, 8, "00" * 32))  # not an event of the stream
    listener(PeerDisconnected(nid, "peer said goodbye: bye"))
    listener(PeerConnected(_peer(nid)))
    listener(PeerDisconnected(nid, "banned: spam"))
    assert [(t, k) for t, k, _ in published] == [
        ("peer", "connected"),
        ("peer", "disconnected"),
        ("peer", "connected"),
        ("peer", "disconnected"),
        ("peer", "banned"),
    ]
    assert published[0][2]["address"] == "tcp://10.0.0.5:9000"
    assert published[1][2] == {
        "node_id": nid,
        "address": "tcp://10.0.0.5:9000",
        "reason": "peer said goodbye: bye",
    }
    assert published[4][2]["reason"] == f"node {nid} banned: spam"


# -- the services' hooks --------------------------------------------------------------------------


class _DisagreeingPeers:
    """Just enough of P2PService for a Replicator: one peer serving ``other``'s chain."""

    def __init__(self, other: Any) -> None:
        self.other = other
        self.peer_count = 1

    def on(self, *_: Any, **__: Any) -> None:
        pass

    def best_height(self) -> int:
        return 0

    def peers(self) -> list[Any]:
        return [SimpleNamespace(node_id="cd" * 20, height=self.other.state.height)]

    async def request(self, node_id: str, m: Any, **_: Any) -> Any:
        blocks = self.other.store.blocks(m.from_height, m.max_blocks, max_bytes=1 << 30)
        return msg.Blocks(blocks=[msg.block_to_doc(b) for b in blocks])


def _replicator(chain: Any, peers: Any, sequencer: str, bus: EventBus, **kw: Any) -> Replicator:
    return Replicator(
        state=chain.state,
        store=chain.store,
        p2p=peers,
        is_sequencer=lambda: False,
        sequencer_id=lambda: sequencer,
        on_applied=lambda b: None,
        on_rolled_back=lambda: None,
        reload_state=lambda: load_chain_state(chain.store, chain.specs),
        handle_forward=None,  # type: ignore[arg-type]
        publish=bus.publish,
        **({"record": lambda *a: None} | kw),
    )


async def test_the_replicator_drops_blocks_its_sequencer_did_not_sign(
    chain, packs, tmp_path
) -> None:
    """A data dir that ran as its own sequencer, now on a chain whose genesis names another:
    its own blocks are dropped (on its own evidence: their signer), then it resyncs."""
    other = type(chain)(tmp_path / "other.sqlite")  # the chain's real sequencer
    try:
        chain.commit([packs.contribution(1)])
        chain.commit([packs.contribution(2)])
        other.commit([packs.contribution(3)])
        other.commit([packs.contribution(4)])
        bus = EventBus()
        sub = bus.subscribe({"sync"})
        rep = _replicator(chain, _DisagreeingPeers(other), other.identity.node_id, bus)
        await rep.check_divergence(2)
        events = [(e.type, e.data) for e in await take(sub, 4)]
    finally:
        other.store.close()
    assert events[0] == ("diverged", {"height": 1, "sequencer": other.identity.node_id})
    assert events[1][0] == "state" and events[1][1]["state"] == "DIVERGED"
    assert events[2][0] == "repaired"
    assert events[2][1]["rolled_back_to"] == 0 and events[2][1]["blocks_removed"] == 2
    assert events[3][0] == "state"
    assert (events[3][1]["state"], events[3][1]["previous"]) == ("SYNCED", "DIVERGED")
    assert chain.state.height == 0


async def test_peers_claiming_another_chain_never_roll_a_node_back(chain, packs, tmp_path) -> None:
    """Blocks a peer serves that the sequencer did not sign are a lie: charged, nothing moves
    (there is no rollback by head-count)."""
    liar = type(chain)(tmp_path / "liar.sqlite")
    try:
        chain.commit([packs.contribution(1)])
        chain.commit([packs.contribution(2)])
        liar.commit([packs.contribution(3)])
        liar.commit([packs.contribution(4)])
        charged: list[tuple[str, Any]] = []
        bus = EventBus()
        rep = _replicator(
            chain,
            _DisagreeingPeers(liar),
            chain.identity.node_id,
            bus,
            record=lambda *a: charged.append(a),
        )
        await rep.check_divergence(2)
    finally:
        liar.store.close()
    assert chain.state.height == 2 and rep.consensus_state == "SYNCED"
    assert charged == [("cd" * 20, PeerEvent.INVALID_MESSAGE)]
    assert rep.fork_evidence is None


async def test_two_validly_signed_blocks_at_one_height_are_fork_evidence(
    chain, packs, tmp_path
) -> None:
    """The sequencer signed two different blocks at height 2: keep both, stop applying."""
    twin = type(chain)(tmp_path / "twin.sqlite")
    twin.identity = chain.identity  # the same sequencer key, equivocating
    try:
        for c in (chain, twin):
            c.commit([packs.contribution(1)])
        chain.commit([packs.contribution(2)])
        twin.commit([packs.contribution(3)])
        kept: list[dict[str, Any]] = []
        bus = EventBus()
        sub = bus.subscribe({"sync"})
        rep = _replicator(
            chain, _DisagreeingPeers(twin), chain.identity.node_id, bus, on_fork=kept.append
        )
        await rep.check_divergence(2)
        events = [(e.type, e.data) for e in await take(sub, 2)]
        ours, theirs = chain.store.block_hash(2), twin.store.block_hash(2)
    finally:
        twin.store.close()
    assert chain.state.height == 2  # nothing committed is ever removed
    assert rep.consensus_state == "FORKED"
    assert events[0] == ("forked", {"height": 2, "ours": ours.hex(), "theirs": theirs.hex()})
    assert events[1][0] == "state" and events[1][1]["state"] == "FORKED"
    assert len(kept) == 1 and kept[0]["height"] == 2
    assert {kept[0]["ours"]["hash"], kept[0]["theirs"]["hash"]} == {ours.hex(), theirs.hex()}


async def test_the_tau_bridge_publishes_failures_breaker_transitions_and_commits(
    tmp_path,
) -> None:
    tau = MockTauServer(mode="fail")
    mono = [1000.0]
    bus = EventBus()
    sub = bus.subscribe({"tau"})
    roots = GoalRoots(1, b"\x01" * 32, 1, b"\x02" * 32)
    async with anyio.create_task_group() as tg:
        await tg.start(tau.serve, "127.0.0.1", 0)
        settings = load_settings(
            env={},
            overrides={
                "data_dir": tmp_path,
                "tau_endpoint": tau.endpoint,
                "tau_timeout_s": 2.0,
                "tau_commit_entries": 1,
                "breaker_failures": 1,
                "breaker_reset_s": 30.0,
            },
        )
        bridge = TauBridge(
            settings,
            Identity.generate(),
            tmp_path / "chain.sqlite",
            roots=lambda: {"G": (roots, 1)},
            monotonic=lambda: mono[0],
            publish=bus.publish,
        )
        try:
            assert await bridge.tick() is TickOutcome.FAILED
            tau.set_mode("ok")
            mono[0] += 30
            assert await bridge.tick() is TickOutcome.COMMITTED
        finally:
            bridge.close()
        tg.cancel_scope.cancel()
    events = [(e.type, e.data) for e in await take(sub, 5)]
    assert [(t, d.get("state")) for t, d in events] == [
        ("commit_failed", None),
        ("breaker", "OPEN"),
        ("breaker", "HALF_OPEN"),
        ("breaker", "CLOSED"),
        ("commit", None),
    ]
    assert events[0][1]["goal_id"] == "G" and events[0][1]["error"]
    assert events[4][1]["goal_id"] == "G" and events[4][1]["log_size"] == 1
    assert events[4][1]["commit_hash"]
