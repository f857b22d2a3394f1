"""Networks of three authorities (CONSENSUS.md): failover, majority-durable HTTP, propagation and
a fresh follower's catch-up, every node a real ``ian node run`` on loopback.

(a) **failover**: a leader is killed (SIGKILL) again and again (20 times in a full run); each
    time a client keeps submitting to the surviving authorities every 20 ms and the figure is
    kill -> first ``accepted`` answer (a new leader was elected *and* committed). The killed node
    is restarted on its ports and rejoins before the next kill. Target: p99 < 3 s.
(b) **HTTP**, durable on a majority: the open-loop client of ``http_bench.py`` offers 500/s of
    demo-goal contributions to the leader of 3 authorities, then the same to a lone node (one
    authority) in the same run.
(c) **propagation**: one contribution at a time to the leader; client answer -> each of 5
    followers publishes ``block``/``applied`` for it on its event stream (``ian events``).
    Target: all five, p99 < 25 ms. The same blocks are also timed from the request's start:
    the answer is only one point of the leader's commit (it comes after the leader's own write
    and apply), so a change on the leader can move the first figure without making blocks
    reach the followers any sooner; this one shows whether they did. Each node's CPU per block
    is reported by role (leader, authority, follower; its rate over 3 idle seconds first taken
    out): the followers' wait is mostly for a CPU, with eight processes on the machine.
(d) **catch-up**: contributions loaded through the API (1000 per block at most), then a fresh
    follower starts and takes every certified block from the leader (certificates checked, every
    block re-executed). Target: >= 20,000 contributions/s. The authorities' RSS is read before
    and after the load (they hold the recent blocks of their consensus log in memory, up to
    ``ConsensusParams.memory_bytes``, and read older ones back from ``consensus.db``); then a
    follower authority is restarted on that log: spawn -> API serving, and its RSS then.
(e) **growth**: ``--growth-blocks`` (4,000; ``--quick`` 400) single-entry blocks, one
    contribution at a time to the leader of 3 authorities with 5 followers, and each role's CPU
    per block (idle rate taken out) in 8 windows of them: what a block costs should not grow
    with the chain. A leader that scanned every commit certificate it held for each message to a
    peer went from ~9.5 to ~16 ms a block over 4,000 blocks.

    .venv/bin/python bench/consensus_bench.py [--quick] [--json-only] [--kills N]
        [--growth-blocks N]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from common import (
    base_parser,
    emit,
    environment,
    percentile,
    process_cpu_s,
    render_table,
    trivial_parameters,
)
from http_bench import Connection, drive, make_request
from ian.chain.genesis import Authority, Genesis
from ian.chain.goals import BUILTIN_GOALS, GoalSpec
from ian.storage.datadir import init_data_dir
from replication_bench import GOAL_ID, Node, body

NAME = "consensus"
TARGET_FAILOVER_S = 3.0
TARGET_PROPAGATION_P99_MS = 25.0
TARGET_CATCH_UP_PER_S = 20_000.0
WS_LINE = re.compile(r"events on ws://([^:\s]+):(\d+)")


# --------------------------------------------------------------------------- the network


class Network:
    """``authorities`` authorities from one genesis, plus followers; all on loopback."""

    def __init__(
        self, work: Path, tag: str, authorities: int = 3, env: dict[str, str] | None = None
    ) -> None:
        """``env``: more ``IAN_*`` settings for the authorities."""
        self.work = work
        self.tag = tag
        dirs = [work / f"{tag}-auth{i}" for i in range(authorities)]
        members = []
        for d in dirs:
            identity = init_data_dir(d).identity
            members.append(
                Authority(node_id=identity.node_id, public_key=identity.public_key.hex())
            )
        goals = [*BUILTIN_GOALS, GoalSpec(id=GOAL_ID, evaluator="trivial")]
        genesis = Genesis(created_at=datetime.now(UTC), goals=goals, authorities=members)
        self.genesis = work / f"{tag}-genesis.json"
        self.genesis.write_text(genesis.to_json())
        self.authorities: list[Node] = []
        extra = env
        for i in range(authorities):
            seeds = ",".join(n.p2p for n in self.authorities)
            env = {**(extra or {}), "IAN_GENESIS": str(self.genesis)}
            if seeds:
                env["IAN_SEED_NODES"] = seeds
            node = Node(work, f"{tag}-auth{i}", env)
            node.wait_ready()
            self.authorities.append(node)
        self.followers: list[Node] = []

    def seeds(self) -> str:
        return ",".join(n.p2p for n in self.authorities if n.proc.poll() is None)

    def add_follower(self, name: str) -> Node:
        env = {"IAN_GENESIS": str(self.genesis), "IAN_SEED_NODES": self.seeds()}
        node = Node(self.work, f"{self.tag}-{name}", env)
        node.wait_ready()
        self.followers.append(node)
        return node

    def live(self) -> list[Node]:
        return [n for n in [*self.authorities, *self.followers] if n.proc.poll() is None]

    def leader(self, client: httpx.Client, within: float = 30.0) -> Node:
        """The node every live node names as leader."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                named = {
                    client.get(n.api + "/api/v1/status").json()["leader_id"] for n in self.live()
                }
            except httpx.HTTPError:
                named = set()
            if len(named) == 1 and None not in named:
                leader_id = named.pop()
                for n in self.authorities:
                    if n.node_id == leader_id and n.proc.poll() is None:
                        return n
            time.sleep(0.05)
        raise SystemExit(f"no agreed leader within {within} s (node logs: {self.work})")

    def restart(self, node: Node) -> Node:
        """A new process on ``node``'s data dir and ports (its peers keep its address)."""
        env = {
            "IAN_GENESIS": str(self.genesis),
            "IAN_SEED_NODES": self.seeds(),
            "IAN_API_PORT": node.api.rsplit(":", 1)[1],
            "IAN_P2P_PORT": node.p2p.rsplit(":", 1)[1],
        }
        again = Node(self.work, node.name, env)
        again.wait_ready()
        self.authorities[self.authorities.index(node)] = again
        return again

    def stop(self) -> None:
        for n in [*self.followers, *self.authorities]:
            n.stop()


# --------------------------------------------------------------------------- (a) failover


def measure_failover(work: Path, kills: int) -> dict[str, Any]:
    net = Network(work, "fo")
    seconds: list[float] = []
    statuses: dict[str, int] = {}
    try:
        with httpx.Client(timeout=5) as client:
            leader = net.leader(client)
            n = 0
            for _ in range(kills):
                os.killpg(leader.proc.pid, signal.SIGKILL)
                leader.proc.wait()
                killed_at = time.monotonic()
                survivors = [a for a in net.authorities if a is not leader]
                while True:
                    n += 1
                    target = survivors[n % len(survivors)]
                    try:
                        r = client.post(
                            target.api + "/api/v1/contribute",
                            json=body(GOAL_ID, trivial_parameters(n), n, "failover"),
                        )
                        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                        if r.status_code == 200 and r.json()["accepted"]:
                            break
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    if time.monotonic() - killed_at > 60:
                        raise SystemExit(
                            f"no commit within 60 s of a leader kill (node logs: {work})"
                        )
                    time.sleep(0.02)
                seconds.append(time.monotonic() - killed_at)
                net.restart(leader)
                leader = net.leader(client)  # every node, the restarted one too, agrees
        ordered = sorted(seconds)
        return {
            "kills": kills,
            "p50_s": percentile(ordered, 50),
            "p99_s": percentile(ordered, 99),
            "max_s": ordered[-1],
            "each_s": [round(s, 3) for s in seconds],
            "answers": statuses,
            "target_s": TARGET_FAILOVER_S,
        }
    finally:
        net.stop()


# --------------------------------------------------------------------------- (b) HTTP


def _offer(pool: ProcessPoolExecutor, api: str, tag: str, rate: float, duration: float) -> Any:
    """A 2 s warm-up, then ``duration`` s of the open-loop client at ``rate``/s."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    phase = {"mode": "open", "kind": "contribute", "workers": 1, "rate": rate, "max_conns": 256}
    drive(pool, host, int(port), duration=2, tag=f"warm-{tag}", **phase)
    doc = drive(pool, host, int(port), duration=duration, tag=tag, **phase)
    doc.pop("latencies_ms", None)
    return doc


def measure_http(work: Path, rate: float, duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ProcessPoolExecutor(1) as pool:
        net = Network(work, "http")
        try:
            with httpx.Client(timeout=5) as client:
                leader = net.leader(client)
            out["three_authorities"] = _offer(pool, leader.api, "quorum", rate, duration)
        finally:
            net.stop()
        lone = Node(work, "http-lone", {})
        lone.wait_ready()
        try:
            out["one_authority"] = _offer(pool, lone.api, "lone", rate, duration)
        finally:
            lone.stop()
    return out


# --------------------------------------------------------------------------- (c) propagation


class Applied:
    """When each follower applied each height, from its event stream (``block``/``applied``
    events on ``ws_port``): what an operator's ``ian events`` sees."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], float] = {}
        self.heights: dict[str, int] = {}
        self.changed = anyio.Event()

    async def follow(self, node: Node, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        import websockets

        m = WS_LINE.search(node.log_path.read_text(errors="replace"))
        if m is None:
            raise SystemExit(f"{node.name} logged no event stream address")
        token = (node.data_dir / "api_token").read_text().strip()
        async with websockets.connect(f"ws://{m.group(1)}:{m.group(2)}/events") as ws:
            await ws.send(json.dumps({"type": "subscribe", "token": token, "topics": ["block"]}))
            json.loads(await ws.recv())  # subscribed
            task_status.started()
            async for raw in ws:
                now = time.perf_counter()
                event = json.loads(raw)
                if event.get("type") != "applied":
                    continue
                height = int(event["data"]["height"])
                self.seen.setdefault((node.name, height), now)
                self.heights[node.name] = max(self.heights.get(node.name, 0), height)
                self.changed.set()
                self.changed = anyio.Event()

    async def wait_all(self, names: list[str], height: int, within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not all(self.heights.get(n, 0) >= height for n in names):
                await self.changed.wait()


#: seconds the nodes are watched idle before the propagation run (their ticks' CPU rate)
IDLE_SAMPLE_S = 3.0


def cpu_seconds(nodes: list[Node]) -> dict[str, float]:
    return {x.name: process_cpu_s(x.proc.pid) for x in nodes}


async def cpu_rates(nodes: list[Node], seconds: float) -> dict[str, float]:
    """CPU seconds per second each of ``nodes`` spends over ``seconds`` (idle: ticks, pings)."""
    before, t0 = cpu_seconds(nodes), time.perf_counter()
    await anyio.sleep(seconds)
    after, elapsed = cpu_seconds(nodes), time.perf_counter() - t0
    return {name: (after[name] - before[name]) / elapsed for name in before}


@dataclass(frozen=True)
class CpuSpent:
    """Two :func:`cpu_seconds` readings ``elapsed`` seconds and ``blocks`` blocks apart, and
    each node's idle rate (:func:`cpu_rates`)."""

    before: dict[str, float]
    after: dict[str, float]
    idle: dict[str, float]
    elapsed: float
    blocks: int

    def ms_per_block(self, group: list[Node]) -> float:
        """Mean CPU ms a node of ``group`` spent per block, its idle rate taken out."""
        spent = [
            self.after[x.name] - self.before[x.name] - self.idle[x.name] * self.elapsed
            for x in group
        ]
        return sum(spent) / len(spent) / self.blocks * 1e3


def with_followers(work: Path, tag: str, followers: int) -> tuple[Network, list[Node], Node]:
    """Three authorities and ``followers`` followers, all started; and the leader."""
    net = Network(work, tag)
    try:
        nodes = [net.add_follower(f"f{k}") for k in range(followers)]
        with httpx.Client(timeout=5) as sync_client:
            return net, nodes, net.leader(sync_client)
    except BaseException:
        net.stop()
        raise


async def measure_propagation(work: Path, followers: int, n: int) -> dict[str, Any]:
    net, nodes, leader = with_followers(work, "prop", followers)
    try:
        names = [f.name for f in nodes]
        applied = Applied()
        async with anyio.create_task_group() as tg:
            for f in nodes:
                await tg.start(applied.follow, f)
            async with httpx.AsyncClient(base_url=leader.api, timeout=30) as client:
                r = await client.post("/api/v1/contribute", json=body(GOAL_ID, b"warm", 0, "w"))
                r.raise_for_status()
                h0 = (await client.get("/api/v1/status")).json()["height"]
                await applied.wait_all(names, h0, within=30)
                everyone = [*net.authorities, *nodes]
                idle = await cpu_rates(everyone, IDLE_SAMPLE_S)
                cpu_before, started = cpu_seconds(everyone), time.perf_counter()
                sent: dict[int, float] = {}
                asked: dict[int, float] = {}
                for i in range(n):
                    t_ask = time.perf_counter()
                    r = await client.post(
                        "/api/v1/contribute", json=body(GOAL_ID, trivial_parameters(i), i, "prop")
                    )
                    t_ok = time.perf_counter()
                    r.raise_for_status()
                    if not r.json()["accepted"]:
                        raise SystemExit(r.text)
                    sent[h0 + i + 1], asked[h0 + i + 1] = t_ok, t_ask
                    await applied.wait_all(names, h0 + i + 1)
                elapsed = time.perf_counter() - started
                cpu_after = cpu_seconds(everyone)
            tg.cancel_scope.cancel()
        spent = CpuSpent(cpu_before, cpu_after, idle, elapsed, n)

        def all_applied(start: dict[int, float]) -> list[float]:
            return sorted(
                (max(applied.seen[(name, h)] for name in names) - t) * 1e3 for h, t in start.items()
            )

        per_block, from_request = all_applied(sent), all_applied(asked)
        return {
            "followers": followers,
            "contributions": n,
            "all_p50_ms": percentile(per_block, 50),
            "all_p99_ms": percentile(per_block, 99),
            "all_max_ms": per_block[-1],
            "negative_samples": sum(1 for x in per_block if x < 0),
            "from_request_p50_ms": percentile(from_request, 50),
            "from_request_p99_ms": percentile(from_request, 99),
            "target_p99_ms": TARGET_PROPAGATION_P99_MS,
            "cpu_ms_per_block": {
                "leader": spent.ms_per_block([leader]),
                "authority": spent.ms_per_block([a for a in net.authorities if a is not leader]),
                "follower": spent.ms_per_block(nodes),
            },
        }
    finally:
        net.stop()


# --------------------------------------------------------------------------- (e) growth

GROWTH_WINDOWS = 8


async def measure_growth(work: Path, followers: int, n: int) -> dict[str, Any]:
    """CPU per single-entry block by role over ``n`` blocks, in ``GROWTH_WINDOWS`` windows."""
    net, nodes, leader = with_followers(work, "grow", followers)
    try:
        others = [a for a in net.authorities if a is not leader]
        everyone = [*net.authorities, *nodes]
        per_window = max(1, n // GROWTH_WINDOWS)
        windows: list[dict[str, float]] = []
        async with httpx.AsyncClient(base_url=leader.api, timeout=30) as client:
            r = await client.post("/api/v1/contribute", json=body(GOAL_ID, b"warm", 0, "w"))
            r.raise_for_status()
            idle = await cpu_rates(everyone, IDLE_SAMPLE_S)
            for w in range(GROWTH_WINDOWS):
                before, started = cpu_seconds(everyone), time.perf_counter()
                for i in range(w * per_window, (w + 1) * per_window):
                    r = await client.post(
                        "/api/v1/contribute", json=body(GOAL_ID, trivial_parameters(i), i, "grow")
                    )
                    r.raise_for_status()
                    if not r.json()["accepted"]:
                        raise SystemExit(r.text)
                elapsed = time.perf_counter() - started
                after = cpu_seconds(everyone)
                spent = CpuSpent(before, after, idle, elapsed, per_window)
                windows.append(
                    {
                        "blocks": (w + 1) * per_window,
                        "per_s": per_window / elapsed,
                        "leader": spent.ms_per_block([leader]),
                        "authority": spent.ms_per_block(others),
                        "follower": spent.ms_per_block(nodes),
                    }
                )
        first, last = windows[0], windows[-1]
        return {
            "followers": followers,
            "blocks": per_window * GROWTH_WINDOWS,
            "windows": windows,
            "last_over_first": {
                role: last[role] / first[role] for role in ("leader", "authority", "follower")
            },
        }
    finally:
        net.stop()


# --------------------------------------------------------------------------- (d) catch-up


async def _load(api: str, n: int, concurrency: int = 64, first: int = 0) -> float:
    """Submit ``n`` distinct trivial contributions (numbered from ``first``) over
    ``concurrency`` keep-alive connections (the hand-written HTTP/1.1 client of
    ``http_bench.py``; a 503 is retried); seconds taken."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    started = time.perf_counter()
    counter = iter(range(first, first + n))

    async def worker() -> None:
        conn = await Connection.open(host, int(port))
        try:
            for i in counter:
                data = make_request(
                    "/api/v1/contribute",
                    json.dumps(body(GOAL_ID, trivial_parameters(i), i, "load")).encode(),
                )
                while True:
                    status, text = await conn.request(data)
                    if status == 200:
                        break
                    if status != 503:
                        raise SystemExit(f"load: HTTP {status}: {text[:200]!r}")
                    await asyncio.sleep(0.05)  # the node asked to come back (a leader change)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def restart_a_follower(net: Network, client: httpx.Client) -> tuple[Node, float]:
    """Stop an authority that does not lead and start it again on its data dir: the new
    process, and seconds from its spawn to its API serving."""
    current = net.leader(client)
    other = next(a for a in net.authorities if a is not current)
    other.stop()
    started = time.perf_counter()
    again = net.restart(other)
    return again, time.perf_counter() - started


def measure_catch_up(work: Path, n: int) -> dict[str, Any]:
    net = Network(work, "cu")
    try:
        with httpx.Client(timeout=10) as client:
            leader = net.leader(client)
            rss_before = [a.proc_status("VmRSS") / 1024 for a in net.authorities]
            load_s = asyncio.run(_load(leader.api, n))
            target = client.get(leader.api + "/api/v1/status").json()
            rss_after = [a.proc_status("VmRSS") / 1024 for a in net.authorities]
            started = time.perf_counter()
            fresh = net.add_follower("fresh")
            while True:
                st = client.get(fresh.api + "/api/v1/status").json()
                if st["height"] >= target["height"]:
                    break
                if time.perf_counter() - started > 600:
                    raise SystemExit("the fresh follower did not catch up within 600 s")
                time.sleep(0.05)
            took = time.perf_counter() - started
            peak_kib = fresh.proc_status("VmHWM")
            other, restart_s = restart_a_follower(net, client)
            restart_rss = other.proc_status("VmRSS") / 1024
            log_mib = (other.data_dir / "consensus.db").stat().st_size / 2**20
        return {
            "contributions": n,
            "blocks": target["height"],
            "load_s": load_s,
            "load_per_s": n / load_s,
            "catch_up_s": took,
            "catch_up_per_s": n / took,
            "follower_peak_rss_mib": peak_kib / 1024,
            "authority_rss_before_load_mib": max(rss_before),
            "authority_rss_after_load_mib": max(rss_after),
            "authority_restart_s": restart_s,
            "authority_restart_rss_mib": restart_rss,
            "consensus_db_mib": log_mib,
            "target_per_s": TARGET_CATCH_UP_PER_S,
        }
    finally:
        net.stop()


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--kills", type=int, default=None, help="leader kills (default 20)")
    parser.add_argument(
        "--growth-blocks",
        type=int,
        default=None,
        help="single-entry blocks of the growth phase (default 4,000; 400 with --quick)",
    )
    args = parser.parse_args()
    if args.growth_blocks is not None and args.growth_blocks < GROWTH_WINDOWS:
        parser.error(f"--growth-blocks must be at least {GROWTH_WINDOWS} (a block per window)")
    quick = args.quick
    kills = args.kills or (5 if quick else 20)
    work = Path(tempfile.mkdtemp(prefix="ian-consensus-bench-"))
    doc: dict[str, Any] = {"environment": environment(work)}
    doc["failover"] = measure_failover(work, kills)
    doc["http"] = measure_http(work, rate=500.0, duration=5 if quick else 20)
    doc["propagation"] = asyncio.run(measure_propagation(work, 5, 50 if quick else 300))
    doc["catch_up"] = measure_catch_up(work, 10_000 if quick else 100_000)
    growth_blocks = args.growth_blocks or (400 if quick else 4_000)
    doc["growth"] = asyncio.run(measure_growth(work, 5, growth_blocks))
    fo, prop, cu, gr = doc["failover"], doc["propagation"], doc["catch_up"], doc["growth"]
    tables = [
        render_table(
            "failover: leader kill -9 -> first accepted answer (3 authorities)",
            ["kills", "p50 s", "p99 s", "max s", "target"],
            [[fo["kills"], fo["p50_s"], fo["p99_s"], fo["max_s"], f"p99 < {TARGET_FAILOVER_S}"]],
        ),
        render_table(
            "HTTP POST /contribute, open loop 500/s (demo goal)",
            ["network", "200/s", "p50 ms", "p99 ms", "statuses"],
            [
                [name, h["rate_ok_per_s"], h["p50_ms"], h["p99_ms"], json.dumps(h["statuses"])]
                for name, h in doc["http"].items()
            ],
        ),
        render_table(
            "propagation: answer -> all 5 followers applied (3 authorities)",
            [
                "contributions",
                "p50 ms",
                "p99 ms",
                "max ms",
                "before the answer",
                "from request p50 / p99 ms",
                "CPU ms a block: leader / authority / follower",
                "target",
            ],
            [
                [
                    prop["contributions"],
                    prop["all_p50_ms"],
                    prop["all_p99_ms"],
                    prop["all_max_ms"],
                    prop["negative_samples"],
                    f"{prop['from_request_p50_ms']:.1f} / {prop['from_request_p99_ms']:.1f}",
                    " / ".join(f"{v:.1f}" for v in prop["cpu_ms_per_block"].values()),
                    f"p99 < {TARGET_PROPAGATION_P99_MS}",
                ]
            ],
        ),
        render_table(
            "fresh follower catch-up (certified blocks from the leader)",
            [
                "contributions",
                "blocks",
                "seconds",
                "per s",
                "peak RSS MiB",
                "authority RSS MiB before -> after load",
                "authority restart s / RSS MiB (consensus.db MiB)",
                "target",
            ],
            [
                [
                    cu["contributions"],
                    cu["blocks"],
                    cu["catch_up_s"],
                    cu["catch_up_per_s"],
                    cu["follower_peak_rss_mib"],
                    f"{cu['authority_rss_before_load_mib']:.0f} -> "
                    f"{cu['authority_rss_after_load_mib']:.0f}",
                    f"{cu['authority_restart_s']:.2f} / {cu['authority_restart_rss_mib']:.0f} "
                    f"({cu['consensus_db_mib']:.0f})",
                    f">= {TARGET_CATCH_UP_PER_S:,.0f}/s",
                ]
            ],
        ),
        render_table(
            "growth: CPU ms per single-entry block as the chain grows (3 authorities, 5 followers)",
            ["blocks", "blocks/s", "leader", "authority", "follower"],
            [
                [
                    w["blocks"],
                    f"{w['per_s']:.0f}",
                    f"{w['leader']:.2f}",
                    f"{w['authority']:.2f}",
                    f"{w['follower']:.2f}",
                ]
                for w in gr["windows"]
            ]
            + [
                [
                    "last / first",
                    "",
                    *(
                        f"{gr['last_over_first'][r]:.2f}"
                        for r in ("leader", "authority", "follower")
                    ),
                ]
            ],
        ),
    ]
    emit(NAME, doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
