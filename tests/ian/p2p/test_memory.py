"""The in-memory transport: the same identities and failure modes as TLS, without sockets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ian.certs import load_certificate
from ian.errors import ConfigError
from ian.p2p.errors import HandshakeError
from ian.p2p.memory import FIRST_PORT, MemoryNetwork, MemoryTransport
from ian.p2p.transport import RawConnection, SecureChannel
from ian.storage.datadir import InitResult, init_data_dir

pytestmark = pytest.mark.anyio


def transport(network: MemoryNetwork, tmp_path: Path, name: str, ip: str) -> MemoryTransport:
    init: InitResult = init_data_dir(tmp_path / name)
    return network.transport(init.datadir.certs_dir, init.identity, ip=ip)


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


async def test_both_sides_get_the_others_verified_identity(
    network: MemoryNetwork, tmp_path: Path
) -> None:
    server = transport(network, tmp_path, "server", "10.0.0.1")
    client = transport(network, tmp_path, "client", "10.0.0.2")
    listener = await server.listen("10.0.0.1", 0)
    accepted: list[SecureChannel] = []
    remote_ips: list[str] = []
    authenticated = anyio.Event()

    async def handle(raw: RawConnection) -> None:
        remote_ips.append(raw.remote_ip)
        accepted.append(
            await raw.authenticate(server=True, expected_node_id=None, handshake_timeout=5)
        )
        authenticated.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        raw = await client.dial(*listener.address, connect_timeout=5)
        assert raw.remote_ip == "10.0.0.1"
        channel = await raw.authenticate(
            server=False, expected_node_id=server.identity.node_id, handshake_timeout=5
        )
        # The certificate is the one on disk, so node id and fingerprint are what TLS proves.
        on_disk = load_certificate(server.certs_dir, server.identity)
        assert channel.peer.node_id == server.identity.node_id
        assert channel.peer.fingerprint_sha256 == on_disk.fingerprint_sha256
        await channel.stream.send(b"hello, server")
        with anyio.fail_after(5):
            await authenticated.wait()
        [inbound] = accepted
        assert remote_ips == ["10.0.0.2"]
        assert inbound.peer.node_id == client.identity.node_id
        # receive honours max_bytes and keeps the rest.
        assert await inbound.stream.receive(5) == b"hello"
        assert await inbound.stream.receive() == b", server"
        await inbound.stream.send(b"hi")
        assert await channel.stream.receive() == b"hi"
        await inbound.stream.aclose()
        with pytest.raises(anyio.EndOfStream):
            await channel.stream.receive()
        tg.cancel_scope.cancel()
    await listener.aclose()


async def test_wrong_identity_is_refused(network: MemoryNetwork, tmp_path: Path) -> None:
    server = transport(network, tmp_path, "server", "127.0.0.1")
    client = transport(network, tmp_path, "client", "127.0.0.1")
    listener = await server.listen("127.0.0.1", 0)
    server_saw_the_end = anyio.Event()

    async def handle(raw: RawConnection) -> None:
        channel = await raw.authenticate(server=True, expected_node_id=None, handshake_timeout=5)
        with pytest.raises(anyio.EndOfStream):
            await channel.stream.receive()
        server_saw_the_end.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        raw = await client.dial(*listener.address, connect_timeout=5)
        with pytest.raises(HandshakeError) as info:
            await raw.authenticate(server=False, expected_node_id="0" * 40, handshake_timeout=5)
        assert info.value.reason == "identity"
        with anyio.fail_after(5):  # the refused connection is closed for the server too
            await server_saw_the_end.wait()
        tg.cancel_scope.cancel()


async def test_refusals_before_authentication(network: MemoryNetwork, tmp_path: Path) -> None:
    server = transport(network, tmp_path, "server", "127.0.0.1")
    client = transport(network, tmp_path, "client", "127.0.0.1")
    with pytest.raises(HandshakeError) as info:
        await client.dial("127.0.0.1", FIRST_PORT, connect_timeout=5)
    assert info.value.reason == "connect"  # nobody listens there

    listener = await server.listen("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:

        async def refuse(raw: RawConnection) -> None:  # as the switch does for a banned IP
            await raw.aclose()

        tg.start_soon(listener.serve, refuse, tg)
        raw = await client.dial(*listener.address, connect_timeout=5)
        with pytest.raises(HandshakeError) as info:
            await raw.authenticate(server=False, expected_node_id=None, handshake_timeout=5)
        assert info.value.reason == "tls"
        tg.cancel_scope.cancel()
    await listener.aclose()
    with pytest.raises(HandshakeError) as info:
        await client.dial(*listener.address, connect_timeout=5)
    assert info.value.reason == "connect"  # a closed listener refuses


async def test_a_peer_that_never_authenticates_times_out(
    network: MemoryNetwork, tmp_path: Path
) -> None:
    server = transport(network, tmp_path, "server", "127.0.0.1")
    client = transport(network, tmp_path, "client", "127.0.0.1")
    listener = await server.listen("127.0.0.1", 0)  # nobody serves it: nobody authenticates
    raw = await client.dial(*listener.address, connect_timeout=5)
    with pytest.raises(HandshakeError) as info:
        await raw.authenticate(server=False, expected_node_id=None, handshake_timeout=0.05)
    assert info.value.reason == "timeout"
    await listener.aclose()


async def test_ports_are_deterministic_and_exclusive(
    network: MemoryNetwork, tmp_path: Path
) -> None:
    a = transport(network, tmp_path, "a", "127.0.0.1")
    first = await a.listen("127.0.0.1", 0)
    second = await a.listen("127.0.0.1", 0)
    assert [first.address, second.address] == [
        ("127.0.0.1", FIRST_PORT),
        ("127.0.0.1", FIRST_PORT + 1),
    ]
    with pytest.raises(ConfigError):
        await a.listen("127.0.0.1", FIRST_PORT)
    await first.aclose()
    assert (await a.listen("127.0.0.1", FIRST_PORT)).address == ("127.0.0.1", FIRST_PORT)
    # A listener on the unspecified address is reached through any host.
    anywhere = await a.listen("0.0.0.0", 0)
    raw = await a.dial("10.9.8.7", anywhere.address[1], connect_timeout=5)
    assert raw.remote_ip == "127.0.0.1"  # the listening transport's own address
    await raw.aclose()


async def test_a_closed_end_reports_like_tls(network: MemoryNetwork, tmp_path: Path) -> None:
    server = transport(network, tmp_path, "server", "127.0.0.1")
    client = transport(network, tmp_path, "client", "127.0.0.1")
    listener = await server.listen("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:

        async def handle(raw: RawConnection) -> None:
            await raw.authenticate(server=True, expected_node_id=None, handshake_timeout=5)

        tg.start_soon(listener.serve, handle, tg)
        raw = await client.dial(*listener.address, connect_timeout=5)
        channel = await raw.authenticate(server=False, expected_node_id=None, handshake_timeout=5)
        await channel.stream.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await channel.stream.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await channel.stream.send(b"x")
        tg.cancel_scope.cancel()
