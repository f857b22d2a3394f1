"""`ian doctor`: every failing condition is created for real, then the verdict and exit code
are checked through the real `ian` executable (exit codes 0 ok, 1 warnings, 2 failures)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.nodes import NodeFactory, run_ian

from ian.certs import generate_certificate, write_certificate
from ian.config import parse_peer_address
from ian.identity import load_identity
from ian.storage.datadir import DataDir
from ian_ops import doctor_checks as dc

DEFAULT_PORTS = {"IAN_API_PORT": "0", "IAN_P2P_PORT": "0", "IAN_WS_PORT": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    r = run_ian("node", "init", "--data-dir", str(root))
    assert r.returncode == 0, r.stderr
    # a recent backup, so a healthy data dir has nothing to warn about but the stopped node
    (root / "backup_state.json").write_text(
        json.dumps({"last_success_at": datetime.now(UTC).timestamp(), "path": "x", "height": 0})
    )
    return root


def doctor(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run `ian doctor --json`; (exit code, {check id: check}, the process)."""
    full_env = {
        "IAN_API_HOST": "127.0.0.1",
        "IAN_P2P_HOST": "127.0.0.1",
        **DEFAULT_PORTS,
        **(env or {}),
    }
    r = run_ian("doctor", "--json", "--data-dir", str(data_dir), *args, env=full_env)
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == r.returncode
    return r.returncode, {c["id"]: c for c in doc["checks"]}, r


def verdicts(checks: dict[str, Any]) -> dict[str, str]:
    return {k: c["verdict"] for k, c in checks.items()}


def test_node_down_offline_checks_pass_online_ones_say_not_running(data_dir: Path) -> None:
    code, checks, _ = doctor(
        data_dir, "--quick", env={"IAN_NODE_URL": f"http://127.0.0.1:{free_port()}"}
    )
    v = verdicts(checks)
    assert checks["node"]["verdict"] == "warn" and "node not running" in checks["node"]["found"]
    for online in ("peers", "sync", "breaker", "clock"):
        assert v[online] == "skip", checks[online]
        assert "node not running" in checks[online]["found"]
    for offline in ("config", "data_dir", "permissions", "identity", "certificate", "store"):
        assert v[offline] == "ok", checks[offline]
    assert v["port_API"] == v["port_P2P"] == "ok"
    assert code == 1  # the only warning: the node is not running


def test_human_output_groups_symbols_and_fixes(data_dir: Path) -> None:
    r = run_ian(
        "doctor",
        "--quick",
        "--data-dir",
        str(data_dir),
        env={**DEFAULT_PORTS, "IAN_NODE_URL": f"http://127.0.0.1:{free_port()}"},
    )
    assert r.returncode == 1
    for heading in ("Node won't start", "Node not syncing", "Data corruption", "Maintenance"):
        assert heading in r.stdout
    assert "✓ configuration" in r.stdout
    assert "! node process" in r.stdout
    assert "fix: start it: ian node run" in r.stdout
    assert "warnings:" in r.stdout
    assert "\x1b[" not in r.stdout  # piped: no ANSI
    assert r.stderr == ""


def test_port_taken_by_another_process_fails(data_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        code, checks, _ = doctor(data_dir, "--quick", env={"IAN_P2P_PORT": str(port)})
    check = checks["port_P2P"]
    assert check["verdict"] == "fail"
    assert f"pid {os.getpid()}" in check["found"]  # found through /proc, like ss -tlnp
    assert "IAN_P2P_PORT" in check["fix"]
    assert code == 2


def test_wrong_modes_fail(data_dir: Path) -> None:
    (data_dir / "certs").chmod(0o755)
    (data_dir / "identity.json").chmod(0o644)
    code, checks, _ = doctor(data_dir, "--quick")
    check = checks["permissions"]
    assert check["verdict"] == "fail"
    assert "0755, expected 0700" in check["found"] and "identity.json" in check["found"]
    assert "chmod 700" in check["fix"] and "chmod 600" in check["fix"]
    assert code == 2


def _cert_issued(data_dir: Path, *, days_ago: float, valid_days: int) -> None:
    dd = DataDir(data_dir)
    identity = load_identity(dd.identity_file)
    then = datetime.now(UTC) - timedelta(days=days_ago)
    cert, key = generate_certificate(identity, valid_days=valid_days, now=then)
    write_certificate(dd.certs_dir, cert, key)


def test_expired_certificate_fails(data_dir: Path) -> None:
    _cert_issued(data_dir, days_ago=40, valid_days=30)
    code, checks, _ = doctor(data_dir, "--quick")
    assert checks["certificate"]["verdict"] == "fail"
    assert "EXPIRED" in checks["certificate"]["found"]
    assert "ian certs rotate" in checks["certificate"]["fix"]
    assert code == 2


def test_certificate_near_expiry_warns_then_fails(data_dir: Path) -> None:
    _cert_issued(data_dir, days_ago=15, valid_days=30)  # 15 days left
    _, checks, _ = doctor(data_dir, "--quick")
    assert checks["certificate"]["verdict"] == "warn"
    _cert_issued(data_dir, days_ago=25, valid_days=30)  # 5 days left
    code, checks, _ = doctor(data_dir, "--quick")
    assert checks["certificate"]["verdict"] == "fail"
    assert code == 2


def test_unreachable_seed_and_tau_fail_and_loopback_p2p_warns(data_dir: Path) -> None:
    closed = free_port()  # bound then released: nothing listens there
    code, checks, _ = doctor(
        data_dir,
        "--quick",
        env={
            "IAN_SEED_NODES": f"tcp://127.0.0.1:{closed}",
            "IAN_TAU_ENDPOINT": f"tcp://127.0.0.1:{closed}",
        },
    )
    seed = checks[f"seed:tcp://127.0.0.1:{closed}"]
    assert seed["verdict"] == "fail" and "refused" in seed["found"].lower()
    assert checks["tau"]["verdict"] == "fail"
    assert checks["listen"]["verdict"] == "warn"  # P2P on 127.0.0.1 with seeds configured
    assert "IAN_P2P_HOST=0.0.0.0" in checks["listen"]["fix"]
    assert code == 2


def test_reachable_seed_passes(data_dir: Path) -> None:
    with socket.socket() as seed:
        seed.bind(("127.0.0.1", 0))
        seed.listen()
        port = seed.getsockname()[1]
        _, checks, _ = doctor(
            data_dir,
            "--quick",
            env={"IAN_SEED_NODES": f"tcp://127.0.0.1:{port}", "IAN_P2P_HOST": "0.0.0.0"},
        )
    assert checks[f"seed:tcp://127.0.0.1:{port}"]["verdict"] == "ok"
    assert checks["listen"]["verdict"] == "ok"


def test_invalid_config_fails_and_other_checks_still_run(data_dir: Path) -> None:
    code, checks, _ = doctor(data_dir, env={"IAN_API_PORT": "eighty"})
    assert checks["config"]["verdict"] == "fail"
    assert "IAN_API_PORT" in checks["config"]["found"]
    assert checks["data_dir"]["verdict"] == "ok"
    assert checks["disk"]["verdict"] in ("ok", "warn")
    assert code == 2


def test_corrupt_store_fails_the_store_check(data_dir: Path) -> None:
    (data_dir / "chain.sqlite").write_bytes(b"this is not a database" * 100)
    code, checks, _ = doctor(data_dir, "--quick")
    assert checks["store"]["verdict"] == "fail"
    assert "ian restore" in checks["store"]["fix"] or "ian node verify" in checks["store"]["fix"]
    assert code == 2


def test_the_chain_checks_genesis_and_fork_evidence(data_dir: Path) -> None:
    code, checks, _ = doctor(data_dir, "--quick")
    assert (
        checks["genesis"]["verdict"] == "ok" and "no genesis pinned" in checks["genesis"]["found"]
    )
    assert checks["fork_evidence"]["verdict"] == "ok"
    (data_dir / "fork-evidence-7-20260101T000000Z.json").write_text("{}")
    (data_dir / "genesis.json").write_text("{not json")
    code, checks, _ = doctor(data_dir, "--quick")
    assert checks["fork_evidence"]["verdict"] == "fail"
    assert "fork-evidence-7-20260101T000000Z.json" in checks["fork_evidence"]["found"]
    assert "Fork evidence" in checks["fork_evidence"]["fix"]
    assert checks["genesis"]["verdict"] == "fail" and "genesis.json" in checks["genesis"]["found"]
    assert code == 2


def test_missing_data_dir_warns(tmp_path: Path) -> None:
    code, checks, _ = doctor(tmp_path / "nowhere", "--quick")
    assert checks["data_dir"]["verdict"] == "warn"
    assert "ian node init" in checks["data_dir"]["fix"]
    assert checks["permissions"]["verdict"] == "skip"
    assert code == 1


def test_running_node_holds_its_ports_and_answers(ian_nodes: NodeFactory, tmp_path: Path) -> None:
    ports = {
        "IAN_API_PORT": str(free_port()),
        "IAN_P2P_PORT": str(free_port()),
        "IAN_WS_PORT": str(free_port()),
    }
    node = ian_nodes.start(env=ports)
    (node.data_dir / "backup_state.json").write_text(
        json.dumps({"last_success_at": datetime.now(UTC).timestamp(), "path": "x", "height": 0})
    )
    code, checks, r = doctor(node.data_dir, env=ports)
    v = verdicts(checks)
    assert v["node"] == "ok" and f"pid {node.pid}" in checks["node"]["found"]
    assert v["port_API"] == v["port_P2P"] == "ok"
    assert f"held by this node (pid {node.pid})" in checks["port_API"]["found"]
    assert v["sync"] == "ok" and v["peers"] == "ok" and v["breaker"] == "ok"
    assert v["clock"] == "skip" and checks["clock"]["found"].startswith("n/a")
    assert v["store"] == "ok" and "verified from genesis" in checks["store"]["found"]
    assert code == 0, r.stdout


# --------------------------------------------------------------------------- pure checks


SEED = parse_peer_address("tcp://10.0.0.5:9000")


def test_bans_that_look_wrong() -> None:
    banned_seed = {"node_id": "aa" * 20, "addresses": ["tcp://10.0.0.5:9000"], "ban_reason": "x"}
    check = dc.check_bans([banned_seed], [], 5, [SEED])
    assert check.verdict == dc.FAIL and "ian peers unban" in (check.fix or "")
    ip_ban = {"target": "10.0.0.0/8", "reason": "scanner"}
    assert dc.check_bans([], [ip_ban], 5, [SEED]).verdict == dc.FAIL
    many = [{"node_id": f"{i:040x}", "addresses": []} for i in range(4)]
    assert dc.check_bans(many, [], 5, [SEED]).verdict == dc.WARN
    assert dc.check_bans(many[:1], [], 5, [SEED]).verdict == dc.OK


def test_disk_backup_and_sync_verdicts() -> None:
    gib = 1 << 30
    assert dc.disk_headroom(50 * gib, 2 * gib).verdict == dc.OK
    assert dc.disk_headroom(3 * gib, 2 * gib).verdict == dc.WARN
    assert dc.disk_headroom(1 * gib, 2 * gib).verdict == dc.FAIL
    now = 1_000_000.0
    assert dc.backup_age(None, now).verdict == dc.WARN
    assert dc.backup_age(now - 3600, now).verdict == dc.OK
    assert dc.backup_age(now - 2 * 86400, now).verdict == dc.WARN
    node = dc.NodeFacts(
        url="u",
        lock_held=True,
        answers=True,
        status={"sync_lag": 11, "consensus_state": "SYNCING", "height": 1, "network_height": 12},
    )
    assert dc.check_sync(node, 10).verdict == dc.WARN
    diverged = dc.NodeFacts(url="u", answers=True, status={"consensus_state": "DIVERGED"})
    assert dc.check_sync(diverged).verdict == dc.FAIL
    skew = dc.NodeFacts(url="u", answers=True, peers={"connected": [{"clock_skew_s": 90.0}]})
    assert dc.check_clock_skew(skew).verdict == dc.FAIL


def test_consensus_verdicts() -> None:
    def facts(**status: Any) -> dc.NodeFacts:
        return dc.NodeFacts(url="u", answers=True, status=status)

    three = [
        {"node_id": "a", "reachable": True},
        {"node_id": "b", "reachable": True},
        {"node_id": "c", "reachable": False},
    ]
    ok = dc.check_consensus(facts(role="authority", term=3, leader_id="a", authorities=three))
    assert ok.verdict == dc.OK and "2 of 3 authorities reachable" in ok.found
    lone = [{**three[0]}, {**three[1], "reachable": False}, three[2]]
    cut_off = dc.check_consensus(facts(role="authority", term=3, leader_id="a", authorities=lone))
    assert cut_off.verdict == dc.WARN
    follower = dc.check_consensus(facts(role="follower", term=3, leader_id="a", authorities=lone))
    assert follower.verdict == dc.OK  # a follower needs the leader, not a majority
    leaderless = dc.check_consensus(facts(role="authority", term=4, authorities=three))
    assert leaderless.verdict == dc.FAIL and "Leader lost" in (leaderless.fix or "")
    forked = dc.check_consensus(facts(consensus_state="FORKED", leader_id="a", authorities=three))
    assert forked.verdict == dc.FAIL and "fork-evidence" in (forked.fix or "")
    one = [{"node_id": "a", "reachable": True}]
    assert dc.check_consensus(facts(leader_id="a", authorities=one)).verdict == dc.OK
    assert dc.check_consensus(facts(authorities=one)).verdict == dc.WARN


def test_exit_code_ignores_skips() -> None:
    def c(v: str) -> dc.Check:
        return dc.Check(dc.START, v, v, v, "")

    assert dc.exit_code([c(dc.OK), c(dc.SKIP)]) == 0
    assert dc.exit_code([c(dc.OK), c(dc.WARN)]) == 1
    assert dc.exit_code([c(dc.WARN), c(dc.FAIL)]) == 2
