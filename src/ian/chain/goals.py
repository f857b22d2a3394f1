"""Goals: what a competition is (evaluator, thresholds, ranking) and the built-in demo goal.

A goal's spec is part of consensus: every node must hold the same specs for the same goal ids,
or their roots differ. Specs come from the built-in table plus ``[[goals]]`` in config.toml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ian.evaluators import Metrics

GOAL_ID_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
GoalId = Annotated[str, Field(pattern=GOAL_ID_PATTERN)]

DEMO_GOAL_ID = "DEMO_TRADING_AGENT"


class Thresholds(BaseModel):
    """Acceptance thresholds; ``None`` means "not checked"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_reward: float | None = None
    max_risk: float | None = None
    max_complexity: float | None = None
    min_sharpe_ratio: float | None = None
    max_drawdown: float | None = None


class Weights(BaseModel):
    """Score = reward·w_reward + risk·w_risk + complexity·w_complexity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reward: float = 1.0
    risk: float = -0.5
    complexity: float = -0.01


class GoalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: GoalId
    name: str = ""
    description: str = ""
    evaluator: Literal["demo_trading", "trivial"] = "demo_trading"
    thresholds: Thresholds = Thresholds()
    weights: Weights = Weights()
    leaderboard_capacity: int = Field(default=100, ge=1, le=10_000)


DEMO_GOAL = GoalSpec(
    id=DEMO_GOAL_ID,
    name="Demo trading agent",
    description=(
        "Back-tests a momentum, mean-reversion or breakout strategy on a seeded synthetic "
        "price series; reward is the return, risk the volatility of returns."
    ),
    evaluator="demo_trading",
    # Tuned so a healthy share of sensible strategies pass: over a grid of every strategy,
    # lookbacks 2..200, thresholds 0..0.05 and position sizes 0.1..1, about 60% are accepted and
    # every strategy has accepted members (see tests/ian/chain/test_goals.py). At most a 1% loss,
    # a 20% drawdown; risk and complexity bounds only stop the extremes.
    thresholds=Thresholds(min_reward=-0.01, max_risk=0.01, max_complexity=30.0, max_drawdown=0.2),
    weights=Weights(reward=1.0, risk=-0.5, complexity=-0.01),
)

BUILTIN_GOALS: tuple[GoalSpec, ...] = (DEMO_GOAL,)


def score(spec: GoalSpec, reward: float, risk: float, complexity: float) -> float:
    """The ranking score of a contribution's metrics under ``spec``'s weights."""
    w = spec.weights
    value = reward * w.reward + risk * w.risk + complexity * w.complexity
    if not math.isfinite(value):
        raise ValueError("score is not finite")
    return value


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a contribution was not accepted; ``rejection_type`` is a stable machine-readable kind."""

    rejection_type: str
    reason: str


def _fmt(value: float) -> str:
    # Short, platform-independent rendering (Python formats floats itself, correctly rounded).
    return f"{value:.6g}"


def check_thresholds(spec: GoalSpec, metrics: Metrics) -> Rejection | None:
    """The first threshold of ``spec`` that ``metrics`` fails, or ``None`` when all pass.

    Bounds are inclusive (a reward equal to ``min_reward`` passes). Checked in a fixed order:
    min_reward, max_risk, max_complexity, min_sharpe_ratio, max_drawdown. A threshold on an
    optional metric the evaluator did not report rejects, since it cannot be shown to pass.
    """
    t = spec.thresholds
    if t.min_reward is not None and metrics.reward < t.min_reward:
        return _threshold(f"reward {_fmt(metrics.reward)} below min_reward {_fmt(t.min_reward)}")
    if t.max_risk is not None and metrics.risk > t.max_risk:
        return _threshold(f"risk {_fmt(metrics.risk)} above max_risk {_fmt(t.max_risk)}")
    if t.max_complexity is not None and metrics.complexity > t.max_complexity:
        return _threshold(
            f"complexity {_fmt(metrics.complexity)} above max_complexity {_fmt(t.max_complexity)}"
        )
    if t.min_sharpe_ratio is not None:
        sharpe = metrics.sharpe_ratio
        if sharpe is None:
            return _threshold(
                f"sharpe_ratio missing but min_sharpe_ratio {_fmt(t.min_sharpe_ratio)} is required"
            )
        if sharpe < t.min_sharpe_ratio:
            return _threshold(
                f"sharpe_ratio {_fmt(sharpe)} below min_sharpe_ratio {_fmt(t.min_sharpe_ratio)}"
            )
    if t.max_drawdown is not None:
        drawdown = metrics.max_drawdown
        if drawdown is None:
            return _threshold(
                f"max_drawdown missing but a max_drawdown of {_fmt(t.max_drawdown)} is required"
            )
        if drawdown > t.max_drawdown:
            return _threshold(
                f"max_drawdown {_fmt(drawdown)} above max_drawdown {_fmt(t.max_drawdown)}"
            )
    return None


def _threshold(reason: str) -> Rejection:
    return Rejection(rejection_type="threshold", reason=reason)
