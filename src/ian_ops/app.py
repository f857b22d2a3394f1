"""The `ian` command: node and maintenance commands for IAN operators.

One module per command group; each registers a Typer sub-app here. Keep imports at module level
light (typer and the standard library only): ``ian --help`` must start fast.

Typer's own ``--install-completion`` / ``--show-completion`` options are off: building them costs
a pydantic import on every invocation (~80 ms). ``ian completions SHELL`` prints the same
scripts, and ``completions/`` holds them pre-generated (``make completions``).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ian_ops import (
    backup_cmd,
    certs_cmd,
    cli,
    config_cmd,
    doctor_cmd,
    events_cmd,
    network_cmd,
    node_cmd,
    peers_cmd,
    prune_cmd,
    restore_cmd,
    status_cmd,
    tau_cmd,
)

app = typer.Typer(
    name="ian",
    help="Run and maintain IAN nodes: the operator runbook as commands.\n\n"
    "Example: ian status --watch",
    epilog="Exit codes: 0 ok, 1 failure, 2 usage error, 3 invalid configuration, 4 data "
    "directory problem, 5 data dir in use by a running node, 6 node unreachable, 7 request "
    "refused by the node, 130 interrupted. `ian doctor`: 0 ok, 1 warnings, 2 failures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: it starts in ~100 ms where Rich formatting takes ~180 ms.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ian {version('ian-node')}")
        raise typer.Exit()


def _help(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), color=ctx.color)
        raise typer.Exit()


@app.callback()
def root(
    help_: Annotated[
        bool,
        typer.Option(
            "--help",
            "-h",
            callback=_help,
            is_eager=True,
            expose_value=False,
            help="Show this message and exit.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    # An explicit --help with a bool default: Typer's implicit one defaults to None, and
    # coercing that None builds a pydantic adapter (~80 ms) on every `ian SUBCOMMAND ...`.
    cli.state.debug = debug


app.add_typer(node_cmd.app, name="node")
app.command("status")(status_cmd.status)
app.add_typer(peers_cmd.app, name="peers")
app.add_typer(certs_cmd.app, name="certs")
app.add_typer(backup_cmd.app, name="backup")
app.command("restore")(restore_cmd.restore)
app.command("prune")(prune_cmd.prune)
app.add_typer(tau_cmd.app, name="tau")
app.add_typer(network_cmd.app, name="network")
app.add_typer(config_cmd.app, name="config")
app.command("doctor")(doctor_cmd.doctor)
app.command("events")(events_cmd.events)

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_IAN_COMPLETE"


@app.command("completions")
def completions(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False)],
) -> None:
    """Print the shell completion script for SHELL (what completions/ holds).

    - bash: `ian completions bash > ~/.local/share/bash-completion/completions/ian`
    - zsh: `ian completions zsh > ~/.zfunc/_ian` (with `fpath+=~/.zfunc` before `compinit`)
    - fish: `ian completions fish > ~/.config/fish/completions/ian.fish`

    Example: ian completions bash
    """
    if shell not in SHELLS:
        cli.exit_with_error(
            f"unknown shell {shell!r}", code=cli.EXIT_USAGE, fix=f"use one of {', '.join(SHELLS)}"
        )
    typer.echo(completion_script(shell))


def completion_script(shell: str) -> str:
    """Typer's completion script for ``shell``: it calls back ``_IAN_COMPLETE=complete_SHELL
    ian`` on every TAB, so it never goes stale as commands change (only if the program name or
    the variable changed)."""
    from typer.completion import completion_init, get_completion_script

    completion_init()
    return get_completion_script(prog_name="ian", complete_var=COMPLETE_VAR, shell=shell)


def main() -> None:
    if os.environ.get(COMPLETE_VAR):
        # TAB pressed: register Typer's completion classes (add_completion=False skips it)
        from typer.completion import completion_init

        completion_init()
    cli.run(app)
