"""What every `ian` command shares: options, consoles, exit codes and the error boundary.

Commands raise :class:`ian.errors.IanError` (or call :func:`exit_with_error`); :func:`run`
turns those into one line on stderr and a distinct exit code. Tracebacks only with ``--debug``.
Heavy modules (httpx, the node core) are imported inside commands so ``ian --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from ian.config import Settings

# Exit codes, documented in the README; doctor uses 0/1/2 for ok/warnings/failures.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA_DIR = 4
EXIT_LOCKED = 5
EXIT_UNREACHABLE = 6
EXIT_REJECTED = 7

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


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout (no colour, stable key order)."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def exit_with_error(message: str, *, code: int = EXIT_FAILURE, fix: str | None = None) -> NoReturn:
    text = f"error: {message}"
    if fix:
        text += f"\n  fix: {fix}"
    stderr().print(text, markup=False)
    raise typer.Exit(code)


def exit_code_for(exc: BaseException) -> int:
    from ian import errors

    table: list[tuple[type[BaseException], int]] = [
        (errors.ConfigError, EXIT_CONFIG),
        (errors.NodeLockedError, EXIT_LOCKED),
        (errors.DataDirError, EXIT_DATA_DIR),
        (errors.NodeUnreachableError, EXIT_UNREACHABLE),
        (errors.NodeRefusedError, EXIT_REJECTED),
        (errors.NotFoundError, EXIT_REJECTED),  # e.g. an unknown peer, online or offline
        # A request error raised here, before anything reached a node: bad input on the
        # command line (a duration, a ban target, an address) is a usage error.
        (errors.RequestError, EXIT_USAGE),
    ]
    for cls, code in table:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Effective settings for a command: flags > env > config.toml > defaults."""
    from ian.config import load_settings as _load

    given = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    return _load(overrides=given)


def error_text(exc: Any) -> str:
    """How the error boundary reports an :class:`ian.errors.IanError`: ``error: MESSAGE`` and,
    when it has one, a second line ``  fix: FIX``."""
    text = f"error: {exc.message}"
    if exc.fix:
        text += f"\n  fix: {exc.fix}"
    return text


def ian_error_in(exc: BaseException) -> Any:
    """The IanError behind ``exc``: itself, or the first one inside (nested) exception groups,
    which is how a failure inside the node's task groups arrives."""
    from ian.errors import IanError

    if isinstance(exc, IanError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = ian_error_in(inner)
            if found is not None:
                return found
    return None


def run(app: typer.Typer) -> NoReturn:
    """Run the Typer app behind the one error boundary."""
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
