"""`ian certs show/rotate`: offline rotation, online reload, a node that cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ian.certs import load_certificate
from ian.errors import NodeUnreachableError
from ian.storage.datadir import DataDir, init_data_dir
from ian.storage.lock import NodeLock
from ian_ops import client as client_mod


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return init_data_dir(tmp_path / "data").datadir.root


def test_show(data: Path, ian) -> None:
    r = ian("certs", "show", "--data-dir", str(data), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["san"].endswith(".ian.local") and 364 < doc["days_left"] <= 365
    assert len(doc["fingerprint_sha256"]) == 64
    human = ian("certs", "show", "--data-dir", str(data))
    assert "fingerprint_sha256:" in human.output and "days left:" in human.output


def test_rotate_offline(data: Path, ian) -> None:
    r = ian("certs", "rotate", "--data-dir", str(data), "--valid-days", "10")
    assert r.exit_code == 0, r.output
    assert "offline: the node will use it on next start" in r.output
    assert len(list((data / "certs-old").iterdir())) == 1
    shown = json.loads(ian("certs", "show", "--data-dir", str(data), "--json").stdout)
    assert 9 < shown["days_left"] <= 10


def test_rotate_online_reloads(data: Path, monkeypatch: pytest.MonkeyPatch, ian) -> None:
    from ian.identity import load_identity

    dd = DataDir(data)
    calls: list[str] = []

    def post_json(self: client_mod.NodeClient, path: str, body: dict) -> dict:
        calls.append(path)
        info = load_certificate(dd.certs_dir, load_identity(dd.identity_file))
        return {"fingerprint_sha256": info.fingerprint_sha256}

    monkeypatch.setattr(client_mod.NodeClient, "post_json", post_json)
    with NodeLock(dd.lock_file):
        r = ian("certs", "rotate", "--data-dir", str(data), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "online: node reloaded"
    assert calls == ["/api/v1/admin/certs/reload"]


def test_rotate_online_unreachable_names_the_fix(data: Path, ian) -> None:
    with NodeLock(DataDir(data).lock_file):
        r = ian("certs", "rotate", "--data-dir", str(data), "--node-url", "http://127.0.0.1:1")
    assert r.exit_code == 6
    assert "did not reload" in r.output and "SIGHUP" in r.output
    assert len(list((data / "certs-old").iterdir())) == 1  # the rotation itself happened


def test_node_stopping_mid_command_means_offline(
    data: Path, monkeypatch: pytest.MonkeyPatch, ian
) -> None:
    lock = NodeLock(DataDir(data).lock_file)

    def post_json(self: client_mod.NodeClient, path: str, body: dict) -> dict:
        lock.release()  # the node stops before it could answer
        raise NodeUnreachableError("connection refused")

    monkeypatch.setattr(client_mod.NodeClient, "post_json", post_json)
    lock.acquire()
    try:
        r = ian("certs", "rotate", "--data-dir", str(data))
    finally:
        lock.release()
    assert r.exit_code == 0, r.output
    assert "offline: the node stopped" in r.output


def test_missing_identity_is_a_clear_error(tmp_path: Path, ian) -> None:
    r = ian("certs", "show", "--data-dir", str(tmp_path))
    assert r.exception is not None and "identity.json" in str(r.exception)
