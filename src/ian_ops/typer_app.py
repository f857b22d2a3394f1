"""The `ian` Typer app: node and maintenance commands for IAN operators (the entry point,
:func:`ian_ops.app.main`, runs it; ``ian_ops.app.app`` is this module's :data:`app`).

One module per command group or command (:data:`COMMANDS`). They are imported, and turned into
click commands, only when the command line reaches them: ``ian status`` imports and builds
``status`` alone; ``ian --help``, shell completion and ``tools/gen_cli_docs.py`` list every
command and so load them all (:class:`LazyGroup`). Keep imports at module level light (typer
and the standard library only): ``ian --help`` must start fast.

Typer's own ``--install-completion`` / ``--show-completion`` options are off: building them costs
a pydantic import on every invocation (~80 ms). ``ian completions SHELL`` prints the same
scripts, and ``completions/`` holds them pre-generated (``make completions``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ian_ops import cli
from ian_ops.app import COMPLETE_VAR

#: Every top-level command: name -> (module, attribute, is a Typer sub-app). The order is the
#: order ``ian --help`` lists them: commands first, then groups, each in the order they were
#: registered (Typer's order when it built the whole app at once).
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "status": ("ian_ops.status_cmd", "status", False),
    "restore": ("ian_ops.restore_cmd", "restore", False),
    "prune": ("ian_ops.prune_cmd", "prune", False),
    "doctor": ("ian_ops.doctor_cmd", "doctor", False),
    "events": ("ian_ops.events_cmd", "events", False),
    "completions": ("ian_ops.typer_app", "completions", False),
    "node": ("ian_ops.node_cmd", "app", True),
    "peers": ("ian_ops.peers_cmd", "app", True),
    "certs": ("ian_ops.certs_cmd", "app", True),
    "backup": ("ian_ops.backup_cmd", "app", True),
    "tau": ("ian_ops.tau_cmd", "app", True),
    "network": ("ian_ops.network_cmd", "app", True),
    "config": ("ian_ops.config_cmd", "app", True),
}


class _LazyCommands(MutableMapping[str, Any]):
    """The root group's ``commands``: every name of :data:`COMMANDS` from the start (listing,
    suggestions for a typo), each click command built on first access (:func:`build_command`)."""

    def __init__(self, built: MutableMapping[str, Any]) -> None:
        self._built = dict(built)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the commands of `ian` cannot be removed")

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._built if name not in COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS) + sum(name not in COMMANDS for name in self._built)

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._built


class LazyGroup(TyperGroup):
    """The root ``ian`` group: its commands are built when first looked up."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _LazyCommands(self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        # the names only: building every command is for whoever asks for each one (help)
        return list(self.commands)


app = typer.Typer(
    name="ian",
    help="Run and maintain IAN nodes: the operator runbook as commands.\n\n"
    "Example: ian status --watch",
    epilog="Exit codes: 0 ok, 1 failure, 2 usage error, 3 invalid configuration, 4 data "
    "directory problem, 5 data dir in use by a running node, 6 node unreachable, 7 request "
    "refused by the node, 130 interrupted. `ian doctor`: 0 ok, 1 warnings, 2 failures.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: it starts in ~100 ms where Rich formatting takes ~180 ms.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def build_command(name: str) -> Any:
    """The click command of the top-level command ``name``, built by Typer as it builds it
    inside the whole app: with the root's markup mode, exception and suggestion settings."""
    module, attribute, is_group = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(
        add_completion=False,
        rich_markup_mode=app.rich_markup_mode,
        pretty_exceptions_short=app.pretty_exceptions_short,
        suggest_commands=app.suggest_commands,
    )
    if is_group:
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


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


SHELLS = ("bash", "zsh", "fish")


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


def run() -> None:
    """Run the app on ``sys.argv`` behind the error boundary (exits)."""
    if os.environ.get(COMPLETE_VAR):
        # TAB pressed: register Typer's completion classes (add_completion=False skips it)
        from typer.completion import completion_init

        completion_init()
    cli.run(app)
