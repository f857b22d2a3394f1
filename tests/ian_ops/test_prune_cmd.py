"""`ian prune`: dry run by default without a terminal, --yes removes, online peer pruning."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ian.config import load_settings
from ian.node import Node
from ian.storage.lock import NodeLock
from ian_ops import client as client_mod

DAY = 86400.0


def env_for(data_dir: Path) -> dict[str, str]:
    """The data dir, and two backups kept (so the fixture's four make two to prune)."""
    return {"IAN_DATA_DIR": str(data_dir), "IAN_BACKUP_RETENTION": "2"}


def aged(path: Path, age_s: float, data: bytes = b"x" * 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age_s
    os.utime(path, (t, t))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    Node.open(load_settings(env={}, overrides={"data_dir": root})).close()
    for i in range(4):
        aged(root / "backups" / f"ian-backup-abc-2025010{i}T000000Z.tar", (10 - i) * DAY)
    for i in range(5):
        aged(root / "certs-old" / f"2025010{i}T000000Z" / "node_cert.pem", 0)
    aged(root / "backups" / "ian-backup-abc-x.tar.part", 2 * 3600)
    aged(root / "backups" / "ian-backup-abc-y.tar.part", 60)  # in progress: kept
    now = time.time()
    peers = {
        "a" * 40: {"score": 100.0, "last_seen": now - 40 * DAY},
        "b" * 40: {"score": 100.0, "last_seen": now},
    }
    (root / "peer_scores.json").write_text(
        json.dumps({"version": 1, "saved_at": now, "peers": peers})
    )
    return root


def names(root: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (root / sub).iterdir())


def test_no_terminal_means_dry_run_only(data: Path, ian) -> None:
    before = names(data, "backups"), names(data, "certs-old")
    r = ian("prune", env=env_for(data))
    assert r.exit_code == 0, r.stderr
    assert "dry run only" in r.stderr and "--yes" in r.stderr
    assert "peers (offline): 1 not seen" in r.stdout
    assert "total: 5 items" in r.stdout
    assert (names(data, "backups"), names(data, "certs-old")) == before


def test_dry_run_json_then_yes(data: Path, ian) -> None:
    dry = ian("prune", "--dry-run", "--json", env=env_for(data))
    assert dry.exit_code == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["applied"] is False
    assert sorted(i["kind"] for i in plan["items"]) == ["backup"] * 2 + ["cert_pair"] * 2 + [
        "leftover"
    ]
    assert plan["bytes"] == 5 * 100 and plan["peers"]["removed"] == 1

    done = ian("prune", "--yes", "--json", env=env_for(data))
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["applied"] is True and doc["bytes"] == 500 and doc["mode"] == "offline"
    assert names(data, "backups") == [
        "ian-backup-abc-20250102T000000Z.tar",
        "ian-backup-abc-20250103T000000Z.tar",
        "ian-backup-abc-y.tar.part",
    ]
    assert names(data, "certs-old") == [f"2025010{i}T000000Z" for i in (2, 3, 4)]
    peers = json.loads((data / "peer_scores.json").read_text())["peers"]
    assert list(peers) == ["b" * 40]

    again = ian("prune", "--yes", env=env_for(data))
    assert again.exit_code == 0 and "total: 0 items" in again.stdout


def test_bad_input(data: Path, tmp_path: Path, ian) -> None:
    r = ian("prune", "--older-than", "30", env=env_for(data))
    assert r.exit_code != 0 and "add a unit" in r.stderr and "Traceback" not in r.stderr
    r = ian("prune", env=env_for(tmp_path / "missing"))
    assert r.exit_code == 4 and "does not exist" in r.stderr
    (data / "peer_scores.json").write_text("{torn")
    r = ian("prune", env=env_for(data))
    assert r.exit_code == 4 and "peer_scores.json" in r.stderr and "fix:" in r.stderr


def test_online_uses_the_admin_api(data: Path, monkeypatch: pytest.MonkeyPatch, ian) -> None:
    calls: list[tuple[str, dict]] = []

    def post_json(self: client_mod.NodeClient, path: str, body: dict) -> dict:
        calls.append((path, body))
        return {"kept": 1, "removed": 1, "removed_ids": ["a" * 40], "dry_run": body["dry_run"]}

    monkeypatch.setattr(client_mod.NodeClient, "post_json", post_json)
    for name in [n for n in os.environ if n.startswith("IAN_")]:
        monkeypatch.delenv(name)
    with NodeLock(data / "node.lock"):  # "the node is running"
        result = ian("prune", "--data-dir", str(data), "--yes", "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert "peers (online)" in result.output and "dropped 1 peers (online)" in result.output
    assert calls == [
        ("/api/v1/admin/peers/prune", {"older_than_s": 7 * DAY, "dry_run": True}),
        ("/api/v1/admin/peers/prune", {"older_than_s": 7 * DAY, "dry_run": False}),
    ]
    # the file was not touched offline
    assert len(json.loads((data / "peer_scores.json").read_text())["peers"]) == 2


def test_old_resync_and_in_place_restore_copies(data: Path, tmp_path: Path, ian) -> None:
    """Real leftovers: two offline resyncs, two in-place restores; the newest of each stays."""
    from datetime import UTC, datetime

    from ian.maintenance.backup import create_backup
    from ian.maintenance.restore import restore_archive
    from ian.maintenance.resync import set_store_aside
    from ian.storage.datadir import DataDir

    dd = DataDir(data)
    settings = load_settings(env={}, overrides={"data_dir": data})
    first = set_store_aside(dd, now=1_700_000_000)
    Node.open(settings).close()
    second = set_store_aside(dd, now=1_700_000_000 + DAY)
    Node.open(settings).close()
    archive = create_backup(dd, settings.all_goals(), output=tmp_path / "backup.tar").path
    asides = [
        restore_archive(archive, data, in_place=True, now=datetime(2025, 1, d, tzinfo=UTC)).aside
        for d in (1, 2)
    ]
    assert asides[0] is not None and asides[1] is not None

    dry = ian("prune", "--dry-run", "--json", env=env_for(data))
    assert dry.exit_code == 0, dry.stderr
    doc = json.loads(dry.stdout)
    found = sorted(
        (i["kind"], i["path"]) for i in doc["items"] if i["kind"] in ("resync", "pre_restore")
    )
    assert found == [("pre_restore", str(asides[0])), ("resync", str(first))]
    assert doc["interrupted_restore"] is None

    done = ian("prune", "--yes", env=env_for(data))
    assert done.exit_code == 0, done.stderr
    assert "resync" in done.stdout and "pre_restore" in done.stdout
    assert not first.exists() and not asides[0].exists()
    assert second.is_dir() and asides[1].is_dir()


def test_an_interrupted_restore_is_pointed_out(data: Path, tmp_path: Path, ian) -> None:
    from tests.ian.maintenance.test_restore import crash_restore

    from ian.maintenance.backup import create_backup
    from ian.storage.datadir import DataDir

    settings = load_settings(env={}, overrides={"data_dir": data})
    archive = create_backup(DataDir(data), settings.all_goals(), output=tmp_path / "b.tar").path
    crash_restore(archive, data, 1)
    r = ian("prune", "--dry-run", env=env_for(data))
    assert r.exit_code == 0, r.stderr
    assert "note: an interrupted restore" in r.stderr
    assert f"ian restore --resume --data-dir {data}" in r.stderr
    doc = json.loads(ian("prune", "--dry-run", "--json", env=env_for(data)).stdout)
    journal = doc["interrupted_restore"]
    assert journal["phase"] == "aside" and journal["archive"] == str(archive)
    listed = {i["path"] for i in doc["items"]}
    assert journal["staging"] not in listed and journal["aside"] not in listed


# --------------------------------------------------------------------------- plan, confirm, apply


def test_the_plan_lists_without_changing_anything(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ian_ops.prune_cmd import plan_prune
    from ian_ops.target import local_target

    monkeypatch.setenv("IAN_BACKUP_RETENTION", "2")
    before = (
        names(data, "backups"),
        names(data, "certs-old"),
        (data / "peer_scores.json").read_bytes(),
    )
    plan = plan_prune(local_target(data, None), 30 * DAY, time.time())
    assert plan.mode == "offline" and plan.older_than_s == 30 * DAY
    assert sorted(i.kind for i in plan.items) == ["backup"] * 2 + ["cert_pair"] * 2 + ["leftover"]
    assert plan.bytes == 500 and not plan.empty
    assert (plan.peers["removed"], plan.peers["kept"]) == (1, 1)
    assert plan.peers["removed_ids"] == ["a" * 40]
    assert plan.interrupted_restore is None
    doc = plan.to_doc()
    assert (doc["dry_run"], doc["applied"], doc["failed"]) == (True, False, [])
    assert doc["peers"]["older_than_s"] == 30 * DAY
    after = (
        names(data, "backups"),
        names(data, "certs-old"),
        (data / "peer_scores.json").read_bytes(),
    )
    assert after == before


def test_confirm_rules(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ian_ops.prune_cmd import PrunePlan, confirm, plan_prune
    from ian_ops.target import local_target

    plan = plan_prune(local_target(data, None), 30 * DAY, time.time())
    assert confirm(plan, dry_run=False, yes=True, json_out=False) is True
    assert confirm(plan, dry_run=True, yes=True, json_out=False) is False
    nothing = PrunePlan("offline", DAY, [], {"kept": 2, "removed": 0, "removed_ids": []})
    assert nothing.empty and confirm(nothing, dry_run=False, yes=True, json_out=False) is False
    capsys.readouterr()
    # no terminal (pytest's stdin): a dry run, said on stderr unless --json
    assert confirm(plan, dry_run=False, yes=False, json_out=True) is False
    assert capsys.readouterr().err == ""
    assert confirm(plan, dry_run=False, yes=False, json_out=False) is False
    assert "dry run only" in capsys.readouterr().err


def test_apply_removes_what_the_plan_listed(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ian_ops.prune_cmd import apply, plan_prune
    from ian_ops.target import local_target

    monkeypatch.setenv("IAN_BACKUP_RETENTION", "2")
    target = local_target(data, None)
    plan = plan_prune(target, 30 * DAY, time.time())
    result = apply(plan, target)
    assert result.freed == 500 and result.failed == [] and len(result.removed) == 5
    assert not any(i.path.exists() for i in plan.items)
    assert result.peers["removed"] == 1 and result.peers["dry_run"] is False
    assert list(json.loads((data / "peer_scores.json").read_text())["peers"]) == ["b" * 40]
    doc = result.to_doc()
    assert (doc["applied"], doc["dry_run"], doc["bytes"]) == (True, False, 500)
