"""What every `ian` command shares: options, consoles, exit codes and the error boundary.

Commands raise :class:`ian.errors.IanError` (or call :func:`exit_with_error`); :func:`run`
turns those into one line on stderr and a distinct exit code. Tracebacks only with ``--debug``.
Heavy modules (httpx, the node core) are imported inside commands so ``ian --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ian_ops import boundary

if TYPE_CHECKING:
    from rich.console import Console

    from ian.config import Settings

# Exit codes (documented in the README) and the error boundary's pieces live in
# ian_ops.boundary, without Typer; commands use them as cli.*.
EXIT_OK = boundary.EXIT_OK
EXIT_FAILURE = boundary.EXIT_FAILURE
EXIT_USAGE = boundary.EXIT_USAGE
EXIT_CONFIG = boundary.EXIT_CONFIG
EXIT_DATA_DIR = boundary.EXIT_DATA_DIR
EXIT_LOCKED = boundary.EXIT_LOCKED
EXIT_UNREACHABLE = boundary.EXIT_UNREACHABLE
EXIT_REJECTED = boundary.EXIT_REJECTED
print_json = boundary.print_json
exit_code_for = boundary.exit_code_for
error_text = boundary.error_text
ian_error_in = boundary.ian_error_in

DEFAULT_NODE_URL = "http://127.0.0.1:8000"

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="IAN_DATA_DIR",
        help="Node data directory [default: ./.ian-data].",
        show_default=False,
    ),
]
NodeUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--node-url",
        envvar="IAN_NODE_URL",
        help="Base URL of the node's HTTP API "
        f"[default: the configured API port on loopback, {DEFAULT_NODE_URL}].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class _State:
    debug = False


state = _State()


def stdout() -> Console:
    """The console for results (honours NO_COLOR and non-TTY output)."""
    global _out
    if _out is None:
        from rich.console import Console

        _out = Console(highlight=False)
    return _out


def stderr() -> Console:
    """The console for diagnostics."""
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True, highlight=False)
    return _err


_out: Console | None = None
_err: Console | None = None


def exit_with_error(message: str, *, code: int = EXIT_FAILURE, fix: str | None = None) -> NoReturn:
    text = f"error: {message}"
    if fix:
        text += f"\n  fix: {fix}"
    stderr().print(text, markup=False)
    raise typer.Exit(code)


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Effective settings for a command: flags > env > config.toml > defaults."""
    from ian.config import load_settings as _load

    given = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    return _load(overrides=given)


def install_fast_coercion() -> bool:
    """Coerce ``str`` and ``Path`` parameters without pydantic; True when installed.

    Typer turns every non-flag parameter value into its annotated type through a pydantic
    ``TypeAdapter``: the first one costs the pydantic import (~100 ms, more than a whole
    ``ian status --json`` should take). For the two types nearly all ``ian`` options have, this
    does exactly what those adapters do (Typer's own ``_parse_cli_str``; Typer's path checks
    and messages, then ``Path(value)``, which is pydantic's conversion of a string); every
    other type (numbers with bounds, lists, a custom parser) still goes to Typer, built only when
    a value is given (Typer builds it for an absent value too, then returns None). Reaches into
    Typer internals: when they are not what this expects, nothing is installed and Typer works
    as shipped (tests/ian_ops/test_startup.py compares both ways on every parameter).
    """
    try:
        from typer import _coercion, core
        from typer._click import _compat
        from typer._param_types import coerce_cli_path, lenient_issubclass
    except ImportError:
        return False
    original = core.build_runtime_param
    if getattr(original, "ian_fast", False):
        return True
    if not (
        getattr(_coercion, "RuntimeParam", None) is not None
        and hasattr(_compat, "_get_argv_encoding")
        and original is _coercion.build_runtime_param
    ):
        return False

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class StrParam(_coercion.RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return _parse_cli_str(value, _compat._get_argv_encoding)

    @dataclass(frozen=True)
    class PathParam(_coercion.RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            path_type = self.annotation
            checked = coerce_cli_path(
                value, self.parameter_info, path_type=None, param=param, ctx=ctx
            )
            return checked if isinstance(checked, path_type) else path_type(checked)

    @dataclass(frozen=True)
    class LaterParam(_coercion.RuntimeParam):
        """Typer's own coercion, built when a value needs it (an absent value does not)."""

        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return original(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        info, annotation = descriptor.parameter_info, descriptor.annotation
        if descriptor.file_annotation is None and info.parser is None:
            if annotation is str:
                return StrParam(parameter_info=info, annotation=annotation)
            if lenient_issubclass(annotation, Path) and info.path_type is None:
                return PathParam(parameter_info=info, annotation=annotation)
        return LaterParam(parameter_info=info, annotation=annotation, descriptor=descriptor)

    build_runtime_param.ian_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True


def _parse_cli_str(value: Any, argv_encoding: Any) -> str:
    """Typer's ``typer._adapters._parse_cli_str`` (that module imports pydantic)."""
    if value is None:
        raise ValueError("None is not a valid string")
    if isinstance(value, bytes):
        enc = argv_encoding()
        try:
            return value.decode(enc)
        except UnicodeError:
            fs_enc = sys.getfilesystemencoding()
            if fs_enc != enc:
                try:
                    return value.decode(fs_enc)
                except UnicodeError:
                    return value.decode("utf-8", "replace")
            return value.decode("utf-8", "replace")
    return str(value)


def run(app: typer.Typer) -> NoReturn:
    """Run the Typer app behind the one error boundary."""
    install_fast_coercion()
    try:
        app()
    except (Exception, BaseExceptionGroup) as raised:
        exc = ian_error_in(raised)
        if exc is None or state.debug or os.environ.get("IAN_DEBUG"):
            raise
        sys.stderr.write(error_text(exc) + "\n")
        sys.exit(exit_code_for(exc))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(0)
