"""Applying a block received from the network: verify, re-execute, compare roots, write.

A follower trusts nothing in a block but the sequencer's signature: it re-runs the deterministic
pipeline on every entry and must reach exactly the roots in the header. Any difference makes
the block invalid (:class:`~ian.chain.blocks.InvalidBlockError`), the in-memory state is rolled back
and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ian.chain.blocks import (
    Block,
    InvalidBlockError,
    ParentMismatchError,
    check_block_signature,
    entries_hash,
)
from ian.chain.evaluation import BatchEvaluator, Evaluation, evaluate_batch
from ian.chain.state import ChainState, execute
from ian.storage.store import NewEntry, Store


def execute_block(
    state: ChainState,
    block: Block,
    known_packs: Callable[[str, list[bytes]], set[bytes]],
    evaluations: Sequence[Evaluation | None] | None = None,
    *,
    parent: tuple[int, bytes, int] | None = None,
) -> list[NewEntry]:
    """Re-execute ``block`` on ``state``'s goals (mutating them; the caller rolls back on
    error). The head it must follow is ``parent`` (height, hash, timestamp_ms) when given, else
    the state's: the head is the caller's to advance.

    ``evaluations``: one per entry, made beforehand (:func:`evaluate_batch`, e.g. in a pool)."""
    h = block.header
    height, head_hash, head_ms = parent or (state.height, state.head_hash, state.head_timestamp_ms)
    if h.height != height + 1:
        raise InvalidBlockError(f"block {h.height} does not follow local height {height}")
    if h.parent_hash != head_hash:
        raise ParentMismatchError(f"block {h.height}: parent is not the local head")
    if h.timestamp_ms < head_ms:
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
    for i, c in enumerate(block.entries):
        if c.pack_hash in seen[c.goal_id]:
            raise InvalidBlockError(f"block {h.height}: duplicate pack in {c.goal_id}")
        outcome = execute(state, c, evaluations[i] if evaluations is not None else None)
        if not outcome.accepted:
            raise InvalidBlockError(
                f"block {h.height}: an entry of {c.goal_id} is rejected on re-execution "
                f"({outcome.reason})"
            )
        seen[c.goal_id].add(c.pack_hash)
        entries.append(NewEntry.accepted(c, outcome))
    if entries_hash([e.contribution_hash for e in entries]) != h.entries_hash:
        raise InvalidBlockError(f"block {h.height}: entries hash mismatch")
    # The goals this block touched (every entry was accepted); not state.touched(), which
    # covers the whole batch when several blocks are applied together.
    touched = {e.contribution.goal_id for e in entries}
    if touched != set(h.goals):
        raise InvalidBlockError(f"block {h.height}: header lists goals {sorted(h.goals)}")
    for gid in sorted(touched):
        if state.goals[gid].roots() != h.goals[gid]:
            raise InvalidBlockError(f"block {h.height}: roots of {gid} differ after re-execution")
    return entries


def apply_block(
    state: ChainState,
    store: Store,
    block: Block,
    *,
    sequencer: str | None,
    evaluator: BatchEvaluator | None = None,
) -> None:
    """Verify and durably apply one block (worker thread); all or nothing."""
    _, error = apply_blocks(state, store, [block], sequencer=sequencer, evaluator=evaluator)
    if error is not None:
        raise error


def apply_blocks(
    state: ChainState,
    store: Store,
    blocks: Sequence[Block],
    *,
    sequencer: str | None,
    evaluator: BatchEvaluator | None = None,
    signatures_checked: bool = False,
) -> tuple[int, InvalidBlockError | None]:
    """Verify and apply consecutive blocks, writing the valid prefix in one transaction.

    The entries of every correctly signed block are evaluated first, all together (through
    ``evaluator``, a pool, when given: a catch-up batch of many small blocks evaluates in
    parallel too), then the blocks are re-executed in order with those evaluations.
    Returns how many were applied and the error that stopped the rest (None when all were).
    A store failure raises (and nothing is applied); so does an
    :class:`~ian.errors.EvaluationError` (nothing decided: try again later). Worker thread.
    ``signatures_checked``: the caller has checked every block with
    :func:`~ian.chain.blocks.check_block_signature` against ``sequencer`` (as it decoded it).
    """
    signed: list[Block] = []
    bad_signature: InvalidBlockError | None = None
    if signatures_checked:
        signed.extend(blocks)
    else:
        for block in blocks:
            try:
                check_block_signature(block, sequencer)
            except InvalidBlockError as exc:
                bad_signature = exc
                break
            signed.append(block)
    flat = evaluate_batch(state.goals, [c for b in signed for c in b.entries], evaluator)
    evaluations: list[list[Evaluation | None]] = []
    at = 0
    for block in signed:
        evaluations.append(flat[at : at + len(block.entries)])
        at += len(block.entries)
    applied, error = _apply_evaluated(state, store, signed, evaluations)
    if error is None and bad_signature is not None:
        return applied, bad_signature
    return applied, error


def _apply_evaluated(
    state: ChainState,
    store: Store,
    blocks: Sequence[Block],
    evaluations: Sequence[Sequence[Evaluation | None]],
) -> tuple[int, InvalidBlockError | None]:
    """:func:`apply_blocks` on signed blocks whose entries are evaluated.

    The state's head moves only once the store holds the blocks: the event loop reads it while
    this runs in a worker thread, and must find the blocks of the height it reads."""
    head = (state.height, state.head_hash, state.head_timestamp_ms)
    state.begin()
    # Packs accepted by earlier blocks of this batch are not in the store yet.
    batch_packs: dict[str, set[bytes]] = {}

    def known_packs(goal_id: str, hashes: list[bytes]) -> set[bytes]:
        seen = batch_packs.get(goal_id, set())
        return store.has_packs(goal_id, hashes, writer=True) | {h for h in hashes if h in seen}

    done: list[tuple[Block, list[NewEntry]]] = []
    error: InvalidBlockError | None = None
    for block, evaluated in zip(blocks, evaluations, strict=True):
        try:
            entries = execute_block(state, block, known_packs, evaluated, parent=head)
        except InvalidBlockError as exc:
            error = exc
            break
        for e in entries:
            batch_packs.setdefault(e.contribution.goal_id, set()).add(e.contribution.pack_hash)
        done.append((block, entries))
        head = (block.height, block.hash, block.header.timestamp_ms)
    if error is not None:
        # The failing block mutated the state part-way: start over with the valid prefix only.
        state.rollback()
        if not done:
            state.begin()
            return 0, error
        applied, _ = _apply_evaluated(state, store, [b for b, _ in done], evaluations[: len(done)])
        return applied, error
    try:
        store.append_blocks(done)
    except BaseException:
        state.rollback()
        raise
    state.height, state.head_hash, state.head_timestamp_ms = head
    state.begin()
    return len(done), None
