"""Memory and start-up of nodes on a chain of several authorities, as their consensus log grows.

(a) **start-up load, in process**: consensus logs of 2,000, 20,000 and 100,000 blocks of 12 KB
    (``--quick``: 500 and 5,000) are written with ``ConsensusLog.append``, with a certificate
    for the last block; then, in a fresh process each, ``ConsensusLog(...).load(keep=64)`` (what
    a node's start-up reads: the blocks from 64 below the applied mark) and, for the largest,
    ``load()`` (the whole log, what every start-up read before the core kept only recent blocks):
    wall time, blocks held, the process's peak RSS growth.
(b) **three authorities**: ``--steps`` rounds (4; ``--quick`` 2) of ``--per-step`` (100,000;
    ``--quick`` 10,000) distinct trivial contributions through the leader's API; every
    authority's RSS after each round. The in-memory part of the log is bounded
    (``ConsensusParams.memory_bytes``), so RSS should level off once the node's other caches
    have. Then a follower authority is stopped and started again on that log: spawn -> API
    serving, and its RSS then.

    .venv/bin/python bench/consensus_memory_bench.py [--quick] [--json-only] [--steps N]
        [--per-step N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import consensus_bench as cb
from common import base_parser, emit, environment, render_table
from ian.consensus import Block, BlockKind, CommitCertificate, genesis_hash
from ian.storage.consensus_log import RESTART_KEEP, ConsensusLog

NAME = "consensus_memory"
CHAIN = "c" * 64
PAYLOAD = 12_000


# --------------------------------------------------------------------------- (a) load


def build_log(path: Path, blocks: int) -> None:
    log = ConsensusLog(path)
    parent = genesis_hash(CHAIN)
    batch: list[Block] = []
    for h in range(1, blocks + 1):
        block = Block.build(
            CHAIN,
            height=h,
            term=1,
            parent_hash=parent,
            kind=BlockKind.DATA,
            payload=os.urandom(PAYLOAD),
        )
        parent = block.hash
        batch.append(block)
        if len(batch) == 500 or h == blocks:
            log.append(batch, sync=False)
            batch = []
    log.set_applied(blocks)
    log.store_certificate(CommitCertificate(CHAIN, 1, blocks, parent, ()))
    log.close()


def probe(path: Path, whole: bool) -> dict[str, Any]:
    """Run in a fresh process: open and load ``path``; what it took."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    log = ConsensusLog(path)
    state = log.load(None if whole else RESTART_KEEP)
    took = time.perf_counter() - started
    log.close()
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"load_ms": took * 1000, "blocks_held": len(state.log), "rss_growth_mib": grew / 1024}


def measure_load(work: Path, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for blocks in sizes:
        path = work / f"consensus-{blocks}.db"
        build_log(path, blocks)
        for whole in [False, True] if blocks == sizes[-1] else [False]:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--probe",
                    str(path),
                    "--whole" if whole else "--window",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(
                {
                    "blocks": blocks,
                    "file_mib": path.stat().st_size / 2**20,
                    "load": "whole log" if whole else f"window (keep {RESTART_KEEP})",
                    **json.loads(out.stdout),
                }
            )
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rows


# --------------------------------------------------------------------------- (b) authorities


def measure_authorities(work: Path, steps: int, per_step: int) -> dict[str, Any]:
    net = cb.Network(work, "mem")
    try:
        with httpx.Client(timeout=10) as client:
            leader = net.leader(client)
            rss = [[a.proc_status("VmRSS") / 1024 for a in net.authorities]]
            loaded = []
            for step in range(steps):
                asyncio.run(cb._load(leader.api, per_step, first=step * per_step))
                loaded.append((step + 1) * per_step)
                rss.append([a.proc_status("VmRSS") / 1024 for a in net.authorities])
            other, restart_s = cb.restart_a_follower(net, client)
            return {
                "contributions": [0, *loaded],
                "rss_mib": rss,
                "restart_s": restart_s,
                "restart_rss_mib": other.proc_status("VmRSS") / 1024,
                "consensus_db_mib": (other.data_dir / "consensus.db").stat().st_size / 2**20,
            }
    finally:
        net.stop()


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--steps", type=int, default=None, help="load rounds (default 4)")
    parser.add_argument("--per-step", type=int, default=None, help="contributions a round")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--window", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        print(json.dumps(probe(args.probe, args.whole)))
        return
    steps = args.steps or (2 if args.quick else 4)
    per_step = args.per_step or (10_000 if args.quick else 100_000)
    work = Path(tempfile.mkdtemp(prefix="ian-consensus-memory-"))
    doc: dict[str, Any] = {"environment": environment(work)}
    doc["load"] = measure_load(work, [500, 5_000] if args.quick else [2_000, 20_000, 100_000])
    doc["authorities"] = au = measure_authorities(work, steps, per_step)
    tables = [
        render_table(
            f"consensus log start-up load ({PAYLOAD:,}-byte blocks, one fresh process each)",
            ["blocks", "file MiB", "load", "ms", "blocks held", "peak RSS growth MiB"],
            [
                [
                    r["blocks"],
                    r["file_mib"],
                    r["load"],
                    r["load_ms"],
                    r["blocks_held"],
                    r["rss_growth_mib"],
                ]
                for r in doc["load"]
            ],
        ),
        render_table(
            "three authorities: RSS as contributions are loaded, then a follower restarted",
            ["contributions", "authority RSS MiB (min - max)"],
            [
                [n, f"{min(r):.0f} - {max(r):.0f}"]
                for n, r in zip(au["contributions"], au["rss_mib"], strict=True)
            ]
            + [
                [
                    "restart",
                    f"{au['restart_s']:.2f} s, {au['restart_rss_mib']:.0f} MiB "
                    f"(consensus.db {au['consensus_db_mib']:.0f} MiB)",
                ]
            ],
        ),
    ]
    emit(NAME, doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
