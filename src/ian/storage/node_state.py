"""``node_state.json``: a summary of the node's state, rewritten atomically at every checkpoint.

It is a summary, not the source of truth (that is the store). Its presence with
``clean_shutdown`` tells the next start how much checking to do: missing → full verification
from genesis; present → the quick root check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from ian.atomic import atomic_write_json, read_json
from ian.errors import CorruptFileError

NODE_STATE_VERSION = 1


#: a leaderboard entry as saved: ``[log_index, score, contribution_hash (hex), contributor_id]``
SavedEntry = tuple[int, float, str, str]


class GoalSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    log_size: int
    log_root: str
    leaderboard_size: int
    leaderboard_root: str
    last_tau_commit: dict[str, Any] | None = None
    #: the leaderboard's entries in rank order, hashing to ``leaderboard_root``: a cache that
    #: spares the start-up the ranking of every contribution. It is used only when it hashes to
    #: the root the store's newest block recorded (``ian.ledger.recovery``); missing or stale,
    #: the leaderboard is ranked from the store.
    leaderboard: list[SavedEntry] | None = None

    @field_validator("leaderboard", mode="wrap")
    @classmethod
    def _cache_or_none(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> list[SavedEntry] | None:
        # A cache that does not parse is dropped (the start-up ranks from the store), never
        # a reason to refuse the file.
        try:
            result: list[SavedEntry] | None = handler(value)
        except ValidationError:
            return None
        return result


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


def saved_leaderboards(state: NodeState | None) -> dict[str, tuple[str, list[SavedEntry]]]:
    """Per goal, ``(leaderboard_root, entries)`` of a saved state that carries its entries."""
    if state is None:
        return {}
    return {
        gid: (g.leaderboard_root, g.leaderboard)
        for gid, g in state.goals.items()
        if g.leaderboard is not None
    }


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
