"""Forcing a full resync: drop the local chain, keep identity, certificates and peer scores.

Offline (:func:`set_store_aside`, under ``node.lock``): the store files move into
``<data-dir>/resync-<UTC timestamp>/`` (same filesystem, so it also works when the data dir is a
container volume) and ``node_state.json`` is removed; the next start begins at height 0 and
fetches every block from its peers. Nothing is deleted: ``ian prune`` removes old copies.
Online, the running node does the same in memory and on its store (``POST /api/v1/admin/resync``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ian.errors import DataDirError
from ian.storage.datadir import DataDir

RESYNC_PREFIX = "resync-"


def set_store_aside(datadir: DataDir, *, now: float | None = None) -> Path:
    """Move the store (and its WAL files) aside; returns the directory they went to.

    The caller holds ``node.lock``. Raises DataDirError when there is no store.
    """
    store = datadir.store_file
    if not store.exists():
        raise DataDirError(
            f"no store at {store}: nothing to resync",
            fix="check --data-dir; a node without a store syncs from its peers anyway",
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    aside = datadir.root / f"{RESYNC_PREFIX}{stamp}"
    aside.mkdir(mode=0o700)
    for suffix in ("", "-wal", "-shm"):
        part = store.with_name(store.name + suffix)
        if part.exists():
            part.rename(aside / part.name)
    datadir.node_state_file.unlink(missing_ok=True)
    fd = os.open(datadir.root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return aside
