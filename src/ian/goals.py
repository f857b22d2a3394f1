"""Goals: what a competition is (evaluator, thresholds, ranking) and the built-in demo goal.

A goal's spec is part of consensus: every node must hold the same specs for the same goal ids,
or their roots differ. Specs come from the built-in table plus ``[[goals]]`` in config.toml.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    thresholds=Thresholds(min_reward=-0.05, max_risk=0.05, max_complexity=50.0, max_drawdown=0.5),
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
