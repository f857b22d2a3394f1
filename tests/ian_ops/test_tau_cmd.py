"""`ian tau status / reset / serve-mock` over real loopback sockets.

``status`` and ``reset`` talk to a real node app served by uvicorn on a free loopback port (in a
thread), with a real Tau bridge attached; ``serve-mock`` and the exit codes are checked by
running ``python -m ian_ops`` as a subprocess.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from ian.api.app import create_app
from ian.api.routes.tau import router
from ian.config import load_settings
from ian.errors import NodeRefusedError
from ian.node import Node
from ian.tau import TauBridge
from ian_ops.cli import EXIT_CONFIG, EXIT_REJECTED, EXIT_UNREACHABLE, exit_code_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveNode:
    url: str
    data_dir: Path
    node: Node
    bridge: TauBridge


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[LiveNode]:
    """A node's API (with the Tau router) served over HTTP on loopback; Tau is a closed port."""
    settings = load_settings(
        env={},
        overrides={
            "data_dir": tmp_path / "node",
            "api_port": 0,
            "p2p_port": 0,
            "ws_port": 0,
            "tau_endpoint": f"tcp://127.0.0.1:{free_port()}",
        },
    )
    node = Node.open(settings)
    bridge = TauBridge(settings, node.identity, node.datadir.store_file, node.metrics, roots=dict)
    node.tau = bridge  # type: ignore[attr-defined]
    api = create_app(node)
    if not any(getattr(r, "path", None) == "/api/v1/tau" for r in api.routes):
        api.include_router(router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue here until uvicorn accepts: no start-up wait needed
    server = uvicorn.Server(
        uvicorn.Config(api, log_config=None, access_log=False, lifespan="off", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield LiveNode(f"http://127.0.0.1:{sock.getsockname()[1]}", settings.data_dir, node, bridge)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        bridge.close()
        node.close()


def open_breaker(bridge: TauBridge) -> None:
    for _ in range(5):
        assert bridge.breaker.allow()
        bridge.breaker.failure()


# -- status ---------------------------------------------------------------------------------------


def test_status_json(live_node: LiveNode, ian) -> None:
    result = ian("tau", "status", "--node-url", live_node.url, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["enabled"] is True
    assert doc["breaker_state"] == "CLOSED"
    assert doc["endpoint"] == live_node.bridge.status()["endpoint"]


def test_status_for_humans_explains_an_open_breaker(live_node: LiveNode, ian) -> None:
    open_breaker(live_node.bridge)
    result = ian("tau", "status", "--node-url", live_node.url, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "breaker OPEN" in result.stdout
    assert "last commit: none yet" in result.stdout
    assert "`ian tau reset` closes it now" in result.stdout


def test_status_of_a_node_without_tau(live_node: LiveNode, tmp_path: Path, ian) -> None:
    settings = load_settings(env={}, overrides={"data_dir": tmp_path / "off"})
    live_node.node.tau = TauBridge(  # type: ignore[attr-defined]
        settings, live_node.node.identity, tmp_path / "off.sqlite", roots=dict
    )
    result = ian("tau", "status", "--node-url", live_node.url)
    assert result.exit_code == 0, result.output
    assert "Tau bridge: off" in result.stdout
    assert "IAN_TAU_ENDPOINT" in result.stdout
    assert not (tmp_path / "off.sqlite").exists()


def test_status_of_a_dead_node_exits_6(tmp_path: Path, ian) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = ian("tau", "status", "--node-url", url)
    assert result.exit_code == EXIT_UNREACHABLE == 6, result.stderr
    assert result.stderr.startswith(f"error: cannot reach the node at {url}")
    assert "Traceback" not in result.stderr


# -- reset ----------------------------------------------------------------------------------------


def test_reset_with_the_data_dir_token(live_node: LiveNode, ian) -> None:
    open_breaker(live_node.bridge)
    result = ian("tau", "reset", "--node-url", live_node.url, "--data-dir", str(live_node.data_dir))
    assert result.exit_code == 0, result.output
    assert "circuit breaker OPEN -> CLOSED (online" in result.stdout
    assert live_node.bridge.breaker_state == "CLOSED"


def test_reset_with_a_wrong_env_token_is_rejected(live_node: LiveNode, ian) -> None:
    result = ian(
        "tau", "reset", "--node-url", live_node.url, env={"IAN_API_TOKEN": "not-the-token"}
    )
    assert isinstance(result.exception, NodeRefusedError)
    assert exit_code_for(result.exception) == EXIT_REJECTED
    assert "403" in result.exception.message


def test_reset_without_any_token(tmp_path: Path, ian) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = ian("tau", "reset", "--data-dir", str(empty))
    assert result.exit_code == EXIT_CONFIG
    assert "no admin token" in result.output


# -- serve-mock -----------------------------------------------------------------------------------


def test_serve_mock_answers_a_line_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ian_ops", "tau", "serve-mock", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("mock Tau node listening on tcp://127.0.0.1:"), first
        port = int(first.split("tcp://127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b'sendtx {"type":"IAN_LOG_COMMIT","goal_id":"G","log_size":1}\r\n')
            reply = conn.makefile("rb").readline()
        assert reply.startswith(b"SUCCESS ") and reply.endswith(b"\r\n")
        assert len(reply.split()[1]) == 64
        event = proc.stdout.readline()
        assert "goal=G log_size=1 -> SUCCESS" in event
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_serve_mock_refuses_a_busy_port(ian) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = ian("tau", "serve-mock", "--port", str(port))
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_serve_mock_refuses_an_unknown_mode(ian) -> None:
    result = ian("tau", "serve-mock", "--mode", "sometimes")
    assert result.exit_code == 2
    assert "unknown mode 'sometimes'" in result.output
