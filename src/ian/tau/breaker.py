"""A circuit breaker for calls to one remote service; pure logic, no I/O, injected clock.

States and transitions (``failures`` = threshold, ``reset_s`` = open period)::

    CLOSED    --`failures` consecutive failure()-->    OPEN
    OPEN      --reset_s elapsed (seen on any read)-->  HALF_OPEN
    HALF_OPEN --success()-->                           CLOSED
    HALF_OPEN --failure()-->                           OPEN (a new reset_s period)
    any       --reset()-->                             CLOSED

``allow()`` answers whether a call may be made now: always in CLOSED, never in OPEN, and in
HALF_OPEN exactly once (the probe) until that probe reports ``success()`` or ``failure()``.
A ``success()`` in CLOSED clears the count of consecutive failures.

Time comes only from the injected monotonic ``clock`` (seconds), so the logic is tested by
moving a fake clock rather than by sleeping. Not thread-safe: use it from one thread (the event
loop). Every state change calls ``on_transition(old, new)``; the caller decides what to log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """The three states; the value is the name shown in status, logs and metrics."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


TransitionCallback = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Counts consecutive failures and short-circuits calls while the remote side is down.

    ``failures`` >= 1 and ``reset_s`` > 0 are checked at construction (``ValueError``).
    """

    def __init__(
        self,
        *,
        failures: int = 5,
        reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        if not reset_s > 0:
            raise ValueError(f"reset_s must be > 0, got {reset_s}")
        self.failure_threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_out = False

    # -- reading ------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker whose period has elapsed becomes HALF_OPEN here."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_s:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success or reset (kept while OPEN, for status)."""
        return self._consecutive

    def retry_in(self) -> float:
        """Seconds until an OPEN breaker lets a probe through; 0.0 in any other state."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_s - self._clock())

    # -- calls --------------------------------------------------------------------------------
    def allow(self) -> bool:
        """May a call be made now? In HALF_OPEN this hands out the single probe.

        A caller that got ``True`` must report the outcome with :meth:`success` or
        :meth:`failure`; in HALF_OPEN no other call is allowed until it does.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def success(self) -> None:
        """The call succeeded: clear the failure count; a HALF_OPEN probe closes the breaker."""
        self._consecutive = 0
        self._probe_out = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        """The call failed: count it; open at the threshold, or re-open after a failed probe."""
        self._consecutive += 1
        self._probe_out = False
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._consecutive >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)
        # Already OPEN (a call allowed earlier reporting late): the open period is not extended.

    def reset(self) -> None:
        """Close the breaker now (operator action) and forget past failures."""
        self._consecutive = 0
        self._probe_out = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    # -- internals ----------------------------------------------------------------------------
    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._probe_out = False
        if self._on_transition is not None and old is not new:
            self._on_transition(old, new)
