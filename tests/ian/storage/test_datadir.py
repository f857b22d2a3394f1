from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ian.errors import DataDirError, IdentityError
from ian.identity import load_identity
from ian.storage.datadir import DataDir, check_permissions, init_data_dir, read_api_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_paths() -> None:
    d = DataDir(Path("/data"))
    assert d.identity_file == Path("/data/identity.json")
    assert d.cert_file == Path("/data/certs/node_cert.pem")
    assert d.key_file == Path("/data/certs/node_key.pem")
    assert d.certs_old_dir == Path("/data/certs-old")
    assert d.store_file == Path("/data/chain.sqlite")
    assert d.lock_file == Path("/data/node.lock")
    assert d.api_token_file == Path("/data/api_token")
    assert d.node_state_file.name == "node_state.json"
    assert d.peer_scores_file.name == "peer_scores.json"
    assert d.config_file.name == "config.toml"
    assert d.backups_dir == Path("/data/backups")


def test_init_creates_everything_with_safe_modes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    result = init_data_dir(root, cert_valid_days=90)
    assert result.created == [
        ".",
        "identity.json",
        "certs/",
        "certs/node_key.pem",
        "certs/node_cert.pem",
        "api_token",
    ]
    d = result.datadir
    assert _mode(root) == 0o700
    assert _mode(d.certs_dir) == 0o700
    for secret in (d.identity_file, d.key_file, d.api_token_file):
        assert _mode(secret) == 0o600
    assert json.loads(d.identity_file.read_text())["node_id"] == result.identity.node_id
    assert result.cert.node_id == result.identity.node_id
    assert 89 < result.cert.days_left() <= 90
    token = read_api_token(d)
    assert token is not None and len(token) >= 40
    assert check_permissions(d) == []


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = init_data_dir(tmp_path / "data")
    snapshot = {p: p.read_bytes() for p in first.datadir.root.rglob("*") if p.is_file()}
    second = init_data_dir(tmp_path / "data")
    assert second.created == []
    assert second.identity == first.identity
    assert second.cert.fingerprint_sha256 == first.cert.fingerprint_sha256
    assert {p: p.read_bytes() for p in snapshot} == snapshot


def test_init_keeps_existing_identity_and_adds_missing_parts(tmp_path: Path) -> None:
    first = init_data_dir(tmp_path)
    d = first.datadir
    for f in (d.cert_file, d.key_file, d.api_token_file):
        f.unlink()
    second = init_data_dir(tmp_path)
    assert second.created == ["certs/node_key.pem", "certs/node_cert.pem", "api_token"]
    assert second.identity.node_id == first.identity.node_id
    assert load_identity(d.identity_file).node_id == first.identity.node_id


def test_init_refuses_half_a_certificate_pair(tmp_path: Path) -> None:
    d = init_data_dir(tmp_path).datadir
    d.key_file.unlink()
    with pytest.raises(IdentityError, match=r"node_key\.pem is missing"):
        init_data_dir(tmp_path)


def test_init_validates_existing_identity(tmp_path: Path) -> None:
    d = init_data_dir(tmp_path).datadir
    d.identity_file.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        init_data_dir(tmp_path)


def test_init_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("not a dir")
    with pytest.raises(DataDirError, match="not a directory"):
        init_data_dir(target)


def test_init_refuses_unwritable_dir(shared_tmp: Path, unprivileged) -> None:
    target = shared_tmp / "data"
    target.mkdir(mode=0o755 if os.geteuid() == 0 else 0o500)
    name, message = unprivileged(lambda: init_data_dir(target))
    target.chmod(0o700)
    assert name == "DataDirError"
    assert "not writable" in message


def test_read_api_token_missing_or_empty(tmp_path: Path) -> None:
    d = DataDir(tmp_path)
    assert read_api_token(d) is None
    d.api_token_file.write_text("\n")
    assert read_api_token(d) is None
    d.api_token_file.write_text("  tok\n")
    assert read_api_token(d) == "tok"


def test_check_permissions_reports_each_problem(tmp_path: Path) -> None:
    d = init_data_dir(tmp_path).datadir
    d.certs_dir.chmod(0o755)
    d.key_file.chmod(0o640)
    d.identity_file.chmod(0o644)
    d.api_token_file.chmod(0o604)
    problems = check_permissions(d)
    assert len(problems) == 4
    text = "\n".join(problems)
    assert f"chmod 700 {d.certs_dir}" in text
    for f in (d.key_file, d.identity_file, d.api_token_file):
        assert f"chmod 600 {f}" in text


def test_check_permissions_reports_wrong_owner(tmp_path: Path, unprivileged) -> None:
    d = init_data_dir(tmp_path).datadir
    if os.geteuid() != 0:
        # Only root can give a file away; as a user, check the report from the other side.
        name, value = unprivileged(lambda: check_permissions(d))
        assert name == "returned" and value == []
        return
    os.chown(d.identity_file, 1000, 1000)
    problems = check_permissions(d)
    assert problems == [
        f"{d.identity_file} is owned by uid 1000, but the node runs as uid 0 "
        f"(fix: chown -R 0 {d.root})"
    ]


def test_check_permissions_missing_dir(tmp_path: Path) -> None:
    assert "does not exist" in check_permissions(DataDir(tmp_path / "nope"))[0]
