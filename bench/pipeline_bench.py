"""In-process pipeline throughput: validation, then the sequencer's batches, durably committed.

Usage::

    .venv/bin/python bench/pipeline_bench.py [--quick] [--json-only] [--profile] [--runs N]
        [--workers N] [--prefill N]

Measures, with no HTTP in the way:

(a) contributions/s through the whole write path, per evaluator (``trivial``, ``demo_trading``):
    stateless validation as the API does it (base64 decode, ``make_contribution`` limits and pack
    hash, ``evaluator.check``), then what ``Sequencer._apply_batch`` does for each batch of up to
    1000: evaluate the batch (``evaluate_batch``, in this process), ``build_block`` (dedup lookup,
    MMR append, leaderboard, signed block) and ``Store.append_block`` (one SQLite transaction,
    ``synchronous=FULL``) on a real store in a temporary directory. Stage times are reported
    separately. The trivial case runs again on a store that already holds ``--prefill``
    contributions (1,000,000 by default; put there by the same pipeline, untimed): what a
    store's size costs each insert.
(b) the evaluation pool: the same pipeline with the demo evaluator, batches evaluated by an
    ``EvaluationPool`` of 1 worker (= in-process) and of ``--workers`` (default 2) worker
    processes (warmed up before timing); the block hashes and roots of both must be identical
    (same identity and block timestamps), and the speed-up is printed against the 1.8x goal.
(c) the cost of one evaluation (``check`` and ``evaluate``), timeit-style, median µs per call.

``--profile`` adds a cProfile top-10 (by own time) of one trivial-evaluator run.
Results: ``bench/results/pipeline.json``.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    b64,
    base_parser,
    demo_parameters,
    emit,
    environment,
    median,
    process_cpu_s,
    render_table,
    trivial_parameters,
)
from ian.chain.contributions import decode_parameters, make_contribution
from ian.chain.evaluation import evaluate_batch
from ian.chain.goals import GoalSpec
from ian.chain.state import ChainState
from ian.evaluators import get_evaluator
from ian.identity import Identity
from ian.ledger.evaluation_pool import EvaluationPool
from ian.ledger.sequencer import build_block
from ian.storage.store import Store

GOAL_ID = "BENCH"
BATCH = 1000  # the sequencer's default block_max_entries
TARGET_TRIVIAL = 80_000.0  # contributions/s (the earlier implementations: ~4,000/s, ~41,700/s)
TARGET_POOL_SPEEDUP = 1.8  # demo evaluator, 2 workers vs 1, on a 2-core machine


def make_inputs(evaluator: str, n: int) -> list[str]:
    """Base64 parameters as they arrive in a request body (prepared outside the timing)."""
    gen = trivial_parameters if evaluator == "trivial" else demo_parameters
    return [b64(gen(i)) for i in range(n)]


def run_pipeline(
    evaluator: str,
    inputs: list[str],
    work_dir: Path,
    *,
    pool: EvaluationPool | None = None,
    identity: Identity | None = None,
    fixed_time: bool = False,
    prefill: int = 0,
) -> dict[str, Any]:
    """One run on a fresh store; returns stage times (s), counts, and the chain it made.
    ``prefill`` (a multiple of :data:`BATCH`): the first that many inputs go through the same
    pipeline untimed (a store that already holds them); times and counts are of the rest."""
    if prefill % BATCH:
        raise ValueError(f"prefill must be a multiple of {BATCH}")
    spec = GoalSpec(id=GOAL_ID, evaluator=evaluator)  # default thresholds
    state = ChainState.genesis([spec])
    check = get_evaluator(evaluator).check
    identity = identity or Identity.generate()
    store = Store(work_dir / "store.sqlite")
    t_validate = t_evaluate = t_build = t_commit = 0.0
    accepted = blocks = 0
    block_hashes: list[str] = []
    perf = time.perf_counter
    extra: dict[str, Any] = {}
    if fixed_time:  # the same block hashes in every run (identical-results check)
        extra["now_ms"] = lambda: 1_700_000_000_000 + state.height
    try:
        started = perf()
        for k in range(0, len(inputs), BATCH):
            if k == prefill and prefill:  # the store holds the prefill: timing starts here
                started = perf()
                t_validate = t_evaluate = t_build = t_commit = 0.0
                accepted = blocks = 0
                block_hashes.clear()
            t0 = perf()
            batch = []
            for i in range(k, min(k + BATCH, len(inputs))):
                c = make_contribution(
                    goal_id=GOAL_ID,
                    version="1.0",
                    parameters=decode_parameters(inputs[i]),
                    metadata={},
                    contributor_id=f"contributor-{i}",
                    seed=i,
                )
                c.parsed = check(c.parameters, c.metadata)
                batch.append(c)
            t1 = perf()
            # What Sequencer._apply_batch does (minus the thread hop and the answers).
            evaluations = evaluate_batch(state.goals, batch, pool)
            t2 = perf()
            state.begin()
            outcomes, block, entries = build_block(
                state, identity, batch, store=store, evaluations=evaluations, **extra
            )
            t3 = perf()
            if block is not None:
                store.append_block(block, entries)
                state.height = block.height
                state.head_hash = block.hash
                state.head_timestamp_ms = block.header.timestamp_ms
                blocks += 1
                block_hashes.append(block.hash.hex())
            state.begin()
            t4 = perf()
            t_validate += t1 - t0
            t_evaluate += t2 - t1
            t_build += t3 - t2
            t_commit += t4 - t3
            accepted += sum(1 for o in outcomes if o.accepted)
        total = perf() - started
    finally:
        store.close()
    return {
        "n": len(inputs) - prefill,
        "accepted": accepted,
        "blocks": blocks,
        "seconds": total,
        "validate_s": t_validate,
        "evaluate_s": t_evaluate,
        "build_s": t_build,
        "commit_s": t_commit,
        "block_hashes": block_hashes,
        "roots": {gid: g.roots() for gid, g in state.goals.items()},
    }


def measure_pipeline(evaluator: str, n: int, runs: int, prefill: int = 0) -> dict[str, Any]:
    """(a) for one evaluator: ``n`` contributions on a fresh store, or on one that already
    holds ``prefill`` (put there by the same pipeline, untimed)."""
    inputs = make_inputs(evaluator, prefill + n)
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="ian-bench-") as tmp:
            results.append(run_pipeline(evaluator, inputs, Path(tmp), prefill=prefill))
    rate = [r["n"] / r["seconds"] for r in results]
    return {
        "evaluator": evaluator,
        "store_already_holds": prefill,
        "contributions": n,
        "runs": runs,
        "per_run_rate": rate,
        "rate_median": median(rate),
        "accepted": results[0]["accepted"],
        "blocks": results[0]["blocks"],
        # Per-contribution cost of each stage, µs (medians over runs).
        "validate_us": median([r["validate_s"] / n * 1e6 for r in results]),
        "evaluate_us": median([r["evaluate_s"] / n * 1e6 for r in results]),
        "build_block_us": median([r["build_s"] / n * 1e6 for r in results]),
        "append_block_us": median([r["commit_s"] / n * 1e6 for r in results]),
        "append_block_ms_per_block": median(
            [r["commit_s"] / max(1, r["blocks"]) * 1e3 for r in results]
        ),
    }


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` (gone ones: none)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
            total += process_cpu_s(pid)
    return total


def run_pool_pipeline(
    inputs: list[str], work_dir: Path, pool: EvaluationPool, identity: Identity
) -> dict[str, Any]:
    """(b): the demo pipeline in three stages as the node runs them: validation (the API),
    evaluation (the pool), block building and the durable commit (the sequencer). While the
    pool evaluates batch k, this process builds and commits batch k-1 and validates batch k+1
    (in the node, the API's threads validate while the sequencer waits on the pool). With one
    worker the pool evaluates in this process and nothing overlaps."""
    spec = GoalSpec(id=GOAL_ID, evaluator="demo_trading")
    state = ChainState.genesis([spec])
    check = get_evaluator("demo_trading").check
    store = Store(work_dir / "store.sqlite")
    perf = time.perf_counter
    block_hashes: list[str] = []
    accepted = 0
    t_wait = 0.0

    def validate(k: int) -> list[Any]:
        batch = []
        for i in range(k, min(k + BATCH, len(inputs))):
            c = make_contribution(
                goal_id=GOAL_ID,
                version="1.0",
                parameters=decode_parameters(inputs[i]),
                metadata={},
                contributor_id=f"contributor-{i}",
                seed=i,
            )
            c.parsed = check(c.parameters, c.metadata)
            batch.append(c)
        return batch

    try:
        started = perf()
        batch = validate(0)
        pending = pool.submit(state.goals, batch)
        for k in range(0, len(inputs), BATCH):
            upcoming = validate(k + BATCH) if k + BATCH < len(inputs) else []
            t0 = perf()
            evaluations = pending.result()
            t_wait += perf() - t0
            current = batch
            if upcoming:
                batch = upcoming
                pending = pool.submit(state.goals, batch)
            state.begin()
            outcomes, block, entries = build_block(
                state,
                identity,
                current,
                store=store,
                evaluations=evaluations,
                now_ms=lambda: 1_700_000_000_000 + state.height,
            )
            if block is not None:
                store.append_block(block, entries)
                state.height = block.height
                state.head_hash = block.hash
                state.head_timestamp_ms = block.header.timestamp_ms
                block_hashes.append(block.hash.hex())
            state.begin()
            accepted += sum(1 for o in outcomes if o.accepted)
        total = perf() - started
    finally:
        store.close()
    return {
        "n": len(inputs),
        "accepted": accepted,
        "seconds": total,
        "evaluate_wait_s": t_wait,
        "block_hashes": block_hashes,
        "roots": {gid: g.roots() for gid, g in state.goals.items()},
    }


def measure_pool(n: int, runs: int, workers: int) -> dict[str, Any]:
    """(b): the demo pipeline with 1 worker (in-process) and ``workers`` worker processes,
    alternating, same identity and timestamps: identical blocks required."""
    inputs = make_inputs("demo_trading", n)
    identity = Identity.generate()
    rates: dict[int, list[float]] = {1: [], workers: []}
    evaluate_us: dict[int, list[float]] = {1: [], workers: []}
    cpu_us: dict[int, list[tuple[float, float]]] = {1: [], workers: []}
    chains: dict[int, tuple[list[str], Any]] = {}
    pools = {1: EvaluationPool(1), workers: EvaluationPool(workers)}
    try:
        # Start the worker processes before timing (a node starts them on its first batch).
        warm = make_inputs("demo_trading", 64)
        with tempfile.TemporaryDirectory(prefix="ian-bench-") as tmp:
            run_pool_pipeline(warm, Path(tmp), pools[workers], identity)
        for _ in range(runs):
            for w in (1, workers):
                main0, workers0 = time.process_time(), _cpu_s(pools[w].worker_pids())
                with tempfile.TemporaryDirectory(prefix="ian-bench-") as tmp:
                    r = run_pool_pipeline(inputs, Path(tmp), pools[w], identity)
                main_cpu = time.process_time() - main0
                workers_cpu = _cpu_s(pools[w].worker_pids()) - workers0
                rates[w].append(r["n"] / r["seconds"])
                evaluate_us[w].append(r["evaluate_wait_s"] / n * 1e6)
                cpu_us[w].append((main_cpu / n * 1e6, workers_cpu / n * 1e6))
                chain = (r["block_hashes"], r["roots"])
                if chains.setdefault(w, chain) != chain:
                    raise SystemExit(f"pool bench: two runs with {w} worker(s) made other blocks")
    finally:
        for p in pools.values():
            p.close()
    identical = chains[1] == chains[workers]
    if not identical:
        raise SystemExit(f"pool bench: blocks or roots differ between 1 and {workers} workers")
    one, many = median(rates[1]), median(rates[workers])
    serial_cpu = median([m + w for m, w in cpu_us[1]])
    main_cpu = median([m for m, _ in cpu_us[workers]])
    workers_cpu = median([w for _, w in cpu_us[workers]])
    # What an idle machine with ``cores`` cores would allow: the busiest of this process (which
    # cannot go faster than its own CPU) and all the CPU spread over the cores.
    cores = len(os.sched_getaffinity(0))
    bound_us = max(main_cpu, (main_cpu + workers_cpu) / cores)
    return {
        "evaluator": "demo_trading",
        "contributions": n,
        "runs": runs,
        "workers": workers,
        "rate_1_worker": one,
        "rate_n_workers": many,
        "per_run_rate_1_worker": rates[1],
        "per_run_rate_n_workers": rates[workers],
        "evaluate_us_1_worker": median(evaluate_us[1]),
        "evaluate_us_n_workers": median(evaluate_us[workers]),
        "speedup": many / one if one else float("nan"),
        "target_speedup": TARGET_POOL_SPEEDUP,
        "cpu_us_1_worker": serial_cpu,
        "cpu_us_main_n_workers": main_cpu,
        "cpu_us_workers_n_workers": workers_cpu,
        "idle_bound_speedup": serial_cpu / bound_us if bound_us else float("nan"),
        "identical_blocks": identical,
        "blocks": len(chains[1][0]),
    }


def measure_catch_up_pool(n: int, runs: int, workers: int) -> dict[str, Any]:
    """(b) continued: a follower's re-execution of a demo chain (blocks of 200 contributions,
    entries as they come from the wire: not parsed), ``apply_blocks`` in batches of 64 blocks
    (the sync batch), with 1 worker (in-process) and ``workers``; the same roots required."""
    from ian.ledger.block_apply import apply_blocks

    spec = GoalSpec(id=GOAL_ID, evaluator="demo_trading")
    identity = Identity.generate()
    check = get_evaluator("demo_trading").check
    rates: dict[int, list[float]] = {1: [], workers: []}
    roots: dict[int, Any] = {}
    pools = {1: EvaluationPool(1), workers: EvaluationPool(workers)}
    with tempfile.TemporaryDirectory(prefix="ian-bench-") as tmp:
        state = ChainState.genesis([spec])
        source = Store(Path(tmp) / "source.sqlite")
        inputs = make_inputs("demo_trading", n)
        for k in range(0, n, 200):
            batch = []
            for i in range(k, min(k + 200, n)):
                c = make_contribution(
                    goal_id=GOAL_ID,
                    version="1.0",
                    parameters=decode_parameters(inputs[i]),
                    metadata={},
                    contributor_id=f"contributor-{i}",
                    seed=i,
                )
                c.parsed = check(c.parameters, c.metadata)
                batch.append(c)
            state.begin()
            _, block, entries = build_block(state, identity, batch, store=source)
            if block is not None:
                source.append_block(block, entries)
                state.height, state.head_hash = block.height, block.hash
                state.head_timestamp_ms = block.header.timestamp_ms
        blocks = source.blocks(1, state.height, max_bytes=1 << 62)
        accepted = source.count_contributions()
        source.close()
        try:
            warm = ChainState.genesis([spec])
            warm_store = Store(Path(tmp) / "warm.sqlite")
            apply_blocks(
                warm, warm_store, blocks[:1], sequencer=identity.node_id, evaluator=pools[workers]
            )
            warm_store.close()
            for r in range(runs):
                for w in (1, workers):
                    follower = ChainState.genesis([spec])
                    store = Store(Path(tmp) / f"follower-{r}-{w}.sqlite")
                    started = time.perf_counter()
                    for k in range(0, len(blocks), 64):
                        _, error = apply_blocks(
                            follower,
                            store,
                            blocks[k : k + 64],
                            sequencer=identity.node_id,
                            evaluator=pools[w],
                        )
                        assert error is None, error
                    rates[w].append(accepted / (time.perf_counter() - started))
                    store.close()
                    got = {gid: g.roots() for gid, g in follower.goals.items()}
                    if roots.setdefault(w, got) != got:
                        raise SystemExit("catch-up bench: two runs made other roots")
        finally:
            for p in pools.values():
                p.close()
    if roots[1] != roots[workers]:
        raise SystemExit(f"catch-up bench: roots differ between 1 and {workers} workers")
    one, many = median(rates[1]), median(rates[workers])
    return {
        "entries": accepted,
        "blocks": len(blocks),
        "workers": workers,
        "rate_1_worker": one,
        "rate_n_workers": many,
        "speedup": many / one if one else float("nan"),
        "identical_roots": True,
    }


def time_call(fn: Callable[[], object], *, budget_s: float = 0.3, repeat: int = 7) -> float:
    """Median µs per call of ``fn`` (timeit: autorange-sized loops, ``repeat`` of them)."""
    timer = timeit.Timer(fn)
    number, took = timer.autorange()
    number = max(1, int(number * budget_s / max(took, 1e-9) / repeat))
    return median([t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)])


def measure_evaluations(quick: bool) -> list[dict[str, Any]]:
    """(c): check + evaluate of single contributions; demo over strategies and lookbacks."""
    rows = []
    budget = 0.1 if quick else 0.3
    trivial = get_evaluator("trivial")
    raw = trivial_parameters(1)
    parsed = trivial.check(raw, {})
    rows.append(
        {
            "evaluator": "trivial",
            "case": "sha256 of 16 B",
            "check_us": time_call(lambda: trivial.check(raw, {}), budget_s=budget),
            "evaluate_us": time_call(lambda: trivial.evaluate(parsed), budget_s=budget),
        }
    )
    demo = get_evaluator("demo_trading")
    for strategy in ("momentum", "mean_reversion", "breakout"):
        for lookback in (2, 200):
            doc = (
                f'{{"strategy":"{strategy}","lookback":{lookback},'
                f'"threshold":0.01,"position_size":0.5}}'
            ).encode()
            p = demo.check(doc, {})
            rows.append(
                {
                    "evaluator": "demo_trading",
                    "case": f"{strategy} L={lookback}",
                    "check_us": time_call(lambda doc=doc: demo.check(doc, {}), budget_s=budget),
                    "evaluate_us": time_call(lambda p=p: demo.evaluate(p), budget_s=budget),
                }
            )
    return rows


def profile_trivial(n: int) -> list[dict[str, Any]]:
    """cProfile top-10 by own time of one trivial run (profiling slows it ~2x)."""
    inputs = make_inputs("trivial", n)
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="ian-bench-") as tmp:
        profiler.enable()
        run_pipeline("trivial", inputs, Path(tmp))
        profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: kv[1][2],
        reverse=True,
    )[:10]:
        short = filename.split("/src/", 1)[-1].split("/lib/python", 1)[-1]
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "calls": calls,
                "own_s": tottime,
                "cum_s": cumtime,
                "own_share": tottime / total if total else 0.0,
            }
        )
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per case (default 3)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile top-10")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the pool case (default 2)"
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=None,
        help="(a) also runs the trivial case on a store already holding this many "
        "contributions, rounded up to whole batches (default 1,000,000; 0 with --quick)",
    )
    parser.add_argument(
        "--only",
        choices=("pipeline", "pool", "evaluation"),
        action="append",
        help="run only these parts (repeatable; default all)",
    )
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    n_trivial = 10_000 if args.quick else 50_000
    n_demo = 1_000 if args.quick else 5_000
    if args.prefill is None:
        args.prefill = 0 if args.quick else 1_000_000
    if args.prefill < 0:
        parser.error("--prefill must be >= 0")
    args.prefill = -(-args.prefill // BATCH) * BATCH  # whole batches: timing starts at one
    parts = set(args.only or ("pipeline", "pool", "evaluation"))

    pipeline = (
        [
            measure_pipeline("trivial", n_trivial, runs),
            measure_pipeline("demo_trading", n_demo, runs),
            # The same on a store that is not new: the unique index of packs, on random hashes,
            # makes each insert touch a page of its own once the store is big (one run).
            *([measure_pipeline("trivial", n_trivial, 1, args.prefill)] if args.prefill else []),
        ]
        if "pipeline" in parts
        else []
    )
    pool = measure_pool(n_demo, runs, args.workers) if "pool" in parts else None
    catch_up = measure_catch_up_pool(n_demo, runs, args.workers) if "pool" in parts else None
    evaluations = measure_evaluations(args.quick) if "evaluation" in parts else []
    doc: dict[str, Any] = {
        "benchmark": "pipeline",
        "quick": args.quick,
        "environment": environment(Path(tempfile.gettempdir())),
        "batch": BATCH,
        "target_trivial_per_s": TARGET_TRIVIAL,
        "pipeline": pipeline,
        "pool": pool,
        "catch_up_pool": catch_up,
        "evaluation": evaluations,
    }
    tables = []
    if pipeline:
        tables.append(
            render_table(
                f"(a) in-process pipeline, batches of {BATCH}, durable commit "
                f"(median of {runs}; target trivial >= {TARGET_TRIVIAL:,.0f}/s)",
                [
                    "evaluator",
                    "store holds",
                    "n",
                    "contrib/s",
                    "accepted",
                    "validate µs",
                    "evaluate µs",
                    "build_block µs",
                    "append_block µs",
                    "ms/commit",
                ],
                [
                    [
                        p["evaluator"],
                        p["store_already_holds"],
                        p["contributions"],
                        p["rate_median"],
                        p["accepted"],
                        p["validate_us"],
                        p["evaluate_us"],
                        p["build_block_us"],
                        p["append_block_us"],
                        p["append_block_ms_per_block"],
                    ]
                    for p in pipeline
                ],
            )
        )
    if pool is not None:
        verdict = "met" if pool["speedup"] >= TARGET_POOL_SPEEDUP else "NOT met"
        tables.append(
            render_table(
                f"(b) evaluation pool, demo evaluator, {pool['contributions']:,} contributions "
                f"(median of {runs}); blocks and roots identical: {pool['identical_blocks']}",
                ["workers", "contrib/s", "waiting on evaluation µs/contrib"],
                [
                    ["1 (in-process)", pool["rate_1_worker"], pool["evaluate_us_1_worker"]],
                    [pool["workers"], pool["rate_n_workers"], pool["evaluate_us_n_workers"]],
                ],
            )
            + f"\nspeed-up {pool['speedup']:.2f}x with {pool['workers']} workers "
            f"(goal >= {TARGET_POOL_SPEEDUP}x: {verdict}); "
            f"load average at start {doc['environment'].get('loadavg_at_start')}"
            f"\nCPU µs per contribution: {pool['cpu_us_1_worker']:.0f} in-process; "
            f"{pool['cpu_us_main_n_workers']:.0f} here + {pool['cpu_us_workers_n_workers']:.0f} "
            f"in the workers with {pool['workers']}: an idle machine of this many cores would "
            f"allow {pool['idle_bound_speedup']:.2f}x"
        )
    if catch_up is not None:
        tables.append(
            render_table(
                f"(b) catch-up re-execution (apply_blocks, 64 blocks of 200 a batch), "
                f"{catch_up['entries']:,} demo entries; roots identical: "
                f"{catch_up['identical_roots']}",
                ["workers", "entries/s"],
                [
                    ["1 (in-process)", catch_up["rate_1_worker"]],
                    [catch_up["workers"], catch_up["rate_n_workers"]],
                ],
            )
            + f"\nspeed-up {catch_up['speedup']:.2f}x with {catch_up['workers']} workers; "
            f"load average now {os.getloadavg()}"
        )
    if evaluations:
        tables.append(
            render_table(
                "(c) one evaluation, median µs per call",
                ["evaluator", "case", "check µs", "evaluate µs"],
                [[e["evaluator"], e["case"], e["check_us"], e["evaluate_us"]] for e in evaluations],
            )
        )
    if args.profile:
        top = profile_trivial(n_trivial)
        doc["profile_trivial_top10"] = top
        tables.append(
            render_table(
                "cProfile top-10 by own time (trivial run, profiler overhead included)",
                ["function", "calls", "own s", "cum s", "own %"],
                [
                    [t["function"], t["calls"], t["own_s"], t["cum_s"], 100 * t["own_share"]]
                    for t in top
                ],
            )
        )
    emit("pipeline", doc, tables, json_only=args.json_only)


if __name__ == "__main__":
    main()
