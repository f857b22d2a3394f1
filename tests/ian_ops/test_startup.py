"""Start-up of `ian`: parameters are coerced without pydantic (ian_ops.cli.install_fast_coercion)
exactly as Typer coerces them, for every parameter of every command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer
import typer._coercion
import typer.core
from typer._click import Context

from ian_ops import cli
from ian_ops.app import app

STR_SAMPLES: list[Any] = [
    "x",
    "",
    " padded ",
    "2s",
    "tcp://10.0.0.1:9000",
    "é ü",
    b"raw \xc3\xa9",
    b"\xff",
]
NUMBER_SAMPLES: list[Any] = ["0", "1", "7", "-3", "2.5", "1e3", "x", "", " 4 "]


def _outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
    try:
        result = runtime.coerce(value, param=param, ctx=ctx)
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", type(result).__name__, result)


def _params() -> list[tuple[Any, Any]]:
    """(command, parameter) for every Typer parameter of the app."""
    found = []

    def walk(command: Any) -> None:
        for param in command.params:
            if hasattr(param, "type_descriptor"):
                found.append((command, param))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def test_installed_with_this_typer() -> None:
    assert cli.install_fast_coercion()
    assert getattr(typer.core.build_runtime_param, "ian_fast", False)


def test_every_parameter_is_coerced_as_typer_coerces_it(tmp_path: Path) -> None:
    assert cli.install_fast_coercion()
    fast_build, typer_build = typer.core.build_runtime_param, typer._coercion.build_runtime_param
    unreadable = tmp_path / "secret"
    unreadable.write_text("x")
    unreadable.chmod(0)
    path_samples: list[Any] = ["x", "", "./a//b/", "-", "~/x", str(tmp_path), Path("p")]
    if os.geteuid() != 0:  # root reads anything
        path_samples.append(str(unreadable))
    kinds = set()
    for command, param in _params():
        ctx = Context(command)
        fast = fast_build(param.type_descriptor)
        ours = typer_build(param.type_descriptor)
        kinds.add(type(fast).__name__)
        annotation = param.type_descriptor.annotation
        samples = (
            path_samples
            if annotation is Path
            else STR_SAMPLES
            if annotation is str
            else [*NUMBER_SAMPLES, [], ["a"], ("1",)]
        )
        for value in [None, *samples]:
            got = _outcome(fast, value, param, ctx)
            assert got == _outcome(ours, value, param, ctx), (command.name, param.name, value)
    # the app has all three kinds, so each was compared
    assert kinds == {"StrParam", "PathParam", "LaterParam"}


@pytest.mark.parametrize(
    "argv",
    [
        ["peers", "limits", "--max-peers", "0"],
        ["peers", "limits", "--rate", "fast"],
        ["status", "--watch", "--interval", "soon", "--node-url", "http://127.0.0.1:9"],
    ],
)
def test_bad_values_are_usage_errors_as_before(argv: list[str], ian) -> None:
    ran = ian(*argv)
    assert ran.exit_code == 2, ran
