"""The replicated state machine: goals' logs and leaderboards, advanced one contribution at a time.

Pure: no I/O. The sequencer uses :func:`execute` to decide and apply contributions and then
records the result as a block; a follower re-executes a received block's entries with the same
function and must arrive at the same roots. Rollback is by snapshot: MMR peaks and a top-K
leaderboard are small, so :meth:`ChainState.snapshot` is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ian.chain import goals as goals_mod
from ian.chain.blocks import GENESIS_HASH, GoalRoots
from ian.chain.contributions import Contribution, contribution_hash
from ian.chain.evaluation import Evaluation, evaluate_contribution
from ian.chain.goals import GoalSpec
from ian.chain.leaderboard import Leaderboard, LeaderboardEntry
from ian.chain.mmr import MMR
from ian.evaluators import Evaluator, Metrics, get_evaluator


@dataclass(slots=True)
class GoalState:
    spec: GoalSpec
    evaluator: Evaluator
    mmr: MMR
    leaderboard: Leaderboard

    @classmethod
    def empty(cls, spec: GoalSpec) -> GoalState:
        return cls(
            spec=spec,
            evaluator=get_evaluator(spec.evaluator),
            mmr=MMR(),
            leaderboard=Leaderboard(spec.leaderboard_capacity),
        )

    def roots(self) -> GoalRoots:
        return GoalRoots(
            log_size=self.mmr.size,
            log_root=self.mmr.root(),
            leaderboard_size=len(self.leaderboard),
            leaderboard_root=self.leaderboard.root(),
        )


@dataclass(slots=True)
class Outcome:
    """What happened to one contribution. Accepted ones carry their log position and new nodes."""

    accepted: bool
    goal_id: str
    metrics: dict[str, float] | None = None
    metrics_json: str = ""
    score: float | None = None
    reason: str = ""
    rejection_type: str | None = None
    log_index: int | None = None
    contribution_hash: bytes | None = None
    mmr_nodes: tuple[bytes, ...] = ()
    first_node_pos: int = 0

    def to_result(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "rejection_type": self.rejection_type,
            "score": self.score,
            "metrics": self.metrics,
            "log_index": self.log_index,
            "contribution_hash": (
                self.contribution_hash.hex() if self.contribution_hash is not None else None
            ),
        }


@dataclass(slots=True)
class ChainState:
    goals: dict[str, GoalState]
    height: int = 0
    head_hash: bytes = GENESIS_HASH
    head_timestamp_ms: int = 0
    #: undo layers, oldest first: the goals each batch touched, as they were before it
    _saved: list[dict[str, tuple[MMR, Leaderboard]]] = field(default_factory=lambda: [{}])

    @classmethod
    def genesis(cls, specs: list[GoalSpec]) -> ChainState:
        return cls(goals={s.id: GoalState.empty(s) for s in specs})

    def replace_with(self, other: ChainState) -> None:
        """Become ``other`` in place (after a rollback), keeping this object's identity."""
        self.goals.clear()
        self.goals.update(other.goals)
        self.height = other.height
        self.head_hash = other.head_hash
        self.head_timestamp_ms = other.head_timestamp_ms
        self._saved = [{}]

    def goal(self, goal_id: str) -> GoalState | None:
        return self.goals.get(goal_id)

    # -- rollback ------------------------------------------------------------------------------
    # A batch's changes can be undone until they are settled. Batches can be stacked: a leader
    # builds the next block on top of blocks still waiting for their commit (``push``), then
    # settles them oldest first as they commit, or rolls back the newest ones.
    def begin(self) -> None:
        """Start a batch: goals touched from now on can be rolled back with :meth:`rollback`.
        Earlier batches' changes are kept (settled)."""
        self._saved = [{}]

    def push(self) -> None:
        """Start a batch on top of the unsettled ones (each can be rolled back on its own)."""
        self._saved.append({})

    def touch(self, goal: GoalState) -> None:
        layer = self._saved[-1]
        if goal.spec.id not in layer:
            layer[goal.spec.id] = (goal.mmr.copy(), goal.leaderboard.copy())

    def rollback(self, keep: int = 0) -> None:
        """Undo the batches above the ``keep`` oldest, newest first (all of them by default)."""
        while len(self._saved) > keep:
            for gid, (mmr, board) in self._saved.pop().items():
                self.goals[gid].mmr = mmr
                self.goals[gid].leaderboard = board
        if not self._saved:
            self._saved = [{}]

    def settle_oldest(self) -> None:
        """The oldest batch's changes stay: it can no longer be rolled back."""
        del self._saved[0]
        if not self._saved:
            self._saved = [{}]

    def touched(self) -> list[str]:
        """The goals the current (newest) batch changed."""
        return sorted(self._saved[-1])


def evaluate(goal: GoalState, c: Contribution) -> tuple[Metrics | None, goals_mod.Rejection | None]:
    """Run the goal's evaluator and thresholds; deterministic, may take up to milliseconds."""
    ev = evaluate_contribution(goal.spec, goal.evaluator, c)
    if ev.error is not None:
        raise ev.error
    return ev.metrics, ev.rejection


def execute(state: ChainState, c: Contribution, evaluation: Evaluation | None = None) -> Outcome:
    """Evaluate ``c`` (or take its ``evaluation``, made by :mod:`ian.chain.evaluation` for this
    contribution) and, if it passes, append it to its goal's log and leaderboard.

    The caller has already checked that the goal exists and the pack is not a duplicate.
    """
    goal = state.goals[c.goal_id]
    if evaluation is None:
        evaluation = evaluate_contribution(goal.spec, goal.evaluator, c)
    if evaluation.error is not None:
        raise evaluation.error
    metrics, rejection = evaluation.metrics, evaluation.rejection
    if rejection is not None or metrics is None:
        assert rejection is not None
        return Outcome(
            accepted=False,
            goal_id=c.goal_id,
            metrics=metrics.to_dict() if metrics is not None else None,
            reason=rejection.reason,
            rejection_type=rejection.rejection_type,
        )
    score = goals_mod.score(goal.spec, metrics.reward, metrics.risk, metrics.complexity)
    metric_doc = metrics.to_dict()
    metrics_json = metrics.canonical_json()
    chash = contribution_hash(c, score, metrics_json)
    state.touch(goal)
    log_index = goal.mmr.size
    first_pos = goal.mmr.node_count
    nodes = goal.mmr.append(chash)
    board = goal.leaderboard
    if board.would_enter(score, log_index):  # most entries of a full board do not
        board.offer(LeaderboardEntry(log_index, score, chash, c.contributor_id))
    return Outcome(
        accepted=True,
        goal_id=c.goal_id,
        metrics=metric_doc,
        metrics_json=metrics_json,
        score=score,
        reason="accepted",
        log_index=log_index,
        contribution_hash=chash,
        mmr_nodes=tuple(nodes),
        first_node_pos=first_pos,
    )
