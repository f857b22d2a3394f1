"""Rebuilding the in-memory chain state from the store, and verifying the store.

:func:`load_chain_state` is the quick path used on every start: MMR peaks and top-K leaderboards
are read back and their roots compared with the newest block that recorded them.
:func:`verify_store` is the full check (``ian node verify``, and a start without
``node_state.json``): it replays every contribution from genesis, recomputing contribution
hashes, MMRs, leaderboards, block links and signatures, and reports the first mismatch.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ian.chain import mmr
from ian.chain.blocks import GENESIS_HASH, BlockHeader
from ian.chain.goals import GoalSpec
from ian.chain.hashing import canonical_json, sha256
from ian.chain.leaderboard import Leaderboard, LeaderboardEntry
from ian.chain.state import ChainState, GoalState
from ian.errors import ConfigError, StoreError
from ian.identity import node_id_for, verify_signature
from ian.storage.store import Store

log = logging.getLogger("ian.storage.store")

_RECOVER_FIX = "run `ian node verify` to find the damage, then `ian restore` a backup"


#: a saved leaderboard: (the root it was saved with, entries in rank order as
#: ``(log_index, score, contribution_hash hex, contributor_id)``), see ``node_state.GoalSummary``
SavedBoard = tuple[str, Sequence[tuple[int, float, str, str]]]


def load_chain_state(
    store: Store,
    specs: list[GoalSpec],
    saved_boards: Mapping[str, SavedBoard] | None = None,
) -> ChainState:
    """The chain state as the store holds it; raises StoreError if roots disagree.

    ``saved_boards`` (from ``node_state.json``) spares ranking every contribution of a goal:
    a saved leaderboard is taken only when it hashes to the root saved with it and to the root
    the store's newest block recorded for the goal, i.e. when it is exactly the leaderboard
    the store's rows rank. Otherwise (missing, stale after a crash between the store's commit
    and the file's rewrite, edited) the leaderboard is ranked from the store.
    """
    check_goals_configured(store, specs)
    state = ChainState.genesis(specs)
    height, head_hash, head_ts = store.head()
    state.height, state.head_hash, state.head_timestamp_ms = height, head_hash, head_ts
    recorded = store.latest_roots()
    for spec in specs:
        goal = state.goals[spec.id]
        size = store.log_size(spec.id)
        positions = mmr.peak_positions(size)
        nodes = store.nodes(spec.id, positions)
        if len(nodes) != len(positions):
            raise StoreError(f"goal {spec.id}: MMR nodes are missing", fix=_RECOVER_FIX)
        goal.mmr = mmr.MMR.from_peaks(size, [nodes[p] for p in positions])
        board = _saved_board(spec, (saved_boards or {}).get(spec.id), recorded.get(spec.id))
        if board is None:
            board = Leaderboard.from_entries(
                spec.leaderboard_capacity,
                [
                    LeaderboardEntry(i, s, h, c)
                    for i, s, h, c in store.top_entries(spec.id, spec.leaderboard_capacity)
                ],
            )
        goal.leaderboard = board
        _check_roots(goal, recorded.get(spec.id))
    return state


def _saved_board(
    spec: GoalSpec, saved: SavedBoard | None, recorded: dict[str, Any] | None
) -> Leaderboard | None:
    """The saved leaderboard of ``spec`` if it is the one the newest block recorded, else None."""
    if saved is None or recorded is None:
        return None
    saved_root, entries = saved
    if saved_root != recorded["leaderboard_root"] or len(entries) != recorded["leaderboard_size"]:
        return None
    try:
        board = Leaderboard.from_entries(
            spec.leaderboard_capacity,
            [LeaderboardEntry(i, s, bytes.fromhex(h), c) for i, s, h, c in entries],
        )
    except (ValueError, TypeError):
        return None
    if len(board) != len(entries) or board.root().hex() != saved_root:
        return None
    return board


def check_goals_configured(store: Store, specs: list[GoalSpec]) -> None:
    """A store with goals the config lacks is a configuration problem, not damage."""
    unknown = sorted(set(store.goal_ids()) - {s.id for s in specs})
    if unknown:
        raise ConfigError(
            f"the store holds goals that are not configured: {', '.join(unknown)}",
            fix="add them to [[goals]] in config.toml (every node must declare the same goals)",
        )


def open_chain_state(
    store: Store,
    specs: list[GoalSpec],
    *,
    full: bool,
    keep_copy: Callable[[], Path],
    repair: bool = True,
    saved_boards: Mapping[str, SavedBoard] | None = None,
) -> ChainState:
    """The chain state to start from, repairing a damaged store instead of refusing to start.

    ``full`` (no node_state.json) replays the store from genesis; otherwise the quick root
    check runs and a failure falls back to the replay. With ``repair`` (a follower), blocks
    from the first bad one on are removed after ``keep_copy()`` saved the damaged store, and
    the node's peers provide them again. Without it (the sequencer, whose blocks no peer can
    give back) a damaged store is a StoreError naming the copy and the way out.
    ``saved_boards``: see :func:`load_chain_state` (used by the quick check only).
    """
    check_goals_configured(store, specs)
    reason = "node_state.json is missing"
    if not full:
        try:
            return load_chain_state(store, specs, saved_boards)
        except StoreError as exc:
            reason = f"the quick root check failed ({exc.message})"
    log.warning("%s: verifying the whole store from genesis", reason)
    report = verify_store(store, specs)
    if report.ok:
        log.info("store verified: %d blocks, %d contributions", report.blocks, report.contributions)
        return load_chain_state(store, specs)
    copy = keep_copy()
    if not repair:
        raise StoreError(
            f"store damaged at block {report.first_bad_height or report.blocks + 1} "
            f"({report.problem}); a copy is in {copy}",
            fix="restore the latest backup with `ian restore`; the sequencer's blocks cannot "
            "be fetched from peers",
        )
    # Stray rows after the last good block (no bad block) keep every block.
    good = report.blocks if report.first_bad_height is None else report.first_bad_height - 1
    removed = store.truncate_above(good)
    log.error(
        "store damaged at block %s (%s): kept a copy in %s, removed %d blocks above %d; "
        "peers provide them again",
        report.first_bad_height or report.blocks + 1,
        report.problem,
        copy,
        removed,
        good,
    )
    return load_chain_state(store, specs)


def _check_roots(goal: GoalState, recorded: dict[str, Any] | None) -> None:
    if recorded is None:
        if goal.mmr.size:
            raise StoreError(f"goal {goal.spec.id} has entries but no block records its roots")
        return
    roots = goal.roots()
    if roots.log_size != recorded["log_size"] or roots.log_root.hex() != recorded["log_root"]:
        raise StoreError(
            f"goal {goal.spec.id}: log root {roots.log_root.hex()[:16]}… (size {roots.log_size}) "
            f"does not match the last block's {recorded['log_root'][:16]}… "
            f"(size {recorded['log_size']})",
            fix=_RECOVER_FIX,
        )
    if roots.leaderboard_root.hex() != recorded["leaderboard_root"]:
        raise StoreError(
            f"goal {goal.spec.id}: leaderboard root does not match the last block's",
            fix=_RECOVER_FIX,
        )


@dataclass
class VerifyReport:
    ok: bool
    blocks: int = 0
    contributions: int = 0
    first_bad_height: int | None = None
    problem: str | None = None
    roots: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "contributions": self.contributions,
            "first_bad_height": self.first_bad_height,
            "problem": self.problem,
            "roots": self.roots,
        }


def verify_store(
    store: Store,
    specs: list[GoalSpec],
    *,
    sequencer: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Replay the whole store from genesis and compare every recomputed root.

    Checks per block: parent link, signature by the key in the header (and, if ``sequencer`` is
    given, that it is that node), entries hash, and every goal root after the block. Per entry:
    the contribution hash from its stored fields, and the MMR nodes stored for it.
    ``progress(done_blocks, total_blocks)`` is called now and then.
    """
    state = ChainState.genesis(specs)
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    report = VerifyReport(ok=True)
    try:
        total = conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
        parent = GENESIS_HASH
        rows = conn.execute(
            "SELECT height, hash, header, signature, first_seq, entry_count FROM blocks "
            "ORDER BY height"
        )
        entries_cur = conn.cursor()
        expected_height = 1
        for height, bhash, header_json, signature, first_seq, count in rows:
            report.blocks += 1
            problem = _check_block(
                state,
                entries_cur,
                expected_height,
                parent,
                bhash,
                header_json,
                signature,
                first_seq,
                count,
                sequencer,
            )
            if problem is not None:
                report.ok = False
                report.first_bad_height = height
                report.problem = problem
                break
            report.contributions += count
            parent = bhash
            expected_height += 1
            if progress is not None and (report.blocks % 500 == 0 or report.blocks == total):
                progress(report.blocks, total)
        if report.ok:
            stray = conn.execute(
                "SELECT COUNT(*) FROM contributions WHERE block_height > ?", (report.blocks,)
            ).fetchone()[0]
            if stray:
                report.ok = False
                report.problem = f"{stray} contributions belong to no block"
    finally:
        conn.close()
    report.roots = {gid: g.roots().to_doc() for gid, g in state.goals.items()}
    return report


def _check_block(
    state: ChainState,
    cur: sqlite3.Cursor,
    expected_height: int,
    parent: bytes,
    bhash: bytes,
    header_json: str,
    signature: bytes,
    first_seq: int,
    count: int,
    sequencer: str | None,
) -> str | None:
    header = BlockHeader.from_doc(json.loads(header_json))
    if header.height != expected_height:
        return f"block heights jump from {expected_height - 1} to {header.height}"
    if header.parent_hash != parent:
        return f"block {header.height}: parent hash does not match block {header.height - 1}"
    if header.hash() != bhash:
        return f"block {header.height}: stored hash does not match its header"
    if node_id_for(header.sequencer_key) != header.sequencer:
        return f"block {header.height}: sequencer key does not match sequencer id"
    if sequencer and header.sequencer != sequencer:
        return f"block {header.height}: signed by {header.sequencer}, not the sequencer"
    if not verify_signature(header.sequencer_key, signature, bhash):
        return f"block {header.height}: bad signature"
    rows = cur.execute(
        "SELECT goal_id, log_index, contribution_hash, pack_hash, contributor_id, seed, score, "
        "metrics, mmr_nodes FROM contributions WHERE seq >= ? AND seq < ? ORDER BY seq",
        (first_seq, first_seq + count),
    ).fetchall()
    if len(rows) != count:
        return f"block {header.height}: {count} entries recorded, {len(rows)} stored"
    hashes = []
    touched: set[str] = set()
    for goal_id, log_index, chash, phash, contributor, seed, score, metrics, stored in rows:
        goal = state.goals.get(goal_id)
        if goal is None:
            return f"block {header.height}: entry for unknown goal {goal_id}"
        doc = {
            "contributor_id": contributor,
            "goal_id": goal_id,
            "metrics": json.loads(metrics),
            "pack_hash": phash.hex(),
            "score": score,
            "seed": seed,
        }
        if sha256(canonical_json(doc)) != chash:
            return f"block {header.height}: contribution {goal_id}/{log_index} hash mismatch"
        if log_index != goal.mmr.size:
            return f"block {header.height}: {goal_id} log index {log_index} out of order"
        if b"".join(goal.mmr.append(chash)) != stored:
            return f"block {header.height}: stored MMR nodes of {goal_id}/{log_index} differ"
        goal.leaderboard.offer(LeaderboardEntry(log_index, score, chash, contributor))
        hashes.append(chash)
        touched.add(goal_id)
    from ian.chain.blocks import entries_hash

    if entries_hash(hashes) != header.entries_hash:
        return f"block {header.height}: entries hash mismatch"
    for goal_id in touched | set(header.goals):
        goal = state.goals.get(goal_id)
        if goal is None or goal_id not in header.goals:
            return f"block {header.height}: goal roots missing for {goal_id}"
        if goal.roots() != header.goals[goal_id]:
            return f"block {header.height}: roots of {goal_id} differ from the recomputed ones"
    return None
