"""`ian node resync` and `ian node log-level` against real nodes on loopback."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.integration

DEMO = "DEMO_TRADING_AGENT"
ACCEPTED = {"strategy": "breakout", "lookback": 20, "threshold": 0.01, "position_size": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit(url: str, n: int, start: int = 0) -> None:
    with httpx.Client(timeout=10) as client:
        for i in range(start, start + n):
            params = json.dumps({**ACCEPTED, "nonce": i}).encode()
            body = {
                "goal_id": DEMO,
                "contributor_id": f"c{i}",
                "agent_pack": {"version": "1", "parameters": base64.b64encode(params).decode()},
            }
            r = client.post(f"{url}/api/v1/contribute", json=body)
            assert r.status_code == 200 and r.json()["accepted"], r.text


def status(url: str) -> dict:
    return httpx.get(f"{url}/api/v1/status", timeout=5).json()


def wait_until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def network(ian_nodes):
    p2p = free_port()
    seq = ian_nodes.start(env={"IAN_P2P_PORT": str(p2p)})
    seeds = {"IAN_SEED_NODES": f"tcp://127.0.0.1:{p2p}"}
    follower = ian_nodes.start(env=seeds)
    submit(seq.api_url, 3)
    wait_until(lambda: status(follower.api_url)["height"] == 3)
    return seq, follower, lambda: ian_nodes.start(data_dir=follower.data_dir, env=seeds)


def test_online_resync_refetches_the_chain(network, ian) -> None:
    seq, follower, _ = network
    result = ian(
        "node", "resync", "--yes", "--json",
        "--data-dir", str(follower.data_dir), "--node-url", follower.api_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["mode"] == "online" and doc["blocks_removed"] == 3
    assert "online via" in result.stderr
    wait_until(lambda: status(follower.api_url)["height"] == 3)
    ours, theirs = status(follower.api_url), status(seq.api_url)
    assert ours["goals"][DEMO]["log_root"] == theirs["goals"][DEMO]["log_root"]

    # The sequencer's chain is the source: refused online (7) ...
    refused = ian("node", "resync", "--yes", "--data-dir", str(seq.data_dir), "--node-url",
                  seq.api_url)  # fmt: skip
    assert refused.returncode == 7 and "sequencer" in refused.stderr


def test_offline_resync_keeps_the_old_store_and_catches_up(network, ian) -> None:
    seq, follower, restart_follower = network
    assert follower.terminate() == 0
    submit(seq.api_url, 2, start=10)
    result = ian("node", "resync", "--yes", "--json", "--data-dir", str(follower.data_dir))
    assert result.returncode == 0, result.stderr
    aside = json.loads(result.stdout)["store_moved_to"]
    assert (follower.data_dir / aside.split("/")[-1] / "chain.sqlite").exists()
    assert not (follower.data_dir / "node_state.json").exists()

    again = restart_follower()
    wait_until(lambda: status(again.api_url)["height"] == 5)

    # ... and offline, where only the configuration tells the roles apart.
    assert seq.terminate() == 0
    refused = ian("node", "resync", "--yes", "--data-dir", str(seq.data_dir))
    assert refused.returncode == 7 and "sequencer" in refused.stderr
    assert (seq.data_dir / "chain.sqlite").exists()


def test_log_level_changes_live(ian_nodes, ian) -> None:
    node = ian_nodes.start()
    result = ian("node", "log-level", "debug", "--data-dir", str(node.data_dir), "--node-url",
                 node.api_url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "log level is now DEBUG" in result.stdout
    bad = ian("node", "log-level", "LOUD", "--data-dir", str(node.data_dir))
    assert bad.returncode == 2 and "unknown log level" in bad.stderr
    assert node.terminate() == 0
    offline = ian("node", "log-level", "INFO", "--data-dir", str(node.data_dir))
    assert offline.returncode == 6
