"""`ian backup`, `ian backup verify`, `ian backup inspect`: consistent online snapshots."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ian_ops import cli

if TYPE_CHECKING:
    from ian.maintenance.backup import Progress

app = typer.Typer(
    help="Back up the data directory while the node runs (no stop needed); `ian backup verify` "
    "and `ian backup inspect` check an archive.",
    invoke_without_command=True,
)

_LABELS = {
    "snapshot": "snapshot of the store",
    "archive": "writing the archive",
    "read": "reading the archive",
    "blocks": "verifying blocks",
}


@contextlib.contextmanager
def progress_reporter(enabled: bool) -> Iterator[Progress | None]:
    """A ``progress(stage, done, total)`` callback drawing Rich bars on stderr, or None when
    disabled or stderr is not a terminal."""
    console = cli.stderr()
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bars:
        tasks: dict[str, object] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(_LABELS.get(stage, stage), total=total or None)
            bars.update(tasks[stage], completed=done, total=total or None)  # type: ignore[arg-type]

        yield report


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


@app.callback()
def backup(
    ctx: typer.Context,
    data_dir: cli.DataDirOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Archive file, or an existing directory to write the default name into "
            "(default: `<data-dir>/backups/ian-backup-<id>-<UTC time>.tar.zst`).",
            show_default=False,
        ),
    ] = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Write a consistent archive of the data directory; the node may keep running.

    The archive (a zstd-compressed tar, mode 0600: it holds the node's private keys) starts
    with manifest.json: node id, height, per-goal roots and the SHA-256 of every file.

    Example: ian backup --data-dir /data
    """
    if ctx.invoked_subcommand is not None:
        return
    from ian.chain.genesis import goals_of
    from ian.maintenance.backup import create_backup
    from ian.storage.datadir import DataDir, read_genesis

    settings = cli.load_settings(data_dir)
    datadir = DataDir(settings.data_dir)
    specs = goals_of(read_genesis(datadir), settings.all_goals())
    with progress_reporter(not json_out) as report:
        result = create_backup(datadir, specs, output=output, progress=report)
    if json_out:
        cli.print_json(result.to_doc())
        return
    m = result.manifest
    cli.stdout().print(
        f"backup written: {result.path} ({_size(result.size)}, height {m.height}, "
        f"{len(m.files)} files, {result.seconds:.1f} s)",
        markup=False,
        soft_wrap=True,
    )
    for gid, roots in sorted(m.goals.items()):
        cli.stdout().print(
            f"  {gid}: log size {roots['log_size']} root {roots['log_root']}",
            markup=False,
            soft_wrap=True,
        )


ArchiveArg = Annotated[
    Path,
    typer.Argument(
        help="The backup archive (.tar.zst; a plain .tar of older versions also works).",
        show_default=False,
    ),
]


@app.command("verify")
def verify(archive: ArchiveArg, json_out: cli.JsonOpt = False) -> None:
    """Check every checksum, the manifest, and replay the store inside against its roots.

    Exit code 0 when the archive is sound, 1 with the first problem otherwise.

    Example: ian backup verify /data/backups/ian-backup-0123456789ab-20250101T000000Z.tar.zst
    """
    from ian.maintenance.backup import verify_archive

    with progress_reporter(not json_out) as report:
        block_report = None
        if report is not None:

            def block_report(done: int, total: int) -> None:
                report("blocks", done, total)

        result = verify_archive(archive, progress=report, block_progress=block_report)
    if json_out:
        cli.print_json(result.to_doc())
    elif result.ok:
        assert result.manifest is not None
        cli.stdout().print(
            f"ok: {archive} — node {result.manifest.node_id}, height {result.manifest.height}, "
            f"{result.blocks} blocks and {result.contributions} contributions verified",
            markup=False,
            soft_wrap=True,
        )
    else:
        cli.stderr().print(f"FAILED: {result.problem}", markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(cli.EXIT_FAILURE)


@app.command("inspect")
def inspect(archive: ArchiveArg, json_out: cli.JsonOpt = False) -> None:
    """Show the manifest and the member list without extracting anything.

    Example: ian backup inspect backup.tar.zst --json
    """
    from ian.maintenance.backup import list_members, read_manifest

    manifest = read_manifest(archive)
    members = list_members(archive)
    if json_out:
        cli.print_json({"manifest": manifest.to_doc(), "members": members})
        return
    from rich.table import Table

    out = cli.stdout()
    out.print(f"archive:   {archive}", markup=False, soft_wrap=True)
    out.print(f"node id:   {manifest.node_id}", markup=False)
    out.print(f"created:   {manifest.created_at} by ian {manifest.tool_version}", markup=False)
    out.print(
        f"height:    {manifest.height} (head {manifest.head_hash})", markup=False, soft_wrap=True
    )
    out.print(f"schema:    {manifest.schema_version}", markup=False)
    for gid, roots in sorted(manifest.goals.items()):
        out.print(
            f"goal {gid}: log size {roots['log_size']} root {roots['log_root']}; "
            f"leaderboard size {roots['leaderboard_size']} root {roots['leaderboard_root']}",
            markup=False,
            soft_wrap=True,
        )
    table = Table(title="members", title_justify="left")
    table.add_column("name")
    table.add_column("size", justify="right")
    table.add_column("mode")
    table.add_column("sha256 (manifest)")
    for member in members:
        entry = manifest.file(member["name"])
        table.add_row(
            member["name"],
            str(member["size"]),
            f"{member['mode']:04o}",
            entry.sha256[:16] + "…" if entry else "-",
        )
    out.print(table)
