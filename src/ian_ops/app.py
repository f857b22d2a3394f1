"""The `ian` command: node and maintenance commands for IAN operators.

One module per command group; each registers a Typer sub-app here. Keep imports at module level
light (typer and the standard library only): ``ian --help`` must start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ian_ops import (
    backup_cmd,
    certs_cmd,
    cli,
    config_cmd,
    node_cmd,
    peers_cmd,
    prune_cmd,
    restore_cmd,
    status_cmd,
    tau_cmd,
)

app = typer.Typer(
    name="ian",
    help="Run and maintain IAN nodes: the operator runbook as commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ian {version('ian-node')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    cli.state.debug = debug


app.add_typer(node_cmd.app, name="node")
app.command("status")(status_cmd.status)
app.add_typer(peers_cmd.app, name="peers")
app.add_typer(certs_cmd.app, name="certs")
app.add_typer(backup_cmd.app, name="backup")
app.command("restore")(restore_cmd.restore)
app.command("prune")(prune_cmd.prune)
app.add_typer(tau_cmd.app, name="tau")
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    cli.run(app)
