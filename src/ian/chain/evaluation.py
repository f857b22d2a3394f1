"""Evaluation as a pure step, apart from applying its result to the chain state.

A block is made (or re-executed by a verifier) in two steps:

1. every contribution of the batch is *evaluated*: its goal's evaluator turns the parameters into
   metrics and the goal's thresholds accept or reject them. This depends on the contribution and
   the goal's spec only — not on the chain state nor on the other contributions — so a batch can
   be evaluated in any order and in other processes (:mod:`ian.ledger.evaluation_pool`);
2. the results are *applied* in submission order (:func:`ian.chain.state.execute`): duplicate
   check, contribution hash, MMR append, leaderboard.

The result of step 1 is an :class:`Evaluation`, the same wherever it was computed. An evaluator
that raises something other than an :class:`~ian.errors.IanError` (a bug) does not stop step 1:
the exception is kept in the evaluation and raised by step 2 at that contribution, where an
in-line evaluation would have raised it, so a batch fails the same way in a pool as in series.

A job for another process is :data:`Job` (evaluator name, parameters, metadata, parsed form or
None) and its answer a :data:`RawResult` (plain tuples: cheap to pickle); :func:`run_jobs` is what
a worker runs and :func:`finish` turns its answer into an :class:`Evaluation` in the caller.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ian.chain import goals as goals_mod
from ian.chain.contributions import Contribution
from ian.chain.goals import GoalSpec
from ian.errors import IanError
from ian.evaluators import Evaluator, Metrics, get_evaluator

if TYPE_CHECKING:
    from ian.chain.state import GoalState

__all__ = [
    "BatchEvaluator",
    "Evaluation",
    "Job",
    "RawResult",
    "costly_goals",
    "evaluate_batch",
    "evaluate_contribution",
    "finish",
    "job_of",
    "run_jobs",
]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What step 1 says of one contribution: ``metrics`` (None when its parameters are invalid)
    and the ``rejection`` (None when accepted), or the unexpected ``error`` its evaluator raised."""

    metrics: Metrics | None
    rejection: goals_mod.Rejection | None
    error: BaseException | None = None


def evaluate_contribution(spec: GoalSpec, evaluator: Evaluator, c: Contribution) -> Evaluation:
    """Step 1 for one contribution, in this process (deterministic, may take milliseconds), or
    from the result it came with (``c.evaluated``, made by the same evaluator elsewhere)."""
    if c.evaluated is not None:
        return finish(spec, c.evaluated)
    try:
        parsed = c.parsed if c.parsed is not None else evaluator.check(c.parameters, c.metadata)
        metrics = evaluator.evaluate(parsed)
    except IanError as exc:
        return Evaluation(None, goals_mod.Rejection("invalid", exc.message))
    except Exception as exc:
        return Evaluation(None, None, exc)
    return Evaluation(metrics, goals_mod.check_thresholds(spec, metrics))


class BatchEvaluator(Protocol):
    """Step 1 for a batch, wherever it runs (:class:`ian.ledger.evaluation_pool.EvaluationPool`)."""

    def evaluate(
        self, goals: Mapping[str, GoalState], contributions: Sequence[Contribution]
    ) -> list[Evaluation | None]:
        """One evaluation per contribution, in order; None for a contribution of a goal not in
        ``goals`` (step 2 decides what that means)."""
        ...


def costly_goals(goals: Mapping[str, GoalState]) -> set[str]:
    """The goals whose evaluator is marked ``costly`` (worth evaluating in other processes)."""
    return {gid for gid, goal in goals.items() if getattr(goal.evaluator, "costly", False)}


def evaluate_batch(
    goals: Mapping[str, GoalState],
    contributions: Sequence[Contribution],
    evaluator: BatchEvaluator | None = None,
) -> list[Evaluation | None]:
    """Step 1 for ``contributions``: through ``evaluator`` (a pool) or else here, in order."""
    if evaluator is not None:
        return evaluator.evaluate(goals, contributions)
    out: list[Evaluation | None] = []
    for c in contributions:
        goal = goals.get(c.goal_id)
        out.append(None if goal is None else evaluate_contribution(goal.spec, goal.evaluator, c))
    return out


# -- across processes -------------------------------------------------------------------------

#: (evaluator name, parameters, metadata, the parsed parameters or None)
Job = tuple[str, bytes, dict[str, Any], Any]
#: ("ok", (reward, risk, complexity, sharpe_ratio, max_drawdown)) | ("invalid", message)
#: | ("error", exception)
RawResult = tuple[str, Any]


def job_of(evaluator_name: str, c: Contribution) -> Job:
    return (evaluator_name, c.parameters, c.metadata, c.parsed)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def run_jobs(jobs: Sequence[Job]) -> list[RawResult]:
    """Step 1 without the thresholds, for a worker process: one raw result per job, in order."""
    out: list[RawResult] = []
    for name, parameters, metadata, parsed in jobs:
        try:
            evaluator = get_evaluator(name)
            if parsed is None:
                parsed = evaluator.check(parameters, metadata)
            m = evaluator.evaluate(parsed)
        except IanError as exc:
            out.append(("invalid", exc.message))
            continue
        except Exception as exc:
            out.append(("error", _portable(exc)))
            continue
        out.append(("ok", (m.reward, m.risk, m.complexity, m.sharpe_ratio, m.max_drawdown)))
    return out


def finish(spec: GoalSpec, raw: RawResult) -> Evaluation:
    """The :class:`Evaluation` of a worker's raw result (thresholds applied here)."""
    kind, value = raw
    if kind == "ok":
        reward, risk, complexity, sharpe, drawdown = value
        metrics = Metrics(reward, risk, complexity, sharpe, drawdown)
        return Evaluation(metrics, goals_mod.check_thresholds(spec, metrics))
    if kind == "invalid":
        return Evaluation(None, goals_mod.Rejection("invalid", value))
    return Evaluation(None, None, value)
