"""The consensus driver over real switches on the in-memory transport: three authorities elect a
leader, commit proposals on a majority and apply them everywhere in one order; when the leader
is gone the other two elect another and go on; a restarted authority comes back from its
consensus log and catches up."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from msgspec import Raw
from tests.ian.consensus.cluster import small_memory
from tests.ian.p2p.conftest import Cluster, Node

from ian.consensus import (
    Accepted,
    Ack,
    AppendBlocks,
    Block,
    BlockKind,
    CertifiedBlocks,
    CommitCertificate,
    ConsensusCore,
    ConsensusParams,
    ElectionCertificate,
    ForkEvidence,
    IdentitySigner,
    Outcome,
    Redirect,
    Unavailable,
    VoteRequest,
    genesis_hash,
)
from ian.consensus.codec import encode_json
from ian.identity import Identity, verify_signature
from ian.ledger.consensus_driver import INBOX_BYTES, ConsensusDriver
from ian.p2p.connection import PeerInfo
from ian.p2p.memory import MemoryNetwork
from ian.p2p.messages import Consensus, Ping, Pong
from ian.storage.consensus_log import ConsensusLog

pytestmark = pytest.mark.anyio

CHAIN = "ab" * 32
PARAMS = ConsensusParams(
    election_timeout_min=0.3, election_timeout_max=0.6, heartbeat_interval=0.05
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as tg:
        yield Cluster(tmp_path, tg, MemoryNetwork())
        tg.cancel_scope.cancel()


@dataclass
class Authority:
    node: Node
    db: Path
    driver: ConsensusDriver | None = None
    scope: anyio.CancelScope | None = None
    applied: list[bytes] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    forks: list[ForkEvidence] = field(default_factory=list)
    stopped: anyio.Event = field(default_factory=anyio.Event)

    async def apply(self, blocks: list[Block]) -> None:
        self.applied += [b.payload for b in blocks if b.kind is BlockKind.DATA]
        self.changed.set()
        self.changed = anyio.Event()

    def on_fork(self, evidence: ForkEvidence) -> None:
        self.forks.append(evidence)
        self.changed.set()
        self.changed = anyio.Event()

    async def stop(self) -> None:
        """Stop the driver and wait until it has (its last applied mark saved)."""
        assert self.scope is not None
        self.scope.cancel()
        await self.stopped.wait()

    async def until_applied(self, n: int) -> None:
        while len(self.applied) < n:
            await self.changed.wait()


async def start_driver(
    cluster: Cluster,
    a: Authority,
    authorities: dict[str, bytes],
    seed: int,
    params: ConsensusParams = PARAMS,
    keep: int | None = None,
) -> None:
    """``keep``: load the log as a node does (recent blocks only; see ConsensusLog.load)."""
    log_store = ConsensusLog(a.db)
    state = log_store.load(keep)
    core = ConsensusCore(
        chain_id=CHAIN,
        genesis_authorities=authorities,
        signer=IdentitySigner(a.node.init.identity),
        verifier=verify_signature,
        rng=random.Random(seed),
        params=params,
        state=state,
        now=anyio.current_time(),
    )
    a.applied = []  # a restart applies its committed blocks again from the log's applied mark
    a.driver = ConsensusDriver(
        core=core,
        log_store=log_store,
        state=state,
        switch=a.node.service,
        apply=a.apply,
        on_fork=a.on_fork,
    )
    a.scope = anyio.CancelScope()
    a.stopped = stopped = anyio.Event()
    driver = a.driver

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert a.scope is not None
        try:
            with a.scope:
                await driver.run(task_status=task_status)
        except Exception:
            # It cancels the test through the cluster's task group; pytest's anyio runner can
            # lose the exception itself then, the captured log keeps it.
            logging.getLogger("tests.consensus").exception("driver %s failed", a.node.node_id)
            raise
        finally:
            log_store.close()  # as a node does: a restart opens the file again
        stopped.set()

    await cluster.tg.start(run)


async def propose(members: list[Authority], payload: bytes) -> Outcome:
    """Like a client: ask any member, follow redirects, retry while there is no leader."""
    by_id = {m.node.node_id: m for m in members}
    target = members[0]
    with anyio.fail_after(10):
        while True:
            assert target.driver is not None
            outcome = await target.driver.propose(payload)
            if isinstance(outcome, Redirect) and outcome.leader in by_id:
                target = by_id[outcome.leader]
            elif isinstance(outcome, Redirect | Unavailable):
                await anyio.sleep(0.05)  # the client's back-off while an election runs
            else:
                return outcome


async def three_authorities(
    cluster: Cluster, tmp_path: Path, params: ConsensusParams = PARAMS, keep: int | None = None
) -> list[Authority]:
    nodes = [await cluster.start(f"auth{i}") for i in range(3)]
    for i, node in enumerate(nodes):
        for other in nodes[i + 1 :]:
            await node.service.connect(other.address)
    for node in nodes:
        await node.wait_for(lambda n=node: len(n.service.peers()) == 2)
    members = [Authority(node, tmp_path / f"consensus{i}.db") for i, node in enumerate(nodes)]
    authorities = {m.node.node_id: m.node.init.identity.public_key for m in members}
    for i, m in enumerate(members):
        await start_driver(cluster, m, authorities, seed=i, params=params, keep=keep)
    return members


async def test_three_authorities_commit_and_apply_in_one_order(
    cluster: Cluster, tmp_path: Path
) -> None:
    members = await three_authorities(cluster, tmp_path)
    payloads = [f"contribution {i}".encode() for i in range(5)]
    for p in payloads:
        outcome = await propose(members, p)
        assert isinstance(outcome, Accepted), outcome
    with anyio.fail_after(5):
        for m in members:
            await m.until_applied(len(payloads))
    for m in members:
        assert m.applied == payloads
    leaders = {m.driver.view().leader for m in members if m.driver}
    assert len(leaders) == 1 and None not in leaders
    assert all(m.driver and m.driver.view().commit_height >= 6 for m in members)


async def test_a_lost_leader_is_replaced_and_a_restart_catches_up(
    cluster: Cluster, tmp_path: Path
) -> None:
    members = await three_authorities(cluster, tmp_path)
    assert isinstance(await propose(members, b"before"), Accepted)
    leader_id = next(m.driver.view().leader for m in members if m.driver)
    leader = next(m for m in members if m.node.node_id == leader_id)
    rest = [m for m in members if m is not leader]
    assert leader.scope is not None
    leader.scope.cancel()  # the leader's consensus stops: no heartbeats, no votes
    outcome = await propose(rest, b"after")
    assert isinstance(outcome, Accepted), outcome
    with anyio.fail_after(5):
        for m in rest:
            await m.until_applied(2)
    new_leaders = {m.driver.view().leader for m in rest if m.driver}
    assert len(new_leaders) == 1 and leader_id not in new_leaders
    for m in rest:
        assert m.applied == [b"before", b"after"]

    # The old leader restarts from its consensus log: a follower now, it catches up.
    authorities = {m.node.node_id: m.node.init.identity.public_key for m in members}
    await start_driver(cluster, leader, authorities, seed=9)
    with anyio.fail_after(5):
        await leader.until_applied(1)  # "after" (its log's applied mark already covered "before")
    assert leader.applied == [b"after"]
    assert leader.driver is not None
    assert leader.driver.view().leader in new_leaders


async def test_old_blocks_are_read_back_from_the_consensus_log(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With room for a few blocks in memory, the leader serves an authority that was away for
    40 blocks from consensus.db, and that one restarts holding only its recent blocks."""
    params = small_memory(PARAMS, blocks=4, block_bytes=2000)
    members = await three_authorities(cluster, tmp_path, params, keep=2)
    assert isinstance(await propose(members, b"first"), Accepted)
    leader_id = next(m.driver.view().leader for m in members if m.driver)
    away = next(m for m in members if m.node.node_id != leader_id)
    await away.stop()
    payloads = [b"first", *(bytes([i]) * 2000 for i in range(40))]
    for p in payloads[1:]:
        assert isinstance(await propose([m for m in members if m is not away], p), Accepted)
    leader = next(m for m in members if m.node.node_id == leader_id)
    assert leader.driver is not None and leader.driver.core.memory_base > 30
    authorities = {m.node.node_id: m.node.init.identity.public_key for m in members}
    away.applied = []
    await start_driver(cluster, away, authorities, seed=7, params=params, keep=2)
    with anyio.fail_after(10):
        while away.applied[-1:] != payloads[-1:]:
            await away.changed.wait()
    # from its applied mark on (which a stop may leave one block behind)
    assert away.applied in (payloads, payloads[1:])
    assert away.driver is not None and away.driver.core.memory_base > 30
    # Restarted again, it loads the blocks from two below its applied mark only.
    await away.stop()
    await start_driver(cluster, away, authorities, seed=8, params=params, keep=2)
    core = away.driver.core
    assert core.memory_base == core.applied_height - 2 > 30
    assert core.block(2).payload == b"first"
    assert isinstance(await propose(members, b"last"), Accepted)


async def test_a_stranger_cannot_talk_consensus(cluster: Cluster, tmp_path: Path) -> None:
    members = await three_authorities(cluster, tmp_path)
    assert isinstance(await propose(members, b"first"), Accepted)
    target = members[0]
    assert target.driver is not None
    term = target.driver.view().term
    stranger = await cluster.start("stranger")
    await stranger.service.connect(target.node.address)
    await target.node.wait_for(lambda: target.node.connected(stranger))
    # It claims to run for leader in a much later term.
    claim = VoteRequest(
        pre_vote=False,
        chain_id=CHAIN,
        term=term + 100,
        candidate=stranger.node_id,
        last_term=term + 100,
        last_height=10**6,
    )
    await stranger.service.send(target.node.node_id, Consensus(msg=Raw(encode_json(claim))))
    # A round trip behind it: the target has handled the claim when the pong comes back.
    assert await stranger.service.request(target.node.node_id, Ping(nonce=1)) == Pong(nonce=1)
    record = target.node.book.get(stranger.node_id)
    assert record is not None and record.invalid_messages == 1
    assert target.driver.view().term == term
    assert isinstance(await propose(members, b"second"), Accepted)


async def _never_called(blocks: list[Block]) -> None:
    raise AssertionError("nothing is applied by a driver that does not run")


class _Switch:
    """Enough of a switch for a driver that is never run."""

    def on(self, *_: object, **__: object) -> None:
        pass


async def test_blocks_waiting_for_the_core_are_bounded_in_bytes(tmp_path: Path) -> None:
    ids = [Identity.generate() for _ in range(3)]
    log_store = ConsensusLog(tmp_path / "consensus.db")
    state = log_store.load()
    core = ConsensusCore(
        chain_id=CHAIN,
        genesis_authorities={i.node_id: i.public_key for i in ids},
        signer=IdentitySigner(ids[0]),
        verifier=verify_signature,
        rng=random.Random(1),
        params=PARAMS,
        state=state,
    )
    driver = ConsensusDriver(
        core=core, log_store=log_store, state=state, switch=_Switch(), apply=_never_called
    )
    block = Block.build(
        CHAIN,
        height=1,
        term=1,
        parent_hash=genesis_hash(CHAIN),
        kind=BlockKind.DATA,
        payload=b"x" * (8 * 1024 * 1024),
    )
    election = ElectionCertificate(CHAIN, 1, ids[1].node_id, 0, 0, ())
    append = AppendBlocks(1, ids[1].node_id, 0, genesis_hash(CHAIN), (block,), election, None)
    message = Consensus(msg=Raw(encode_json(append)))
    sender = PeerInfo(
        node_id=ids[1].node_id,
        address=None,
        remote_ip="127.0.0.1",
        direction="inbound",
        connected_since=0.0,
        last_seen=0.0,
        height=0,
        head_hash="",
        agent="test",
        sequencer=False,
        protocol_version=1,
        cert_fingerprint="",
    )
    # An authority that sends faster than the core takes them (the driver is not running).
    for _ in range(20):
        await driver._on_message(sender, message)
    assert driver.inbox_bytes == INBOX_BYTES  # 8 messages of 8 MiB
    assert driver.dropped_messages == 12


async def test_two_certified_blocks_at_one_height_stop_applying_and_are_kept(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Fork evidence: a certificate signed by a majority for another block at a committed
    height (two authorities' keys signing two histories) stops the node and hands over both."""
    members = await three_authorities(cluster, tmp_path)
    assert isinstance(await propose(members, b"first"), Accepted)
    leader_id = next(m.driver.view().leader for m in members if m.driver)
    target = next(m for m in members if m.node.node_id != leader_id)
    sender = next(m for m in members if m not in (target,) and m.node.node_id != leader_id)
    assert target.driver is not None
    with anyio.fail_after(5):
        await target.until_applied(1)
    core = target.driver.core
    ours = core.block(2)
    assert ours.kind is BlockKind.DATA and ours.payload == b"first"
    term = ours.term
    theirs = Block.build(
        CHAIN, height=2, term=term, parent_hash=ours.parent_hash, kind=BlockKind.DATA,
        payload=b"another history",
    )  # fmt: skip
    acks = []
    for m in (sender, next(m for m in members if m.node.node_id == leader_id)):
        draft = Ack(CHAIN, term, 2, theirs.hash, m.node.node_id)
        acks.append(
            dataclasses.replace(draft, signature=m.node.init.identity.sign(draft.signed_bytes()))
        )
    cert = CommitCertificate(
        CHAIN, term, 2, theirs.hash, tuple(sorted(acks, key=lambda a: a.signer))
    )
    election = ElectionCertificate(CHAIN, term, sender.node.node_id, 0, 0, ())
    message = CertifiedBlocks(term, sender.node.node_id, (theirs,), cert, election)
    await sender.node.service.send(target.node.node_id, Consensus(msg=Raw(encode_json(message))))
    with anyio.fail_after(5):
        while not target.forks:
            await target.changed.wait()
    assert target.driver.view().forked
    [evidence] = target.forks
    assert evidence.height == 2
    assert evidence.our_block.hash == ours.hash and evidence.their_block.hash == theirs.hash
    assert evidence.theirs == cert
    # Forked: it applies nothing more and takes no proposal.
    outcome = await target.driver.propose(b"later")
    assert isinstance(outcome, Unavailable)
    assert target.applied == [b"first"]


async def test_a_gone_followers_outbox_goes_with_it(cluster: Cluster, tmp_path: Path) -> None:
    """Outboxes are per peer; a follower that disconnects must not leave one behind (else
    every throwaway identity that ever connected would keep a queue and a task)."""
    members = await three_authorities(cluster, tmp_path)
    assert isinstance(await propose(members, b"first"), Accepted)
    leader_id = next(m.driver.view().leader for m in members if m.driver)
    leader = next(m for m in members if m.node.node_id == leader_id)
    driver = leader.driver
    assert driver is not None
    follower = await cluster.start("follower")
    await follower.service.connect(leader.node.address)
    await leader.node.wait_for(lambda: leader.node.connected(follower))
    connected = {p.node_id for p in leader.node.service.peers()}
    driver.set_learners(connected)
    assert follower.node_id in driver.core.learners
    assert isinstance(await propose(members, b"second"), Accepted)  # certified blocks go out
    assert follower.node_id in driver._outboxes
    driver.set_learners(connected - {follower.node_id})
    assert follower.node_id not in driver._outboxes
    assert follower.node_id not in driver.core.learners
    assert {m.node.node_id for m in members} - {leader_id} <= set(driver._outboxes)


async def test_the_applied_mark_is_saved_with_the_next_write_and_at_stop(
    cluster: Cluster, tmp_path: Path
) -> None:
    members = await three_authorities(cluster, tmp_path)
    for p in (b"one", b"two", b"three"):
        assert isinstance(await propose(members, p), Accepted)
    with anyio.fail_after(5):
        for m in members:
            await m.until_applied(3)
    # Applied blocks are not marked one write each: the mark goes with the next append (or
    # once a second), and whatever is left when the driver stops is saved then.
    for m in members:
        assert m.driver is not None and m.scope is not None
        applied = m.driver.applied_through
        assert applied >= 4  # the leader's first block and the three proposals
        m.scope.cancel()
    await anyio.wait_all_tasks_blocked()
    for m in members:
        assert m.driver is not None
        assert ConsensusLog(m.db).load().applied_height == m.driver.applied_through
