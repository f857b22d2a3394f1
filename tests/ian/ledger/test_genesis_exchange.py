"""The genesis exchange on the in-memory transport: a genesis-less node learns its chain from a
seed it dialled (or from a peer naming IAN_CHAIN_ID), never from a liar or a stranger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from ian.chain.genesis import Genesis
from ian.chain.goals import DEMO_GOAL
from ian.config import Settings
from ian.identity import Identity
from ian.ledger.genesis_exchange import GenesisExchange
from ian.metrics import NodeMetrics
from ian.p2p.connection import PeerInfo
from ian.p2p.memory import MemoryNetwork
from ian.p2p.peer_book import NEUTRAL_SCORE, PeerBook
from ian.p2p.switch import P2PService, P2PTuning
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.anyio

FAST = P2PTuning(handshake_timeout=2.0, request_timeout=5.0, maintenance_interval=0.1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Member:
    switch: P2PService
    exchange: GenesisExchange
    genesis: Genesis | None
    adopted: list[tuple[Genesis, str]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def address(self) -> str:
        assert self.switch.bound_address is not None
        host, port = self.switch.bound_address
        return f"tcp://{host}:{port}"

    def score(self, node_id: str) -> float:
        record = self.switch.peer_book.get(node_id)
        return record.score if record is not None else 0.0


class Net:
    def __init__(self, tmp_path: Path) -> None:
        self.network = MemoryNetwork()
        self.tmp_path = tmp_path
        self.members: list[Member] = []

    def member(
        self,
        name: str,
        *,
        genesis: Genesis | None = None,
        announce: str | None = None,
        seeds: Sequence[str] = (),
        expected: str | None = None,
    ) -> Member:
        init = init_data_dir(self.tmp_path / name)
        settings = Settings(
            data_dir=init.datadir.root, p2p_host="127.0.0.1", p2p_port=0, min_peers=0
        )
        chain = announce or (genesis.chain_id() if genesis is not None else expected)
        switch = P2PService(
            settings,
            init.identity,
            init.datadir,
            PeerBook.load(init.datadir.peer_scores_file),
            NodeMetrics(),
            tuning=FAST,
            transport=self.network.transport(init.datadir.certs_dir, init.identity),
            chain_id=chain,
        )
        holder: list[Member] = []

        def adopt(g: Genesis, peer: PeerInfo) -> None:
            m = holder[0]
            m.genesis = g
            m.adopted.append((g, peer.node_id))
            switch.set_chain_id(g.chain_id())
            m.changed.set()

        exchange = GenesisExchange(
            switch,
            current=lambda: holder[0].genesis,
            adopt=adopt,
            seeds=list(seeds),
            expected_chain_id=expected,
        )
        m = Member(switch, exchange, genesis)
        holder.append(m)
        self.members.append(m)
        return m


def one_authority() -> Genesis:
    key = Identity.generate()
    return Genesis.one_authority(key.node_id, key.public_key, [DEMO_GOAL], now=T0)


G = one_authority()
OTHER = one_authority()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    n = Net(tmp_path)
    async with anyio.create_task_group() as tg:
        n.tg = tg  # type: ignore[attr-defined]
        yield n
        tg.cancel_scope.cancel()


async def start(net: Net, *members: Member) -> None:
    for m in members:
        await net.tg.start(m.switch.run)  # type: ignore[attr-defined]


async def test_a_follower_learns_its_chain_from_the_seed_it_dialled(net: Net) -> None:
    seed = net.member("seed", genesis=G)
    await start(net, seed)
    follower = net.member("follower", seeds=[seed.address])
    await start(net, follower)
    await follower.switch.connect(seed.address)
    with anyio.fail_after(5):
        await follower.changed.wait()
    assert follower.adopted == [(G, seed.switch.node_id)]
    assert follower.switch.chain_id == G.chain_id()
    # From now on a node of another chain is refused at hello, without blame.
    stranger = net.member("stranger", genesis=OTHER)
    await start(net, stranger)
    with pytest.raises(Exception, match="chain"):
        await stranger.switch.connect(follower.address)
    assert follower.score(stranger.switch.node_id) in (0.0, NEUTRAL_SCORE)  # no blame


async def test_a_seed_that_lies_about_its_chain_is_charged_and_not_believed(net: Net) -> None:
    liar = net.member("liar", genesis=G, announce="ab" * 32)  # serves G, claims chain abab…
    await start(net, liar)
    follower = net.member("follower", seeds=[liar.address])
    await start(net, follower)
    await follower.switch.connect(liar.address)
    with anyio.fail_after(5):
        await follower.exchange.attempted.wait()
    assert follower.score(liar.switch.node_id) < NEUTRAL_SCORE - 10  # charged
    assert follower.adopted == [] and follower.genesis is None
    assert follower.switch.chain_id is None


async def test_a_stranger_cannot_choose_a_nodes_chain(net: Net) -> None:
    follower = net.member("follower")  # no seeds: only strangers dial in
    await start(net, follower)
    stranger = net.member("stranger", genesis=OTHER)
    await start(net, stranger)
    await stranger.switch.connect(follower.address)
    # A seed connects after the stranger: the follower takes the seed's chain, not the first.
    seed = net.member("seed", genesis=G)
    await start(net, seed)
    follower.exchange._seeds = frozenset({seed.address})  # the operator's seed list
    await follower.switch.connect(seed.address)
    with anyio.fail_after(5):
        await follower.changed.wait()
    assert [g for g, _ in follower.adopted] == [G]


async def test_with_ian_chain_id_any_peer_naming_it_may_teach(net: Net) -> None:
    holder = net.member("holder", genesis=G)
    other = net.member("other", genesis=OTHER)
    await start(net, holder, other)
    follower = net.member("follower", expected=G.chain_id())
    await start(net, follower)
    with pytest.raises(Exception, match="chain"):
        await other.switch.connect(follower.address)  # refused: not the expected chain
    await holder.switch.connect(follower.address)  # inbound, but it names the expected id
    with anyio.fail_after(5):
        await follower.changed.wait()
    assert follower.adopted == [(G, holder.switch.node_id)]


async def test_get_genesis_before_having_one_is_a_clean_error(net: Net) -> None:
    empty = net.member("empty")
    asker = net.member("asker")
    await start(net, empty, asker)
    await asker.switch.connect(empty.address)
    from ian.p2p.errors import RemoteError
    from ian.p2p.messages import GetGenesis

    with pytest.raises(RemoteError, match="no_genesis"):
        await asker.switch.request(empty.switch.node_id, GetGenesis())
