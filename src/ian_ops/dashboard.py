"""The `ian status --watch` dashboard: a pure function from snapshots to Rich renderables.

``render(snapshot, previous, now)`` draws the runbook's three dashboards (node health,
throughput, security) plus the alerts that fire, from :class:`ian_ops.snapshot.Snapshot` values.
``previous`` is the last *reachable* snapshot before ``snapshot``: rates come from the two, and
while the node is unreachable its data is shown dimmed under an "unreachable since" banner.
No I/O and no clock reads here: tests render into a fixed-width capture console.

Thresholds are the runbook's alert rules (Monitoring → Alert Rules) plus the certificate and
backup limits the toolkit adds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ian_ops.snapshot import Rates, Snapshot, rates

__all__ = ["Alert", "Thresholds", "alerts", "render"]


@dataclass(frozen=True)
class Thresholds:
    sync_lag: int = 10  # IANSyncLag: ian_sync_lag > 10
    min_peers: int = 3  # IANLowPeers: ian_peer_count < 3 (only when the node has seeds)
    rejected_per_s: float = 10.0  # IANHighRejectionRate: rate(rejected[5m]) > 10
    rate_limit_per_s: float = 100.0  # IANRateLimitViolations: rate(...[5m]) > 100 (critical)
    cert_warn_days: float = 21.0
    cert_crit_days: float = 7.0
    backup_max_age_s: float = 86400.0


DEFAULT = Thresholds()

WARN, CRIT = "warn", "crit"
_STYLE = {WARN: "yellow", CRIT: "bold red", "ok": "green"}


@dataclass(frozen=True)
class Alert:
    level: str  # "warn" or "crit"
    text: str


# --------------------------------------------------------------------------- derived values


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _age(seconds: float) -> str:
    s = int(max(0.0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s}s" if m else f"{s}s"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "…"
    if abs(value - round(value)) < 1e-9 and abs(value) >= 1:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def cert_days_left(snap: Snapshot, now: float) -> float | None:
    expiry = snap.metrics.get("ian_tls_cert_expiry_timestamp_seconds")
    if expiry is None and snap.status and snap.status.get("cert_not_after"):
        try:
            expiry = datetime.fromisoformat(str(snap.status["cert_not_after"])).timestamp()
        except ValueError:
            return None
    return None if expiry is None else (expiry - now) / 86400


def last_backup_at(snap: Snapshot) -> float | None:
    value = snap.status.get("last_backup_at") if snap.status else None
    if value is None:
        value = snap.metrics.get("ian_backup_last_success_timestamp_seconds")
    return float(value) if value else None


def min_peers(snap: Snapshot, default: int) -> int:
    """The node's configured min_peers, read from its readiness detail "N connected, need M"."""
    checks = (snap.readiness or {}).get("checks") or {}
    detail = str((checks.get("peers") or {}).get("detail", ""))
    _, _, need = detail.rpartition("need ")
    return int(need) if need.strip().isdigit() else default


def breaker_state(snap: Snapshot) -> str | None:
    """CLOSED / OPEN / HALF_OPEN, "off" without a Tau bridge, None when unknown."""
    tau = snap.tau or (snap.status or {}).get("tau")
    if isinstance(tau, Mapping):
        if not tau.get("enabled", True):
            return "off"
        return str(tau.get("breaker_state"))
    return None


def alerts(
    snap: Snapshot, previous: Snapshot | None, now: float, limits: Thresholds = DEFAULT
) -> list[Alert]:
    """The alerts that fire for ``snap`` (most severe first)."""
    out: list[Alert] = []
    if not snap.reachable:
        since = snap.unreachable_since or snap.taken_at
        out.append(Alert(CRIT, f"node unreachable since {_clock(since)} ({snap.error})"))
        return out
    st = snap.status or {}
    state = st.get("consensus_state")
    if state == "DIVERGED":
        out.append(Alert(CRIT, "consensus DIVERGED: dropping blocks the sequencer did not sign"))
    elif state == "FORKED":
        out.append(Alert(CRIT, "FORK EVIDENCE: applying stopped; see the runbook, do not resync"))
    lag = st.get("sync_lag", 0) or 0
    if lag > limits.sync_lag:
        out.append(Alert(WARN, f"sync lag {lag} blocks (> {limits.sync_lag})"))
    peers = (st.get("peers") or {}).get("connected", 0)
    need = min_peers(snap, limits.min_peers)
    if snap.has_seeds and peers < need:
        out.append(Alert(WARN, f"only {peers} peers connected (< {need})"))
    breaker = breaker_state(snap)
    if breaker == "OPEN":
        out.append(Alert(CRIT, "Tau circuit breaker OPEN: commits are failing"))
    elif breaker == "HALF_OPEN":
        out.append(Alert(WARN, "Tau circuit breaker HALF_OPEN: probing Tau"))
    days = cert_days_left(snap, now)
    if days is not None and days < limits.cert_crit_days:
        out.append(Alert(CRIT, f"TLS certificate expires in {days:.1f} days: ian certs rotate"))
    elif days is not None and days < limits.cert_warn_days:
        out.append(Alert(WARN, f"TLS certificate expires in {days:.0f} days: ian certs rotate"))
    backup = last_backup_at(snap)
    if backup is None:
        out.append(Alert(WARN, "no backup recorded: ian backup"))
    elif now - backup > limits.backup_max_age_s:
        out.append(Alert(WARN, f"last backup {_age(now - backup)} ago (older than a day)"))
    r = rates(snap, previous)
    if r is not None and r.rejected is not None and r.rejected > limits.rejected_per_s:
        out.append(Alert(WARN, f"rejection spike: {r.rejected:.1f}/s"))
    if (
        r is not None
        and r.rate_limit_violations is not None
        and r.rate_limit_violations > limits.rate_limit_per_s
    ):
        out.append(
            Alert(CRIT, f"rate-limit violations {r.rate_limit_violations:.0f}/s: possible DoS")
        )
    out.sort(key=lambda a: a.level != CRIT)
    return out


# --------------------------------------------------------------------------- view


def _kv(rows: list[tuple[str, Text | str]]) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _t(text: str, level: str | None = None) -> Text:
    return Text(text, style=_STYLE.get(level or "", ""))


def _leader(st: dict[str, Any]) -> str:
    """Leader id (short) and its term when there are elections."""
    leader = st.get("leader_id")
    term = st.get("term")
    text = f"{leader[:12]}…" if leader else "unknown"
    return text + (f" (term {term})" if term is not None else "")


def _health(snap: Snapshot, now: float, limits: Thresholds) -> Table:
    st = snap.status or {}
    lag = int(st.get("sync_lag", 0) or 0)
    state = str(st.get("consensus_state", "?"))
    has_seeds = bool(snap.has_seeds)
    state_level = {"SYNCED": "ok", "SYNCING": WARN, "DIVERGED": CRIT, "FORKED": CRIT}.get(
        state, WARN if has_seeds else None
    )
    peers = st.get("peers") or {}
    connected = int(peers.get("connected", 0))
    need = min_peers(snap, limits.min_peers)
    ready = snap.readiness
    if ready is None:
        ready_text = _t("?")
    elif ready.get("ready"):
        ready_text = _t("READY", "ok")
    else:
        failing = [k for k, v in (ready.get("checks") or {}).items() if not v.get("ok")]
        ready_text = _t("NOT READY: " + ", ".join(failing), WARN)
    rows: list[tuple[str, Text | str]] = [
        ("uptime", _age(float(st.get("uptime_seconds", 0.0)))),
        ("role", f"{st.get('role', '?')}  v{st.get('version', '?')}  leader {_leader(st)}"),
        ("height", f"{st.get('height', 0)} / network {st.get('network_height', 0)}"),
        ("sync lag", _t(str(lag), WARN if lag > limits.sync_lag else "ok")),
        ("consensus", _t(state, state_level)),
        (
            "peers",
            _t(
                f"{connected} connected, {peers.get('known', 0)} known",
                WARN if has_seeds and connected < need else None,
            ),
        ),
        ("ready", ready_text),
    ]
    return _kv(rows)


def _per_min(value: float | None) -> str:
    return "…" if value is None else f"{value * 60:.1f}/min"


def _throughput(snap: Snapshot, r: Rates | None, limits: Thresholds) -> Table:
    st = snap.status or {}
    c = st.get("contributions") or {}
    received, accepted = int(c.get("received", 0)), int(c.get("accepted", 0))
    if r is not None and r.acceptance is not None:
        acceptance = f"{r.acceptance:.0%} (now)"
    elif received:
        acceptance = f"{accepted / received:.0%} (all time)"
    else:
        acceptance = "-"
    spike = r is not None and r.rejected is not None and r.rejected > limits.rejected_per_s
    commits = snap.metrics.total("ian_tau_commits_total")
    failures = snap.metrics.total("ian_tau_commit_failures_total")
    rows: list[tuple[str, Text | str]] = [
        ("received", f"{_per_min(r and r.received)}  ({received} total)"),
        ("accepted", f"{_per_min(r and r.accepted)}  ({accepted} total)"),
        ("acceptance", acceptance),
        (
            "rejected",
            _t(
                f"{_per_min(r and r.rejected)}  ({int(c.get('rejected', 0))} total)"
                + ("  SPIKE" if spike else ""),
                WARN if spike else None,
            ),
        ),
        ("blocks", _per_min(r and r.blocks)),
        (
            "Tau commits",
            f"{_num(commits, 0) if commits is not None else '-'} total, "
            f"{_per_min(r and r.tau_commits)}" + (f", {failures:.0f} failed" if failures else ""),
        ),
        ("messages", "…" if r is None or r.messages is None else f"{r.messages:.1f}/s"),
    ]
    return _kv(rows)


def _security(snap: Snapshot, r: Rates | None, now: float, limits: Thresholds) -> Table:
    st = snap.status or {}
    m = snap.metrics
    violations = m.total("ian_rate_limit_violations_total")
    invalid = m.total("ian_invalid_messages_total")
    attack = (
        r is not None
        and r.rate_limit_violations is not None
        and r.rate_limit_violations > limits.rate_limit_per_s
    )

    def counter(total: float | None, rate: float | None) -> str:
        text = "-" if total is None else f"{total:.0f}"
        return text + ("" if rate is None else f"  ({rate:.1f}/s)")

    banned = m.get("ian_peer_score_banned")
    if banned is None:
        banned = float((st.get("peers") or {}).get("banned", 0))
    breaker = breaker_state(snap)
    breaker_level = {"CLOSED": "ok", "OPEN": CRIT, "HALF_OPEN": WARN}.get(breaker or "")
    days = cert_days_left(snap, now)
    if days is None:
        cert = _t("?")
    else:
        level = (
            CRIT if days < limits.cert_crit_days else WARN if days < limits.cert_warn_days else "ok"
        )
        cert = _t(f"{days:.1f} days left" if level == CRIT else f"{days:.0f} days left", level)
    backup_at = last_backup_at(snap)
    if backup_at is None:
        backup = _t("never", WARN)
    else:
        age = now - backup_at
        backup = _t(f"{_age(age)} ago", WARN if age > limits.backup_max_age_s else "ok")
    rows: list[tuple[str, Text | str]] = [
        (
            "rate limits",
            _t(
                counter(violations, r and r.rate_limit_violations)
                + ("  ATTACK?" if attack else ""),
                CRIT if attack else None,
            ),
        ),
        ("invalid msgs", counter(invalid, r and r.invalid_messages)),
        ("banned peers", _t(f"{banned:.0f}", WARN if banned else None)),
        ("breaker", _t(breaker or "?", breaker_level)),
        ("certificate", cert),
        ("last backup", backup),
    ]
    return _kv(rows)


def _goals(snap: Snapshot, r_prev: Snapshot | None) -> Table:
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("goal", "left"),
        ("log size", "right"),
        ("Δ log", "right"),
        ("leaderboard", "right"),
        ("accepted", "right"),
        ("rejected", "right"),
        ("log root", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    goals: Mapping[str, Any] = (snap.status or {}).get("goals") or {}
    before: Mapping[str, Any] = ((r_prev.status or {}).get("goals") or {}) if r_prev else {}
    for gid, g in sorted(goals.items()):
        size = int(g.get("log_size", 0))
        old = before.get(gid)
        delta = "…" if old is None else f"+{size - int(old.get('log_size', 0))}"
        c = g.get("contributions") or {}
        table.add_row(
            gid,
            str(size),
            delta,
            str(g.get("leaderboard_size", 0)),
            str(c.get("accepted", 0)),
            str(c.get("rejected", 0)),
            str(g.get("log_root", ""))[:16] + "…",
        )
    return table


def _alerts_panel(found: list[Alert]) -> Panel:
    if not found:
        body: RenderableType = Text("✓ no alerts", style="green")
    else:
        lines = Text()
        for i, a in enumerate(found):
            if i:
                lines.append("\n")
            mark = "✗ " if a.level == CRIT else "! "
            lines.append(mark + a.text, style=_STYLE[a.level])
        body = lines
    return Panel(body, title="alerts", title_align="left")


def render(
    snapshot: Snapshot,
    previous: Snapshot | None,
    now: float,
    limits: Thresholds = DEFAULT,
) -> RenderableType:
    """The whole dashboard for one refresh. ``previous`` is the last reachable snapshot."""
    shown = snapshot if snapshot.reachable else previous
    parts: list[RenderableType] = []
    if shown is not None and shown.status:
        st = shown.status
        header = Text()
        header.append("IAN ", style="bold")
        header.append(f"node {str(st.get('node_id', '?'))[:16]}… ", style="bold cyan")
        header.append(f"{st.get('network_id', '')}  {shown.url}  ")
        header.append(f"updated {_clock(shown.taken_at)}", style="dim")
    else:
        header = Text(f"IAN node at {snapshot.url}", style="bold")
    parts.append(header)

    if not snapshot.reachable:
        since = snapshot.unreachable_since or snapshot.taken_at
        banner = Text(
            f"✗ node unreachable since {_clock(since)} ({_age(now - since)}); retrying — "
            f"{snapshot.error}",
            style="bold red",
        )
        parts.append(banner)
        if shown is not None:
            parts.append(Text(f"last data from {_clock(shown.taken_at)}:", style="dim"))

    if shown is not None and shown.status:
        # rates need two reachable polls: when `snapshot` is the fresh one, previous is older
        r = rates(shown, previous) if shown is snapshot else None
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in range(3):
            grid.add_column(ratio=1)
        grid.add_row(
            Panel(_health(shown, now, limits), title="node health", title_align="left"),
            Panel(_throughput(shown, r, limits), title="throughput", title_align="left"),
            Panel(_security(shown, r, now, limits), title="security", title_align="left"),
        )
        goals = Panel(
            _goals(shown, previous if shown is snapshot else None),
            title="goals",
            title_align="left",
        )
        body: RenderableType = Group(grid, goals)
        if not snapshot.reachable:
            body = Group(*_dim(grid, goals))
        parts.append(body)
        if snapshot.reachable and snapshot.problems:
            parts.append(Text("partial data: " + "; ".join(snapshot.problems), style="yellow"))
    parts.append(_alerts_panel(alerts(snapshot, previous, now, limits)))
    parts.append(Text("q quit · Ctrl-C quit", style="dim"))
    return Group(*parts)


def _dim(*items: Table | Panel) -> list[RenderableType]:
    out: list[RenderableType] = []
    for item in items:
        if isinstance(item, Panel):
            item.style = "dim"
            item.border_style = "dim"
        else:
            item.style = "dim"
        out.append(item)
    return out
