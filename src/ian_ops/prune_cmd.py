"""`ian prune`: reclaim space (stale peers, old backups, cert pairs, pre-restore and resync
copies, leftovers); dry run first.

The command reads as plan → render → confirm → apply: :func:`plan_prune` finds what would go
and changes nothing, :func:`render_plan` prints it, :func:`confirm` decides whether to go on
(``--dry-run``, ``--yes``, a terminal to ask on), :func:`apply` removes and
:func:`render_result` says what was freed. Peers are pruned where :mod:`ian_ops.target` says:
through the running node's admin API (online) or on ``peer_scores.json`` under ``node.lock``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.maintenance.retention import PruneItem
    from ian.storage.datadir import DataDir
    from ian_ops.target import Target

#: seconds an online peer prune may take (the node rewrites its peer book)
PEER_PRUNE_TIMEOUT_S = 30.0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass
class InterruptedRestore:
    """An interrupted in-place restore found in the data dir (prune keeps its directories):
    ``doc`` for --json, ``text`` and ``fix`` for the note on stderr."""

    doc: dict[str, Any]
    text: str
    fix: str | None


@dataclass
class PrunePlan:
    """What ``ian prune`` would do; nothing has changed when it is made.

    ``items``: files and directories to remove (``bytes`` in total); ``peers``: the peer book's
    dry-run answer (``kept``, ``removed`` count, ``removed_ids``, ``dry_run``) for peers not
    seen for ``older_than_s`` seconds; ``mode``: ``online`` or ``offline`` (where peers go).
    """

    mode: str
    older_than_s: float
    items: list[PruneItem]
    peers: dict[str, Any]
    interrupted_restore: InterruptedRestore | None = None

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items)

    @property
    def empty(self) -> bool:
        """Nothing to remove and no peer to drop."""
        return not self.items and not self.peers["removed"]

    def to_doc(self) -> dict[str, Any]:
        """The --json document of the dry run (``applied`` false)."""
        return {
            "mode": self.mode,
            "dry_run": True,
            "applied": False,
            "items": [i.to_doc() for i in self.items],
            "bytes": self.bytes,
            "peers": {"older_than_s": self.older_than_s, **self.peers},
            "failed": [],
            "interrupted_restore": (
                self.interrupted_restore.doc if self.interrupted_restore is not None else None
            ),
        }


@dataclass
class PruneResult:
    """What :func:`apply` did: ``freed`` bytes, the items it could not remove with the error,
    and the peer book's answer (``removed`` peers dropped)."""

    plan: PrunePlan
    removed: list[PruneItem]
    failed: list[tuple[PruneItem, str]]
    peers: dict[str, Any] = field(default_factory=dict)

    @property
    def freed(self) -> int:
        return sum(i.size for i in self.removed)

    def to_doc(self) -> dict[str, Any]:
        """The --json document after removing (``applied`` true)."""
        return {
            **self.plan.to_doc(),
            "dry_run": False,
            "applied": True,
            "bytes": self.freed,
            "peers": {"older_than_s": self.plan.older_than_s, **self.peers},
            "failed": [{**i.to_doc(), "error": err} for i, err in self.failed],
        }


def prune_peers(target: Target, older_than_s: float, *, dry_run: bool) -> dict[str, Any]:
    """Drop (or with ``dry_run`` only count) the peers not seen for ``older_than_s`` seconds:
    through the node's admin API when ``target`` is online, else on ``peer_scores.json`` (under
    ``node.lock`` unless ``dry_run``). Returns ``kept``, ``removed``, ``removed_ids``,
    ``dry_run``."""
    body = {"older_than_s": older_than_s, "dry_run": dry_run}
    if target.online:
        with target.client(admin=False, timeout=PEER_PRUNE_TIMEOUT_S) as client:
            answer: dict[str, Any] = client.post_json("/api/v1/admin/peers/prune", body)
            return answer
    from ian.p2p.peer_prune import prune_file
    from ian.storage.lock import NodeLock

    path = target.datadir.peer_scores_file
    if dry_run:
        return prune_file(path, older_than_s, dry_run=True).to_dict()
    with NodeLock(target.datadir.lock_file):
        return prune_file(path, older_than_s).to_dict()


def plan_prune(target: Target, older_than_s: float, now: float) -> PrunePlan:
    """What would go at ``now`` (epoch seconds): files beyond the retention policy of
    ``target.settings`` and peers not seen for ``older_than_s``. Reads only; call it under
    the shared maintenance lock so the listing stays true until :func:`apply`."""
    from ian.maintenance.retention import RetentionPolicy, plan, scan

    policy = RetentionPolicy(backups_keep=target.settings.backup_retention)
    interrupted = find_interrupted_restore(target.datadir)
    items = plan(scan(target.datadir), policy, now)
    return PrunePlan(
        mode="online" if target.online else "offline",
        older_than_s=older_than_s,
        items=items,
        peers=prune_peers(target, older_than_s, dry_run=True),
        interrupted_restore=interrupted,
    )


def find_interrupted_restore(datadir: DataDir) -> InterruptedRestore | None:
    """An interrupted in-place restore in ``datadir`` (or an unreadable journal), else None."""
    from ian.errors import DataDirError
    from ian.maintenance.restore import pending_restore

    try:
        pending = pending_restore(datadir.root)
    except DataDirError as exc:
        return InterruptedRestore({"error": exc.message, "fix": exc.fix}, exc.message, exc.fix)
    if pending is None:
        return None
    return InterruptedRestore(
        pending.to_doc(),
        f"{pending.describe()}; its directories are kept",
        f"ian restore --resume --data-dir {datadir.root}, or "
        f"ian restore --rollback --data-dir {datadir.root}",
    )


def render_plan(plan: PrunePlan) -> None:
    """The note about an interrupted restore (stderr), then every item with its size and the
    total (stdout)."""
    from ian_ops.durations import format_duration

    note = plan.interrupted_restore
    if note is not None:
        fix = f"\n  fix: {note.fix}" if note.fix else ""
        cli.stderr().print(f"note: {note.text}{fix}", markup=False)
    out = cli.stdout()
    out.print(
        f"peers ({plan.mode}): {plan.peers['removed']} not seen for "
        f"{format_duration(plan.older_than_s)} would be dropped, {plan.peers['kept']} kept",
        markup=False,
    )
    for item in plan.items:
        out.print(
            f"{item.kind:<12} {_human(item.size):>10}  {item.path}  ({item.reason})",
            markup=False,
            soft_wrap=True,
        )
    out.print(f"total: {len(plan.items)} items, {_human(plan.bytes)} to free", markup=False)


def confirm(plan: PrunePlan, *, dry_run: bool, yes: bool, json_out: bool) -> bool:
    """Whether to remove: never on ``dry_run`` or an empty plan; with ``yes`` always; else
    ask when stdin is a terminal, and without one say (unless ``json_out``) that this was a
    dry run only."""
    if dry_run or plan.empty:
        return False
    if yes:
        return True
    if sys.stdin.isatty():
        return typer.confirm("remove these?", default=False, err=True)
    if not json_out:
        cli.stderr().print(
            "dry run only: stdin is not a terminal; pass --yes to remove these", markup=False
        )
    return False


def apply(plan: PrunePlan, target: Target) -> PruneResult:
    """Remove the plan's items (each on its own: one failure does not stop the others) and
    drop its stale peers (only when the plan found some)."""
    from ian.maintenance.retention import remove

    results = remove(plan.items)
    peers = (
        prune_peers(target, plan.older_than_s, dry_run=False)
        if plan.peers["removed"]
        else {**plan.peers, "dry_run": False}
    )
    return PruneResult(
        plan,
        removed=[i for i, err in results if err is None],
        failed=[(i, err) for i, err in results if err is not None],
        peers=peers,
    )


def render_result(result: PruneResult) -> None:
    """What could not be removed (stderr), then what was freed and dropped (stdout)."""
    for item, err in result.failed:
        cli.stderr().print(f"could not remove {item.path}: {err}", markup=False)
    cli.stdout().print(
        f"removed {len(result.removed)} items, freed {_human(result.freed)}; "
        f"dropped {result.peers['removed']} peers ({result.plan.mode})",
        markup=False,
    )


def prune(
    data_dir: cli.DataDirOpt = None,
    node_url: cli.NodeUrlOpt = None,
    dry_run: cli.DryRunOpt = False,
    yes: cli.YesOpt = False,
    json_out: cli.JsonOpt = False,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Drop peers not seen for this long, e.g. 30d (default: peer_prune_days).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Reclaim space: stale peers, backups beyond backup_retention, old certificate pairs
    (newest 3 kept), old pre-restore copies (newest 1 kept, beside or inside the data dir),
    old resync-* copies of the store (newest 1 kept) and temporary files older than 1 h.
    What an interrupted restore still needs is never removed.

    Lists every item with its size first. Without --yes it asks on a terminal; without a
    terminal it only shows the dry run.

    Example: ian prune --dry-run
    """
    from ian.storage.lock import maintenance_lock
    from ian_ops.durations import parse_duration
    from ian_ops.target import local_target

    target = local_target(data_dir, node_url)
    older_than_s = (
        parse_duration(older_than, option="--older-than")
        if older_than is not None
        else target.settings.peer_prune_days * 86400
    )
    with maintenance_lock(target.datadir.root, exclusive=False):
        plan = plan_prune(target, older_than_s, time.time())
        if not json_out:
            render_plan(plan)
        doc = plan.to_doc()
        if confirm(plan, dry_run=dry_run, yes=yes, json_out=json_out):
            result = apply(plan, target)
            doc = result.to_doc()
            if not json_out:
                render_result(result)
    if json_out:
        cli.print_json(doc)
    if doc["failed"]:
        raise typer.Exit(cli.EXIT_FAILURE)
