"""`ian prune`: reclaim space (stale peers, old backups, cert pairs, pre-restore and resync
copies, leftovers); dry run first."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.config import Settings
    from ian.storage.datadir import DataDir


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class _Peers:
    """Stale-peer pruning, through the node's admin API (online) or the file (offline)."""

    def __init__(self, settings: Settings, datadir: DataDir, node_url: str | None) -> None:
        from ian.storage.lock import is_locked

        self.settings = settings
        self.datadir = datadir
        self.online = is_locked(datadir.lock_file)
        self.url = cli.node_url(node_url, settings)

    def _client(self):  # type: ignore[no-untyped-def]
        from ian.storage.datadir import read_api_token
        from ian_ops.client import NodeClient

        token = (
            self.settings.api_token.get_secret_value()
            if self.settings.api_token is not None
            else read_api_token(self.datadir)
        )
        return NodeClient(self.url, token=token, timeout=30.0)

    def prune(self, older_than_s: float, *, dry_run: bool) -> dict[str, Any]:
        body = {"older_than_s": older_than_s, "dry_run": dry_run}
        if self.online:
            with self._client() as client:
                return client.post_json("/api/v1/admin/peers/prune", body)
        from ian.p2p.peer_book import PeerBook
        from ian.storage.lock import NodeLock

        path = self.datadir.peer_scores_file
        if dry_run:
            return PeerBook.load(path).prune(older_than_s, dry_run=True).to_dict()
        with NodeLock(self.datadir.lock_file):
            book = PeerBook.load(path)
            result = book.prune(older_than_s, dry_run=False)
            if result.removed:
                book.save()
            return result.to_dict()


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
    from ian.errors import DataDirError
    from ian.maintenance.retention import RetentionPolicy, plan, remove, scan
    from ian.storage.datadir import DataDir
    from ian.storage.lock import maintenance_lock
    from ian_ops.durations import format_duration, parse_duration

    settings = cli.load_settings(data_dir)
    datadir = DataDir(settings.data_dir)
    if not datadir.root.is_dir():
        raise DataDirError(
            f"data dir {datadir.root} does not exist", fix="check --data-dir / IAN_DATA_DIR"
        )
    older_than_s = (
        parse_duration(older_than, option="--older-than")
        if older_than is not None
        else settings.peer_prune_days * 86400
    )
    policy = RetentionPolicy(backups_keep=settings.backup_retention)
    peers = _Peers(settings, datadir, node_url)
    mode = "online" if peers.online else "offline"

    with maintenance_lock(datadir.root, exclusive=False):
        interrupted = _interrupted_restore(datadir, json_out=json_out)
        items = plan(scan(datadir), policy, time.time())
        preview = peers.prune(older_than_s, dry_run=True)
        total = sum(i.size for i in items)
        doc: dict[str, Any] = {
            "mode": mode,
            "dry_run": True,
            "applied": False,
            "items": [i.to_doc() for i in items],
            "bytes": total,
            "peers": {"older_than_s": older_than_s, **preview},
            "failed": [],
            "interrupted_restore": interrupted,
        }
        out = cli.stdout()
        if not json_out:
            out.print(
                f"peers ({mode}): {preview['removed']} not seen for "
                f"{format_duration(older_than_s)} would be dropped, {preview['kept']} kept",
                markup=False,
            )
            for item in items:
                out.print(
                    f"{item.kind:<12} {_human(item.size):>10}  {item.path}  ({item.reason})",
                    markup=False,
                    soft_wrap=True,
                )
            out.print(f"total: {len(items)} items, {_human(total)} to free", markup=False)
        nothing = not items and not preview["removed"]
        apply = False
        if not (dry_run or nothing):
            if yes:
                apply = True
            elif sys.stdin.isatty():
                apply = typer.confirm("remove these?", default=False, err=True)
            elif not json_out:
                cli.stderr().print(
                    "dry run only: stdin is not a terminal; pass --yes to remove these",
                    markup=False,
                )
        if apply:
            results = remove(items)
            failed = [(i, err) for i, err in results if err is not None]
            freed = sum(i.size for i, err in results if err is None)
            peer_result = (
                peers.prune(older_than_s, dry_run=False)
                if preview["removed"]
                else {**preview, "dry_run": False}
            )
            doc.update(
                dry_run=False,
                applied=True,
                bytes=freed,
                peers={"older_than_s": older_than_s, **peer_result},
                failed=[{**i.to_doc(), "error": err} for i, err in failed],
            )
            if not json_out:
                for item, err in failed:
                    cli.stderr().print(f"could not remove {item.path}: {err}", markup=False)
                out.print(
                    f"removed {len(results) - len(failed)} items, freed {_human(freed)}; "
                    f"dropped {peer_result['removed']} peers ({mode})",
                    markup=False,
                )
    if json_out:
        cli.print_json(doc)
    if doc["failed"]:
        raise typer.Exit(cli.EXIT_FAILURE)


def _interrupted_restore(datadir: DataDir, *, json_out: bool) -> dict[str, Any] | None:
    """An interrupted in-place restore (whose directories prune leaves alone): said on stderr,
    returned for --json; None when there is none."""
    from ian.errors import DataDirError
    from ian.maintenance.restore import pending_restore

    try:
        pending = pending_restore(datadir.root)
    except DataDirError as exc:
        doc: dict[str, Any] = {"error": exc.message, "fix": exc.fix}
        text, fix = exc.message, exc.fix
    else:
        if pending is None:
            return None
        doc = pending.to_doc()
        text = f"{pending.describe()}; its directories are kept"
        fix = (
            f"ian restore --resume --data-dir {datadir.root}, or "
            f"ian restore --rollback --data-dir {datadir.root}"
        )
    if not json_out:
        cli.stderr().print(f"note: {text}" + (f"\n  fix: {fix}" if fix else ""), markup=False)
    return doc
