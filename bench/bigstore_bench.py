"""A node on a big store: start-up, memory, log pages and proofs with millions of entries.

Usage::

    .venv/bin/python bench/bigstore_bench.py [--entries N] [--quick] [--runs R] \
        [--requests K] [--profile-start] [--json-only]

1. Builds (once; reused across runs) a data dir holding one trivial-evaluator goal ``BENCH`` with
   N accepted contributions (default 10,000,000; ``--quick`` 1,000,000) in blocks of 5,000, under
   ``/tmp/ian-bigstore-<N>-<key>`` (``key`` changes with the builder and the schema version). The
   blocks are made by the sequencer's own ``build_block`` (contribution hashes, MMR nodes,
   leaderboards, signed headers: a valid chain); the rows are written with direct SQL, in big
   transactions, with the two secondary indexes dropped during the load and created again at
   the end (the same schema and the same rows as ``Store.append_blocks`` writes). The node's
   own start-up check then reads the MMR peaks back and compares every root with the last
   block's, and the builder compares them with the roots it computed; with ``--verify`` the full
   ``verify_store`` replay runs too (minutes at 10M). A ``complete`` marker is written last, so
   an interrupted build is started again.
2. Starts a real ``ian node run`` on it once untimed (bytecode compiled and cached, as an
   installed ian has it; store pages read), then ``--runs`` times (default 3; each run after
   the previous one's clean shutdown) and measures start-up, from the process start to the
   first ``200`` of ``GET /health`` (wall, and the node's CPU time by then from ``/proc``), and
   its RSS right after (``VmRSS``) and peak (``VmHWM``).
3. On the last run: ``GET /api/v1/log/BENCH`` pages of 100 and of 1,000 entries at random
   offsets (then the same pages again: cached), and ``GET /api/v1/proof/BENCH/<i>`` at random
   indices, ``--requests`` each (default 400; ``--quick`` 150), one keep-alive connection,
   p50/p99; then RSS again.

``--profile-start`` runs the start-up once in process under cProfile (``Node.open`` and the
imports before it) and prints the top functions. The machine is shared: the load average is
recorded at the start and next to each figure. The page cache is warm (the files were just
built or read): a cold start after a reboot reads more from disk. Results:
``bench/results/bigstore.json``. Nothing here asserts on time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    base_parser,
    emit,
    environment,
    median,
    percentile,
    process_cpu_s,
    render_table,
)

GOAL = "BENCH"
BLOCK = 5000
#: rows written per transaction while building
TX_BLOCKS = 40
GOALS_ENV = json.dumps([{"id": GOAL, "evaluator": "trivial"}])
SERVING = re.compile(r"serving the API on http://([^:\s]+):(\d+)")
#: bump when the builder changes what it writes
BUILDER_VERSION = "1"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cache_dir(n: int) -> Path:
    from ian.storage.store import SCHEMA_VERSION

    key = hashlib.sha256(f"{BUILDER_VERSION}/{SCHEMA_VERSION}/{GOAL}".encode()).hexdigest()[:10]
    return Path(f"/tmp/ian-bigstore-{n}-{key}")


def settings_for(data: Path) -> Any:
    from ian.chain.goals import GoalSpec
    from ian.config import load_settings

    return load_settings(
        env={}, overrides={"data_dir": data, "goals": [GoalSpec(id=GOAL, evaluator="trivial")]}
    )


# --------------------------------------------------------------------------- building


_INSERT = (
    "INSERT INTO contributions (seq, goal_id, log_index, contribution_hash, pack_hash, "
    "contributor_id, seed, version, parameters, metadata, score, metrics, block_height, "
    "mmr_nodes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def build(data: Path, n: int, progress: bool = True) -> dict[str, Any]:
    """Write ``n`` contributions into a new data dir at ``data``; returns timings and roots."""
    from ian.chain.contributions import make_contribution
    from ian.ledger.sequencer import build_block
    from ian.node import Node

    started = time.perf_counter()
    node = Node.open(settings_for(data))  # identity, certs, an empty store, node_state.json
    identity, state = node.identity, node.state
    node.close()

    conn = sqlite3.connect(data / "chain.sqlite", isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contributions' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:
        conn.execute(f"DROP INDEX {name}")
    seq = 0
    i = 0
    last_report = time.perf_counter()
    while i < n:
        conn.execute("BEGIN")
        for _ in range(TX_BLOCKS):
            if i >= n:
                break
            batch = [
                make_contribution(
                    goal_id=GOAL,
                    version="1.0",
                    parameters=b"bench-trivial-%d" % k,
                    metadata={},
                    contributor_id=f"contributor-{k % 100_000}",
                    seed=k,
                )
                for k in range(i, min(n, i + BLOCK))
            ]
            state.begin()
            outcomes, block, entries = build_block(state, identity, batch)
            assert block is not None and len(entries) == len(batch), "trivial goal: all accepted"
            del outcomes
            header = json.dumps(block.header.to_doc(), sort_keys=True, separators=(",", ":"))
            conn.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                (block.height, block.hash, header, block.signature, seq + 1, len(entries)),
            )
            rows = []
            for e in entries:
                seq += 1
                c = e.contribution
                rows.append(
                    (
                        seq,
                        c.goal_id,
                        e.log_index,
                        e.contribution_hash,
                        c.pack_hash,
                        c.contributor_id,
                        c.seed,
                        c.version,
                        c.parameters,
                        c.metadata_json,
                        e.score,
                        e.metrics_json,
                        block.height,
                        b"".join(e.mmr_nodes),
                    )
                )
            conn.executemany(_INSERT, rows)
            state.height, state.head_hash = block.height, block.hash
            state.head_timestamp_ms = block.header.timestamp_ms
            state.begin()
            i += len(batch)
        conn.execute("COMMIT")
        if progress and time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            rate = i / (last_report - started)
            print(f"  built {i:,}/{n:,} ({rate:,.0f}/s, load {load()})", file=sys.stderr)
    rows_s = time.perf_counter() - started
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    indexed_s = time.perf_counter() - started
    expected = {gid: g.roots().to_doc() for gid, g in state.goals.items() if g.mmr.size}

    # The node's own start-up check: MMR peaks read back, roots compared with the last block's.
    node = Node.open(settings_for(data))
    try:
        got = {gid: g.roots().to_doc() for gid, g in node.state.goals.items() if g.mmr.size}
        if got != expected:
            raise SystemExit(f"built store roots differ: {got} != {expected}")
        node.checkpoint(clean=True)
    finally:
        node.close()
    return {
        "entries": n,
        "rows_s": round(rows_s, 1),
        "with_indexes_s": round(indexed_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "roots": expected,
        "load_at_end": load(),
    }


def ensure_store(n: int, verify: bool) -> tuple[Path, dict[str, Any]]:
    base = cache_dir(n)
    data = base / "data"
    marker = base / "complete"
    if marker.exists():
        info = json.loads(marker.read_text())
        info["reused"] = True
    else:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        print(f"building {n:,} entries in {base} (load {load()}) ...", file=sys.stderr)
        info = build(data, n)
        marker.write_text(json.dumps(info))
        info["reused"] = False
    if verify:
        from ian.ledger.recovery import verify_store
        from ian.storage.store import Store

        t0 = time.perf_counter()
        store = Store(data / "chain.sqlite", readonly=True)
        try:
            report = verify_store(store, settings_for(data).all_goals())
        finally:
            store.close()
        if not report.ok:
            raise SystemExit(f"verify_store failed: {report.problem}")
        info["verify_store_s"] = round(time.perf_counter() - t0, 1)
    info["store_bytes"] = sum(p.stat().st_size for p in data.glob("chain.sqlite*"))
    return data, info


# --------------------------------------------------------------------------- the node


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class NodeProcess:
    def __init__(self, data: Path, log_path: Path) -> None:
        self.data = data
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0

    def start(self, timeout: float = 300.0) -> dict[str, Any]:
        ian = Path(sys.executable).with_name("ian")
        # Bytecode caching on, as an installed ian has it (its modules compiled at install).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IAN_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update(
            IAN_DATA_DIR=str(self.data),
            IAN_GOALS=GOALS_ENV,
            IAN_API_HOST="127.0.0.1",
            IAN_API_PORT="0",
            IAN_P2P_HOST="127.0.0.1",
            IAN_P2P_PORT="0",
            IAN_WS_PORT="0",
            IAN_LOG_LEVEL="INFO",
            IAN_CLIENT_RATE="1000000",
            IAN_CLIENT_BURST="1000000",
        )
        load_before = load()
        with self.log_path.open("wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [str(ian), "node", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if not self.port:
                m = SERVING.search(self.log_path.read_text(errors="replace"))
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
            if self.port:
                try:
                    status, _ = self.get("/health", timeout=2.0)
                except OSError:
                    status = 0
                if status == 200:
                    wall = time.perf_counter() - t0
                    cpu = process_cpu_s(self.proc.pid)
                    mem = proc_status(self.proc.pid)
                    return {
                        "startup_wall_s": wall,
                        "startup_cpu_s": cpu,
                        "rss_bytes": mem["VmRSS"],
                        "peak_rss_bytes": mem["VmHWM"],
                        "load_before": load_before,
                        "load_after": load(),
                    }
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        self.stop()
        raise SystemExit(f"the node did not start; its log:\n{self.log_path.read_text()}")

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def timed_gets(node: NodeProcess, paths: list[str], check: Any) -> dict[str, Any]:
    conn = http.client.HTTPConnection(node.host, node.port, timeout=30)
    times: list[float] = []
    load_before = load()
    try:
        for path in paths:
            t = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            times.append(time.perf_counter() - t)
            if resp.status != 200:
                raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
            check(path, body)
    finally:
        conn.close()
    times.sort()
    return {
        "requests": len(times),
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
        "max_ms": times[-1] * 1000,
        "load_before": load_before,
        "load_after": load(),
    }


def measure_reads(node: NodeProcess, n: int, requests: int, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def page_check(limit: int) -> Any:
        def check(path: str, body: bytes) -> None:
            doc = json.loads(body)
            start = int(path.split("from=")[1].split("&")[0])
            if len(doc["entries"]) != min(limit, n - start):
                raise SystemExit(f"GET {path}: {len(doc['entries'])} entries")
            if doc["entries"][0]["log_index"] != start:
                raise SystemExit(f"GET {path}: starts at {doc['entries'][0]['log_index']}")

        return check

    # One request of each kind first: imports and caches on first use are not the steady state.
    node.get(f"/api/v1/log/{GOAL}?from=0&limit=100")
    node.get(f"/api/v1/proof/{GOAL}/0")
    for limit in (100, 1000):
        paths = [
            f"/api/v1/log/{GOAL}?from={rng.randrange(0, n - limit)}&limit={limit}"
            for _ in range(requests)
        ]
        out[f"log_page_{limit}"] = timed_gets(node, paths, page_check(limit))
        # The same pages again: their store pages are now in the OS cache (and SQLite's), so
        # the difference to the first pass is what reading the disk cost.
        out[f"log_page_{limit}_again"] = timed_gets(node, paths, page_check(limit))

    from ian.chain import mmr

    def proof_check(path: str, body: bytes) -> None:
        doc = json.loads(body)
        proof = mmr.InclusionProof(
            leaf_index=doc["log_index"],
            size=doc["size"],
            path=tuple(bytes.fromhex(h) for h in doc["path"]),
            peaks=tuple(bytes.fromhex(h) for h in doc["peaks"]),
        )
        root, leaf = bytes.fromhex(doc["root"]), bytes.fromhex(doc["leaf"])
        if not mmr.verify_inclusion(root, leaf, proof, size=n):
            raise SystemExit(f"GET {path}: the proof does not verify")

    paths = [f"/api/v1/proof/{GOAL}/{rng.randrange(0, n)}" for _ in range(requests)]
    out["proof"] = timed_gets(node, paths, proof_check)
    return out


def profile_start(data: Path) -> list[dict[str, Any]]:
    """``Node.open`` in this process under cProfile: the top functions by cumulative time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    from ian.node import Node

    node = Node.open(settings_for(data))
    prof.disable()
    try:
        node.checkpoint(clean=True)
    finally:
        node.close()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({func})",
                "calls": nc,
                "own_s": tt,
                "cumulative_s": ct,
            }
        )
    rows.sort(key=lambda r: r["cumulative_s"], reverse=True)
    return rows[:25]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=None, help="default 10,000,000")
    parser.add_argument("--runs", type=int, default=3, help="node starts (default 3)")
    parser.add_argument("--requests", type=int, default=None, help="GETs per kind")
    parser.add_argument("--verify", action="store_true", help="full verify_store of the store")
    parser.add_argument("--build-only", action="store_true", help="build the store and stop")
    parser.add_argument("--profile-start", action="store_true", help="cProfile of Node.open")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = args.entries or (1_000_000 if args.quick else 10_000_000)
    requests = args.requests or (150 if args.quick else 400)
    rng = random.Random(args.seed)

    doc: dict[str, Any] = {"environment": environment(Path("/tmp")), "entries": n}
    data, doc["store"] = ensure_store(n, args.verify)
    if args.build_only:
        emit("bigstore", doc, [], json_only=args.json_only)
        return
    if args.profile_start:
        doc["profile_start"] = profile_start(data)

    log_path = data.parent / "node.log"
    # One untimed start first: modules compiled and cached, the store's pages read once.
    warm = NodeProcess(data, log_path)
    doc["warm_up_start"] = warm.start()
    warm.stop()
    starts = []
    node = None
    for run in range(args.runs):
        node = NodeProcess(data, log_path)
        starts.append(node.start())
        if run < args.runs - 1:
            node.stop()
    assert node is not None and node.proc is not None
    try:
        doc["reads"] = measure_reads(node, n, requests, rng)
        doc["rss_after_reads_bytes"] = proc_status(node.proc.pid)["VmRSS"]
    finally:
        rc = node.stop()
    doc["starts"] = starts
    doc["node_exit_code"] = rc
    doc["startup"] = {
        "wall_s_median": median([s["startup_wall_s"] for s in starts]),
        "cpu_s_median": median([s["startup_cpu_s"] for s in starts]),
        "rss_mb_median": median([s["rss_bytes"] / 2**20 for s in starts]),
    }

    mb = 2**20
    start_rows = [
        (
            f"start {k + 1}",
            s["startup_wall_s"],
            s["startup_cpu_s"],
            s["rss_bytes"] / mb,
            s["peak_rss_bytes"] / mb,
            f"{s['load_before']}/{s['load_after']}",
        )
        for k, s in enumerate(starts)
    ]
    tables = [
        render_table(
            f"bigstore: node start-up on {n:,} entries (store "
            f"{doc['store']['store_bytes'] / mb:,.0f} MB, load at start "
            f"{doc['environment']['loadavg_at_start']})",
            ["run", "wall s", "cpu s", "RSS MB", "peak RSS MB", "load before/after"],
            start_rows,
        ),
        render_table(
            "bigstore: reads (one keep-alive connection)",
            ["request", "n", "p50 ms", "p99 ms", "max ms", "load before/after"],
            [
                (
                    name,
                    r["requests"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    f"{r['load_before']}/{r['load_after']}",
                )
                for name, r in doc["reads"].items()
            ]
            + [("RSS after reads (MB)", "", doc["rss_after_reads_bytes"] / mb, "", "", "")],
        ),
    ]
    if args.profile_start:
        tables.append(
            render_table(
                "Node.open under cProfile (top by cumulative time)",
                ["function", "calls", "own s", "cumulative s"],
                [
                    (r["function"], r["calls"], r["own_s"], r["cumulative_s"])
                    for r in doc["profile_start"]
                ],
            )
        )
    emit("bigstore", doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
