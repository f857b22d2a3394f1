"""`ian node init/verify` (and `run`'s refusals) through the real entry point, in-process."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from ian.storage.lock import NodeLock


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith("  fix: ") for line in lines[1:]), err
    return lines[0]


@pytest.fixture
def demo_chain(chain, packs):
    """A data dir (the chain fixture's tmp_path) holding three blocks of the demo goal."""
    chain.commit([packs.contribution(1)])
    chain.commit([packs.contribution(2), packs.contribution(3)])
    chain.commit([packs.contribution(4, params=packs.rejected_params), packs.contribution(5)])
    assert chain.state.height == 3
    return chain


def test_verify_json_ok(demo_chain, ian) -> None:
    data_dir = demo_chain.store.path.parent
    code, out, err = ian("node", "verify", "--json", "--data-dir", str(data_dir))
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["blocks"] == 3 and report["contributions"] == 4
    assert report["first_bad_height"] is None
    roots = demo_chain.state.goals["DEMO_TRADING_AGENT"].roots().to_doc()
    assert report["roots"]["DEMO_TRADING_AGENT"] == roots


def test_verify_text_ok_and_env_data_dir(demo_chain, ian, monkeypatch) -> None:
    monkeypatch.setenv("IAN_DATA_DIR", str(demo_chain.store.path.parent))
    code, out, err = ian("node", "verify")
    assert code == 0, err
    assert out.startswith("ok: 3 blocks and 4 contributions verified")
    root = demo_chain.state.goals["DEMO_TRADING_AGENT"].mmr.root().hex()
    assert f"DEMO_TRADING_AGENT: log size 4 root {root}" in out


def test_verify_works_while_a_node_holds_the_lock(demo_chain, ian) -> None:
    data_dir = demo_chain.store.path.parent
    with NodeLock(data_dir / "node.lock"):
        code, out, _ = ian("node", "verify", "--json", "--data-dir", str(data_dir))
    assert code == 0 and json.loads(out)["ok"] is True


def test_verify_reports_the_first_bad_block(demo_chain, ian) -> None:
    data_dir = demo_chain.store.path.parent
    conn = sqlite3.connect(demo_chain.store.path)
    with conn:
        conn.execute("UPDATE contributions SET seed = seed + 1 WHERE log_index = 2")
    conn.close()
    code, out, _ = ian("node", "verify", "--data-dir", str(data_dir))
    assert code == 1
    assert out.startswith("MISMATCH at block 2:")
    code, out, _ = ian("node", "verify", "--json", "--data-dir", str(data_dir))
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["first_bad_height"] == 2
    assert "hash mismatch" in report["problem"]


def test_verify_checks_every_signer_against_the_pinned_genesis(demo_chain, ian) -> None:
    """On a one-authority chain every block must be signed by that authority."""
    from datetime import UTC, datetime

    from ian.chain.genesis import Genesis
    from ian.chain.goals import DEMO_GOAL
    from ian.identity import Identity

    data_dir = demo_chain.store.path.parent
    me = demo_chain.identity
    mine = Genesis.one_authority(me.node_id, me.public_key, [DEMO_GOAL], now=datetime.now(UTC))
    (data_dir / "genesis.json").write_text(mine.to_json())
    code, out, err = ian("node", "verify", "--json", "--data-dir", str(data_dir))
    assert code == 0 and json.loads(out)["ok"] is True, err

    other = Identity.generate()
    theirs = Genesis.one_authority(
        other.node_id, other.public_key, [DEMO_GOAL], now=mine.created_at
    )
    (data_dir / "genesis.json").write_text(theirs.to_json())
    code, out, _ = ian("node", "verify", "--json", "--data-dir", str(data_dir))
    report = json.loads(out)
    assert code == 1 and report["first_bad_height"] == 1
    assert f"signed by {me.node_id}, not the sequencer" in report["problem"]


def test_verify_without_a_store_is_exit_4(tmp_path, ian) -> None:
    code, out, err = ian("node", "verify", "--data-dir", str(tmp_path / "empty"))
    assert code == 4
    assert out == ""
    assert "no store at" in one_error_line(err)


def test_verify_refuses_a_newer_schema_with_exit_4(demo_chain, ian) -> None:
    conn = sqlite3.connect(demo_chain.store.path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    code, _, err = ian("node", "verify", "--data-dir", str(demo_chain.store.path.parent))
    assert code == 4
    assert "schema version 99" in one_error_line(err)


def test_init_is_idempotent(tmp_path, ian) -> None:
    data_dir = tmp_path / "fresh"
    code, out, err = ian("node", "init", "--json", "--data-dir", str(data_dir))
    assert code == 0, err
    first = json.loads(out)
    assert set(first["created"]) >= {"identity.json", "api_token"}
    identity = json.loads((data_dir / "identity.json").read_text())
    assert first["node_id"] == identity["node_id"]
    assert first["cert_not_after"]

    code, out, _ = ian("node", "init", "--json", "--data-dir", str(data_dir))
    assert code == 0
    second = json.loads(out)
    assert second["created"] == [] and second["node_id"] == first["node_id"]

    code, out, _ = ian("node", "init", "--data-dir", str(data_dir))
    assert code == 0 and "already initialised" in out and first["node_id"] in out


def test_init_refuses_a_locked_data_dir_with_exit_5(tmp_path, ian) -> None:
    data_dir = tmp_path / "busy"
    data_dir.mkdir()
    with NodeLock(data_dir / "node.lock"):
        code, _out, err = ian("node", "init", "--data-dir", str(data_dir))
    assert code == 5
    line = one_error_line(err)
    assert f"pid {os.getpid()}" in line and "in use" in line
    assert not (data_dir / "identity.json").exists()


def test_run_with_an_invalid_setting_is_exit_3(tmp_path, ian, monkeypatch) -> None:
    monkeypatch.setenv("IAN_API_PORT", "eighty")
    code, _, err = ian("node", "run", "--data-dir", str(tmp_path / "d"))
    assert code == 3
    assert "IAN_API_PORT" in one_error_line(err)
    assert not (tmp_path / "d" / "node.lock").exists()
