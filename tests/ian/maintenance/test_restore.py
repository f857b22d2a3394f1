"""Restore: verify first, swap atomically, keep the old dir, refuse every unsafe archive."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support.archives import read_members, write_legacy, write_members

from ian.chain.contributions import make_contribution
from ian.chain.goals import GoalSpec
from ian.config import load_settings
from ian.errors import CorruptFileError, DataDirError, IdentityError, NodeLockedError, SchemaError
from ian.ledger.sequencer import build_block
from ian.maintenance import restore as restore_mod
from ian.maintenance.backup import create_backup
from ian.maintenance.restore import (
    JOURNAL_NAME,
    choose_mode,
    finish_interrupted,
    pending_restore,
    restore_archive,
    staging_dir,
    swap_journal,
)
from ian.node import Node
from ian.storage.datadir import DataDir
from ian.storage.lock import NodeLock
from ian.storage.store import Store

GOAL = "TRIVIAL_GOAL"
SPEC = GoalSpec(id=GOAL, evaluator="trivial")


def make_node_dir(root: Path, blocks: int = 3) -> None:
    """A data dir as a node leaves it: identity, certs, api_token, a store with ``blocks``."""
    node = Node.open(load_settings(env={}, overrides={"data_dir": root, "goals": [SPEC]}))
    st, n = node.state, 0
    for _ in range(blocks):
        batch = []
        for _ in range(20):
            n += 1
            batch.append(
                make_contribution(
                    goal_id=GOAL,
                    version="1.0",
                    parameters=b"p%d" % n,
                    metadata={},
                    contributor_id=f"c{n}",
                    seed=n,
                )
            )
        st.begin()
        _o, block, entries = build_block(st, node.identity, batch, store=node.store)
        node.store.append_block(block, entries)  # type: ignore[arg-type]
        st.height, st.head_hash = block.height, block.hash  # type: ignore[union-attr]
        st.head_timestamp_ms = block.header.timestamp_ms  # type: ignore[union-attr]
        st.begin()
    node.checkpoint(clean=True)
    node.close()


def specs_for(root: Path) -> list[GoalSpec]:
    return load_settings(env={}, overrides={"data_dir": root, "goals": [SPEC]}).all_goals()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, a good archive of it)."""
    root = tmp_path_factory.mktemp("src") / "data"
    make_node_dir(root)
    archive = create_backup(DataDir(root), specs_for(root)).path
    return root, archive


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its digest (what must not change)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(root: Path) -> list[str]:
    """Every path below ``root``, directories included (no leftover may hide here)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def without(files: dict[str, str], *prefixes: str) -> dict[str, str]:
    return {k: v for k, v in files.items() if not k.startswith(prefixes)}


T1 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
T2 = datetime(2025, 3, 2, 12, 0, 0, tzinfo=UTC)
#: what an operator's data dir holds besides the node's own files
KEPT = (
    "api_token",
    "backup_state.json",
    "node.lock",
    "backups",
    "lost+found",
    "resync-",
    ".pre-restore-",
)


def lived_in(archive: Path, target: Path) -> Path:
    """A data dir restored from ``archive`` and then used: token, backups, an old resync copy,
    a previous in-place restore's leftovers, an ext4 ``lost+found``, a stray file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_archive(archive, target, in_place=False, now=T1)
    (target / "api_token").write_text("operator-token\n")
    (target / "api_token").chmod(0o600)
    (target / "backup_state.json").write_text('{"last_success_at": 1}\n')
    (target / "backups").mkdir()
    (target / "backups" / "keep.tar").write_bytes(b"x")
    (target / "resync-20240101T000000Z").mkdir()
    (target / "resync-20240101T000000Z" / "chain.sqlite").write_bytes(b"old store")
    (target / ".pre-restore-20240101T000000Z").mkdir()
    (target / ".pre-restore-20240101T000000Z" / "marker").write_text("older")
    (target / "lost+found").mkdir()
    (target / "marker").write_text("old")
    return target


# --------------------------------------------------------------------------- happy paths


def test_restore_into_fresh_dir(source: tuple[Path, Path], tmp_path: Path) -> None:
    root, archive = source
    target = tmp_path / "fresh"
    plan = restore_archive(archive, target)
    assert plan.done and plan.aside is None
    assert (target / "identity.json").read_bytes() == (root / "identity.json").read_bytes()
    assert stat.S_IMODE((target / "identity.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "certs" / "node_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "certs").stat().st_mode) == 0o700
    # node_state.json is omitted on purpose: the node fully verifies the store on start.
    assert not (target / "node_state.json").exists()
    assert not restore_mod.staging_dir(target).exists()
    store = Store(target / "chain.sqlite", readonly=True)
    assert store.head()[0] == plan.manifest.height == 3
    store.close()
    # The restored node starts (full verification, no node_state.json) at the archived roots.
    node = Node.open(load_settings(env={}, overrides={"data_dir": target, "goals": [SPEC]}))
    try:
        assert node.state.goals[GOAL].roots().to_doc() == plan.manifest.goals[GOAL]
    finally:
        node.close()


def test_restore_over_existing_keeps_it_aside(source: tuple[Path, Path], tmp_path: Path) -> None:
    _root, archive = source
    target = tmp_path / "data"
    restore_archive(archive, target)
    (target / "api_token").write_text("operator-token\n")
    (target / "backups").mkdir()
    (target / "backups" / "keep.tar").write_bytes(b"x")
    (target / "marker").write_text("old")
    before = tree(target)

    plan = restore_archive(archive, target)

    assert plan.done and plan.aside is not None and plan.aside.name.startswith("data.pre-restore-")
    assert tree(plan.aside) == {k: v for k, v in before.items() if not k.startswith("backups/")}
    assert not (target / "marker").exists()
    assert (target / "api_token").read_text() == "operator-token\n"
    assert (target / "backups" / "keep.tar").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", plan.aside.name]


def test_dry_run_and_declined_confirmation_change_nothing(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, archive = source
    target = tmp_path / "data"
    restore_archive(archive, target)
    before = tree(target)
    plan = restore_archive(archive, target, dry_run=True)
    assert not plan.done and plan.dry_run
    assert restore_archive(archive, target, confirm=lambda _p: False).done is False
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refuses_while_a_node_holds_the_lock(source: tuple[Path, Path], tmp_path: Path) -> None:
    _root, archive = source
    target = tmp_path / "data"
    restore_archive(archive, target)
    before = tree(target)
    with NodeLock(target / "node.lock"), pytest.raises(NodeLockedError, match=r"pid \d+"):
        restore_archive(archive, target)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_other_identity_needs_force(source: tuple[Path, Path], tmp_path: Path) -> None:
    _root, archive = source
    other = tmp_path / "other"
    make_node_dir(other, blocks=1)
    before = tree(other)
    with pytest.raises(IdentityError, match="belongs to node") as info:
        restore_archive(archive, other)
    assert "--force" in (info.value.fix or "")
    assert tree(other) == before
    plan = restore_archive(archive, other, force=True)
    assert plan.done and plan.existing_node_id != plan.manifest.node_id


def test_failure_mid_extract_leaves_the_original(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _root, archive = source
    target = tmp_path / "data"
    restore_archive(archive, target)
    before = tree(target)

    def full(self: object, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(restore_mod._SyncedFile, "write", full)
    with pytest.raises(DataDirError, match="disk full"):
        restore_archive(archive, target)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_swap_puts_the_original_back(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _root, archive = source
    target = tmp_path / "data"
    restore_archive(archive, target)
    (target / "marker").write_text("old")
    before = tree(target)
    real_rename = Path.rename

    def rename(self: Path, dest: Path) -> Path:
        if self.name.endswith(".restore-tmp"):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(DataDirError, match="cannot move the restored data"):
        restore_archive(archive, target)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --------------------------------------------------------------------------- unsafe archives

Member = tuple[tarfile.TarInfo, bytes]


def relist(members: list[Member]) -> list[Member]:
    """Recompute the manifest's size/sha256 for every listed member (a consistent forgery)."""
    manifest = json.loads(members[0][1])
    data = {i.name: d for i, d in members[1:]}
    for f in manifest["files"]:
        if f["name"] in data:
            f["size"] = len(data[f["name"]])
            f["sha256"] = hashlib.sha256(data[f["name"]]).hexdigest()
    return [(members[0][0], json.dumps(manifest).encode()), *members[1:]]


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def regular(name: str, data: bytes) -> Member:
    return tarfile.TarInfo(name), data


def with_manifest(change: Callable[[dict], None]) -> Callable[[list[Member]], list[Member]]:
    def apply(ms: list[Member]) -> list[Member]:
        doc = json.loads(ms[0][1])
        change(doc)
        return [(ms[0][0], json.dumps(doc).encode()), *ms[1:]]

    return apply


def newer_db_schema(ms: list[Member], tmp: Path) -> list[Member]:
    db = tmp / "forged.sqlite"
    data = dict((i.name, d) for i, d in ms)["chain.sqlite"]
    db.write_bytes(data)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    forged = [(i, db.read_bytes() if i.name == "chain.sqlite" else d) for i, d in ms]
    return relist(forged)


def flip_store_byte(ms: list[Member]) -> list[Member]:
    return [(i, d[:-1] + bytes([d[-1] ^ 1]) if i.name == "chain.sqlite" else d) for i, d in ms]


def hardlink(ms: list[Member]) -> list[Member]:
    return [*ms, special("certs/evil", tarfile.LNKTYPE, "identity.json")]


UNSAFE: dict[str, tuple[Callable[..., list[Member]], type[Exception], str]] = {
    "absolute path": (
        lambda ms: [*ms, regular("/tmp/ian-evil", b"x")],
        DataDirError,
        "unsafe path",
    ),
    "dot-dot": (lambda ms: [*ms, regular("../evil", b"x")], DataDirError, "unsafe path"),
    "dot-dot inside": (
        lambda ms: [*ms, regular("certs/../../evil", b"x")],
        DataDirError,
        "unsafe path",
    ),
    "symlink": (
        lambda ms: [*ms, special("certs/link", tarfile.SYMTYPE, "/etc/passwd")],
        DataDirError,
        "symbolic link",
    ),
    "hardlink": (hardlink, DataDirError, "hard link"),
    "fifo": (lambda ms: [*ms, special("fifo", tarfile.FIFOTYPE)], DataDirError, "FIFO"),
    "char device": (lambda ms: [*ms, special("dev", tarfile.CHRTYPE)], DataDirError, "device"),
    "directory member": (
        lambda ms: [*ms, special("extra", tarfile.DIRTYPE)],
        DataDirError,
        "not a regular file",
    ),
    "unlisted member": (
        lambda ms: [*ms, regular("extra.txt", b"x")],
        DataDirError,
        "not listed in the manifest",
    ),
    "checksum mismatch": (flip_store_byte, DataDirError, "SHA-256"),
    "missing member": (
        lambda ms: [m for m in ms if m[0].name != "identity.json"],
        DataDirError,
        "identity.json missing",
    ),
    "duplicate member": (
        lambda ms: [*ms, next(m for m in ms if m[0].name == "identity.json")],
        DataDirError,
        "appears twice",
    ),
    "manifest not first": (lambda ms: [*ms[1:], ms[0]], DataDirError, "first member"),
    "manifest unsafe name": (
        with_manifest(
            lambda d: d["files"].append(
                {"name": "../x", "size": 1, "sha256": "0" * 64, "mode": 420}
            )
        ),
        DataDirError,
        "unsafe file name",
    ),
    "newer manifest schema": (
        with_manifest(lambda d: d.update(schema_version=99)),
        SchemaError,
        "schema version 99",
    ),
    "newer backup format": (
        with_manifest(lambda d: d.update(format_version=99)),
        SchemaError,
        "backup format 99",
    ),
    "manifest is not json": (
        lambda ms: [(ms[0][0], b"{nope"), *ms[1:]],
        DataDirError,
        "not valid JSON",
    ),
    "newer db schema": (newer_db_schema, SchemaError, "schema version 99"),
    "roots differ": (
        with_manifest(lambda d: d["goals"][GOAL].update(log_size=1)),
        DataDirError,
        "roots of goal",
    ),
    "other node in manifest": (
        with_manifest(lambda d: d.update(node_id="ab" * 20)),
        DataDirError,
        "identity.json is node",
    ),
}


@pytest.mark.parametrize("in_place", [False, True], ids=["swap", "in-place"])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused(
    source: tuple[Path, Path], tmp_path: Path, case: str, in_place: bool
) -> None:
    _root, good = source
    forge, error, fragment = UNSAFE[case]
    members = read_members(good)
    forged = forge(members, tmp_path) if forge is newer_db_schema else forge(members)
    archive = tmp_path / "forged.tar.zst"
    write_members(archive, forged)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "data"
    restore_archive(good, target)
    before, names = tree(target), listing(target)

    with pytest.raises(error) as info:
        restore_archive(archive, target, in_place=in_place)

    message = str(info.value)
    assert fragment in message
    assert "\n" not in info.value.message  # one line
    assert tree(target) == before
    assert listing(target) == names  # no staging left inside it either
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # nothing written beside it
    assert not Path("/tmp/ian-evil").exists()


def test_reserved_member_names_are_checked_but_never_written(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    """An archive cannot plant the data dir's bookkeeping (token, lock, backups, journal)."""
    _root, good = source
    planted = [
        ("api_token", b"attacker-token"),
        ("node.lock", b"x"),
        ("backups/evil.tar", b"x"),
        (JOURNAL_NAME, b"{}"),
        (".pre-restore-20990101T000000Z/x", b"x"),
    ]
    members = read_members(good)
    doc = json.loads(members[0][1])
    for name, data in planted:
        doc["files"].append(
            {
                "name": name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "mode": 420,
            }
        )
    members = [(members[0][0], json.dumps(doc).encode()), *members[1:]]
    members += [regular(name, data) for name, data in planted]
    archive = tmp_path / "planted.tar.zst"
    write_members(archive, members)
    for in_place in (False, True):
        target = tmp_path / f"data-{in_place}"
        restore_archive(good, target)
        (target / "api_token").write_text("operator-token\n")
        plan = restore_archive(archive, target, in_place=in_place, now=T2)
        assert plan.done
        assert (target / "api_token").read_text() == "operator-token\n"
        assert not (target / "backups").exists()
        assert not (target / JOURNAL_NAME).exists()
        assert not (target / ".pre-restore-20990101T000000Z").exists()
        assert (target / "node.lock").read_bytes() == b""  # the real lock file, released


@pytest.mark.parametrize("compressed", [True, False], ids=["tar.zst", "legacy-tar"])
def test_truncated_archive_is_refused(
    source: tuple[Path, Path], tmp_path: Path, compressed: bool
) -> None:
    _root, good = source
    if compressed:
        raw = good.read_bytes()
        # The body's last block holds the end of chain.sqlite (and the tar's zero blocks): a
        # block is decoded whole or not at all, so any cut into it loses data.
        cuts = (100, 1500, len(raw) // 2, len(raw) - 8)
    else:
        old = tmp_path / "old.tar"
        write_legacy(good, old)
        raw = old.read_bytes()
        old.unlink()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            last = tar.getmembers()[-1]
        # Cutting only the zero padding after the last member loses nothing; cutting data
        # must fail.
        cuts = (100, 1500, len(raw) // 2, last.offset_data + last.size - 1)
    target = tmp_path / "data"
    for cut in cuts:
        archive = tmp_path / f"cut{cut}"
        archive.write_bytes(raw[:cut])
        with pytest.raises(DataDirError, match=r"truncated|missing|not a tar"):
            restore_archive(archive, target)
        assert not target.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []


@pytest.mark.parametrize("in_place", [False, True], ids=["swap", "in-place"])
def test_archive_of_the_previous_format_restores(
    source: tuple[Path, Path], tmp_path: Path, in_place: bool
) -> None:
    """A plain, uncompressed tar as ``ian backup`` wrote before restores exactly like the
    compressed archive it was made from, with every check (a forged one is refused)."""
    _root, good = source
    old = tmp_path / "ian-backup-old.tar"
    write_legacy(good, old)
    target = tmp_path / "data"
    restore_archive(good, target)
    by_new = without(tree(target), "node.lock")
    plan = restore_archive(old, target, in_place=in_place, now=T2)
    assert plan.done and plan.manifest.height == 3
    assert without(tree(target), "node.lock", ".pre-restore-") == by_new
    forged = tmp_path / "forged.tar"
    write_members(forged, flip_store_byte(read_members(old)), compressed=False)
    before = tree(target)
    with pytest.raises(DataDirError, match="SHA-256"):
        restore_archive(forged, target, in_place=in_place)
    assert tree(target) == before


# --------------------------------------------------------------------------- in place


def a_mount_point() -> Path:
    """A directory that really is a mount point on this machine (no mounting needed)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = Path(line.split()[1].replace("\\040", " "))
        if point != Path("/") and point.is_dir() and os.path.ismount(point):
            return point
    return Path("/")


def test_mode_is_chosen_from_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert choose_mode(data) == (
        False,
        f"{tmp_path} is writable: the data dir is swapped whole",
    )
    # A data dir that does not exist yet is created by the swap.
    assert choose_mode(tmp_path / "new")[0] is False
    mount = a_mount_point()
    in_place, why = choose_mode(mount)
    assert in_place and why == f"{mount} is a mount point and cannot be renamed"
    # A parent the node's user cannot write (Kubernetes: `/` for uid 1000). As root every
    # directory is writable, so ask os.access the way it answers for that user.
    real_access = os.access

    def access(path: object, mode: int, **kw: object) -> bool:
        return False if Path(str(path)) == tmp_path else real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    assert choose_mode(data) == (True, f"{tmp_path} is not writable")
    assert choose_mode(data, in_place=False)[0] is False
    assert choose_mode(data, in_place=True)[0] is True


def test_in_place_gives_the_same_data_dir_as_a_swap(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    root, archive = source
    swapped = lived_in(archive, tmp_path / "a" / "data")
    inside = lived_in(archive, tmp_path / "b" / "data")
    before = tree(inside)

    by_swap = restore_archive(archive, swapped, in_place=False, now=T2)
    plan = restore_archive(archive, inside, in_place=True, now=T2)

    assert by_swap.done and plan.done
    assert plan.mode == "in-place" and by_swap.mode == "swap"
    assert plan.to_doc()["mode"] == "in-place" and plan.mode_reason == "in place as requested"
    assert plan.aside == inside / ".pre-restore-20250302T120000Z"
    # The restored files are the same, byte for byte, with the same modes.
    assert without(tree(inside), ".pre-restore-", "resync-", "lost+found") == without(
        tree(swapped), ".pre-restore-"
    )
    for name in ("identity.json", "certs/node_key.pem", "certs", "api_token", "chain.sqlite"):
        assert stat.S_IMODE((inside / name).stat().st_mode) == stat.S_IMODE(
            (swapped / name).stat().st_mode
        )
    assert (inside / "identity.json").read_bytes() == (root / "identity.json").read_bytes()
    assert not (inside / "marker").exists() and not (inside / "node_state.json").exists()
    # The previous top-level entries are aside, nothing else moved, nothing was deleted.
    assert tree(plan.aside) == without(before, *KEPT)
    assert sorted(plan.moved_aside) == sorted(p.name for p in plan.aside.iterdir())
    assert (inside / "api_token").read_text() == "operator-token\n"
    assert (inside / "backups" / "keep.tar").read_bytes() == b"x"
    assert (inside / "resync-20240101T000000Z" / "chain.sqlite").read_bytes() == b"old store"
    assert (inside / ".pre-restore-20240101T000000Z" / "marker").read_text() == "older"
    assert (inside / "lost+found").is_dir()
    assert not (inside / JOURNAL_NAME).exists()
    assert not list(inside.glob(".restore-staging-*"))
    assert sorted(p.name for p in inside.parent.iterdir()) == ["data"]  # nothing beside it
    # The node starts on it (full verification: no node_state.json) at the archived roots.
    node = Node.open(load_settings(env={}, overrides={"data_dir": inside, "goals": [SPEC]}))
    try:
        assert node.state.goals[GOAL].roots().to_doc() == plan.manifest.goals[GOAL]
    finally:
        node.close()


def test_in_place_into_an_empty_volume(source: tuple[Path, Path], tmp_path: Path) -> None:
    """A fresh volume: only lost+found; nothing to keep aside."""
    _root, archive = source
    target = tmp_path / "data"
    (target / "lost+found").mkdir(parents=True)
    plan = restore_archive(archive, target, in_place=True)
    assert plan.done and plan.aside is None and plan.moved_aside == ()
    restored = {f.name.split("/")[0] for f in plan.manifest.files} - {"node_state.json"}
    assert {"identity.json", "chain.sqlite", "certs"} <= restored
    expected = restored | {"lost+found", "node.lock"}
    assert sorted(p.name for p in target.iterdir()) == sorted(expected)
    assert not list(target.glob(".pre-restore-*")) and not (target / JOURNAL_NAME).exists()


def test_in_place_needs_an_existing_dir(source: tuple[Path, Path], tmp_path: Path) -> None:
    _root, archive = source
    with pytest.raises(DataDirError, match="does not exist") as info:
        restore_archive(archive, tmp_path / "missing", in_place=True)
    assert "mkdir -p" in (info.value.fix or "")


def test_in_place_dry_run_and_decline_change_nothing(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    before, names = tree(target), listing(target)
    plan = restore_archive(archive, target, in_place=True, dry_run=True, now=T2)
    assert plan.in_place and not plan.done and plan.aside is not None
    assert "marker" in plan.moved_aside and "api_token" not in plan.moved_aside
    assert restore_archive(archive, target, in_place=True, confirm=lambda _p: False).done is False
    assert tree(target) == before and listing(target) == names


def test_in_place_refuses_while_a_node_holds_the_lock(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    names = listing(target)
    with NodeLock(target / "node.lock"), pytest.raises(NodeLockedError):
        restore_archive(archive, target, in_place=True)
    assert listing(target) == names


def failing_rename(monkeypatch: pytest.MonkeyPatch, at: int, *, undo_too: bool = False) -> None:
    """Make the ``at``-th move of the in-place swap fail (EIO), and every later one with
    ``undo_too`` (the undo cannot put things back either)."""
    real = restore_mod._rename
    count = [0]

    def rename(src: Path, dst: Path) -> None:
        count[0] += 1
        if count[0] == at or (undo_too and count[0] > at):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(restore_mod, "_rename", rename)


def moves(archive: Path, target: Path) -> tuple[int, int]:
    """(entries an in-place restore of ``archive`` moves aside, entries it moves in)."""
    plan = restore_archive(archive, target, in_place=True, dry_run=True)
    staged = {f.name.split("/")[0] for f in plan.manifest.files} - {"node_state.json"}
    return len(plan.moved_aside), len(staged)


@pytest.mark.parametrize("where", ["first aside", "last aside", "first in", "last in"])
def test_in_place_failed_move_is_undone(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    before, names = tree(target), listing(target)
    n_old, n_new = moves(archive, target)
    at = {"first aside": 1, "last aside": n_old, "first in": n_old + 1, "last in": n_old + n_new}
    failing_rename(monkeypatch, at[where])
    with pytest.raises(DataDirError, match="previous files are back in place"):
        restore_archive(archive, target, in_place=True)
    assert tree(target) == before and listing(target) == names


def test_in_place_failed_undo_keeps_the_journal_for_recovery(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    before, names = tree(target), listing(target)
    n_old, _n_new = moves(archive, target)
    failing_rename(monkeypatch, n_old + 2, undo_too=True)
    with pytest.raises(DataDirError, match="could not be undone") as info:
        restore_archive(archive, target, in_place=True)
    assert f"ian restore --rollback --data-dir {target}" in (info.value.fix or "")
    assert (target / JOURNAL_NAME).is_file()
    monkeypatch.undo()
    finish_interrupted(target, "rollback")
    assert tree(target) == before and listing(target) == names


# A real process dies in the middle of the swap: os._exit skips every `finally`, like SIGKILL
# or a power cut would (the page cache survives, which is all a rename needs here).
CRASH = """
import os, sys
from pathlib import Path
from ian.maintenance import restore

archive, target, at = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
done = 0
real_rename, real_finish, real_finish_swap = restore._rename, restore._finish, restore._finish_swap

def rename(src, dst):
    global done
    if str(done) == at:
        os._exit(9)
    done += 1
    real_rename(src, dst)

def finish(target, staging):
    if at == "finish":
        os._exit(9)
    real_finish(target, staging)

def finish_swap(target):
    if at == "finish":
        os._exit(9)
    real_finish_swap(target)

restore._rename, restore._finish, restore._finish_swap = rename, finish, finish_swap
restore.restore_archive(archive, target, in_place=sys.argv[4] == "in-place")
"""


def crash_restore(archive: Path, target: Path, at: int | str, mode: str = "in-place") -> None:
    """Run a restore (``mode``: in-place or swap) in a child process that dies before move
    ``at`` (0-based), or after the last move but before the journal is removed (``"finish"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    r = subprocess.run(
        [sys.executable, "-c", CRASH, str(archive), str(target), str(at), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 9, r.stderr


@pytest.mark.parametrize("action", ["resume", "rollback"])
@pytest.mark.parametrize("crash", ["before any move", "mid aside", "mid in", "before commit"])
def test_crash_mid_swap_is_refused_then_recovered(
    source: tuple[Path, Path], tmp_path: Path, crash: str, action: str
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    twin = tmp_path / "twin" / "data"
    shutil.copytree(target, twin, symlinks=True)
    before, names = tree(target), listing(target)
    n_old, n_new = moves(archive, target)
    at: int | str = {
        "before any move": 0,
        "mid aside": n_old // 2,
        "mid in": n_old + n_new // 2,
        "before commit": "finish",
    }[crash]

    crash_restore(archive, target, at)

    pending = pending_restore(target)
    assert pending is not None
    assert pending.phase == ("aside" if crash in ("before any move", "mid aside") else "in")
    # Every restore (dry run included) refuses and names the exact way out.
    for dry_run in (False, True):
        with pytest.raises(DataDirError, match="interrupted restore") as info:
            restore_archive(archive, target, dry_run=dry_run)
        fix = info.value.fix or ""
        assert f"ian restore --resume --data-dir {target}" in fix
        assert f"ian restore --rollback --data-dir {target}" in fix
    # ... and so does a node: it must not start on a half-restored data dir.
    if crash == "mid in":
        from ian.config import load_settings
        from ian.node import Node

        settings = load_settings(env={}, overrides={"data_dir": target, "api_port": 0})
        with pytest.raises(DataDirError, match="half restored") as info:
            Node.open(settings)
        assert "ian restore --resume" in (info.value.fix or "")

    finish_interrupted(target, action)  # type: ignore[arg-type]

    assert pending_restore(target) is None
    assert not list(target.glob(".restore-staging-*"))
    if action == "rollback":
        assert tree(target) == before and listing(target) == names
    else:
        # The same data dir as an uninterrupted in-place restore of the same archive.
        done = restore_archive(archive, twin, in_place=True)
        assert done.aside is not None
        assert pending.aside is not None and pending.aside.is_dir()
        assert without(tree(target), pending.aside.name) == without(tree(twin), done.aside.name)
        assert tree(pending.aside) == tree(done.aside) == without(before, *KEPT)
    with pytest.raises(DataDirError, match="no interrupted restore"):
        finish_interrupted(target, action)  # type: ignore[arg-type]


def test_a_journal_that_cannot_be_trusted_is_refused(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    journal = target / JOURNAL_NAME
    forged = {
        "version": 1,
        "phase": "in",
        "staging": ".restore-staging-x",
        "aside": None,
        "old": [],
        "new": ["../../etc"],
    }
    for text in ("{torn", json.dumps(forged)):
        journal.write_text(text)
        with pytest.raises(CorruptFileError, match=str(journal)) as info:
            restore_archive(archive, target)
        assert "recover by hand" in (info.value.fix or "")
        with pytest.raises(CorruptFileError):
            finish_interrupted(target, "resume")
    assert (target / "marker").read_text() == "old"


@pytest.mark.parametrize("action", ["resume", "rollback"])
@pytest.mark.parametrize("crash", ["before any move", "between the renames", "before commit"])
def test_crash_mid_swap_mode_is_refused_then_recovered(
    source: tuple[Path, Path], tmp_path: Path, crash: str, action: str
) -> None:
    """Swap mode is journaled too: a crash between its renames leaves no empty data dir
    behind, a node refuses to start (and so never makes a new identity), and --resume or
    --rollback settle it."""
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    twin = tmp_path / "twin" / "data"
    shutil.copytree(target, twin, symlinks=True)
    before = tree(target)
    at: int | str = {"before any move": 0, "between the renames": 1, "before commit": "finish"}[
        crash
    ]

    crash_restore(archive, target, at, mode="swap")

    pending = pending_restore(target)
    assert pending is not None and pending.mode == "swap"
    assert pending.journal == swap_journal(target) and pending.journal.is_file()
    assert target.is_dir() == (crash != "between the renames")
    for dry_run in (False, True):
        with pytest.raises(DataDirError, match="interrupted restore") as info:
            restore_archive(archive, target, dry_run=dry_run)
        assert f"ian restore --resume --data-dir {target}" in (info.value.fix or "")
    settings = load_settings(env={}, overrides={"data_dir": target, "api_port": 0})
    with pytest.raises(DataDirError, match="half restored"):
        Node.open(settings)
    # The node made nothing: no empty data dir, so no new identity either.
    assert target.is_dir() == (crash != "between the renames")
    # prune leaves both halves of the swap alone.
    if target.is_dir():
        from ian.maintenance.retention import scan

        inventory = scan(DataDir(target))
        listed = {e.path.absolute() for e in inventory.pre_restore + inventory.leftovers}
        assert pending.staging not in listed and pending.aside not in listed

    finish_interrupted(target, action)  # type: ignore[arg-type]

    assert pending_restore(target) is None and not swap_journal(target).exists()
    assert not staging_dir(target).exists()
    asides = sorted(p.name for p in tmp_path.iterdir() if ".pre-restore-" in p.name)
    if action == "rollback":
        assert tree(target) == before and asides == []
    else:
        done = restore_archive(archive, twin)
        assert done.aside is not None and pending.aside is not None
        assert asides == [pending.aside.name]
        assert tree(target) == tree(twin)
        assert tree(pending.aside) == tree(done.aside)
    with pytest.raises(DataDirError, match="no interrupted restore"):
        finish_interrupted(target, action)  # type: ignore[arg-type]


def test_a_swap_journal_that_cannot_be_trusted_is_refused(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    _root, archive = source
    target = lived_in(archive, tmp_path / "data")
    journal = swap_journal(target)
    forged = {"version": 1, "mode": "swap", "phase": "swap", "staging": "../x", "aside": None}
    for text in ("{torn", json.dumps(forged)):
        journal.write_text(text)
        with pytest.raises(CorruptFileError, match=str(journal)) as info:
            restore_archive(archive, target)
        assert "recover by hand" in (info.value.fix or "")
        with pytest.raises(CorruptFileError):
            finish_interrupted(target, "resume")
    assert (target / "marker").read_text() == "old"
