"""A leader with several chain blocks in flight (``ChainBridge``, real drivers on the in-memory
transport, real stores): blocks are built on the ones still waiting for their commit, every
authority applies the same chain, a pack in flight is a duplicate for the next block, and a
leader that loses its majority undoes every block it had in flight."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from tests.conftest import DEMO_SPEC, TRIVIAL_GOAL, Packs
from tests.ian.ledger.test_consensus_driver import Authority, start_driver
from tests.ian.ledger.test_sequencer import CountingBatchEvaluator
from tests.ian.p2p.conftest import Cluster

from ian.chain.blocks import Block as ChainBlock
from ian.chain.contributions import Contribution
from ian.chain.goals import GoalSpec
from ian.chain.state import ChainState
from ian.consensus import Block, BlockKind, Role
from ian.errors import UnavailableError
from ian.ledger.consensus_chain import ChainBridge
from ian.ledger.sequencer import BatchResult
from ian.p2p.memory import MemoryNetwork
from ian.storage.store import Store

pytestmark = pytest.mark.anyio

SPECS = [DEMO_SPEC, GoalSpec(id=TRIVIAL_GOAL, evaluator="trivial")]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as tg:
        yield Cluster(tmp_path, tg, MemoryNetwork())
        tg.cancel_scope.cancel()


@dataclass
class ChainAuthority(Authority):
    """An authority whose driver applies committed blocks to a real chain through a bridge."""

    store: Store | None = None
    state: ChainState | None = None
    bridge: ChainBridge | None = None

    async def apply(self, blocks: list[Block]) -> None:
        if self.bridge is not None:
            await self.bridge.apply(blocks)
        else:
            assert not any(b.kind is BlockKind.DATA for b in blocks)
        await super().apply(blocks)

    def attach(self) -> None:
        """A bridge on the (re)started driver, keeping the chain state and store."""
        assert self.driver is not None and self.store is not None and self.state is not None
        self.bridge = ChainBridge(
            state=self.state,
            store=self.store,
            identity=self.node.init.identity,
            driver=self.driver,
            on_applied=lambda block: None,
            max_in_flight=4,
        )


@pytest.fixture
async def authorities(cluster: Cluster, tmp_path: Path) -> AsyncIterator[list[ChainAuthority]]:
    nodes = [await cluster.start(f"auth{i}") for i in range(3)]
    for i, node in enumerate(nodes):
        for other in nodes[i + 1 :]:
            await node.service.connect(other.address)
    for node in nodes:
        await node.wait_for(lambda n=node: len(n.service.peers()) == 2)
    members = [
        ChainAuthority(
            node,
            tmp_path / f"consensus{i}.db",
            store=Store(tmp_path / f"chain{i}.sqlite", durable_commits=False),
            state=ChainState.genesis(SPECS),
        )
        for i, node in enumerate(nodes)
    ]
    ids = {m.node.node_id: m.node.init.identity.public_key for m in members}
    for i, m in enumerate(members):
        await start_driver(cluster, m, ids, seed=i)
        m.attach()
    yield members
    for m in members:
        assert m.store is not None
        m.store.close()


async def until(members: list[ChainAuthority], predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` (re-checked after every step of any running driver)."""
    with anyio.fail_after(5):
        while not predicate():
            async with anyio.create_task_group() as tg:

                async def stepped(m: ChainAuthority) -> None:
                    assert m.driver is not None
                    await m.driver.wait_step()
                    tg.cancel_scope.cancel()

                for m in members:
                    if m.driver is not None and m.scope is not None and not m.scope.cancel_called:
                        tg.start_soon(stepped, m)


async def ready_leader(members: list[ChainAuthority]) -> ChainAuthority:
    def ready() -> bool:
        return any(m.driver and m.driver.ready_to_propose() for m in running(members))

    await until(members, ready)
    return next(m for m in running(members) if m.driver and m.driver.ready_to_propose())


def running(members: list[ChainAuthority]) -> list[ChainAuthority]:
    return [m for m in members if m.scope is not None and not m.scope.cancel_called]


def trivial(packs: Packs, first: int, n: int) -> list[Contribution]:
    return [packs.contribution(i, goal_id=TRIVIAL_GOAL) for i in range(first, first + n)]


def roots(state: ChainState) -> dict[str, object]:
    return {gid: goal.roots() for gid, goal in state.goals.items()}


async def test_blocks_in_flight_chain_up_and_every_authority_applies_them(
    authorities: list[ChainAuthority], packs: Packs
) -> None:
    leader = await ready_leader(authorities)
    bridge = leader.bridge
    assert bridge is not None
    batches = [trivial(packs, 3 * i, 3) for i in range(6)]
    batches[5][0] = batches[0][0]  # the same pack as the first batch's: a duplicate
    results: dict[int, BatchResult] = {}

    async def commit(i: int) -> None:
        results[i] = await bridge.commit_batch(batches[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(batches)):
            tg.start_soon(commit, i)

    blocks: list[ChainBlock] = []
    for i in range(len(batches)):
        block = results[i].block
        assert block is not None
        blocks.append(block)
    blocks.sort(key=lambda b: b.height)
    assert [b.height for b in blocks] == list(range(1, 7))
    for parent, child in itertools.pairwise(blocks):
        assert child.header.parent_hash == parent.hash
    accepted = [o.accepted for r in results.values() for o in r.outcomes]
    assert accepted.count(True) == 17  # 18 contributions, one pack twice
    # Batches 0 and 5 share a pack; they are built in whatever order their evaluations end
    # (each is evaluated in a thread before the bridge's lock): the later one holds the copy.
    later = max((0, 5), key=lambda i: results[i].block.height)  # type: ignore[union-attr]
    duplicate = [o for o in results[later].outcomes if not o.accepted]
    assert [o.rejection_type for o in duplicate] == ["duplicate"]

    await until(authorities, lambda: all(m.state and m.state.height == 6 for m in authorities))
    for m in authorities:
        assert m.store is not None and m.state is not None
        assert m.store.head()[:2] == (6, blocks[-1].hash)
        assert roots(m.state) == roots(leader.state)  # type: ignore[arg-type]
    assert bridge.in_flight == 0


async def test_the_leader_does_not_evaluate_duplicates(
    authorities: list[ChainAuthority], packs: Packs
) -> None:
    leader = await ready_leader(authorities)
    bridge = leader.bridge
    assert bridge is not None
    counting = CountingBatchEvaluator()
    bridge.evaluator = counting
    first = trivial(packs, 0, 3)
    assert all(o.accepted for o in (await bridge.commit_batch(first)).outcomes)
    batch = [
        packs.contribution(1, goal_id=TRIVIAL_GOAL, contributor="late"),  # stored
        packs.contribution(7, goal_id=TRIVIAL_GOAL),
        packs.contribution(7, goal_id=TRIVIAL_GOAL, contributor="twin"),  # in this batch
    ]
    result = await bridge.commit_batch(batch)
    assert [(o.accepted, o.rejection_type) for o in result.outcomes] == [
        (False, "duplicate"),
        (True, None),
        (False, "duplicate"),
    ]
    assert result.block is not None and result.block.entries == (batch[1],)
    assert counting.given == [*first, batch[1]]
    await until(authorities, lambda: all(m.state and m.state.height == 2 for m in authorities))
    for m in authorities:
        assert roots(m.state) == roots(leader.state)  # type: ignore[arg-type]


async def test_a_leader_without_its_majority_undoes_every_block_in_flight(
    authorities: list[ChainAuthority], cluster: Cluster, packs: Packs
) -> None:
    leader = await ready_leader(authorities)
    bridge, state, driver = leader.bridge, leader.state, leader.driver
    assert bridge is not None and state is not None and driver is not None
    before = roots(state)
    log_before = driver.core.last_height
    followers = [m for m in authorities if m is not leader]
    for m in followers:  # no acks: nothing the leader proposes can commit
        assert m.scope is not None
        m.scope.cancel()

    failures: list[UnavailableError] = []

    async def commit(i: int) -> None:
        try:
            await bridge.commit_batch(trivial(packs, 10 * i, 2))
        except UnavailableError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(commit, i)
        # All three built and proposed, each on the one before, none committed.
        await until(
            [leader],
            lambda: bridge.in_flight == 3 and driver.core.last_height == log_before + 3,
        )
        assert roots(state) != before
    # CheckQuorum: the leader steps down; every block in flight is undone.
    assert len(failures) == 3
    assert driver.core.role is not Role.LEADER
    assert bridge.in_flight == 0
    assert roots(state) == before and state.height == 0

    # The followers come back: whoever leads, the chain goes on the same everywhere.
    ids = {m.node.node_id: m.node.init.identity.public_key for m in authorities}
    for seed, m in enumerate(followers, start=5):
        await start_driver(cluster, m, ids, seed=seed)
        m.attach()
    leader = await ready_leader(authorities)
    assert leader.bridge is not None
    result = await leader.bridge.commit_batch(trivial(packs, 100, 2))
    assert result.block is not None
    height = result.block.height
    await until(authorities, lambda: all(m.state and m.state.height == height for m in authorities))
    heads = {m.store.head()[:2] for m in authorities if m.store is not None}
    assert len(heads) == 1
    for m in authorities:
        assert m.state is not None and m.store is not None
        assert roots(m.state) == roots(authorities[0].state)  # type: ignore[arg-type]
        assert m.bridge is not None and m.bridge.skipped_blocks == 0
