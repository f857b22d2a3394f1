"""``node_state.json``: a summary of the node's state, rewritten atomically at every checkpoint.

It is a summary, not the source of truth (that is the store). Its presence with
``clean_shutdown`` tells the next start how much checking to do: missing → full verification
from genesis; present → the quick root check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ian.atomic import atomic_write_json, read_json
from ian.errors import CorruptFileError

NODE_STATE_VERSION = 1


class GoalSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    log_size: int
    log_root: str
    leaderboard_size: int
    leaderboard_root: str
    last_tau_commit: dict[str, Any] | None = None


class NodeState(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = NODE_STATE_VERSION
    node_id: str
    saved_at: float
    height: int
    head_hash: str
    clean_shutdown: bool
    role: str = "sequencer"
    goals: dict[str, GoalSummary] = {}


def write_node_state(path: Path, state: NodeState) -> None:
    atomic_write_json(path, state.model_dump(mode="json"), mode=0o644)


def read_node_state(path: Path) -> NodeState | None:
    """The saved summary, or None if there is none. Corruption is a clear error."""
    try:
        raw = read_json(
            path, recovery=f"delete {path}; the node re-verifies its store on the next start"
        )
    except FileNotFoundError:
        return None
    try:
        return NodeState.model_validate(raw)
    except ValidationError as exc:
        raise CorruptFileError(
            f"{path} is not a node state file: {exc.errors()[0]['msg']}",
            fix=f"delete {path}; the node re-verifies its store on the next start",
        ) from None
