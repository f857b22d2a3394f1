"""Replication benchmark: block propagation latency and catch-up speed, with real nodes.

Usage::

    .venv/bin/python bench/replication_bench.py [--quick] [--json-only] [--py-spy]
        [--followers 5] [--contributions N] [--catch-up N]

Every node is a real ``ian node run`` process on loopback (ports 0, read from its JSON log), all
declaring the same extra goal ``BENCH_TRIVIAL`` (``trivial`` evaluator) through ``IAN_GOALS``.

(a) **Propagation latency.** One sequencer and ``--followers`` followers seeded with it. This
    process also joins the network as a passive P2P peer (a real :class:`ian.p2p.switch.P2PService`
    with a fresh identity, connected to every follower): a follower gossips its new height
    (``status``) and relays the block right *after* applying it, so the first message from a
    follower naming height ``h`` is the moment it applied block ``h``. Contributions go one at a
    time to the sequencer (each is one block); latency = from the HTTP 200 of ``POST
    /contribute`` at the sequencer to that follower having applied the block. Reported per
    follower sample and for "all followers" (the slowest of them), p50/p99. The next
    contribution is sent once all followers have it (closed loop, an unloaded network).
(b) **Catch-up.** A source chain is written offline into a data dir (``build_block`` +
    ``Store.append_block`` with the data dir's own identity, blocks of up to 1,000 entries as the
    sequencer makes them under load), then ``ian node run`` serves it as the sequencer, and a
    fresh follower is started against it. Rate = contributions / seconds from the follower's
    "peer connected" log record to its ``/api/v1/status`` height reaching the source's (polled
    every 50 ms). Cases: trivial goal, 100,000 contributions in 1,000-entry blocks (the
    sequencer's largest, what it makes under load) and in 200-entry blocks; the demo goal
    (fewer: its back-test costs ~150 µs each); trivial in 1-entry blocks (what a lightly loaded
    sequencer makes: the per-block cost). The follower's peak RSS is ``VmHWM``. A case that does
    not finish within ``--catch-up-timeout`` is reported as stalled with the follower's last
    sync log lines.
    Also the CPU seconds the follower and the source used meanwhile (both share 2 cores), and
    how long each took to answer ``GET /api/v1/status`` meanwhile (p50/p90/max of the polls):
    what an operator's ``ian status`` waits while a node catches up or serves a catch-up.
(c) **In process**, no sockets: per-contribution cost of each stage of a catch-up, and of the
    proposed fix (one SQLite transaction per fetched batch instead of one per block).
    ``--py-spy`` repeats the two trivial cases with py-spy attached to the catching-up follower
    (so those rows are slower) and reports where its busy time goes.

Results: ``bench/results/replication.json``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx

from common import (
    base_parser,
    demo_parameters,
    emit,
    environment,
    percentile,
    render_table,
    summarise_py_spy,
    trivial_parameters,
)
from ian.chain.contributions import make_contribution
from ian.chain.goals import BUILTIN_GOALS, DEMO_GOAL_ID, GoalSpec
from ian.chain.state import ChainState
from ian.config import Settings
from ian.evaluators import get_evaluator
from ian.ledger.sequencer import build_block
from ian.metrics import NodeMetrics
from ian.p2p.peer_book import PeerBook
from ian.p2p.pex import PeerExchange
from ian.p2p.switch import P2PService, PeerStatus
from ian.storage.datadir import init_data_dir
from ian.storage.store import Store

NAME = "replication"
GOAL_ID = "BENCH_TRIVIAL"
GOALS_JSON = json.dumps([{"id": GOAL_ID, "evaluator": "trivial"}])
TARGET_P99_MS = 250.0
#: issue 14 (performance) raised the replication issue's 20,000/s
TARGET_CATCH_UP_PER_S = 40_000.0
P2P_LINE = re.compile(r"\) p2p on tcp://([^:\s]+):(\d+)")
API_LINE = re.compile(r"serving the API on http://([^:\s]+):(\d+)")


# --------------------------------------------------------------------------- nodes


class Node:
    """One ``ian node run`` with JSON logs in ``<work>/<name>.log``."""

    def __init__(self, work: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.data_dir = work / name
        self.log_path = work / f"{name}.log"
        self.api = ""
        self.p2p = ""
        full = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
        full.update(
            {
                "IAN_DATA_DIR": str(self.data_dir),
                "IAN_API_HOST": "127.0.0.1",
                "IAN_API_PORT": "0",
                "IAN_P2P_HOST": "127.0.0.1",
                "IAN_P2P_PORT": "0",
                "IAN_WS_PORT": "0",
                "IAN_LOG_FORMAT": "json",
                "IAN_LOG_LEVEL": "INFO",
                "IAN_GOALS": GOALS_JSON,
                "IAN_MIN_PEERS": "0",
                "IAN_CLIENT_RATE": "1000000",
                "IAN_CLIENT_BURST": "1000000",
                "IAN_CONTRIBUTOR_RATE": "1000000",
                "IAN_CONTRIBUTOR_BURST": "1000000",
                **env,
            }
        )
        ian = Path(sys.executable).with_name("ian")
        self.started_at = time.time()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(ian), "node", "run"],
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            api, p2p = API_LINE.search(text), P2P_LINE.search(text)
            if api and p2p:
                self.api = f"http://{api.group(1)}:{api.group(2)}"
                self.p2p = f"tcp://{p2p.group(1)}:{p2p.group(2)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"node {self.name} did not start; its log:\n{self.log_path.read_text()}")

    @property
    def node_id(self) -> str:
        return json.loads((self.data_dir / "identity.json").read_text())["node_id"]

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def first_ts(self, fragment: str) -> float | None:
        """Epoch seconds of the first log record whose msg contains ``fragment``."""
        for r in self.records():
            if fragment in str(r.get("msg", "")):
                return _epoch(r.get("ts"))
        return None

    def proc_status(self, key: str) -> int:
        """A ``/proc/<pid>/status`` value in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_problems(self) -> list[str]:
        return [
            ln
            for ln in self.log_path.read_text(errors="replace").splitlines()
            if re.search(r'"level": ?"(ERROR|CRITICAL)"|Traceback', ln)
        ][:5]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _epoch(ts: Any) -> float | None:
    if isinstance(ts, int | float):
        return float(ts)
    if isinstance(ts, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def status(client: httpx.Client, node: Node) -> dict[str, Any]:
    r = client.get(node.api + "/api/v1/status")
    r.raise_for_status()
    return r.json()


def body(goal: str, raw: bytes, i: int, tag: str) -> dict[str, Any]:
    return {
        "goal_id": goal,
        "agent_pack": {
            "version": "1.0",
            "parameters": base64.b64encode(raw).decode(),
            "metadata": {"tag": tag},
        },
        "contributor_id": f"bench-{i % 97}",
        "seed": i,
    }


# --------------------------------------------------------------------------- (a) latency


class Observer:
    """A passive P2P peer in this process: records when each follower reports a height."""

    def __init__(self, root: Path) -> None:
        init = init_data_dir(root)
        # Peer exchange may also connect it to the sequencer: harmless, only followers count.
        settings = Settings(data_dir=root, p2p_host="127.0.0.1", p2p_port=0, min_peers=0)
        self.service = P2PService(
            settings,
            init.identity,
            init.datadir,
            PeerBook.load(init.datadir.peer_scores_file),
            NodeMetrics(),
        )
        PeerExchange(self.service)  # as the node wires it
        self.seen: dict[tuple[str, int], float] = {}
        self.heights: dict[str, int] = {}
        self.changed = anyio.Event()
        self.service.add_listener(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, PeerStatus):
            now = time.perf_counter()
            if event.height > self.heights.get(event.node_id, 0):
                # Heights are consecutive: the first report of h also covers anything skipped.
                for h in range(self.heights.get(event.node_id, 0) + 1, event.height + 1):
                    self.seen.setdefault((event.node_id, h), now)
                self.heights[event.node_id] = event.height
                self.changed.set()

    async def wait_all(self, ids: list[str], height: int, within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not all(self.heights.get(i, 0) >= height for i in ids):
                self.changed = anyio.Event()
                await self.changed.wait()


async def measure_latency(work: Path, followers: int, n: int) -> dict[str, Any]:
    seq = Node(work, "lat-sequencer", {})
    seq.wait_ready()
    nodes = [Node(work, f"lat-follower{k}", {"IAN_SEED_NODES": seq.p2p}) for k in range(followers)]
    try:
        for f in nodes:
            f.wait_ready()
        ids = [f.node_id for f in nodes]
        observer = Observer(work / "observer")
        async with anyio.create_task_group() as tg:
            await tg.start(observer.service.run)
            for f, node_id in zip(nodes, ids, strict=True):
                await observer.service.connect(f.p2p, node_id=node_id)
            async with httpx.AsyncClient(base_url=seq.api, timeout=30) as client:
                # Every follower connected to the sequencer and caught up: one warm-up block.
                r = await client.post("/api/v1/contribute", json=body(GOAL_ID, b"warm", 0, "w"))
                r.raise_for_status()
                h0 = (await client.get("/api/v1/status")).json()["height"]
                await observer.wait_all(ids, h0, within=30)
                sent: dict[int, float] = {}
                for i in range(n):
                    raw = trivial_parameters(i)
                    r = await client.post("/api/v1/contribute", json=body(GOAL_ID, raw, i, "lat"))
                    t_ok = time.perf_counter()
                    r.raise_for_status()
                    assert r.json()["accepted"], r.text
                    height = h0 + i + 1
                    sent[height] = t_ok
                    await observer.wait_all(ids, height)
                final = (await client.get("/api/v1/status")).json()["height"]
            tg.cancel_scope.cancel()
        if final != h0 + n:
            raise SystemExit(f"expected one block per contribution: height {final} != {h0 + n}")
        per_sample = sorted(
            (observer.seen[(nid, h)] - t) * 1e3 for h, t in sent.items() for nid in ids
        )
        per_block = sorted(max(observer.seen[(nid, h)] for nid in ids) - t for h, t in sent.items())
        per_block_ms = [x * 1e3 for x in per_block]
        return {
            "followers": followers,
            "contributions": n,
            "sample_p50_ms": percentile(per_sample, 50),
            "sample_p99_ms": percentile(per_sample, 99),
            "all_p50_ms": percentile(per_block_ms, 50),
            "all_p99_ms": percentile(per_block_ms, 99),
            "all_max_ms": per_block_ms[-1],
            "negative_samples": sum(1 for x in per_sample if x < 0),
            "target_p99_ms": TARGET_P99_MS,
            "log_problems": {x.name: x.log_problems() for x in [seq, *nodes] if x.log_problems()},
        }
    finally:
        for x in [*nodes, seq]:
            x.stop()


# --------------------------------------------------------------------------- (b) catch-up


def build_source(data_dir: Path, goal: str, n: int, per_block: int) -> dict[str, Any]:
    """Write a chain of ``n`` accepted contributions to ``goal`` offline (see module doc)."""
    init = init_data_dir(data_dir)
    specs = [*BUILTIN_GOALS, GoalSpec(id=GOAL_ID, evaluator="trivial")]
    spec = next(s for s in specs if s.id == goal)
    state = ChainState.genesis(specs)
    check = get_evaluator(spec.evaluator).check
    gen = trivial_parameters if spec.evaluator == "trivial" else demo_parameters
    store = Store(init.datadir.store_file)
    started = time.perf_counter()
    accepted = tried = 0
    try:
        while accepted < n:
            batch = []
            for _ in range(per_block):
                c = make_contribution(
                    goal_id=goal,
                    version="1.0",
                    parameters=gen(tried),
                    metadata={},
                    contributor_id=f"bench-{tried % 97}",
                    seed=tried,
                )
                c.parsed = check(c.parameters, c.metadata)
                batch.append(c)
                tried += 1
            state.begin()
            outcomes, block, entries = build_block(state, init.identity, batch, store=store)
            if block is None:
                continue
            if accepted + len(entries) > n:  # trim the last block to exactly n
                state.rollback()
                keep = n - accepted
                ok = [c for c, o in zip(batch, outcomes, strict=True) if o.accepted][:keep]
                state.begin()
                _, block, entries = build_block(state, init.identity, ok, store=store)
                assert block is not None
            store.append_block(block, entries)
            state.height = block.height
            state.head_hash = block.hash
            state.head_timestamp_ms = block.header.timestamp_ms
            state.begin()
            accepted += len(entries)
    finally:
        store.close()
    return {
        "height": state.height,
        "contributions": accepted,
        "build_s": time.perf_counter() - started,
    }


def measure_catch_up(
    work: Path,
    label: str,
    goal: str,
    n: int,
    per_block: int,
    *,
    timeout: float,
    spy: bool = False,
) -> dict[str, Any]:
    """One catch-up case; gives up after ``timeout`` s (``stalled``, with the follower's last
    sync log lines)."""
    src = build_source(work / f"{label}-source", goal, n, per_block)
    seq_started = time.perf_counter()
    seq = Node(work, f"{label}-source", {})
    seq.wait_ready(timeout=600)
    source_ready_s = time.perf_counter() - seq_started
    fresh: Node | None = None
    spy_proc: subprocess.Popen[str] | None = None
    try:
        with httpx.Client(timeout=30) as client:
            target = status(client, seq)["height"]
            assert target == src["height"], (target, src)
            fresh = Node(work, f"{label}-fresh", {"IAN_SEED_NODES": seq.p2p})
            raw = work / f"{label}-pyspy.txt"
            if spy:
                spy_proc = start_py_spy(fresh.proc.pid, raw)
            fresh.wait_ready()
            seq_cpu0, fresh_cpu0 = seq.cpu_s(), fresh.cpu_s()
            height = 0
            first_block: float | None = None
            # How long each node takes to answer GET /status meanwhile (the follower busy
            # applying, the source serving its get_blocks).
            waits: dict[str, list[float]] = {"fresh": [], "source": []}
            deadline = time.monotonic() + timeout
            while height < target and time.monotonic() < deadline:
                if fresh.proc.poll() is not None:
                    raise SystemExit(f"{fresh.name} exited:\n{fresh.log_path.read_text()[-3000:]}")
                time.sleep(0.05)
                asked = time.perf_counter()
                height = status(client, fresh)["height"]
                waits["fresh"].append(time.perf_counter() - asked)
                asked = time.perf_counter()
                status(client, seq)
                waits["source"].append(time.perf_counter() - asked)
                if height and first_block is None:
                    first_block = time.time()
            done = time.time()
            stalled = height < target
            fresh_cpu, seq_cpu = fresh.cpu_s() - fresh_cpu0, seq.cpu_s() - seq_cpu0
            peak_rss = fresh.proc_status("VmHWM")
            rss_now = fresh.proc_status("VmRSS")
            mine, theirs = status(client, fresh)["goals"], status(client, seq)["goals"]
            keys = ("log_size", "log_root", "leaderboard_size", "leaderboard_root")
            same = all(
                {k: mine[g][k] for k in keys} == {k: theirs[g][k] for k in keys} for g in theirs
            )
            if not same:
                print("ROOTS DIFFER", json.dumps({"follower": mine, "source": theirs})[:3000])
        connected = fresh.first_ts(f"peer {seq.node_id} connected")
        start = connected if connected is not None else fresh.started_at
        seconds = done - start
        doc: dict[str, Any] = {
            "case": label,
            "goal": goal,
            "contributions": src["contributions"],
            "blocks": src["height"],
            "entries_per_block": per_block,
            "source_build_s": src["build_s"],
            "source_start_s": source_ready_s,
            "catch_up_s": seconds,
            "contributions_per_s": src["contributions"] / seconds,
            "blocks_per_s": src["height"] / seconds,
            "from_spawn_s": done - fresh.started_at,
            # Connected -> first block applied (within the 50 ms polling).
            "first_block_after_s": None if first_block is None else first_block - start,
            "peak_rss_mib": peak_rss / 1024,
            # CPU use over the catch-up: how far from CPU-bound each side was.
            "follower_cpu_s": fresh_cpu,
            "source_cpu_s": seq_cpu,
            "rss_after_mib": rss_now / 1024,
            "roots_match": same,
            **{
                f"{who}_status_{k}_ms": 1e3 * percentile(sorted(w), q)
                for who, w in waits.items()
                for k, q in (("p50", 50), ("p90", 90), ("max", 100))
            },
            "stalled": stalled,
            "height_reached": height,
            "log_problems": fresh.log_problems(),
        }
        if stalled:
            doc["contributions_per_s"] = doc["blocks_per_s"] = float("nan")
            doc["sync_log"] = [
                str(r.get("msg"))[:300]
                for r in fresh.records()
                if r.get("logger") in ("ian.sync", "ian.p2p")
            ][-6:]
        if spy_proc is not None:
            spy_proc.send_signal(signal.SIGINT)
            spy_proc.wait(60)
            doc["py_spy"] = summarise_py_spy(raw, _MARKERS)
        return doc
    finally:
        if spy_proc is not None and spy_proc.poll() is None:
            spy_proc.kill()
        if fresh is not None:
            fresh.stop()
        seq.stop()


# --------------------------------------------------------------------------- (c) in process


def _waits(case: dict[str, Any], who: str) -> str:
    return "/".join(f"{case[f'{who}_status_{k}_ms']:.0f}" for k in ("p50", "p90", "max"))


def breakdown(work: Path, label: str, n: int, per_block: int, batch: int = 64) -> dict[str, Any]:
    """Where a follower's catch-up time goes, per contribution, with no sockets: what the
    source does for one get_blocks reply (read + encode) and what the follower does with it
    (decode + validate, ``block_from_doc``, ``apply_block``), over the whole chain in batches
    of ``batch`` blocks (``SYNC_BATCH``). ``apply_grouped_us`` is the proposed fix: the same
    ``apply_block`` calls with one SQLite transaction (one fsync) per batch instead of one
    per block (prototyped here by wrapping the store's transactions; not in src)."""
    import contextlib

    from ian.ledger.block_apply import apply_block
    from ian.p2p import messages as msg

    src = build_source(work / f"c-{label}-source", GOAL_ID, n, per_block)
    source = Store(work / f"c-{label}-source" / "chain.sqlite")
    sequencer_id = json.loads((work / f"c-{label}-source" / "identity.json").read_text())["node_id"]
    specs = [*BUILTIN_GOALS, GoalSpec(id=GOAL_ID, evaluator="trivial")]
    perf = time.perf_counter
    t = Counter()
    decoded: list[list[Any]] = []
    try:
        for start in range(1, src["height"] + 1, batch):
            t0 = perf()
            blocks = source.blocks(start, batch, max_bytes=1 << 62)
            t1 = perf()
            payload = msg.encode_envelope(
                msg.Envelope(1, None, msg.Blocks(blocks=[msg.block_to_doc(b) for b in blocks]))
            )
            t2 = perf()
            env = msg.decode_envelope(payload)
            t3 = perf()
            decoded.append([msg.block_from_doc(d) for d in env.message.blocks])
            t4 = perf()
            t["read"] += t1 - t0
            t["encode"] += t2 - t1
            t["decode"] += t3 - t2
            t["from_doc"] += t4 - t3
            t["bytes"] += len(payload)
    finally:
        source.close()
    for grouped in (False, True):
        store = Store(work / f"c-{label}-{'grouped' if grouped else 'per-block'}.sqlite")
        state = ChainState.genesis(specs)
        started = perf()
        try:
            for blocks in decoded:
                if grouped:
                    store._tx = contextlib.nullcontext  # type: ignore[method-assign]
                    store._w.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                for b in blocks:
                    apply_block(state, store, b, sequencer=sequencer_id)
                if grouped:
                    store._w.execute("COMMIT")  # type: ignore[union-attr]
        finally:
            store.close()
        t["apply_grouped" if grouped else "apply"] += perf() - started
    us = {k: t[k] / n * 1e6 for k in ("read", "encode", "decode", "from_doc", "apply")}
    us["apply_grouped"] = t["apply_grouped"] / n * 1e6
    follower_now = us["decode"] + us["from_doc"] + us["apply"]
    follower_fix = us["decode"] + us["from_doc"] + us["apply_grouped"]
    return {
        "case": label,
        "contributions": n,
        "blocks": src["height"],
        "reply_bytes_per_contribution": t["bytes"] / n,
        **{f"{k}_us": v for k, v in us.items()},
        "follower_us_now": follower_now,
        "follower_us_grouped_commit": follower_fix,
        "follower_bound_per_s_now": 1e6 / follower_now,
        "follower_bound_per_s_grouped_commit": 1e6 / follower_fix,
    }


# --------------------------------------------------------------------------- py-spy

_MARKERS = (
    "Replicator._sync_once",
    "Replicator._apply",
    "apply_block",
    "check_block_signature",
    "execute_block",
    "execute",
    "evaluate",
    "backtest",
    "Store.append_block",
    "Store.has_packs",
    "block_from_doc",
    "contribution_from_doc",
    "make_contribution",
    "decode_envelope",
    "Session.receive_data",
    "TlsStream.receive",
    "P2PService._on_block_applied",
    "Node._on_block_applied",
    "Node._publish",
    "announce_status",
    "Replicator.announce",
    "block_to_doc",
    "encode_envelope",
)


def start_py_spy(pid: int, raw: Path) -> subprocess.Popen[str] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found; skipping the profile", file=sys.stderr)
        return None
    cmd = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    cmd += ["--output", str(raw), "--nonblocking", "--threads"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # attach before the catch-up starts (the node needs ~1 s to start)
    return proc


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=5)
    parser.add_argument("--contributions", type=int, default=None, help="(a) samples")
    parser.add_argument("--catch-up", type=int, default=None, help="(b) trivial contributions")
    parser.add_argument("--py-spy", action="store_true", help="profile a catching-up node")
    parser.add_argument(
        "--catch-up-timeout", type=float, default=90.0, help="give a catch-up case up after S s"
    )
    args = parser.parse_args()
    # SIGTERM (e.g. a job runner stopping us) must still run the finally blocks that stop nodes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n_lat = args.contributions or (60 if args.quick else 250)
    n_trivial = args.catch_up or (20_000 if args.quick else 100_000)
    n_demo = 1_000 if args.quick else 5_000
    n_small = 500 if args.quick else 2_000

    with tempfile.TemporaryDirectory(prefix="ian-repl-bench-") as tmp:
        work = Path(tmp)
        env = environment(work)
        latency = anyio.run(measure_latency, work, args.followers, n_lat)
        t = args.catch_up_timeout
        catch_up = [
            measure_catch_up(work, "trivial 1000/block", GOAL_ID, n_trivial, 1000, timeout=t),
            measure_catch_up(work, "trivial 200/block", GOAL_ID, n_trivial, 200, timeout=t),
            measure_catch_up(work, "demo 200/block", DEMO_GOAL_ID, n_demo, 200, timeout=t),
            measure_catch_up(work, "trivial 1/block", GOAL_ID, n_small, 1, timeout=t),
        ]
        in_process = [
            breakdown(work, "trivial 200/block", n_trivial // 5, 200),
            breakdown(work, "trivial 1/block", n_small, 1),
        ]
        if args.py_spy:
            catch_up += [
                measure_catch_up(
                    work, "py-spy trivial 200/block", GOAL_ID, n_trivial, 200, timeout=t, spy=True
                ),
                measure_catch_up(
                    work, "py-spy trivial 1/block", GOAL_ID, n_small, 1, timeout=t, spy=True
                ),
            ]

    doc: dict[str, Any] = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": env,
        "latency": latency,
        "catch_up": catch_up,
        "in_process": in_process,
        "target_p99_ms": TARGET_P99_MS,
        "target_catch_up_per_s": TARGET_CATCH_UP_PER_S,
    }
    tables = [
        render_table(
            f"(a) propagation: sequencer HTTP 200 -> follower applied "
            f"({latency['followers']} followers, {latency['contributions']} contributions, "
            f"target p99 < {TARGET_P99_MS:.0f} ms)",
            ["measure", "p50 ms", "p99 ms", "max ms"],
            [
                ["each follower", latency["sample_p50_ms"], latency["sample_p99_ms"], "-"],
                [
                    "all followers",
                    latency["all_p50_ms"],
                    latency["all_p99_ms"],
                    latency["all_max_ms"],
                ],
            ],
        ),
        render_table(
            f"(b) catch-up of a fresh follower (target trivial >= "
            f"{TARGET_CATCH_UP_PER_S:,.0f} contributions/s)",
            [
                "case",
                "contributions",
                "blocks",
                "seconds",
                "1st block s",
                "contrib/s",
                "blocks/s",
                "peak RSS MiB",
                "CPU s follower",
                "CPU s source",
                "roots match",
                "status ms follower p50/p90/max",
                "source",
                "stalled",
            ],
            [
                [
                    c["case"],
                    c["contributions"],
                    c["blocks"],
                    c["catch_up_s"],
                    c["first_block_after_s"],
                    c["contributions_per_s"],
                    c["blocks_per_s"],
                    c["peak_rss_mib"],
                    c["follower_cpu_s"],
                    c["source_cpu_s"],
                    str(c["roots_match"]),
                    _waits(c, "fresh"),
                    _waits(c, "source"),
                    "STALLED" if c["stalled"] else "",
                ]
                for c in catch_up
            ],
        ),
    ]
    tables.append(
        render_table(
            "(c) in process, µs per contribution: source (read, encode one get_blocks reply), "
            "follower (decode, block_from_doc, apply_block); apply grouped = one transaction "
            "per 64 blocks (proposal)",
            [
                "case",
                "read",
                "encode",
                "decode",
                "from_doc",
                "apply",
                "apply grouped",
                "follower/s now",
                "follower/s grouped",
            ],
            [
                [
                    c["case"],
                    c["read_us"],
                    c["encode_us"],
                    c["decode_us"],
                    c["from_doc_us"],
                    c["apply_us"],
                    c["apply_grouped_us"],
                    c["follower_bound_per_s_now"],
                    c["follower_bound_per_s_grouped_commit"],
                ]
                for c in in_process
            ],
        )
    )
    for c in catch_up:
        prof = c.get("py_spy")
        if prof:
            tables.append(
                render_table(
                    f"py-spy on the catching-up follower ({c['case']}): time under key frames",
                    ["frame", "share of busy %"],
                    [[x["function"], 100 * x["share_of_busy"]] for x in prof["inclusive"]],
                )
            )
            tables.append(
                render_table(
                    "own time, top 15",
                    ["function", "share of busy %"],
                    [[x["function"], 100 * x["share_of_busy"]] for x in prof["own_top"]],
                )
            )
    emit(NAME, doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
