"""`ian backup`, `backup verify`, `backup inspect` against real `ian node run` processes,
including a backup taken from a running node under sustained ingest and restored into a fresh
data dir."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.support.archives import open_tar, write_legacy
from tests.support.nodes import NETWORK_ENV, TRIVIAL_GOAL, NodeFactory, NodeProcess, contribution

from ian.storage.store import Store

GOAL = TRIVIAL_GOAL


def env_for(data_dir: Path) -> dict[str, str]:
    """What `ian` needs to act on ``data_dir``: the dir and the node's goals."""
    return {"IAN_DATA_DIR": str(data_dir), "IAN_GOALS": NETWORK_ENV["IAN_GOALS"]}


@pytest.fixture
def node(ian_nodes: NodeFactory, tmp_path: Path) -> NodeProcess:
    """`ian node run` on ``tmp_path / "live"`` (the trivial goal, no rate limits in the way)."""
    return ian_nodes.start(tmp_path / "live", NETWORK_ENV)


def live_log(url: str) -> list[str]:
    hashes: list[str] = []
    start: int | None = 0
    with httpx.Client(base_url=url, timeout=10) as c:
        while start is not None:
            page = c.get(f"/api/v1/log/{GOAL}", params={"from": start, "limit": 1000}).json()
            hashes += [e["contribution_hash"] for e in page["entries"]]
            start = page["next"]
    return hashes


@pytest.mark.integration
def test_backup_during_sustained_ingest_then_restore(
    node: NodeProcess, tmp_path: Path, ian
) -> None:
    url = node.api_url
    accepted = 0
    lock = threading.Lock()
    enough_before = threading.Event()
    more_after = threading.Event()
    stop = threading.Event()
    after_backup_from: list[int] = []
    failures: list[str] = []

    def submitter(worker: int) -> None:
        nonlocal accepted
        with httpx.Client(base_url=url, timeout=20) as c:
            n = worker
            while not stop.is_set():
                r = c.post("/api/v1/contribute", json=contribution(n))
                n += 8
                if r.status_code != 200 or not r.json()["accepted"]:
                    failures.append(r.text)
                    return
                with lock:
                    accepted += 1
                    if accepted >= 40:
                        enough_before.set()
                    if after_backup_from and accepted >= after_backup_from[0] + 40:
                        more_after.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(submitter, w) for w in range(8)]
        try:
            assert enough_before.wait(60), failures
            result = ian("backup", "--json", env=env_for(tmp_path / "live"))
            with lock:
                after_backup_from.append(accepted)
            assert result.exit_code == 0, result.stderr
            # Ingest keeps going after (and during) the backup.
            assert more_after.wait(60), failures
        finally:
            stop.set()
        for f in futures:
            f.result()
    assert not failures

    doc = json.loads(result.stdout)
    archive = Path(doc["path"])
    assert archive.parent == tmp_path / "live" / "backups"
    assert archive.name.endswith(".tar.zst")
    with open_tar(archive) as tar:
        assert tar.getnames()[0] == "manifest.json"
    state = json.loads((tmp_path / "live" / "backup_state.json").read_text())
    assert state["path"] == str(archive) and state["height"] == doc["height"]

    verified = ian("backup", "verify", str(archive), "--json", env=env_for(tmp_path / "live"))
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True

    fresh = tmp_path / "fresh"
    restored = ian("restore", str(archive), "--yes", "--json", env=env_for(fresh))
    assert restored.exit_code == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"] is True
    check = ian("node", "verify", "--json", env=env_for(fresh))
    assert check.exit_code == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["blocks"] == doc["height"]
    assert report["roots"][GOAL] == doc["goals"][GOAL]

    store = Store(fresh / "chain.sqlite", readonly=True)
    try:
        mine = [e.contribution_hash.hex() for e in store.log_entries(GOAL, 0, 10**9)]
    finally:
        store.close()
    live = live_log(url)
    assert len(mine) == doc["goals"][GOAL]["log_size"]
    assert len(live) > len(mine) >= 40
    assert live[: len(mine)] == mine


@pytest.fixture
def stopped_dir(node: NodeProcess, tmp_path: Path) -> Path:
    """A data dir with a few blocks, its node stopped cleanly."""
    url = node.api_url
    with httpx.Client(base_url=url, timeout=20) as c:
        for n in range(5):
            assert c.post("/api/v1/contribute", json=contribution(n)).json()["accepted"]
    node.terminate()
    return tmp_path / "live"


@pytest.mark.integration
def test_inspect_verify_and_errors(stopped_dir: Path, tmp_path: Path, ian) -> None:
    env = env_for(stopped_dir)
    out = tmp_path / "b.tar.zst"
    made = ian("backup", "--output", str(out), env=env)
    assert made.exit_code == 0, made.stderr
    assert f"backup written: {out}" in made.stdout

    inspected = ian("backup", "inspect", str(out), "--json", env=env)
    assert inspected.exit_code == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    assert doc["members"][0]["name"] == "manifest.json"
    assert doc["manifest"]["goals"][GOAL]["log_size"] == 5
    human = ian("backup", "inspect", str(out), env=env)
    assert "chain.sqlite" in human.stdout and "node id:" in human.stdout

    ok = ian("backup", "verify", str(out), env=env)
    assert ok.exit_code == 0 and ok.stdout.startswith("ok:"), ok.stderr

    # an archive of the previous format (plain tar) is inspected and verified the same way
    old = tmp_path / "old.tar"
    write_legacy(out, old)
    old_doc = json.loads(ian("backup", "inspect", str(old), "--json", env=env).stdout)
    assert old_doc == doc
    old_ok = ian("backup", "verify", str(old), env=env)
    assert old_ok.exit_code == 0 and old_ok.stdout.startswith("ok:"), old_ok.stderr

    broken = tmp_path / "broken.tar.zst"
    broken.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    bad = ian("backup", "verify", str(broken), env=env)
    assert bad.exit_code == 1
    assert "truncated" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    # the same output twice: refused, exit 4 (data dir), one line + fix
    again = ian("backup", "--output", str(out), env=env)
    assert again.exit_code == 4
    assert "already exists" in again.stderr and "fix:" in again.stderr
    missing = ian("backup", env=env_for(tmp_path / "nowhere"))
    assert missing.exit_code == 4 and "does not exist" in missing.stderr
    gone = ian("backup", "inspect", str(tmp_path / "nope.tar.zst"), env=env)
    assert gone.exit_code == 4 and "does not exist" in gone.stderr
    assert "Traceback" not in again.stderr + missing.stderr + gone.stderr
