"""Evaluation in worker processes, so a costly evaluator scales with the machine's cores.

The sequencer (or leader) evaluates each batch before it builds the block, and every verifier
evaluates the entries of the blocks it re-executes (catch-up batches included), through
:class:`EvaluationPool`. Evaluation is step 1 of :mod:`ian.chain.evaluation`: pure, one
contribution at a time, so the pool splits a batch into chunks, evaluates them in parallel and
hands the results back **in submission order**; step 2 (hashes, MMR, leaderboard) runs in the
caller as before. Blocks, hashes and roots are therefore byte-identical to an evaluation in
series, rejections and evaluator errors included (tested).

- Only evaluators marked ``costly`` (the demo back-test: ~0.1-0.4 ms per pack, and any real
  evaluator) go to the workers, and only when a batch holds at least ``min_batch`` (8) of them:
  for the ``trivial`` evaluator (a few µs) the round trip would cost more than it saves.
- Workers: ``IAN_EVALUATION_WORKERS`` (default: the cores this process may use). 0 or 1 means
  no worker processes: everything is evaluated in the calling thread.
- Workers are ``spawn``-ed (never ``fork``: the node has threads and open sockets), on the first
  costly batch. Not ``forkserver``: its one server is shared by every pool of the process, and
  a worker killed while a pool was starting others was seen to leave it dead or unresponsive
  (CPython's forkserver dies on a client that hangs up mid-request), so no pool could start
  again; spawned workers cost ~0.3 s more to start, once. A worker ends when the node's process
  does, even killed with -9 (it watches the node's pid), so no process outlives a node.
- A worker that dies (kill -9, out of memory) breaks the pool: the pool is rebuilt and the batch
  evaluated once more on the new one. If that fails too, :class:`~ian.errors.EvaluationError` is
  raised — nothing was decided, the sequencer answers 503 and a verifier tries the blocks again
  later — rather than evaluating in the node's own process something that may have killed a
  process. A pool never hangs on a dead worker: ``concurrent.futures`` fails its futures.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ian.chain.contributions import Contribution
from ian.chain.evaluation import (
    Evaluation,
    Job,
    RawResult,
    costly_goals,
    evaluate_batch,
    evaluate_contribution,
    finish,
    job_of,
    run_jobs,
)
from ian.errors import EvaluationError

if TYPE_CHECKING:
    from ian.chain.state import GoalState

__all__ = [
    "MIN_POOL_BATCH",
    "BatchEvaluation",
    "EvaluationPool",
    "usable_cores",
]

log = logging.getLogger("ian.ledger.evaluation")

#: fewer costly contributions than this are evaluated in the calling thread
MIN_POOL_BATCH = 8
#: what a broken pool raises: a worker died (BrokenProcessPool), the pool was shut down meanwhile
#: (RuntimeError), or starting a worker failed (OSError, EOFError)
_POOL_FAILURES = (BrokenProcessPool, RuntimeError, OSError, EOFError)
#: chunks per worker and batch: small enough to balance uneven packs, big enough to amortise IPC
_CHUNKS_PER_WORKER = 4


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class EvaluationPool:
    """Evaluates batches (:class:`ian.chain.evaluation.BatchEvaluator`) in worker processes.

    Thread-safe: the sequencer, replication and consensus apply threads may share one pool.
    """

    def __init__(self, workers: int | None = None, *, min_batch: int = MIN_POOL_BATCH) -> None:
        #: worker processes (``IAN_EVALUATION_WORKERS``, validated by the settings); None:
        #: the usable cores
        self.workers = usable_cores() if workers is None else workers
        self.min_batch = max(1, min_batch)
        self.restarts = 0  # pools rebuilt after a worker died
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        self._closed = False

    @property
    def parallel(self) -> bool:
        """Whether costly batches go to worker processes (2 workers or more)."""
        return self.workers >= 2 and not self._closed

    # -- BatchEvaluator ------------------------------------------------------------------------
    def evaluate(
        self, goals: Mapping[str, GoalState], contributions: Sequence[Contribution]
    ) -> list[Evaluation | None]:
        """One evaluation per contribution, in order (None for an unknown goal)."""
        return self.submit(goals, contributions).result()

    def submit(
        self, goals: Mapping[str, GoalState], contributions: Sequence[Contribution]
    ) -> BatchEvaluation:
        """Start evaluating a batch; :meth:`BatchEvaluation.result` waits for it. What stays in
        this process (cheap evaluators, small batches) is evaluated by ``result()``, so the
        caller can do other work while the workers run."""
        remote: list[int] = []
        costly = costly_goals(goals) if self.parallel else None
        if costly:
            remote = [
                i
                for i, c in enumerate(contributions)
                if c.goal_id in costly and c.evaluated is None
            ]
            if len(remote) < self.min_batch:
                remote = []
        pending = self._submit(goals, contributions, remote) if remote else None
        return BatchEvaluation(self, goals, contributions, remote, pending)

    # -- workers -------------------------------------------------------------------------------
    def _submit(
        self,
        goals: Mapping[str, GoalState],
        contributions: Sequence[Contribution],
        indices: list[int],
    ) -> _Pending:
        jobs = [
            job_of(goals[contributions[i].goal_id].spec.evaluator, contributions[i])
            for i in indices
        ]
        n_chunks = max(1, min(self.workers * _CHUNKS_PER_WORKER, len(jobs) // self.min_batch))
        size, extra = divmod(len(jobs), n_chunks)
        chunks: list[list[Job]] = []
        start = 0
        for k in range(n_chunks):
            end = start + size + (1 if k < extra else 0)
            chunks.append(jobs[start:end])
            start = end
        pending = _Pending(chunks)
        self._start(pending)
        return pending

    def _start(self, pending: _Pending) -> None:
        try:
            executor, pending.generation = self._pool()
            pending.futures = [executor.submit(run_jobs, chunk) for chunk in pending.chunks]
        except _POOL_FAILURES as exc:  # broken, shut down meanwhile, or a spawn failed
            pending.futures = []
            pending.failure = exc
        except ValueError as exc:
            # A worker died while the executor spawned another: the spawn passed a pipe the
            # broken executor had closed ("bad value(s) in fds_to_keep", CPython gh-109047;
            # seen once in this project's tests). A broken pool, like any other.
            pending.futures = []
            pending.failure = BrokenProcessPool(f"starting an evaluation worker failed: {exc}")

    def _collect(self, pending: _Pending) -> list[RawResult]:
        for attempt in (1, 2):
            try:
                if pending.failure is not None:
                    raise pending.failure
                results: list[RawResult] = []
                for future in pending.futures:
                    results.extend(future.result())
                return results
            except _POOL_FAILURES as exc:
                for future in pending.futures:
                    future.cancel()
                self._discard(pending.generation)
                if self._closed:
                    return run_jobs([job for chunk in pending.chunks for job in chunk])
                if attempt == 2:
                    raise EvaluationError(
                        f"evaluation workers failed twice on a batch of "
                        f"{sum(len(c) for c in pending.chunks)} contributions: {exc}",
                        fix="check the node's memory limit and the log for killed processes",
                    ) from exc
                log.warning("an evaluation worker died (%s): new pool, evaluating again", exc)
                pending.failure = None
                self._start(pending)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pool(self) -> tuple[ProcessPoolExecutor, int]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the evaluation pool is closed")
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=context,
                    initializer=_end_with,
                    initargs=(os.getpid(),),
                )
                self._generation += 1
            return self._executor, self._generation

    def _discard(self, generation: int) -> None:
        """Drop the pool of ``generation`` (if it is still the current one) and its processes."""
        with self._lock:
            if self._executor is None or generation != self._generation:
                return
            executor, self._executor = self._executor, None
            if not self._closed:
                self.restarts += 1
        _shut(executor)

    def worker_pids(self) -> list[int]:
        """The pids of the current worker processes (for tests and diagnostics)."""
        with self._lock:
            processes: dict[int, Any] = getattr(self._executor, "_processes", None) or {}
            return sorted(processes)

    def close(self) -> None:
        """Stop the workers; later batches are evaluated in the calling thread."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            _shut(executor)


class BatchEvaluation:
    """A batch being evaluated (:meth:`EvaluationPool.submit`)."""

    def __init__(
        self,
        pool: EvaluationPool,
        goals: Mapping[str, GoalState],
        contributions: Sequence[Contribution],
        remote: list[int],
        pending: _Pending | None,
    ) -> None:
        self._pool = pool
        self._goals = goals
        self._contributions = contributions
        self._remote = remote
        self._pending = pending

    def result(self) -> list[Evaluation | None]:
        """One evaluation per contribution, in submission order; may raise EvaluationError."""
        goals, contributions = self._goals, self._contributions
        if self._pending is None:
            return evaluate_batch(goals, contributions)
        out: list[Evaluation | None] = [None] * len(contributions)
        skip = set(self._remote)
        for i, c in enumerate(contributions):
            goal = goals.get(c.goal_id)
            if goal is not None and i not in skip:
                out[i] = evaluate_contribution(goal.spec, goal.evaluator, c)
        raw = self._pool._collect(self._pending)
        for i, r in zip(self._remote, raw, strict=True):
            out[i] = finish(goals[contributions[i].goal_id].spec, r)
        return out


class _Pending:
    """A batch on its way through the workers."""

    __slots__ = ("chunks", "failure", "futures", "generation")

    def __init__(self, chunks: list[list[Job]]) -> None:
        self.chunks = chunks
        self.futures: list[Future[list[RawResult]]] = []
        self.failure: BaseException | None = None
        self.generation = 0


def _end_with(parent: int) -> None:
    """Worker initializer: the worker ends when the process that made the pool ends, even by
    kill -9. A worker waiting for work would otherwise live on (it never sees its queue close)."""

    def watch() -> None:
        try:
            fd: int | None = os.pidfd_open(parent)
        except (AttributeError, OSError):  # no pidfd (old kernel), or the parent is gone
            fd = None
        if fd is not None:
            select.select([fd], [], [])  # readable once the parent has exited
        else:
            while True:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="ian-evaluation-parent", daemon=True).start()


def _shut(executor: ProcessPoolExecutor) -> None:
    processes: dict[int, Any] = dict(getattr(executor, "_processes", None) or {})
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes.values():
        try:
            if process.is_alive():
                process.kill()
        except (OSError, ValueError):  # already reaped
            pass
