"""Goal specs: threshold checks, the demo goal's tuning, and the score."""

from __future__ import annotations

import math

import pytest

from ian.chain.goals import (
    BUILTIN_GOALS,
    DEMO_GOAL,
    DEMO_GOAL_ID,
    GoalSpec,
    Rejection,
    Thresholds,
    Weights,
    check_thresholds,
    score,
)
from ian.evaluators import Metrics, get_evaluator
from ian.evaluators.demo_trading import STRATEGIES, DemoParams, backtest

STRICT = GoalSpec(
    id="STRICT",
    evaluator="trivial",
    thresholds=Thresholds(
        min_reward=-0.05,
        max_risk=0.1,
        max_complexity=20.0,
        min_sharpe_ratio=0.5,
        max_drawdown=0.3,
    ),
)
GOOD = {"reward": 0.1, "risk": 0.05, "complexity": 5.0, "sharpe_ratio": 1.0, "max_drawdown": 0.1}


def metrics(**changes: float | None) -> Metrics:
    return Metrics(**{**GOOD, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        # Bounds are inclusive.
        ({"reward": -0.05, "risk": 0.1, "complexity": 20.0}, None),
        ({"sharpe_ratio": 0.5, "max_drawdown": 0.3}, None),
        ({"reward": -0.12}, "reward -0.12 below min_reward -0.05"),
        ({"risk": 0.1000001}, "risk 0.1 above max_risk 0.1"),
        ({"risk": 0.25}, "risk 0.25 above max_risk 0.1"),
        ({"complexity": 20.5}, "complexity 20.5 above max_complexity 20"),
        ({"sharpe_ratio": 0.49}, "sharpe_ratio 0.49 below min_sharpe_ratio 0.5"),
        ({"sharpe_ratio": None}, "sharpe_ratio missing but min_sharpe_ratio 0.5 is required"),
        ({"max_drawdown": 0.31}, "max_drawdown 0.31 above max_drawdown 0.3"),
        ({"max_drawdown": None}, "max_drawdown missing but a max_drawdown of 0.3 is required"),
        # Several failures: the first in the documented order is reported.
        ({"reward": -1.0, "risk": 1.0, "max_drawdown": 0.9}, "reward -1 below min_reward -0.05"),
        ({"complexity": 99.0, "sharpe_ratio": -2.0}, "complexity 99 above max_complexity 20"),
    ],
)
def test_threshold_table(changes: dict[str, float | None], reason: str | None) -> None:
    result = check_thresholds(STRICT, metrics(**changes))
    if reason is None:
        assert result is None
    else:
        assert result == Rejection(rejection_type="threshold", reason=reason)


def test_unset_thresholds_are_not_checked() -> None:
    open_goal = GoalSpec(id="OPEN", evaluator="trivial")
    extreme = Metrics(reward=-1e9, risk=1e9, complexity=1e9, sharpe_ratio=-1e9, max_drawdown=1.0)
    assert check_thresholds(open_goal, extreme) is None
    assert check_thresholds(open_goal, Metrics(0.0, 0.0, 0.0)) is None


def test_rejection_is_frozen() -> None:
    rejection = Rejection("threshold", "x")
    with pytest.raises(AttributeError):
        rejection.reason = "y"  # type: ignore[misc]


def test_score_is_the_weighted_sum() -> None:
    assert score(DEMO_GOAL, 0.2, 0.01, 3.0) == pytest.approx(0.2 - 0.005 - 0.03)
    custom = GoalSpec(id="W", weights=Weights(reward=2.0, risk=-1.0, complexity=0.0))
    assert score(custom, 0.5, 0.25, 100.0) == 0.75


def test_score_rejects_non_finite_results() -> None:
    huge = GoalSpec(id="HUGE", weights=Weights(reward=1e308, risk=0.0, complexity=0.0))
    with pytest.raises(ValueError):
        score(huge, 10.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        score(DEMO_GOAL, math.nan, 0.0, 0.0)


def test_demo_goal_is_built_in_and_resolvable() -> None:
    assert DEMO_GOAL in BUILTIN_GOALS
    assert DEMO_GOAL.id == DEMO_GOAL_ID
    assert get_evaluator(DEMO_GOAL.evaluator).name == "demo_trading"


# The grid of "sensible" strategies the demo thresholds were tuned on; see goals.py.
SENSIBLE = [
    DemoParams(s, lb, th, size)
    for s in STRATEGIES
    for lb in (2, 3, 4, 5, 7, 10, 14, 20, 30, 50, 75, 100, 150, 200)
    for th in (0.0, 0.005, 0.01, 0.02, 0.05)
    for size in (0.1, 0.25, 0.5, 1.0)
]


def test_demo_thresholds_accept_a_healthy_share_of_sensible_strategies() -> None:
    accepted = {s: 0 for s in STRATEGIES}
    for params in SENSIBLE:
        if check_thresholds(DEMO_GOAL, backtest(params)) is None:
            accepted[params.strategy] += 1
    share = sum(accepted.values()) / len(SENSIBLE)
    assert 0.4 <= share <= 0.7, (share, accepted)
    per_strategy = len(SENSIBLE) // len(STRATEGIES)
    assert all(0.2 <= n / per_strategy <= 0.9 for n in accepted.values()), accepted


def test_demo_thresholds_reject_losers_and_accept_winners() -> None:
    loser = backtest(DemoParams("mean_reversion", 200, 0.0, 1.0))
    assert check_thresholds(DEMO_GOAL, loser) == Rejection(
        "threshold", "reward -0.121617 below min_reward -0.01"
    )
    deep_drawdown = backtest(DemoParams("mean_reversion", 20, 0.0, 1.0))
    rejected = check_thresholds(DEMO_GOAL, deep_drawdown)
    assert rejected is not None
    assert rejected.reason.startswith("max_drawdown ")
    assert check_thresholds(DEMO_GOAL, backtest(DemoParams("breakout", 20, 0.01, 0.5))) is None
    assert check_thresholds(DEMO_GOAL, backtest(DemoParams("momentum", 200, 0.0, 1.0))) is None
