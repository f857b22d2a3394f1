"""`ian status` against a node serving real HTTP in the test's event loop.

The node runs (uvicorn on port 0, sequencer, checkpoints) in the test's task group; each `ian`
invocation runs in a worker thread through main(), the CLI's real error boundary.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from ian.config import load_settings
from ian.node import Node

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"


@pytest.fixture
async def live_node(tmp_path: Path, packs):
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "data",
            "api_host": "127.0.0.1",
            "api_port": 0,
            "p2p_port": 0,
            "ws_port": 0,
        },
    )
    node = Node.open(settings)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(
            lambda task_status: node.run(handle_signals=False, task_status=task_status)
        )
        url = "http://{}:{}".format(*bound.api)
        async with httpx.AsyncClient(base_url=url) as c:
            for n in range(2):
                r = await c.post("/api/v1/contribute", json=packs.body(n))
                assert r.json()["accepted"] is True
            r = await c.post("/api/v1/contribute", json=packs.body(9, params=packs.rejected_params))
            assert r.json()["accepted"] is False
        yield node, url
        node.request_stop()


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith("  fix: ") for line in lines[1:]), err
    return lines[0]


async def test_status_json(live_node, ian) -> None:
    node, url = live_node
    code, out, err = await ian.off_loop("status", "--json", "--node-url", url)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["node_id"] == node.identity.node_id
    assert doc["height"] == 2 and doc["sync_lag"] == 0
    assert doc["contributions"] == {"received": 3, "accepted": 2, "rejected": 1}
    assert doc["goals"][DEMO]["log_size"] == 2
    assert doc["goals"][DEMO]["log_root"] == node.state.goals[DEMO].mmr.root().hex()


async def test_status_goal_json_via_env_url(live_node, ian, monkeypatch) -> None:
    _node, url = live_node
    monkeypatch.setenv("IAN_NODE_URL", url + "/")
    code, out, err = await ian.off_loop("status", DEMO, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["goal_id"] == DEMO and doc["log_size"] == 2
    assert doc["active_policy"]["log_index"] == 0  # equal scores: the earlier entry leads


async def test_status_text(live_node, ian) -> None:
    node, url = live_node
    code, out, err = await ian.off_loop("status", "--node-url", url)
    assert code == 0, err
    assert node.identity.node_id in out
    assert "height 2" in out
    assert "contributions: 3 received, 2 accepted, 1 rejected" in out
    assert DEMO in out

    code, out, err = await ian.off_loop("status", DEMO, "--node-url", url)
    assert code == 0, err
    assert f"log size 2  root {node.state.goals[DEMO].mmr.root().hex()}" in out
    assert "leader: #0" in out


async def test_status_unknown_goal_is_exit_7(live_node, ian) -> None:
    _, url = live_node
    code, out, err = await ian.off_loop("status", "NO_SUCH_GOAL", "--node-url", url)
    assert code == 7
    assert out == ""
    line = one_error_line(err)
    assert "404" in line and "NO_SUCH_GOAL" in line


async def test_status_against_a_dead_url_is_exit_6(ian) -> None:
    with socket.socket() as s:  # bound but not listening: connection refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, out, err = await ian.off_loop("status", "--node-url", url)
    assert code == 6
    assert out == ""
    line = one_error_line(err)
    assert "cannot reach the node" in line and url in line
