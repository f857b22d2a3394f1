"""The root `ian` group builds a top-level command only when the command line reaches it
(ian_ops.app.LazyGroup): each command must come out exactly as Typer builds it inside the whole
app, `ian --help` must still list every one, and `ian status` must not import the others."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from ian_ops import app as app_module
from ian_ops.app import COMMANDS, app

SRC = Path(__file__).resolve().parents[2] / "src"


def eager_root() -> Any:
    """The whole app built at once, as app.py built it before commands were loaded lazily."""
    eager = typer.Typer(
        name="ian",
        help=app.info.help,
        epilog=app.info.epilog,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    eager.callback()(app_module.root)
    for name, (module, attribute, is_group) in COMMANDS.items():
        target = getattr(importlib.import_module(module), attribute)
        if is_group:
            eager.add_typer(target, name=name)
        else:
            eager.command(name)(target)
    return typer.main.get_command(eager)


def describe(command: Any, ctx: Any) -> Any:
    """What a command is, for comparison: its help text, parameters and subcommands."""
    params = [
        (p.name, type(p).__name__, tuple(p.opts), p.required, repr(p.default), p.envvar)
        for p in command.params
    ]
    subs = {}
    if hasattr(command, "commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            subs[name] = describe(sub, typer.Context(sub, info_name=name, parent=ctx))
    return (type(command).__name__, command.get_help(ctx), params, subs)


def test_every_command_is_built_as_in_the_whole_app() -> None:
    lazy, eager = typer.main.get_command(app), eager_root()
    assert isinstance(lazy, app_module.LazyGroup)
    lazy_ctx = typer.Context(lazy, info_name="ian", terminal_width=80)
    eager_ctx = typer.Context(eager, info_name="ian", terminal_width=80)
    assert lazy.list_commands(lazy_ctx) == eager.list_commands(eager_ctx) == list(COMMANDS)
    for name in COMMANDS:
        got = lazy.get_command(lazy_ctx, name)
        assert got is not None and got.name == name
        assert describe(got, typer.Context(got, info_name=name, parent=lazy_ctx)) == describe(
            eager.get_command(eager_ctx, name),
            typer.Context(got, info_name=name, parent=eager_ctx),
        ), name
    # the root itself: the same help (every command listed), options and commands
    assert describe(lazy, lazy_ctx)[1:] == describe(eager, eager_ctx)[1:]


def test_unknown_names_resolve_to_nothing() -> None:
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="ian")
    assert group.get_command(ctx, "stat") is None
    assert "stat" not in group.commands and "status" in group.commands
    assert len(group.commands) == len(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_resolves_on_the_command_line(name: str, ian) -> None:
    ran = ian(name, "--help")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout.startswith(f"Usage: ian {name} ")


def test_help_lists_every_command_in_order(ian) -> None:
    ran = ian("--help")
    assert ran.exit_code == 0, ran.output
    listing = ran.stdout.partition("\nCommands:\n")[2].partition("\n\n")[0]
    assert [line.split()[0] for line in listing.splitlines()] == list(COMMANDS)


def test_a_typo_still_gets_a_suggestion(ian) -> None:
    ran = ian("stauts")
    assert ran.exit_code == 2
    assert "No such command 'stauts'. Did you mean 'status', 'tau'?" in ran.stderr


def loaded_modules(*argv: str) -> set[str]:
    """The ian_ops modules a fresh `ian ARGV...` process imported."""
    code = (
        "import sys\n"
        f"sys.argv = ['ian', *{list(argv)!r}]\n"
        "from ian_ops.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "finally:\n"
        "    names = sorted(m for m in sys.modules if m.startswith('ian_ops.'))\n"
        "    sys.stderr.write('\\nloaded=' + ','.join(names) + '\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAN_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = proc.stderr.rpartition("\nloaded=")[2].strip()
    return set(line.split(","))


def test_status_imports_no_other_command_module() -> None:
    # (not --json: the plain `ian status --json` is answered without Typer, see status_fast)
    loaded = loaded_modules("status", "--node-url", "http://127.0.0.1:9")
    commands = {m for m in loaded if m.endswith("_cmd")}
    assert commands <= {"ian_ops.status_cmd", "ian_ops.events_cmd"}, commands
    assert "ian_ops.status_cmd" in commands


def test_help_imports_every_command_module() -> None:
    loaded = loaded_modules("--help")
    assert {module for module, _, _ in COMMANDS.values()} <= loaded
