"""`ian backup` / `ian restore` against the runbook's `tar -czvf` / `tar -xzvf`.

Usage::

    .venv/bin/python bench/backup_bench.py [--quick] [--contributions N] [--json-only]

Builds a data dir with N trivial contributions (default 1,000,000; ``--quick`` 100,000) written
straight through ``Store.append_block`` in blocks of 5,000, then times, each as a subprocess:

- ``ian backup --output X`` of the stopped dir, and again while another process keeps
  appending blocks to the store (online: the backup is a consistent snapshot, never blocked);
- the runbook's ``tar -czvf`` of the same stopped dir;
- ``ian restore X --yes`` into a fresh dir (verifies every checksum and the roots, fsyncs) and
  the runbook's ``tar -xzvf`` of the tarball (no verification, no fsync);
- for reference, Python's tarfile with gzip level 1 (the compressed alternative considered).

Results: ``bench/results/backup.json``. Nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from common import base_parser, emit, environment, render_table

GOAL = "BENCH"
BLOCK = 5000
IAN = Path(sys.executable).with_name("ian")
GOALS_ENV = json.dumps([{"id": GOAL, "evaluator": "trivial"}])


def _chain(root: Path):  # type: ignore[no-untyped-def]
    from ian.chain.goals import GoalSpec
    from ian.config import load_settings
    from ian.node import Node

    settings = load_settings(
        env={}, overrides={"data_dir": root, "goals": [GoalSpec(id=GOAL, evaluator="trivial")]}
    )
    return Node.open(settings)


def append_blocks(node: Any, first: int, count: int, per_block: int = BLOCK) -> int:
    """Append ``count`` trivial contributions starting at number ``first``; returns the next."""
    from ian.chain.contributions import make_contribution
    from ian.ledger.sequencer import build_block

    st = node.state
    n = first
    end = first + count
    while n < end:
        batch = []
        for i in range(n, min(end, n + per_block)):
            batch.append(
                make_contribution(
                    goal_id=GOAL,
                    version="1.0",
                    parameters=b"bench-trivial-%d" % i,
                    metadata={},
                    contributor_id=f"contributor-{i}",
                    seed=i,
                )
            )
        n += len(batch)
        st.begin()
        _outcomes, block, entries = build_block(st, node.identity, batch, store=node.store)
        node.store.append_block(block, entries)
        st.height, st.head_hash = block.height, block.hash
        st.head_timestamp_ms = block.header.timestamp_ms
        st.begin()
    return n


def build_data_dir(root: Path, n: int) -> float:
    started = time.perf_counter()
    node = _chain(root)
    try:
        append_blocks(node, 0, n)
        node.checkpoint(clean=True)
    finally:
        node.close()
    return time.perf_counter() - started


def writer_main(root: Path, ready: Path) -> None:
    """``--writer DIR READY``: hold the node lock and append 1,000-entry blocks until killed."""
    node = _chain(root)
    n = 10**9
    n = append_blocks(node, n, 1000, per_block=1000)
    ready.write_text("ready")
    while True:
        n = append_blocks(node, n, 1000, per_block=1000)


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    env.update(IAN_DATA_DIR=str(data_dir), IAN_GOALS=GOALS_ENV, NO_COLOR="1")
    return env


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd`` after flushing earlier writes (so each figure pays only for its own I/O)."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--contributions", type=int, default=None, help="store size (entries)")
    parser.add_argument("--writer", nargs=2, metavar=("DIR", "READY"), help=argparse_hidden())
    args = parser.parse_args()
    if args.writer:
        writer_main(Path(args.writer[0]), Path(args.writer[1]))
        return
    n = args.contributions or (100_000 if args.quick else 1_000_000)
    base = Path(tempfile.mkdtemp(prefix="ian-backup-bench-"))
    try:
        doc = run(base, n, args.quick)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = [
        ["ian backup (stopped node)", doc["ian_backup_s"], doc["tar_czvf_s"] / doc["ian_backup_s"]],
        [
            "ian backup (online, writer active)",
            doc["ian_backup_online_s"],
            doc["tar_czvf_s"] / doc["ian_backup_online_s"],
        ],
        ["tar -czvf (runbook, stopped)", doc["tar_czvf_s"], 1.0],
        [
            "tarfile gzip level 1 (reference)",
            doc["tarfile_gz1_s"],
            doc["tar_czvf_s"] / doc["tarfile_gz1_s"],
        ],
        [
            "ian restore (verify + fsync)",
            doc["ian_restore_s"],
            doc["tar_xzvf_s"] / doc["ian_restore_s"],
        ],
        ["tar -xzvf (runbook, no checks)", doc["tar_xzvf_s"], 1.0],
        [
            "tar -xzvf && sync (durable)",
            doc["tar_xzvf_sync_s"],
            doc["tar_xzvf_s"] / doc["tar_xzvf_sync_s"],
        ],
    ]
    sizes = [
        ["data dir", doc["data_dir_bytes"] / 2**20],
        ["ian archive (.tar)", doc["ian_archive_bytes"] / 2**20],
        ["tar.gz (gzip -6)", doc["tar_gz_bytes"] / 2**20],
        ["tar.gz (gzip -1)", doc["tar_gz1_bytes"] / 2**20],
    ]
    tables = [
        render_table(
            f"backup/restore of {n:,} contributions (height {doc['height']}); speed-up vs tar",
            ["operation", "seconds", "x tar"],
            rows,
        ),
        render_table("sizes", ["what", "MiB"], sizes),
    ]
    emit("backup", doc, tables, json_only=args.json_only)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def run(base: Path, n: int, quick: bool) -> dict[str, Any]:
    data = base / "data"
    build_s = build_data_dir(data, n)
    env = env_for(data)
    data_bytes = dir_size(data)

    # ian backup of the stopped dir (output outside the data dir so tar does not include it)
    ian_out = base / "ian.tar"
    ian_backup_s, out = timed([str(IAN), "backup", "--output", str(ian_out), "--json"], env)
    manifest = json.loads(out)

    # the runbook's tar -czvf of the same stopped dir
    tgz = base / "runbook.tar.gz"
    tar_czvf_s, _ = timed(["tar", "-czvf", str(tgz), "-C", str(base), "data"])

    # reference: tarfile with gzip level 1
    gz1 = base / "gz1.tar.gz"
    os.sync()
    started = time.perf_counter()
    with tarfile.open(gz1, "w:gz", compresslevel=1) as tar:
        tar.add(data, arcname="data")
    tarfile_gz1_s = time.perf_counter() - started

    # online: another process appends blocks while ian backup runs
    ready = base / "writer.ready"
    writer = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(data), str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not ready.exists():
            if writer.poll() is not None:
                raise SystemExit(f"writer failed: {writer.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        online_out = base / "online.tar"
        ian_backup_online_s, out = timed(
            [str(IAN), "backup", "--output", str(online_out), "--json"], env
        )
        online_manifest = json.loads(out)
    finally:
        writer.kill()
        writer.wait()
    verify_s, out = timed([str(IAN), "backup", "verify", str(online_out), "--json"], env)
    online_ok = json.loads(out)["ok"]

    # restores into fresh dirs
    restored = base / "restored"
    ian_restore_s, _ = timed([str(IAN), "restore", str(ian_out), "--yes"], env_for(restored))
    untar = base / "untar"
    untar.mkdir()
    tar_xzvf_s, _ = timed(["tar", "-xzvf", str(tgz), "-C", str(untar)])
    shutil.rmtree(untar)
    untar.mkdir()
    # the same, made durable like ian restore (which fsyncs every file before the swap)
    tar_xzvf_sync_s, _ = timed(["sh", "-c", f"tar -xzvf {tgz} -C {untar} && sync"])

    return {
        "benchmark": "backup",
        "quick": quick,
        "environment": environment(base),
        "contributions": n,
        "height": manifest["height"],
        "build_data_dir_s": build_s,
        "data_dir_bytes": data_bytes,
        "ian_archive_bytes": ian_out.stat().st_size,
        "tar_gz_bytes": tgz.stat().st_size,
        "tar_gz1_bytes": gz1.stat().st_size,
        "ian_backup_s": ian_backup_s,
        "ian_backup_online_s": ian_backup_online_s,
        "online_backup_height": online_manifest["height"],
        "online_backup_verified": online_ok,
        "online_verify_s": verify_s,
        "tar_czvf_s": tar_czvf_s,
        "tarfile_gz1_s": tarfile_gz1_s,
        "ian_restore_s": ian_restore_s,
        "tar_xzvf_s": tar_xzvf_s,
        "tar_xzvf_sync_s": tar_xzvf_sync_s,
        "backup_speedup": tar_czvf_s / ian_backup_s,
        "online_backup_speedup": tar_czvf_s / ian_backup_online_s,
        "restore_speedup": tar_xzvf_s / ian_restore_s,
    }


if __name__ == "__main__":
    main()
