"""One poll of a node's API for `ian status --watch` (and `ian doctor`): what the dashboard draws.

:func:`take` reads ``/api/v1/status``, ``/metrics`` (parsed with ``prometheus_client.parser``),
``/readyz?verbose``, ``/api/v1/peers`` and ``/api/v1/tau`` and returns a :class:`Snapshot`; it
never raises for an unreachable or half-broken node: the snapshot then says what failed.
:func:`rates` turns two successive snapshots into per-second rates (the runbook's ``rate(...)``);
:func:`baseline` picks which earlier snapshot to compare with when polls come at uneven times
(``ian status --watch`` also polls right after an event). Everything but :func:`take` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ian_ops.client import NodeClient

__all__ = ["Metrics", "Rates", "Snapshot", "baseline", "parse_metrics", "rates", "take"]

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metrics:
    """Prometheus samples by name and labels (``{name: {labels: value}}``)."""

    samples: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        """The sample ``name`` with exactly ``labels``; None when absent."""
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())))

    def total(self, name: str) -> float | None:
        """Sum of every sample called ``name`` (over all label values); None when absent."""
        values = self.samples.get(name)
        return None if not values else float(sum(values.values()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = dict(labels).get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
        return out


def parse_metrics(text: str) -> Metrics:
    """Parse Prometheus text exposition (what ``GET /metrics`` answers)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = float(sample.value)
    return Metrics(samples)


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw. ``reachable`` is False when ``/api/v1/status`` did not answer; then
    ``error`` says why and ``unreachable_since`` is when the outage began (carried over polls)."""

    taken_at: float
    url: str
    reachable: bool
    status: Mapping[str, Any] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Mapping[str, Any] | None = None
    peers: Mapping[str, Any] | None = None
    tau: Mapping[str, Any] | None = None
    goal: str | None = None
    error: str | None = None
    unreachable_since: float | None = None
    problems: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready form (``ian status --watch --json`` prints one per poll)."""
        return {
            "taken_at": self.taken_at,
            "url": self.url,
            "reachable": self.reachable,
            "error": self.error,
            "unreachable_since": self.unreachable_since,
            "status": self.status,
            "readiness": self.readiness,
            "tau": self.tau,
            "problems": list(self.problems),
        }

    @property
    def has_seeds(self) -> bool | None:
        """Whether the node has seeds configured, as its readiness checks reveal (the ``peers``
        check exists only with seeds); None when unknown."""
        checks = (self.readiness or {}).get("checks")
        if not isinstance(checks, Mapping):
            return None
        return "peers" in checks


def take(
    client: NodeClient,
    *,
    now: float,
    goal: str | None = None,
    previous: Snapshot | None = None,
) -> Snapshot:
    """Poll the node once. Only ``/api/v1/status`` is required; the other reads are best effort
    (their failures are listed in ``problems``)."""
    from ian.errors import IanError, NodeUnreachableError

    url = client.base_url
    try:
        status = client.get_json("/api/v1/status")
    except IanError as exc:
        since = now
        if previous is not None and not previous.reachable and previous.unreachable_since:
            since = previous.unreachable_since
        reason = "unreachable" if isinstance(exc, NodeUnreachableError) else "error"
        return Snapshot(
            taken_at=now,
            url=url,
            reachable=False,
            goal=goal,
            error=f"{reason}: {exc.message}",
            unreachable_since=since,
        )
    problems: list[str] = []

    def best_effort(what: str, read: Any) -> Any:
        try:
            return read()
        except IanError as exc:
            problems.append(f"{what}: {exc.message}")
            return None
        except ValueError as exc:  # malformed JSON or exposition
            problems.append(f"{what}: {exc}")
            return None

    metrics_text = best_effort("/metrics", lambda: client.request("GET", "/metrics").text)
    metrics = Metrics()
    if metrics_text is not None:
        metrics = best_effort("/metrics", lambda: parse_metrics(metrics_text)) or Metrics()
    readiness = _readiness(client)
    peers = best_effort("/api/v1/peers", lambda: client.get_json("/api/v1/peers"))
    tau = _tau(client)
    if goal is not None:
        goal_doc = best_effort(f"goal {goal}", lambda: client.get_json(f"/api/v1/status/{goal}"))
        if goal_doc is not None:
            status = {**status, "goals": {goal: goal_doc}}
    return Snapshot(
        taken_at=now,
        url=url,
        reachable=True,
        status=status,
        metrics=metrics,
        readiness=readiness,
        peers=peers,
        tau=tau,
        goal=goal,
        problems=tuple(problems),
    )


def _readiness(client: NodeClient) -> Mapping[str, Any] | None:
    """``/readyz?verbose`` answers 503 with the same JSON when not ready: read it either way."""
    import httpx

    try:
        response = client._http.get("/readyz", params={"verbose": "1"})
        doc = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return doc if isinstance(doc, Mapping) else None


def _tau(client: NodeClient) -> Mapping[str, Any] | None:
    from ian.errors import IanError

    try:
        return client.get_json("/api/v1/tau")
    except IanError:
        return None  # 503: no bridge on this node


# --------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """Per-second rates between two snapshots (None where unknown, e.g. on the first poll or
    after a counter reset when the node restarted)."""

    seconds: float
    received: float | None = None
    accepted: float | None = None
    rejected: float | None = None
    blocks: float | None = None
    tau_commits: float | None = None
    tau_failures: float | None = None
    messages: float | None = None
    rate_limit_violations: float | None = None
    invalid_messages: float | None = None

    @property
    def acceptance(self) -> float | None:
        """Accepted / received over the interval (None without new contributions)."""
        if self.received is None or self.accepted is None or self.received <= 0:
            return None
        return min(1.0, self.accepted / self.received)


# attribute -> metric sample name (summed over labels)
RATE_METRICS: dict[str, str] = {
    "received": "ian_contributions_received_total",
    "accepted": "ian_contributions_processed_total",
    "rejected": "ian_contributions_rejected_total",
    "blocks": "ian_blocks_applied_total",
    "tau_commits": "ian_tau_commits_total",
    "tau_failures": "ian_tau_commit_failures_total",
    "messages": "ian_messages_received_total",
    "rate_limit_violations": "ian_rate_limit_violations_total",
    "invalid_messages": "ian_invalid_messages_total",
}


def rates(current: Snapshot, previous: Snapshot | None) -> Rates | None:
    """Rates from ``previous`` to ``current`` (both must be reachable), else None."""
    if previous is None or not (current.reachable and previous.reachable):
        return None
    seconds = current.taken_at - previous.taken_at
    if seconds <= 0:
        return None
    values: dict[str, float | None] = {}
    for attr, name in RATE_METRICS.items():
        values[attr] = _rate(current.metrics.total(name), previous.metrics.total(name), seconds)
    return Rates(seconds=seconds, **values)


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None:
        # a labelled counter with no children yet has no samples at all: zero events
        return 0.0 if before is None else None
    if before is None:
        before = 0.0
    if now < before:  # counter reset: the node restarted between the polls
        return None
    return (now - before) / seconds


def baseline(history: Sequence[Snapshot], current: Snapshot, window: float) -> Snapshot | None:
    """What the dashboard compares ``current`` with (its ``previous``).

    ``history`` holds earlier snapshots, oldest first. For a reachable ``current``: the newest
    reachable snapshot taken at least ``window`` seconds (a poll interval, with 10% slack for
    timing jitter) before it, else the oldest reachable one — so rates span about one poll
    interval however often events made the watch poll in between. For an unreachable
    ``current``: the newest reachable snapshot (the last known state). None when there is none.
    """
    reachable = [s for s in history if s.reachable and s is not current]
    if not reachable:
        return None
    if not current.reachable:
        return reachable[-1]
    old_enough = [s for s in reachable if current.taken_at - s.taken_at >= window * 0.9]
    return old_enough[-1] if old_enough else reachable[0]
