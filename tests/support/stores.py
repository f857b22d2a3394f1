"""Stores as older versions of ian left them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def as_schema_1(path: Path) -> None:
    """Turn a store (closed) into what schema 1 wrote: a unique index of (goal_id, pack_hash),
    no prefix index, ``schema_version`` 1. The tables themselves did not change."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP INDEX contributions_pack_prefix")
        conn.execute("CREATE UNIQUE INDEX contributions_pack ON contributions (goal_id, pack_hash)")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
        return {name for (name,) in rows}
    finally:
        conn.close()
