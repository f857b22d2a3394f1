from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ian.errors import NodeLockedError
from ian.storage.lock import NodeLock, holder_pid, is_locked

HOLDER = textwrap.dedent(
    """
    import sys
    from ian.storage.lock import NodeLock
    with NodeLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the parent closes our stdin
    """
)


def test_lock_and_release(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    assert holder_pid(path) is None and not is_locked(path)
    with NodeLock(path) as lock:
        assert lock.held
        assert is_locked(path)
        assert holder_pid(path) == os.getpid()
        assert f'"pid": {os.getpid()}' in path.read_text()
    assert not lock.held
    assert holder_pid(path) is None and not is_locked(path)
    assert path.exists()  # never unlinked: see module docstring


def test_second_lock_in_same_process_fails(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    first = NodeLock(path)
    first.acquire()
    try:
        with pytest.raises(NodeLockedError) as info:
            NodeLock(path).acquire()
        assert info.value.message == (
            f"data dir {tmp_path} is in use by another process (pid {os.getpid()})"
        )
        assert "--node-url" in (info.value.fix or "")
    finally:
        first.release()
    with NodeLock(path):
        pass


def test_double_acquire_on_one_object_is_a_bug(tmp_path: Path) -> None:
    with NodeLock(tmp_path / "node.lock") as lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_holder_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "locked"
        assert holder_pid(path) == proc.pid
        assert is_locked(path)
        with pytest.raises(NodeLockedError, match=f"pid {proc.pid}"):
            NodeLock(path).acquire()
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert holder_pid(path) is None
    with NodeLock(path):
        assert holder_pid(path) == os.getpid()


def test_lock_freed_when_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    proc.kill()
    proc.wait()
    assert holder_pid(path) is None  # the stale pid text is not mistaken for a holder
    with NodeLock(path):
        pass
