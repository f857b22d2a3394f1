from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ian.atomic import atomic_write_bytes, atomic_write_json, atomic_writer, read_json
from ian.errors import CorruptFileError, DataDirError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_bytes_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    assert _mode(target) == 0o644
    atomic_write_bytes(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_mode_is_not_filtered_by_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "pub", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "pub") == 0o644


def test_writer_replaces_on_success_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    target.write_bytes(b"old")
    with atomic_writer(target, mode=0o640) as fh:
        fh.write(b"new ")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
        fh.write(b"content")
    assert target.read_bytes() == b"new content"
    assert _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]


def test_writer_that_raises_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    target.write_bytes(b"old")
    with pytest.raises(KeyError), atomic_writer(target) as fh:
        fh.write(b"half of the new")
        raise KeyError("stop")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]


def test_writer_in_a_missing_directory_is_a_data_dir_error(tmp_path: Path) -> None:
    with (
        pytest.raises(DataDirError, match="No such file or directory"),
        atomic_writer(tmp_path / "nope" / "f"),
    ):
        pass


def test_exclusive_refuses_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "id"
    atomic_write_bytes(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["id"]


def test_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    # The target is a directory: the temp file is written, then os.replace fails.
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(DataDirError) as info:
        atomic_write_bytes(target, b"data")
    assert str(target) in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_missing_directory_is_a_data_dir_error(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="No such file or directory"):
        atomic_write_bytes(tmp_path / "nope" / "f", b"x")


def test_read_only_dir_names_file_and_leaves_nothing(shared_tmp: Path, unprivileged) -> None:
    ro = shared_tmp / "ro"
    ro.mkdir()
    # As root the call runs as nobody, for whom a root-owned 0755 dir is read-only;
    # as a user, 0500 makes it read-only for ourselves.
    ro.chmod(0o755 if os.geteuid() == 0 else 0o500)
    try:
        name, message = unprivileged(lambda: atomic_write_json(ro / "state.json", {"a": 1}))
    finally:
        ro.chmod(0o700)
    assert name == "DataDirError"
    assert "state.json" in message and "Permission denied" in message
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("value", [{"x": object()}, {"x": float("nan")}])
def test_unencodable_json_touches_nothing(tmp_path: Path, value: object) -> None:
    target = tmp_path / "state.json"
    target.write_text('{"old": true}\n')
    with pytest.raises((TypeError, ValueError)):
        atomic_write_json(target, value)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_json_round_trip_and_compact(tmp_path: Path) -> None:
    value = {"version": 1, "peers": {"ab": {"score": 100.5}}, "ünï": "cödé"}
    atomic_write_json(tmp_path / "a.json", value)
    assert read_json(tmp_path / "a.json", recovery="r") == value
    atomic_write_json(tmp_path / "b.json", value, indent=None, mode=0o600)
    text = (tmp_path / "b.json").read_text()
    assert text.count("\n") == 1 and ": " not in text
    assert _mode(tmp_path / "b.json") == 0o600


def test_read_missing_passes_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json", recovery="r")


@pytest.mark.parametrize("content", [b"", b'{"version": 1, "pee', b"\xff\xfe", b"not json"])
def test_corrupt_json_names_file_and_recovery(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "peer_scores.json"
    target.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        read_json(target, recovery="run `ian peers reset`")
    assert info.value.message.startswith(f"{target} is corrupt: ")
    assert info.value.fix == "run `ian peers reset`"


def test_unreadable_file_is_data_dir_error(shared_tmp: Path, unprivileged) -> None:
    target = shared_tmp / "node_state.json"
    target.write_text("{}")
    target.chmod(0o000 if os.geteuid() != 0 else 0o600)
    name, message = unprivileged(lambda: read_json(target, recovery="r"))
    assert name == "DataDirError"  # not CorruptFileError
    assert str(target) in message and "check owner/permissions" in message


def test_directory_instead_of_file_is_data_dir_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").mkdir()
    with pytest.raises(DataDirError, match=r"x\.json"):
        read_json(tmp_path / "x.json", recovery="r")
