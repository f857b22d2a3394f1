"""Metrics validation and the evaluator registry (ian.evaluators)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ian.chain.goals import GoalSpec
from ian.chain.hashing import canonical_json_text
from ian.evaluators import EVALUATOR_NAMES, Metrics, get_evaluator


def test_to_dict_omits_missing_optional_metrics() -> None:
    assert Metrics(0.1, 0.2, 3.0).to_dict() == {"reward": 0.1, "risk": 0.2, "complexity": 3.0}
    assert Metrics(0.1, 0.2, 3.0, sharpe_ratio=1.5).to_dict() == {
        "reward": 0.1,
        "risk": 0.2,
        "complexity": 3.0,
        "sharpe_ratio": 1.5,
    }
    assert Metrics(0.1, 0.2, 3.0, max_drawdown=0.0).to_dict()["max_drawdown"] == 0.0


def test_integers_are_stored_as_floats() -> None:
    m = Metrics(1, 0, 2, sharpe_ratio=3)
    assert m.to_dict() == {"reward": 1.0, "risk": 0.0, "complexity": 2.0, "sharpe_ratio": 3.0}
    assert all(type(v) is float for v in m.to_dict().values())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**400])
@pytest.mark.parametrize("field", ["reward", "risk", "complexity", "sharpe_ratio", "max_drawdown"])
def test_non_finite_metrics_are_rejected(field: str, bad: float) -> None:
    values: dict[str, float] = {"reward": 0.0, "risk": 0.0, "complexity": 0.0, field: bad}
    with pytest.raises(ValueError, match=field):
        Metrics(**values)


@pytest.mark.parametrize("bad", [None, "1.0", True])
@pytest.mark.parametrize("field", ["reward", "risk", "complexity"])
def test_required_metrics_must_be_numbers(field: str, bad: object) -> None:
    values: dict[str, object] = {"reward": 0.0, "risk": 0.0, "complexity": 0.0, field: bad}
    with pytest.raises(TypeError, match=field):
        Metrics(**values)  # type: ignore[arg-type]


def test_metrics_are_frozen() -> None:
    m = Metrics(0.1, 0.2, 0.3)
    with pytest.raises(AttributeError):
        m.reward = 1.0  # type: ignore[misc]


def test_every_goal_evaluator_name_resolves() -> None:
    allowed = GoalSpec.model_fields["evaluator"].annotation.__args__  # type: ignore[union-attr]
    assert set(allowed) == set(EVALUATOR_NAMES)
    for name in EVALUATOR_NAMES:
        evaluator = get_evaluator(name)
        assert evaluator.name == name
        assert get_evaluator(name) is evaluator


def test_unknown_evaluator_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown evaluator 'nope'"):
        get_evaluator("nope")


@given(
    reward=st.floats(allow_nan=False, allow_infinity=False),
    risk=st.floats(allow_nan=False, allow_infinity=False),
    complexity=st.floats(allow_nan=False, allow_infinity=False),
    sharpe=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    drawdown=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_canonical_json_equals_the_generic_encoding(reward, risk, complexity, sharpe, drawdown):
    m = Metrics(reward, risk, complexity, sharpe, drawdown)
    assert m.canonical_json() == canonical_json_text(m.to_dict())
