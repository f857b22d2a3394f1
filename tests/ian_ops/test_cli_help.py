"""The CLI as a whole: help with an example everywhere, one spelling per shared option, --json
on every read command, --version, distinct exit codes, no tracebacks unless --debug."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from tests.support.nodes import run_ian

from ian_ops import cli
from ian_ops.app import app

READ_COMMANDS = [
    "status",
    "peers list",
    "peers show",
    "certs show",
    "backup inspect",
    "tau status",
    "config show",
    "node verify",
    "doctor",
]
SHARED = {
    "data_dir": ["--data-dir"],
    "node_url": ["--node-url"],
    "json_out": ["--json"],
    "dry_run": ["--dry-run"],
    "yes": ["--yes", "-y"],
}


def commands() -> Iterator[tuple[str, Any]]:
    def walk(prefix: str, command: Any) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):  # a group (Typer vendors its own click)
            for name, sub in command.commands.items():
                yield from walk(f"{prefix} {name}".strip(), sub)
        else:
            yield prefix, command

    yield from walk("", typer.main.get_command(app))


ALL = dict(commands())


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_command_has_help_with_an_example(path: str, ian) -> None:
    result = ian(*path.split(), "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output or "Example: " in (ALL[path].help or ""), path
    assert "\x1b[" not in result.output


@pytest.mark.parametrize("path", sorted(ALL))
def test_shared_options_are_spelled_the_same_everywhere(path: str) -> None:
    for param in ALL[path].params:
        if param.name in SHARED and param.param_type_name == "option":
            assert param.opts + param.secondary_opts == SHARED[param.name], (path, param.opts)


@pytest.mark.parametrize("path", READ_COMMANDS)
def test_read_commands_take_json(path: str) -> None:
    names = {p.name for p in ALL[path].params}
    assert "json_out" in names, path


def test_version() -> None:
    r = run_ian("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("ian ") and r.stdout.strip().split()[1][0].isdigit()


def test_exit_codes_are_distinct() -> None:
    codes = {name: value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes), codes


def test_user_error_has_no_traceback_unless_debug() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: connection refused
    url = f"http://127.0.0.1:{port}"
    r = run_ian("status", "--node-url", url)
    assert r.returncode == cli.EXIT_UNREACHABLE
    assert r.stderr.startswith("error: cannot reach the node")
    assert "fix:" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    debug = run_ian("--debug", "status", "--node-url", url)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_usage_error_exit_code() -> None:
    # a bare number is refused with the accepted forms, before any I/O
    r = run_ian("status", "--watch", "--interval", "30")
    assert r.returncode == cli.EXIT_USAGE
    assert "invalid --interval '30'" in r.stderr and "30s" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_ian("status", "--no-such-option")
    assert r.returncode == cli.EXIT_USAGE and "Traceback" not in r.stderr


def test_root_help_lists_doctor_and_exit_codes_without_ansi() -> None:
    r = run_ian("--help")
    assert r.returncode == 0
    assert "doctor" in r.stdout and "completions" in r.stdout
    assert "Exit codes" in r.stdout
    assert "\x1b[" not in r.stdout
