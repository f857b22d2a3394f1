"""Helpers for the Tau bridge tests: a mock Tau node on loopback, clocks, roots and bridges.

``mock_tau`` runs a real :class:`MockTauServer` on a free loopback port for the test's
duration. ``make_bridge(endpoint, **settings)`` builds a :class:`TauBridge` on
``tmp_path/chain.sqlite`` whose published roots are the mutable ``published`` mapping and whose
breaker runs on the returned bridge's fake monotonic clock (``bridge_clock.advance``).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from ian.chain.blocks import GoalRoots
from ian.config import load_settings
from ian.identity import Identity
from ian.metrics import NodeMetrics
from ian.tau import MockTauServer, TauBridge


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def goal_roots(goal_id: str, size: int) -> GoalRoots:
    """Distinct, deterministic roots for a goal log of ``size`` entries."""
    return GoalRoots(
        log_size=size,
        log_root=hashlib.sha256(f"log {goal_id} {size}".encode()).digest(),
        leaderboard_size=min(size, 100),
        leaderboard_root=hashlib.sha256(f"lb {goal_id} {size}".encode()).digest(),
    )


@dataclass
class Harness:
    """Everything a bridge test needs; ``publish`` sets a goal's roots as the node would."""

    tmp_path: Path
    identity: Identity = field(default_factory=Identity.generate)
    published: dict[str, tuple[GoalRoots, int]] = field(default_factory=dict)
    wall: FakeClock = field(default_factory=lambda: FakeClock(1_700_000_000.0))
    mono: FakeClock = field(default_factory=FakeClock)
    bridges: list[TauBridge] = field(default_factory=list)
    height: int = 0

    @property
    def db(self) -> Path:
        return self.tmp_path / "chain.sqlite"

    def publish(self, goal_id: str, size: int) -> GoalRoots:
        self.height += 1
        roots = goal_roots(goal_id, size)
        self.published[goal_id] = (roots, self.height)
        return roots

    def bridge(
        self, endpoint: str | None, *, metrics: NodeMetrics | None = None, **settings: Any
    ) -> TauBridge:
        values: dict[str, Any] = {
            "data_dir": self.tmp_path,
            "tau_endpoint": endpoint,
            "tau_timeout_s": 0.5,
            "tau_commit_entries": 1,
            "tau_commit_interval_s": 60.0,
            "breaker_failures": 5,
            "breaker_reset_s": 30.0,
        }
        values.update(settings)
        poll_s = values.pop("poll_s", 1.0)
        retry_s = values.pop("retry_s", None)
        bridge = TauBridge(
            load_settings(env={}, overrides=values),
            self.identity,
            self.db,
            metrics,
            roots=lambda: dict(self.published),
            clock=self.wall,
            monotonic=self.mono,
            poll_s=poll_s,
            retry_s=retry_s,
        )
        self.bridges.append(bridge)
        return bridge


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    for bridge in h.bridges:
        bridge.close()


@pytest.fixture
async def mock_tau() -> AsyncIterator[MockTauServer]:
    server = MockTauServer()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, "127.0.0.1", 0)
        yield server
        tg.cancel_scope.cancel()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sample() -> Callable[[NodeMetrics, str], float]:
    """Read one sample (e.g. ``ian_tau_commits_total``) from a metrics registry."""

    def read(metrics: NodeMetrics, name: str) -> float:
        value = metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    return read
