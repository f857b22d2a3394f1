"""The WebSocket event stream over real loopback sockets: a real server on port 0 and the real
``websockets`` client; first against a bare bus, then against a running node fed through its
HTTP API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ian.api import ws as ws_mod
from ian.api.ws import EventStreamServer
from ian.config import load_settings
from ian.events import EventBus
from ian.node import Node

pytestmark = pytest.mark.anyio

TOKEN = "stream-token"


@dataclass
class Stream:
    server: EventStreamServer
    bus: EventBus
    url: str

    def subscribe_msg(self, topics: list[str] | None = None, token: str | None = TOKEN) -> str:
        doc: dict[str, Any] = {"type": "subscribe", "token": token}
        if topics is not None:
            doc["topics"] = topics
        return json.dumps(doc)


async def start_stream(
    tg: anyio.abc.TaskGroup, *, token: str | None = TOKEN, queue_size: int = 64, **kw: Any
) -> Stream:
    bus = EventBus(queue_size=queue_size)
    server = EventStreamServer(bus, lambda: token, "127.0.0.1", 0, **kw)
    host, port = await tg.start(server.serve)
    return Stream(server, bus, f"ws://{host}:{port}/events")


@pytest.fixture
async def stream() -> AsyncIterator[Stream]:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, subscribe_timeout_s=0.5)
        yield s
        await s.server.shutdown()


async def subscribed(s: Stream, topics: list[str] | None = None) -> ClientConnection:
    ws = await connect(s.url)
    await ws.send(s.subscribe_msg(topics))
    ack = json.loads(await recv(ws))
    assert ack["type"] == "subscribed", ack
    return ws


async def recv(ws: ClientConnection) -> str | bytes:
    with anyio.fail_after(10):
        return await ws.recv()


async def refused(ws: ClientConnection) -> tuple[dict[str, Any], int | None, str]:
    """The error message the server sent, then its close code and reason."""
    error = json.loads(await recv(ws))
    assert error["type"] == "error", error
    with pytest.raises(ConnectionClosed) as info:
        await recv(ws)
    rcvd = info.value.rcvd
    assert rcvd is not None
    return error["error"], rcvd.code, rcvd.reason


# -- authentication and protocol errors ---------------------------------------------------------


async def test_no_subscribe_within_the_timeout_is_closed(stream: Stream) -> None:
    async with connect(stream.url) as ws:
        error, code, reason = await refused(ws)
    assert error["code"] == "subscribe_timeout"
    assert code == ws_mod.SUBSCRIBE_TIMEOUT and "no subscribe message" in reason


@pytest.mark.parametrize(
    ("token", "code", "error_code"),
    [("wrong", ws_mod.FORBIDDEN, "forbidden"), (None, ws_mod.UNAUTHORIZED, "unauthorized")],
)
async def test_a_wrong_or_missing_token_is_closed(
    stream: Stream, token: str | None, code: int, error_code: str
) -> None:
    async with connect(stream.url) as ws:
        await ws.send(stream.subscribe_msg(["block"], token=token))
        error, got, _ = await refused(ws)
    assert (error["code"], got) == (error_code, code)
    assert stream.bus.subscriber_count == 0


async def test_a_node_without_any_token_refuses_everyone() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, token=None)
        async with connect(s.url) as ws:
            await ws.send(s.subscribe_msg(["block"], token="anything"))
            error, code, _ = await refused(ws)
        await s.server.shutdown()
    assert (error["code"], code) == ("forbidden", ws_mod.FORBIDDEN)
    assert "no API token" in error["message"]


async def test_unknown_topic_gets_an_error_and_a_close(stream: Stream) -> None:
    async with connect(stream.url) as ws:
        await ws.send(stream.subscribe_msg(["block", "weather"]))
        error, code, _ = await refused(ws)
    assert (error["code"], code) == ("unknown_topic", ws_mod.BAD_REQUEST)
    assert "weather" in error["message"] and "contribution" in error["message"]


@pytest.mark.parametrize("message", ["{not json", '["subscribe"]', b"\x00binary"])
async def test_bad_messages_are_closed(stream: Stream, message: str | bytes) -> None:
    async with connect(stream.url) as ws:
        await ws.send(message)
        error, code, _ = await refused(ws)
    assert (error["code"], code) == ("bad_request", ws_mod.BAD_REQUEST)


async def test_other_paths_are_not_found(stream: Stream) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(stream.url.replace("/events", "/other"))
    assert info.value.response.status_code == 404


async def test_clients_over_the_limit_are_refused_after_authenticating() -> None:
    """A slot is taken only once the token checked out: over the limit, an authenticated
    client is closed 1013; the slot frees when the first client leaves."""
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, max_clients=1)
        first = await subscribed(s)
        async with connect(s.url) as ws:
            await ws.send(s.subscribe_msg(["block"]))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == ws_mod.TOO_MANY_CLIENTS
        await first.close()
        await first.wait_closed()
        # The slot frees when the server's handler has finished with the first client, a moment
        # after the client's close: retry like a real client would.
        for _ in range(500):
            try:
                second = await subscribed(s)
                break
            except ConnectionClosed:
                await anyio.sleep(0.01)
        else:
            pytest.fail("the first client's slot was never freed")
        await second.close()
        await s.server.shutdown()


async def test_idle_connections_without_a_token_cannot_lock_out_a_client_with_one() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, max_pending=4, max_per_ip=100)
        idle = [await connect(s.url) for _ in range(4)]  # never subscribe
        with pytest.raises(InvalidStatus) as info:
            await connect(s.url)
        assert info.value.response.status_code == 503  # a fifth anonymous one waits
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(s.url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topics": ["block"]}))
            ack = json.loads(await ws.recv())
            assert ack["type"] == "subscribed" and ack["topics"] == ["block"]
        for ws in idle:
            await ws.close()
        await s.server.shutdown()


async def test_one_address_holds_at_most_max_per_ip_connections() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, max_per_ip=2)
        held = [await connect(s.url) for _ in range(2)]
        with pytest.raises(InvalidStatus) as info:
            await connect(s.url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        assert info.value.response.status_code == 429
        for ws in held:
            await ws.close()
        await s.server.shutdown()


async def test_a_banned_address_is_refused_before_the_upgrade() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, banned=lambda ip: "flooding" if ip == "127.0.0.1" else None)
        with pytest.raises(InvalidStatus) as info:
            await connect(s.url)
        assert info.value.response.status_code == 403
        assert b"flooding" in info.value.response.body
        await s.server.shutdown()


# -- streaming -----------------------------------------------------------------------------------


async def test_subscribers_receive_their_topics_in_order(stream: Stream) -> None:
    blocks = await subscribed(stream, ["block"])
    everything = await subscribed(stream)  # no topics = all
    stream.bus.publish("peer", "connected", {"node_id": "x"})
    stream.bus.publish("block", "applied", {"height": 1})
    first = json.loads(await recv(blocks))
    assert (first["topic"], first["type"], first["seq"]) == ("block", "applied", 2)
    assert set(first) == {"topic", "type", "ts", "seq", "data"}
    got = [json.loads(await recv(everything)) for _ in range(2)]
    assert [(e["topic"], e["seq"]) for e in got] == [("peer", 1), ("block", 2)]
    await blocks.close()
    await everything.close()


async def test_a_slow_client_is_dropped_while_a_fast_one_keeps_receiving() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg, queue_size=8)
        slow = await subscribed(s, ["block"])  # never reads until it has been dropped
        fast = await subscribed(s, ["block"])
        pad = "x" * 64 * 1024
        sent = 0
        while s.bus.subscriber_count == 2:  # the bus drops inside publish(), synchronously
            assert sent < 5000, "the slow client was never dropped"
            sent += 1
            s.bus.publish("block", "applied", {"height": sent, "pad": pad})
            event = json.loads(await recv(fast))
            assert event["data"]["height"] == sent
        assert s.bus.dropped == 1
        s.bus.publish("block", "applied", {"height": sent + 1})
        assert json.loads(await recv(fast))["data"]["height"] == sent + 1
        # The slow client gets what was already on the wire, then the close frame.
        heights = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                heights.append(json.loads(await recv(slow))["data"]["height"])
        assert heights == list(range(1, len(heights) + 1)) and len(heights) < sent
        assert info.value.rcvd is not None and info.value.rcvd.code == ws_mod.TOO_SLOW
        assert "too slow" in info.value.rcvd.reason
        await fast.close()
        await s.server.shutdown()


async def test_shutdown_closes_streams_with_going_away() -> None:
    async with anyio.create_task_group() as tg:
        s = await start_stream(tg)
        client = await subscribed(s, ["block"])
        s.bus.close()
        await s.server.shutdown()
        with pytest.raises(ConnectionClosed) as info:
            await recv(client)
    assert info.value.rcvd is not None and info.value.rcvd.code == ws_mod.GOING_AWAY
    assert info.value.rcvd.reason == "the node is shutting down"


# -- a running node ------------------------------------------------------------------------------


@pytest.fixture
async def live_node(tmp_path: Path) -> AsyncIterator[tuple[Node, str, str]]:
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "data",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_host": "127.0.0.1",
            "p2p_port": 0,
            "ws_port": 0,
            "api_token": TOKEN,
        },
    )
    node = Node.open(settings)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(
            lambda task_status: node.run(handle_signals=False, task_status=task_status)
        )
        yield node, "http://{}:{}".format(*bound.api), "ws://{}:{}/events".format(*bound.ws)
        node.request_stop()


async def test_contributions_through_the_api_reach_subscribers(live_node, packs) -> None:
    node, api_url, ws_url = live_node
    s = Stream(server=None, bus=node.events, url=ws_url)  # type: ignore[arg-type]
    both = await subscribed(s, ["block", "contribution"])
    blocks_only = await subscribed(s, ["block"])
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        r = await http.post("/api/v1/contribute", json=packs.body(1))
        assert r.json()["accepted"] is True, r.text
        r2 = await http.post("/api/v1/contribute", json=packs.body(2, params=packs.rejected_params))
        assert r2.json()["accepted"] is False
    accepted, block, rejected = [json.loads(await recv(both)) for _ in range(3)]
    assert (accepted["topic"], accepted["type"]) == ("contribution", "accepted")
    assert accepted["data"]["log_index"] == r.json()["log_index"] == 0
    assert accepted["data"]["contribution_hash"] == r.json()["contribution_hash"]
    assert accepted["data"]["score"] == r.json()["score"]
    assert "agent_pack" not in accepted["data"] and "parameters" not in accepted["data"]
    assert (block["topic"], block["type"]) == ("block", "applied")
    assert block["data"]["height"] == 1 and block["data"]["entries"] == 1
    assert block["data"]["goals"][packs.demo_goal]["log_size"] == 1
    assert (rejected["topic"], rejected["type"]) == ("contribution", "rejected")
    assert rejected["data"]["rejection_type"] == r2.json()["rejection_type"]
    assert accepted["seq"] < block["seq"] < rejected["seq"]
    only = json.loads(await recv(blocks_only))
    assert only["topic"] == "block" and only["seq"] == block["seq"]
    # Nothing else is queued for the block-only client: the next thing it sees is the next block.
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        r3 = await http.post("/api/v1/contribute", json=packs.body(3))
        assert r3.json()["accepted"] is True
    nxt = json.loads(await recv(blocks_only))
    assert (nxt["topic"], nxt["data"]["height"]) == ("block", 2)
    await both.close()
    await blocks_only.close()


async def test_the_node_stream_requires_the_node_token(live_node) -> None:
    _node, _api, ws_url = live_node
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "token": "nope", "topics": ["block"]}))
        error, code, _ = await refused(ws)
    assert (error["code"], code) == ("forbidden", ws_mod.FORBIDDEN)
