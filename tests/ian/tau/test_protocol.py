"""The Tau line protocol client over real loopback sockets, against the mock and raw servers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ian.config import PeerAddress
from ian.tau import MockTauServer, TauError
from ian.tau.protocol import MAX_REPLY_BYTES, encode_sendtx, parse_reply, send_tx

pytestmark = pytest.mark.anyio

TX = {"type": "IAN_LOG_COMMIT", "goal_id": "G", "log_size": 3, "note": "héllo"}


def addr(server: MockTauServer) -> PeerAddress:
    assert server.address is not None
    return PeerAddress(*server.address)


# -- pure encoding and parsing -----------------------------------------------------------------


def test_encode_is_one_compact_sorted_line() -> None:
    line = encode_sendtx({"b": 1, "a": "x\ny"})
    assert line == b'sendtx {"a":"x\\ny","b":1}\r\n'
    assert line.count(b"\n") == 1


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_sendtx({"x": float("nan")})


@pytest.mark.parametrize(
    ("line", "detail"),
    [(b"SUCCESS", ""), (b"SUCCESS abc123", "abc123"), (b"SUCCESS  tx=1 \r", "tx=1")],
)
def test_parse_success(line: bytes, detail: str) -> None:
    assert parse_reply(line) == detail


@pytest.mark.parametrize("line", [b"ERROR nope", b"", b"success lower-case", b" SUCCESS"])
def test_parse_refusal(line: bytes) -> None:
    with pytest.raises(TauError, match="refused the transaction"):
        parse_reply(line, endpoint="tcp://t:1")


# -- against the mock Tau node -----------------------------------------------------------------


async def test_success_returns_the_reply_detail(mock_tau: MockTauServer) -> None:
    detail = await send_tx(addr(mock_tau), TX, timeout_s=2)
    line = encode_sendtx(TX).rstrip(b"\r\n")
    assert detail == hashlib.sha256(line).hexdigest()
    assert mock_tau.acknowledged == [TX]
    assert mock_tau.connections == 1


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", "refused the transaction: 'ERROR mock Tau node told to fail'"),
        ("hang", "did not reply within 0.3s"),
        ("close", "closed the connection before completing its reply line"),
        ("long", f"reply line longer than {MAX_REPLY_BYTES} bytes"),
    ],
)
async def test_bad_replies_are_clear_failures(
    mock_tau: MockTauServer, mode: str, message: str
) -> None:
    mock_tau.set_mode(mode)
    with pytest.raises(TauError) as info:
        await send_tx(addr(mock_tau), TX, timeout_s=0.3)
    assert message in info.value.message
    assert mock_tau.endpoint in info.value.message
    assert mock_tau.acknowledged == []


async def test_refused_connection(closed_port: int) -> None:
    with pytest.raises(TauError) as info:
        await send_tx(PeerAddress("127.0.0.1", closed_port), TX, timeout_s=2)
    assert info.value.message == (
        f"Tau node at tcp://127.0.0.1:{closed_port} refused the connection"
    )
    assert "nc -zv" in (info.value.fix or "")


async def test_unreachable_host() -> None:
    # `.invalid` never resolves (RFC 2606): either resolution fails or the timeout expires.
    with pytest.raises(TauError) as info:
        await send_tx(PeerAddress("tau-node.invalid", 12345), TX, timeout_s=0.5)
    message = info.value.message
    assert "tcp://tau-node.invalid:12345" in message
    assert "cannot connect" in message or "did not accept a connection" in message


# -- against hand-written servers (framing corner cases) ------------------------------------------


async def serve_once(
    handler: Callable[[SocketStream], Awaitable[None]], check: Callable[[PeerAddress], Awaitable]
) -> None:
    """Run ``handler`` for connections on a free loopback port while ``check(address)`` runs."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        await check(PeerAddress("127.0.0.1", port))
        tg.cancel_scope.cancel()


async def read_line(stream: SocketStream) -> bytes:
    return await BufferedByteReceiveStream(stream).receive_until(b"\n", 1 << 20)


async def test_reply_split_across_segments_with_bare_newline() -> None:
    received: list[bytes] = []

    async def handler(stream: SocketStream) -> None:
        async with stream:
            received.append(await read_line(stream))
            for piece in (b"SUC", b"CESS ", b"abc", b"\n", b"trailing junk"):
                await stream.send(piece)
                await anyio.wait_all_tasks_blocked()

    async def check(where: PeerAddress) -> None:
        assert await send_tx(where, TX, timeout_s=2) == "abc"

    await serve_once(handler, check)
    assert received == [encode_sendtx(TX)[:-1]]  # everything up to the \n
    assert json.loads(received[0][len(b"sendtx ") : -1]) == TX


async def test_close_without_any_reply() -> None:
    async def handler(stream: SocketStream) -> None:
        async with stream:
            await read_line(stream)

    async def check(where: PeerAddress) -> None:
        with pytest.raises(TauError, match="closed the connection before completing"):
            await send_tx(where, TX, timeout_s=2)

    await serve_once(handler, check)


@pytest.mark.parametrize("extra", [0, 1, 100_000])
async def test_reply_length_limit(extra: int) -> None:
    """The line before its \\n may be MAX_REPLY_BYTES long, however the bytes arrive."""
    detail = b"x" * (MAX_REPLY_BYTES - len(b"SUCCESS \r") + extra)

    async def handler(stream: SocketStream) -> None:
        async with stream:
            await read_line(stream)
            await stream.send(b"SUCCESS " + detail + b"\r\n")

    async def check(where: PeerAddress) -> None:
        if extra == 0:
            assert await send_tx(where, TX, timeout_s=2) == detail.decode()
        else:
            with pytest.raises(TauError, match=f"longer than {MAX_REPLY_BYTES} bytes"):
                await send_tx(where, TX, timeout_s=2)

    await serve_once(handler, check)
