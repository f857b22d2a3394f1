"""The circuit breaker's pure logic, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from ian.tau.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def transitions() -> list[tuple[BreakerState, BreakerState]]:
    return []


@pytest.fixture
def breaker(clock: Clock, transitions: list) -> CircuitBreaker:
    return CircuitBreaker(
        failures=5,
        reset_s=30.0,
        clock=clock,
        on_transition=lambda old, new: transitions.append((old, new)),
    )


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.failure()


def test_starts_closed_and_allows(breaker: CircuitBreaker) -> None:
    assert breaker.state is CLOSED
    assert breaker.allow()
    assert breaker.retry_in() == 0.0


def test_opens_after_threshold_consecutive_failures(
    breaker: CircuitBreaker, transitions: list
) -> None:
    fail(breaker, 4)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 4
    fail(breaker, 1)
    assert breaker.state is OPEN
    assert transitions == [(CLOSED, OPEN)]
    assert not breaker.allow()
    assert breaker.retry_in() == 30.0


def test_a_success_clears_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    breaker.success()
    fail(breaker, 4)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 4


def test_half_opens_after_reset_period_with_exactly_one_probe(
    breaker: CircuitBreaker, clock: Clock, transitions: list
) -> None:
    fail(breaker, 5)
    clock.now += 29.9
    assert breaker.state is OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state is HALF_OPEN
    assert transitions[-1] == (OPEN, HALF_OPEN)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it is out
    assert breaker.state is HALF_OPEN


def test_successful_probe_closes(breaker: CircuitBreaker, clock: Clock, transitions) -> None:
    fail(breaker, 5)
    clock.now += 30
    assert breaker.allow()
    breaker.success()
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert breaker.allow() and breaker.allow()


def test_failed_probe_reopens_for_a_new_period(
    breaker: CircuitBreaker, clock: Clock, transitions
) -> None:
    fail(breaker, 5)
    clock.now += 31
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is OPEN
    assert transitions[-1] == (HALF_OPEN, OPEN)
    assert breaker.retry_in() == 30.0  # counted from the failed probe, not the first opening
    clock.now += 30
    assert breaker.state is HALF_OPEN


def test_reset_closes_from_any_state(breaker: CircuitBreaker, clock: Clock, transitions) -> None:
    fail(breaker, 5)
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert transitions[-1] == (OPEN, CLOSED)
    fail(breaker, 5)
    clock.now += 30
    assert breaker.allow()  # probe out
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.allow() and breaker.allow()
    count = len(transitions)
    breaker.reset()  # already closed: no transition reported
    assert len(transitions) == count


def test_late_failure_while_open_does_not_extend_the_period(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    fail(breaker, 5)
    clock.now += 20
    breaker.failure()  # a call allowed before the breaker opened, reporting late
    assert breaker.state is OPEN
    assert breaker.retry_in() == pytest.approx(10.0)


def test_threshold_of_one() -> None:
    b = CircuitBreaker(failures=1, reset_s=1.0, clock=lambda: 0.0)
    assert b.allow()
    b.failure()
    assert b.state is OPEN


@pytest.mark.parametrize(("failures", "reset_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense_parameters(failures: int, reset_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=failures, reset_s=reset_s)


def test_state_names_are_the_metric_names() -> None:
    from ian.metrics import BREAKER_STATES

    assert tuple(s.value for s in BreakerState) == BREAKER_STATES
