"""API fronts (``api_workers``): real front processes on a real node's port.

The node runs in the test's task group with ``api_workers = 2``; requests go over TCP to the
port the fronts accept on. A front answers plain contribute requests through the node's channel
(and evaluates demo packs itself); everything else is handed to the node with the connection.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from ian.api.front_process import parse_head, render
from ian.config import load_settings
from ian.node import Node

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"
ACCEPTED = {"strategy": "momentum", "lookback": 2, "threshold": 0.01, "position_size": 0.1}
REJECTED = {"strategy": "momentum", "lookback": 20, "threshold": 0.01, "position_size": 1.0}


def plain_body(n: int, params: dict[str, Any] = ACCEPTED) -> dict[str, Any]:
    """A contribute body without metadata (the kind a front evaluates); ``n`` makes it
    distinct through a position size a hair smaller (the same verdict)."""
    raw = json.dumps({**params, "position_size": params["position_size"] - n * 1e-9}).encode()
    return {
        "goal_id": DEMO,
        "agent_pack": {"version": "1.0", "parameters": base64.b64encode(raw).decode()},
        "contributor_id": f"c{n}",
        "seed": 7,
    }


@asynccontextmanager
async def running(tmp_path: Path, name: str, **overrides: Any) -> AsyncIterator[tuple[Node, str]]:
    values: dict[str, Any] = {
        "data_dir": tmp_path / name,
        "api_host": "127.0.0.1",
        "api_port": 0,
        "p2p_port": 0,
        "ws_port": 0,
        "evaluation_workers": 0,
    }
    values.update(overrides)
    node = Node.open(load_settings(env={}, overrides=values))
    async with anyio.create_task_group() as tg:
        bound = await tg.start(
            lambda task_status: node.run(handle_signals=False, task_status=task_status)
        )
        try:
            yield node, "http://{}:{}".format(*bound.api)
        finally:
            node.request_stop()


def exchange(url: str, raw: bytes, *, answers: int = 1) -> list[bytes]:
    """Send ``raw`` on one connection and read ``answers`` responses (Content-Length framed)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        buf = b""
        out: list[bytes] = []
        while len(out) < answers:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {out!r} {buf!r}"
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                chunk = sock.recv(65536)
                assert chunk
                rest += chunk
            out.append(head + b"\r\n\r\n" + rest[:length])
            buf = rest[length:]
        return out


def post(body: bytes, *, extra: bytes = b"") -> bytes:
    return (
        b"POST /api/v1/contribute HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


# -- the front's reading of a request head ----------------------------------------------------


def test_parse_head_takes_a_plain_contribute_request() -> None:
    head = parse_head(
        b"POST /api/v1/contribute HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n"
        b"Authorization: Bearer t1\r\nauthorization: Bearer t2\r\n"
        b"X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nConnection: keep-alive"
    )
    assert head is not None
    assert (head.length, head.close) == (12, False)
    assert head.authorization == "Bearer t1"  # the first, as the node's server reads it
    assert head.forwarded == "203.0.113.9, 10.0.0.1"
    closing = parse_head(
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 0\r\nconnection: close"
    )
    assert closing is not None and closing.close


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/v1/contribute HTTP/1.1\r\ncontent-length: 1",
        b"POST /api/v1/contribute?x=1 HTTP/1.1\r\ncontent-length: 1",
        b"POST /api/v1/contribute HTTP/1.0\r\ncontent-length: 1",
        b"POST /api/v1/contribute HTTP/1.1\r\nhost: x",  # no length
        b"POST /api/v1/contribute HTTP/1.1\r\ntransfer-encoding: chunked",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: -1",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\nexpect: 100-continue",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\nupgrade: h2c",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\nconnection: Upgrade",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\n folded",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length : 1",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\nx: a\x01b",
        b"POST /api/v1/contribute HTTP/1.1\r\ncontent-length: 1\r\nno colon",
    ],
)
def test_parse_head_leaves_everything_else_to_the_node(head: bytes) -> None:
    assert parse_head(head) is None


def test_render_writes_the_answer_as_the_node_would() -> None:
    raw = render((1, 429, [(b"content-length", b"2"), (b"retry-after", b"3")], b"{}"), True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests"
    assert lines[1].startswith(b"date: ") and lines[1].endswith(b" GMT")
    assert lines[2:] == [b"content-length: 2", b"retry-after: 3", b"connection: close"]
    assert body == b"{}"


# -- a node with fronts -----------------------------------------------------------------------


async def test_fronts_answer_contributions_and_hand_over_the_rest(tmp_path: Path) -> None:
    async with running(tmp_path, "a", api_workers=2) as (node, url):
        fronts = node_fronts(node)
        assert len(fronts.pids) == 2
        async with httpx.AsyncClient(base_url=url) as client:
            ok = await client.post("/api/v1/contribute", json=plain_body(0))
            assert ok.status_code == 200, ok.text
            assert ok.json()["accepted"] is True and ok.json()["log_index"] == 0
            no = await client.post("/api/v1/contribute", json=plain_body(1, REJECTED))
            assert no.status_code == 200
            assert no.json()["accepted"] is False
            assert "below min_reward" in no.json()["reason"]
            # Bodies the front does not take whole still get the node's answers.
            bad = await client.post(
                "/api/v1/contribute", content=b"{", headers={"content-type": "application/json"}
            )
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed"
            unknown = await client.post(
                "/api/v1/contribute", json={**plain_body(2), "goal_id": "NOPE"}
            )
            assert unknown.status_code == 404
            # The fronts sent those four; the two admitted demo packs were evaluated there.
            assert (fronts.asks, fronts.evaluated, fronts.handoffs) == (4, 2, 0)
            # Reads are handed over to the node.
            status = (await client.get("/api/v1/status")).json()
            assert fronts.handoffs == 1
        assert status["contributions"] == {"received": 4, "accepted": 1, "rejected": 3}
        assert status["goals"][DEMO]["log_size"] == 1

        # One keep-alive connection: a contribute (front), then a read (handed over), then
        # another contribute (now served by the node itself, on the handed-over connection).
        raw = post(json.dumps(plain_body(3)).encode())
        raw += b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
        raw += post(json.dumps(plain_body(4)).encode())
        answers = await anyio.to_thread.run_sync(lambda: exchange(url, raw, answers=3))
        assert [status_of(a) for a in answers] == [200, 200, 200]
        assert body_of(answers[0])["log_index"] == 1
        assert answers[1].endswith(b"OK")
        assert body_of(answers[2])["log_index"] == 2

        # A chunked body, a body over max_request_bytes and an oversized head: the node's own
        # answers, on connections the fronts hand over.
        body = json.dumps(plain_body(5)).encode()
        chunked = (
            b"POST /api/v1/contribute HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"content-type: application/json\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        (answer,) = await anyio.to_thread.run_sync(lambda: exchange(url, chunked))
        assert status_of(answer) == 200 and body_of(answer)["log_index"] == 3
        too_big = b"POST /api/v1/contribute HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (
            node.settings.max_request_bytes + 1
        )
        (answer,) = await anyio.to_thread.run_sync(lambda: exchange(url, too_big))
        assert status_of(answer) == 413 and body_of(answer)["error"]["code"] == "payload_too_large"
        huge_head = b"GET /health HTTP/1.1\r\nx-pad: " + b"a" * 140_000 + b"\r\n\r\n"
        (answer,) = await anyio.to_thread.run_sync(lambda: exchange(url, huge_head))
        assert status_of(answer) == 431


async def test_fronts_give_the_same_chain_as_the_node_alone(tmp_path: Path) -> None:
    """Packs evaluated by the fronts: the same log and leaderboard roots as evaluated by the
    node, rejections included."""
    bodies = [plain_body(n, REJECTED if n % 3 == 0 else ACCEPTED) for n in range(12)]
    roots = []
    for name, workers in (("alone", 0), ("fronts", 2)):
        async with running(tmp_path, name, api_workers=workers) as (node, url):
            async with httpx.AsyncClient(base_url=url) as client:
                for body in bodies:
                    r = await client.post("/api/v1/contribute", json=body)
                    assert r.status_code == 200, r.text
            if workers:  # every pack was evaluated by a front
                assert node_fronts(node).evaluated == len(bodies)
            goal = node.state.goals[DEMO]
            roots.append((goal.mmr.size, goal.mmr.root(), goal.leaderboard.root()))
    assert roots[0] == roots[1]
    assert roots[0][0] == 8


async def test_fronts_keep_the_token_and_the_bans(tmp_path: Path) -> None:
    async with running(
        tmp_path, "a", api_workers=1, api_token="s3cret", trusted_proxies=["127.0.0.1/32"]
    ) as (node, url):
        node.peer_book.ban("203.0.113.9", seconds=600, reason="test")
        fronts = node_fronts(node)
        async with httpx.AsyncClient(base_url=url) as client:
            missing = await client.post("/api/v1/contribute", json=plain_body(0))
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            good = {"authorization": "Bearer s3cret"}
            banned = await client.post(
                "/api/v1/contribute",
                json=plain_body(1),
                headers={**good, "x-forwarded-for": "203.0.113.9"},
            )
            assert banned.status_code == 403
            assert banned.json()["error"]["code"] == "banned"
            # A refused request costs no evaluation: the node checks before the front evaluates.
            assert (fronts.asks, fronts.evaluated) == (2, 0)
            ok = await client.post("/api/v1/contribute", json=plain_body(0), headers=good)
            assert ok.status_code == 200 and ok.json()["accepted"] is True
            assert (fronts.asks, fronts.evaluated) == (3, 1)


async def test_a_killed_front_is_started_again_and_all_stop_with_the_node(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, "a", api_workers=2) as (node, url):
        fronts = node_fronts(node)
        victim = fronts.pids[0]
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(30):
            while fronts.started < 3:
                await fronts.changed.wait()
        assert victim not in fronts.pids and len(fronts.pids) == 2
        async with httpx.AsyncClient(base_url=url) as client:
            for n in range(6):  # new connections: whichever front accepts them answers
                r = await client.post(
                    "/api/v1/contribute", json=plain_body(n), headers={"connection": "close"}
                )
                assert r.status_code == 200 and r.json()["accepted"] is True
        pids = fronts.pids
    for pid in pids:  # ended and reaped by the node
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def node_fronts(node: Node) -> Any:
    fronts = node.api_fronts
    assert fronts is not None
    return fronts


async def test_a_front_closes_a_connection_left_idle(tmp_path: Path) -> None:
    """Between requests a front keeps a connection no longer than the node would (5 s)."""

    def idle_until_closed(url: str) -> bytes:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            return sock.recv(1)

    async with running(tmp_path, "a", api_workers=1) as (_node, url):
        with anyio.fail_after(12):
            assert await anyio.to_thread.run_sync(idle_until_closed, url) == b""


async def test_the_largest_request_with_the_largest_headers_gets_the_node_answer(
    tmp_path: Path,
) -> None:
    """A body of max_request_bytes with ~60 KB of Authorization and X-Forwarded-For: the
    node's answer, and the front is not restarted (its frame to the node is within bounds)."""
    async with running(
        tmp_path, "a", api_workers=1, max_request_bytes=65_536, max_parameters_bytes=32_768
    ) as (node, url):
        fronts = node_fronts(node)
        doc = json.dumps(plain_body(0)).encode()
        body = doc[:-1] + b" " * (65_536 - len(doc)) + b"}"
        extra = b"authorization: Bearer " + b"a" * 30_000 + b"\r\n"
        extra += b"x-forwarded-for: " + b"1" * 30_000 + b"\r\n"
        (answer,) = await anyio.to_thread.run_sync(lambda: exchange(url, post(body, extra=extra)))
        assert status_of(answer) == 200, answer[:300]
        assert body_of(answer)["accepted"] is True
        assert (fronts.started, fronts.asks, fronts.evaluated) == (1, 1, 1)


async def test_bare_line_feeds_are_left_to_the_node(tmp_path: Path) -> None:
    """A head ended by bare LFs never has the CRLF blank line a front looks for: handed over
    at once rather than waited on."""
    async with running(tmp_path, "a", api_workers=1) as (node, url):
        raw = b"GET /health HTTP/1.1\nhost: x\n\n"
        with anyio.fail_after(10):
            (answer,) = await anyio.to_thread.run_sync(lambda: exchange(url, raw))
        assert status_of(answer) in (200, 400)
        assert node_fronts(node).handoffs == 1


def test_a_front_of_another_version_refuses_to_start_in_the_node_log_format() -> None:
    """Its evaluations are taken as the node's, so a front whose installed code is not the
    node's exits at once; it says why on the node's standard error, as a JSON line when the
    node logs JSON (what ``jq`` over ``docker logs`` reads)."""
    import subprocess
    import sys

    fds = ["--listen-fd", "1000", "--channel-fd", "1001", "--handoff-fd", "1002"]
    limits = ["--max-body", "1000", "--max-parameters", "1000"]
    other = ["--node-version", "0.0.0+another", "--log-format", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "ian.api.front_process", *fds, *limits, *other],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    (line,) = done.stderr.splitlines()
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["logger"] == "ian.api.front"
    assert "the running node is 0.0.0+another; restart the node" in doc["msg"]


def test_a_port_in_use_is_refused_even_with_several_fronts() -> None:
    """SO_REUSEPORT would let a group join another process's listeners on the port."""
    from ian.api.listen import listen_group
    from ian.errors import ConfigError

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            listen_group("127.0.0.1", port, 2, purpose="the API", setting="IAN_API_PORT")
    socks = listen_group("127.0.0.1", 0, 3, purpose="the API", setting="IAN_API_PORT")
    try:
        assert len({s.getsockname()[1] for s in socks}) == 1 and len(set(socks)) == 3
    finally:
        for sock in socks:
            sock.close()


async def test_slow_evaluations_move_off_the_front_loop() -> None:
    """A front evaluates on its loop while evaluations are quick, and in its thread once they
    take longer than INLINE_EVALUATION_S on average (so it keeps serving meanwhile)."""
    import asyncio
    import threading
    import time

    from ian.api import front_wire as wire
    from ian.api.front_process import INLINE_EVALUATION_S, Front, Head

    threads: list[str] = []

    def slow_evaluation(body: bytes) -> wire.Evaluated:
        threads.append(threading.current_thread().name)
        time.sleep(2 * INLINE_EVALUATION_S)  # an evaluator that takes its time
        return ("ok", (1.0, 0.0, 0.0, None, None))

    ours, theirs = socket.socketpair()
    listener, handoff = socket.socket(), socket.socket()
    front = Front(listener, ours, handoff, 1024, slow_evaluation)
    reader, front._writer = await asyncio.open_unix_connection(sock=ours)
    answers = asyncio.create_task(front._read_answers(reader))
    node_reader, node_writer = await asyncio.open_unix_connection(sock=theirs)

    async def node() -> None:  # asks for every evaluation, then answers 200
        while True:
            (size,) = wire.HEADER.unpack(await node_reader.readexactly(wire.HEADER.size))
            ask = wire.decode_ask(await node_reader.readexactly(size))
            status = wire.EVALUATE if ask[0] == wire.REQUEST else 200
            node_writer.write(wire.encode((ask[1], status, [], b"")))

    serving = asyncio.create_task(node())
    try:
        for _ in range(12):
            answer = await front._ask("127.0.0.1", Head(2, False, None, None), b"{}")
            assert answer[1] == 200
    finally:
        serving.cancel()
        answers.cancel()
        for sock in (listener, handoff, theirs):
            sock.close()
        node_writer.close()
    main = threading.current_thread().name
    assert threads[0] == main
    assert threads[-1] != main and threads[-1].startswith("ian-front-evaluation")


async def test_a_front_gone_before_its_evaluation_leaves_the_counters_adding_up(
    tmp_path: Path,
) -> None:
    """The node admits a request, asks the front to evaluate it, and the front's channel ends
    before the evaluation comes (the front died): that request is counted as refused
    (unavailable), not left received and never settled."""
    from anyio.abc import UNIXSocketStream

    from ian.api import front_wire as wire

    async with running(tmp_path, "a", api_workers=1) as (node, url):
        total = node.intake.total
        received, rejected = total.received, total.rejected
        front_end, node_end = socket.socketpair()
        channel = await UNIXSocketStream.from_socket(node_end)
        async with anyio.create_task_group() as tg:

            async def serve() -> None:  # as the node serves a front's channel, to its end
                await node_fronts(node)._serve_channel(channel, tg)
                tg.cancel_scope.cancel()

            tg.start_soon(serve)
            ask = (wire.REQUEST, 1, "127.0.0.1", None, None, json.dumps(plain_body(1)).encode())
            frame = wire.encode((*ask, None))
            await anyio.to_thread.run_sync(front_end.sendall, frame)
            whole = socket.MSG_WAITALL
            header = await anyio.to_thread.run_sync(front_end.recv, wire.HEADER.size, whole)
            (size,) = wire.HEADER.unpack(header)
            answer = wire.decode_answer(await anyio.to_thread.run_sync(front_end.recv, size, whole))
            assert answer[:2] == (1, wire.EVALUATE)  # admitted, to be evaluated by the front
            assert (total.received, total.rejected) == (received + 1, rejected)
            front_end.close()  # the front dies before it answers
        await channel.aclose()
        assert (total.received, total.rejected) == (received + 1, rejected + 1)
        assert total.accepted == 0
        async with httpx.AsyncClient(base_url=url) as client:
            metrics = (await client.get("/metrics")).text
        assert 'ian_contributions_rejected_total{reason="unavailable"} 1.0' in metrics
