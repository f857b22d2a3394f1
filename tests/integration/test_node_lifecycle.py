"""A real `ian node run`: serve, persist, stop cleanly, survive kill -9, refuse what it must."""

from __future__ import annotations

import base64
import json
import signal
import socket
import sqlite3

import anyio
import httpx
import pytest

from ian.storage.lock import is_locked
from ian.storage.store import Store

pytestmark = pytest.mark.integration

DEMO = "DEMO_TRADING_AGENT"
ACCEPTED = {"strategy": "momentum", "lookback": 2, "threshold": 0.01, "position_size": 0.1}
REJECTED = {"strategy": "momentum", "lookback": 20, "threshold": 0.01, "position_size": 1.0}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def body(n: int, params: dict | None = None, contributor: str | None = None) -> dict:
    return {
        "goal_id": DEMO,
        "agent_pack": {
            "version": "1.0",
            "parameters": base64.b64encode(json.dumps(params or ACCEPTED).encode()).decode(),
            "metadata": {"n": n},
        },
        "contributor_id": contributor or f"contributor-{n}",
        "seed": n,
    }


def submit_some(url: str, n: int) -> list[dict]:
    answers = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for i in range(n):
            r = c.post("/api/v1/contribute", json=body(i))
            assert r.status_code == 200, r.text
            answers.append(r.json())
        r = c.post("/api/v1/contribute", json=body(n, REJECTED))
        assert r.status_code == 200 and r.json()["rejection_type"] == "threshold"
    return answers


def snapshot(url: str) -> dict:
    """What must survive a restart: chain head, per-goal roots, leaderboard, log."""
    with httpx.Client(base_url=url, timeout=10) as c:
        status = c.get("/api/v1/status").json()
        return {
            "height": status["height"],
            "head_hash": status["head_hash"],
            "goals": {
                gid: {
                    k: g[k]
                    for k in ("log_size", "log_root", "leaderboard_size", "leaderboard_root")
                }
                for gid, g in status["goals"].items()
            },
            "leaderboard": c.get(f"/api/v1/leaderboard/{DEMO}").json(),
            "log": c.get(f"/api/v1/log/{DEMO}?limit=1000").json(),
        }


def read_state(data_dir) -> dict:
    return json.loads((data_dir / "node_state.json").read_text())


def assert_json_logs(node) -> None:
    lines = [line for line in node.stderr_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert record["level"] in LEVELS, line
        assert record["msg"] and record["logger"] and record["ts"], line
    assert "Traceback" not in node.stderr_text()


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """The CLI's error boundary: `error: ...` on one line (plus an optional fix line)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith(("error: ", "  fix: ")) for line in lines), stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, stderr)
    return errors[0]


def test_sigterm_stops_cleanly_and_a_restart_serves_the_same_state(ian_nodes) -> None:
    node = ian_nodes.start()
    assert node.wait_for_msg("serving the API")["level"] == "INFO"
    answers = submit_some(node.api_url, 4)
    assert [a["log_index"] for a in answers] == [0, 1, 2, 3]
    before = snapshot(node.api_url)
    assert before["height"] == 4

    # SIGHUP reloads and keeps serving.
    node.signal(signal.SIGHUP)
    node.wait_for_msg("reloaded certificate")
    assert httpx.get(f"{node.api_url}/health").text == "OK"

    assert node.terminate(timeout=10) == 0
    assert node.has_msg("received SIGTERM")
    assert node.has_msg("stopped cleanly")
    assert_json_logs(node)
    assert not is_locked(node.data_dir / "node.lock")
    state = read_state(node.data_dir)
    assert state["clean_shutdown"] is True
    assert state["height"] == before["height"]
    assert state["head_hash"] == before["head_hash"]
    for gid, roots in before["goals"].items():
        for key, value in roots.items():
            assert state["goals"][gid][key] == value, (gid, key)

    again = ian_nodes.start(data_dir=node.data_dir)
    assert snapshot(again.api_url) == before
    assert not again.has_msg("did not shut down cleanly")
    assert not again.has_msg("verifying the whole store")
    assert read_state(again.data_dir)["clean_shutdown"] is False  # running again
    assert again.terminate() == 0


def test_sigint_also_stops_cleanly(ian_nodes) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 1)
    node.signal(signal.SIGINT)
    assert node.proc.wait(10) == 0
    assert read_state(node.data_dir)["clean_shutdown"] is True


@pytest.mark.anyio
async def test_kill_9_mid_ingest_loses_no_accepted_contribution(ian_nodes, ian) -> None:
    node = ian_nodes.start(env={"IAN_CLIENT_BURST": "100000", "IAN_CLIENT_RATE": "100000"})
    accepted: dict[str, int] = {}  # contribution_hash -> log_index
    enough = anyio.Event()
    counter = iter(range(1_000_000))

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            n = next(counter)
            try:
                r = await client.post("/api/v1/contribute", json=body(n))
            except httpx.HTTPError:
                return  # the node is gone
            if r.status_code == 200 and r.json()["accepted"]:
                accepted[r.json()["contribution_hash"]] = r.json()["log_index"]
                if len(accepted) >= 60:
                    enough.set()

    limits = httpx.Limits(max_connections=32)
    async with (
        httpx.AsyncClient(base_url=node.api_url, timeout=10, limits=limits) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(16):
            tg.start_soon(worker, client)
        with anyio.fail_after(30):
            await enough.wait()
        node.proc.send_signal(signal.SIGKILL)  # mid-ingest: requests are in flight
    assert node.proc.wait(10) == -signal.SIGKILL
    assert read_state(node.data_dir)["clean_shutdown"] is False
    assert len(accepted) >= 60

    again = ian_nodes.start(data_dir=node.data_dir)
    assert again.has_msg("did not shut down cleanly")
    async with httpx.AsyncClient(base_url=again.api_url, timeout=10) as c:
        status = (await c.get("/api/v1/status")).json()
        entries: list[dict] = []
        start: int | None = 0
        while start is not None:
            page = (await c.get(f"/api/v1/log/{DEMO}?from={start}&limit=1000")).json()
            entries.extend(page["entries"])
            start = page["next"]
    logged = {e["contribution_hash"]: e["log_index"] for e in entries}
    assert len(entries) == status["goals"][DEMO]["log_size"] >= len(accepted)
    missing = {h: i for h, i in accepted.items() if logged.get(h) != i}
    assert not missing, f"{len(missing)} accepted contributions were lost"

    result = ian("node", "verify", "--json", "--data-dir", str(again.data_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["blocks"] == status["height"]
    assert report["roots"][DEMO]["log_root"] == status["goals"][DEMO]["log_root"]
    assert report["roots"][DEMO]["leaderboard_root"] == status["goals"][DEMO]["leaderboard_root"]
    assert again.terminate() == 0
    assert_json_logs(again)


def test_second_node_on_the_same_data_dir_is_refused(ian_nodes) -> None:
    first = ian_nodes.start()
    second = ian_nodes.spawn(data_dir=first.data_dir)
    code = second.proc.wait(20)
    second.wait_stderr_closed()
    assert code == 5, second.stderr_text()  # EXIT_LOCKED
    line = assert_one_line_error(second.stderr_text(), f"pid {first.pid}")
    assert "in use" in line or "lock" in line
    # The first node is unharmed.
    assert httpx.get(f"{first.api_url}/health").text == "OK"
    assert first.terminate() == 0


def test_node_verify_on_a_stopped_node(ian_nodes, ian) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 3)
    assert node.terminate() == 0
    state = read_state(node.data_dir)

    result = ian("node", "verify", "--json", "--data-dir", str(node.data_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problem"] is None
    assert report["blocks"] == state["height"] == 3
    assert report["contributions"] == 3
    assert report["roots"][DEMO]["log_root"] == state["goals"][DEMO]["log_root"]
    assert report["roots"][DEMO]["leaderboard_root"] == state["goals"][DEMO]["leaderboard_root"]

    conn = sqlite3.connect(node.data_dir / "chain.sqlite")
    with conn:
        conn.execute("UPDATE contributions SET score = score + 1 WHERE log_index = 1")
    conn.close()
    bad = ian("node", "verify", "--json", "--data-dir", str(node.data_dir))
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["first_bad_height"] == 2


def test_missing_node_state_means_full_verification(ian_nodes) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 3)
    before = snapshot(node.api_url)
    assert node.terminate() == 0
    (node.data_dir / "node_state.json").unlink()

    again = ian_nodes.start(data_dir=node.data_dir)
    warning = again.wait_for_msg("node_state.json is missing")
    assert warning["level"] == "WARNING"
    assert "verifying the whole store" in warning["msg"]
    again.wait_for_msg("store verified: 3 blocks, 3 contributions")
    assert snapshot(again.api_url) == before
    assert read_state(again.data_dir)["height"] == 3
    assert again.terminate() == 0


def _corrupt_block_3(data_dir) -> None:
    (data_dir / "node_state.json").unlink()
    conn = sqlite3.connect(data_dir / "chain.sqlite")
    with conn:
        conn.execute("UPDATE contributions SET contributor_id = 'mallory' WHERE log_index = 2")
    conn.close()


def test_corrupt_store_on_the_sequencer_is_refused_and_kept(ian_nodes) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 3)
    assert node.terminate() == 0
    _corrupt_block_3(node.data_dir)

    # No peer can give the sequencer's blocks back: refuse, keep a copy, point at the backup.
    again = ian_nodes.spawn(data_dir=node.data_dir)
    code = again.proc.wait(20)
    again.wait_stderr_closed()
    assert code != 0
    assert_one_line_error(_errors_only(again), "store damaged at block 3")
    assert "ian restore" in _errors_only(again)
    assert list(node.data_dir.glob("damaged-*.sqlite"))


def test_corrupt_store_on_a_follower_is_repaired(ian_nodes, ian) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 3)
    assert node.terminate() == 0
    _corrupt_block_3(node.data_dir)

    # A follower (its sequencer is another node) drops blocks from the bad one on and starts;
    # its peers would provide them again. (The data dir becomes a follower's: without the
    # one-authority genesis this node pinned when it ran alone.)
    (node.data_dir / "genesis.json").unlink()
    follower_env = {"IAN_SEQUENCER": "ab" * 20}
    again = ian_nodes.start(data_dir=node.data_dir, env=follower_env)
    damaged = again.wait_for_msg("store damaged at block 3")
    assert damaged["level"] == "ERROR"
    assert list(node.data_dir.glob("damaged-*.sqlite"))
    assert read_state(again.data_dir)["height"] == 2
    assert again.terminate() == 0
    verify = ian("node", "verify", "--json", "--data-dir", str(node.data_dir))
    assert verify.returncode == 0 and json.loads(verify.stdout)["blocks"] == 2


def _errors_only(node) -> str:
    """The non-JSON (CLI error boundary) lines of a node's stderr."""
    out = []
    for line in node.stderr_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            out.append(line)
    return "\n".join(out)


def test_newer_schema_store_is_refused_with_exit_4(ian_nodes) -> None:
    data_dir = ian_nodes.data_dir()
    data_dir.mkdir(mode=0o700)
    Store(data_dir / "chain.sqlite").close()
    conn = sqlite3.connect(data_dir / "chain.sqlite")
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()

    node = ian_nodes.spawn(data_dir=data_dir)
    code = node.proc.wait(20)
    node.wait_stderr_closed()
    assert code == 4, node.stderr_text()  # EXIT_DATA_DIR
    assert_one_line_error(_errors_only(node), "schema version 99")
    assert not is_locked(data_dir / "node.lock")


def test_status_cli_against_the_live_node(ian_nodes, ian) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 2)
    identity = json.loads((node.data_dir / "identity.json").read_text())

    result = ian("status", "--json", "--node-url", node.api_url)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["node_id"] == identity["node_id"]
    assert doc["height"] == 2
    assert doc["goals"][DEMO]["log_size"] == 2
    assert doc["contributions"] == {"received": 3, "accepted": 2, "rejected": 1}

    goal = ian("status", DEMO, "--json", env={"IAN_NODE_URL": node.api_url})
    assert goal.returncode == 0, goal.stderr
    assert json.loads(goal.stdout)["log_root"] == doc["goals"][DEMO]["log_root"]

    assert node.terminate() == 0


def test_status_cli_against_a_dead_url(ian) -> None:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        result = ian("status", "--node-url", url)
    assert result.returncode == 6, result.stderr  # EXIT_UNREACHABLE
    assert_one_line_error(result.stderr, "cannot reach the node", url)
    assert result.stdout == ""


@pytest.mark.anyio
async def test_sigterm_mid_ingest_answers_or_refuses_cleanly(ian_nodes) -> None:
    """Graceful stop under load: exit 0 in time, and every "accepted" answer is durable."""
    node = ian_nodes.start(env={"IAN_CLIENT_BURST": "100000", "IAN_CLIENT_RATE": "100000"})
    accepted: dict[str, int] = {}
    statuses: list[int] = []
    enough = anyio.Event()
    counter = iter(range(1_000_000))

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                r = await client.post("/api/v1/contribute", json=body(next(counter)))
            except httpx.HTTPError:
                return
            statuses.append(r.status_code)
            if r.status_code == 200 and r.json()["accepted"]:
                accepted[r.json()["contribution_hash"]] = r.json()["log_index"]
                if len(accepted) >= 40:
                    enough.set()
            elif r.status_code != 200:
                assert r.status_code == 503, r.text  # shutting down: never a 500
                return

    async with (
        httpx.AsyncClient(base_url=node.api_url, timeout=15) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(8):
            tg.start_soon(worker, client)
        with anyio.fail_after(30):
            await enough.wait()
        node.proc.send_signal(signal.SIGTERM)
    code = await anyio.to_thread.run_sync(node.proc.wait, 10)
    assert code == 0, node.stderr_text()
    node.wait_stderr_closed()
    assert node.has_msg("stopped cleanly")
    state = read_state(node.data_dir)
    assert state["clean_shutdown"] is True
    assert state["goals"][DEMO]["log_size"] >= len(accepted)

    conn = sqlite3.connect(f"file:{node.data_dir / 'chain.sqlite'}?mode=ro", uri=True)
    stored = dict(
        (h.hex(), i)
        for h, i in conn.execute("SELECT contribution_hash, log_index FROM contributions")
    )
    conn.close()
    assert all(stored.get(h) == i for h, i in accepted.items())
    assert len(stored) == state["goals"][DEMO]["log_size"]


def test_corrupt_node_state_is_a_clear_error(ian_nodes) -> None:
    node = ian_nodes.start()
    submit_some(node.api_url, 1)
    assert node.terminate() == 0
    (node.data_dir / "node_state.json").write_text('{"version": 1, "height": ')

    again = ian_nodes.spawn(data_dir=node.data_dir)
    code = again.proc.wait(20)
    again.wait_stderr_closed()
    assert code == 4, again.stderr_text()  # a DataDirError
    errors = _errors_only(again)
    assert_one_line_error(errors, "node_state.json")
    assert "delete" in errors  # the fix names the recovery


def test_several_nodes_start_side_by_side(ian_nodes) -> None:
    nodes = ian_nodes.start_many(2)
    ids = set()
    for node in nodes:
        status = httpx.get(f"{node.api_url}/api/v1/status", timeout=10).json()
        ids.add(status["node_id"])
    assert len(ids) == 2
    assert len({n.api_url for n in nodes}) == 2
    for node in nodes:
        assert node.terminate() == 0


@pytest.mark.parametrize("setting", ["IAN_API_PORT", "IAN_P2P_PORT", "IAN_WS_PORT"])
def test_a_taken_port_is_a_one_line_config_error(ian_nodes, setting: str) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = ian_nodes.spawn(
            env={setting: str(port), "IAN_P2P_HOST": "127.0.0.1", "IAN_API_HOST": "127.0.0.1"}
        )
        code = node.proc.wait(30)
        node.wait_stderr_closed()
    assert code == 3
    assert_one_line_error(_errors_only(node), f"127.0.0.1:{port}", "Address already in use")
    assert setting in _errors_only(node)
