"""The Tau Net bridge: per goal, commit the published roots to Tau, through a circuit breaker.

One service task (:meth:`TauBridge.run`) does all of the bridge's network I/O and its store
writes (in a worker thread), so block production never waits on Tau. The node calls
:meth:`TauBridge.notify` after each block (cheap: sets an event); the task also wakes every
``poll_s`` seconds.

When a goal commits (``tau_commit_entries`` = M, ``tau_commit_interval_s`` = T):

* its first commit as soon as its log has an entry;
* then when its roots differ from the last commit's and either at least M entries were added
  since, or T seconds have passed since the last commit was built.

A goal has at most one pending commit; it is resent unchanged until Tau acknowledges it and
only then is the goal's next commit built (why: :mod:`ian.tau.commits`). Each pass commits goals
in goal-id order and stops at the first failure, so one outage costs one failure per pass; after
a failure the next pass waits ``retry_s`` (block notifications do not shorten that wait, an
operator's breaker reset does).

Every send goes through the :class:`~ian.tau.breaker.CircuitBreaker` (``breaker_failures``
consecutive failures → OPEN for ``breaker_reset_s`` → one HALF_OPEN probe → CLOSED on success).
A short-circuited pass opens no connection and is not counted as a failure. Breaker transitions
are logged on logger ``ian.tau`` as ``Circuit breaker <STATE>: ...``.

Metrics: ``tau_commits`` is incremented per acknowledged commit, ``tau_commit_failures`` per
failed send; :attr:`TauBridge.breaker_state` feeds ``ian_circuit_breaker_state``.

Without ``tau_endpoint`` the bridge is off: it opens nothing, :meth:`run` returns right after
reporting started, and :meth:`status` says ``{"enabled": false, ...}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ian.chain.blocks import GoalRoots
from ian.config import PeerAddress, Settings, parse_peer_address
from ian.events import Publish
from ian.identity import Identity
from ian.metrics import NodeMetrics
from ian.tau.breaker import BreakerState, CircuitBreaker
from ian.tau.commits import (
    GENESIS_COMMIT_HASH,
    StoredCommit,
    TauCommitLog,
    build_commit,
)
from ian.tau.protocol import TauError, send_tx

__all__ = ["RootsSource", "TauBridge", "TickOutcome"]

log = logging.getLogger("ian.tau")

RootsSource = Callable[[], dict[str, tuple[GoalRoots, int]]]
"""goal_id -> (latest published roots, chain height at which they were published)."""


class TickOutcome(StrEnum):
    """What one pass of :meth:`TauBridge.tick` did (the last thing that happened)."""

    IDLE = "idle"  # nothing due, bridge off, or not the committer
    COMMITTED = "committed"  # every due commit was acknowledged
    FAILED = "failed"  # a send failed (counted); the pass stopped there
    SHORT_CIRCUITED = "short_circuited"  # the breaker refused the call; no connection made


class TauBridge:
    """Commits per-goal log and leaderboard roots to a Tau node; see the module docstring.

    ``store_path`` is the node's store file (``chain.sqlite``); the bridge keeps its commits in
    its own table there (opened only when an endpoint is configured). ``roots`` must be cheap
    and return the latest *published* roots (never mid-block). ``is_committer`` says whether
    this node commits at all (the sequencer or a configured committer). ``clock`` is wall time
    (commit timestamps, commit interval); ``monotonic`` drives the breaker. ``poll_s`` is the
    idle wake-up period and ``retry_s`` the pause after a failed send (default ``poll_s``).
    """

    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        store_path: Path,
        metrics: NodeMetrics | None = None,
        *,
        roots: RootsSource,
        is_committer: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        poll_s: float = 1.0,
        retry_s: float | None = None,
        publish: Publish | None = None,  # ``tau`` events (ian.events)
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._metrics = metrics if metrics is not None else NodeMetrics()
        self._roots = roots
        self._is_committer = is_committer
        self._clock = clock
        self._poll_s = poll_s
        self._retry_s = poll_s if retry_s is None else retry_s
        self._publish = publish
        self.endpoint: PeerAddress | None = (
            parse_peer_address(settings.tau_endpoint) if settings.tau_endpoint else None
        )
        self.breaker = CircuitBreaker(
            failures=settings.breaker_failures,
            reset_s=settings.breaker_reset_s,
            clock=monotonic,
            on_transition=self._on_transition,
        )
        self.commits_total = 0
        self.failures_total = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._wake = anyio.Event()
        self._kicked = False
        self._tick_lock = anyio.Lock()
        self._closed = False
        self._log: TauCommitLog | None = None
        self._heads: dict[str, StoredCommit] = {}
        self._acked: dict[str, StoredCommit] = {}
        if self.endpoint is not None:
            self._log = TauCommitLog(store_path)
            self._heads = self._log.heads()
            self._acked = self._log.acknowledged_heads()

    # -- what the node reads and calls --------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True when a Tau endpoint is configured."""
        return self.endpoint is not None

    @property
    def breaker_state(self) -> str:
        """``CLOSED``, ``OPEN`` or ``HALF_OPEN`` (for ``StateSnapshot.breaker_state``)."""
        return str(self.breaker.state)

    def notify(self) -> None:
        """New roots were published: wake the bridge. Cheap; call from the event loop thread."""
        self._wake.set()

    def reset_breaker(self) -> dict[str, str]:
        """Close the breaker now (operator action) and retry pending commits promptly.

        Returns ``{"previous_state", "breaker_state"}``.
        """
        previous = self.breaker_state
        self.breaker.reset()
        log.info("Circuit breaker reset by an operator (was %s)", previous)
        self._kicked = True
        self._wake.set()
        return {"previous_state": previous, "breaker_state": self.breaker_state}

    def last_commit(self, goal_id: str) -> dict[str, Any] | None:
        """The goal's latest acknowledged commit as a JSON-safe summary (for node_state.json)."""
        acked = self._acked.get(goal_id)
        return acked.summary() if acked is not None else None

    def status(self) -> dict[str, Any]:
        """The bridge's state as JSON-safe data (``GET /api/v1/tau``); no I/O.

        ``last_commit`` is the most recently acknowledged commit of any goal; ``pending`` counts
        commits built but not yet acknowledged; ``commits_total``/``failures_total`` count since
        this process started (like the Prometheus counters); ``goals`` holds, per goal, the last
        acknowledged and the pending commit.
        """
        if not self.enabled:
            return {
                "enabled": False,
                "endpoint": None,
                "detail": "tau_endpoint is not set (IAN_TAU_ENDPOINT): the Tau bridge is off",
                "committer": False,
                "breaker_state": self.breaker_state,
                "consecutive_failures": 0,
                "retry_in_s": 0.0,
                "last_commit": None,
                "pending": 0,
                "last_error": None,
                "last_error_at": None,
                "commits_total": 0,
                "failures_total": 0,
                "goals": {},
            }
        latest = max(self._acked.values(), key=lambda c: c.acked_at or 0.0, default=None)
        pending = {g: c for g, c in self._heads.items() if c.status == "pending"}
        goals: dict[str, Any] = {}
        for goal_id in sorted({*self._heads, *self._acked}):
            acked = self._acked.get(goal_id)
            waiting = pending.get(goal_id)
            goals[goal_id] = {
                "last_commit": acked.summary() if acked else None,
                "pending": (
                    {**waiting.summary(), "last_error": waiting.last_error} if waiting else None
                ),
            }
        return {
            "enabled": True,
            "endpoint": str(self.endpoint),
            "detail": None,
            "committer": bool(self._is_committer()),
            "breaker_state": self.breaker_state,
            "consecutive_failures": self.breaker.consecutive_failures,
            "retry_in_s": round(self.breaker.retry_in(), 3),
            "last_commit": latest.summary() if latest else None,
            "pending": len(pending),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "commits_total": self.commits_total,
            "failures_total": self.failures_total,
            "goals": goals,
        }

    # -- the service --------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit until cancelled. Reports started at once; closes the commit log on exit.

        Never raises for Tau or store trouble: failures are counted, logged and retried.
        """
        if not self.enabled:
            log.info("Tau bridge off: tau_endpoint is not set")
            task_status.started()
            return
        waiting = sum(1 for c in self._heads.values() if c.status == "pending")
        log.info(
            "Tau bridge committing to %s (%d pending from before); circuit breaker %s",
            self.endpoint,
            waiting,
            self.breaker_state,
        )
        task_status.started()
        try:
            while True:
                try:
                    outcome = await self.tick()
                except Exception:
                    log.exception("Tau bridge pass failed; retrying in %gs", self._retry_s)
                    outcome = TickOutcome.FAILED
                await self._pause(outcome)
        finally:
            self.close()

    async def tick(self) -> TickOutcome:
        """One pass over the goals: send each goal's pending or newly due commit.

        Stops at the first failed or short-circuited send. Store writes run in a worker thread.
        Raises :class:`~ian.errors.StoreError` if the commit log cannot be written.
        """
        async with self._tick_lock:
            if self._log is None or self._closed or not self._is_committer():
                return TickOutcome.IDLE
            outcome = TickOutcome.IDLE
            published = self._roots()
            for goal_id in sorted(published):
                roots, height = published[goal_id]
                head = self._heads.get(goal_id)
                if head is None or head.status == "acknowledged":
                    if not self._due(head, roots):
                        continue
                    head = await self._build(goal_id, roots, height, head)
                if not self.breaker.allow():
                    log.debug("Tau commit of %s short-circuited: breaker open", goal_id)
                    return TickOutcome.SHORT_CIRCUITED
                if not await self._send(head):
                    return TickOutcome.FAILED
                outcome = TickOutcome.COMMITTED
            return outcome

    def close(self) -> None:
        """Close the commit log (idempotent); :meth:`status` keeps working from memory."""
        self._closed = True
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- internals ----------------------------------------------------------------------------
    def _due(self, head: StoredCommit | None, roots: GoalRoots) -> bool:
        if head is None:
            return roots.log_size > 0
        last = head.commit
        if (roots.log_size, roots.log_root.hex(), roots.leaderboard_root.hex()) == (
            last.log_size,
            last.log_root,
            last.leaderboard_root,
        ):
            return False
        if roots.log_size - last.log_size >= self._settings.tau_commit_entries:
            return True
        return self._clock() - head.created_at >= self._settings.tau_commit_interval_s

    async def _build(
        self, goal_id: str, roots: GoalRoots, height: int, head: StoredCommit | None
    ) -> StoredCommit:
        now = self._clock()
        commit = build_commit(
            self._identity,
            goal_id=goal_id,
            roots=roots,
            height=height,
            prev_commit_hash=head.commit_hash if head else GENESIS_COMMIT_HASH,
            timestamp_ms=int(now * 1000),
        )
        stored = await self._in_thread(lambda log_: log_.append(commit, now=now))
        self._heads[goal_id] = stored
        return stored

    async def _send(self, stored: StoredCommit) -> bool:
        """Send one pending commit (the breaker allowed it); record and report the outcome."""
        assert self.endpoint is not None
        goal_id, seq = stored.goal_id, stored.seq
        try:
            reply = await send_tx(
                self.endpoint, stored.commit.to_doc(), timeout_s=self._settings.tau_timeout_s
            )
        except Exception as exc:
            if isinstance(exc, TauError):
                message = exc.message
            else:
                log.exception("unexpected error sending a Tau commit")
                message = f"unexpected error: {type(exc).__name__}: {exc}"
            self.failures_total += 1
            self._metrics.tau_commit_failures.inc()
            self.last_error, self.last_error_at = message, self._clock()
            log.warning(
                "Tau commit %s #%d (log size %d) failed: %s",
                goal_id,
                seq,
                stored.commit.log_size,
                message,
            )
            self._emit(
                "commit_failed",
                {
                    "goal_id": goal_id,
                    "seq": seq,
                    "log_size": stored.commit.log_size,
                    "height": stored.commit.height,
                    "error": message,
                },
            )
            self.breaker.failure()
            self._heads[goal_id] = await self._in_thread(
                lambda log_: log_.record_failure(goal_id, seq, message)
            )
            return False
        self.breaker.success()
        now = self._clock()
        acked = await self._in_thread(lambda log_: log_.acknowledge(goal_id, seq, reply, now=now))
        self._heads[goal_id] = self._acked[goal_id] = acked
        self.commits_total += 1
        self._metrics.tau_commits.inc()
        summary = acked.summary()
        self._emit(
            "commit",
            {k: summary[k] for k in ("goal_id", "seq", "log_size", "height", "commit_hash")},
        )
        log.info(
            "Tau commit %s #%d acknowledged: log size %d, hash %s, reply %r",
            goal_id,
            seq,
            acked.commit.log_size,
            acked.commit_hash,
            reply,
        )
        return True

    async def _in_thread(self, fn: Callable[[TauCommitLog], StoredCommit]) -> StoredCommit:
        commit_log = self._log
        if commit_log is None:
            raise TauError("the Tau bridge is closed")
        return await anyio.to_thread.run_sync(fn, commit_log)

    async def _pause(self, outcome: TickOutcome) -> None:
        """Wait for the next pass: ``poll_s`` or a notify; after a failure ``retry_s``, cut
        short only by an operator's breaker reset."""
        timeout = self._retry_s if outcome is TickOutcome.FAILED else self._poll_s
        with anyio.move_on_after(timeout):
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if outcome is not TickOutcome.FAILED or self._kicked:
                    break
        self._kicked = False

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        if self._publish is not None:
            self._publish("tau", type_, data)

    def _on_transition(self, old: BreakerState, new: BreakerState) -> None:
        self._emit(
            "breaker",
            {
                "state": str(new),
                "previous": str(old),
                "consecutive_failures": self.breaker.consecutive_failures,
                "last_error": self.last_error,
            },
        )
        if new is BreakerState.OPEN:
            log.warning(
                "Circuit breaker OPEN: %s after %d consecutive Tau failures (last: %s); "
                "commits paused for %gs",
                "probe failed" if old is BreakerState.HALF_OPEN else "opened",
                self.breaker.consecutive_failures,
                self.last_error,
                self.breaker.reset_s,
            )
        elif new is BreakerState.HALF_OPEN:
            log.info("Circuit breaker HALF_OPEN: the next commit probes the Tau node")
        else:
            log.info("Circuit breaker CLOSED: Tau commits flow again (was %s)", old)
