"""The ``demo_trading`` evaluator: back-test a simple strategy on a seeded synthetic market.

Parameters (UTF-8 JSON object; other keys are allowed and ignored)::

    strategy       "momentum" | "mean_reversion" | "breakout"
    lookback       int, 2..200 (steps of history the signal looks at)
    threshold      number >= 0, finite (how far the signal must move before trading)
    position_size  number in (0, 1] (fraction of equity held long or short)

The market is one fixed price series of ``WARMUP + STEPS + 1`` prices generated from
``MARKET_SEED`` with a written-out splitmix64 generator. It is a constant of this evaluator, so
every goal using ``demo_trading`` back-tests on the same series on every node, and contributors
cannot pick their market (a ``seed`` key in the parameters is ignored like any other extra key).

Back-test: at each of the ``STEPS`` decision times ``t`` the position in
{-position_size, 0, +position_size} is decided from prices up to and including ``t`` only, and
earns the price return from ``t`` to ``t+1``. Every strategy and lookback trades the same
``STEPS`` steps, after a ``WARMUP`` of 200 prices that supplies the longest lookback's history.

Signals (``p`` is the price, ``L`` the lookback, ``th`` the threshold):

- momentum: ``p[t] / p[t-L]`` above ``1 + th`` → long, below ``1 - th`` → short, else flat.
- mean_reversion: ``p[t] / mean(p[t-L+1..t])`` above ``1 + th`` → short, below ``1 - th`` → long,
  else flat.
- breakout: ``p[t]`` above ``max(p[t-L..t-1]) * (1 + th)`` → long, below
  ``min(p[t-L..t-1]) * (1 - th)`` → short, else keep the previous position.

Metrics over the per-step strategy returns ``r`` (``STEPS`` of them, 0 while flat):

- reward = final equity / initial equity - 1 (equity compounds ``1 + r``)
- risk = population standard deviation of ``r``, as ``sqrt(mean(r*r) - mean(r)**2)`` in one pass
- sharpe_ratio = mean(r) / std(r) * sqrt(STEPS_PER_YEAR), 0 when std is 0
- max_drawdown = largest fall from a running equity peak, as a fraction in [0, 1)
- complexity = 1 + lookback / 10 + position changes / 20 (so in [1.2, 46.6])

Bounds: ``check`` is linear in the size of ``parameters``. ``evaluate`` does a fixed amount of work
whatever the parameters: two passes over ``STEPS`` = 512 steps (signals, then one fused metrics
loop), each step O(1) — rolling windows come from prefix sums and a sparse max/min table built
once with the market, so lookback 200 costs what lookback 2 does (~100-150 µs on a 2-core box).
Only ``+ - * /``, ``math.sqrt``, ``min``/``max`` and comparisons touch floats, and every float sum
is a plain left-to-right addition in a fixed order, so results are bit-for-bit identical on every
IEEE-754 machine and Python version.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any, Literal, TypeGuard

from ian.errors import InputError
from ian.evaluators import Metrics

Strategy = Literal["momentum", "mean_reversion", "breakout"]
STRATEGIES: tuple[Strategy, ...] = ("momentum", "mean_reversion", "breakout")

MIN_LOOKBACK = 2
MAX_LOOKBACK = 200
WARMUP = MAX_LOOKBACK  # history before the first decision, enough for the longest lookback
STEPS = 512  # decision steps in every back-test; the evaluation work bound
STEPS_PER_YEAR = 252  # one step is read as one trading day when annualising the Sharpe ratio
MARKET_SEED = 0x1A_2024_DE30  # fixed: part of the evaluator, never chosen by contributors
INITIAL_PRICE = 100.0

_FIELD = "agent_pack.parameters"
_SQRT_STEPS_PER_YEAR = math.sqrt(float(STEPS_PER_YEAR))


# --------------------------------------------------------------------------- market generation

_MASK64 = (1 << 64) - 1
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0  # 2**-53, exact
_SQRT3 = math.sqrt(3.0)


class _SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014): integer-only, so identical on every platform."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def next_u64(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A float in [0, 1): 53 random bits times 2**-53, exact."""
        return (self.next_u64() >> 11) * _TWO_POW_MINUS_53

    def below(self, n: int) -> int:
        """An int in [0, n); the modulo bias is irrelevant for picking regimes."""
        return self.next_u64() % n

    def shock(self) -> float:
        """A roughly normal draw with mean 0 and variance 1 (Irwin-Hall of four uniforms)."""
        total = self.uniform() + self.uniform() + self.uniform() + self.uniform()
        return (total - 2.0) * _SQRT3


# Regimes, so that each strategy has stretches where it earns: trends reward momentum, ranges
# reward mean reversion, quiet consolidations that end in a sharp move reward breakout.
_TREND, _RANGE, _SQUEEZE = 0, 1, 2


def generate_prices(seed: int = MARKET_SEED, count: int = WARMUP + STEPS + 1) -> tuple[float, ...]:
    """The synthetic price series for ``seed``: ``count`` positive prices from ``INITIAL_PRICE``.

    The market is a sequence of regimes of 30..109 steps: trend (40%), range (30%), squeeze then
    breakout (30%). Each per-step return is clamped to [-0.2, 0.2] so prices stay positive.
    """
    rng = _SplitMix64(seed)
    prices = [INITIAL_PRICE]
    price = INITIAL_PRICE
    prev_ret = 0.0
    while len(prices) < count:
        pick = rng.below(20)
        regime = _TREND if pick < 8 else _RANGE if pick < 14 else _SQUEEZE
        length = 30 + rng.below(80)
        direction = 1.0 if rng.below(2) else -1.0
        anchor = price
        for i in range(length):
            z = rng.shock()
            if regime == _TREND:  # drift plus positively autocorrelated returns
                ret = direction * 0.0015 + 0.15 * prev_ret + 0.009 * z
            elif regime == _RANGE:  # pulled back to the level the range started at
                ret = -0.3 * prev_ret - 0.15 * (price / anchor - 1.0) + 0.011 * z
            elif i < length // 2:  # quiet consolidation
                ret = -0.1 * (price / anchor - 1.0) + 0.003 * z
            else:  # the break out of it
                ret = direction * 0.006 + 0.012 * z
            ret = min(0.2, max(-0.2, ret))
            price = price * (1.0 + ret)
            prev_ret = ret
            prices.append(price)
            if len(prices) == count:
                break
    return tuple(prices)


@dataclass(frozen=True, slots=True)
class Market:
    """A price series plus the tables that make every rolling window O(1) per step.

    ``prices`` holds ``WARMUP + STEPS + 1`` positive prices; decision ``i`` (0-based) happens at
    price index ``WARMUP + i`` and earns ``step_returns[i]``.
    """

    prices: tuple[float, ...]
    prefix: tuple[float, ...]  # prefix[k] = p[0] + ... + p[k-1], added left to right
    step_returns: tuple[float, ...]  # p[t+1] / p[t] - 1 for each decision time t
    max_table: tuple[tuple[float, ...], ...]  # max_table[k][i] = max(p[i .. i + 2**k - 1])
    min_table: tuple[tuple[float, ...], ...]

    @classmethod
    def from_prices(cls, prices: tuple[float, ...]) -> Market:
        """Build the tables for ``prices`` (exactly ``WARMUP + STEPS + 1`` positive floats)."""
        if len(prices) != WARMUP + STEPS + 1 or not all(x > 0.0 for x in prices):
            raise ValueError(f"a market needs {WARMUP + STEPS + 1} positive prices")
        now = prices[WARMUP : WARMUP + STEPS]
        nxt = prices[WARMUP + 1 : WARMUP + STEPS + 1]
        return cls(
            prices=prices,
            prefix=tuple(accumulate(prices, operator.add, initial=0.0)),
            step_returns=tuple(b / a - 1.0 for a, b in zip(now, nxt, strict=True)),
            max_table=_sparse_table(prices, max),
            min_table=_sparse_table(prices, min),
        )


def _sparse_table(values: tuple[float, ...], pick: Any) -> tuple[tuple[float, ...], ...]:
    """Level k holds ``pick`` over every window of 2**k values; levels up to MAX_LOOKBACK."""
    levels = [values]
    width = 1
    while width * 2 <= MAX_LOOKBACK:
        row = levels[-1]
        levels.append(tuple(map(pick, row[: len(row) - width], row[width:])))
        width *= 2
    return tuple(levels)


# Built once at import and immutable afterwards, so worker threads share it safely.
MARKET = Market.from_prices(generate_prices(MARKET_SEED))


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class DemoParams:
    """Valid demo-trading parameters (ranges in the module docstring), from :func:`parse_params`.

    Constructing one directly with out-of-range values raises ``ValueError``, so a back-test never
    sees a lookback its windows cannot serve.
    """

    strategy: Strategy
    lookback: int
    threshold: float
    position_size: float

    def __post_init__(self) -> None:
        if (
            self.strategy not in STRATEGIES
            or type(self.lookback) is not int
            or not MIN_LOOKBACK <= self.lookback <= MAX_LOOKBACK
            or type(self.threshold) is not float
            or not 0.0 <= self.threshold < math.inf
            or type(self.position_size) is not float
            or not 0.0 < self.position_size <= 1.0
        ):
            raise ValueError(f"invalid demo-trading parameters: {self!r}")

    def __reduce__(self) -> tuple[type[DemoParams], tuple[str, int, float, float]]:
        """Pickled as its four fields (what an evaluation worker receives): several times
        cheaper than the generic form of a slotted dataclass, and checked again on load."""
        return (DemoParams, (self.strategy, self.lookback, self.threshold, self.position_size))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: object) -> str:
    """A short repr for error messages: parameters can be megabytes."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "a very large integer"  # repr of huge ints is slow and capped by Python
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: object) -> str:
    return {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}.get(
        type(value), "number"
    )


def parse_params(parameters: bytes) -> DemoParams:
    """Parse and validate ``parameters``; raise ``InputError`` whose ``field`` names the problem."""
    try:
        text = bytes(parameters).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise InputError("parameters must be UTF-8 encoded JSON", field=_FIELD) from exc
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers longer than Python's digit limit.
        raise InputError(f"parameters are not valid JSON: {exc}", field=_FIELD) from exc
    if not isinstance(doc, dict):
        raise InputError(f"parameters must be a JSON object, got {_type_name(doc)}", field=_FIELD)
    for key in ("strategy", "lookback", "threshold", "position_size"):
        if key not in doc:
            raise InputError(f"{key} is required", field=f"{_FIELD}.{key}")

    strategy = doc["strategy"]
    if not _is_strategy(strategy):
        raise InputError(
            f"strategy must be one of {', '.join(STRATEGIES)}, got {_show(strategy)}",
            field=f"{_FIELD}.strategy",
        )

    lookback = doc["lookback"]
    if (
        not isinstance(lookback, int)
        or isinstance(lookback, bool)
        or not MIN_LOOKBACK <= lookback <= MAX_LOOKBACK
    ):
        raise InputError(
            f"lookback must be an integer {MIN_LOOKBACK}..{MAX_LOOKBACK}, got {_show(lookback)}",
            field=f"{_FIELD}.lookback",
        )

    threshold = _finite_float(doc["threshold"])
    if threshold is None or threshold < 0.0:
        raise InputError(
            f"threshold must be a finite number >= 0, got {_show(doc['threshold'])}",
            field=f"{_FIELD}.threshold",
        )

    size = _finite_float(doc["position_size"])
    if size is None or not 0.0 < size <= 1.0:
        raise InputError(
            f"position_size must be a number in (0, 1], got {_show(doc['position_size'])}",
            field=f"{_FIELD}.position_size",
        )
    return DemoParams(strategy=strategy, lookback=lookback, threshold=threshold, position_size=size)


def _is_strategy(value: object) -> TypeGuard[Strategy]:
    """True when ``value`` is one of :data:`STRATEGIES` (a str, never any other equal object)."""
    return isinstance(value, str) and value in STRATEGIES


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` if it is not a finite JSON number."""
    if not _is_number(value):
        return None
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        return None
    return as_float if math.isfinite(as_float) else None


# --------------------------------------------------------------------------- back-test


def signals(params: DemoParams, market: Market = MARKET) -> list[int]:
    """The position direction (-1, 0, +1) at each of the ``STEPS`` decision times.

    Decision ``i`` reads prices up to index ``WARMUP + i`` only (no look-ahead).
    """
    lb = params.lookback
    up = 1.0 + params.threshold
    down = 1.0 - params.threshold
    p = market.prices
    now = p[WARMUP : WARMUP + STEPS]
    if params.strategy == "momentum":
        ratios = map(operator.truediv, now, p[WARMUP - lb : WARMUP - lb + STEPS])
        return [(r > up) - (r < down) for r in ratios]
    if params.strategy == "mean_reversion":
        s = market.prefix
        # The window p[t-L+1 .. t] sums to prefix[t+1] - prefix[t+1-L].
        sums = map(
            operator.sub,
            s[WARMUP + 1 : WARMUP + 1 + STEPS],
            s[WARMUP + 1 - lb : WARMUP + 1 - lb + STEPS],
        )
        ratios = map(operator.truediv, now, map(operator.truediv, sums, repeat(float(lb))))
        return [(r < down) - (r > up) for r in ratios]
    # breakout: the window p[t-L .. t-1] is covered by two overlapping power-of-two blocks, one
    # starting at t-L and one ending at t-1. Scaling by a positive factor preserves the maximum
    # exactly (rounding is monotone), so each block is compared on its own.
    level = lb.bit_length() - 1
    width = 1 << level
    first = slice(WARMUP - lb, WARMUP - lb + STEPS)
    second = slice(WARMUP - width, WARMUP - width + STEPS)
    hi = market.max_table[level]
    lo = market.min_table[level]
    held = 0
    out: list[int] = []
    append = out.append
    for x, h1, h2, l1, l2 in zip(now, hi[first], hi[second], lo[first], lo[second], strict=True):
        if x > h1 * up and x > h2 * up:
            held = 1
        elif x < l1 * down and x < l2 * down:
            held = -1
        append(held)
    return out


def backtest(params: DemoParams, market: Market = MARKET) -> Metrics:
    """The deterministic metrics of ``params`` on ``market`` (see the module docstring)."""
    size = params.position_size
    equity = peak = lowest = 1.0  # lowest = smallest equity / running peak seen so far
    total = squares = 0.0
    held = changes = 0
    # One fused pass: this loop is most of the evaluation cost. Flat steps earn exactly 0.
    for direction, step_return in zip(signals(params, market), market.step_returns, strict=True):
        if direction != held:
            changes += 1
            held = direction
        if direction:
            r = direction * size * step_return
            total += r
            squares += r * r
            equity *= 1.0 + r
            if equity > peak:
                peak = equity
            else:
                ratio = equity / peak
                if ratio < lowest:
                    lowest = ratio
    n = float(STEPS)
    mean = total / n
    variance = squares / n - mean * mean
    std = math.sqrt(variance) if variance > 0.0 else 0.0  # rounding can leave a tiny negative
    return Metrics(
        reward=equity - 1.0,
        risk=std,
        complexity=1.0 + params.lookback / 10.0 + changes / 20.0,
        sharpe_ratio=mean / std * _SQRT_STEPS_PER_YEAR if std > 0.0 else 0.0,
        max_drawdown=1.0 - lowest,
    )


class DemoTradingEvaluator:
    """The ``demo_trading`` evaluator; stateless, safe to share between threads."""

    name = "demo_trading"
    costly = True  # a back-test of 512 steps, ~0.1-0.4 ms: worth a worker process

    def check(self, parameters: bytes, metadata: Mapping[str, Any]) -> DemoParams:
        """Validate the JSON ``parameters``; ``metadata`` is not used by this evaluator."""
        return parse_params(parameters)

    def evaluate(self, parsed: object) -> Metrics:
        """Back-test ``parsed`` (a :class:`DemoParams` from :meth:`check`) on :data:`MARKET`."""
        if not isinstance(parsed, DemoParams):
            raise TypeError("demo_trading expects the DemoParams returned by check()")
        return backtest(parsed)
