"""Prometheus metrics from a node-owned registry (names in ARCHITECTURE §10).

Counters and histograms are incremented where things happen. Values that are state rather than
events (height, log sizes, peers, uptime) are read at scrape time from a snapshot callback, so
they can never go stale. No per-peer or per-contributor labels: cardinality stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.registry import Collector

CONSENSUS_STATES = ("ISOLATED", "SYNCING", "SYNCED", "DIVERGED", "FORKED")
#: ``ian_consensus_role``: a follower (learner), an authority that does not lead, the leader
#: (a lone sequencer is the leader of its one-authority chain)
CONSENSUS_ROLES = ("follower", "authority", "leader")
BREAKER_STATES = ("CLOSED", "OPEN", "HALF_OPEN")

# Rejection reasons are a closed set so the label stays bounded.
REJECTION_REASONS = (
    "threshold",
    "duplicate",
    "invalid",
    "malformed",
    "too_large",
    "unknown_goal",
    "rate_limited",
    "unauthorized",
    "unavailable",
    "internal",
)


@dataclass
class StateSnapshot:
    """What the state gauges show; filled by the node at scrape time."""

    started_at: float = field(default_factory=time.time)
    height: int = 0
    network_height: int = 0
    peer_count: int = 0
    banned_peers: int = 0
    consensus_state: str = "ISOLATED"
    consensus_role: str = "follower"
    term: int = 0
    commit_height: int = 0
    consensus_memory_bytes: int = 0
    leader_changes: int = 0
    elections: int = 0
    breaker_state: str = "CLOSED"
    log_sizes: dict[str, int] = field(default_factory=dict)
    cert_expiry: float | None = None
    last_backup: float | None = None


Family = GaugeMetricFamily | UnknownMetricFamily | CounterMetricFamily


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Family]:
        # Lets the registry learn the names without calling the snapshot (which may not be
        # ready while the node is still being built).
        return self._families(StateSnapshot(cert_expiry=0.0, last_backup=0.0))

    def collect(self) -> Iterator[Family]:
        return self._families(self._snapshot())

    def _families(self, s: StateSnapshot) -> Iterator[Family]:
        yield GaugeMetricFamily(
            "ian_uptime_seconds", "Seconds since the node started", value=time.time() - s.started_at
        )
        yield GaugeMetricFamily("ian_block_height", "Height of the local chain", value=s.height)
        yield GaugeMetricFamily(
            "ian_network_height", "Best height announced by peers", value=s.network_height
        )
        yield GaugeMetricFamily(
            "ian_sync_lag",
            "Blocks behind the network (network height - own height)",
            value=max(0, s.network_height - s.height),
        )
        # Untyped: promtool refuses a gauge whose name ends in _count, and the runbook's
        # alerts and dashboards need exactly this name.
        yield UnknownMetricFamily("ian_peer_count", "Connected peers", value=s.peer_count)
        yield GaugeMetricFamily(
            "ian_peer_score_banned", "Peers banned right now", value=s.banned_peers
        )
        consensus = GaugeMetricFamily(
            "ian_consensus_state",
            "Consensus state: 0 ISOLATED, 1 SYNCING, 2 SYNCED, 3 DIVERGED, 4 FORKED",
            value=CONSENSUS_STATES.index(s.consensus_state),
        )
        yield consensus
        yield GaugeMetricFamily(
            "ian_consensus_role",
            "Role: 0 follower, 1 authority (not leading), 2 leader",
            value=CONSENSUS_ROLES.index(s.consensus_role),
        )
        yield GaugeMetricFamily(
            "ian_consensus_term", "Current consensus term (0: one-authority chain)", value=s.term
        )
        yield GaugeMetricFamily(
            "ian_commit_height", "Highest committed consensus height", value=s.commit_height
        )
        yield GaugeMetricFamily(
            "ian_consensus_log_memory_bytes",
            "Bytes of consensus blocks held in memory (older ones are read from consensus.db)",
            value=s.consensus_memory_bytes,
        )
        yield CounterMetricFamily(
            "ian_leader_changes",
            "Times this node saw a different leader proved",
            value=s.leader_changes,
        )
        yield CounterMetricFamily(
            "ian_elections", "Elections this node started as a candidate", value=s.elections
        )
        yield GaugeMetricFamily(
            "ian_circuit_breaker_state",
            "Tau bridge circuit breaker: 0 CLOSED, 1 OPEN, 2 HALF_OPEN",
            value=BREAKER_STATES.index(s.breaker_state),
        )
        sizes = GaugeMetricFamily("ian_log_size", "Entries in a goal's log", labels=["goal"])
        for goal, size in sorted(s.log_sizes.items()):
            sizes.add_metric([goal], size)
        yield sizes
        if s.cert_expiry is not None:
            yield GaugeMetricFamily(
                "ian_tls_cert_expiry_timestamp_seconds",
                "Expiry of the P2P TLS certificate (Unix time)",
                value=s.cert_expiry,
            )
        if s.last_backup is not None:
            yield GaugeMetricFamily(
                "ian_backup_last_success_timestamp_seconds",
                "Time of the last successful backup (Unix time)",
                value=s.last_backup,
            )


class NodeMetrics:
    """The node's registry and its event metrics."""

    def __init__(self, snapshot: Callable[[], StateSnapshot] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.contributions_received = Counter(
            "ian_contributions_received", "Contributions submitted to this node", registry=r
        )
        self.contributions_processed = Counter(
            "ian_contributions_processed", "Contributions accepted into a log", registry=r
        )
        self.contributions_rejected = Counter(
            "ian_contributions_rejected",
            "Contributions rejected, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.contributions_rejected.labels(reason)
        self.rate_limit_violations = Counter(
            "ian_rate_limit_violations", "Requests or messages over a rate limit", registry=r
        )
        self.messages_received = Counter(
            "ian_messages_received", "P2P messages received, by type", ["type"], registry=r
        )
        self.invalid_messages = Counter(
            "ian_invalid_messages", "P2P messages that failed validation", registry=r
        )
        self.blocks_applied = Counter(
            "ian_blocks_applied", "Blocks written to the local chain", registry=r
        )
        self.fork_evidence = Counter(
            "ian_fork_evidence",
            "Fork evidence found: two blocks at one height, both validly signed",
            registry=r,
        )
        self.tau_commits = Counter("ian_tau_commits", "Commits acknowledged by Tau", registry=r)
        self.tau_commit_failures = Counter(
            "ian_tau_commit_failures", "Tau commits that failed", registry=r
        )
        self.contribute_latency = Histogram(
            "ian_contribute_latency_seconds",
            "Time from receiving a contribution to its durable answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.block_commit_latency = Histogram(
            "ian_block_commit_seconds",
            "Time to evaluate, apply and durably commit one block",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.block_entries = Histogram(
            "ian_block_entries",
            "Accepted contributions per block",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.http_request_latency = Histogram(
            "ian_http_request_duration_seconds",
            "HTTP API request latency",
            ["method", "route"],
            registry=r,
        )
        if snapshot is not None:
            r.register(_StateCollector(snapshot))

    def reject(self, reason: str) -> None:
        self.contributions_rejected.labels(
            reason if reason in REJECTION_REASONS else "invalid"
        ).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
