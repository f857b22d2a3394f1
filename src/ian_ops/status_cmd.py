"""`ian status`: what an operator checks first, from the node's API — once, or as a live
dashboard (``--watch``) that polls the API every ``--interval`` and survives node restarts."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from rich.console import Console

    from ian_ops.client import NodeClient
    from ian_ops.snapshot import Snapshot


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
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the node's health, height, logs and contribution counters.

    With --watch: a live dashboard of the runbook's node health, throughput and security
    panels with its alert thresholds highlighted; it keeps retrying while the node is down.
    With --watch --json: one JSON object per poll (NDJSON).

    Example: ian status --watch --interval 5s
    """
    url = cli.node_url(node_url)
    if watch:
        seconds = _interval(interval)
        if json_out:
            _watch_json(url, goal, seconds)
        else:
            _watch(url, goal, seconds)
        return

    from ian_ops.client import NodeClient

    with NodeClient(url) as client:
        doc = client.get_json(f"/api/v1/status/{goal}" if goal else "/api/v1/status")
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


def _client(url: str, interval: float) -> NodeClient:
    from ian_ops.client import NodeClient

    # A poll must not outlast the interval by much, or a hung node freezes the screen.
    return NodeClient(url, timeout=max(0.5, min(interval, 3.0)))


def _poll(client: NodeClient, goal: str | None, last: Snapshot | None) -> Snapshot:
    from ian_ops import snapshot

    return snapshot.take(client, now=time.time(), goal=goal, previous=last)


def _watch_json(url: str, goal: str | None, interval: float) -> None:
    """NDJSON: one snapshot per line until Ctrl-C (or the reader goes away)."""
    import json

    last = None
    with _client(url, interval) as client:
        try:
            while True:
                last = _poll(client, goal, last)
                sys.stdout.write(json.dumps(last.to_doc(), sort_keys=True, default=str) + "\n")
                sys.stdout.flush()
                time.sleep(interval)
        except (KeyboardInterrupt, BrokenPipeError):
            return


class _Keys:
    """Single key presses from stdin in cbreak mode (no echo, no line buffering) while active;
    inert when stdin is not a terminal. Restores the terminal settings on exit."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> _Keys:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if not sys.stdin.isatty():
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None

    def wait(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds; return the keys pressed ('' when none)."""
        if self.fd is None:
            time.sleep(timeout)
            return ""
        import os
        import select

        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return ""
        data = os.read(self.fd, 64)
        return data.decode("utf-8", "replace") if data else "q"  # EOF on the tty: quit


def _watch(url: str, goal: str | None, interval: float) -> None:
    from rich.live import Live

    from ian_ops.dashboard import render

    console = cli.stdout()
    if not console.is_terminal:
        _watch_plain(console, url, goal, interval)
        return
    last = good = None
    live = Live(
        console=console,
        screen=True,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with _client(url, interval) as client, _Keys() as keys:
        try:
            last = _poll(client, goal, None)
            live.update(render(last, None, time.time()))
            live.start(refresh=True)
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    pressed = keys.wait(min(left, 1.0))
                    if "q" in pressed.lower():
                        return
                    # refresh "unreachable for ..." and ages about once a second
                    live.update(render(last, good, time.time()), refresh=True)
                if last.reachable:
                    good = last
                last = _poll(client, goal, last)
                live.update(render(last, good, time.time()), refresh=True)
        except KeyboardInterrupt:
            return
        finally:
            # Not `with Live(...)`: a Ctrl-C landing inside Live.__enter__ would skip __exit__
            # and leave the terminal on the alternate screen with the cursor hidden.
            live.stop()
            if console.is_alt_screen:
                console.set_alt_screen(False)
            console.show_cursor(True)


def _watch_plain(console: Console, url: str, goal: str | None, interval: float) -> None:
    """--watch without a terminal (piped, logged): one frame per poll, no screen control."""
    from ian_ops.dashboard import render

    last = good = None
    with _client(url, interval) as client:
        try:
            while True:
                if last is not None and last.reachable:
                    good = last
                last = _poll(client, goal, last)
                console.print(render(last, good, time.time()))
                console.print()
                time.sleep(interval)
        except (KeyboardInterrupt, BrokenPipeError):
            return


# --------------------------------------------------------------------------- one-shot


def _print_node(doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = cli.stdout()
    c = doc["contributions"]
    out.print(f"[bold]node[/] {doc['node_id']}  ({doc['role']}, v{doc['version']})")
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
