"""Contribution intake: everything between an HTTP request and the sequencer.

Stateless checks (goal exists, limits, base64, the evaluator's parameter check) and the rate
limits run on the event loop in microseconds; only then is the contribution queued. Each failure
is a :class:`~ian.errors.RequestError` naming the field, counted under a bounded reason label.
Duplicates are found by the sequencer, one store query per batch, and answered here as the same
kind of failure (:meth:`Intake.submit`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ian.chain.contributions import Contribution, decode_parameters, make_contribution
from ian.chain.state import GoalState, Outcome
from ian.errors import (
    AuthError,
    DuplicateError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestError,
    UnavailableError,
)
from ian.metrics import NodeMetrics
from ian.rate_limit import BucketTable


@dataclass
class GoalCounters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0


def rejection_label(exc: RequestError) -> str:
    """Map an error to the bounded ``reason`` label of ian_contributions_rejected_total."""
    if isinstance(exc, NotFoundError):
        return "unknown_goal"
    if isinstance(exc, PayloadTooLargeError):
        return "too_large"
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, AuthError):
        return "unauthorized"
    if isinstance(exc, DuplicateError):
        return "duplicate"
    if isinstance(exc, UnavailableError):
        return "unavailable"
    if exc.code == "malformed":
        return "malformed"
    return "invalid"


class Intake:
    def __init__(
        self,
        goals: dict[str, GoalState],
        submit: Callable[[Contribution], Awaitable[Outcome]],
        metrics: NodeMetrics,
        *,
        contributor_rate: float,
        contributor_burst: int,
        client_rate: float,
        client_burst: int,
        max_parameters_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.goals = goals
        self._submit = submit
        self.metrics = metrics
        self.by_contributor = BucketTable(contributor_rate, contributor_burst)
        self.by_client = BucketTable(client_rate, client_burst)
        self.max_parameters_bytes = max_parameters_bytes
        self.clock = clock
        self.counters: dict[str, GoalCounters] = {gid: GoalCounters() for gid in goals}
        self.total = GoalCounters()

    def check_client(self, address: str) -> None:
        """Per-client-address limit; called before the body is even parsed."""
        wait = self.by_client.take(address, self.clock())
        if wait:
            self.metrics.rate_limit_violations.inc()
            raise RateLimitedError(
                f"too many requests from {address}; retry in {wait:.1f}s", retry_after=wait
            )

    def prepare(
        self,
        *,
        goal_id: str,
        version: str,
        parameters: str,
        metadata: dict[str, Any],
        contributor_id: str,
        seed: int,
    ) -> Contribution:
        """Build and admit a contribution from API fields (parameters still base64)."""
        if goal_id not in self.goals:
            raise NotFoundError(f"unknown goal {goal_id!r}", field="goal_id")
        raw = decode_parameters(parameters, max_bytes=self.max_parameters_bytes)
        c = make_contribution(
            goal_id=goal_id,
            version=version,
            parameters=raw,
            metadata=metadata,
            contributor_id=contributor_id,
            seed=seed,
        )
        return self.admit(c)

    def admit(self, c: Contribution) -> Contribution:
        """The checks every contribution passes before it is queued, wherever it came from:
        goal, size, the evaluator's parameter check, the contributor's rate limit.

        Not duplicates: the sequencer finds them, one query per batch rather than one per
        request here (:func:`ian.ledger.sequencer.build_block`), and :meth:`submit` turns its
        answer into the :class:`~ian.errors.DuplicateError`."""
        goal = self.goals.get(c.goal_id)
        if goal is None:
            raise NotFoundError(f"unknown goal {c.goal_id!r}", field="goal_id")
        if len(c.parameters) > self.max_parameters_bytes:
            raise PayloadTooLargeError(
                f"agent_pack.parameters is larger than {self.max_parameters_bytes} bytes",
                field="agent_pack.parameters",
            )
        c.parsed = goal.evaluator.check(c.parameters, c.metadata)
        wait = self.by_contributor.take(c.contributor_id, self.clock())
        if wait:
            self.metrics.rate_limit_violations.inc()
            raise RateLimitedError(
                f"contributor {c.contributor_id!r} is over its rate limit; retry in {wait:.0f}s",
                field="contributor_id",
                retry_after=wait,
            )
        return c

    async def submit(self, c: Contribution) -> Outcome:
        return self.settle(c, await self._submit(c))

    def settle(self, c: Contribution, outcome: Outcome) -> Outcome:
        """Count ``c``'s ``outcome``; a duplicate found by the sequencer is a DuplicateError."""
        if outcome.rejection_type == "duplicate":
            raise DuplicateError(outcome.reason, field="agent_pack")
        counters = self.counters.setdefault(c.goal_id, GoalCounters())
        if outcome.accepted:
            self.metrics.contributions_processed.inc()
            counters.accepted += 1
            self.total.accepted += 1
        else:
            self.metrics.reject(outcome.rejection_type or "invalid")
            counters.rejected += 1
            self.total.rejected += 1
        return outcome

    def received(self, goal_id: str | None) -> None:
        self.metrics.contributions_received.inc()
        self.total.received += 1
        if goal_id in self.counters:
            self.counters[goal_id].received += 1

    def refused(self, goal_id: str | None, exc: RequestError) -> None:
        """Count a contribution refused before it reached the sequencer."""
        self._rejected(goal_id, rejection_label(exc))

    def failed(self, goal_id: str | None) -> None:
        """Count a contribution that an unexpected error stopped (answered 500)."""
        self._rejected(goal_id, "internal")

    def _rejected(self, goal_id: str | None, reason: str) -> None:
        self.metrics.reject(reason)
        self.total.rejected += 1
        if goal_id in self.counters:
            self.counters[goal_id].rejected += 1
