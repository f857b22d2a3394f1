"""The switch: several services in one event loop, on the in-memory transport (``cluster``);
the checks that are about TLS itself run on loopback TLS (``tls_cluster``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from tests.ian.p2p.conftest import FAST, Cluster, Node
from tests.ian.p2p.test_messages import make_block

from ian.certs import generate_certificate, write_certificate
from ian.errors import IdentityError, NotFoundError
from ian.p2p.connection import PeerInfo
from ian.p2p.errors import (
    HandshakeError,
    InvalidMessage,
    PeerNotConnectedError,
    RemoteError,
    RequestTimeoutError,
)
from ian.p2p.frames import encode_frame
from ian.p2p.memory import CHUNKS_IN_FLIGHT
from ian.p2p.messages import (
    BlockAnnounce,
    Blocks,
    GetBlocks,
    Hello,
    Message,
    Ping,
    Pong,
    Status,
    block_to_doc,
)
from ian.p2p.peer_book import PeerEvent, Verdict
from ian.p2p.session import (
    Direction,
    GoodbyeReceived,
    HelloReceived,
    Session,
    SessionConfig,
    SessionEvent,
)
from ian.p2p.switch import PeerDisconnected
from ian.storage.datadir import InitResult, init_data_dir

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- a hand-driven peer


@dataclass
class RawPeer:
    """A peer driven by the test: the cluster's transport and a real Session, but no service
    behind it."""

    init: InitResult
    stream: anyio.abc.ByteStream
    session: Session

    @property
    def node_id(self) -> str:
        return self.init.identity.node_id

    async def events_until_closed(self, within: float = 5.0) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        with anyio.fail_after(within):
            try:
                while True:
                    data = await self.stream.receive()
                    events += self.session.receive_data(data, anyio.current_time())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        return events


def hello_from(init: InitResult) -> Hello:
    return Hello(
        network_id="ian-test",
        protocol_version=1,
        node_id=init.identity.node_id,
        height=0,
        head_hash="00" * 32,
    )


async def authenticated_stream(
    cluster: Cluster, init: InitResult, target: Node, expected_node_id: str | None
) -> anyio.abc.ByteStream:
    """An authenticated connection from ``init``'s identity to ``target`` (no hello yet)."""
    host, port = target.service.bound_address  # type: ignore[misc]
    raw = await cluster.transport_for(init).dial(host, port, connect_timeout=5)
    channel = await raw.authenticate(
        server=False, expected_node_id=expected_node_id, handshake_timeout=5
    )
    return channel.stream


async def raw_peer(
    cluster: Cluster, target: Node, name: str = "raw", *, max_frame_bytes: int = 4 << 20
) -> RawPeer:
    init = init_data_dir(cluster.tmp_path / name)
    stream = await authenticated_stream(cluster, init, target, target.node_id)
    session = Session(
        SessionConfig(init.identity.node_id, "ian-test", max_frame_bytes),
        direction=Direction.OUTBOUND,
        peer_node_id=target.node_id,
    )
    await stream.send(session.start(hello_from(init)))
    with anyio.fail_after(5):
        while True:
            events = session.receive_data(await stream.receive(), anyio.current_time())
            if any(isinstance(e, HelloReceived) for e in events):
                break
    return RawPeer(init, stream, session)


def goodbye_reason(events: list[SessionEvent]) -> str:
    reasons = [e.reason for e in events if isinstance(e, GoodbyeReceived)]
    assert reasons, f"no goodbye in {events}"
    return reasons[0]


# --------------------------------------------------------------------------- handshake


async def test_handshake_both_sides_know_each_other(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b")
    assert await b.service.connect(a.address) == a.node_id
    await a.wait_for(lambda: a.connected(b))

    [pa] = b.service.peers()
    [pb] = a.service.peers()
    assert (pa.node_id, pa.direction, pa.address) == (a.node_id, "outbound", a.address)
    assert (pb.node_id, pb.direction) == (b.node_id, "inbound")
    # The inbound side learned B's dialable address from B's hello.
    assert pb.address == b.address
    assert pa.cert_fingerprint == a.service.cert_info.fingerprint_sha256
    assert pa.height == 7 and pa.head_hash == "11" * 32 and pa.agent.startswith("ian/")
    assert a.service.best_height() == 7
    assert a.service.peer_count == b.service.peer_count == 1
    assert a.connects()[0].peer.node_id == b.node_id
    assert a.metrics.messages_received.labels("hello")._value.get() == 1
    assert a.book.get(b.node_id).connected  # type: ignore[union-attr]
    # Connecting again to a connected node returns at once.
    assert await b.service.connect(a.address, node_id=a.node_id) == a.node_id


async def test_dialled_identity_must_match_the_certificate(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b")
    with pytest.raises(HandshakeError) as info:
        await b.service.connect(a.address, node_id="0" * 40)
    assert info.value.reason == "identity"
    assert b.service.peer_count == 0
    # A keeps serving.
    assert await b.service.connect(a.address, node_id=a.node_id) == a.node_id


async def test_network_mismatch_is_refused(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b", network_id="other-net")
    with pytest.raises(HandshakeError) as info:
        await b.service.connect(a.address)
    assert info.value.reason == "network"
    assert a.service.peer_count == b.service.peer_count == 0


async def _assert_cut_off(node: Node, payload: bytes, within: float) -> None:
    host, port = node.service.bound_address  # type: ignore[misc]
    async with await anyio.connect_tcp(host, port) as sock:
        if payload:
            await sock.send(payload)
        with anyio.fail_after(within):
            try:
                while await sock.receive():
                    pass  # a TLS alert may come back; never application data
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                pass


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 8,
        encode_frame(b'{"v":1,"type":"hello","id":1,"re":null,"body":{}}', 4096),
    ],
    ids=["http", "garbage", "plaintext-frame"],
)
async def test_plaintext_and_garbage_are_cut_off(tls_cluster: Cluster, payload: bytes) -> None:
    a = await tls_cluster.start("a")
    await _assert_cut_off(a, payload, within=2.0)
    b = await tls_cluster.start("b")
    assert await b.service.connect(a.address) == a.node_id


async def test_silent_client_is_cut_off_after_the_handshake_timeout(tls_cluster: Cluster) -> None:
    a = await tls_cluster.start("a", tuning=replace(FAST, handshake_timeout=0.3))
    await _assert_cut_off(a, b"", within=2.0)


async def test_tls_client_without_certificate_gets_no_session(tls_cluster: Cluster) -> None:
    import ssl

    a = await tls_cluster.start("a")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = a.service.bound_address  # type: ignore[misc]
    received = b""
    with anyio.fail_after(3):
        try:
            stream = await anyio.connect_tcp(host, port, ssl_context=ctx, tls=True)
            try:
                # TLS 1.3: the client finishes first; the server's refusal arrives on read.
                received = await stream.receive()
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        except (ssl.SSLError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    assert received == b""
    assert a.service.peer_count == 0


async def test_connection_to_ourselves_is_refused(cluster: Cluster) -> None:
    a = await cluster.start("a")
    with pytest.raises(HandshakeError) as info:
        await a.service.connect(a.address)
    assert info.value.reason == "self"
    assert a.service.peer_count == 0


async def test_simultaneous_dials_leave_exactly_one_connection(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b")
    results: list[str] = []

    async def dial(src: Node, dst: Node) -> None:
        results.append(await src.service.connect(dst.address))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dial, a, b)
        tg.start_soon(dial, b, a)
    assert sorted(results) == sorted([a.node_id, b.node_id])
    await a.wait_for(lambda: a.connected(b))
    await b.wait_for(lambda: b.connected(a))
    [pb], [pa] = a.service.peers(), b.service.peers()
    # The surviving connection is the one dialled by the lower node id, on both ends.
    dialler = min(a.node_id, b.node_id)
    assert pb.direction == ("outbound" if dialler == a.node_id else "inbound")
    assert pa.direction == ("outbound" if dialler == b.node_id else "inbound")
    assert await b.service.request(a.node_id, Ping(nonce=1)) == Pong(nonce=1)


async def test_max_peers_is_enforced(cluster: Cluster) -> None:
    a = await cluster.start("a", max_peers=1)
    b = await cluster.start("b")
    c = await cluster.start("c")
    await b.service.connect(a.address)
    with pytest.raises(HandshakeError) as info:
        await c.service.connect(a.address)
    assert info.value.reason == "full"
    a.service.configure(max_peers=2)
    assert await c.service.connect(a.address) == a.node_id
    a.service.configure(max_peers=1)  # drops the newest
    await a.wait_for(lambda: a.service.peer_count == 1)
    assert a.connected(b)


# --------------------------------------------------------------------------- misbehaviour


async def test_oversized_frame_is_scored_and_disconnected(each_cluster: Cluster) -> None:
    a = await each_cluster.start(
        "a", max_frame_bytes=256 * 1024, max_parameters_bytes=1024, max_request_bytes=1024
    )
    peer = await raw_peer(each_cluster, a)
    await a.wait_for(lambda: a.service.peer_count == 1)
    await peer.stream.send((300 * 1024).to_bytes(4, "big"))  # the header alone is enough
    events = await peer.events_until_closed()
    assert goodbye_reason(events).startswith("protocol violation")
    await a.wait_for(lambda: a.service.peer_count == 0)
    record = a.book.get(peer.node_id)
    assert record is not None and record.protocol_violations == 1
    assert a.metrics.invalid_messages._value.get() == 1


async def test_unknown_message_type_is_scored_and_disconnected(cluster: Cluster) -> None:
    a = await cluster.start("a")
    peer = await raw_peer(cluster, a)
    await peer.stream.send(
        encode_frame(b'{"v":1,"type":"teleport","id":9,"re":null,"body":{}}', 99)
    )
    events = await peer.events_until_closed()
    assert "unknown message type" in goodbye_reason(events)
    assert a.book.get(peer.node_id).protocol_violations == 1  # type: ignore[union-attr]
    assert a.metrics.invalid_messages._value.get() == 1


async def test_message_before_hello_is_a_violation(cluster: Cluster, tmp_path: Path) -> None:
    a = await cluster.start("a")
    init = init_data_dir(tmp_path / "early")
    stream = await authenticated_stream(cluster, init, a, None)
    session = Session(
        SessionConfig(init.identity.node_id, "ian-test", 1 << 20),
        direction=Direction.OUTBOUND,
        peer_node_id=a.node_id,
    )
    session.start(hello_from(init))  # ...but the hello is never sent: a ping goes first
    await stream.send(
        encode_frame(b'{"v":1,"type":"ping","id":1,"re":null,"body":{"nonce":1}}', 99)
    )
    peer = RawPeer(init, stream, session)
    events = await peer.events_until_closed()
    assert "before hello" in goodbye_reason(events)
    assert a.book.get(init.identity.node_id).protocol_violations == 1  # type: ignore[union-attr]


async def test_invalid_body_is_scored_but_the_peer_stays(cluster: Cluster) -> None:
    a = await cluster.start("a")
    peer = await raw_peer(cluster, a)
    await a.wait_for(lambda: a.service.peer_count == 1)
    await peer.stream.send(encode_frame(b'{"v":1,"type":"ping","id":50,"re":null,"body":{}}', 99))
    # A request with a bad body is answered with an error, not silence.
    with anyio.fail_after(5):
        while True:
            events = peer.session.receive_data(await peer.stream.receive(), 0)
            replies = [e for e in events if getattr(e, "envelope", None) and e.envelope.re == 50]
            if replies:
                break
    assert replies[0].envelope.message.code == "invalid_message"  # type: ignore[attr-defined]
    assert a.book.get(peer.node_id).invalid_messages == 1  # type: ignore[union-attr]
    assert a.metrics.invalid_messages._value.get() == 1
    assert a.service.peer_count == 1


async def test_rate_limit(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    # b's height is announced (to no peer yet), so its maintenance tick has no status of its
    # own to send a while the test runs: a counts only the 20 below.
    b.service.announce_status()
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    a.service.configure(rate=1, burst=2)
    for _ in range(20):
        await b.service.send(a.node_id, Status(height=1, head_hash="00" * 32))
    with pytest.raises(RemoteError) as info:
        for _ in range(5):
            await b.service.request(a.node_id, Ping(nonce=1))
    assert info.value.remote_code == "rate_limited"
    assert a.metrics.rate_limit_violations._value.get() >= 18
    record = a.book.get(b.node_id)
    # Charged at most once per second, so a burst does not ban a peer at once.
    assert record is not None and record.rate_limit_violations == 1
    assert a.metrics.messages_received.labels("status")._value.get() == 20
    assert a.connected(b)


async def test_status_announcements_are_spaced_by_the_status_interval(cluster: Cluster) -> None:
    """``announce_status`` (called after every applied block) sends at most one status per
    ``status_min_interval``."""
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    received = b.metrics.messages_received.labels("status")
    markers = iter(range(100, 200))

    async def announced(times: int) -> int:
        """Statuses ``b`` received for ``times`` announcements, counted once a marker status
        sent after them arrived (frames to a peer arrive in order)."""
        before = received._value.get()
        for _ in range(times):
            a.service.announce_status()
        marker = next(markers)
        await a.service.send(b.node_id, Status(height=marker, head_hash="33" * 32))
        await b.wait_for(lambda: [p.height for p in b.service.peers()] == [marker])
        return int(received._value.get() - before) - 1

    a.service.status_min_interval = 0.0
    await announced(1)  # the height is announced: the maintenance tick has nothing to send
    assert await announced(5) == 5
    a.service.status_min_interval = 3600.0
    assert await announced(5) == 0


async def test_bad_score_disconnects(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))

    async def judge(peer: PeerInfo, message: Message) -> Message | None:
        raise InvalidMessage("that block is not valid")

    a.service.on("block_announce", judge)
    a.service.on("get_blocks", judge)
    for _ in range(20):
        try:
            await b.service.request(a.node_id, GetBlocks(from_height=1, max_blocks=1))
        except RemoteError as exc:
            assert exc.remote_code == "invalid_message"
        except PeerNotConnectedError:
            break
    await b.wait_for(lambda: not b.connected(a))
    assert b.disconnects()[0].reason.startswith("peer said goodbye: score too low")
    assert a.book.get(b.node_id).invalid_messages >= 14  # type: ignore[union-attr]


# --------------------------------------------------------------------------- messaging


async def test_request_response_and_errors(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    seen: list[tuple[str, Message]] = []
    never = anyio.Event()
    second_slow_call = anyio.Event()

    async def get_blocks(peer: PeerInfo, message: Message) -> Message | None:
        seen.append((peer.node_id, message))
        assert isinstance(message, GetBlocks)
        if message.from_height == 0:
            raise NotFoundError("no block 0")
        if message.from_height == 99:
            if sum(m.from_height == 99 for _, m in seen) == 2:  # type: ignore[attr-defined]
                second_slow_call.set()
            await never.wait()
        return Blocks(blocks=[])

    a.service.on("get_blocks", get_blocks)
    reply = await b.service.request(a.node_id, GetBlocks(from_height=1, max_blocks=5))
    assert reply == Blocks(blocks=[])
    assert seen == [(b.node_id, GetBlocks(from_height=1, max_blocks=5))]

    with pytest.raises(RemoteError) as info:
        await b.service.request(a.node_id, GetBlocks(from_height=0, max_blocks=5))
    assert info.value.remote_code == "not_found"

    with pytest.raises(RemoteError) as info:  # B has no get_blocks handler
        await a.service.request(b.node_id, GetBlocks(from_height=1, max_blocks=1))
    assert info.value.remote_code == "unsupported"

    with pytest.raises(RequestTimeoutError):
        await b.service.request(a.node_id, GetBlocks(from_height=99, max_blocks=1), timeout=0.2)

    # A slow handler does not block other requests on the same connection.
    assert await b.service.request(a.node_id, Ping(nonce=8)) == Pong(nonce=8)

    with pytest.raises(PeerNotConnectedError):
        await b.service.request("f" * 40, Ping(nonce=1))

    async def disconnect_soon() -> None:
        await second_slow_call.wait()
        a.service.disconnect(b.node_id, "test")

    async with anyio.create_task_group() as tg:
        tg.start_soon(disconnect_soon)
        with pytest.raises(PeerNotConnectedError):
            await b.service.request(a.node_id, GetBlocks(from_height=99, max_blocks=1))
    await b.wait_for(lambda: bool(b.disconnects()))
    assert b.disconnects()[-1].reason == "peer said goodbye: test"


async def test_per_peer_handler_limit_holds_further_requests(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    release = anyio.Event()
    running = 0
    most = 0
    started = 0

    async def get_blocks(peer: PeerInfo, message: Message) -> Message | None:
        nonlocal running, most, started
        running += 1
        started += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return Blocks(blocks=[])

    a.service.on("get_blocks", get_blocks, per_peer=2)
    replies: list[Message] = []

    async def ask() -> None:
        replies.append(await b.service.request(a.node_id, GetBlocks(from_height=1, max_blocks=1)))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(ask)
        # Everything that can run has run: two handlers wait, the peer's reader waits for a slot.
        await wait_all_tasks_blocked()
        assert started == 2
        release.set()
    assert most == 2
    assert replies == [Blocks(blocks=[])] * 5
    with pytest.raises(ValueError, match="per_peer"):
        a.service.on("get_blocks", get_blocks, per_peer=0)


async def test_an_inline_handler_runs_in_the_reader_one_message_at_a_time(
    cluster: Cluster,
) -> None:
    """An inline handler has no task of its own: while it waits, nothing more is read from
    that peer (a task per message would have started the second status at once)."""
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    seen: list[int] = []
    gate = anyio.Event()

    async def on_status(peer: PeerInfo, message: Status) -> None:
        seen.append(message.height)
        if message.height == 1:
            await gate.wait()

    a.service.on("status", on_status, inline=True)
    for height in (1, 2, 3):
        await b.service.send(a.node_id, Status(height=height, head_hash="00" * 32))
    await a.wait_for(lambda: seen == [1])
    await wait_all_tasks_blocked()
    assert seen == [1]
    gate.set()
    await a.wait_for(lambda: seen == [1, 2, 3])
    with pytest.raises(ValueError, match="inline"):
        a.service.on("status", on_status, per_peer=2, inline=True)


async def test_broadcast_and_status(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    c = await cluster.start("c")
    await b.service.connect(a.address)
    await c.service.connect(a.address)
    await a.wait_for(lambda: a.service.peer_count == 2)
    got: list[tuple[str, Message]] = []
    arrived = anyio.Event()

    def handler_for(node: Node):  # type: ignore[no-untyped-def]
        async def handler(peer: PeerInfo, message: Message) -> None:
            got.append((node.node_id, message))
            if len(got) == 2:
                arrived.set()

        return handler

    b.service.on("block_announce", handler_for(b))
    c.service.on("block_announce", handler_for(c))
    doc = block_to_doc(make_block())
    assert await a.service.broadcast(BlockAnnounce(block=doc)) == 2
    with anyio.fail_after(5):
        await arrived.wait()
    assert sorted(n for n, _ in got) == sorted([b.node_id, c.node_id])
    assert all(m == BlockAnnounce(block=doc) for _, m in got)
    # The announced height raised A's view of the network height (3 < 7 from hello: unchanged).
    assert b.service.best_height() == 7
    assert (
        await a.service.broadcast(Status(height=50, head_hash="22" * 32), exclude=[c.node_id]) == 1
    )
    await b.wait_for(lambda: b.service.best_height() == 50)
    assert c.service.best_height() == 7


# --------------------------------------------------------------------------- discovery, bans


async def test_banned_node_id_is_refused_both_ways(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    a.book.ban(b.node_id, seconds=3600, reason="test ban")
    with pytest.raises(HandshakeError) as info:
        await b.service.connect(a.address)  # A refuses after TLS
    assert info.value.reason == "banned"
    with pytest.raises(HandshakeError) as info:
        await a.service.connect(b.address, node_id=b.node_id)  # A never dials
    assert info.value.reason == "banned"
    with pytest.raises(HandshakeError) as info:
        await a.service.connect(b.address)  # id unknown before TLS: refused after it
    assert info.value.reason == "banned"
    assert a.service.peer_count == b.service.peer_count == 0


async def test_banned_ip_is_refused_both_ways(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b")
    a.book.ban("127.0.0.0/8", seconds=3600, reason="test ban")
    with pytest.raises(HandshakeError) as info:
        await b.service.connect(a.address)  # A closes the socket before TLS
    assert info.value.reason in ("tls", "closed")
    with pytest.raises(HandshakeError) as info:
        await a.service.connect(b.address)
    assert info.value.reason == "banned"
    assert a.service.peer_count == b.service.peer_count == 0


async def test_k_banned_identities_from_one_ip_ban_the_ip(cluster: Cluster) -> None:
    """Fresh identities are free, addresses are not: after ``ban_ip_after`` identities from
    one IP are banned, the IP is, and a new identity from it is refused before TLS."""
    a = await cluster.start("a", ban_ip_after=3)
    for i in range(3):
        liar = await cluster.start(f"liar-{i}", pex=False)
        await liar.service.connect(a.address)
        await a.wait_for(lambda liar=liar: a.connected(liar))
        verdicts = [a.service.report(liar.node_id, PeerEvent.PROTOCOL_VIOLATION) for _ in range(5)]
        assert verdicts[-1] is Verdict.BAN
    reasons = [b.reason for b in a.book.ip_bans()]
    assert reasons == ["3 identities from this address banned"]
    fresh = await cluster.start("fresh", pex=False)
    with pytest.raises(HandshakeError) as info:
        await fresh.service.connect(a.address)
    assert info.value.reason in ("tls", "closed")  # A closed the socket before TLS


async def test_ban_while_connected_drops_the_peer(each_cluster: Cluster) -> None:
    a = await each_cluster.start("a")
    b = await each_cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    a.book.ban(b.node_id, seconds=3600, reason="operator")
    await b.wait_for(lambda: not b.connected(a))
    assert b.disconnects()[0].reason == "peer said goodbye: banned"


async def test_idle_peer_is_dropped_and_pings_keep_peers_alive(cluster: Cluster) -> None:
    quick = replace(FAST, ping_interval=0.1, idle_timeout=0.4)
    a = await cluster.start("a", tuning=quick)
    b = await cluster.start("b", tuning=quick)
    await b.service.connect(a.address)
    peer = await raw_peer(cluster, a)  # answers nothing, not even pings
    events = await peer.events_until_closed(within=3)
    assert goodbye_reason(events) == "idle timeout"
    # Meanwhile A and B, which answer pings, stayed connected (time passing is the point here).
    await anyio.sleep(1.0)
    assert a.connected(b) and b.connected(a)
    assert not [d for d in b.disconnects() if d.node_id == a.node_id]
    assert a.metrics.messages_received.labels("ping")._value.get() > 0


async def test_certificate_rotation(tls_cluster: Cluster) -> None:
    a = await tls_cluster.start("a")
    b = await tls_cluster.start("b")
    await b.service.connect(a.address)
    old = a.service.cert_info.fingerprint_sha256
    cert_pem, key_pem = generate_certificate(a.init.identity)
    write_certificate(a.init.datadir.certs_dir, cert_pem, key_pem)
    new = a.service.reload_tls().fingerprint_sha256
    assert new != old
    # The established connection survives and still works.
    assert await b.service.request(a.node_id, Ping(nonce=2)) == Pong(nonce=2)
    assert b.service.peers()[0].cert_fingerprint == old
    # A new connection sees the new certificate.
    c = await tls_cluster.start("c")
    await c.service.connect(a.address, node_id=a.node_id)
    assert c.service.peers()[0].cert_fingerprint == new


async def test_shutdown_is_clean_and_saves_the_book(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    assert b.scope is not None
    b.scope.cancel()
    await a.wait_for(lambda: not a.connected(b))
    assert isinstance(a.events[-1], PeerDisconnected)
    assert a.events[-1].reason == "peer said goodbye: shutdown"
    assert b.init.datadir.peer_scores_file.exists()
    assert b.service.bound_address is not None


async def test_unusable_new_certificate_keeps_the_old_one(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    a = await tls_cluster.start("a")
    old = a.service.cert_info.fingerprint_sha256
    stranger = init_data_dir(tmp_path / "stranger")
    # A pair issued by another identity must not be picked up.
    cert_pem, key_pem = generate_certificate(stranger.identity)
    write_certificate(a.init.datadir.certs_dir, cert_pem, key_pem)
    with pytest.raises(IdentityError):
        a.service.reload_tls()
    assert a.service.cert_info.fingerprint_sha256 == old
    b = await tls_cluster.start("b")
    await b.service.connect(a.address, node_id=a.node_id)
    assert b.service.peers()[0].cert_fingerprint == old


# --------------------------------------------------------------------------- send budget

BIG_REPLY = Blocks(blocks=[block_to_doc(make_block())] * 50)  # about 50 KB framed


async def test_a_peer_that_never_reads_is_held_to_its_send_budget(cluster: Cluster) -> None:
    tuning = replace(
        FAST,
        send_queue_bytes=200_000,
        send_budget_bytes=300_000,
        send_stall_timeout=0.5,
        send_timeout=30.0,  # the stall rule, not the writer's timeout, must catch the peer
        rate=1e6,
        burst=1e6,
    )
    a = await cluster.start("a", tuning=tuning)
    served = 0  # while the connection was open (after closing, buffered requests still arrive)

    async def get_blocks(peer: PeerInfo, message: Message) -> Message | None:
        nonlocal served
        served += conn.open
        return BIG_REPLY

    a.service.on("get_blocks", get_blocks)
    peer = await raw_peer(cluster, a)
    await a.wait_for(lambda: a.service.peer_count == 1)
    conn = a.service._peers[peer.node_id]
    frame_bytes = len(conn.frame(BIG_REPLY, re=1)[1])
    # The in-memory link buffers CHUNKS_IN_FLIGHT frames (a socket buffer); then A must hold.
    count = CHUNKS_IN_FLIGHT + 100
    requests = b"".join(
        peer.session.send(GetBlocks(from_height=1, max_blocks=50))[1] for _ in range(count)
    )
    await peer.stream.send(requests)  # ...and never reads a reply
    await a.wait_for(lambda: a.service.peer_count == 0, within=10)
    with anyio.fail_after(5):
        await conn.closed.wait()

    assert conn.close_reason == "send budget stalled"
    assert a.book.get(peer.node_id).rate_limit_violations == 1  # type: ignore[union-attr]
    # Backpressure: the handlers stopped long before the 100 requests were all served.
    in_flight = tuning.max_inflight_per_peer + tuning.send_queue_bytes // frame_bytes + 1
    assert served <= CHUNKS_IN_FLIGHT + in_flight < count
    # Never above the budget (a frame may exceed it only when the queue was empty).
    assert 0 < conn.peak_queued_bytes <= tuning.send_queue_bytes
    assert a.service._send_budget.peak <= tuning.send_budget_bytes
    # Everything accounted is given back once the connection is gone.
    assert conn.queued_bytes == 0
    assert a.service._send_budget.used == 0


async def test_accounting_returns_to_zero_after_writes_and_closes(cluster: Cluster) -> None:
    a = await cluster.start("a")
    b = await cluster.start("b")
    a.service.on("get_blocks", lambda peer, message: _big_reply())
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    for _ in range(5):
        assert await b.service.request(a.node_id, GetBlocks(from_height=1, max_blocks=50)) == (
            BIG_REPLY
        )
    assert a.service._send_budget.peak >= len(encode_frame(b"", 1)) + 50_000
    conn = a.service._peers[b.node_id]
    await a.wait_for(lambda: conn.queued_bytes == 0 or not conn.open)
    b.service.disconnect(a.node_id, "test")
    with anyio.fail_after(5):
        await conn.closed.wait()
    assert a.service._send_budget.used == 0
    assert b.service._send_budget.used == 0


async def _big_reply() -> Message:
    return BIG_REPLY


async def test_broadcast_over_the_node_budget_skips_the_peer(cluster: Cluster) -> None:
    a = await cluster.start("a", tuning=replace(FAST, send_budget_bytes=1), pex=False)
    b = await cluster.start("b", pex=False)
    await b.service.connect(a.address)
    await a.wait_for(lambda: a.connected(b))
    conn = a.service._peers[b.node_id]
    a.service._send_budget.take(1)  # the budget is full (as if another peer held it)
    try:
        assert await a.service.broadcast(Ping(nonce=1)) == 0
        assert a.service.is_connected(b.node_id)  # dropped for the peer, the peer stays
        assert conn.open and conn.queued_bytes == 0
    finally:
        a.service._send_budget.give(1)
