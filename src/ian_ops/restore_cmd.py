"""`ian restore ARCHIVE`: verify, then replace the data directory, keeping the old one aside.

It reads as plan → render → confirm → apply: :func:`plan_restore` (what was asked, whether it
replaces data), :func:`apply` (the core verifies the archive, asks :func:`confirm` with its
:class:`~ian.maintenance.restore.RestorePlan`, then swaps), :func:`render_outcome`. The plan's
details exist only once the archive is verified, so confirmation happens inside the core's
locks, between verifying and moving.

Also ``ian restore --resume`` / ``--rollback``: settle a restore (either mode) whose process
died mid-swap (see :mod:`ian.maintenance.restore`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ian_ops import cli
from ian_ops.backup_cmd import progress_reporter

if TYPE_CHECKING:
    from ian.maintenance.restore import RestorePlan


def describe(plan: RestorePlan) -> list[str]:
    """The restore plan as aligned lines: archive, target, mode, where the old data goes."""
    m = plan.manifest
    lines = [
        f"archive:  {plan.archive} (node {m.node_id}, height {m.height}, created {m.created_at})",
        f"restore:  into {plan.target}",
        f"mode:     {_mode_line(plan)}",
    ]
    if plan.aside is not None:
        what = "its current files move" if plan.in_place else "the current data dir moves"
        lines.append(f"keep:     {what} to {plan.aside} (nothing is deleted)")
    if plan.existing_node_id not in (None, m.node_id):
        lines.append(
            f"identity: REPLACES node {plan.existing_node_id} with node {m.node_id} (--force)"
        )
    lines.append("then:     the node fully re-verifies the store on start and resyncs from peers")
    return lines


def _mode_line(plan: RestorePlan) -> str:
    if plan.in_place:
        return f"in place, inside the data dir ({plan.mode_reason})"
    return f"swap, renaming the data dir ({plan.mode_reason})"


def restore(
    archive: Annotated[
        Path | None,
        typer.Argument(help="Archive written by `ian backup` (not with --resume/--rollback)."),
    ] = None,
    data_dir: cli.DataDirOpt = None,
    dry_run: cli.DryRunOpt = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Allow an archive of another node identity."),
    ] = False,
    in_place: Annotated[
        bool | None,
        typer.Option(
            "--in-place/--swap",
            help="Restore inside the data dir, or rename it as a whole (default: in place "
            "when the data dir is a mount point or its parent is not writable).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Finish a restore that was interrupted."),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option("--rollback", help="Undo a restore that was interrupted."),
    ] = False,
    yes: cli.YesOpt = False,
    json_out: cli.JsonOpt = False,
) -> None:
    """Restore a backup: verify it first, refuse while the node runs, keep the old data aside.

    The current data dir is renamed to DATA_DIR.pre-restore-STAMP (UTC); when it cannot be
    renamed (a mount point such as /data in a container, or a read-only parent) the restore
    happens inside it and the current files move to DATA_DIR/.pre-restore-STAMP/.
    Nothing is deleted. node_state.json is not restored, so the node re-verifies the whole
    store on its next start. A restore that was interrupted (killed, power cut) blocks
    further restores, and the node's start, until --resume or --rollback settles it.

    Example: ian restore /data/backups/ian-backup-0123456789ab-20250101T000000Z.tar.zst --dry-run
    """
    if resume and rollback:
        cli.exit_with_error("--resume and --rollback exclude each other", code=cli.EXIT_USAGE)
    if resume or rollback:
        if archive is not None or dry_run or force or in_place is not None:
            cli.exit_with_error(
                f"--{'resume' if resume else 'rollback'} takes no archive and no other option",
                code=cli.EXIT_USAGE,
                fix="run it alone (with --data-dir), then restore again if needed",
            )
        _settle(data_dir, "resume" if resume else "rollback", json_out=json_out)
        return
    if archive is None:
        cli.exit_with_error(
            "missing the archive to restore",
            code=cli.EXIT_USAGE,
            fix="ian restore ARCHIVE (see ian backup), or --resume/--rollback after an "
            "interrupted restore",
        )

    request = plan_restore(
        archive,
        data_dir,
        dry_run=dry_run,
        force=force,
        in_place=in_place,
        yes=yes,
        interactive=sys.stdin.isatty(),
    )
    if request.needs_terminal:
        cli.exit_with_error(
            f"restoring replaces {request.target} and stdin is not a terminal to confirm",
            code=cli.EXIT_USAGE,
            fix="pass --yes (the current data dir is kept aside), or --dry-run to only check",
        )
    plan = apply(request, show_progress=not json_out)
    if json_out:
        cli.print_json(plan.to_doc())
        return
    render_outcome(request, plan)
    if not (request.dry_run or plan.done):
        raise typer.Exit(cli.EXIT_FAILURE)


@dataclass(frozen=True)
class RestoreRequest:
    """What ``ian restore ARCHIVE`` was asked to do, before anything is read or changed.

    ``replaces``: the data dir ``target`` exists and is not empty, so restoring replaces it
    (it is kept aside, never deleted). What the restore then does in detail (mode, where the
    old data goes, the archive's node and height) is the core's
    :class:`~ian.maintenance.restore.RestorePlan`, known once the archive is verified.
    """

    archive: Path
    target: Path
    replaces: bool
    dry_run: bool = False
    force: bool = False
    in_place: bool | None = None
    yes: bool = False
    interactive: bool = False

    @property
    def needs_confirmation(self) -> bool:
        """Whether to ask before anything moves: only when it replaces data and no --yes."""
        return self.replaces and not self.yes

    @property
    def needs_terminal(self) -> bool:
        """It must ask, but cannot: no --yes, no --dry-run and stdin is not a terminal."""
        return self.needs_confirmation and not (self.dry_run or self.interactive)


def plan_restore(
    archive: Path,
    data_dir: Path | None,
    *,
    dry_run: bool = False,
    force: bool = False,
    in_place: bool | None = None,
    yes: bool = False,
    interactive: bool = False,
) -> RestoreRequest:
    """The request for restoring ``archive`` into the data dir (``data_dir``, else the
    configured one); reads the config and whether both exist, changes nothing. Raises
    :class:`~ian.errors.DataDirError` when ``archive`` is not a file (checked first), and
    :class:`~ian.errors.ConfigError` for a bad config."""
    if not archive.is_file():
        from ian.errors import DataDirError

        raise DataDirError(
            f"archive {archive} does not exist or is not a file",
            fix="check the path; `ian backup` prints where it wrote the archive",
        )
    target = cli.load_settings(data_dir).data_dir
    replaces = target.is_dir() and any(target.iterdir())
    return RestoreRequest(
        archive,
        target,
        replaces,
        dry_run=dry_run,
        force=force,
        in_place=in_place,
        yes=yes,
        interactive=interactive,
    )


def confirm(request: RestoreRequest, plan: RestorePlan) -> bool:
    """Asked by the core once the archive is verified, before anything moves: yes without a
    question unless :attr:`RestoreRequest.needs_confirmation`; else the plan on stderr and a
    question on the terminal."""
    if not request.needs_confirmation:
        return True
    for line in describe(plan):
        cli.stderr().print(line, markup=False, soft_wrap=True)
    return typer.confirm("restore now?", default=False, err=True)


def apply(request: RestoreRequest, *, show_progress: bool) -> RestorePlan:
    """Verify the archive and (unless a dry run, or :func:`confirm` says no) restore it; the
    returned plan says what was done (``done``). Raises what
    :func:`ian.maintenance.restore.restore_archive` raises."""
    from ian.maintenance.restore import restore_archive

    with progress_reporter(show_progress) as report:
        return restore_archive(
            request.archive,
            request.target,
            dry_run=request.dry_run,
            force=request.force,
            confirm=lambda plan: confirm(request, plan),
            progress=report,
            in_place=request.in_place,
        )


def render_outcome(request: RestoreRequest, plan: RestorePlan) -> None:
    """What the dry run found, what was restored and where the old data is, or that the
    operator said no (stderr)."""
    out = cli.stdout()
    if request.dry_run:
        out.print("dry run: the archive is sound; nothing was changed", markup=False)
        for line in describe(plan):
            out.print(line, markup=False, soft_wrap=True)
        return
    if not plan.done:
        cli.stderr().print("aborted: nothing was changed", markup=False)
        return
    out.print(
        f"restored node {plan.manifest.node_id} at height {plan.manifest.height} into "
        f"{request.target}",
        markup=False,
        soft_wrap=True,
    )
    out.print(f"mode: {_mode_line(plan)}", markup=False, soft_wrap=True)
    if plan.aside is not None:
        what = "previous files" if plan.in_place else "previous data dir"
        out.print(f"{what} kept in {plan.aside}", markup=False, soft_wrap=True)
    out.print("start the node: it verifies the store, then resyncs newer blocks from peers")


def _settle(data_dir: Path | None, action: str, *, json_out: bool) -> None:
    """--resume / --rollback of an interrupted restore (in-place or swap mode)."""
    from ian.maintenance.restore import finish_interrupted

    target = cli.load_settings(data_dir).data_dir
    pending = finish_interrupted(target, "resume" if action == "resume" else "rollback")
    if json_out:
        cli.print_json({**pending.to_doc(), "action": action, "settled": True})
        return
    out = cli.stdout()
    if action == "resume":
        out.print(
            f"resumed: node {pending.doc.get('node_id')} at height {pending.doc.get('height')} "
            f"is restored into {target}",
            markup=False,
            soft_wrap=True,
        )
        if pending.aside is not None:
            out.print(f"previous files kept in {pending.aside}", markup=False, soft_wrap=True)
        out.print("start the node: it verifies the store, then resyncs newer blocks from peers")
    else:
        out.print(
            f"rolled back: {target} holds its previous files again; the staged restore of "
            f"{pending.doc.get('archive')} was discarded",
            markup=False,
            soft_wrap=True,
        )
