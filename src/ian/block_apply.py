"""Applying a block received from the network: verify, re-execute, compare roots, write.

A follower trusts nothing in a block but the sequencer's signature: it re-runs the deterministic
pipeline on every entry and must reach exactly the roots in the header. Any difference makes
the block invalid (:class:`~ian.blocks.InvalidBlockError`), the in-memory state is rolled back
and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable

from ian.blocks import (
    Block,
    InvalidBlockError,
    ParentMismatchError,
    check_block_signature,
    entries_hash,
)
from ian.chain import ChainState, execute
from ian.store import NewEntry, Store


def execute_block(
    state: ChainState,
    block: Block,
    known_packs: Callable[[str, list[bytes]], set[bytes]],
) -> list[NewEntry]:
    """Re-execute ``block`` on ``state`` (mutating it; the caller rolls back on error)."""
    h = block.header
    if h.height != state.height + 1:
        raise InvalidBlockError(f"block {h.height} does not follow local height {state.height}")
    if h.parent_hash != state.head_hash:
        raise ParentMismatchError(f"block {h.height}: parent is not the local head")
    if h.timestamp_ms < state.head_timestamp_ms:
        raise InvalidBlockError(f"block {h.height}: timestamp goes backwards")
    if not block.entries:
        raise InvalidBlockError(f"block {h.height} is empty")
    by_goal: dict[str, list[bytes]] = {}
    for c in block.entries:
        if c.goal_id not in state.goals:
            raise InvalidBlockError(f"block {h.height}: unknown goal {c.goal_id!r}")
        by_goal.setdefault(c.goal_id, []).append(c.pack_hash)
    seen = {g: known_packs(g, hs) for g, hs in by_goal.items()}
    entries: list[NewEntry] = []
    for c in block.entries:
        if c.pack_hash in seen[c.goal_id]:
            raise InvalidBlockError(f"block {h.height}: duplicate pack in {c.goal_id}")
        outcome = execute(state, c)
        if not outcome.accepted:
            raise InvalidBlockError(
                f"block {h.height}: an entry of {c.goal_id} is rejected on re-execution "
                f"({outcome.reason})"
            )
        seen[c.goal_id].add(c.pack_hash)
        entries.append(NewEntry.accepted(c, outcome))
    if entries_hash([e.contribution_hash for e in entries]) != h.entries_hash:
        raise InvalidBlockError(f"block {h.height}: entries hash mismatch")
    touched = set(state.touched())
    if touched != set(h.goals):
        raise InvalidBlockError(f"block {h.height}: header lists goals {sorted(h.goals)}")
    for gid in sorted(touched):
        if state.goals[gid].roots() != h.goals[gid]:
            raise InvalidBlockError(f"block {h.height}: roots of {gid} differ after re-execution")
    return entries


def apply_block(state: ChainState, store: Store, block: Block, *, sequencer: str | None) -> None:
    """Verify and durably apply one block (worker thread); all or nothing."""
    check_block_signature(block, sequencer)
    state.begin()
    try:
        entries = execute_block(state, block, lambda g, hs: store.has_packs(g, hs, writer=True))
        store.append_block(block, entries)
    except BaseException:
        state.rollback()
        raise
    state.height = block.height
    state.head_hash = block.hash
    state.head_timestamp_ms = block.header.timestamp_ms
    state.begin()
