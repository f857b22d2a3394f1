"""Peer exchange as a service on the switch: seeds, get_peers/peers, dialling, backoff."""

from __future__ import annotations

from dataclasses import replace

import anyio
import pytest
from tests.ian.p2p.conftest import FAST, Cluster

from ian.p2p.errors import RemoteError
from ian.p2p.messages import GetPeers, Message, PeerEntry, Peers
from ian.p2p.pex import backoff
from ian.p2p.switch import RESERVED_TYPES
from ian.p2p.transport import RawConnection
from ian.storage.datadir import init_data_dir

pytestmark = pytest.mark.anyio


async def test_peer_exchange_finds_a_through_b(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b", seed_nodes=[a.address])
    await a.wait_for(lambda: a.connected(b))
    c = await each_cluster.start("c", seed_nodes=[b.address])
    await c.wait_for(lambda: c.connected(a) and c.connected(b), within=10)
    await a.wait_for(lambda: a.connected(c))
    assert c.book.get(a.node_id).addresses[0] == a.address  # type: ignore[union-attr]


async def test_reconnects_after_the_remote_restarts(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    port = a.service.bound_address[1]  # type: ignore[index]
    b = await each_cluster.start("b", seed_nodes=[a.address])
    await b.wait_for(lambda: b.connected(a))
    assert a.scope is not None
    a.scope.cancel()  # stop A: B gets A's goodbye
    await b.wait_for(lambda: not b.connected(a))
    assert b.disconnects()[0].reason == "peer said goodbye: shutdown"
    a2 = await each_cluster.start(init=a.init, p2p_port=port)
    await b.wait_for(lambda: b.connected(a2), within=10)
    await a2.wait_for(lambda: a2.connected(b))


async def test_get_peers_lists_connected_peers_but_never_the_asker(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    c = await cluster.start("c")
    await c.service.connect(a.address)
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.service.peer_count == 2)
    reply = await b.service.request(a.node_id, GetPeers())
    assert reply == Peers(peers=[PeerEntry(node_id=c.node_id, address=c.address)])
    assert a.metrics.messages_received.labels("get_peers")._value.get() >= 1


async def test_without_peer_exchange_get_peers_is_unsupported(cluster: Cluster) -> None:
    a = await cluster.start("a", pex=False)
    b = await cluster.start("b")
    await b.service.connect(a.address)
    with pytest.raises(RemoteError) as info:
        await b.service.request(a.node_id, GetPeers())
    assert info.value.remote_code == "unsupported"


async def test_an_address_learned_from_peers_is_dialled(cluster: Cluster) -> None:
    """A learns X only from B's reply to A's own get_peers, and dials it."""
    # X only listens: it records who dials it and never says hello.
    x = init_data_dir(cluster.tmp_path / "x")
    listener = await cluster.transport_for(x).listen("127.0.0.1", 0)
    x_address = "tcp://{}:{}".format(*listener.address)
    dialled_by: list[str] = []
    dialled = anyio.Event()

    async def on_connection(raw: RawConnection) -> None:
        channel = await raw.authenticate(server=True, expected_node_id=None, handshake_timeout=5)
        dialled_by.append(channel.peer.node_id)
        dialled.set()

    cluster.tg.start_soon(listener.serve, on_connection, cluster.tg)
    a = await cluster.start("a")
    b = await cluster.start("b", pex=False)  # B answers get_peers with X (and A itself)

    async def peers_of_b(peer: object, message: Message) -> Message | None:
        return Peers(
            peers=[
                PeerEntry(node_id=x.identity.node_id, address=x_address),
                PeerEntry(node_id=a.node_id, address="tcp://127.0.0.1:9"),  # A itself: ignored
            ]
        )

    b.service.on("get_peers", peers_of_b)
    await a.service.connect(b.address)  # A asks each new peer for its peers
    with anyio.fail_after(5):
        await dialled.wait()
    assert dialled_by == [a.node_id]
    assert a.book.get(x.identity.node_id).addresses == (x_address,)  # type: ignore[union-attr]
    assert a.book.get(a.node_id) is None


async def test_unsolicited_peer_lists_are_charged_and_never_learned(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    stranger = "ef" * 20
    for _ in range(3):
        await b.service.send(
            a.node_id, Peers(peers=[PeerEntry(node_id=stranger, address="tcp://10.9.9.9:9000")])
        )
    # A request after them: its reply comes after A handled the three (handlers start in order
    # and the unsolicited ones finish without waiting).
    await b.service.request(a.node_id, GetPeers())
    assert a.book.get(b.node_id).invalid_messages == 3  # type: ignore[union-attr]
    assert a.book.get(stranger) is None
    assert a.book.get(b.node_id).score == pytest.approx(100 - 3 * 5)  # type: ignore[union-attr]


async def test_peer_exchange_uses_on_like_any_service(cluster: Cluster) -> None:
    assert "get_peers" not in RESERVED_TYPES and "peers" not in RESERVED_TYPES
    a = await cluster.start("a")
    b = await cluster.start("b")
    with pytest.raises(ValueError, match="handled by the switch"):
        a.service.on("hello", lambda peer, m: None)  # type: ignore[arg-type,return-value]

    async def no_peers(peer: object, message: Message) -> Message | None:
        return Peers(peers=[])

    a.service.on("get_peers", no_peers)  # replaces peer exchange's handler
    await b.service.connect(a.address)
    assert await b.service.request(a.node_id, GetPeers()) == Peers(peers=[])


def test_backoff_is_jittered_exponential_and_capped() -> None:
    tuning = replace(FAST, reconnect_base=1.0, reconnect_cap=60.0)
    for failures, full in [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)]:
        delays = [backoff(failures, tuning) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > 0  # jittered, so redials do not align
