"""Where a command acts and with which token: the rules of :mod:`ian_ops.target`, directly."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ian.errors import DataDirError, InputError, NodeLockedError, NodeUnreachableError
from ian.storage.datadir import DataDir, init_data_dir
from ian.storage.lock import NodeLock
from ian_ops import cli
from ian_ops.target import (
    admin_post,
    find_token,
    local_target,
    locate,
    node_url,
    read_node_url,
    resolve_target,
)


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    """An initialised data dir: identity, certificate and an ``api_token`` file."""
    return init_data_dir(tmp_path / "data").datadir


def refused_url() -> str:
    """A loopback URL nothing listens on (the socket is closed on return)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --------------------------------------------------------------------------- the URL


def test_the_url_is_the_flag_then_the_configured_port_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IAN_API_PORT", "8123")
    settings = cli.load_settings()
    assert node_url("http://node.example:9000/", settings) == "http://node.example:9000"
    assert node_url(None, settings) == "http://127.0.0.1:8123"
    assert node_url(None) == cli.DEFAULT_NODE_URL == "http://127.0.0.1:8000"


def test_a_url_without_a_scheme_is_a_usage_error() -> None:
    with pytest.raises(InputError) as info:
        node_url("127.0.0.1:8000")
    assert info.value.field == "--node-url" and "http://" in (info.value.fix or "")


def test_read_commands_survive_a_broken_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IAN_API_PORT", "eighty")
    assert read_node_url(None) == cli.DEFAULT_NODE_URL
    monkeypatch.setenv("IAN_API_PORT", "8124")
    assert read_node_url(None) == "http://127.0.0.1:8124"
    assert read_node_url("https://n.example/") == "https://n.example"


# --------------------------------------------------------------------------- the token


def test_the_env_token_wins_over_the_data_dirs_file(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_file = data.api_token_file.read_text().strip()
    assert from_file
    assert find_token(cli.load_settings(data.root), data) == from_file
    monkeypatch.setenv("IAN_API_TOKEN", "from-env")
    assert find_token(cli.load_settings(data.root), data) == "from-env"


def test_no_token_without_env_and_without_a_usable_file(data: DataDir, tmp_path: Path) -> None:
    missing = DataDir(tmp_path / "missing")
    assert find_token(cli.load_settings(missing.root), missing) is None
    data.api_token_file.write_text("  \n")  # empty counts as none
    assert find_token(cli.load_settings(data.root), data) is None
    data.api_token_file.unlink()
    data.api_token_file.mkdir()  # unreadable: a clear data dir error, not "no token"
    with pytest.raises(DataDirError) as info:
        find_token(cli.load_settings(data.root), data)
    assert str(data.api_token_file) in info.value.message


def test_an_admin_client_needs_a_token_and_carries_it(data: DataDir) -> None:
    target = locate(data.root, None)
    with target.client(admin=True) as client:
        expected = data.api_token_file.read_text().strip()
        assert client._http.headers["Authorization"] == f"Bearer {expected}"
    data.api_token_file.unlink()
    with pytest.raises(DataDirError) as info:
        target.client(admin=True)
    assert "no admin token" in info.value.message and "IAN_API_TOKEN" in (info.value.fix or "")
    with target.client(admin=False) as client:  # reads go without one
        assert "Authorization" not in client._http.headers


# --------------------------------------------------------------------------- online or offline


def test_offline_without_a_running_node_online_while_one_holds_the_lock(data: DataDir) -> None:
    target = resolve_target(data.root, None)
    assert not target.online and target.datadir.root == data.root
    with NodeLock(data.lock_file):
        target = resolve_target(data.root, None)
        assert target.online and target.url == cli.DEFAULT_NODE_URL


def test_without_a_data_dir_only_an_explicit_url_means_online(tmp_path: Path) -> None:
    with pytest.raises(DataDirError) as info:
        resolve_target(tmp_path / "nope", None)
    assert "does not exist" in info.value.message and "--node-url" in (info.value.fix or "")
    target = resolve_target(tmp_path / "nope", "http://10.1.2.3:8000")
    assert target.online and target.url == "http://10.1.2.3:8000"


def test_local_commands_need_the_data_dir_even_with_a_url(tmp_path: Path) -> None:
    with pytest.raises(DataDirError) as info:
        local_target(tmp_path / "nope", "http://10.1.2.3:8000")
    assert info.value.fix == "check --data-dir / IAN_DATA_DIR"


def test_a_lock_holder_that_does_not_answer_refuses_the_change(data: DataDir) -> None:
    url = refused_url()
    with NodeLock(data.lock_file):
        target = resolve_target(data.root, url)
        with pytest.raises(NodeLockedError) as info:
            admin_post(target, "/api/v1/admin/peers/prune", {})
    assert "no node answers" in info.value.message and url in info.value.message


def test_without_a_data_dir_an_unreachable_node_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IAN_API_TOKEN", "t")
    target = resolve_target(tmp_path / "nope", refused_url())
    with pytest.raises(NodeUnreachableError):
        admin_post(target, "/api/v1/admin/peers/prune", {"x": 1})


def test_deciding_again_right_before_acting_takes_the_lock_or_goes_online(
    data: DataDir,
) -> None:
    import contextlib

    target = locate(data.root, None)
    with contextlib.ExitStack() as stack:
        assert target.lock_unless_running(stack) is False and not target.online
        with pytest.raises(NodeLockedError):  # held for the change until the stack closes
            NodeLock(data.lock_file).acquire()
    with NodeLock(data.lock_file):  # a node started in between
        assert target.node_running()
        with contextlib.ExitStack() as stack:
            assert target.lock_unless_running(stack) is True and target.online
    assert not target.node_running()
