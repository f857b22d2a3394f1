"""`ian backup` / `ian restore` against the runbook's `tar -czvf` / `tar -xzvf`.

Usage::

    .venv/bin/python bench/backup_bench.py [--quick] [--contributions N] [--runs N] [--json-only]

Builds a data dir with N trivial contributions (default 1,000,000; ``--quick`` 100,000) written
straight through ``Store.append_block`` in blocks of 5,000, then, ``--runs`` times (default 3;
each run measures ian and tar back to back, so a ratio compares figures taken under the same
load), times each as a subprocess:

- ``ian backup --output X.tar.zst`` of the stopped dir, and again of a copy of it while another
  process keeps appending blocks to that copy (online: a consistent snapshot, never blocked);
- the runbook's ``tar -czvf`` of the same stopped dir;
- ``ian restore X --yes`` into a fresh dir (verifies every checksum and the roots, fsyncs) and
  the runbook's ``tar -xzvf`` of the tarball (no verification, no fsync), also followed by
  ``sync`` (durable, like ian restore).

``ian`` runs with bytecode caching on, as an installed ``ian`` does (the commands are run once on
a tiny data dir first). The first run also verifies the online archive (``ian backup verify``).
Reported: the median of each figure, the worst run's speed-up (the targets hold "in every
run") and the sizes. With ``PYTHONPATH`` pointing at another checkout's ``src`` it measures that
version the same way.
Results: ``bench/results/backup.json``. Nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import base_parser, emit, environment, median, render_table

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
    """The environment of a timed ``ian``: its data dir and goals, and bytecode caching on (an
    installed ian, e.g. the Docker image's, has its modules compiled at install time)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IAN_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(IAN_DATA_DIR=str(data_dir), IAN_GOALS=GOALS_ENV, NO_COLOR="1")
    return env


def warm_up(base: Path) -> None:
    """Every ``ian`` command the runs time, once on a tiny data dir, so that the modules they
    import are compiled (and cached) before anything is measured."""
    tiny = base / "warm-up"
    build_data_dir(tiny / "data", 10)
    archive = tiny / "a.tar.zst"
    timed([str(IAN), "backup", "--output", str(archive), "--json"], env_for(tiny / "data"))
    timed([str(IAN), "backup", "verify", str(archive), "--json"], env_for(tiny / "data"))
    timed([str(IAN), "restore", str(archive), "--yes"], env_for(tiny / "restored"))
    shutil.rmtree(tiny)


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
    parser.add_argument("--runs", type=int, default=None, help="runs (default 3; quick 1)")
    parser.add_argument("--writer", nargs=2, metavar=("DIR", "READY"), help=argparse_hidden())
    args = parser.parse_args()
    if args.writer:
        writer_main(Path(args.writer[0]), Path(args.writer[1]))
        return
    n = args.contributions or (100_000 if args.quick else 1_000_000)
    runs = args.runs or (1 if args.quick else 3)
    base = Path(tempfile.mkdtemp(prefix="ian-backup-bench-"))
    try:
        doc = run(base, n, args.quick, runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med, worst = doc["median"], doc["worst_run_speedup"]
    rows = [
        [
            "ian backup (stopped node)",
            med["ian_backup_s"],
            med["tar_czvf_s"] / med["ian_backup_s"],
            worst["backup"],
        ],
        [
            "ian backup (online, writer active)",
            med["ian_backup_online_s"],
            med["tar_czvf_s"] / med["ian_backup_online_s"],
            worst["online_backup"],
        ],
        ["tar -czvf (runbook, stopped)", med["tar_czvf_s"], 1.0, 1.0],
        [
            "ian restore (verify + fsync)",
            med["ian_restore_s"],
            med["tar_xzvf_s"] / med["ian_restore_s"],
            worst["restore"],
        ],
        ["tar -xzvf (runbook, no checks)", med["tar_xzvf_s"], 1.0, 1.0],
        [
            "tar -xzvf && sync (durable)",
            med["tar_xzvf_sync_s"],
            med["tar_xzvf_s"] / med["tar_xzvf_sync_s"],
            float("nan"),
        ],
    ]
    sizes = [
        ["data dir", doc["data_dir_bytes"] / 2**20],
        ["ian archive (.tar.zst)", doc["ian_archive_bytes"] / 2**20],
        ["tar.gz (runbook, gzip -6)", doc["tar_gz_bytes"] / 2**20],
    ]
    tables = [
        render_table(
            f"backup/restore of {n:,} contributions (height {doc['height']}), median of "
            f"{runs} run(s); speed-up vs tar",
            ["operation", "seconds", "x tar", "x tar (worst run)"],
            rows,
        ),
        render_table("sizes", ["what", "MiB"], sizes),
    ]
    emit("backup", doc, tables, json_only=args.json_only)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def online_backup(base: Path, data: Path, out: Path) -> tuple[float, dict[str, Any]]:
    """``ian backup`` of a copy of ``data`` while another process appends blocks to it."""
    live = base / "live"
    shutil.copytree(data, live)
    ready = base / "writer.ready"
    writer = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(live), str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not ready.exists():
            if writer.poll() is not None:
                raise SystemExit(f"writer failed: {writer.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        took, stdout = timed([str(IAN), "backup", "--output", str(out), "--json"], env_for(live))
    finally:
        writer.kill()
        writer.wait()
        ready.unlink(missing_ok=True)
        shutil.rmtree(live)
    return took, json.loads(stdout)


def one_run(base: Path, data: Path, first: bool) -> dict[str, Any]:
    env = env_for(data)
    fig: dict[str, Any] = {}
    # ian backup of the stopped dir (output outside the data dir so tar does not include it)
    ian_out = base / "ian.tar.zst"
    fig["ian_backup_s"], out = timed([str(IAN), "backup", "--output", str(ian_out), "--json"], env)
    fig["height"] = json.loads(out)["height"]
    fig["ian_archive_bytes"] = ian_out.stat().st_size

    # the runbook's tar -czvf of the same stopped dir
    tgz = base / "runbook.tar.gz"
    tgz.unlink(missing_ok=True)
    fig["tar_czvf_s"], _ = timed(["tar", "-czvf", str(tgz), "-C", str(base), "data"])
    fig["tar_gz_bytes"] = tgz.stat().st_size

    online_out = base / "online.tar.zst"
    fig["ian_backup_online_s"], online = online_backup(base, data, online_out)
    fig["online_backup_height"] = online["height"]
    if first:
        fig["online_verify_s"], out = timed(
            [str(IAN), "backup", "verify", str(online_out), "--json"], env
        )
        fig["online_backup_verified"] = json.loads(out)["ok"]
    online_out.unlink()

    # restores into fresh dirs
    restored = base / "restored"
    fig["ian_restore_s"], _ = timed([str(IAN), "restore", str(ian_out), "--yes"], env_for(restored))
    shutil.rmtree(restored)
    ian_out.unlink()
    untar = base / "untar"
    untar.mkdir()
    fig["tar_xzvf_s"], _ = timed(["tar", "-xzvf", str(tgz), "-C", str(untar)])
    shutil.rmtree(untar)
    untar.mkdir()
    # the same, made durable like ian restore (which fsyncs every file before the swap)
    fig["tar_xzvf_sync_s"], _ = timed(["sh", "-c", f"tar -xzvf {tgz} -C {untar} && sync"])
    shutil.rmtree(untar)
    fig["backup_speedup"] = fig["tar_czvf_s"] / fig["ian_backup_s"]
    fig["online_backup_speedup"] = fig["tar_czvf_s"] / fig["ian_backup_online_s"]
    fig["restore_speedup"] = fig["tar_xzvf_s"] / fig["ian_restore_s"]
    return fig


def run(base: Path, n: int, quick: bool, runs: int) -> dict[str, Any]:
    data = base / "data"
    build_s = build_data_dir(data, n)
    data_bytes = dir_size(data)
    warm_up(base)
    per_run = [one_run(base, data, first=i == 0) for i in range(runs)]
    timings = [k for k in per_run[0] if k.endswith("_s") and k != "online_verify_s"]
    med = {k: median([r[k] for r in per_run]) for k in timings}
    first = per_run[0]
    return {
        "benchmark": "backup",
        "quick": quick,
        "environment": environment(base),
        "contributions": n,
        "runs": runs,
        "height": first["height"],
        "build_data_dir_s": build_s,
        "data_dir_bytes": data_bytes,
        "ian_archive_bytes": first["ian_archive_bytes"],
        "tar_gz_bytes": first["tar_gz_bytes"],
        "online_backup_verified": first["online_backup_verified"],
        "online_verify_s": first["online_verify_s"],
        "median": med,
        "worst_run_speedup": {
            "backup": min(r["backup_speedup"] for r in per_run),
            "online_backup": min(r["online_backup_speedup"] for r in per_run),
            "restore": min(r["restore_speedup"] for r in per_run),
        },
        "per_run": per_run,
    }


if __name__ == "__main__":
    main()
