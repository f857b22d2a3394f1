"""The `ian status --watch` view: snapshots in, text out, rendered on a fixed-width console."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from ian_ops.dashboard import CRIT, WARN, alerts, render
from ian_ops.snapshot import Metrics, Snapshot, baseline, parse_metrics, rates

NOW = 1_750_000_000.0
URL = "http://127.0.0.1:8000"


def status_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node_id": "ab" * 20,
        "version": "0.1.0",
        "role": "sequencer",
        "network_id": "ian-local",
        "height": 120,
        "head_hash": "00" * 32,
        "network_height": 120,
        "sync_lag": 0,
        "consensus_state": "SYNCED",
        "peers": {"connected": 4, "known": 6, "banned": 0},
        "uptime_seconds": 3725.0,
        "started_at": NOW - 3725,
        "contributions": {"received": 100, "accepted": 80, "rejected": 20},
        "goals": {
            "DEMO_TRADING_AGENT": {
                "goal_id": "DEMO_TRADING_AGENT",
                "name": "demo",
                "log_size": 80,
                "log_root": "ff" * 32,
                "leaderboard_size": 80,
                "leaderboard_root": "ee" * 32,
                "contributions": {"received": 100, "accepted": 80, "rejected": 20},
            }
        },
        "tau": {"enabled": True, "breaker_state": "CLOSED"},
        "cert_not_after": datetime.fromtimestamp(NOW + 200 * 86400, UTC).isoformat(),
        "last_backup_at": NOW - 3600,
    }
    doc.update(over)
    return doc


def exposition(
    received: int = 100,
    accepted: int = 80,
    rejected: int = 20,
    blocks: int = 30,
    messages: int = 500,
    violations: int = 0,
    banned: int = 0,
) -> str:
    return f"""# TYPE ian_contributions_received_total counter
ian_contributions_received_total {received}
# TYPE ian_contributions_processed_total counter
ian_contributions_processed_total {accepted}
# TYPE ian_contributions_rejected_total counter
ian_contributions_rejected_total{{reason="threshold"}} {rejected}
ian_contributions_rejected_total{{reason="duplicate"}} 0
# TYPE ian_blocks_applied_total counter
ian_blocks_applied_total {blocks}
# TYPE ian_messages_received_total counter
ian_messages_received_total{{type="block"}} {messages}
# TYPE ian_rate_limit_violations_total counter
ian_rate_limit_violations_total {violations}
# TYPE ian_invalid_messages_total counter
ian_invalid_messages_total 0
# TYPE ian_tau_commits_total counter
ian_tau_commits_total 7
# TYPE ian_peer_score_banned gauge
ian_peer_score_banned {banned}
# TYPE ian_log_size gauge
ian_log_size{{goal="DEMO_TRADING_AGENT"}} 80
"""


SEEDED = {
    "ready": True,
    "checks": {
        "store": {"ok": True, "detail": "height 120"},
        "peers": {"ok": True, "detail": "4 connected, need 3"},
    },
}


def snap(
    at: float = NOW,
    *,
    status: dict[str, Any] | None = None,
    metrics: str | None = None,
    readiness: dict[str, Any] | None = None,
) -> Snapshot:
    return Snapshot(
        taken_at=at,
        url=URL,
        reachable=True,
        status=status or status_doc(),
        metrics=parse_metrics(metrics if metrics is not None else exposition()),
        readiness=readiness if readiness is not None else SEEDED,
    )


def text_of(renderable: Any) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def test_healthy_node_renders_three_panels_and_no_alerts() -> None:
    out = text_of(render(snap(), None, NOW))
    for heading in ("node health", "throughput", "security", "goals", "alerts"):
        assert heading in out
    assert "1h 2m" in out  # uptime
    assert "120 / network 120" in out
    assert "SYNCED" in out
    assert "4 connected, 6 known" in out
    assert "DEMO_TRADING_AGENT" in out and "80" in out
    assert "CLOSED" in out
    assert "200 days left" in out
    assert "1h 0m ago" in out  # last backup
    assert "no alerts" in out
    assert alerts(snap(), None, NOW) == []
    # every line fits the console width
    assert max(len(line) for line in out.splitlines()) <= 120


def test_rates_come_from_successive_metric_samples() -> None:
    before = snap(NOW - 60)
    after = snap(NOW, metrics=exposition(received=160, accepted=110, rejected=50, blocks=42))
    r = rates(after, before)
    assert r is not None
    assert r.received == 1.0 and r.accepted == 0.5 and r.blocks == 0.2
    assert r.acceptance == 0.5
    out = text_of(render(after, before, NOW))
    assert "60.0/min  (100 total)" in out  # received per minute, status counters as totals
    assert "30.0/min" in out  # accepted
    assert "50% (now)" in out
    assert "12.0/min" in out  # blocks
    assert "7 total" in out  # Tau commits


def test_first_poll_shows_placeholders_and_all_time_acceptance() -> None:
    out = text_of(render(snap(), None, NOW))
    assert "…" in out
    assert "80% (all time)" in out


def test_counter_reset_after_a_restart_gives_no_rate() -> None:
    before = snap(NOW - 10, metrics=exposition(received=500))
    after = snap(NOW, metrics=exposition(received=3))
    r = rates(after, before)
    assert r is not None and r.received is None


def levels(s: Snapshot, previous: Snapshot | None = None) -> dict[str, str]:
    return {a.text: a.level for a in alerts(s, previous, NOW)}


def test_runbook_thresholds_fire() -> None:
    lagging = snap(status=status_doc(sync_lag=11, network_height=131, consensus_state="SYNCING"))
    assert any("sync lag 11" in t and lvl == WARN for t, lvl in levels(lagging).items())
    at_limit = snap(status=status_doc(sync_lag=10))
    assert not any("sync lag" in t for t in levels(at_limit))

    few = snap(status=status_doc(peers={"connected": 2, "known": 2, "banned": 0}))
    assert any("only 2 peers" in t for t in levels(few))
    # without seeds (no `peers` readiness check) a lone node is fine
    alone = snap(
        status=status_doc(peers={"connected": 0, "known": 0, "banned": 0}),
        readiness={"ready": True, "checks": {"store": {"ok": True, "detail": "x"}}},
    )
    assert not any("peers" in t for t in levels(alone))

    open_breaker = snap(status=status_doc(tau={"enabled": True, "breaker_state": "OPEN"}))
    assert any("OPEN" in t and lvl == CRIT for t, lvl in levels(open_breaker).items())

    diverged = snap(status=status_doc(consensus_state="DIVERGED"))
    assert any("DIVERGED" in t and lvl == CRIT for t, lvl in levels(diverged).items())


def test_certificate_and_backup_thresholds() -> None:
    def expiring(days: float) -> Snapshot:
        after = datetime.fromtimestamp(NOW + days * 86400, UTC).isoformat()
        return snap(status=status_doc(cert_not_after=after))

    assert [lvl for t, lvl in levels(expiring(20)).items() if "certificate" in t] == [WARN]
    assert [lvl for t, lvl in levels(expiring(6)).items() if "certificate" in t] == [CRIT]
    assert not any("certificate" in t for t in levels(expiring(22)))
    assert "6.0 days left" in text_of(render(expiring(6), None, NOW))

    stale = snap(status=status_doc(last_backup_at=NOW - 2 * 86400))
    assert any("older than a day" in t for t in levels(stale))
    never = snap(status=status_doc(last_backup_at=None))
    assert any("no backup" in t for t in levels(never))
    assert "never" in text_of(render(never, None, NOW))


def test_rejection_spike_and_rate_limit_attack() -> None:
    before = snap(NOW - 10)
    after = snap(NOW, metrics=exposition(rejected=20 + 150, violations=2000))
    found = levels(after, before)
    assert any("rejection spike: 15.0/s" in t and lvl == WARN for t, lvl in found.items())
    assert any("possible DoS" in t and lvl == CRIT for t, lvl in found.items())
    out = text_of(render(after, before, NOW))
    assert "SPIKE" in out and "ATTACK?" in out
    # critical alerts are listed first
    assert alerts(after, before, NOW)[0].level == CRIT


def test_unreachable_node_keeps_the_last_data_dimmed() -> None:
    good = snap(NOW - 30)
    down = Snapshot(
        taken_at=NOW,
        url=URL,
        reachable=False,
        error="unreachable: connection refused",
        unreachable_since=NOW - 25,
    )
    out = text_of(render(down, good, NOW))
    assert f"node unreachable since {clock(NOW - 25)}" in out
    assert "retrying" in out
    assert f"last data from {clock(NOW - 30)}" in out
    assert "node health" in out  # the old panels stay on screen
    # the view does not invent rates across an outage
    assert rates(down, good) is None


def test_unreachable_before_any_data() -> None:
    down = Snapshot(taken_at=NOW, url=URL, reachable=False, error="unreachable: refused")
    out = text_of(render(down, None, NOW))
    assert f"IAN node at {URL}" in out
    assert f"unreachable since {clock(NOW)}" in out
    assert "node health" not in out


def test_styles_mark_alerts_in_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR")  # set for every CLI test (conftest); colour is the point here
    buffer = io.StringIO()
    console = Console(width=120, file=buffer, color_system="standard", force_terminal=True)
    diverged_and_lagging = snap(status=status_doc(consensus_state="DIVERGED", sync_lag=12))
    console.print(render(diverged_and_lagging, None, NOW))
    lines = buffer.getvalue().splitlines()
    diverged = next(line for line in lines if "consensus" in line)
    assert "\x1b[1;31mDIVERGED" in diverged  # bold red
    lag = next(line for line in lines if "sync lag" in line)
    assert "\x1b[33m12" in lag  # yellow


def test_metrics_helpers() -> None:
    m = parse_metrics(exposition())
    assert m.total("ian_contributions_rejected_total") == 20
    assert m.get("ian_contributions_rejected_total", reason="threshold") == 20
    assert m.by_label("ian_log_size", "goal") == {"DEMO_TRADING_AGENT": 80}
    assert Metrics().total("nothing") is None


def down(at: float) -> Snapshot:
    return Snapshot(taken_at=at, url=URL, reachable=False, error="unreachable: refused")


def test_baseline_spans_a_poll_interval_however_often_events_poll() -> None:
    # polled every 2 s, plus right after events at +2.25 s and +2.5 s
    history = [snap(NOW + t) for t in (0.0, 2.0, 2.25, 2.5)]
    current = snap(NOW + 4.0)
    assert baseline(history, current, 2.0) is history[1]  # the newest one >= 2 s older
    assert baseline(history, snap(NOW + 4.1), 2.0) is history[2]  # 1.85 s: timing slack
    assert baseline(history[3:], current, 2.0) is history[3]  # none old enough: the oldest
    assert baseline([], current, 2.0) is None
    assert baseline([current], current, 2.0) is None  # never compared with itself
    # unreachable now: the last known state, however recent
    assert baseline([*history, down(NOW + 3)], down(NOW + 4), 2.0) is history[3]
    # rates over the baseline, not over the 0.25 s between two event polls
    quick = snap(NOW + 2.25, metrics=exposition(received=101))
    later = snap(NOW + 2.5, metrics=exposition(received=102))
    r = rates(later, baseline([snap(NOW), quick], later, 2.0))
    assert r is not None and r.seconds == 2.5 and r.received == 2 / 2.5


def test_watch_header_says_live_or_polling() -> None:
    from ian_ops.status_cmd import _frame, _History
    from ian_ops.watch import EventFeed

    feed = EventFeed(None, None, "no API token for the event stream")
    history = _History(30.0)
    current = snap()
    history.add(current)
    try:
        header = text_of(_frame(current, history, feed, 30.0)).splitlines()[0]
        assert header.startswith("IAN node abab") and header.endswith("polling every 30s")
        assert feed.label(0.5) == "polling every 0.5s" and feed.label(120) == "polling every 2m"
        feed.live = True
        header = text_of(_frame(current, history, feed, 30.0)).splitlines()[0]
        assert header.endswith("live")
        # before any data the dashboard has a one-line header too
        assert text_of(_frame(down(NOW), history, feed, 30.0)).splitlines()[0].endswith("live")
    finally:
        feed.close()
