"""Deterministic evaluators: turn an agent pack's parameters into :class:`Metrics`.

Every node re-executes evaluation to verify blocks, so an evaluator must give bit-for-bit the same
floats on every machine and Python version: it may use only ``+ - * /`` and ``math.sqrt`` on
floats (IEEE-754, correctly rounded), integer arithmetic, ``min``/``max`` and comparisons. No
transcendental functions, no ``random``, no numpy, no built-in ``sum()`` over floats (its algorithm
changed in Python 3.12). Evaluation is pure and bounded; callers run it off the event loop.

Two calls per contribution:

- ``check(parameters, metadata)`` — cheap, stateless validation on the API path. Returns the parsed
  parameters or raises :class:`ian.errors.InputError` whose ``field`` names the offending input
  (``agent_pack.parameters`` or ``agent_pack.parameters.<key>``).
- ``evaluate(parsed)`` — the deterministic metrics of what ``check`` returned.

An evaluator also says whether it is ``costly``: costly ones are evaluated in worker processes
when a batch is big enough (``ian.ledger.evaluation_pool``), so evaluation scales with cores; the
parsed value must then be picklable, and the same in any process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EVALUATOR_NAMES", "Evaluator", "Metrics", "get_evaluator"]

EVALUATOR_NAMES: tuple[str, ...] = ("demo_trading", "trivial")

_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class Metrics:
    """The measured result of one evaluation.

    ``reward``, ``risk`` and ``complexity`` are required; ``sharpe_ratio`` and ``max_drawdown``
    are optional (``None`` = not measured). Every present value is a finite float (ints are
    converted; bools and non-finite values raise).
    """

    reward: float
    risk: float
    complexity: float
    sharpe_ratio: float | None = None
    max_drawdown: float | None = None

    def __post_init__(self) -> None:
        # Fast path first: evaluators build one Metrics per contribution.
        if (
            type(self.reward) is float
            and type(self.risk) is float
            and type(self.complexity) is float
            and _isfinite(self.reward)
            and _isfinite(self.risk)
            and _isfinite(self.complexity)
            and (self.sharpe_ratio is None or type(self.sharpe_ratio) is float)
            and (self.max_drawdown is None or type(self.max_drawdown) is float)
            and (self.sharpe_ratio is None or _isfinite(self.sharpe_ratio))
            and (self.max_drawdown is None or _isfinite(self.max_drawdown))
        ):
            return
        for name in ("reward", "risk", "complexity", "sharpe_ratio", "max_drawdown"):
            value = getattr(self, name)
            if value is None and name in ("sharpe_ratio", "max_drawdown"):
                continue
            # bool is an int subclass but never a meaningful metric.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"metric {name} must be a number, got {type(value).__name__}")
            try:
                as_float = float(value)
            except OverflowError:  # an int beyond the float range
                as_float = math.inf
            if not _isfinite(as_float):
                raise ValueError(f"metric {name} must be finite, got {value!r}")
            # Store plain floats only, so 1 and 1.0 serialise (and hash) the same way.
            object.__setattr__(self, name, as_float)

    def canonical_json(self) -> str:
        """``canonical_json_text(self.to_dict())`` without the generic encoder: the keys are
        fixed identifiers in sorted order and every value is a finite float, whose JSON form is
        its shortest round-trip ``repr`` (tested against the generic encoding)."""
        parts = [f'"complexity":{self.complexity!r}']
        if self.max_drawdown is not None:
            parts.append(f'"max_drawdown":{self.max_drawdown!r}')
        parts.append(f'"reward":{self.reward!r}')
        parts.append(f'"risk":{self.risk!r}')
        if self.sharpe_ratio is not None:
            parts.append(f'"sharpe_ratio":{self.sharpe_ratio!r}')
        return "{" + ",".join(parts) + "}"

    def to_dict(self) -> dict[str, float]:
        """The metrics as a JSON-ready dict; ``None`` values are omitted."""
        out = {"reward": self.reward, "risk": self.risk, "complexity": self.complexity}
        if self.sharpe_ratio is not None:
            out["sharpe_ratio"] = self.sharpe_ratio
        if self.max_drawdown is not None:
            out["max_drawdown"] = self.max_drawdown
        return out


class Evaluator(Protocol):
    """What a goal's evaluator provides; implementations are stateless and thread-safe."""

    name: str
    #: True when one evaluation costs enough (~0.1 ms or more) to be worth sending to a worker
    #: process (:mod:`ian.ledger.evaluation_pool`); False for evaluators cheaper than the trip
    costly: bool

    def check(self, parameters: bytes, metadata: Mapping[str, Any]) -> object:
        """Validate ``parameters`` and return them parsed; raise ``InputError`` naming the field."""
        ...

    def evaluate(self, parsed: object) -> Metrics:
        """Deterministic, bounded metrics of ``parsed`` (a value ``check`` returned)."""
        ...


_INSTANCES: dict[str, Evaluator] = {}


def get_evaluator(name: str) -> Evaluator:
    """The shared evaluator named ``name`` (a ``GoalSpec.evaluator`` value).

    Raises ``ValueError`` for an unknown name.
    """
    found = _INSTANCES.get(name)
    if found is not None:
        return found
    # Imported here: the submodules import Metrics from this package.
    if name == "demo_trading":
        from ian.evaluators.demo_trading import DemoTradingEvaluator

        found = DemoTradingEvaluator()
    elif name == "trivial":
        from ian.evaluators.trivial import TrivialEvaluator

        found = TrivialEvaluator()
    else:
        raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATOR_NAMES)}")
    # A race between threads only builds two equal instances; the last one wins.
    _INSTANCES[name] = found
    return found
