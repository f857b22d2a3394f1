"""`ian status`: what an operator checks first, from the node's API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ian_ops import cli


def status(
    goal: Annotated[str | None, typer.Argument(help="Show one goal in detail.")] = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the node's health, height, logs and contribution counters.

    Example: ian status DEMO_TRADING_AGENT --json
    """
    from ian_ops.client import NodeClient

    url = cli.node_url(node_url)
    with NodeClient(url) as client:
        doc = client.get_json(f"/api/v1/status/{goal}" if goal else "/api/v1/status")
    if json_out:
        cli.print_json(doc)
        return
    if goal:
        _print_goal(doc)
    else:
        _print_node(doc)


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
