"""`ian doctor`: the runbook's Troubleshooting and Emergency sections, run as checks.

Offline checks (config, data dir, permissions, identity and certificate, ports, listen
addresses, seeds, Tau endpoint, store, disk, backup, bans from ``peer_scores.json``) always run;
online checks (peer count, sync, circuit breaker, clock skew, bans as the node sees them) use
the running node's API and say "node not running" otherwise. Exit code 0 when every check
passes, 1 with warnings, 2 with failures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.config import Settings
    from ian.storage.datadir import DataDir
    from ian_ops.doctor_checks import Check, NodeFacts


def doctor(
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    json_out: cli.JsonOpt = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Check the store's roots against its last block instead of replaying "
            "every block from genesis.",
        ),
    ] = False,
) -> None:
    """Diagnose this node: each check with ✓ / ! / ✗, what was found and the fix.

    Follows the runbook: node won't start (config, data dir, permissions, identity,
    certificate, ports), connection refused (listen addresses), node not syncing (seeds,
    peers, sync, clock), circuit breaker (Tau), bans, data corruption (store), maintenance
    (disk, backup). Works with the node down. Exit code 0 ok, 1 warnings, 2 failures.

    Example: ian doctor --quick --data-dir /data
    """
    from ian_ops import doctor_checks as dc
    from ian_ops.target import node_url as api_url

    now = time.time()
    settings, config_error = _settings(data_dir)
    datadir = _datadir(data_dir, settings)
    url = api_url(node_url, settings)
    node = _node_facts(datadir, url)

    checks: list[Check] = [dc.check_config(settings, config_error), dc.check_node(node)]
    checks.append(dc.check_data_dir(datadir))
    checks.append(dc.check_permissions(datadir))
    checks += dc.check_identity(datadir, settings, now)
    if settings is not None:
        for name, env, host, port in (
            ("API", "IAN_API_PORT", settings.api_host, settings.api_port),
            ("P2P", "IAN_P2P_PORT", settings.p2p_host, settings.p2p_port),
            ("events", "IAN_WS_PORT", settings.api_host, settings.ws_port),
        ):
            checks.append(dc.check_port(name, env, host, port, node))
        checks.append(dc.check_listen(settings))
        checks += dc.check_seeds(settings.seed_nodes)
        checks.append(dc.check_peers(node, settings))
        checks.append(
            dc.check_sync(node, settings.sync_lag_ready_threshold, bool(settings.seed_nodes))
        )
        checks.append(dc.check_consensus(node))
        checks.append(dc.check_clock_skew(node))
        checks.append(dc.check_tau_endpoint(settings))
        checks.append(dc.check_breaker(node))
        checks.append(_bans(datadir, settings, node))
        if datadir.root.is_dir():
            checks += dc.check_chain(datadir, settings)
            checks.append(dc.check_store(datadir, settings, quick=quick))
    else:
        checks.append(
            dc.Check(dc.START, "ports", "ports and the rest", dc.SKIP, "n/a: configuration invalid")
        )
    checks.append(dc.check_disk(datadir))
    if datadir.root.is_dir():
        from ian.maintenance.backup import read_last_backup

        checks.append(dc.backup_age(read_last_backup(datadir), now))

    order = {g: i for i, g in enumerate(dc.GROUPS)}
    checks.sort(key=lambda c: order.get(c.group, len(order)))  # stable inside a group
    code = dc.exit_code(checks)
    if json_out:
        counts = {v: sum(1 for c in checks if c.verdict == v) for v in (dc.OK, dc.WARN, dc.FAIL)}
        counts[dc.SKIP] = sum(1 for c in checks if c.verdict == dc.SKIP)
        cli.print_json(
            {
                "verdict": dc.overall(checks),
                "exit_code": code,
                "data_dir": str(datadir.root),
                "node_url": url,
                "node_running": node.running,
                "quick": quick,
                "counts": counts,
                "checks": [c.to_doc() for c in checks],
            }
        )
    else:
        _print(checks, code)
    raise typer.Exit(code)


def _settings(data_dir: Path | None) -> tuple[Settings | None, str | None]:
    from ian.errors import ConfigError

    try:
        return cli.load_settings(data_dir), None
    except ConfigError as exc:
        return None, exc.message


def _datadir(data_dir: Path | None, settings: Settings | None) -> DataDir:
    from ian.storage.datadir import DataDir

    if settings is not None:
        return DataDir(settings.data_dir)
    return DataDir(data_dir or Path(os.environ.get("IAN_DATA_DIR") or ".ian-data"))


def _node_facts(datadir: DataDir, url: str) -> NodeFacts:
    """Who holds node.lock, and what the API at ``url`` answers (short timeouts)."""
    from ian.errors import IanError
    from ian.storage.lock import holder_pid, is_locked
    from ian_ops.doctor_checks import NodeFacts
    from ian_ops.target import read_client

    lock_held = datadir.root.is_dir() and is_locked(datadir.lock_file)
    pid = holder_pid(datadir.lock_file) if lock_held else None
    facts: dict[str, Any] = {"url": url, "lock_held": lock_held, "pid": pid}
    with read_client(url, timeout=2.0) as client:
        try:
            health = client.request("GET", "/health").text.strip()
        except IanError as exc:
            return NodeFacts(**facts, error=exc.message)
        if health != "OK":
            return NodeFacts(**facts, error=f"/health answered {health[:40]!r}")
        facts["answers"] = True
        for key, path in (
            ("status", "/api/v1/status"),
            ("peers", "/api/v1/peers?banned=1"),
            ("tau", "/api/v1/tau"),
        ):
            try:
                facts[key] = client.get_json(path)
            except (IanError, ValueError):
                facts[key] = None
    return NodeFacts(**facts)


def _bans(datadir: DataDir, settings: Settings, node: NodeFacts) -> Check:
    """Bans as the running node sees them, else from peer_scores.json."""
    from ian.errors import IanError
    from ian.p2p.peer_book import PeerBook
    from ian_ops import doctor_checks as dc

    doc = node.peers
    if doc is not None and "peers" in doc:
        return dc.check_bans(
            doc.get("peers") or [],
            doc.get("ip_bans") or [],
            int(doc.get("known", 0)),
            settings.seed_nodes,
        )
    if not datadir.peer_scores_file.exists():
        return dc.Check(dc.BANS, "bans", "bans", dc.OK, "no peer_scores.json yet: no bans")
    try:
        book = PeerBook.load(datadir.peer_scores_file, ban_seconds=settings.ban_seconds)
    except IanError as exc:
        return dc.Check(dc.BANS, "bans", "bans", dc.FAIL, exc.message, exc.fix)
    return dc.check_bans(
        [r.to_dict() for r in book.records(banned_only=True)],
        [b.to_dict() for b in book.ip_bans()],
        len(book),
        settings.seed_nodes,
    )


_COLOUR = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def _print(checks: list[Check], code: int) -> None:
    from rich.text import Text

    from ian_ops import doctor_checks as dc

    out = cli.stdout()
    group = None
    for c in checks:
        if c.group != group:
            if group is not None:
                out.print()
            group = c.group
            out.print(Text(group, style="bold"))
        line = Text("  ")
        line.append(dc.SYMBOL[c.verdict], style=_COLOUR[c.verdict])
        line.append(f" {c.title}: ", style="bold" if c.verdict in (dc.WARN, dc.FAIL) else "")
        line.append(c.found)
        out.print(line, soft_wrap=True)
        if c.fix and c.verdict in (dc.WARN, dc.FAIL):
            out.print(Text(f"      fix: {c.fix}", style="dim" if c.verdict == dc.OK else ""))
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in _COLOUR}
    out.print()
    summary = f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failures" + (
        f", {counts['skip']} n/a" if counts["skip"] else ""
    )
    verdict = {0: "healthy", 1: "warnings", 2: "FAILURES"}[code]
    out.print(Text(f"{verdict}: {summary}", style=_COLOUR[["ok", "warn", "fail"][code]]))
