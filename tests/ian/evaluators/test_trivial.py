"""The trivial evaluator: any non-empty bytes, metrics from sha256, in fixed half-open ranges."""

from __future__ import annotations

import pytest

from ian.errors import InputError
from ian.evaluators import Metrics, get_evaluator
from ian.evaluators.trivial import TrivialEvaluator


def test_known_answer() -> None:
    assert TrivialEvaluator().evaluate(b"hello") == Metrics(
        reward=0.17557225990430192, risk=0.19095507350236696, complexity=9.044566406741746
    )


def test_deterministic_and_input_sensitive() -> None:
    evaluator = TrivialEvaluator()
    assert evaluator.evaluate(b"pack-1") == evaluator.evaluate(b"pack-1")
    assert evaluator.evaluate(b"pack-1") != evaluator.evaluate(b"pack-2")


def test_metrics_stay_in_their_ranges() -> None:
    evaluator = TrivialEvaluator()
    seen = [evaluator.evaluate(i.to_bytes(4, "big")) for i in range(3000)]
    assert all(0.0 <= m.reward < 1.0 for m in seen)
    assert all(0.0 <= m.risk < 0.5 for m in seen)
    assert all(0.0 <= m.complexity < 10.0 for m in seen)
    assert all(m.sharpe_ratio is None and m.max_drawdown is None for m in seen)
    # Spread over the range, not stuck in a corner.
    assert min(m.reward for m in seen) < 0.01 and max(m.reward for m in seen) > 0.99
    assert max(m.complexity for m in seen) > 9.9


def test_ranges_are_half_open_even_for_the_largest_field() -> None:
    # The biggest 53-bit field, scaled the way evaluate() scales it, stays below each bound.
    largest = ((1 << 53) - 1) * (1.0 / 9007199254740992.0)
    assert largest < 1.0
    assert largest * 0.5 < 0.5
    assert largest * 10.0 < 10.0


def test_check_accepts_non_empty_bytes() -> None:
    evaluator = TrivialEvaluator()
    assert evaluator.check(b"\x00", {}) == b"\x00"
    assert evaluator.check(bytearray(b"ab"), {}) == b"ab"
    assert type(evaluator.check(bytearray(b"ab"), {})) is bytes


@pytest.mark.parametrize("bad", [b"", bytearray(), "text", None, 123])
def test_check_rejects_empty_or_non_bytes(bad: object) -> None:
    with pytest.raises(InputError) as info:
        TrivialEvaluator().check(bad, {})  # type: ignore[arg-type]
    assert info.value.field == "agent_pack.parameters"


def test_evaluate_rejects_unparsed_input() -> None:
    with pytest.raises(TypeError):
        TrivialEvaluator().evaluate("hello")


def test_registry_returns_it() -> None:
    evaluator = get_evaluator("trivial")
    assert evaluator.name == "trivial"
    assert evaluator.evaluate(evaluator.check(b"hello", {})) == TrivialEvaluator().evaluate(
        b"hello"
    )
