"""Replication between two real nodes' switches on the in-memory transport (no sockets):
catching up, block announces, contribution forwarding, and the handlers' peer argument."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from ian.chain.blocks import Block, InvalidBlockError
from ian.chain.contributions import FRAME_OVERHEAD, Contribution
from ian.chain.state import Outcome
from ian.config import Settings
from ian.ledger import replication
from ian.ledger.recovery import load_chain_state
from ian.ledger.replication import SYNC_BATCH, SYNC_REPLY_BYTES, Replicator, signed_blocks
from ian.metrics import NodeMetrics
from ian.p2p import messages as msg
from ian.p2p.errors import P2PError
from ian.p2p.memory import MemoryNetwork
from ian.p2p.peer_book import PeerBook
from ian.p2p.switch import P2PService, P2PTuning, PeerConnected
from ian.storage.datadir import InitResult, init_data_dir

pytestmark = pytest.mark.anyio

FAST = P2PTuning(handshake_timeout=2.0, request_timeout=5.0, maintenance_interval=0.1)


def make_switch(network: MemoryNetwork, init: InitResult, chain: Any) -> P2PService:
    settings = Settings(
        data_dir=init.datadir.root,
        p2p_host="127.0.0.1",
        p2p_port=0,
        network_id="ian-test",
        min_peers=0,
    )
    return P2PService(
        settings,
        init.identity,
        init.datadir,
        PeerBook.load(init.datadir.peer_scores_file),
        NodeMetrics(),
        height_provider=lambda: (chain.state.height, chain.state.head_hash),
        tuning=FAST,
        transport=network.transport(init.datadir.certs_dir, init.identity),
    )


class Applied:
    """The heights a node applied, in order; ``until(h)`` waits for height ``h``."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.heights: list[int] = []
        self._changed = anyio.Event()

    def __call__(self, block: Block) -> None:
        self.heights.append(block.height)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def until(self, height: int) -> None:
        with anyio.fail_after(10):
            while self.node.state.height < height:
                await self._changed.wait()


@dataclass
class Pair:
    """A sequencer and a follower, each a switch + a Replicator over the same memory network."""

    sequencer: Any  # tests/conftest.py's Chain, signed by the sequencer node's identity
    follower: Any
    seq_switch: P2PService
    fol_switch: P2PService
    seq_rep: Replicator
    fol_rep: Replicator
    applied: Applied
    forwarded: list[Contribution] = field(default_factory=list)


@pytest.fixture
async def pair(chain: Any, tmp_path: Path) -> AsyncIterator[Pair]:
    network = MemoryNetwork()
    seq_init = init_data_dir(tmp_path / "sequencer")
    fol_init = init_data_dir(tmp_path / "follower")
    chain.identity = seq_init.identity  # the sequencer signs blocks with its node identity
    seq_id = seq_init.identity.node_id
    follower = type(chain)(tmp_path / "follower.sqlite")
    seq_switch = make_switch(network, seq_init, chain)
    fol_switch = make_switch(network, fol_init, follower)
    forwarded: list[Contribution] = []

    async def handle_forward(c: Contribution, peer: Any, token: str | None) -> Outcome:
        assert peer.node_id == fol_init.identity.node_id and token is None
        forwarded.append(c)
        return chain.commit([c])[0]

    def replicator(node: Any, switch: P2PService, *, sequencer: bool, **kw: Any) -> Replicator:
        defaults: dict[str, Any] = {
            "on_applied": lambda block: None,
            "handle_forward": handle_forward,
        }
        return Replicator(
            state=node.state,
            store=node.store,
            p2p=switch,
            is_sequencer=lambda: sequencer,
            sequencer_id=lambda: seq_id,
            on_rolled_back=lambda: None,
            reload_state=lambda: load_chain_state(node.store, node.specs),
            record=switch.report,
            **(defaults | kw),
        )

    applied = Applied(follower)
    p = Pair(
        chain,
        follower,
        seq_switch,
        fol_switch,
        replicator(chain, seq_switch, sequencer=True),
        replicator(follower, fol_switch, sequencer=False, on_applied=applied),
        applied,
        forwarded,
    )

    def wake_on_connect(event: object) -> None:  # what the node does
        if isinstance(event, PeerConnected):
            p.fol_rep.wake()

    fol_switch.add_listener(wake_on_connect)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(seq_switch.run)
            await tg.start(fol_switch.run)
            await tg.start(p.fol_rep.run)
            yield p
            tg.cancel_scope.cancel()
    finally:
        follower.store.close()


async def test_a_follower_catches_up_then_follows_announces(pair: Pair, packs: Any) -> None:
    seq = pair.sequencer
    seq.commit([packs.contribution(1, goal_id=packs.trivial_goal)])
    seq.commit([packs.contribution(2, goal_id=packs.trivial_goal)])
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")

    await pair.applied.until(2)  # fetched with get_blocks
    assert pair.applied.heights == [1, 2]
    assert pair.follower.store.block_hash(2) == seq.store.block_hash(2)
    record = pair.fol_switch.peer_book.get(pair.seq_switch.node_id)
    assert record is not None and record.successful_syncs >= 1

    seq.commit([packs.contribution(3, goal_id=packs.trivial_goal)])
    [block] = seq.store.blocks(3, 1, max_bytes=1 << 30)
    await pair.seq_rep.announce(block)
    await pair.applied.until(3)  # applied from the announce itself
    assert pair.applied.heights == [1, 2, 3]
    assert pair.follower.state.head_hash == seq.state.head_hash
    assert pair.fol_rep.consensus_state == "SYNCED"


async def test_a_get_blocks_reply_stops_at_the_reply_budget(pair: Pair, packs: Any) -> None:
    """A follower asks for up to 64 blocks; a reply holds no more than ``reply_bytes`` of
    entries (at least one block), so a catching-up follower applies its first blocks sooner and
    holds less. It asks again for the rest."""
    seq = pair.sequencer
    for k in range(3):
        seq.commit([packs.contribution(10 * k + i, goal_id=packs.trivial_goal) for i in range(5)])
    assert pair.seq_rep.reply_bytes == SYNC_REPLY_BYTES
    pair.seq_rep.reply_bytes = FRAME_OVERHEAD + 1  # less than one block
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    await pair.applied.until(3)  # one block a reply
    assert pair.applied.heights == [1, 2, 3]
    assert pair.follower.state.head_hash == seq.state.head_hash
    ask = msg.GetBlocks(from_height=1, max_blocks=SYNC_BATCH)
    reply = await pair.fol_switch.request(pair.seq_switch.node_id, ask)
    assert isinstance(reply, msg.Blocks) and [d.header.height for d in reply.blocks] == [1]
    pair.seq_rep.reply_bytes = SYNC_REPLY_BYTES
    reply = await pair.fol_switch.request(pair.seq_switch.node_id, ask)
    assert isinstance(reply, msg.Blocks) and len(reply.blocks) == 3


async def test_a_claim_is_asked_about_again_after_a_request_failed_on_the_way(
    pair: Pair, packs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that fails in transit (a connection that dropped, a timeout) proves nothing
    about the peer's height: the follower asks again a little later. It used to ignore that
    height until the peer claimed a higher one: after a partition healed, a follower stayed 9
    blocks behind (test_partition_then_heal, once). The failure is made at the follower's
    request, as a dropped connection raises it; the peer stays connected throughout."""
    seq = pair.sequencer
    for k in range(3):
        seq.commit([packs.contribution(k, goal_id=packs.trivial_goal)])
    real = pair.fol_rep._ask_block
    failed: list[int] = []

    async def drops_once(node_id: str, height: int) -> msg.BlockDoc | None:
        if not failed:
            failed.append(height)
            raise P2PError("connection closed")
        return await real(node_id, height)

    monkeypatch.setattr(pair.fol_rep, "_ask_block", drops_once)
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    await pair.applied.until(3)  # asked again after the backoff (0.5-1 s for a first failure)
    assert failed == [3]
    assert pair.seq_switch.node_id not in pair.fol_rep._unasked  # shown: the count starts over
    assert pair.follower.state.head_hash == seq.state.head_hash


async def test_what_a_follower_noted_about_a_peer_goes_with_the_peer(pair: Pair) -> None:
    """Disproven claims and retry times are kept for connected peers only: identities that
    come and go cannot grow them."""
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    seq_id, gone = pair.seq_switch.node_id, "ab" * 20
    rep = pair.fol_rep
    rep._disproven.update({seq_id: 99, gone: 7})
    rep._unasked.update({seq_id: (0.0, 1), gone: (0.0, 3)})
    rep._best_peer()
    assert rep._disproven == {seq_id: 99} and rep._unasked == {seq_id: (0.0, 1)}


async def test_a_follower_forwards_contributions_to_the_sequencer(pair: Pair, packs: Any) -> None:
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    c = packs.contribution(7, goal_id=packs.trivial_goal)
    outcome = await pair.fol_rep.forward(c)
    assert pair.forwarded == [c]
    assert outcome.accepted and outcome.goal_id == packs.trivial_goal
    assert outcome.log_index is not None
    assert outcome.contribution_hash is not None
    assert pair.sequencer.state.height == 1


async def test_a_block_announced_while_a_sync_proves_its_claim_costs_the_sequencer_nothing(
    pair: Pair, packs: Any
) -> None:
    seq = pair.sequencer
    seq.commit([packs.contribution(1, goal_id=packs.trivial_goal)])
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    await pair.applied.until(1)
    rep = pair.fol_rep
    rep.follows_blocks = lambda: False  # this test runs the sync round itself

    seq.commit([packs.contribution(2, goal_id=packs.trivial_goal)])
    [block] = seq.store.blocks(2, 1, max_bytes=1 << 30)
    pair.seq_switch.announce_status()  # the follower hears of height 2
    with anyio.fail_after(5):
        while rep._best_peer() != (pair.seq_switch.node_id, 2):
            await anyio.wait_all_tasks_blocked()
    prove = rep._prove_claim

    async def announce_lands_meanwhile(node_id: str, height: int) -> bool:
        proven = await prove(node_id, height)
        await rep._apply([block], node_id)  # the sequencer's announce, applied meanwhile
        return proven

    rep._prove_claim = announce_lands_meanwhile  # type: ignore[method-assign]
    await rep._sync_once()
    record = pair.fol_switch.peer_book.get(pair.seq_switch.node_id)
    assert record is not None
    assert record.failed_syncs == 0, "an empty get_blocks reply was charged to the sequencer"
    assert pair.follower.state.head_hash == seq.state.head_hash


async def test_a_block_the_sequencer_did_not_sign_is_refused_before_its_entries_are_decoded(
    pair: Pair, packs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's block doc is decoded past its header only once the sequencer's signature on it
    checks out: entries (their metadata up to 256 KiB of JSON each) of a block nobody trusted
    signed are never turned into objects."""
    pair.sequencer.commit([packs.contribution(1, goal_id=packs.trivial_goal)])
    [block] = pair.sequencer.store.blocks(1, 1, max_bytes=1 << 30)
    good = msg.block_to_doc(block)
    forged = msgspec.structs.replace(good, signature="00" * 64)
    decoded: list[msg.ContributionDoc] = []
    real = msg.contribution_from_doc

    def spy(doc: msg.ContributionDoc) -> Contribution:
        decoded.append(doc)
        return real(doc)

    monkeypatch.setattr(msg, "contribution_from_doc", spy)
    sender = pair.seq_switch.node_id
    assert pair.fol_rep._signed_block(forged, sender, "forged block") is None
    assert decoded == []
    assert pair.fol_rep._signed_block(good, sender, "block") == block
    assert decoded == good.entries


async def test_a_fetched_batch_is_converted_off_the_event_loop_up_to_its_first_bad_block(
    pair: Pair, packs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up batch (up to 4 MiB of entries) is checked and decoded in a worker thread, so
    the event loop goes on serving the API and other peers; :func:`signed_blocks` converts the
    blocks up to the first one the sequencer did not sign and says what was wrong with it."""
    seq = pair.sequencer
    for k in range(3):
        seq.commit([packs.contribution(k, goal_id=packs.trivial_goal)])
    calls: list[tuple[int, bool]] = []

    def spy(docs: Sequence[msg.BlockDoc], sequencer: str) -> Any:
        calls.append((len(docs), threading.current_thread() is threading.main_thread()))
        return signed_blocks(docs, sequencer)

    monkeypatch.setattr(replication, "signed_blocks", spy)
    host, port = pair.seq_switch.bound_address  # type: ignore[misc]
    await pair.fol_switch.connect(f"tcp://{host}:{port}")
    await pair.applied.until(3)
    assert (3, False) in calls  # the batch, in a worker thread

    blocks = seq.store.blocks(1, 3, max_bytes=1 << 30)
    docs = [msg.block_to_doc(b) for b in blocks]
    sequencer = pair.seq_switch.node_id
    assert signed_blocks(docs, sequencer) == (blocks, None)
    forged = [docs[0], msgspec.structs.replace(docs[1], signature="00" * 64), docs[2]]
    done, error = signed_blocks(forged, sequencer)
    assert done == blocks[:1] and isinstance(error, InvalidBlockError)
    assert "signature" in str(error)
    entries = [msgspec.structs.replace(docs[1].entries[0], seed=-1)]
    bad_entry = msgspec.structs.replace(docs[1], entries=entries)
    done, error = signed_blocks([docs[0], bad_entry], sequencer)
    assert done == blocks[:1] and isinstance(error, msg.InvalidMessage)
