"""``node.lock``: one writer per data directory; and the maintenance lock on the directory itself.

A running node holds an exclusive ``flock`` on ``node.lock`` for its whole life; offline commands
that write take it too. ``flock`` locks belong to the open file description, so the lock is freed
by the kernel when the holder exits or crashes (no stale lock to clean up), and two
:class:`NodeLock` objects conflict even inside one process. The holder writes a one-line JSON
``{"pid": ..., "acquired_at": ...}`` into the file purely for diagnostics; the file is never
deleted, because unlinking a lock file lets two processes lock two different inodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ian.errors import DataDirError, NodeLockedError

__all__ = ["NodeLock", "holder_pid", "is_locked", "maintenance_lock"]


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        pid = json.loads(text.splitlines()[0])["pid"]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


class NodeLock:
    """Exclusive, non-blocking lock on the file ``path`` (the data dir's ``node.lock``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`NodeLockedError` naming the holder's pid at once."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this NodeLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise NodeLockedError(
                f"data dir {self.path.parent} is in use by another process "
                f"(pid {pid if pid is not None else 'unknown'})",
                fix="stop that node first, or use the online command through --node-url",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "acquired_at": time.time()}) + "\n"
        # Overwrite in place, then cut: a reader never sees an empty file while we hold the lock.
        try:
            os.pwrite(fd, record.encode("utf-8"), 0)
            os.ftruncate(fd, len(record))
        except OSError:
            pass  # the text is only diagnostics; the flock is what counts

    def release(self) -> None:
        """Release the lock (no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> NodeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _probe(path: Path) -> tuple[bool, int | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True when some process holds ``path`` locked right now (the lock is not kept)."""
    return _probe(Path(path))[0]


def holder_pid(path: Path) -> int | None:
    """Pid of the live process holding the lock on ``path``, or None when nobody holds it.

    Also None in the rare case the lock is held but carries no pid (a foreign ``flock`` user,
    or a holder between taking the lock and writing its pid): use :func:`is_locked` for a
    yes/no answer, and take a :class:`NodeLock` before changing the data dir.
    """
    return _probe(Path(path))[1]


@contextlib.contextmanager
def maintenance_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold a ``flock`` on the data directory ``root`` itself for the ``with`` block.

    Shared for backups and prune, exclusive for restore and certificate rotation. Non-blocking:
    raises :class:`DataDirError` at once when the other kind is held. The node does not use
    this lock (it holds ``node.lock``), so it never delays the node.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataDirError(
            f"data dir {root} does not exist", fix="check --data-dir / IAN_DATA_DIR"
        ) from None
    except OSError as exc:
        raise DataDirError(
            f"cannot open data dir {root}: {exc.strerror or exc}",
            fix=f"check owner/permissions of {root}",
        ) from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = "a backup or prune" if exclusive else "a restore or certificate rotation"
            raise DataDirError(
                f"{busy} is running on {root}",
                fix="wait until it has finished, then run this command again",
            ) from None
        yield
    finally:
        os.close(fd)
