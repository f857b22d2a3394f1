"""The `ian` command's entry point (``ian = "ian_ops.app:main"``).

:func:`main` answers the plain form of ``ian status --json`` without Typer
(:mod:`ian_ops.status_fast`: importing Typer costs more than the whole answer) and runs every
other command line through the Typer app, :mod:`ian_ops.typer_app`. ``ian_ops.app.app`` and the
other names of that module are still reachable here (imported when first asked for).
"""

from __future__ import annotations

import os
import sys
from typing import Any

COMPLETE_VAR = "_IAN_COMPLETE"


def main() -> None:
    if not os.environ.get(COMPLETE_VAR):
        from ian_ops.status_fast import answer_status_json

        answer_status_json(sys.argv[1:])  # exits when it answered
    from ian_ops.typer_app import run

    run()


def __getattr__(name: str) -> Any:
    """``ian_ops.app.app`` (and the rest of :mod:`ian_ops.typer_app`), imported on first use."""
    if name.startswith("__"):  # the import system asks for __path__ and the like
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ian_ops import typer_app

    try:
        return getattr(typer_app, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
