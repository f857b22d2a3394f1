"""TCP edge cases of the real transport: a connection whose peer address is gone is a failed
connection (HandshakeError), never an exception that escapes into the node (seen under load: a
dialled peer hung up between connect and use, and the node stopped)."""

from __future__ import annotations

import anyio
import pytest

from ian.p2p.errors import HandshakeError
from ian.p2p.transport import remote_ip

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_socket_without_a_peer_address_is_a_failed_connection() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        stream = await anyio.connect_tcp("127.0.0.1", port)
        assert remote_ip(stream) == "127.0.0.1"
        await stream.aclose()
        with pytest.raises(HandshakeError) as caught:
            remote_ip(stream)
        assert caught.value.reason == "connect"


@pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {"use_uvloop": True}), "asyncio"], ids=["uvloop", "asyncio"]
)
async def test_a_connection_its_peer_reset_is_a_failed_connection() -> None:
    """Once a connection is lost (the peer reset it: a dialled leader that was just killed),
    uvloop (the node's loop) drops the transport's socket and anyio has none to ask for the
    address: that was an AttributeError, which stopped a node of three in a failover bench."""
    import socket
    import struct

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        stream = await anyio.connect_tcp("127.0.0.1", server.getsockname()[1])
        accepted, _ = server.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # a reset, as from a killed process
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
            await stream.receive()
        with pytest.raises(HandshakeError) as caught:
            remote_ip(stream)
        assert caught.value.reason == "connect"
        await stream.aclose()
