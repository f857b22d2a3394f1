"""docs/cli.md is generated from the commands' --help by tools/gen_cli_docs.py; regenerate
and compare, so a changed command, option or help text cannot leave the reference stale, and
check that it is what `ian ... --help` really prints, for every command there is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.nodes import clean_env, run_ian

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "cli.md"
GENERATOR = ROOT / "tools" / "gen_cli_docs.py"
REGENERATE = "stale: run `make docs` and commit docs/cli.md"
SECTION = re.compile(r"^## `(?P<path>[^`]+)`\n\n```text\n(?P<help>.*?)\n```$", re.M | re.S)


def generate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def sections() -> dict[str, str]:
    """Command path -> help text, as docs/cli.md holds them."""
    return {m["path"]: m["help"] for m in SECTION.finditer(REFERENCE.read_text(encoding="utf-8"))}


# The terminal's width and IAN_* settings must not change the output.
@pytest.mark.parametrize(
    "env", [{"COLUMNS": "40"}, {"COLUMNS": "200", "IAN_NODE_URL": "http://10.9.9.9:1"}]
)
def test_checked_in_reference_is_current(env: dict[str, str]) -> None:
    generated = generate(env=env)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == REFERENCE.read_text(encoding="utf-8"), REGENERATE


def test_generator_writes_the_file_make_docs_names(tmp_path: Path) -> None:
    output = tmp_path / "docs" / "cli.md"
    written = generate(str(output))
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert output.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8")
    assert [p.name for p in output.parent.iterdir()] == ["cli.md"]


def test_every_listed_command_has_a_section() -> None:
    documented = sections()
    assert "ian" in documented
    for path, help_text in documented.items():
        listing = help_text.partition("\nCommands:\n")[2].partition("\n\n")[0]
        for line in listing.splitlines():
            assert f"{path} {line.split()[0]}" in documented, f"{path}: {line.strip()!r}"
    # the walk reaches the nested commands, not only the top level
    assert {"ian peers ban", "ian backup verify", "ian tau serve-mock"} <= documented.keys()


@pytest.mark.parametrize("path", ["ian", "ian status", "ian peers", "ian peers ban"])
def test_section_is_what_help_prints_in_an_80_column_terminal(path: str) -> None:
    shown = run_ian(*path.split()[1:], "--help", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.rstrip("\n") == sections()[path]
