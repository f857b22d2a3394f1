"""The demo-trading evaluator: fixed market, strict parameters, deterministic bounded back-test."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from ian.errors import InputError
from ian.evaluators import Metrics, get_evaluator
from ian.evaluators.demo_trading import (
    MARKET,
    MARKET_SEED,
    STEPS,
    STRATEGIES,
    WARMUP,
    DemoParams,
    DemoTradingEvaluator,
    Market,
    backtest,
    generate_prices,
    parse_params,
    signals,
)

FIELD = "agent_pack.parameters"
VALID = {"strategy": "momentum", "lookback": 20, "threshold": 0.01, "position_size": 0.5}


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def with_(**changes: object) -> bytes:
    return encode({**VALID, **changes})


def without(key: str) -> bytes:
    return encode({k: v for k, v in VALID.items() if k != key})


# --------------------------------------------------------------------------- the market


def test_market_first_prices_are_pinned() -> None:
    # Any change to the generator changes every node's metrics: it must be deliberate.
    first = (
        100.0,
        100.1236961825994,
        100.30751155909296,
        100.42003841038314,
        99.69675378787946,
        99.77184529873898,
        99.47665328142523,
        99.18939113502178,
        99.08681555614768,
        99.34102559092906,
    )
    assert MARKET.prices[:10] == first
    assert (
        hashlib.sha256(repr(MARKET.prices[:10]).encode()).hexdigest()
        == "ad1c995543dfc0064750229fd240dab898b3f27c29f46ed6b216a3b6c2633798"
    )


def test_whole_market_checksum_is_pinned() -> None:
    assert (
        hashlib.sha256(repr(MARKET.prices).encode()).hexdigest()
        == "df6e766b168592423d1b463eb2a0f04f256e52a2f69258d451188fb5cf565bfa"
    )


def test_fresh_generation_is_identical() -> None:
    assert generate_prices(MARKET_SEED) == MARKET.prices
    assert generate_prices() == generate_prices()


def test_market_shape_and_prices_positive() -> None:
    assert len(MARKET.prices) == WARMUP + STEPS + 1
    assert len(MARKET.step_returns) == STEPS
    assert all(p > 0.0 and math.isfinite(p) for p in MARKET.prices)


def test_seed_selects_the_market() -> None:
    assert generate_prices(MARKET_SEED + 1) != MARKET.prices


def test_market_rejects_wrong_length_or_non_positive_prices() -> None:
    with pytest.raises(ValueError):
        Market.from_prices(MARKET.prices[:-1])
    with pytest.raises(ValueError):
        Market.from_prices((0.0, *MARKET.prices[1:]))


# --------------------------------------------------------------------------- parameters


def test_valid_parameters_parse() -> None:
    assert parse_params(encode(VALID)) == DemoParams("momentum", 20, 0.01, 0.5)


@pytest.mark.parametrize(
    ("raw", "field", "message_part"),
    [
        (b"\xff\xfe{}", FIELD, "UTF-8"),
        (b"", FIELD, "not valid JSON"),
        (b"{strategy: momentum}", FIELD, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, FIELD, "not valid JSON"),
        (b'{"lookback": ' + b"9" * 5000 + b"}", FIELD, "not valid JSON"),
        (b"[1, 2]", FIELD, "JSON object, got array"),
        (b'"momentum"', FIELD, "JSON object, got string"),
        (b"null", FIELD, "JSON object, got null"),
        (without("strategy"), f"{FIELD}.strategy", "strategy is required"),
        (without("lookback"), f"{FIELD}.lookback", "lookback is required"),
        (without("threshold"), f"{FIELD}.threshold", "threshold is required"),
        (without("position_size"), f"{FIELD}.position_size", "position_size is required"),
        (with_(strategy="scalping"), f"{FIELD}.strategy", "one of momentum"),
        (with_(strategy="Momentum"), f"{FIELD}.strategy", "one of momentum"),
        (with_(strategy=1), f"{FIELD}.strategy", "one of momentum"),
        (with_(strategy=["momentum"]), f"{FIELD}.strategy", "one of momentum"),
        (with_(lookback=1), f"{FIELD}.lookback", "integer 2..200, got 1"),
        (with_(lookback=201), f"{FIELD}.lookback", "integer 2..200, got 201"),
        (with_(lookback=500), f"{FIELD}.lookback", "lookback must be an integer 2..200, got 500"),
        (with_(lookback=-5), f"{FIELD}.lookback", "integer 2..200"),
        (with_(lookback=20.0), f"{FIELD}.lookback", "integer 2..200, got 20.0"),
        (with_(lookback=True), f"{FIELD}.lookback", "integer 2..200, got True"),
        (with_(lookback="20"), f"{FIELD}.lookback", "integer 2..200"),
        (with_(lookback=None), f"{FIELD}.lookback", "integer 2..200"),
        (with_(threshold=-0.01), f"{FIELD}.threshold", "finite number >= 0"),
        (with_(threshold="0.01"), f"{FIELD}.threshold", "finite number >= 0"),
        (with_(threshold=False), f"{FIELD}.threshold", "finite number >= 0"),
        (with_(threshold=10**400), f"{FIELD}.threshold", "finite number >= 0"),
        (with_(position_size=0), f"{FIELD}.position_size", "in (0, 1]"),
        (with_(position_size=0.0), f"{FIELD}.position_size", "in (0, 1]"),
        (with_(position_size=-0.5), f"{FIELD}.position_size", "in (0, 1]"),
        (with_(position_size=1.0000001), f"{FIELD}.position_size", "in (0, 1]"),
        (with_(position_size=True), f"{FIELD}.position_size", "in (0, 1]"),
        (with_(position_size=[0.5]), f"{FIELD}.position_size", "in (0, 1]"),
    ],
)
def test_invalid_parameters_name_the_field(raw: bytes, field: str, message_part: str) -> None:
    with pytest.raises(InputError) as info:
        DemoTradingEvaluator().check(raw, {})
    assert info.value.field == field
    assert message_part in info.value.message
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"strategy": "momentum", "lookback": 20, "threshold": NaN, "position_size": 0.5}',
         f"{FIELD}.threshold"),
        (b'{"strategy": "momentum", "lookback": 20, "threshold": Infinity, "position_size": 0.5}',
         f"{FIELD}.threshold"),
        (b'{"strategy": "momentum", "lookback": 20, "threshold": 0, "position_size": NaN}',
         f"{FIELD}.position_size"),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_rejected(raw: bytes, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_params(raw)
    assert info.value.field == field


def test_error_messages_stay_short_for_huge_values() -> None:
    with pytest.raises(InputError) as info:
        parse_params(with_(strategy="x" * 1_000_000))
    assert len(info.value.message) < 200
    with pytest.raises(InputError) as info:
        parse_params(with_(lookback=10**4000))
    assert info.value.field == f"{FIELD}.lookback"
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    "args",
    [
        ("scalping", 20, 0.0, 1.0),
        ("momentum", 1, 0.0, 1.0),
        ("momentum", 201, 0.0, 1.0),
        ("momentum", 20.0, 0.0, 1.0),
        ("momentum", 20, -0.1, 1.0),
        ("momentum", 20, math.inf, 1.0),
        ("momentum", 20, math.nan, 1.0),
        ("momentum", 20, 0.0, 0.0),
        ("momentum", 20, 0.0, 1.5),
        ("momentum", 20, 0.0, 1),
    ],
)
def test_demo_params_cannot_be_built_invalid(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        DemoParams(*args)  # type: ignore[arg-type]


def test_integers_are_accepted_for_float_fields() -> None:
    parsed = parse_params(with_(threshold=0, position_size=1))
    assert parsed.threshold == 0.0
    assert parsed.position_size == 1.0
    assert type(parsed.threshold) is float
    assert type(parsed.position_size) is float


def test_boundaries_are_accepted() -> None:
    assert parse_params(with_(lookback=2)).lookback == 2
    assert parse_params(with_(lookback=200)).lookback == 200
    assert parse_params(with_(position_size=1.0)).position_size == 1.0
    assert parse_params(with_(position_size=5e-324)).position_size == 5e-324


def test_extra_keys_are_ignored() -> None:
    plain = backtest(parse_params(encode(VALID)))
    extra = backtest(parse_params(with_(seed=123, notes="hello", nested={"a": [1, 2]})))
    assert plain == extra


def test_leading_bom_or_whitespace_rules_follow_json() -> None:
    # Whitespace around the object is valid JSON; a BOM is not.
    assert parse_params(b"  \n" + encode(VALID) + b"\n").strategy == "momentum"
    with pytest.raises(InputError):
        parse_params(b"\xef\xbb\xbf" + encode(VALID))


# --------------------------------------------------------------------------- back-test


PINNED = {
    "momentum": Metrics(
        reward=-0.11730444441672383,
        risk=0.004039449825592925,
        complexity=9.3,
        sharpe_ratio=-0.9255105601728929,
        max_drawdown=0.16723871235796894,
    ),
    "mean_reversion": Metrics(
        reward=0.04043326023799354,
        risk=0.003919166170746817,
        complexity=9.15,
        sharpe_ratio=0.344686600786739,
        max_drawdown=0.15829132609388774,
    ),
    "breakout": Metrics(
        reward=0.12720114585271514,
        risk=0.004711833186474401,
        complexity=3.35,
        sharpe_ratio=0.8253733945015994,
        max_drawdown=0.07745323382318403,
    ),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_known_answer_metrics_bit_for_bit(strategy: str) -> None:
    assert backtest(DemoParams(strategy, 20, 0.01, 0.5)) == PINNED[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_evaluation_is_repeatable_and_independent_of_market_rebuild(strategy: str) -> None:
    params = DemoParams(strategy, 37, 0.005, 0.8)
    first = backtest(params)
    assert all(backtest(params) == first for _ in range(5))
    rebuilt = Market.from_prices(generate_prices(MARKET_SEED))
    assert backtest(params, rebuilt) == first


def test_strategies_give_different_metrics() -> None:
    results = {s: backtest(DemoParams(s, 20, 0.01, 0.5)) for s in STRATEGIES}
    assert len({m.reward for m in results.values()}) == 3
    assert len({m.sharpe_ratio for m in results.values()}) == 3


GRID = [
    DemoParams(s, lb, th, size)
    for s in STRATEGIES
    for lb in (2, 3, 7, 64, 128, 129, 200)
    for th in (0.0, 0.003, 0.05)
    for size in (5e-324, 0.3, 1.0)
]


@pytest.mark.parametrize("params", GRID, ids=repr)
def test_metrics_are_finite_and_in_range(params: DemoParams) -> None:
    m = backtest(params)
    for value in m.to_dict().values():
        assert math.isfinite(value)
    assert m.risk >= 0.0
    assert 0.0 <= m.max_drawdown < 1.0
    assert m.reward > -1.0
    changes = (m.complexity - 1.0 - params.lookback / 10.0) * 20.0
    assert 0 <= round(changes) <= STEPS
    assert abs(changes - round(changes)) < 1e-6


def test_a_strategy_that_never_trades_scores_neutral() -> None:
    m = backtest(DemoParams("momentum", 10, 1e6, 1.0))
    assert m == Metrics(reward=0.0, risk=0.0, complexity=2.0, sharpe_ratio=0.0, max_drawdown=0.0)


def test_position_size_scales_per_step_returns() -> None:
    # Flat steps earn 0 and open ones earn size * return, so risk scales exactly with the size
    # up to rounding, while the signals do not depend on the size at all.
    full = backtest(DemoParams("breakout", 20, 0.0, 1.0))
    half = backtest(DemoParams("breakout", 20, 0.0, 0.5))
    assert half.risk == pytest.approx(full.risk / 2, rel=1e-12)
    assert half.complexity == full.complexity
    assert signals(DemoParams("breakout", 20, 0.0, 1.0)) == signals(
        DemoParams("breakout", 20, 0.0, 0.5)
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("lookback", [2, 200])
def test_work_is_bounded_by_steps_whatever_the_lookback(strategy: str, lookback: int) -> None:
    # The bound the node relies on: one signal per decision step, STEPS of them.
    out = signals(DemoParams(strategy, lookback, 0.0, 1.0))
    assert len(out) == STEPS
    assert set(out) <= {-1, 0, 1}


def naive_signals(params: DemoParams, prices: tuple[float, ...]) -> list[int]:
    """The signal definitions written the slow, obvious way (O(STEPS * lookback))."""
    lb, up, down = params.lookback, 1.0 + params.threshold, 1.0 - params.threshold
    out: list[int] = []
    held = 0
    for t in range(WARMUP, WARMUP + STEPS):
        x = prices[t]
        if params.strategy == "momentum":
            r = x / prices[t - lb]
            out.append(1 if r > up else -1 if r < down else 0)
        elif params.strategy == "mean_reversion":
            r = x / (math.fsum(prices[t - lb + 1 : t + 1]) / lb)
            out.append(-1 if r > up else 1 if r < down else 0)
        else:
            window = prices[t - lb : t]
            if x > max(window) * up:
                held = 1
            elif x < min(window) * down:
                held = -1
            out.append(held)
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("lookback", [2, 3, 4, 5, 17, 64, 100, 127, 128, 129, 199, 200])
@pytest.mark.parametrize("threshold", [0.0, 0.01])
def test_rolling_windows_match_the_naive_definition(
    strategy: str, lookback: int, threshold: float
) -> None:
    params = DemoParams(strategy, lookback, threshold, 1.0)
    assert signals(params) == naive_signals(params, MARKET.prices)


@pytest.mark.parametrize(
    "params",
    [
        DemoParams("momentum", 5, 0.0, 1.0),
        DemoParams("mean_reversion", 30, 0.005, 0.4),
        DemoParams("breakout", 150, 0.002, 0.7),
    ],
    ids=repr,
)
def test_metrics_match_their_definitions(params: DemoParams) -> None:
    directions = signals(params)
    rets = [
        d * params.position_size * r for d, r in zip(directions, MARKET.step_returns, strict=True)
    ]
    equity = [1.0]
    for r in rets:
        equity.append(equity[-1] * (1.0 + r))
    peak, drawdown = equity[0], 0.0
    for e in equity:
        peak = max(peak, e)
        drawdown = max(drawdown, 1.0 - e / peak)
    mean = math.fsum(rets) / STEPS
    std = math.sqrt(math.fsum((r - mean) * (r - mean) for r in rets) / STEPS)
    changes = sum(1 for a, b in zip([0, *directions[:-1]], directions, strict=True) if a != b)

    m = backtest(params)
    assert m.reward == pytest.approx(equity[-1] - 1.0, rel=1e-12, abs=1e-15)
    assert m.risk == pytest.approx(std, rel=1e-9)
    assert m.sharpe_ratio == pytest.approx(mean / std * math.sqrt(252), rel=1e-9)
    assert m.max_drawdown == pytest.approx(drawdown, rel=1e-12, abs=1e-15)
    assert m.complexity == 1.0 + params.lookback / 10.0 + changes / 20.0
    assert changes > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_look_ahead(strategy: str) -> None:
    params = DemoParams(strategy, 10, 0.0, 1.0)
    base = signals(params)
    for step in (0, 100, 300, STEPS - 2):
        cut = WARMUP + step + 1  # prices from here on are the future of decision `step`
        tampered = MARKET.prices[:cut] + tuple(p * 1.5 for p in MARKET.prices[cut:])
        moved = signals(params, Market.from_prices(tampered))
        assert moved[: step + 1] == base[: step + 1]
        # The tampering is visible to later decisions, so the comparison above has teeth.
        assert backtest(params, Market.from_prices(tampered)) != backtest(params)


def test_each_strategy_can_make_money() -> None:
    best = {
        s: max(
            backtest(DemoParams(s, lb, th, 1.0)).reward
            for lb in (2, 5, 10, 20, 30, 50)
            for th in (0.0, 0.005, 0.01)
        )
        for s in STRATEGIES
    }
    assert all(reward > 0.1 for reward in best.values()), best


# --------------------------------------------------------------------------- the evaluator


def test_evaluator_contract() -> None:
    evaluator = get_evaluator("demo_trading")
    assert evaluator.name == "demo_trading"
    parsed = evaluator.check(encode(VALID), {"anything": 1})
    assert evaluator.evaluate(parsed) == PINNED["momentum"]


def test_evaluate_rejects_unparsed_input() -> None:
    with pytest.raises(TypeError):
        DemoTradingEvaluator().evaluate(encode(VALID))


def test_demo_params_pickle_round_trip_is_checked() -> None:
    """What an evaluation worker receives: the same parameters, validated again on load."""
    import pickle

    from ian.evaluators.demo_trading import DemoParams

    p = DemoParams(strategy="breakout", lookback=20, threshold=0.01, position_size=0.5)
    again = pickle.loads(pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == p and type(again) is DemoParams
    forged = pickle.dumps(p).replace(b"breakout", b"sideways")
    with pytest.raises(ValueError, match="invalid demo-trading parameters"):
        pickle.loads(forged)
