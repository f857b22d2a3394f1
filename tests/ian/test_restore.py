"""`ian.restore`: verify first, swap atomically, keep the old dir, refuse every unsafe archive."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import sqlite3
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ian import restore as restore_mod
from ian.backup import create_backup
from ian.config import load_settings
from ian.contributions import make_contribution
from ian.datadir import DataDir
from ian.errors import DataDirError, IdentityError, NodeLockedError, SchemaError
from ian.goals import GoalSpec
from ian.lock import NodeLock
from ian.node import Node
from ian.restore import restore_archive
from ian.sequencer import build_block
from ian.store import Store

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


def read_members(archive: Path) -> list[Member]:
    out = []
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            out.append((m, tar.extractfile(m).read()))  # type: ignore[union-attr]
    return out


def write_members(path: Path, members: list[Member]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


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


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused(source: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    _root, good = source
    forge, error, fragment = UNSAFE[case]
    members = read_members(good)
    forged = forge(members, tmp_path) if forge is newer_db_schema else forge(members)
    archive = tmp_path / "forged.tar"
    write_members(archive, forged)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "data"
    restore_archive(good, target)
    before = tree(target)

    with pytest.raises(error) as info:
        restore_archive(archive, target)

    message = str(info.value)
    assert fragment in message
    assert "\n" not in info.value.message  # one line
    assert tree(target) == before
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # nothing written beside it
    assert not Path("/tmp/ian-evil").exists()


def test_truncated_archive_is_refused(source: tuple[Path, Path], tmp_path: Path) -> None:
    _root, good = source
    raw = good.read_bytes()
    with tarfile.open(good) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + last.size
    target = tmp_path / "data"
    # Cutting only the zero padding after the last member loses nothing; cutting data must fail.
    for cut in (100, 1500, len(raw) // 2, end - 1):
        archive = tmp_path / f"cut{cut}.tar"
        archive.write_bytes(raw[:cut])
        with pytest.raises(DataDirError, match=r"truncated|missing|not a tar"):
            restore_archive(archive, target)
        assert not target.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []
