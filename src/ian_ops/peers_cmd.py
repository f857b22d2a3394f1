"""`ian peers ...`: inspect and manage the peer book (scores, bans, addresses) online or offline.

Where a command acts:

* **online** — when a node holds the data dir's ``node.lock`` (or the data dir is absent here and
  ``--node-url``/``IAN_NODE_URL`` names a node), through its HTTP API; admin calls carry the token
  from ``IAN_API_TOKEN`` or the data dir's ``api_token`` file. The URL is ``--node-url``, else
  ``IAN_NODE_URL``, else the configured API port on loopback.
* **offline** — otherwise, directly on ``peer_scores.json`` while holding ``node.lock``, so a
  node cannot start half-way through the change.

Read commands fall back to reading the file when the lock is held but the node does not answer.
Every command says on stderr which way it went (``online via URL`` / ``offline on FILE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ian_ops import cli
from ian_ops.durations import format_duration, parse_duration
from ian_ops.target import Target, admin_post, resolve_target

if TYPE_CHECKING:
    from ian.p2p.peer_book import PeerBook
    from ian_ops.client import NodeClient

app = typer.Typer(
    help="Inspect and manage peers: scores, bans by node id or IP/CIDR, pruning.",
    no_args_is_help=True,
)

T = TypeVar("T")

SortOpt = Annotated[
    str,
    typer.Option(
        "--sort", help="Order: score (highest first), violations (most first), last-seen."
    ),
]


# --------------------------------------------------------------------------- where to act


def _scores(place: Target) -> Path:
    return place.datadir.peer_scores_file


def _offline_write(place: Target, change: Callable[[PeerBook], T]) -> T:
    """Run ``change`` on the book under node.lock and save it atomically."""
    from ian.p2p.peer_book import PeerBook
    from ian.storage.lock import NodeLock

    with NodeLock(place.datadir.lock_file):
        book = PeerBook.load(_scores(place), ban_seconds=place.settings.ban_seconds)
        result = change(book)
        if book.dirty:
            book.save()
    return result


def _read(place: Target, online: Callable[[NodeClient], T], offline: Callable[[PeerBook], T]) -> T:
    """Online when the node answers, else from the file (written atomically: no lock needed)."""
    from ian.errors import NodeUnreachableError
    from ian.p2p.peer_book import PeerBook

    if place.online:
        try:
            with place.client(admin=False) as client:
                value = online(client)
            place.announce(_scores(place))
            return value
        except NodeUnreachableError:
            if not place.datadir.root.is_dir():
                raise
            cli.stderr().print(
                f"the node at {place.url} does not answer; reading the file instead",
                markup=False,
                soft_wrap=True,
            )
            place.online = False
    place.announce(_scores(place))
    return offline(PeerBook.load(_scores(place), ban_seconds=place.settings.ban_seconds))


def _require_online(place: Target, what: str) -> None:
    from ian.errors import NodeUnreachableError

    if not place.online:
        raise NodeUnreachableError(
            f"`ian peers {what}` needs a running node, and none holds {place.datadir.lock_file}",
            fix="start it with `ian node run`, or pass --node-url of a running node",
        )


def _node_id(text: str) -> str:
    from ian.errors import InputError

    value = text.strip().lower()
    if len(value) != 40 or any(c not in "0123456789abcdef" for c in value):
        raise InputError(
            f"invalid node id {text!r}", field="node_id", fix="a node id is 40 hex characters"
        )
    return value


# --------------------------------------------------------------------------- output helpers


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    return f"{format_duration(max(0.0, now - then))} ago"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _state(p: dict[str, Any]) -> str:
    if p.get("banned"):
        return "banned"
    if p.get("connected"):
        return "connected"
    return "trusted" if p.get("trusted") else ""


# --------------------------------------------------------------------------- read commands


@app.command("list")
def list_(
    sort: SortOpt = "score",
    top: Annotated[int, typer.Option("--top", min=0, help="Show the first N (0 = all).")] = 50,
    banned: Annotated[bool, typer.Option("--banned", help="Only peers banned now.")] = False,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """List known peers with score, violations, last seen and state.

    Example: ian peers list --sort violations --top 5
    """
    from ian.errors import InputError

    if sort not in ("score", "violations", "last-seen"):
        raise InputError(
            f"unknown sort {sort!r}", field="sort", fix="use score, violations or last-seen"
        )
    limit = top or None
    place = resolve_target(data_dir, node_url)

    def online(client: NodeClient) -> dict[str, Any]:
        params: dict[str, Any] = {"all": 1, "sort": sort}
        if limit is not None:
            params["limit"] = limit
        if banned:
            params["banned"] = 1
        return client.get_json("/api/v1/peers", params=params)

    def offline(book: PeerBook) -> dict[str, Any]:
        from ian.api.models import PeerList

        records = book.records(sort=sort, limit=limit, banned_only=banned)
        return PeerList.of(book, [], records).model_dump(mode="json", exclude_unset=True)

    doc = _read(place, online, offline)
    if json_out:
        cli.print_json(doc)
        return
    from rich.table import Table

    now = time.time()
    out = cli.stdout()
    out.print(
        f"{doc['known']} known, {len(doc['connected'])} connected, {doc['banned']} banned",
        markup=False,
    )
    table = Table(box=None, pad_edge=False)
    table.add_column("node id", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("viol.", justify="right", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("address", overflow="fold")
    for p in doc["peers"]:
        table.add_row(
            p["node_id"],
            f"{p['score']:.1f}",
            str(p["violations"]),
            _ago(now, p["last_seen"]),
            _state(p),
            (p["addresses"] or ["-"])[0],
        )
    out.print(table)
    for b in doc["ip_bans"]:
        out.print(
            f"ip ban {b['target']} until {_when(b['banned_until'])}: {b['reason']}", markup=False
        )


@app.command("show")
def show(
    node_id: Annotated[str, typer.Argument(help="The peer's node id (40 hex).")],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show one peer: score, counters, ban and why, addresses.

    Example: ian peers show 0123456789abcdef0123456789abcdef01234567 --json
    """
    from ian.errors import NotFoundError

    wanted = _node_id(node_id)
    place = resolve_target(data_dir, node_url)

    def offline(book: PeerBook) -> dict[str, Any]:
        from ian.api.models import PeerEntry

        record = book.get(wanted)
        if record is None:
            raise NotFoundError(f"unknown peer {wanted}", field="node_id")
        return PeerEntry.of(record).model_dump(mode="json")

    doc = _read(place, lambda c: c.get_json(f"/api/v1/peers/{wanted}"), offline)
    if json_out:
        cli.print_json(doc)
        return
    from ian.p2p.peer_book import COUNTERS

    now = time.time()
    out = cli.stdout()
    flags = ", ".join(f for f in ("connected", "trusted") if doc.get(f)) or "not connected"
    out.print(f"peer {doc['node_id']}  score {doc['score']:.1f}  ({flags})", markup=False)
    if doc["banned"]:
        out.print(f"BANNED until {_when(doc['banned_until'])}: {doc['ban_reason']}", markup=False)
    elif doc["banned_until"] is not None:
        out.print(f"ban expired {_when(doc['banned_until'])}: {doc['ban_reason']}", markup=False)
    out.print(
        f"first seen {_when(doc['first_seen'])}, last seen {_ago(now, doc['last_seen'])}, "
        f"last connected {_ago(now, doc['last_connected'])}",
        markup=False,
    )
    for name in COUNTERS:
        out.print(f"  {name:<22} {doc[name]}", markup=False)
    out.print("addresses: " + (", ".join(doc["addresses"]) or "(none)"), markup=False)


# --------------------------------------------------------------------------- changes


@app.command("ban")
def ban(
    target: Annotated[str, typer.Argument(help="Node id (40 hex), IP address or CIDR.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to operators).")],
    duration: Annotated[
        str | None,
        typer.Option(
            "--for",
            help="How long: 90s, 12h, 30d, 2w [default: ban_seconds, 24h].",
            show_default=False,
        ),
    ] = None,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Ban a peer by node id, or every peer from an IP or CIDR; disconnects it when online.

    Example: ian peers ban 10.0.0.0/8 --for 2w --reason "scanner"
    """
    from ian.p2p.peer_book import parse_ban_target

    _kind, canonical = parse_ban_target(target)
    place = resolve_target(data_dir, node_url)
    seconds = (
        parse_duration(duration, option="--for")
        if duration is not None
        else place.settings.ban_seconds
    )
    if place.online:
        doc = admin_post(
            place,
            "/api/v1/admin/peers/ban",
            {"target": canonical, "seconds": seconds, "reason": reason},
        )
    else:
        info = _offline_write(place, lambda b: b.ban(canonical, seconds=seconds, reason=reason))
        doc = {**info.to_dict(), "disconnected": []}
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
        return
    out = cli.stdout()
    out.print(
        f"banned {doc['target']} until {_when(doc['banned_until'])} "
        f"({format_duration(seconds)}): {doc['reason']}",
        markup=False,
    )
    if doc["disconnected"]:
        out.print("disconnected " + ", ".join(doc["disconnected"]), markup=False)


@app.command("unban")
def unban(
    target: Annotated[str, typer.Argument(help="Node id, IP or CIDR exactly as banned.")],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Lift a ban (the score is unchanged: `ian peers reset ID` restores it to 100).

    Example: ian peers unban 10.0.0.0/8
    """
    from ian.p2p.peer_book import parse_ban_target

    _kind, canonical = parse_ban_target(target)
    place = resolve_target(data_dir, node_url)
    if place.online:
        doc = admin_post(place, "/api/v1/admin/peers/unban", {"target": canonical})
    else:
        doc = {"target": canonical, "removed": _offline_write(place, lambda b: b.unban(canonical))}
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
        return
    text = f"unbanned {canonical}" if doc["removed"] else f"{canonical} was not banned"
    cli.stdout().print(text, markup=False)


@app.command("reset")
def reset(
    node_id: Annotated[
        str | None, typer.Argument(help="The peer to reset.", show_default=False)
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Offline: move peer_scores.json aside (also for a corrupt file); "
            "the node starts with an empty peer book.",
        ),
    ] = False,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    yes: cli.YesOpt = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """Reset a peer's score to 100 and lift its ban (counters are kept as history).

    Example: ian peers reset 0123456789abcdef0123456789abcdef01234567
    """
    from ian.errors import InputError

    if all_ == (node_id is not None):
        raise InputError(
            "give either a node id or --all", field="node_id", fix="ian peers reset <ID>"
        )
    place = resolve_target(data_dir, node_url)
    if all_:
        _reset_all(place, yes=yes, json_out=json_out)
        return
    wanted = _node_id(node_id or "")
    if place.online:
        doc = admin_post(place, "/api/v1/admin/peers/reset", {"node_id": wanted})
    else:
        doc = _offline_write(place, lambda b: b.reset(wanted)).to_dict()
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
        return
    cli.stdout().print(f"reset {wanted}: score {doc['score']:.1f}, not banned", markup=False)


def _reset_all(place: Target, *, yes: bool, json_out: bool) -> None:
    from ian.errors import NodeLockedError
    from ian.storage.lock import NodeLock

    if place.online:
        raise NodeLockedError(
            f"a node holds {place.datadir.lock_file}; `reset --all` works offline only",
            fix="stop the node first",
        )
    if not yes and not typer.confirm(f"Move {_scores(place)} aside and forget every peer?"):
        raise typer.Exit(cli.EXIT_FAILURE)
    with NodeLock(place.datadir.lock_file):
        moved: Path | None = None
        if _scores(place).exists():
            moved = _scores(place).with_name(f"{_scores(place).name}.{int(time.time())}.bak")
            _scores(place).replace(moved)
    place.announce(_scores(place))
    if json_out:
        cli.print_json({"moved_to": None if moved is None else str(moved)})
    elif moved is None:
        cli.stdout().print(f"{_scores(place)} did not exist; nothing to do", markup=False)
    else:
        cli.stdout().print(
            f"moved {_scores(place)} to {moved}; the peer book is empty",
            markup=False,
        )


@app.command("connect")
def connect(
    address: Annotated[str, typer.Argument(help="tcp://host:port")],
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Ask the running node to dial a peer now (online only).

    Example: ian peers connect tcp://seed1.ian.network:9000
    """
    from ian.config import PeerAddressError, parse_peer_address
    from ian.errors import InputError

    try:
        canonical = str(parse_peer_address(address))
    except PeerAddressError as exc:
        raise InputError(exc.message, field="address", fix="e.g. tcp://10.0.0.5:9000") from None
    place = resolve_target(data_dir, node_url)
    _require_online(place, "connect")
    doc = admin_post(place, "/api/v1/admin/peers/connect", {"address": canonical})
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
    else:
        cli.stdout().print(f"connected to {doc['node_id']} at {doc['address']}", markup=False)


@app.command("prune")
def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Drop peers not seen for this long: 90s, 12h, 30d, 2w [default: peer_prune_days].",
            show_default=False,
        ),
    ] = None,
    dry_run: cli.DryRunOpt = False,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Drop peers not seen for a while (connected and actively banned peers always stay).

    Example: ian peers prune --older-than 30d --dry-run
    """
    place = resolve_target(data_dir, node_url)
    seconds = (
        parse_duration(older_than, option="--older-than")
        if older_than is not None
        else place.settings.peer_prune_days * 86400
    )
    if place.online:
        doc = admin_post(
            place, "/api/v1/admin/peers/prune", {"older_than_s": seconds, "dry_run": dry_run}
        )
    else:
        # streamed: a million-peer file is never loaded whole (ian.p2p.peer_prune)
        from ian.p2p.peer_prune import prune_file
        from ian.storage.lock import NodeLock

        ban_seconds = place.settings.ban_seconds
        if dry_run:
            result = prune_file(_scores(place), seconds, dry_run=True, ban_seconds=ban_seconds)
        else:
            with NodeLock(place.datadir.lock_file):
                result = prune_file(_scores(place), seconds, ban_seconds=ban_seconds)
        doc = {
            "kept": result.kept,
            "removed": len(result.removed),
            "removed_ids": result.removed[:1000],
            "dry_run": dry_run,
        }
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
        return
    verb = "would remove" if dry_run else "removed"
    tail = " (dry run: nothing changed)" if dry_run else ""
    cli.stdout().print(
        f"kept {doc['kept']}, {verb} {doc['removed']} peers not seen for "
        f"{format_duration(seconds)}{tail}",
        markup=False,
    )


@app.command("limits")
def limits(
    max_peers: Annotated[
        int | None, typer.Option("--max-peers", min=1, help="Maximum connected peers.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Per-peer messages per second (> 0).")
    ] = None,
    burst: Annotated[
        float | None, typer.Option("--burst", min=1.0, help="Per-peer burst (messages).")
    ] = None,
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the running node's P2P limits, or change them until its next restart (online
    only; `peer_rate`, `peer_burst` and `max_peers` in config.toml make a change permanent).

    Example: ian peers limits --max-peers 20 --rate 50
    """
    from ian.errors import InputError

    if rate is not None and not rate > 0:
        raise InputError(f"--rate must be > 0, not {rate}", field="--rate")
    body = {
        k: v
        for k, v in {"max_peers": max_peers, "rate": rate, "burst": burst}.items()
        if v is not None
    }
    place = resolve_target(data_dir, node_url)
    _require_online(place, "limits")
    if body:
        doc = admin_post(place, "/api/v1/admin/p2p/limits", body)
    else:
        with place.client(admin=False) as client:
            doc = {"limits": client.get_json("/api/v1/p2p/limits")}
    place.announce(_scores(place))
    if json_out:
        cli.print_json(doc)
        return
    limits = ", ".join(f"{k}={v}" for k, v in doc["limits"].items())
    cli.stdout().print(f"{'applied; now ' if body else ''}{limits}", markup=False)
