"""The Tau bridge end to end over loopback TCP against the mock Tau node.

Most tests drive single passes with ``tick()`` and move the breaker's fake clock, so they are
deterministic; the ``run()`` tests await the mock server's counters instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from ian.metrics import NodeMetrics
from ian.tau import (
    GENESIS_COMMIT_HASH,
    IanLogCommit,
    MockTauServer,
    TauBridge,
    TauCommitLog,
    TickOutcome,
)

pytestmark = pytest.mark.anyio

Sample = Callable[[NodeMetrics, str], float]


def received(server: MockTauServer) -> list[IanLogCommit]:
    return [IanLogCommit.from_doc(doc) for doc in server.acknowledged]


def assert_valid_chain(commits: list[IanLogCommit], public_key: bytes) -> None:
    prev = GENESIS_COMMIT_HASH
    for commit in commits:
        assert commit.verify(public_key)
        assert commit.prev_commit_hash == prev
        prev = commit.commit_hash


async def open_breaker(bridge: TauBridge, server: MockTauServer) -> None:
    server.set_mode("fail")
    for _ in range(5):
        assert await bridge.tick() is TickOutcome.FAILED
    assert bridge.breaker_state == "OPEN"


# -- commits ------------------------------------------------------------------------------------


async def test_commits_arrive_signed_and_chained(
    harness: Any, mock_tau: MockTauServer, sample: Sample
) -> None:
    metrics = NodeMetrics()
    bridge = harness.bridge(mock_tau.endpoint, metrics=metrics)
    assert await bridge.tick() is TickOutcome.IDLE  # no goal has entries yet
    harness.publish("G", 0)
    assert await bridge.tick() is TickOutcome.IDLE
    harness.publish("G", 1)
    assert await bridge.tick() is TickOutcome.COMMITTED  # the first entry commits at once
    harness.publish("G", 2)
    harness.publish("H", 4)
    assert await bridge.tick() is TickOutcome.COMMITTED
    assert await bridge.tick() is TickOutcome.IDLE  # nothing new

    commits = received(mock_tau)
    assert [(c.goal_id, c.log_size) for c in commits] == [("G", 1), ("G", 2), ("H", 4)]
    assert_valid_chain([c for c in commits if c.goal_id == "G"], harness.identity.public_key)
    assert_valid_chain([c for c in commits if c.goal_id == "H"], harness.identity.public_key)
    roots, height = harness.published["G"]
    assert commits[1].log_root == roots.log_root.hex()
    assert commits[1].leaderboard_root == roots.leaderboard_root.hex()
    assert commits[1].height == height
    assert commits[1].timestamp_ms == int(harness.wall.now * 1000)

    assert sample(metrics, "ian_tau_commits_total") == 3
    assert sample(metrics, "ian_tau_commit_failures_total") == 0
    status = bridge.status()
    assert status["enabled"] and status["endpoint"] == mock_tau.endpoint
    assert status["breaker_state"] == "CLOSED"
    assert (status["pending"], status["commits_total"], status["failures_total"]) == (0, 3, 0)
    assert status["last_commit"]["commit_hash"] in {c.commit_hash for c in commits}
    assert status["goals"]["G"]["last_commit"]["log_size"] == 2
    assert bridge.last_commit("G")["commit_hash"] == commits[1].commit_hash
    assert bridge.last_commit("nope") is None


async def test_commit_triggers_entries_and_interval(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(mock_tau.endpoint, tau_commit_entries=3, tau_commit_interval_s=60.0)
    harness.publish("G", 1)
    assert await bridge.tick() is TickOutcome.COMMITTED
    harness.publish("G", 3)  # 2 new entries: below M, interval not over
    assert await bridge.tick() is TickOutcome.IDLE
    harness.publish("G", 4)  # 3 new entries since the last commit
    assert await bridge.tick() is TickOutcome.COMMITTED
    harness.publish("G", 5)
    harness.wall.advance(59.9)
    assert await bridge.tick() is TickOutcome.IDLE
    harness.wall.advance(0.1)  # T seconds since the last commit, with a new entry
    assert await bridge.tick() is TickOutcome.COMMITTED
    harness.wall.advance(3600)  # time alone, without new entries, commits nothing
    assert await bridge.tick() is TickOutcome.IDLE
    assert [c.log_size for c in received(mock_tau)] == [1, 4, 5]


async def test_not_the_committer_stays_idle(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(mock_tau.endpoint)
    committer = False
    bridge._is_committer = lambda: committer
    harness.publish("G", 5)
    assert await bridge.tick() is TickOutcome.IDLE
    assert mock_tau.connections == 0
    assert bridge.status()["committer"] is False
    committer = True
    assert await bridge.tick() is TickOutcome.COMMITTED


# -- the circuit breaker ------------------------------------------------------------------------


async def test_five_failures_open_the_breaker_and_the_sixth_is_short_circuited(
    harness: Any, mock_tau: MockTauServer, sample: Sample, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ian.tau")
    metrics = NodeMetrics()
    bridge = harness.bridge(mock_tau.endpoint, metrics=metrics)
    harness.publish("G", 1)
    await open_breaker(bridge, mock_tau)
    assert mock_tau.connections == 5
    assert len(set(mock_tau.lines)) == 1  # the same pending commit, byte for byte

    assert await bridge.tick() is TickOutcome.SHORT_CIRCUITED
    assert mock_tau.connections == 5  # no connection was made
    assert sample(metrics, "ian_tau_commit_failures_total") == 5
    status = bridge.status()
    assert status["breaker_state"] == "OPEN"
    assert status["pending"] == 1
    assert status["failures_total"] == 5
    assert status["retry_in_s"] == 30.0
    assert "refused the transaction" in status["last_error"]
    assert status["goals"]["G"]["pending"]["attempts"] == 5
    opened = [r.getMessage() for r in caplog.records if "Circuit breaker OPEN" in r.getMessage()]
    assert len(opened) == 1 and "5 consecutive Tau failures" in opened[0]

    # After the (fake) reset period: one probe; the Tau node is back, so the breaker closes.
    mock_tau.set_mode("ok")
    harness.mono.advance(30)
    assert bridge.breaker_state == "HALF_OPEN"
    assert await bridge.tick() is TickOutcome.COMMITTED
    assert bridge.breaker_state == "CLOSED"
    assert mock_tau.connections == 6
    assert bridge.status()["pending"] == 0
    assert len(mock_tau.acknowledged) == 1
    assert mock_tau.lines[-1] == mock_tau.lines[0]  # the commit that failed, unchanged
    assert sample(metrics, "ian_tau_commits_total") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Circuit breaker HALF_OPEN") for m in messages)
    assert any(m.startswith("Circuit breaker CLOSED") for m in messages)


async def test_failed_probe_reopens(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(mock_tau.endpoint)
    harness.publish("G", 1)
    await open_breaker(bridge, mock_tau)
    harness.mono.advance(30)
    assert await bridge.tick() is TickOutcome.FAILED  # the probe, still failing
    assert bridge.breaker_state == "OPEN"
    assert await bridge.tick() is TickOutcome.SHORT_CIRCUITED
    assert mock_tau.connections == 6


async def test_reset_breaker_closes_it_at_once(
    harness: Any, mock_tau: MockTauServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ian.tau")
    bridge = harness.bridge(mock_tau.endpoint)
    harness.publish("G", 1)
    await open_breaker(bridge, mock_tau)
    mock_tau.set_mode("ok")
    assert bridge.reset_breaker() == {"previous_state": "OPEN", "breaker_state": "CLOSED"}
    assert any("Circuit breaker reset" in r.getMessage() for r in caplog.records)
    assert bridge.status()["consecutive_failures"] == 0
    assert await bridge.tick() is TickOutcome.COMMITTED


async def test_breaker_settings_are_used(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(mock_tau.endpoint, breaker_failures=2, breaker_reset_s=5.0)
    harness.publish("G", 1)
    mock_tau.set_mode("fail")
    assert await bridge.tick() is TickOutcome.FAILED
    assert await bridge.tick() is TickOutcome.FAILED
    assert bridge.breaker_state == "OPEN"
    harness.mono.advance(5)
    assert bridge.breaker_state == "HALF_OPEN"


# -- restart ------------------------------------------------------------------------------------


async def test_restart_resends_pending_and_nothing_acknowledged(
    harness: Any, mock_tau: MockTauServer
) -> None:
    first = harness.bridge(mock_tau.endpoint)
    harness.publish("G", 1)
    harness.publish("H", 2)
    assert await first.tick() is TickOutcome.COMMITTED
    mock_tau.set_mode("fail")
    harness.publish("G", 2)
    assert await first.tick() is TickOutcome.FAILED
    failed_line = mock_tau.lines[-1]
    first.close()

    # A new process: new bridge, same store file. The roots have moved on meanwhile.
    mock_tau.set_mode("ok")
    harness.publish("G", 3)
    second = harness.bridge(mock_tau.endpoint)
    assert second.status()["pending"] == 1
    assert second.last_commit("H") is not None
    assert await second.tick() is TickOutcome.COMMITTED  # the pending commit, unchanged
    assert mock_tau.lines[-1] == failed_line
    assert await second.tick() is TickOutcome.COMMITTED  # then the new roots, chained on it
    assert await second.tick() is TickOutcome.IDLE
    second.close()

    commits = received(mock_tau)
    assert [(c.goal_id, c.log_size) for c in commits] == [("G", 1), ("H", 2), ("G", 2), ("G", 3)]
    assert len({c.commit_hash for c in commits}) == len(commits)  # nothing acknowledged resent
    assert_valid_chain([c for c in commits if c.goal_id == "G"], harness.identity.public_key)

    log = TauCommitLog(harness.db)
    try:
        chain = log.commits("G")
        assert [(c.seq, c.status, c.attempts) for c in chain] == [
            (1, "acknowledged", 1),
            (2, "acknowledged", 2),
            (3, "acknowledged", 1),
        ]
        assert chain[1].last_error is not None and "refused" in chain[1].last_error
    finally:
        log.close()


# -- the service loop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", "refused the transaction"),
        ("hang", "did not reply within 0.2s"),
        ("close", "closed the connection before completing its reply line"),
        ("long", "sent a reply line longer than 4096 bytes"),
    ],
)
async def test_run_survives_bad_replies(
    harness: Any, mock_tau: MockTauServer, mode: str, message: str
) -> None:
    bridge = harness.bridge(mock_tau.endpoint, tau_timeout_s=0.2, poll_s=0.05, retry_s=0.01)
    harness.publish("G", 1)
    mock_tau.set_mode(mode)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)
            await mock_tau.wait_until(lambda s: len(s.lines) >= 2)  # it failed, then retried
            mock_tau.set_mode("ok")
            await mock_tau.wait_until(lambda s: len(s.acknowledged) == 1)
            # tick() waits for the loop's pass in flight (it holds the same lock), then idles.
            assert await bridge.tick() is TickOutcome.IDLE
            tg.cancel_scope.cancel()
    status = bridge.status()
    assert status["failures_total"] >= 1
    assert message in status["last_error"]
    assert status["commits_total"] == 1
    assert status["pending"] == 0


async def test_run_wakes_on_notify(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(mock_tau.endpoint, poll_s=3600)  # only notify() can wake it
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)
            harness.publish("G", 1)
            bridge.notify()
            await mock_tau.wait_until(lambda s: len(s.acknowledged) == 1)
            harness.publish("G", 2)
            bridge.notify()
            await mock_tau.wait_until(lambda s: len(s.acknowledged) == 2)
            tg.cancel_scope.cancel()


async def test_reset_wakes_a_backing_off_bridge(harness: Any, mock_tau: MockTauServer) -> None:
    bridge = harness.bridge(
        mock_tau.endpoint, breaker_failures=1, poll_s=3600, retry_s=3600
    )  # neither a timer nor a block can wake it: only the reset
    harness.publish("G", 1)
    mock_tau.set_mode("fail")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)
            await mock_tau.wait_until(lambda s: len(s.lines) == 1)
            # Let the loop finish that failing pass (tick() shares its lock): breaker OPEN.
            assert await bridge.tick() is TickOutcome.SHORT_CIRCUITED
            mock_tau.set_mode("ok")
            bridge.notify()  # ignored while backing off after a failure
            bridge.reset_breaker()
            await mock_tau.wait_until(lambda s: len(s.acknowledged) == 1)
            tg.cancel_scope.cancel()
    assert len(mock_tau.lines) == 2


async def test_unreachable_endpoints_count_as_failures(harness: Any, closed_port: int) -> None:
    metrics = NodeMetrics()
    harness.publish("G", 1)
    refused = harness.bridge(f"tcp://127.0.0.1:{closed_port}", metrics=metrics)
    assert await refused.tick() is TickOutcome.FAILED
    assert refused.status()["last_error"] == (
        f"Tau node at tcp://127.0.0.1:{closed_port} refused the connection"
    )
    refused.close()
    nowhere = harness.bridge("tcp://tau-node.invalid:12345", metrics=metrics, tau_timeout_s=0.5)
    assert await nowhere.tick() is TickOutcome.FAILED
    error = nowhere.status()["last_error"]
    assert "cannot connect" in error or "did not accept a connection" in error
    assert metrics.registry.get_sample_value("ian_tau_commit_failures_total") == 2
    assert nowhere.status()["consecutive_failures"] == 1


async def test_without_endpoint_the_bridge_is_off(harness: Any) -> None:
    bridge = harness.bridge(None)
    harness.publish("G", 1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)  # returns right after reporting started
    assert await bridge.tick() is TickOutcome.IDLE
    status = bridge.status()
    assert status["enabled"] is False
    assert status["endpoint"] is None
    assert "IAN_TAU_ENDPOINT" in status["detail"]
    assert bridge.breaker_state == "CLOSED"
    assert not harness.db.exists()  # nothing opened
