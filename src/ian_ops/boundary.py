"""How every `ian` command ends, without Typer: exit codes, the JSON document on stdout, and
the one-line report of an :class:`ian.errors.IanError`.

:mod:`ian_ops.cli` (which re-exports these names) runs the Typer app behind this boundary;
:mod:`ian_ops.status_fast` answers a plain ``ian status --json`` with it, without importing
Typer.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# Exit codes, documented in the README; doctor uses 0/1/2 for ok/warnings/failures.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATA_DIR = 4
EXIT_LOCKED = 5
EXIT_UNREACHABLE = 6
EXIT_REJECTED = 7


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout (no colour, stable key order)."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


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
