"""The mock Tau node's own contract: replies per mode and the `mode` control line."""

from __future__ import annotations

import hashlib

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from ian.tau import MockTauServer

pytestmark = pytest.mark.anyio


async def exchange(server: MockTauServer, *lines: bytes) -> list[bytes]:
    """Send ``lines`` on one connection; return one reply line per request line."""
    assert server.address is not None
    async with await anyio.connect_tcp(*server.address) as stream:
        reader = BufferedByteReceiveStream(stream)
        replies = []
        for line in lines:
            await stream.send(line)
            replies.append(await reader.receive_until(b"\r\n", 1 << 16))
        return replies


async def test_mode_switch_over_the_wire(mock_tau: MockTauServer) -> None:
    tx = b'sendtx {"a":1}'
    replies = await exchange(
        mock_tau,
        tx + b"\r\n",
        b"mode fail\r\n",
        tx + b"\r\n",
        b"mode bogus\r\n",
        b"mode ok\r\n",
        b"status\r\n",
    )
    assert replies[0] == b"SUCCESS " + hashlib.sha256(tx).hexdigest().encode()
    assert replies[1] == b"OK mode fail"
    assert replies[2] == b"ERROR mock Tau node told to fail"
    assert replies[3].startswith(b"ERROR unknown mode 'bogus'")
    assert replies[4] == b"OK mode ok"
    assert replies[5].startswith(b"ERROR unknown command")
    assert mock_tau.mode == "ok"
    assert mock_tau.lines == [tx, tx]
    assert mock_tau.acknowledged == [{"a": 1}]
    assert mock_tau.connections == 1


async def test_invalid_json_is_refused_in_ok_mode(mock_tau: MockTauServer) -> None:
    assert await exchange(mock_tau, b"sendtx {nope\r\n") == [b"ERROR invalid JSON"]
    assert mock_tau.acknowledged == []


async def test_wait_until_wakes_on_connections(mock_tau: MockTauServer) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(exchange, mock_tau, b"mode ok\r\n")
        tg.start_soon(exchange, mock_tau, b"mode ok\r\n")
        with anyio.fail_after(5):
            await mock_tau.wait_until(lambda s: s.connections == 2)


def test_unknown_mode_in_process() -> None:
    server = MockTauServer()
    with pytest.raises(ValueError, match="expected one of ok, fail, hang, close, long"):
        server.set_mode("sometimes")
    with pytest.raises(RuntimeError):
        _ = server.endpoint
