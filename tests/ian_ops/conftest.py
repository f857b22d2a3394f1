"""The one way tests in ``tests/ian_ops`` run the ``ian`` CLI: the ``ian`` fixture.

``ian("peers", "list", "--json")`` runs the whole Typer app in this process (``ian_ops.app.app``,
so every command is reached by its real path) behind the same error boundary as the console
script: an :class:`ian.errors.IanError` becomes ``error: ...`` / ``  fix: ...`` on stderr and
its exit code (:func:`ian_ops.cli.exit_code_for`). The terminal is fixed: 200 columns, no
colour, stdin not a terminal (``input=`` feeds it). It returns a :class:`Ran`: exit code,
stdout, stderr, the exception the command raised (``exception``), and the parsed document when
the command was given ``--json`` and printed one.

Every test here also gets a clean environment: no inherited ``IAN_*`` variables, ``NO_COLOR``,
``COLUMNS=200`` and an empty working directory (``tmp_path``).

Tests that need a real process (a pseudo-terminal, signals, a node process) use
:func:`tests.support.nodes.run_ian` and the node helpers of :mod:`tests.support.nodes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from tests.support.nodes import NodeFactory
from typer.testing import CliRunner

from ian_ops import cli
from ian_ops.app import app

#: the fixed terminal every in-process run sees
TERMINAL_ENV = {"NO_COLOR": "1", "COLUMNS": "200"}


@dataclass
class Ran:
    """One in-process ``ian`` run. ``exception``: what the command raised (an IanError the
    boundary turned into ``exit_code``; a ``SystemExit`` of an explicit exit), None on success.
    ``doc``: stdout parsed as JSON when ``--json`` was given and stdout holds one document,
    else None. Unpacks as ``(exit_code, stdout, stderr)``."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    doc: Any = None

    @property
    def output(self) -> str:
        """stdout then stderr."""
        return self.stdout + self.stderr

    def __iter__(self) -> Iterator[Any]:
        return iter((self.exit_code, self.stdout, self.stderr))


class Invoker:
    """Runs ``ian ARGS...`` in this process; see the module docstring."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def __call__(
        self, *args: str | Path, env: Mapping[str, str] | None = None, input: str | None = None
    ) -> Ran:
        argv = [str(a) for a in args]
        # Fresh consoles: they read COLUMNS / NO_COLOR when they are made.
        self._monkeypatch.setattr(cli, "_out", None)
        self._monkeypatch.setattr(cli, "_err", None)
        result = CliRunner().invoke(app, argv, env={**TERMINAL_ENV, **(env or {})}, input=input)
        self._monkeypatch.setattr(cli, "_out", None)
        self._monkeypatch.setattr(cli, "_err", None)
        code, stderr, raised = result.exit_code, result.stderr, result.exception
        if raised is not None and not isinstance(raised, SystemExit):
            error = cli.ian_error_in(raised)
            if error is None:  # the real CLI prints a traceback: let the test show it
                raise raised
            raised = error
            code = cli.exit_code_for(error)
            stderr += cli.error_text(error) + "\n"
        doc = None
        if "--json" in argv and result.stdout.strip():
            try:
                doc = json.loads(result.stdout)
            except json.JSONDecodeError:
                doc = None  # NDJSON or text: the test reads stdout itself
        return Ran(code, result.stdout, stderr, raised, doc)

    async def off_loop(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Ran:
        """``ian(...)`` on a worker thread, for async tests whose node runs on the event loop."""
        call: Callable[[], Ran] = lambda: self(*args, env=env)  # noqa: E731
        return await anyio.to_thread.run_sync(call)


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IAN_"):
            monkeypatch.delenv(name)
    for name, value in TERMINAL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ian(monkeypatch: pytest.MonkeyPatch) -> Invoker:
    """``ian(*args, env=None, input=None) -> Ran``; see the module docstring."""
    return Invoker(monkeypatch)


@pytest.fixture
def ian_nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    """Real `ian node run` processes (:class:`tests.support.nodes.NodeFactory`), all killed at
    teardown."""
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()
