"""`ian events`: the URL it derives, its one-line format, its exit codes, and a real
`ian events --json` process tailing a node that serves the stream in the test's event loop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import ByteReceiveStream, Process
from tests.support.nodes import IAN, clean_env

from ian.config import load_settings
from ian.node import Node
from ian_ops.cli import EXIT_DATA_DIR, EXIT_OK, EXIT_REJECTED, EXIT_UNREACHABLE, EXIT_USAGE
from ian_ops.events_cmd import format_event, stream_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- pure parts ----------------------------------------------------------------------------------


def test_the_stream_url_is_the_node_host_and_the_ws_port() -> None:
    settings = load_settings(env={}, overrides={"ws_port": 9123})
    assert stream_url("http://10.1.2.3:8000", settings) == "ws://10.1.2.3:9123/events"
    assert stream_url("https://node.example/", settings) == "wss://node.example:9123/events"
    assert stream_url("http://[::1]:8000", settings) == "ws://[::1]:9123/events"


def test_one_line_per_event() -> None:
    line = format_event(
        {
            "topic": "block",
            "type": "applied",
            "ts": 0,
            "seq": 5,
            "data": {"height": 3, "hash": "ab" * 32, "entries": 2, "goals": {"G": {"log_size": 9}}},
        }
    )
    assert "#5 block/applied" in line and "height 3" in line and "G size 9" in line
    assert "\n" not in line
    rejected = format_event(
        {
            "topic": "contribution",
            "type": "rejected",
            "ts": 0,
            "seq": 6,
            "data": {"goal_id": "G", "rejection_type": "threshold", "reason": "too risky"},
        }
    )
    assert "contribution/rejected" in rejected and "(threshold) too risky" in rejected
    state = format_event(
        {
            "topic": "sync",
            "type": "state",
            "ts": 0,
            "seq": 7,
            "data": {"state": "SYNCED", "previous": "SYNCING", "height": 4, "network_height": 4},
        }
    )
    assert "SYNCED (was SYNCING) height 4/4" in state
    peer = format_event(
        {
            "topic": "peer",
            "type": "banned",
            "ts": 0,
            "seq": 8,
            "data": {"node_id": "cd" * 20, "address": "tcp://h:1", "reason": "spam"},
        }
    )
    assert "peer/banned" in peer and "tcp://h:1 (spam)" in peer


def test_unreachable_stream_exits_6(monkeypatch: pytest.MonkeyPatch, ian) -> None:
    monkeypatch.setenv("IAN_API_TOKEN", "t")
    url = f"ws://127.0.0.1:{free_port()}/events"
    code, _out, err = ian("events", "--ws-url", url)
    assert code == EXIT_UNREACHABLE
    assert "cannot reach the event stream" in err and "Traceback" not in err


def test_unknown_topic_and_missing_token_are_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ian
) -> None:
    monkeypatch.setenv("IAN_API_TOKEN", "t")
    code, _out, err = ian("events", "--topics", "block,weather")
    assert code == EXIT_USAGE
    assert "weather" in err
    monkeypatch.delenv("IAN_API_TOKEN")
    code, _out, err = ian("events", "--data-dir", str(tmp_path / "none"))
    assert code == EXIT_DATA_DIR
    assert "no API token" in err


# -- against a live node -------------------------------------------------------------------------


@pytest.fixture
async def live_node(tmp_path: Path) -> AsyncIterator[tuple[Node, str, int]]:
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "data",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_host": "127.0.0.1",
            "p2p_port": 0,
            "ws_port": 0,
        },
    )
    node = Node.open(settings)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(
            lambda task_status: node.run(handle_signals=False, task_status=task_status)
        )
        yield node, "http://{}:{}".format(*bound.api), bound.ws[1]
        node.request_stop()


class Lines:
    """Line reader over a process pipe."""

    def __init__(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.buf = b""

    async def line(self) -> str:
        with anyio.fail_after(20):
            while b"\n" not in self.buf:
                self.buf += await self.stream.receive()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def events_env(node: Node, node_url: str, ws_port: int, **extra: str) -> dict[str, str]:
    """The environment of a real `ian events` process following ``node``."""
    return clean_env(
        {
            "IAN_DATA_DIR": str(node.settings.data_dir),  # the token comes from api_token
            "IAN_NODE_URL": node_url,
            "IAN_WS_PORT": str(ws_port),  # the URL is derived from these two
            **extra,
        }
    )


@pytest.mark.anyio
async def test_ian_events_json_prints_a_block_event_after_a_contribution(live_node, packs) -> None:
    node, url, ws_port = live_node
    proc: Process = await anyio.open_process(
        [str(IAN), "events", "--json", "--topics", "block"],
        env=events_env(node, url, ws_port),
        stdin=subprocess.DEVNULL,
    )
    async with proc:
        try:
            err = Lines(proc.stderr)
            first = await err.line()
            assert first.startswith("subscribed to block at ws://127.0.0.1:"), first
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post("/api/v1/contribute", json=packs.body(1))
                assert r.json()["accepted"] is True, r.text
            event = json.loads(await Lines(proc.stdout).line())
            assert (event["topic"], event["type"]) == ("block", "applied")
            assert event["data"]["height"] == 1 and event["data"]["entries"] == 1
            assert set(event) == {"topic", "type", "ts", "seq", "data"}
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            with anyio.fail_after(20):
                assert await proc.wait() == EXIT_OK
        finally:
            if proc.returncode is None:
                proc.kill()


@pytest.mark.anyio
async def test_ian_events_with_a_wrong_token_exits_7(live_node) -> None:
    node, url, ws_port = live_node
    with anyio.fail_after(30):
        result = await anyio.run_process(
            [str(IAN), "events"],
            env=events_env(node, url, ws_port, IAN_API_TOKEN="wrong"),
            check=False,
        )
    assert result.returncode == EXIT_REJECTED, result.stderr
    assert b"the token is wrong" in result.stderr
