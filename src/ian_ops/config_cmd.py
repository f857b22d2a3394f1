"""`ian config init/show`: write a commented config.toml; show the effective config and sources."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ian_ops import cli

app = typer.Typer(
    help="Write and show the node configuration (and where each value comes from).",
    no_args_is_help=True,
)

CONFIG_FILE_NAME = "config.toml"


def _flag_data_dir(ctx: typer.Context, data_dir: Path | None) -> Path | None:
    """``--data-dir`` only when typed on the command line (IAN_DATA_DIR is env, not a flag)."""
    source = ctx.get_parameter_source("data_dir")
    # Typer vendors its own click, so compare the enum member by name.
    if data_dir is None or getattr(source, "name", None) == "ENVIRONMENT":
        return None
    return data_dir


@app.command("init")
def init(
    data_dir: cli.DataDirOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write ('-' = stdout) [default: `<data-dir>/config.toml`].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented config.toml documenting every setting and its env var.

    Example: ian config init --data-dir /data
    """
    from ian.config import Settings, render_config_toml
    from ian.errors import ConfigError

    # The file documents defaults; data_dir is not pinned inside the directory it describes.
    base = Settings()
    text = render_config_toml(base)
    if output is not None and str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = output if output is not None else (data_dir or base.data_dir) / CONFIG_FILE_NAME
    if target.exists() and not force:
        raise ConfigError(
            f"{target} already exists; not overwriting it",
            fix="pass --force to replace it, or --output to write elsewhere",
        )
    _write(target, text.encode("utf-8"), replace=force)
    cli.stdout().print(f"wrote {target}", markup=False, soft_wrap=True)


def _write(target: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` atomically; create the parent directory (0700) when missing."""
    from ian.atomic import atomic_write_bytes
    from ian.errors import ConfigError, DataDirError

    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create {target.parent}: {exc.strerror or exc}") from None
    try:
        atomic_write_bytes(target, data, mode=0o644, exclusive=not replace)
    except FileExistsError:
        raise ConfigError(
            f"{target} already exists; not overwriting it", fix="pass --force to replace it"
        ) from None


@app.command("show")
def show(
    ctx: typer.Context,
    data_dir: cli.DataDirOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Read this config file [default: $IAN_CONFIG, else `<data-dir>/config.toml`].",
            show_default=False,
        ),
    ] = None,
    json_out: cli.JsonOpt = False,
) -> None:
    """Show the effective configuration and the source of each value (secrets redacted).

    Example: ian config show --json
    """
    from ian.config import load_settings, settings_as_dict

    overrides = {}
    flag_dir = _flag_data_dir(ctx, data_dir)
    if flag_dir is not None:
        overrides["data_dir"] = flag_dir
    settings = load_settings(config_file=config, overrides=overrides)
    values = settings_as_dict(settings, redact=True)
    sources = settings.sources()
    if json_out:
        cli.print_json({"settings": values, "sources": sources})
        return

    import json

    from rich.table import Table

    table = Table(title="Effective configuration", title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold")
    for name, value in values.items():
        if name == "goals":
            shown = ", ".join(g["id"] for g in value) or "(none)"
        elif value is None:
            shown = "(unset)"
        elif isinstance(value, list):
            shown = ", ".join(str(v) for v in value) or "(none)"
        elif isinstance(value, str):
            shown = value if value else '""'
        else:
            shown = json.dumps(value)
        source = sources[name]
        table.add_row(name, shown, source, style=None if source == "default" else "bold")
    cli.stdout().print(table)
