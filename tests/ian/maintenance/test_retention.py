"""Retention: the pure selection of what `ian prune` removes, and the scan beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.maintenance.retention import (
    Entry,
    Inventory,
    RetentionPolicy,
    beyond_newest,
    plan,
    remove,
    scan,
    stale_leftovers,
)
from ian.storage.datadir import DataDir

NOW = 1_800_000_000.0


def entry(name: str, mtime: float = NOW, size: int = 10, is_dir: bool = False) -> Entry:
    return Entry(Path("/d") / name, size, mtime, is_dir)


def test_beyond_newest_by_mtime_and_by_name() -> None:
    es = [entry("a", 3), entry("b", 1), entry("c", 2), entry("d", 5)]
    assert [e.path.name for e in beyond_newest(es, 2)] == ["b", "c"]
    assert beyond_newest(es, 4) == [] == beyond_newest(es, 10)
    assert [e.path.name for e in beyond_newest(es, 0)] == ["b", "c", "a", "d"]
    stamps = [entry("20250101T000000Z", 9), entry("20240101T000000Z", 1), entry("20260101T000000Z")]
    assert [e.path.name for e in beyond_newest(stamps, 1, by="name")] == [
        "20240101T000000Z",
        "20250101T000000Z",
    ]
    with pytest.raises(ValueError):
        beyond_newest(es, 1, by="size")


@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 10**6)), unique_by=lambda t: t[0]),
    st.integers(0, 12),
)
def test_beyond_newest_keeps_exactly_the_newest(items: list[tuple[int, int]], keep: int) -> None:
    es = [entry(f"f{i:03d}", float(m)) for i, m in items]
    removed = beyond_newest(es, keep)
    kept = [e for e in es if e not in removed]
    assert len(kept) == min(keep, len(es))
    if removed and kept:
        assert max(e.mtime for e in removed) <= min(e.mtime for e in kept)


def test_stale_leftovers_respects_the_margin() -> None:
    es = [entry("old.part", NOW - 7200), entry("edge.tmp", NOW - 3600), entry("new.part", NOW - 5)]
    assert [e.path.name for e in stale_leftovers(es, NOW, 3600)] == ["old.part", "edge.tmp"]
    assert stale_leftovers(es, NOW, 10_000) == []


def test_plan_covers_every_category() -> None:
    inv = Inventory(
        backups=[entry(f"ian-backup-x-{i}.tar", NOW - i, 100) for i in range(9)],
        cert_pairs=[entry(f"2025010{i}T000000Z", is_dir=True) for i in range(5)],
        pre_restore=[entry(f"data.pre-restore-2025010{i}T000000Z", is_dir=True) for i in range(3)],
        leftovers=[entry("a.part", NOW - 7200, 7), entry("b.tmp", NOW - 60, 7)],
        resync=[entry(f"resync-2025020{i}T000000Z", NOW - 10 * i, is_dir=True) for i in range(3)],
    )
    items = plan(inv, RetentionPolicy(backups_keep=7), NOW)
    kinds = [(i.kind, i.path.name) for i in items]
    assert kinds == [
        ("backup", "ian-backup-x-8.tar"),
        ("backup", "ian-backup-x-7.tar"),
        ("cert_pair", "20250100T000000Z"),
        ("cert_pair", "20250101T000000Z"),
        ("pre_restore", "data.pre-restore-20250100T000000Z"),
        ("pre_restore", "data.pre-restore-20250101T000000Z"),
        ("resync", "resync-20250200T000000Z"),
        ("resync", "resync-20250201T000000Z"),
        ("leftover", "a.part"),
    ]
    assert sum(i.size for i in items) == 2 * 100 + 6 * 10 + 7
    # the stamp decides, not the mtime (copying a directory changes it)
    assert [i.reason for i in items if i.kind == "resync"] == [
        "beyond the newest 1 resync copies"
    ] * 2
    assert all(i.reason for i in items)
    assert plan(Inventory(), RetentionPolicy(), NOW) == []
    with pytest.raises(ValueError):
        RetentionPolicy(backups_keep=-1)
    with pytest.raises(ValueError):
        RetentionPolicy(resync_keep=-1)


def test_pre_restore_copies_beside_and_inside_share_one_retention() -> None:
    """A swap restore leaves ``data.pre-restore-*`` beside the data dir, an in-place one
    ``.pre-restore-*`` inside it: the newest by stamp stays, wherever it is."""
    inv = Inventory(
        pre_restore=[
            entry("data.pre-restore-20250105T000000Z", NOW, is_dir=True),
            entry(".pre-restore-20250103T000000Z", NOW, is_dir=True),
            entry(".pre-restore-20250107T000000Z", NOW - 99, is_dir=True),
        ]
    )
    removed = [i.path.name for i in plan(inv, RetentionPolicy(), NOW)]
    assert removed == [".pre-restore-20250103T000000Z", "data.pre-restore-20250105T000000Z"]


def touch(path: Path, age_s: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = NOW - age_s
    os.utime(path, (t, t))
    return path


def test_scan_finds_only_prunable_things(tmp_path: Path) -> None:
    root = tmp_path / "data"
    dd = DataDir(root)
    touch(root / "chain.sqlite", 0)
    touch(root / ".node_state.json.ab.tmp", 7200)
    touch(root / "backups" / "ian-backup-n-1.tar", 100, b"12345")
    touch(root / "backups" / "ian-backup-n-3.tar.zst", 50, b"123")
    touch(root / "backups" / "ian-backup-n-2.tar.zst.part", 7200)
    touch(root / "backups" / "my-own.tar", 9999)
    touch(root / "certs-old" / "20250101T000000Z" / "node_cert.pem", 0, b"abc")
    touch(tmp_path / "data.pre-restore-20250101T000000Z" / "chain.sqlite", 0, b"abcd")
    touch(tmp_path / "data.restore-tmp" / "chain.sqlite", 0)
    (tmp_path / "unrelated").mkdir()
    (root / "backups" / "ian-backup-link.tar").symlink_to("/etc/passwd")

    inv = scan(dd)
    assert sorted((e.path.name, e.size) for e in inv.backups) == [
        ("ian-backup-n-1.tar", 5),
        ("ian-backup-n-3.tar.zst", 3),
    ]
    assert [(e.path.name, e.size) for e in inv.cert_pairs] == [("20250101T000000Z", 3)]
    assert [(e.path.name, e.size) for e in inv.pre_restore] == [
        ("data.pre-restore-20250101T000000Z", 4)
    ]
    assert sorted(e.path.name for e in inv.leftovers) == [
        ".node_state.json.ab.tmp",
        "data.restore-tmp",
        "ian-backup-n-2.tar.zst.part",
    ]

    items = plan(inv, RetentionPolicy(backups_keep=0, cert_pairs_keep=0, pre_restore_keep=0), NOW)
    results = remove(items)
    assert all(err is None for _i, err in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "unrelated"]
    assert sorted(p.name for p in (root / "backups").iterdir()) == [
        "ian-backup-link.tar",
        "my-own.tar",
    ]
    assert Path("/etc/passwd").exists()
    # Removing again is harmless.
    assert all(err is None for _i, err in remove(items))


def in_place_leftovers(tmp_path: Path) -> DataDir:
    """A data dir after two offline resyncs and two in-place restores (one swap restore beside
    it), with the staging dir of a restore that died before it wrote its journal."""
    root = tmp_path / "data"
    touch(root / "chain.sqlite", 0)
    touch(root / "resync-20250101T000000Z" / "chain.sqlite", 0, b"12")
    touch(root / "resync-20250301T000000Z" / "chain.sqlite", 0, b"123")
    touch(root / ".pre-restore-20250201T000000Z" / "identity.json", 0, b"1")
    touch(root / ".pre-restore-20250401T000000Z" / "identity.json", 0, b"1")
    touch(tmp_path / "data.pre-restore-20250101T000000Z" / "identity.json", 0, b"1")
    staging = root / ".restore-staging-20250501T000000Z"
    touch(staging / "chain.sqlite", 7200)
    os.utime(staging, (NOW - 7200, NOW - 7200))
    return DataDir(root)


def test_scan_finds_resync_copies_and_in_place_restore_dirs(tmp_path: Path) -> None:
    dd = in_place_leftovers(tmp_path)
    inv = scan(dd)
    assert sorted((e.path.name, e.size) for e in inv.resync) == [
        ("resync-20250101T000000Z", 2),
        ("resync-20250301T000000Z", 3),
    ]
    assert sorted(e.path.name for e in inv.pre_restore) == [
        ".pre-restore-20250201T000000Z",
        ".pre-restore-20250401T000000Z",
        "data.pre-restore-20250101T000000Z",
    ]
    assert [e.path.name for e in inv.leftovers] == [".restore-staging-20250501T000000Z"]

    items = plan(inv, RetentionPolicy(), NOW)
    assert sorted((i.kind, i.path.name) for i in items) == [
        ("leftover", ".restore-staging-20250501T000000Z"),
        ("pre_restore", ".pre-restore-20250201T000000Z"),
        ("pre_restore", "data.pre-restore-20250101T000000Z"),
        ("resync", "resync-20250101T000000Z"),
    ]
    assert all(err is None for _i, err in remove(items))
    assert sorted(p.name for p in dd.root.iterdir()) == [
        ".pre-restore-20250401T000000Z",
        "chain.sqlite",
        "resync-20250301T000000Z",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_interrupted_restore_keeps_its_directories(tmp_path: Path) -> None:
    """The aside and staging dirs named in the journal are the way back and forward."""
    from ian.atomic import atomic_write_json
    from ian.maintenance.restore import JOURNAL_NAME

    dd = in_place_leftovers(tmp_path)
    journal = {
        "format": "ian-restore-journal",
        "version": 1,
        "phase": "in",
        "started_at": "2025-05-01T00:00:00+00:00",
        "archive": "/backups/x.tar",
        "node_id": "ab" * 20,
        "height": 3,
        "staging": ".restore-staging-20250501T000000Z",
        "aside": ".pre-restore-20250201T000000Z",
        "old": ["identity.json"],
        "new": ["identity.json"],
    }
    atomic_write_json(dd.root / JOURNAL_NAME, journal)
    names = [e.path.name for e in plan(scan(dd), RetentionPolicy(pre_restore_keep=0), NOW)]
    assert ".restore-staging-20250501T000000Z" not in names
    assert ".pre-restore-20250201T000000Z" not in names
    assert ".pre-restore-20250401T000000Z" in names  # not this restore's: prunable
    # A journal that cannot be read protects every in-place restore directory.
    (dd.root / JOURNAL_NAME).write_text("{torn")
    names = [e.path.name for e in plan(scan(dd), RetentionPolicy(pre_restore_keep=0), NOW)]
    assert not [n for n in names if n.startswith((".pre-restore-", ".restore-staging-"))]
    assert "data.pre-restore-20250101T000000Z" in names and "resync-20250101T000000Z" in names
