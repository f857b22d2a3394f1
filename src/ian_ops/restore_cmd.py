"""`ian restore ARCHIVE`: verify, then replace the data directory, keeping the old one aside."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ian_ops import cli
from ian_ops.backup_cmd import progress_reporter

if TYPE_CHECKING:
    from ian.restore import RestorePlan


def _describe(plan: RestorePlan) -> list[str]:
    m = plan.manifest
    lines = [
        f"archive:  {plan.archive} (node {m.node_id}, height {m.height}, created {m.created_at})",
        f"restore:  into {plan.target}",
    ]
    if plan.aside is not None:
        lines.append(f"keep:     the current data dir moves to {plan.aside} (nothing is deleted)")
    if plan.existing_node_id not in (None, m.node_id):
        lines.append(
            f"identity: REPLACES node {plan.existing_node_id} with node {m.node_id} (--force)"
        )
    lines.append("then:     the node fully re-verifies the store on start and resyncs from peers")
    return lines


def restore(
    archive: Annotated[Path, typer.Argument(help="Archive written by `ian backup`.")],
    data_dir: cli.DataDirOpt = None,
    dry_run: cli.DryRunOpt = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Allow an archive of another node identity."),
    ] = False,
    yes: cli.YesOpt = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """Restore a backup: verify it first, refuse while the node runs, keep the old data aside.

    The current data dir is renamed to <data-dir>.pre-restore-<UTC time>, never deleted.
    node_state.json is not restored, so the node re-verifies the whole store on its next start.

    Example: ian restore /data/backups/ian-backup-0123456789ab-20250101T000000Z.tar --dry-run
    """
    from ian.restore import restore_archive

    settings = cli.load_settings(data_dir)
    target = settings.data_dir
    replaces = target.is_dir() and any(target.iterdir())
    interactive = sys.stdin.isatty()
    if replaces and not (yes or dry_run or interactive):
        cli.exit_with_error(
            f"restoring replaces {target} and stdin is not a terminal to confirm",
            code=cli.EXIT_USAGE,
            fix="pass --yes (the current data dir is kept aside), or --dry-run to only check",
        )

    def confirm(plan: RestorePlan) -> bool:
        if yes or not replaces:
            return True
        for line in _describe(plan):
            cli.stderr().print(line, markup=False, soft_wrap=True)
        return typer.confirm("restore now?", default=False, err=True)

    with progress_reporter(not json_out) as report:
        plan = restore_archive(
            archive, target, dry_run=dry_run, force=force, confirm=confirm, progress=report
        )
    if json_out:
        cli.print_json(plan.to_doc())
        return
    out = cli.stdout()
    if dry_run:
        out.print("dry run: the archive is sound; nothing was changed", markup=False)
        for line in _describe(plan):
            out.print(line, markup=False, soft_wrap=True)
        return
    if not plan.done:
        cli.stderr().print("aborted: nothing was changed", markup=False)
        raise typer.Exit(cli.EXIT_FAILURE)
    out.print(
        f"restored node {plan.manifest.node_id} at height {plan.manifest.height} into {target}",
        markup=False,
        soft_wrap=True,
    )
    if plan.aside is not None:
        out.print(f"previous data dir kept in {plan.aside}", markup=False, soft_wrap=True)
    out.print("start the node: it verifies the store, then resyncs newer blocks from peers")
