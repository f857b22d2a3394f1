"""Backup: consistent snapshots beside a live writer, the archive layout, verification."""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import zstandard
from tests.support.archives import (
    is_compressed,
    open_tar,
    read_members,
    write_legacy,
    write_members,
)
from tests.support.stores import as_schema_1

from ian.chain.contributions import make_contribution
from ian.chain.goals import GoalSpec
from ian.config import load_settings
from ian.errors import ConfigError, DataDirError
from ian.ledger.recovery import load_chain_state
from ian.ledger.sequencer import build_block
from ian.maintenance import backup as backup_mod
from ian.maintenance.backup import (
    MANIFEST_NAME,
    create_backup,
    list_members,
    read_last_backup,
    read_manifest,
    verify_archive,
)
from ian.node import Node
from ian.storage.datadir import DataDir
from ian.storage.lock import maintenance_lock
from ian.storage.store import Store

GOAL = "TRIVIAL_GOAL"
SPEC = GoalSpec(id=GOAL, evaluator="trivial")


class Chain:
    """A node's data dir opened in-process (lock, identity, store), appending trivial blocks."""

    def __init__(self, root: Path) -> None:
        settings = load_settings(env={}, overrides={"data_dir": root, "goals": [SPEC]})
        self.specs = settings.all_goals()
        self.node = Node.open(settings)
        self.n = 0

    def append(self, blocks: int = 1, per_block: int = 50) -> None:
        st = self.node.state
        for _ in range(blocks):
            batch = []
            for _ in range(per_block):
                self.n += 1
                batch.append(
                    make_contribution(
                        goal_id=GOAL,
                        version="1.0",
                        parameters=b"pack %d" % self.n,
                        metadata={},
                        contributor_id=f"c{self.n}",
                        seed=self.n,
                    )
                )
            st.begin()
            _outcomes, block, entries = build_block(
                st, self.node.identity, batch, store=self.node.store
            )
            assert block is not None
            self.node.store.append_block(block, entries)
            st.height, st.head_hash = block.height, block.hash
            st.head_timestamp_ms = block.header.timestamp_ms
            st.begin()

    def close(self) -> None:
        self.node.checkpoint(clean=True)
        self.node.close()


def populated(root: Path, blocks: int = 4) -> list[GoalSpec]:
    chain = Chain(root)
    chain.append(blocks)
    specs = chain.specs
    chain.close()
    return specs


def members(archive: Path) -> dict[str, bytes]:
    return {m.name: data for m, data in read_members(archive)}


def test_archive_layout_manifest_first_and_digests(tmp_path: Path) -> None:
    root = tmp_path / "data"
    specs = populated(root)
    (root / "config.toml").write_text("# empty\n")
    result = create_backup(DataDir(root), specs)

    assert result.path.parent == root / "backups"
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "backups").stat().st_mode) == 0o700
    assert result.path.name.endswith(".tar.zst") and is_compressed(result.path)
    with open_tar(result.path) as tar:  # one tar stream, across every frame
        names = tar.getnames()
    assert names[0] == MANIFEST_NAME
    data = members(result.path)
    manifest = json.loads(data[MANIFEST_NAME])
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(names[1:])
    assert {"identity.json", "chain.sqlite", "certs/node_key.pem", "config.toml"} <= set(listed)
    for name, entry in listed.items():
        assert entry["size"] == len(data[name])
        assert entry["sha256"] == hashlib.sha256(data[name]).hexdigest()
    assert listed["identity.json"]["mode"] == 0o600
    # The roots come from the snapshot and match the store.
    store = Store(root / "chain.sqlite", readonly=True)
    state = load_chain_state(store, specs)
    store.close()
    assert manifest["height"] == state.height == 4
    assert manifest["head_hash"] == state.head_hash.hex()
    assert manifest["goals"][GOAL] == state.goals[GOAL].roots().to_doc()
    assert read_manifest(result.path).node_id == manifest["node_id"]
    # backup_state.json for the metric
    recorded = json.loads((root / "backup_state.json").read_text())
    assert recorded["height"] == 4 and recorded["path"] == str(result.path.absolute())
    assert read_last_backup(DataDir(root)) == recorded["last_success_at"]
    assert verify_archive(result.path).ok


def test_snapshot_is_consistent_while_the_writer_commits(tmp_path: Path) -> None:
    """The node's writer commits *during* the snapshot (never blocked); the archive holds the
    state as of the snapshot's start and verifies fully."""
    root = tmp_path / "data"
    chain = Chain(root)
    chain.append(3)
    snapshot_started = threading.Event()
    committed = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            snapshot_started.wait(30)
            chain.append(2)  # would deadlock/time out if the snapshot blocked the writer
            committed.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            committed.set()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "snapshot" and not snapshot_started.is_set():
            snapshot_started.set()
            assert committed.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    try:
        result = create_backup(DataDir(root), chain.specs, progress=progress)
    finally:
        t.join(30)
    assert not errors
    assert chain.node.store.head()[0] == 5
    assert result.manifest.height == 3
    check = verify_archive(result.path)
    assert check.ok, check.problem
    assert check.blocks == 3
    chain.close()


def test_failure_mid_write_leaves_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    specs = populated(root)
    first = create_backup(DataDir(root), specs)
    before = (root / "backup_state.json").read_bytes()
    real_stream = backup_mod._stream_member

    def stream_member(out, name, path, size, mtime, advance):  # type: ignore[no-untyped-def]
        if name == "chain.sqlite":
            out.write(b"x" * 4096)  # part of it is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stream(out, name, path, size, mtime, advance)

    monkeypatch.setattr(backup_mod, "_stream_member", stream_member)
    target = tmp_path / "second.tar.zst"
    with pytest.raises(DataDirError, match="No space left") as info:
        create_backup(DataDir(root), specs, output=target)
    assert "free space" in (info.value.fix or "")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in (root / "backups").iterdir()) == [first.path.name]
    assert (root / "backup_state.json").read_bytes() == before


def test_refuses_to_overwrite_and_bad_data_dirs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    specs = populated(root, blocks=1)
    out = tmp_path / "b.tar.zst"
    out.write_bytes(b"mine")
    with pytest.raises(DataDirError, match="already exists"):
        create_backup(DataDir(root), specs, output=out)
    assert out.read_bytes() == b"mine"
    with pytest.raises(DataDirError, match="does not exist"):
        create_backup(DataDir(tmp_path / "nope"), specs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataDirError, match="no store"):
        create_backup(DataDir(empty), specs)
    with pytest.raises(DataDirError, match=r"directory .* does not exist"):
        create_backup(DataDir(root), specs, output=tmp_path / "missing" / "b.tar.zst")


def test_output_directory_gets_the_default_name(tmp_path: Path) -> None:
    root = tmp_path / "data"
    specs = populated(root, blocks=1)
    volume = tmp_path / "volume"
    volume.mkdir()
    result = create_backup(DataDir(root), specs, output=volume)
    assert result.path.parent == volume
    assert result.path.name.startswith("ian-backup-") and result.path.name.endswith(".tar.zst")


def test_unconfigured_goal_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    populated(root, blocks=1)
    demo_only = load_settings(env={}, overrides={"data_dir": root}).all_goals()
    with pytest.raises(ConfigError, match="not configured"):
        create_backup(DataDir(root), demo_only)
    assert not list((root / "backups").glob("*")) if (root / "backups").exists() else True


def _rewrite(archive: Path, target: Path, change, *, compressed: bool = True) -> None:
    """Copy ``archive`` to ``target`` passing (name, data) through ``change``."""
    members = [(m, change(m.name, data)) for m, data in read_members(archive)]
    write_members(target, members, compressed=compressed)


@pytest.mark.parametrize("compressed", [True, False], ids=["tar.zst", "legacy-tar"])
def test_verify_names_the_first_problem(tmp_path: Path, compressed: bool) -> None:
    root = tmp_path / "data"
    specs = populated(root)
    good = create_backup(DataDir(root), specs).path
    ext = ".tar.zst" if compressed else ".tar"
    if not compressed:
        write_legacy(good, tmp_path / "old.tar")
        good = tmp_path / "old.tar"
        assert verify_archive(good).ok

    flipped = tmp_path / f"flipped{ext}"

    def flip(name: str, data: bytes) -> bytes:
        if name == "chain.sqlite":
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    _rewrite(good, flipped, flip, compressed=compressed)
    result = verify_archive(flipped)
    assert not result.ok and "SHA-256" in (result.problem or "")

    lying = tmp_path / f"lying{ext}"

    def lie(name: str, data: bytes) -> bytes:
        if name == MANIFEST_NAME:
            doc = json.loads(data)
            doc["goals"][GOAL]["log_root"] = "00" * 32
            return json.dumps(doc).encode()
        return data

    _rewrite(good, lying, lie, compressed=compressed)
    result = verify_archive(lying)
    assert not result.ok and f"roots of goal {GOAL}" in (result.problem or "")

    truncated = tmp_path / f"truncated{ext}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result = verify_archive(truncated)
    assert not result.ok and "truncated" in (result.problem or "")

    result = verify_archive(tmp_path / f"absent{ext}")
    assert not result.ok and "does not exist" in (result.problem or "")


def first_frame_length(raw: bytes) -> int:
    """Bytes of the first Zstandard frame of ``raw``."""
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(raw)
    return len(raw) - len(dobj.unused_data)


def test_the_manifest_is_the_first_frame_alone(tmp_path: Path) -> None:
    """Reading the manifest decompresses nothing else: an archive cut right after its first
    frame still shows its manifest (and fails verification)."""
    root = tmp_path / "data"
    specs = populated(root)
    good = create_backup(DataDir(root), specs)
    raw = good.path.read_bytes()
    head = first_frame_length(raw)
    assert raw[head : head + 4] == (0x184D2A50).to_bytes(4, "little")  # the skippable frame
    first = zstandard.ZstdDecompressor().decompressobj().decompress(raw[:head])
    assert first[257:262] == b"ustar" and first[:13] == MANIFEST_NAME.encode()
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(raw[:head])
    assert read_manifest(cut) == good.manifest
    result = verify_archive(cut)
    assert not result.ok and "missing" in (result.problem or "")


def test_damaged_compressed_data_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    specs = populated(root)
    good = create_backup(DataDir(root), specs).path
    raw = bytearray(good.read_bytes())
    raw[len(raw) - 200] ^= 0xFF  # inside the last block of the body
    damaged = tmp_path / "damaged.tar.zst"
    damaged.write_bytes(bytes(raw))
    result = verify_archive(damaged)
    assert not result.ok
    assert "damaged" in (result.problem or "") or "SHA-256" in (result.problem or "")


def test_archives_of_the_previous_format_still_read(tmp_path: Path) -> None:
    """A plain, uncompressed tar as ``ian backup`` wrote before: verified, inspected, and
    listed exactly like the compressed archive it was made from."""
    root = tmp_path / "data"
    specs = populated(root)
    good = create_backup(DataDir(root), specs)
    old = tmp_path / "ian-backup-old.tar"
    write_legacy(good.path, old)
    assert not is_compressed(old)
    assert read_manifest(old) == good.manifest
    assert list_members(old) == list_members(good.path)
    assert list_members(old)[0]["name"] == MANIFEST_NAME
    check = verify_archive(old)
    assert check.ok, check.problem
    assert check.blocks == 4 and check.to_doc()["goals"] == good.manifest.goals


def test_a_store_not_yet_upgraded_is_archived_as_it_is(tmp_path: Path) -> None:
    """A stopped node's store of schema 1 (the node not yet started by this version): the
    backup copies it unchanged and its manifest says 1, so an older ian can restore it; this
    one verifies it, and upgrades it only when the node opens the restored store."""
    root = tmp_path / "data"
    specs = populated(root)
    as_schema_1(root / "chain.sqlite")
    result = create_backup(DataDir(root), specs)
    assert result.manifest.schema_version == 1
    assert json.loads(members(result.path)[MANIFEST_NAME])["schema_version"] == 1
    check = verify_archive(result.path)
    assert check.ok, check.problem
    assert check.blocks == 4
    store = Store(root / "chain.sqlite", readonly=True)
    assert store.schema_version == 1  # the backup did not upgrade the node's store
    store.close()


def test_read_last_backup_never_raises(tmp_path: Path) -> None:
    dd = DataDir(tmp_path)
    assert read_last_backup(dd) is None
    (tmp_path / backup_mod.STATE_FILE).write_text("{torn")
    assert read_last_backup(dd) is None
    (tmp_path / backup_mod.STATE_FILE).write_text('{"last_success_at": "x"}')
    assert read_last_backup(dd) is None
    (tmp_path / backup_mod.STATE_FILE).write_text('{"last_success_at": 12.5}')
    assert read_last_backup(dd) == 12.5


def test_maintenance_lock_shared_and_exclusive(tmp_path: Path) -> None:
    with (
        maintenance_lock(tmp_path, exclusive=False),
        maintenance_lock(tmp_path, exclusive=False),
        pytest.raises(DataDirError, match="backup or prune is running"),
        maintenance_lock(tmp_path, exclusive=True),
    ):
        pass
    with (
        maintenance_lock(tmp_path, exclusive=True),
        pytest.raises(DataDirError, match="restore or certificate rotation"),
        maintenance_lock(tmp_path, exclusive=False),
    ):
        pass
    with (
        pytest.raises(DataDirError, match="does not exist"),
        maintenance_lock(tmp_path / "nope", exclusive=False),
    ):
        pass


def test_another_database_is_one_more_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database listed in DATABASES is archived as a consistent snapshot (with its digest)
    while a writer holds it open in WAL mode, and is left out when the data dir has none."""
    root = tmp_path / "data"
    specs = populated(root)
    monkeypatch.setattr(backup_mod, "DATABASES", (*backup_mod.DATABASES, "extra.db"))
    absent = create_backup(DataDir(root), specs, output=tmp_path / "absent.tar.zst")
    assert absent.manifest.file("extra.db") is None

    live = sqlite3.connect(root / "extra.db", isolation_level=None)
    live.execute("PRAGMA journal_mode = WAL")
    live.execute("CREATE TABLE t (v INTEGER)")
    live.execute("INSERT INTO t VALUES (42)")
    result = create_backup(DataDir(root), specs, output=tmp_path / "with.tar.zst")
    live.close()
    data = members(result.path)
    entry = result.manifest.file("extra.db")
    assert entry is not None and entry.sha256 == hashlib.sha256(data["extra.db"]).hexdigest()
    copy = tmp_path / "extra-copy.db"
    copy.write_bytes(data["extra.db"])
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert verify_archive(result.path).ok
