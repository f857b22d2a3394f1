"""`ian restore` as a real process: confirmation rules, exit codes, one-line refusals."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from tests.ian.maintenance.test_restore import crash_restore
from tests.support.archives import read_members, write_members

from ian.config import load_settings
from ian.maintenance.backup import create_backup
from ian.node import Node
from ian.storage.datadir import DataDir
from ian.storage.lock import NodeLock


def node_dir(root: Path) -> Path:
    """A data dir as a freshly started and stopped node leaves it."""
    settings = load_settings(env={}, overrides={"data_dir": root})
    Node.open(settings).close()
    return root


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    src = node_dir(tmp_path / "src")
    archive = create_backup(DataDir(src), load_settings(env={}).all_goals()).path
    return src, archive


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_needs_yes_without_a_terminal(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    before = listing(src.parent)
    r = ian("restore", str(archive), env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 2
    assert "--yes" in r.stderr and "Traceback" not in r.stderr
    assert listing(src.parent) == before


def test_dry_run_then_yes(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    before = listing(src.parent)
    dry = ian("restore", str(archive), "--dry-run", env={"IAN_DATA_DIR": str(src)})
    assert dry.exit_code == 0, dry.stderr
    assert "dry run" in dry.stdout and "pre-restore" in dry.stdout
    assert listing(src.parent) == before
    done = ian("restore", str(archive), "--yes", "--json", env={"IAN_DATA_DIR": str(src)})
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["restored"] is True and Path(doc["moved_aside_to"]).is_dir()
    assert (src / "backups" / archive.name).is_file()  # backups/ follows the data dir


def test_fresh_dir_needs_no_confirmation(setup: tuple[Path, Path], tmp_path: Path, ian) -> None:
    _src, archive = setup
    r = ian("restore", str(archive), env={"IAN_DATA_DIR": str(tmp_path / "new")})
    assert r.exit_code == 0, r.stderr
    assert "restored node" in r.stdout


def test_refused_while_the_node_runs(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    with NodeLock(src / "node.lock"):
        r = ian("restore", str(archive), "--yes", env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 5
    assert f"pid {os.getpid()}" in r.stderr


def test_unsafe_archive_one_line_exit_4(setup: tuple[Path, Path], tmp_path: Path, ian) -> None:
    src, archive = setup
    evil = tmp_path / "evil.tar.zst"
    write_members(evil, [*read_members(archive), (tarfile.TarInfo("../escaped"), b"x")])
    before = listing(tmp_path)
    r = ian("restore", str(evil), "--yes", env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 4
    first, *rest = r.stderr.strip().splitlines()
    assert "unsafe path" in first and all(line.startswith("  fix:") for line in rest)
    assert listing(tmp_path) == before


def test_other_identity_needs_force(setup: tuple[Path, Path], tmp_path: Path, ian) -> None:
    _src, archive = setup
    other = node_dir(tmp_path / "other")
    r = ian("restore", str(archive), "--yes", env={"IAN_DATA_DIR": str(other)})
    assert r.exit_code == 4 and "--force" in r.stderr
    r = ian("restore", str(archive), "--yes", "--force", env={"IAN_DATA_DIR": str(other)})
    assert r.exit_code == 0, r.stderr


def test_in_place_says_so_and_keeps_the_old_files_inside(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    (src / "marker").write_text("old")
    r = ian("restore", str(archive), "--yes", "--in-place", env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 0, r.stderr
    assert "mode: in place, inside the data dir (in place as requested)" in r.stdout
    aside = next(src.glob(".pre-restore-*"))
    assert f"previous files kept in {aside}" in r.stdout
    assert (aside / "marker").read_text() == "old" and not (src / "marker").exists()
    assert (src / "backups" / archive.name).is_file()  # backups/ never moved
    dry = ian("restore", str(archive), "--dry-run", "--json", env={"IAN_DATA_DIR": str(src)})
    assert dry.exit_code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["mode"] == "swap" and "writable" in doc["mode_reason"]


def test_interrupted_restore_blocks_until_resumed(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    (src / "marker").write_text("old")
    crash_restore(archive, src, 1)  # died after moving one entry aside

    r = ian("restore", str(archive), "--yes", env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 4 and "Traceback" not in r.stderr
    first, *rest = r.stderr.strip().splitlines()
    assert "interrupted restore" in first and "moving the previous files aside" in first
    fix = " ".join(rest)
    assert f"ian restore --resume --data-dir {src}" in fix
    assert f"ian restore --rollback --data-dir {src}" in fix

    done = ian("restore", "--resume", env={"IAN_DATA_DIR": str(src)})
    assert done.exit_code == 0, done.stderr
    assert "resumed" in done.stdout and "previous files kept in" in done.stdout
    assert not (src / "marker").exists()
    assert (next(src.glob(".pre-restore-*")) / "marker").read_text() == "old"
    again = ian("restore", "--resume", env={"IAN_DATA_DIR": str(src)})
    assert again.exit_code == 4 and "no interrupted restore" in again.stderr


def test_interrupted_restore_rolls_back(setup: tuple[Path, Path], ian) -> None:
    src, archive = setup
    (src / "marker").write_text("old")
    before = listing(src)
    crash_restore(archive, src, "finish")  # every move done, the journal not yet removed
    r = ian("restore", "--rollback", "--json", env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["action"] == "rollback" and doc["phase"] == "in" and doc["settled"] is True
    assert listing(src) == before
    assert (src / "marker").read_text() == "old"


@pytest.mark.parametrize(
    "args",
    [(), ("--resume", "--rollback"), ("ARCHIVE", "--resume"), ("--rollback", "--dry-run")],
)
def test_usage_errors(setup: tuple[Path, Path], args: tuple[str, ...], ian) -> None:
    src, archive = setup
    argv = [str(archive) if a == "ARCHIVE" else a for a in args]
    r = ian("restore", *argv, env={"IAN_DATA_DIR": str(src)})
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr


def test_a_missing_archive_is_named_before_anything_else(setup: tuple[Path, Path], ian) -> None:
    root, _archive = setup
    before = listing(root)
    done = ian("restore", str(root.parent / "nope.tar"), env={"IAN_DATA_DIR": str(root)})
    assert done.exit_code == 4
    assert "nope.tar does not exist" in done.stderr and "Traceback" not in done.stderr
    assert listing(root) == before


# --------------------------------------------------------------------------- the plan


def test_plan_restore_says_what_it_replaces_and_when_to_ask(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    from ian.errors import DataDirError
    from ian_ops.restore_cmd import plan_restore

    src, archive = setup
    before = listing(src.parent)
    fresh = plan_restore(archive, tmp_path / "new")
    assert fresh.target == tmp_path / "new" and fresh.archive == archive
    assert not fresh.replaces and not fresh.needs_confirmation and not fresh.needs_terminal

    replacing = plan_restore(archive, src)
    assert replacing.replaces and replacing.needs_confirmation and replacing.needs_terminal
    assert not plan_restore(archive, src, yes=True).needs_confirmation
    assert not plan_restore(archive, src, dry_run=True).needs_terminal
    on_a_terminal = plan_restore(archive, src, interactive=True)
    assert on_a_terminal.needs_confirmation and not on_a_terminal.needs_terminal
    assert listing(src.parent) == before  # planning changes nothing

    with pytest.raises(DataDirError) as info:
        plan_restore(tmp_path / "nope.tar", src)
    assert "nope.tar does not exist" in info.value.message
