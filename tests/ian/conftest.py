from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534


def _run_as_nobody(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child with uid/gid 65534, so permission checks bite as root."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:
                result = ("raised", (type(exc).__name__, str(exc)))
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "raised":
        return value
    return ("returned", value)


@pytest.fixture
def unprivileged() -> Callable[[Callable[[], Any]], Any]:
    """Call ``fn`` as an unprivileged user; returns ``(exception name, message)`` if it raised,
    else ``("returned", value)``. As non-root it runs in-process the same way."""

    def run(fn: Callable[[], Any]) -> Any:
        if os.geteuid() != 0:
            try:
                return ("returned", fn())
            except BaseException as exc:
                return (type(exc).__name__, str(exc))
        return _run_as_nobody(fn)

    return run


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that an unprivileged user can traverse (tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="ian-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in sorted(d.rglob("*"), reverse=True):
            p.chmod(0o700)
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        d.rmdir()
