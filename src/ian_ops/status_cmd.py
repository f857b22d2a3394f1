"""`ian status`: what an operator checks first, from the node's API — once, or as a live
dashboard (``--watch``) that survives node restarts.

``--watch`` polls the API every ``--interval`` and, when the node's event stream (WebSocket on
``ws_port``, see ``ian events``) is reachable, also right after each block, peer, sync or Tau
event — at most every :data:`ian_ops.watch.DEBOUNCE_S` — so new blocks show up at once even
with a long interval. The stream URL and token are found as ``ian events`` finds them (``--ws-url``/
``IAN_WS_URL``, else the node URL's host and ``ws_port``; ``IAN_API_TOKEN``, else the data dir's
``api_token``). Without the stream (unreachable, refused, no token) it just polls; the header
says which: ``live`` or ``polling every Ns``. The loop, keyboard and terminal handling live in
:mod:`ian_ops.watch`; this module only renders.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli
from ian_ops.events_cmd import WsUrlOpt

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ian_ops.snapshot import Snapshot
    from ian_ops.watch import EventFeed


def status(
    goal: Annotated[str | None, typer.Argument(help="Show one goal in detail.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Full-screen live dashboard (health, throughput, security, alerts); q quits.",
        ),
    ] = False,
    interval: Annotated[
        str,
        typer.Option("--interval", "-i", help="Seconds between polls with --watch, e.g. 2s, 1m."),
    ] = "2s",
    node_url: cli.NodeUrlOpt = None,
    ws_url: WsUrlOpt = None,
    data_dir: cli.DataDirOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the node's health, height, logs and contribution counters.

    With --watch: a live dashboard of the runbook's node health, throughput and security
    panels with its alert thresholds highlighted; it keeps retrying while the node is down.
    It follows the node's event stream when it can (header "live": new blocks appear at once)
    and polls every --interval either way (header "polling every 2s" without the stream).
    With --watch --json: one JSON object per poll (NDJSON).

    Example: ian status --watch --interval 5s
    """
    from ian_ops.target import read_node_url

    url = read_node_url(node_url, data_dir)
    if watch:
        from ian_ops.watch import open_event_feed

        seconds = _interval(interval)
        feed = open_event_feed(url, ws_url, data_dir)
        try:
            _watch(url, goal, seconds, feed, json_out=json_out)
        finally:
            feed.close()
        return

    from ian_ops.client import get_json_once

    # one GET: http.client, not httpx (whose import alone costs more than the request)
    doc = get_json_once(url, f"/api/v1/status/{goal}" if goal else "/api/v1/status")
    if json_out:
        cli.print_json(doc)
        return
    if goal:
        _print_goal(doc)
    else:
        _print_node(doc)


# --------------------------------------------------------------------------- --watch


def _interval(text: str) -> float:
    """--interval in seconds; a bad value is a usage error (exit 2), found before any I/O."""
    from ian.errors import InputError
    from ian_ops.durations import parse_duration

    try:
        return parse_duration(text, option="--interval")
    except InputError as exc:
        cli.exit_with_error(exc.message, code=cli.EXIT_USAGE, fix=exc.fix)


def _watch(url: str, goal: str | None, interval: float, feed: EventFeed, *, json_out: bool) -> None:
    """Poll the node at ``url`` and show each snapshot the way the output wants it: NDJSON
    (``json_out``), the full-screen dashboard on a terminal, else one frame per poll."""
    import json

    from ian_ops import snapshot, watch
    from ian_ops.target import read_client

    history = _History(interval)
    last: Snapshot | None = None

    def poll() -> None:
        nonlocal last
        last = snapshot.take(client, now=time.time(), goal=goal, previous=last)
        history.add(last)

    def frame() -> RenderableType:
        assert last is not None
        return _frame(last, history, feed, interval)

    def line() -> str:
        assert last is not None
        doc = {**last.to_doc(), "feed": "live" if feed.live else "polling"}
        return json.dumps(doc, sort_keys=True, default=str)

    # A poll must not outlast the interval by much, or a hung node freezes the screen.
    with read_client(url, timeout=max(0.5, min(interval, 3.0))) as client:
        console = cli.stdout()
        if json_out:
            watch.follow_lines(interval, feed, poll, line)
        elif console.is_terminal:
            watch.follow_screen(console, interval, feed, poll, frame)
        else:
            watch.follow_plain(console, interval, feed, poll, frame)


class _History:
    """Recent reachable snapshots (oldest first), enough to find :func:`snapshot.baseline`."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._snaps: deque[Snapshot] = deque(maxlen=1024)

    def add(self, snap: Snapshot) -> None:
        if not snap.reachable:
            return
        self._snaps.append(snap)
        # drop what is older than the newest one that is already a full window old
        while len(self._snaps) > 2 and snap.taken_at - self._snaps[1].taken_at >= self.window:
            self._snaps.popleft()

    def previous(self, current: Snapshot) -> Snapshot | None:
        from ian_ops.snapshot import baseline

        return baseline(list(self._snaps), current, self.window)


def _frame(snap: Snapshot, history: _History, feed: EventFeed, interval: float) -> RenderableType:
    """The dashboard with the update mode ("live" / "polling every Ns") in its header."""
    from rich.console import Group
    from rich.text import Text

    from ian_ops.dashboard import render

    view = render(snap, history.previous(snap), time.time())
    tag = Text(feed.label(interval), style="bold green" if feed.live else "yellow")
    if isinstance(view, Group) and view.renderables and isinstance(view.renderables[0], Text):
        header = view.renderables[0].copy()
        header.append("  ")
        header.append_text(tag)
        view.renderables[0] = header
        return view
    return Group(tag, view)


# --------------------------------------------------------------------------- one-shot


def _print_node(doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = cli.stdout()
    c = doc["contributions"]
    out.print(f"[bold]node[/] {doc['node_id']}  ({doc['role']}, v{doc['version']})")
    if doc.get("chain_id"):
        term = f"  term {doc['term']}" if doc.get("term") is not None else ""
        out.print(
            f"chain {doc['chain_id'][:16]}…  leader {doc.get('leader_id') or 'unknown'}{term}",
            markup=False,
        )
    out.print(
        f"height {doc['height']}  network {doc['network_height']}  lag {doc['sync_lag']}  "
        f"{doc['consensus_state']}  peers {doc['peers']['connected']}  "
        f"uptime {_duration(doc['uptime_seconds'])}"
    )
    out.print(
        f"contributions: {c['received']} received, {c['accepted']} accepted, "
        f"{c['rejected']} rejected"
    )
    table = Table("goal", "log size", "log root", "leaderboard", "accepted", "rejected")
    for gid, g in sorted(doc["goals"].items()):
        table.add_row(
            gid,
            str(g["log_size"]),
            g["log_root"][:16] + "…",
            str(g["leaderboard_size"]),
            str(g["contributions"]["accepted"]),
            str(g["contributions"]["rejected"]),
        )
    out.print(table)


def _print_goal(g: dict[str, Any]) -> None:
    out = cli.stdout()
    out.print(f"[bold]{g['goal_id']}[/] {g['name']}")
    out.print(f"log size {g['log_size']}  root {g['log_root']}")
    out.print(f"leaderboard {g['leaderboard_size']}  root {g['leaderboard_root']}")
    leader = g.get("active_policy")
    if leader:
        out.print(
            f"leader: #{leader['log_index']} score {leader['score']:.6g} "
            f"by {leader['contributor_id']}"
        )
    c = g["contributions"]
    out.print(
        f"contributions: {c['received']} received, {c['accepted']} accepted, "
        f"{c['rejected']} rejected"
    )


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m{s}s"
