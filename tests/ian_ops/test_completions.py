"""completions/ holds the scripts generated from the Typer app; regenerate and compare, so a
change of program name, completion variable or Typer's templates cannot leave them stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.nodes import run_ian

ROOT = Path(__file__).resolve().parents[2]
FILES = {"bash": "ian.bash", "zsh": "_ian", "fish": "ian.fish"}
REGENERATE = "stale: run `make completions` and commit completions/"


@pytest.mark.parametrize("shell", sorted(FILES))
def test_checked_in_script_is_current(shell: str) -> None:
    checked_in = (ROOT / "completions" / FILES[shell]).read_text()
    generated = run_ian("completions", shell)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == checked_in, REGENERATE
    # ...and it is what Typer/click's own source generation gives
    source = run_ian(env={"_IAN_COMPLETE": f"source_{shell}"})
    assert source.returncode == 0, source.stderr
    assert source.stdout.strip() == checked_in.strip(), REGENERATE


def test_tab_completes_commands_and_options() -> None:
    r = run_ian(env={"_IAN_COMPLETE": "complete_bash", "COMP_WORDS": "ian do", "COMP_CWORD": "1"})
    assert r.stdout.split() == ["doctor"]
    r = run_ian(
        env={"_IAN_COMPLETE": "complete_bash", "COMP_WORDS": "ian status --w", "COMP_CWORD": "2"}
    )
    assert "--watch" in r.stdout.split()
    r = run_ian(env={"_IAN_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "ian peers "})
    assert '"ban"' in r.stdout and '"prune"' in r.stdout


def test_unknown_shell_is_a_usage_error() -> None:
    r = run_ian("completions", "tcsh")
    assert r.returncode == 2
    assert "unknown shell 'tcsh'" in r.stderr and "Traceback" not in r.stderr
