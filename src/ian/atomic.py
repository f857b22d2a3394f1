"""Crash-safe file writes and strict JSON reads for the data directory.

Every state file is replaced atomically: the new content goes to a temp file in the same
directory, is fsynced and given its final mode, then renamed over the target, and the directory
is fsynced so the rename itself survives a power cut. A reader therefore sees either the old or
the new file, never a torn one; a torn file (written by something else) is reported as
:class:`~ian.errors.CorruptFileError` naming the file and the recovery command.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ian.errors import CorruptFileError, DataDirError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_writer", "read_bytes", "read_json"]


def _os_error(action: str, path: Path, exc: OSError) -> DataDirError:
    detail = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    if exc.errno == errno.ENOSPC:
        fix = f"free space on the file system holding {path.parent}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"check owner/permissions of {path.parent}"
    else:
        fix = None
    return DataDirError(f"cannot {action} {path}: {detail}", fix=fix)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (certain FUSE/network mounts) cannot fsync a directory at all.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Write ``path`` atomically through a file object: what the ``with`` block writes goes to
    a temp file in the same directory, which on success is flushed, given ``mode``, fsynced
    and renamed over ``path`` (then the directory is fsynced). If the block raises, or the
    process dies, ``path`` keeps its old content; the temp file is removed on every failure
    this process sees. ``OSError`` becomes :class:`DataDirError` naming the file.

    With ``exclusive=True`` the file is only created, never replaced: :class:`FileExistsError`
    if ``path`` already exists.
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        # Created 0600 and fchmod'ed before the rename, so a secret is never briefly readable.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _os_error("write", path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            tmp.replace(path)
        _fsync_dir(directory)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, FileExistsError) and exclusive:
            raise
        if isinstance(exc, OSError):
            raise _os_error("write", path, exc) from exc
        raise


def atomic_write_bytes(
    path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False
) -> None:
    """Atomically replace ``path`` with ``data`` (:func:`atomic_writer`); the file has
    ``mode`` from its first byte on. With ``exclusive=True`` it is only created, never
    replaced (:class:`FileExistsError` if ``path`` exists)."""
    with atomic_writer(path, mode=mode, exclusive=exclusive) as fh:
        fh.write(data)


def atomic_write_json(
    path: Path, value: Any, *, mode: int = 0o644, indent: int | None = 2, exclusive: bool = False
) -> None:
    """Atomically write ``value`` as UTF-8 JSON (strict: NaN/Infinity are refused).

    ``indent=None`` writes compact JSON. Values JSON cannot encode raise ``TypeError`` or
    ``ValueError`` before anything touches the disk.
    """
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, indent=indent, separators=separators, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), mode=mode, exclusive=exclusive)


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``: a missing file raises :class:`FileNotFoundError` unchanged, any
    other read failure :class:`DataDirError`."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise DataDirError(
            f"cannot read {path}: {os.strerror(exc.errno or errno.EACCES)}",
            fix=f"check owner/permissions of {path}",
        ) from exc
    except OSError as exc:
        raise _os_error("read", path, exc) from exc


def read_json(path: Path, *, recovery: str) -> Any:
    """Read and parse a JSON file.

    A missing file raises :class:`FileNotFoundError` unchanged; any other read failure raises
    :class:`DataDirError`; invalid or torn content raises :class:`CorruptFileError` whose ``fix``
    is ``recovery``.
    """
    path = Path(path)
    raw = read_bytes(path)
    if not raw.strip():
        raise CorruptFileError(f"{path} is corrupt: the file is empty", fix=recovery)
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptFileError(f"{path} is corrupt: {exc}", fix=recovery) from exc
