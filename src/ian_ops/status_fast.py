"""``ian status --json`` without Typer: the command operators and scripts poll most.

Importing Typer alone takes longer than the whole answer (the start-up issue: ``import typer``
~56 ms of a 263 ms ``ian status --json``). :func:`answer_status_json` recognises the plain form
of the command line, ``ian status --json`` with at most ``--node-url URL`` and ``--data-dir DIR``
(each once, either spelling ``--opt VALUE`` / ``--opt=VALUE``, in any order after ``status``),
and answers it as the Typer command would: the same sources for the URL (the options, then
``IAN_NODE_URL`` / ``IAN_DATA_DIR``, empty values ignored as click ignores them; the port through
:func:`ian_ops.light_config.read_api_url`), the same request (:func:`ian_ops.client.get_json_once`),
the same document and the same error lines and exit codes (:mod:`ian_ops.boundary`). Anything
else (a goal, ``--watch``, ``--help``, a repeated or unknown option, a URL that is not http(s), a
configuration the light reader leaves to the full loader) returns without doing anything, and
the Typer app handles it. ``tests/ian_ops/test_status_fast.py`` runs both ways on a table of
command lines and environments and compares exit code, stdout and stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

_OPTIONS = ("--node-url", "--data-dir")


def plain_form(args: Sequence[str]) -> tuple[str | None, Path | None] | None:
    """``(--node-url, --data-dir)`` (None when not given) when ``args`` (``sys.argv[1:]``) are
    the plain form of ``ian status --json``; None for any other command line."""
    if not args or args[0] != "status":
        return None
    given: dict[str, str] = {}
    at = 1
    while at < len(args):
        token = args[at]
        name, equals, value = token.partition("=")
        if token == "--json":
            name = value = token
        elif name in _OPTIONS:
            if not equals:
                if at + 1 >= len(args):
                    return None
                at += 1
                value = args[at]
            if not value or value.startswith("-"):
                return None
        else:
            return None
        if name in given:
            return None
        given[name] = value
        at += 1
    if "--json" not in given:
        return None
    data_dir = given.get("--data-dir")
    return given.get("--node-url"), Path(data_dir) if data_dir is not None else None


def answer_status_json(args: Sequence[str]) -> None:
    """Answer ``ian ARGS`` and exit when they are the plain form of ``ian status --json`` (see
    the module); otherwise return without any effect."""
    if os.name == "nt":  # click expands wildcards in Windows arguments; not done here
        return
    plain = plain_form(args)
    if plain is None:
        return
    node_url, data_dir = plain
    # what click gives the options from their env vars: set and not empty
    node_url = node_url or os.environ.get("IAN_NODE_URL") or None
    if data_dir is None and os.environ.get("IAN_DATA_DIR"):
        data_dir = Path(os.environ["IAN_DATA_DIR"])
    if node_url:
        if not node_url.startswith(("http://", "https://")):
            return  # a usage error: the Typer command reports it
        url = node_url.rstrip("/")  # ian_ops.target.node_url
    else:
        from ian_ops.light_config import read_api_url

        found = read_api_url(data_dir)
        if found is None:
            return
        url = found
    _answer(url)


def _answer(url: str) -> None:
    """``status_cmd.status(json_out=True)`` behind what wraps it on the Typer path: Typer's
    handling of Ctrl-C, EOF and a closed stdout, then ``cli.run``'s error boundary."""
    from ian_ops import boundary

    try:
        try:
            from ian_ops.client import get_json_once

            boundary.print_json(get_json_once(url, "/api/v1/status"))
        except EOFError:
            sys.stderr.write("\nAborted!\n")
            sys.stderr.flush()
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as failed:
            import errno

            if failed.errno != errno.EPIPE:
                raise
            # The reader went away (`ian status --json | head -c1`): exit 1 without a word, as
            # Typer does, and without the error the final flush of stdout would print: point
            # the descriptors at /dev/null (the idiom of Python's signal docs, "SIGPIPE").
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.dup2(devnull, sys.stderr.fileno())
            sys.exit(1)
    except (Exception, BaseExceptionGroup) as raised:
        error = boundary.ian_error_in(raised)
        if error is None or os.environ.get("IAN_DEBUG"):
            raise
        sys.stderr.write(boundary.error_text(error) + "\n")
        sys.exit(boundary.exit_code_for(error))
    sys.exit(0)
